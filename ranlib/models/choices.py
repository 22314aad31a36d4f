"""What the paper leaves open, and what ranlib chose — one place the book shows.

Each entry: ``topic``, ``paper_says``, ``we_chose``, ``why``. The code that implements a choice
cites it in its own docstring (models here, data in ``ranlib.data.batches``, noise in ``ranlib.data.noise``,
schedules in ``ranlib.training.recipes``); ``tests/test_models.py`` checks the model facts stated here.
"""

OPEN_CHOICES = [
    dict(
        topic="CIFAR network widths",
        paper_says='Only "3 stages, equal number of modules per stage"; Attention-92 has 1.9M parameters.',
        we_chose="Pre-activation ResNet-164's widths: stem conv 16, stages with bottleneck 16/32/64 and "
                 "outputs 64/128/256 at 32/16/8.",
        why="The paper compares Attention-92 with ResNet-164 as a like-for-like trunk; these widths give "
            "1.84M (Attention-92) and 5.08M (Attention-236), near the paper's 1.9M and 5.1M. The popular PyTorch "
            "port widens to 1024 channels and is about 6x larger.",
    ),
    dict(
        topic="Units outside the attention modules (CIFAR)",
        paper_says="Trunk depth 36m + 20; two more residual units per stage.",
        we_chose="Each stage: one transition unit (stride 2 in stages 2 and 3), m modules, one more unit.",
        why="Stem conv + 6 units (18 layers) + classifier = 20 layers, and every stage stays alike.",
    ),
    dict(
        topic="Mask pooling levels at 32/16/8 (CIFAR)",
        paper_says="Not stated for CIFAR. The ImageNet deploy files pool 3/2/1 times at 56/28/14, down to 7x7, "
                   "the last stage's resolution.",
        we_chose="3/2/1 max-pools at 32/16/8, down to 4x4, with 2/1/0 skip units.",
        why="The same rule as the official ImageNet networks: every mask pools down to one resolution below "
            "the last attention stage.",
    ),
    dict(
        topic="Units at the mask's coarsest level for r > 1",
        paper_says="r units between adjacent pooling layers; the deploy files (r = 1) have 2 units at the "
                   "coarsest level.",
        we_chose="r + 1 units at the coarsest level (2 for r = 1, as deployed).",
        why="Both 2r and r + 1 match the deploy files; only r + 1 keeps Attention-452 (r = 3) near the "
            "paper's 8.6M parameters: 9.07M, where 2r gives 10.2M.",
    ),
    dict(
        topic="Skip connections in the mask",
        paper_says="Skip connections between bottom-up and top-down parts (Figure 3).",
        we_chose="One residual unit on the down path's features at each intermediate resolution, added to "
                 "the up-sampled map — nothing else (no trunk or encoder features).",
        why="The deploy files' two-input Interp layer uses its second input for the output size only.",
    ),
    dict(
        topic="Up-sampling",
        paper_says="Bilinear interpolation.",
        we_chose="Bilinear with aligned corners.",
        why="Caffe's Interp layer maps corner pixels onto corner pixels.",
    ),
    dict(
        topic="Channel attention f2 epsilon",
        paper_says="f2(x) = x / ||x_i||, no epsilon.",
        we_chose="x / sqrt(||x_i||^2 + 1e-5); f3 uses the same 1e-5 inside its standard deviation.",
        why="Keeps an all-zero position finite; BatchNorm's epsilon, too small to change a non-degenerate value.",
    ),
    dict(
        topic="How f2 and f3 combine with attention residual learning",
        paper_says="Eq. 3, H = (1 + M) * T, is stated for the mask in general.",
        we_chose="The same fusion for every activation: f1/f2/f3 only replace the sigmoid at the end of the "
                 "mask head (residual_attention=False gives M * T for each).",
        why="Table 1 varies the activation alone; everything else is held fixed.",
    ),
    dict(
        topic="Local-convolution mask (Table 4)",
        paper_says="Three residual units, the same FLOPs as the encoder-decoder mask, no down/up-sampling.",
        we_chose="Three units at full resolution whose bottleneck width is set so the branch's multiply-adds "
                 "match the encoder-decoder branch of the same stage (within a few per cent).",
        why="Three full-width units would cost about three times the encoder-decoder branch; the paper fixes "
            "the FLOPs, so the width gives.",
    ),
    dict(
        topic="The Inception unit (AttentionInception-56)",
        paper_says="Only named.",
        we_chose="A pre-activation Inception-ResNet-A-style unit: 1x1, 1x1-3x3 and 1x1-3x3-3x3 branches of "
                 "half the bottleneck width, concatenated, a 1x1 projection, identity shortcut; stride on the "
                 "last conv of each branch.",
        why="The closest published Inception unit with a residual connection; it keeps Attention-56's layout "
            "and costs about 10 % more (34.0M, 6.9G multiply-adds).",
    ),
    dict(
        topic="The ResNeXt unit (AttentionNeXt-56)",
        paper_says="Only named; the deploy file is public.",
        we_chose="The deploy file's post-activation 32x4d unit (bottleneck half the output width), with the "
                 "mask head starting directly at its 1x1 convolution.",
        why="Matches AttentionNeXt-56's deploy file conv for conv.",
    ),
    dict(
        topic="Initialisation",
        paper_says="He (MSRA) initialisation.",
        we_chose="N(0, 2 / fan_in) for every convolution and the classifier, BN scale 1 and shift 0, "
                 "for every model including the torchvision baselines.",
        why="Caffe's MSRA filler normalises by fan-in; one initialisation for all models keeps comparisons fair.",
    ),
    dict(
        topic="Input normalisation (CIFAR)",
        paper_says="Per-pixel mean subtracted.",
        we_chose="Pixels scaled to [0, 1], minus the training set's per-pixel mean image; no division by a "
                 "standard deviation.",
        why="Exactly the paper's preprocessing; the scale is irrelevant after the first BatchNorm.",
    ),
    dict(
        topic="Label noise draws (Table 5)",
        paper_says="Transition matrix Q with r on the diagonal and (1 - r)/9 elsewhere; per-sample draws or an "
                   "exact count is not said, nor the seed.",
        we_chose="An independent draw per training sample from its row of Q, from a seeded generator; the test "
                 "set stays clean. Each results file records the achieved noise rate and the empirical 10x10 "
                 "transition matrix.",
        why="Per-sample draws are what a transition matrix describes (Sukhbaatar et al.); recording the achieved "
            "rate keeps the comparison honest.",
    ),
    dict(
        topic="Batch size on a GPU (large-batch rule)",
        paper_says="Batch 64, lr 0.1, 160k iterations, lr / 10 at 64k and 96k (CIFAR).",
        we_chose="At batch B: lr 0.1 * B / 64, iterations and milestones * 64 / B (same epochs), and a linear "
                 "warm-up over 5 epochs when B > 64. The `paper` profile keeps batch 64; the `full` profile is "
                 "the paper's 205 epochs at the smallest batch a time-limited GPU slot can finish (512 by default), "
                 "judged on orderings only.",
        why="Goyal et al. (2017)'s linear scaling rule with gradual warm-up; every results file records the rule "
            "and the resolved schedule.",
    ),
    dict(
        topic="Precision, memory format and batch on a CPU",
        paper_says="Not said (Caffe, on GPUs).",
        we_chose="On a CPU with native bf16 (AVX-512 BF16 or AMX, as torch.cpu.get_capabilities reports it): "
                 "bf16 autocast, weights, optimizer and loss in fp32, as on a GPU; fp32 elsewhere. channels_last "
                 "everywhere. The quick profile's batch is the fastest of 64, 128 and 256 measured on the "
                 "machine once (cached per CPU, thread count, torch, model, precision and memory format; the "
                 "measured rates are in each run's batch_rule), and the large-batch rule scales the schedule.",
        why="On the project's 2-core AMD EPYC (torch 2.14.1, 2 threads) Attention-56's step ran at 37 images/s "
            "in fp32 NCHW and 175 in bf16 channels_last (`python -m ranlib.bench --device cpu`, "
            "results/performance/cpu-cifar_attention56.json); a CPU's fastest batch is not predictable "
            "(128 there, within 11 % of 64 and 256), so it is measured. Whether bf16 trains like fp32 is "
            "checked below: fp32 seeds 0 and 1 and bf16 seed 0 trained alike, bf16 counting as fp32's equal "
            "when its loss curve stays as close to fp32's "
            "of the same seed as the two fp32 seeds stay to each other.",
    ),
    dict(
        topic="ImageNet batch size, weight decay and momentum",
        paper_says="Not given (lr 0.1, momentum 0.9, lr / 10 at 200k/400k/500k, stop at 530k).",
        we_chose="Batch 256, weight decay 1e-4, plain (not Nesterov) momentum.",
        why="The values of the ResNet recipes the paper builds on; only the CIFAR section names Nesterov.",
    ),
    dict(
        topic="Final model, not best epoch",
        paper_says="Not said whether reported errors are final or best.",
        we_chose="The final iterate, evaluated once at the end; the test set is evaluated a few times during "
                 "training for learning curves only.",
        why="Picking the best epoch on the test set overstates accuracy (several community ports do).",
    ),
    dict(
        topic="Imagewoof recipe (Table 7's networks on a proxy)",
        paper_says="Nothing: the paper trains on full ImageNet only (lr 0.1, 530k iterations).",
        we_chose="20 epochs of Imagewoof's 9,025 training images at 112 px, batch 256, lr 0.1 (SGD, momentum "
                 "0.9, weight decay 1e-4), lr / 10 at the ImageNet schedule's shares of the run (200k, 400k, "
                 "500k of 530k: iterations 266, 532, 665 of 705), linear warm-up over the first 2 epochs "
                 "(71 iterations); both seeds of a network trained as one fused process.",
        why="lr 0.1 per 256 images is Goyal et al.'s linear scaling rule (Accurate, Large Minibatch SGD, "
            "2017), and their gradual warm-up, kept short here (a tenth of the run) and used at batch 256 "
            "too, since 705 steps from scratch leave no easy epochs to spare. 20 epochs is the fast.ai "
            "leaderboard's second epoch count, so its figure stands beside ours. Cost: 6 multiply-add "
            "FLOPs per training image (1.6 GMACs for Attention-56 to 3.8 for ResNet-200 at 112 px), at an "
            "assumed 30 % of the H200's 989 TFLOP/s dense bf16 peak plus 25 s start-up per process, is "
            "37-54 s per network with 2 seeds, about 5 minutes for all seven (7 at 15 %): one time-limited "
            "GPU slot. The throughput is an assumption until `python -m ranlib.bench` measures it.",
    ),
]
