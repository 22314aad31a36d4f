"""The Imagewoof chapter's tables: Table 7's networks on real photos at 112 px, what they cost, and
fast.ai's public leaderboard beside our numbers as context.

Nothing here is ImageNet: every number is labelled Imagewoof (10 ImageNet dog classes, 112 px),
only Table 7's orderings are judged (:mod:`ranlib.study.verdicts`, experiment ``imagewoof``), and the
paper's ImageNet figures appear only as the paper's, for the ordering they claim.

The cost model (:func:`estimated_seconds`) is an assumption until ``ranlib.bench.step`` measures the
H200: a training step costs about three forward passes, 6 FLOPs per multiply-add per image (2 per
multiply-add, forward + backward), at :data:`ASSUMED_MFU` of :data:`H200_BF16_DENSE_TFLOPS`.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import pandas as pd

from . import paper
from .experiments import experiment
from .labels import hours_text
from .verdicts import mean_std

EXPERIMENT = "imagewoof"

# fast.ai's Imagenette/Imagewoof leaderboard (github.com/fastai/imagenette, README), Imagewoof at
# 128 px, top-1 accuracy (%) from random initialisation, by epochs. Larger images and their own
# recipe and tricks: context for our numbers, not a target.
LEADERBOARD_128 = {5: 76.61, 20: 86.27, 80: 87.83, 200: 87.20}
LEADERBOARD_SOURCE = "fast.ai's Imagenette leaderboard (github.com/fastai/imagenette), Imagewoof, 128 px"

H200_BF16_DENSE_TFLOPS = 989.0  # NVIDIA's H100/H200 SXM figure, dense (no sparsity)
ASSUMED_MFU = 0.30  # a planning assumption for convolutional networks in bf16; not measured yet
PESSIMISTIC_MFU = 0.15  # what a small-image, BN-heavy step may well reach instead
# One format per column of this chapter's tables (parameters to 0.1 M, epochs to 0.1, whole seconds).
FORMATS = {"params (M)": "{:.1f}", "paper ImageNet params (M)": "{:.1f}", "epochs": "{:.1f}", "input": "{:.0f}"}
STARTUP_S = 25.0  # per training process: imports, model build, data on the device, graph capture


@lru_cache(maxsize=None)
def network_counts(model: str, input_size: int = 112, num_classes: int = 10) -> dict:
    """Parameters and multiply-adds of a Table 7 network with a ``num_classes`` classifier at
    ``input_size`` (shapes only, on the meta device)."""
    import torch

    import ranlib

    with torch.device("meta"):
        net = ranlib.create_model(model, num_classes=num_classes)
    counts = ranlib.complexity(net, input_size)
    return {"params": int(counts["params"]), "macs": int(counts["macs"])}


def schedule(profile: str = "quick") -> dict:
    """The resolved schedule of an Imagewoof run at ``profile``: batch, lr, iterations, milestones,
    warm-up, input size, epochs (of the 9,025 training images) and the rule's text."""
    from ranlib.training.config import TrainConfig, resolve
    from ranlib.training.recipes import IMAGEWOOF_TRAIN_IMAGES

    c = resolve(TrainConfig(model="attention56", dataset="imagewoof", data_root=".", profile=profile))
    return {"batch_size": c.batch_size, "lr": c.lr, "iterations": c.iterations, "milestones": c.milestones,
            "warmup_iterations": c.warmup_iterations, "train_size": c.train_size, "test_size": c.test_size,
            "epochs": c.iterations * c.batch_size / IMAGEWOOF_TRAIN_IMAGES,
            "warmup_epochs": c.warmup_iterations * c.batch_size / IMAGEWOOF_TRAIN_IMAGES,
            "momentum": c.momentum, "weight_decay": c.weight_decay, "schedule_rule": c.schedule_rule}


def estimated_seconds(macs: float, *, iterations: int, batch_size: int, seeds: int = 1,
                      mfu: float = ASSUMED_MFU, eval_images: int = 3_929, eval_points: int = 5,
                      startup_s: float = STARTUP_S) -> float:
    """Device seconds of ``seeds`` trainings of a network of ``macs`` multiply-adds per image (fused
    into one process): 6 FLOPs per multiply-add per training image, 2 per test image at each of
    ``eval_points`` evaluations, at ``mfu`` of the H200's dense bf16 peak, plus one start-up."""
    flops = seeds * (6 * macs * iterations * batch_size + 2 * macs * eval_images * eval_points)
    return flops / (mfu * H200_BF16_DENSE_TFLOPS * 1e12) + startup_s


def cost_table(profile: str = "quick", seeds: int = 2) -> pd.DataFrame:
    """Per network: parameters and multiply-adds at the profile's size, and the estimated H200 time
    of ``seeds`` seeds (one fused process) at :data:`ASSUMED_MFU` and at :data:`PESSIMISTIC_MFU`."""
    s = schedule(profile)
    lines = []
    for row in experiment(EXPERIMENT).rows:
        counts = network_counts(row.model, s["train_size"])
        lines.append({
            "network": row.label, "params (M)": round(counts["params"] / 1e6, 1),
            f"GMACs at {s['train_size']} px": round(counts["macs"] / 1e9, 2),
            f"est. GPU-seconds, {seeds} seeds, at {100 * ASSUMED_MFU:.0f} % of peak": round(estimated_seconds(
                counts["macs"], iterations=s["iterations"], batch_size=s["batch_size"], seeds=seeds)),
            f"est. GPU-seconds at {100 * PESSIMISTIC_MFU:.0f} % of peak": round(estimated_seconds(
                counts["macs"], iterations=s["iterations"], batch_size=s["batch_size"], seeds=seeds,
                mfu=PESSIMISTIC_MFU)),
        })
    frame = pd.DataFrame(lines)
    total = {c: (frame[c].sum() if c.startswith("est.") else "") for c in frame.columns}
    total["network"] = "all rows"
    return pd.concat([frame, pd.DataFrame([total])], ignore_index=True)


def _record_epochs(record: dict) -> float:
    config = record.get("config", {})
    num_train = record["dataset"].get("num_train") or 0
    return config.get("iterations", 0) * config.get("batch_size", 0) / num_train if num_train else math.nan


def results_table(records: Sequence[dict]) -> pd.DataFrame:
    """One line per network (and budget we ran it at): top-1 error mean ± std over seeds, parameters
    and multiply-adds at the run's input size, cost (CPU- or GPU-hours), budget; the paper's ImageNet
    parameters and top-1 beside, for the ordering they claim (never compared as numbers)."""
    from .report import runs_frame
    from .tables import format_mean_std

    exp = experiment(EXPERIMENT)
    runs = runs_frame(EXPERIMENT, records)
    by_run = {r["run_name"]: r for r in records}
    lines = []
    for row in exp.rows:
        spec = paper.TABLE7_IMAGENET[row.model]
        context = {"paper ImageNet params (M)": spec["params"], "paper ImageNet top-1 (%)": spec["top1"]}
        mine = runs[runs["row"] == row.key]
        if mine.empty:
            counts = network_counts(row.model)
            lines.append({"network": row.label, "top-1 error (%)": "–", "params (M)": round(counts["params"] / 1e6, 1),
                          "GMACs": round(counts["macs"] / 1e9, 2), "input": 112, "epochs": math.nan,
                          "budget": "–", "seeds": "", "cost": "", "trained on": "", **context})
            continue
        for profile, group in mine.groupby("profile", sort=False):
            first = by_run[group["run_name"].iloc[0]]
            size = first["config"].get("train_size") or 112
            counts = network_counts(row.model, int(size))
            mean, std, n = mean_std(group["top1_error"])
            lines.append({"network": row.label, "top-1 error (%)": format_mean_std(mean, std, n),
                          "params (M)": round(counts["params"] / 1e6, 1), "GMACs": round(counts["macs"] / 1e9, 2),
                          "input": int(size), "epochs": round(_record_epochs(first), 1),
                          "budget": group["budget"].iloc[0],
                          "seeds": ", ".join(str(s) for s in sorted(group["seed"])),
                          "cost": hours_text([by_run[n] for n in group["run_name"]]),
                          "trained on": "; ".join(sorted(set(group["trained_on"]))), **context})
    return pd.DataFrame(lines)


def nearest_leaderboard_epochs(epochs: float) -> int:
    """The leaderboard's epoch count nearest ``epochs`` (on a log scale)."""
    return min(LEADERBOARD_128, key=lambda e: abs(math.log(e) - math.log(max(epochs, 1e-9))))


def leaderboard_context(records: Sequence[dict], profile: str = "quick") -> pd.DataFrame:
    """The leaderboard's accuracy at the epoch count nearest ours, as an error, beside our best and
    worst network at that budget (the profile's planned epochs when nothing has run)."""
    from .report import runs_frame

    runs = runs_frame(EXPERIMENT, records)
    judged = runs[runs["profile"] != "smoke"]
    if judged.empty:
        epochs = schedule(profile)["epochs"]
        ours = "not run here"
        best = worst = ""
    else:
        epochs = _record_epochs(next(r for r in records if r["run_name"] == judged["run_name"].iloc[0]))
        means = judged.groupby("label")["top1_error"].mean().sort_values()
        ours = f"{means.iloc[0]:.2f} – {means.iloc[-1]:.2f}"
        best, worst = means.index[0], means.index[-1]
    nearest = nearest_leaderboard_epochs(epochs)
    return pd.DataFrame([{
        "our epochs": round(epochs, 1), "our top-1 error (%), best – worst network": ours,
        "best": best, "worst": worst, "leaderboard epochs": nearest,
        "leaderboard top-1 error (%)": round(100 - LEADERBOARD_128[nearest], 2),
        "leaderboard": LEADERBOARD_SOURCE,
    }])


MASKS_FILE = "results/attention_masks/imagewoof_attention56_masks.npz"  # what the masks chapter reads


def masks_commands(profile: str = "quick", seed: int = 0) -> str:
    """The commands that give the masks chapter its Imagewoof figure: train Attention-56 on
    Imagewoof (both seeds fused), then write its masks to :data:`MASKS_FILE`."""
    import shlex

    from ranlib.training.flags import train_argv

    from .planning import plan_runs

    exp = experiment(EXPERIMENT)
    config = plan_runs(EXPERIMENT, profile=profile, seeds=[seed], dataset=exp.dataset, data_root=exp.data_root,
                       rows=["attention56"])[0]
    shown = {k: v for k, v in config.items() if k not in ("results_dir", "checkpoint_dir", "device") and v != {}}
    shown["data_root"] = exp.data_root
    checkpoint = f"checkpoints/{EXPERIMENT}/{config['run_name']}/last.pt"
    return "\n".join([
        shlex.join(["python", "-m", "ranlib", "train", *train_argv(shown)]),
        f"python -c \"from ranlib.study import plots; plots.write_checkpoint_masks('{checkpoint}', '{MASKS_FILE}')\"",
    ])
