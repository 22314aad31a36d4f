"""Training: the paper's recipes, profiles that scale them, and one loop for every experiment.

Recipes (Section 4.1 and 4.2 of the paper):

* CIFAR: Nesterov SGD, momentum 0.9, weight decay 1e-4, batch 64, lr 0.1 divided by 10 at 64k
  and 96k iterations, stop at 160k (about 205 epochs); the final iterate is evaluated.
* ImageNet: SGD momentum 0.9, lr 0.1 divided by 10 at 200k/400k/500k, stop at 530k. The paper
  gives neither batch size nor weight decay: ranlib uses batch 256 and weight decay 1e-4 (the
  values of the ResNet recipes the paper builds on) and plain (not Nesterov) momentum, since only
  the CIFAR section names Nesterov.

Large-batch rule (Goyal et al. 2017, "Accurate, Large Minibatch SGD"): at a batch size B other than
the recipe's B0, lr = lr0 * B / B0 (linear scaling), the iteration count and the lr milestones are
multiplied by B0 / B so the number of epochs stays the same, and when B > B0 the lr rises linearly
from lr/warmup to lr over the first 5 epochs' worth of iterations (gradual warm-up). Explicit
``lr``/``iterations``/``milestones``/``warmup_iterations`` override the rule; the resolved values
and a one-line ``schedule_rule`` are recorded in every results file.

Profiles scale the whole schedule to a budget: ``paper`` is the recipe itself; ``quick`` is a
tenth of the CIFAR schedule (a hundredth of ImageNet's) at a GPU-friendly batch with the
large-batch rule; ``smoke`` is a few iterations on a tiny subset, seconds on a CPU.

Multi-GPU: launch with ``torchrun --nproc_per_node N -m ranlib train ...``. ``batch_size`` is the
global batch; every process draws the same global batch (same seed) and trains on its 1/N slice,
so the data are those of a one-process run. Batch norm: by default each process normalises with
its own slice's statistics (as Caffe's multi-GPU training and Goyal et al. do) and the running
statistics are averaged over processes after every step; ``accum_steps`` gives exactly this
computation on one device (one micro-batch per simulated process). ``sync_bn=True`` (CUDA only)
normalises over the global batch instead, i.e. the same model as one process at that batch.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import json
import math
import os
import random
import resource
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checkpoint as ckpt
from . import paper, provenance
from .errors import (CheckpointError, ConfigError, DataNotFoundError, InputSizeError, RanlibError, ResultsExistError,
                     UnknownNameError)
from .results import SCHEMA_VERSION, check_name, ensure_writable, results_path, write_results

CIFAR_DATASETS = ("cifar10", "cifar100", "cifar10-jpeg", "folder")
IMAGENET_DATASETS = ("imagenet-folder",)
PRECISIONS = ("auto", "fp32", "bf16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
DEFAULT_DOWNLOAD_ROOT = ".data"  # where --download puts official CIFAR when no --data-root is given
TOP5_MIN_CLASSES = 100  # top-5 error is reported for CIFAR-100 and ImageNet, not for 10 classes
STAGE_RESPONSE_BATCH = 64  # fixed test images (the first ones) for Figure 4's stage responses


class TrainingInterrupted(RanlibError):
    """SIGTERM/SIGINT arrived: a checkpoint was written and the run can be resumed."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


# --------------------------------------------------------------------------------------------
# Recipes, profiles and the large-batch rule
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    """A training schedule at its reference batch size."""

    name: str
    batch_size: int
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    iterations: int
    milestones: tuple[int, ...]
    nominal_train_size: int  # images per epoch, to express the warm-up in epochs
    warmup_epochs: float = 5.0  # Goyal et al. 2017, used only when batch_size > the reference


RECIPES = {
    "cifar": Recipe("cifar", nominal_train_size=50_000, **paper.CIFAR_RECIPE),
    "imagenet": Recipe("imagenet", batch_size=256, weight_decay=1e-4, nesterov=False,
                       nominal_train_size=1_281_167, **paper.IMAGENET_RECIPE),
}


@dataclass(frozen=True)
class Profile:
    """A budget: batch size, the fraction of the (batch-scaled) schedule, subset sizes."""

    batch_size: int
    fraction: float = 1.0
    iterations: int | None = None  # absolute length (smoke runs); milestones keep the recipe's ratios
    eval_points: int = 20  # test-set evaluations over the run (learning curve only)
    checkpoint_every: int = 2000
    log_every: int = 100
    max_train_samples: int | None = None
    max_test_samples: int | None = None


PROFILES: dict[str, dict[str, Profile]] = {
    "cifar": {
        "smoke": Profile(batch_size=8, iterations=6, eval_points=2, checkpoint_every=3, log_every=1,
                         max_train_samples=64, max_test_samples=32),
        "quick": Profile(batch_size=256, fraction=0.1, eval_points=10, checkpoint_every=1000, log_every=50),
        "paper": Profile(batch_size=64, eval_points=40, checkpoint_every=4000, log_every=100),
    },
    "imagenet": {
        "smoke": Profile(batch_size=4, iterations=4, eval_points=1, checkpoint_every=2, log_every=1,
                         max_train_samples=16, max_test_samples=8),
        "quick": Profile(batch_size=256, fraction=0.01, eval_points=5, checkpoint_every=1000, log_every=50),
        "paper": Profile(batch_size=256, eval_points=53, checkpoint_every=5000, log_every=100),
    },
}


def scaled_schedule(recipe: Recipe, batch_size: int, fraction: float = 1.0,
                    iterations: int | None = None) -> dict:
    """The large-batch rule: lr, iterations, milestones and warm-up for ``batch_size``.

    ``fraction`` shortens the scaled schedule (profiles); ``iterations`` fixes its length. The
    milestones and the warm-up keep their share of the schedule in both cases.
    """
    k = batch_size / recipe.batch_size
    full = recipe.iterations / k
    total = int(iterations) if iterations is not None else max(1, round(full * fraction))
    milestones = [round(total * m / recipe.iterations) for m in recipe.milestones]
    warmup_share = recipe.warmup_epochs * recipe.nominal_train_size / (recipe.iterations * recipe.batch_size)
    warmup = round(total * warmup_share) if k > 1 else 0
    return {"lr": recipe.lr * k, "iterations": total, "milestones": milestones, "warmup_iterations": warmup}


class WarmupStepLR:
    """lr factor at an iteration: linear warm-up to 1, then ``decay`` per milestone passed.

    A callable object (not a lambda) so ``LambdaLR.state_dict`` stores it.
    """

    def __init__(self, milestones, decay: float = 0.1, warmup_iterations: int = 0):
        self.milestones = sorted(int(m) for m in milestones)
        self.decay = decay
        self.warmup_iterations = int(warmup_iterations)

    def __call__(self, iteration: int) -> float:
        factor = self.decay ** bisect.bisect_right(self.milestones, iteration)
        if iteration < self.warmup_iterations:
            factor *= (iteration + 1) / self.warmup_iterations
        return factor


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    """Everything a run depends on. ``None`` means "from the recipe and profile" (see ``resolve``)."""

    experiment: str = "default"
    run_name: str | None = None
    model: str = "cifar_attention92"
    model_kwargs: dict = field(default_factory=dict)
    dataset: str = "cifar10"
    data_root: str | None = None
    download: bool = False
    profile: str = "paper"
    seed: int = 0
    noise_level: float = 0.0
    batch_size: int | None = None
    lr: float | None = None
    momentum: float | None = None
    nesterov: bool | None = None
    weight_decay: float | None = None
    iterations: int | None = None
    milestones: list[int] | None = None
    lr_decay: float = 0.1
    warmup_iterations: int | None = None
    accum_steps: int = 1
    eval_every: int | None = None
    checkpoint_every: int | None = None
    log_every: int | None = None
    results_dir: str = "results"
    checkpoint_dir: str = "checkpoints"
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    compile_mode: str | None = None  # torch.compile mode, e.g. "reduce-overhead" (CUDA graphs)
    grad_checkpointing: bool = False  # recompute attention mask branches in backward (less memory)
    sync_bn: bool = False
    deterministic: bool | None = None
    resume: bool = False
    overwrite: bool = False
    max_train_samples: int | None = None
    max_test_samples: int | None = None
    num_workers: int = 8
    train_size: int | None = None  # ImageNet crop sizes (default: the model's input/test size)
    test_size: int | None = None
    progress: bool | None = None  # tqdm bar; None: only when stderr is a terminal
    schedule_rule: str | None = None  # filled by resolve(): how lr/iterations were chosen

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# Fields that may change between an interrupted run and its --resume (they do not change the result).
RESUMABLE_CHANGES = {"resume", "overwrite", "progress", "num_workers", "data_root", "results_dir",
                     "checkpoint_dir", "eval_every", "checkpoint_every", "log_every", "compile", "download",
                     "grad_checkpointing", "compile_mode"}


def _model_info(name: str):
    from . import models
    try:
        return models.model_info(name)
    except models.UnknownModelError as exc:
        raise UnknownNameError(str(exc)) from None


def default_run_name(config: TrainConfig) -> str:
    """model[-k=v...]-dataset[-noiseX]-profile-sSEED: readable and a valid file name."""
    parts = [config.model]
    parts += [f"{k}={v}" for k, v in sorted(config.model_kwargs.items())]
    parts.append(config.dataset)
    if config.noise_level:
        parts.append(f"noise{config.noise_level:g}")
    parts += [config.profile, f"s{config.seed}"]
    return "-".join(str(p).replace("/", "_").replace(" ", "") for p in parts)


def _check_dataset(model: str, dataset: str):
    """The model's info, after checking that ``dataset`` exists and suits the model."""
    info = _model_info(model)
    if dataset not in CIFAR_DATASETS + IMAGENET_DATASETS:
        raise UnknownNameError(f"unknown dataset {dataset!r}; valid: {', '.join(CIFAR_DATASETS + IMAGENET_DATASETS)}")
    valid = CIFAR_DATASETS if info.dataset == "cifar" else IMAGENET_DATASETS
    if dataset not in valid:
        kind = "an ImageNet" if info.dataset == "imagenet" else "a CIFAR"
        raise ConfigError(f"model {model} is {kind} model but dataset {dataset!r} is not; use one of: "
                          f"{', '.join(valid)}")
    return info


def _check_model_kwargs(model: str, kwargs: dict) -> None:
    from .models import model_variants
    allowed = model_variants(model)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ConfigError(f"model {model} does not take {', '.join(unknown)}; it takes: "
                          f"{', '.join(f'{k}={v!r}' for k, v in allowed.items()) or 'no options'}")


def resolve(config: TrainConfig) -> TrainConfig:
    """A copy of ``config`` with every ``None`` filled from the recipe and profile, validated."""
    from .noise import check_noise_level

    c = dataclasses.replace(config, model_kwargs=dict(config.model_kwargs))
    info = _check_dataset(c.model, c.dataset)
    _check_model_kwargs(c.model, c.model_kwargs)
    profiles = PROFILES[info.dataset]
    if c.profile not in profiles:
        raise UnknownNameError(f"unknown profile {c.profile!r}; valid: {', '.join(profiles)}")
    c.noise_level = check_noise_level(c.noise_level)
    if c.data_root is None:
        if c.download and c.dataset in ("cifar10", "cifar100"):
            c.data_root = DEFAULT_DOWNLOAD_ROOT
        else:
            from .data import HOW_TO_GET_CIFAR
            how = HOW_TO_GET_CIFAR if c.dataset.startswith("cifar") else "point it at the dataset's folder"
            raise DataNotFoundError(f"no --data-root given for dataset {c.dataset!r}: {how}")
    if c.precision not in PRECISIONS:
        raise UnknownNameError(f"unknown precision {c.precision!r}; valid: {', '.join(PRECISIONS)}")
    if c.compile_mode is not None and c.compile_mode not in COMPILE_MODES:
        raise UnknownNameError(f"unknown compile mode {c.compile_mode!r}; valid: {', '.join(COMPILE_MODES)}")
    if c.compile_mode is not None and not c.compile:
        raise ConfigError(f"compile mode {c.compile_mode!r} given without --compile; add --compile or drop the mode")
    profile, recipe = profiles[c.profile], RECIPES[info.dataset]

    explicit_batch = c.batch_size is not None
    c.batch_size = int(c.batch_size or profile.batch_size)
    if c.batch_size < 1 or c.accum_steps < 1 or c.batch_size % c.accum_steps:
        raise ConfigError(f"batch size {c.batch_size} must be a positive multiple of accum_steps {c.accum_steps}")
    rule = scaled_schedule(recipe, c.batch_size, profile.fraction,
                           iterations=c.iterations if c.iterations is not None else profile.iterations)
    chosen = {k: getattr(c, k) for k in rule if getattr(c, k) is not None}
    if c.iterations is not None and c.milestones is None:
        chosen.pop("milestones", None)  # milestones keep the recipe's share of the given length
    c.lr = float(c.lr if c.lr is not None else rule["lr"])
    c.iterations = int(rule["iterations"])
    c.milestones = [int(m) for m in (c.milestones if c.milestones is not None else rule["milestones"])]
    c.warmup_iterations = int(c.warmup_iterations if c.warmup_iterations is not None else rule["warmup_iterations"])
    if c.iterations < 1 or c.lr <= 0 or c.warmup_iterations < 0:
        raise ConfigError(f"need iterations >= 1, lr > 0 and warmup >= 0 (got {c.iterations}, {c.lr}, "
                          f"{c.warmup_iterations})")
    c.momentum = recipe.momentum if c.momentum is None else float(c.momentum)
    c.nesterov = recipe.nesterov if c.nesterov is None else bool(c.nesterov)
    c.weight_decay = recipe.weight_decay if c.weight_decay is None else float(c.weight_decay)
    scale = c.batch_size / recipe.batch_size
    rule_parts = [f"{recipe.name} recipe (batch {recipe.batch_size}, lr {recipe.lr:g}, {recipe.iterations} it, "
                  f"milestones {list(recipe.milestones)}) at batch {c.batch_size}"]
    if scale == 1:
        rule_parts.append("the recipe's lr and schedule")
    else:
        rule_parts.append(f"linear lr scaling x{scale:g}, iterations and milestones x{1 / scale:g}"
                          + (", linear warm-up over 5 epochs (Goyal et al. 2017)" if scale > 1 else ""))
    if config.iterations is None and profile.iterations is None and profile.fraction != 1:
        rule_parts.append(f"{profile.fraction:g} of that schedule ({c.profile} profile)")
    if config.iterations is not None or profile.iterations is not None:
        rule_parts.append(f"fixed length {c.iterations} it, milestones and warm-up at the recipe's share")
    if chosen:
        rule_parts.append(f"explicit {', '.join(sorted(chosen))}")
    c.schedule_rule = "; ".join(rule_parts)
    c.eval_every = int(c.eval_every or max(1, math.ceil(c.iterations / profile.eval_points)))
    c.checkpoint_every = int(c.checkpoint_every or profile.checkpoint_every)
    c.log_every = int(c.log_every or profile.log_every)
    if c.max_train_samples is None:
        c.max_train_samples = profile.max_train_samples
    if c.max_test_samples is None:
        c.max_test_samples = profile.max_test_samples
    c.train_size = int(c.train_size or info.input_size)
    c.test_size = int(c.test_size or getattr(info, "test_size", None) or info.input_size)
    c.run_name = c.run_name or default_run_name(c)
    check_name(c.experiment, "experiment")
    check_name(c.run_name, "run name")
    return c


# --------------------------------------------------------------------------------------------
# Devices, precision, distributed
# --------------------------------------------------------------------------------------------

@dataclass
class Dist:
    """This process's place in a torchrun job (world_size 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_request: str) -> Dist:
    """Join the torchrun process group if WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_request != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, local)


def select_device(request: str, d: Dist) -> torch.device:
    if request == "auto":
        return torch.device(f"cuda:{d.local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(request)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {request!r} asked for but CUDA is not available; use --device cpu")
        if d.enabled:
            device = torch.device(f"cuda:{d.local_rank}")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 autocast on CUDA, plain fp32 on CPU."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _all_reduce(tensor: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        import torch.distributed as dist
        dist.all_reduce(tensor)
    return tensor


def _bn_modules(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def _bn_running_state(model: nn.Module) -> list[tuple[torch.Tensor, ...]]:
    return [(m.running_mean, m.running_var, m.num_batches_tracked) for m in _bn_modules(model)]


def average_bn_running_stats(model: nn.Module, d: Dist) -> None:
    """Per-process BN: make the running statistics the mean over processes (identical everywhere)."""
    if not d.enabled:
        return
    stats = [t for m in _bn_modules(model) for t in (m.running_mean, m.running_var)]
    if not stats:
        return
    flat = torch.cat([t.reshape(-1).float() for t in stats])
    _all_reduce(flat, d).div_(d.world_size)
    offset = 0
    for t in stats:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

@dataclass
class Split:
    """Everything the loop needs from a dataset."""

    train: Any  # endless (x, y) batches: iter(), state_dict(), load_state_dict()
    test: Any  # re-iterable over (x, y) batches of the test set, once
    fixed_batch: torch.Tensor  # the first test images, for stage responses
    info: dict  # the results' "dataset" block
    num_classes: int
    noise: dict | None
    mean: torch.Tensor | None = None  # normalisation mean (CIFAR: per-pixel mean image of the training set)
    sharded: bool = False  # batches are already this process's share (ImageNet DistributedSampler)


class _GpuStream:
    """Endless training batches from ``GpuBatches`` across epochs, with its resumable position."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self) -> Iterator:
        return self.batches.forever()

    def state_dict(self) -> dict:
        return self.batches.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.batches.load_state_dict(state)


def load_cifar_split(c: TrainConfig, device: torch.device, input_size: int, *, train: bool = True,
                     eval_batch_size: int | None = None, mean: torch.Tensor | None = None) -> Split:
    """The 32x32 path: the whole set on ``device`` as uint8, augmentation there in whole batches.

    Normalisation subtracts the per-pixel mean image of the training images used (Section 4.1);
    an evaluation of a checkpoint passes the ``mean`` it was trained with.
    """
    from . import data
    from .noise import apply_label_noise

    arrays = data.load_arrays(c.dataset, c.data_root, download=c.download)
    train_images, train_labels = arrays.train_images, np.asarray(arrays.train_labels, dtype=np.int64)
    test_images, test_labels = arrays.test_images, np.asarray(arrays.test_labels, dtype=np.int64)
    if c.max_train_samples:
        train_images, train_labels = train_images[:c.max_train_samples], train_labels[:c.max_train_samples]
    if c.max_test_samples:
        test_images, test_labels = test_images[:c.max_test_samples], test_labels[:c.max_test_samples]
    height, width = test_images.shape[1:3]
    if (height, width) != (input_size, input_size):
        raise InputSizeError(f"dataset {c.dataset!r} has {height}x{width} images but {c.model} expects "
                             f"{input_size}x{input_size}; resize the images or pick a model for that size")
    num_classes = arrays.num_classes
    noise = None
    if c.noise_level > 0:
        train_labels, stats = apply_label_noise(train_labels, c.noise_level, c.seed, num_classes)
        noise = stats.to_dict()
    mean = data.pixel_mean(train_images) if mean is None else mean
    common = dict(device=device, mean=mean, channels_last=bool(c.channels_last), seed=c.seed)
    train_stream = _GpuStream(data.GpuBatches(train_images, train_labels, batch_size=c.batch_size, train=True,
                                              drop_last=True, **common)) if train else None
    test = data.GpuBatches(test_images, test_labels, batch_size=eval_batch_size or max(c.batch_size, 500),
                           train=False, **common)
    fixed = next(iter(data.GpuBatches(test_images[:STAGE_RESPONSE_BATCH], test_labels[:STAGE_RESPONSE_BATCH],
                                      batch_size=STAGE_RESPONSE_BATCH, train=False, **common)))[0]
    info = {**arrays.to_dict(), "num_train": int(len(train_labels)), "num_test": int(len(test_labels)),
            "subset": bool(c.max_train_samples or c.max_test_samples)}
    return Split(train_stream, test, fixed, info, num_classes, noise, mean=mean.cpu())


class EpochSampler(torch.utils.data.Sampler):
    """This process's share of one epoch's shuffled indices, from a start position.

    The order depends on (seed, epoch) only; every process takes every world_size-th index of the
    same permutation (the tail that does not divide evenly is dropped, so shares are equal), and
    a resumed run starts inside the epoch without loading the batches it had already seen.
    """

    def __init__(self, num_samples: int, seed: int, rank: int = 0, world_size: int = 1):
        self.num_samples, self.seed, self.rank, self.world_size = num_samples, seed, rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _share(self) -> int:
        return self.num_samples // self.world_size

    def __len__(self) -> int:
        return max(0, self._share() - self.start)

    def __iter__(self) -> Iterator[int]:
        from .data import epoch_seed
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(self.num_samples, generator=generator)[:self._share() * self.world_size]
        return iter(order[self.rank::self.world_size][self.start:].tolist())


class _LoaderStream:
    """Endless batches from a DataLoader over an :class:`EpochSampler`, with a resumable (epoch, position).

    Each epoch also reseeds the loader's generator from (seed, epoch), which fixes the workers'
    augmentation seeds. A run resumed mid-epoch sees the same images in the same order; their random
    crops differ from the uninterrupted run's, since workers then take different batches.
    """

    def __init__(self, loader, seed: int, device: torch.device, channels_last: bool):
        self.loader, self.seed = loader, seed
        self.test = _OnePass(loader, device, channels_last)
        self.epoch, self.position = 0, 0

    def __iter__(self) -> Iterator:
        from .data import epoch_seed
        while True:
            self.loader.generator.manual_seed(epoch_seed(self.seed, self.epoch))
            self.loader.sampler.set_epoch(self.epoch, start=self.position * self.loader.batch_size)
            for x, y in self.loader:
                self.position += 1
                yield self.test.to_device(x, y)
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def _loader(dataset, batch_size: int, workers: int, *, sampler=None, drop_last=False):
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, num_workers=workers,
        pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0, generator=torch.Generator())


def load_imagenet_split(c: TrainConfig, device: torch.device, d: "Dist", *, train: bool = True,
                        eval_batch_size: int | None = None) -> Split:
    """The ImageNet-folder path: ranlib.data's datasets and transforms, DataLoaders with workers.

    Under torchrun each process loads its 1/N of the global batch (EpochSampler); the test set is
    read whole by every process and sharded in ``evaluate``.
    """
    from . import data

    if c.noise_level > 0:
        raise ConfigError("label noise is implemented for the 32x32 datasets only (Table 5 is CIFAR-10)")
    loaders = data.ImageNetLoaders(c.data_root, batch_size=c.batch_size, workers=0, train_size=c.train_size,
                                   test_size=c.test_size, seed=c.seed)
    train_set, test_set = loaders.train_set, loaders.test_set
    if c.max_train_samples:
        train_set = torch.utils.data.Subset(train_set, range(min(c.max_train_samples, len(train_set))))
    if c.max_test_samples:
        test_set = torch.utils.data.Subset(test_set, range(min(c.max_test_samples, len(test_set))))
    memory_format = torch.channels_last if c.channels_last else torch.contiguous_format
    test = _OnePass(_loader(test_set, eval_batch_size or c.batch_size, c.num_workers), device,
                    bool(c.channels_last))
    fixed = torch.stack([test_set[i][0] for i in range(min(STAGE_RESPONSE_BATCH, len(test_set)))])
    train_stream = None
    if train:
        sampler = EpochSampler(len(train_set), c.seed, d.rank, d.world_size)
        train_loader = _loader(train_set, c.batch_size // d.world_size, c.num_workers, sampler=sampler,
                               drop_last=True)
        train_stream = _LoaderStream(train_loader, c.seed, device, bool(c.channels_last))
    info = {**loaders.to_dict(), "num_train": len(train_set), "num_test": len(test_set),
            "subset": bool(c.max_train_samples or c.max_test_samples)}
    return Split(train_stream, test, fixed.to(device, memory_format=memory_format), info,
                 loaders.num_classes, None, sharded=True)


class _OnePass:
    """One pass over a DataLoader (the test set), batches moved to ``device``."""

    def __init__(self, loader, device: torch.device, channels_last: bool):
        self.loader, self.device = loader, device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def to_device(self, x, y):
        return (x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format),
                y.to(self.device, non_blocking=True))

    def __iter__(self):
        for x, y in self.loader:
            yield self.to_device(x, y)


def load_split(c: TrainConfig, device: torch.device, input_size: int, d: "Dist", **kwargs) -> Split:
    if c.dataset in IMAGENET_DATASETS:
        return load_imagenet_split(c, device, d, **{k: v for k, v in kwargs.items() if k != "mean"})
    return load_cifar_split(c, device, input_size, **kwargs)


# --------------------------------------------------------------------------------------------
# Model, evaluation
# --------------------------------------------------------------------------------------------

def build_model(name: str, model_kwargs: dict, num_classes: int, seed: int) -> nn.Module:
    """The registry's model, initialised from ``seed`` (same weights on every process)."""
    import ranlib
    torch.manual_seed(seed)
    try:
        return ranlib.create_model(name, num_classes=num_classes, **model_kwargs)
    except (TypeError, ValueError) as exc:  # a switch value the model rejects
        raise ConfigError(f"model {name} with options {model_kwargs}: {exc}") from None


def enable_grad_checkpointing(model: nn.Module, name: str) -> None:
    """Recompute every attention module's mask branch in backward (``ResidualNet.set_grad_checkpointing``).

    Only attention networks have mask branches: for any other model (plain ResNets, the
    torchvision baselines) turning it on would silently do nothing, so it is refused.
    """
    if not (hasattr(model, "set_grad_checkpointing") and any(hasattr(m, "checkpoint_mask") for m in model.modules())):
        raise ConfigError(f"model {name} has no attention mask branch to checkpoint; leave grad checkpointing off")
    model.set_grad_checkpointing(True)


@torch.no_grad()
def evaluate(model: nn.Module, batches, device: torch.device, precision: str, d: Dist = Dist(),
             topk: int = 5) -> dict:
    """Top-1/top-k error (%), mean loss and ``count``, the number of images evaluated, over one pass
    over ``batches`` (sharded over processes, summed)."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1 correct, topk correct, count
    for x, y in batches:
        x, y = x.tensor_split(d.world_size)[d.rank], y.tensor_split(d.world_size)[d.rank]
        if not len(y):
            continue
        with autocast(device, precision):
            logits = model(x)
        logits = logits.float()
        k = min(topk, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top.eq(y[:, None])
        sums += torch.stack([F.cross_entropy(logits, y, reduction="sum").double(),
                             hits[:, 0].sum().double(), hits.any(1).sum().double(),
                             torch.tensor(float(len(y)), dtype=torch.float64, device=device)])
    model.train(was_training)
    loss, top1, topk_hits, count = _all_reduce(sums, d).tolist()
    n = max(count, 1.0)
    return {"top1_error": 100.0 * (1 - top1 / n), "top5_error": 100.0 * (1 - topk_hits / n),
            "loss": loss / n, "count": int(count)}


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated GPU memory, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------

class _StopFlag:
    """SIGTERM/SIGINT set a flag; the loop checkpoints at the next step boundary and stops."""

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum:  # a second signal: give up at once
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _MetricsLog:
    """metrics.jsonl beside the checkpoint: one JSON object per line, trimmed on resume."""

    def __init__(self, path: Path, keep_until: int | None, enabled: bool):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if keep_until is not None and path.exists():
            for line in path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    if json.loads(line).get("iteration", 0) <= keep_until:
                        kept.append(line)
        path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def _check_resumable(saved: dict, c: TrainConfig, path: Path) -> None:
    # A field added to TrainConfig since the checkpoint was written had its default value then.
    old, new = TrainConfig().to_dict() | saved.get("config", {}), c.to_dict()
    differ = sorted(k for k in new if k not in RESUMABLE_CHANGES and old.get(k) != new[k])
    if differ:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in differ[:4])
        raise CheckpointError(f"checkpoint {path} was written by a different configuration ({detail}); "
                              "resume with the original settings or pass --overwrite to start over")


def run(config: TrainConfig) -> dict:
    """Train, evaluate the final iterate, write the results file (main process) and return the record."""
    started_at = provenance.utc_now()
    d = init_distributed(config.device)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        return _run(config, d, started_at)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        if d.enabled:
            torch.distributed.destroy_process_group()


def _run(config: TrainConfig, d: Dist, started_at: str) -> dict:
    wall_start = time.perf_counter()
    c = resolve(config)
    device = select_device(c.device, d)
    c.precision = resolve_precision(c.precision, device)
    if c.channels_last is None:
        c.channels_last = device.type == "cuda"
    if c.deterministic is None:
        c.deterministic = device.type == "cpu"
    if c.batch_size % (d.world_size * c.accum_steps):
        raise ConfigError(f"global batch {c.batch_size} must divide by processes x accum_steps "
                          f"({d.world_size} x {c.accum_steps})")
    if c.sync_bn and device.type != "cuda":
        raise ConfigError("--sync-bn needs CUDA (torch's SyncBatchNorm has no CPU kernel); leave it off on CPU")
    info = _model_info(c.model)

    out_path = results_path(c.results_dir, c.experiment, c.run_name)
    run_dir = Path(c.checkpoint_dir) / c.experiment / c.run_name
    ckpt_path = run_dir / ckpt.CHECKPOINT_NAME
    ensure_writable(out_path, c.overwrite)
    saved = None
    if c.resume and ckpt_path.exists():
        saved = ckpt.load_checkpoint(ckpt_path, map_location="cpu")
        _check_resumable(saved, c, ckpt_path)
    elif ckpt_path.exists() and not c.overwrite:
        raise ResultsExistError(f"a checkpoint of run {c.run_name!r} exists at {ckpt_path}; pass --resume to "
                                "continue it or --overwrite to start over")
    elif c.resume and d.main:
        print(f"ranlib: no checkpoint at {ckpt_path}; starting run {c.run_name} from iteration 0", file=sys.stderr)

    torch.use_deterministic_algorithms(c.deterministic, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not c.deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(device)
    seed_everything(c.seed)

    split = load_split(c, device, info.input_size, d)
    if saved is not None and saved.get("dataset", {}).get("fingerprint") != split.info["fingerprint"]:
        raise CheckpointError(f"checkpoint {ckpt_path} was trained on data with fingerprint "
                              f"{saved.get('dataset', {}).get('fingerprint')}, not {split.info['fingerprint']}; "
                              "point --data-root at the original data")
    model = build_model(c.model, c.model_kwargs, split.num_classes, c.seed)
    if c.grad_checkpointing:
        enable_grad_checkpointing(model, c.model)
    complexity = _complexity(model, info.input_size)
    model = model.to(device, memory_format=torch.channels_last if c.channels_last else torch.contiguous_format)
    if c.sync_bn and d.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum, nesterov=c.nesterov,
                                weight_decay=c.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupStepLR(c.milestones, c.lr_decay,
                                                                          c.warmup_iterations))
    start_iteration, curve, spent = 0, [], {"train_time_s": 0.0, "wall_time_s": 0.0, "images": 0}
    resumed_windows = [[0.0] * 3, [0.0] * 3]
    if saved is not None:
        ckpt.load_model_state(model, saved["model"], ckpt_path)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        split.train.load_state_dict(saved["data"])
        ckpt.set_rng_state(saved["rng"])
        start_iteration, curve, spent = saved["iteration"], saved["curve"], saved["spent"]
        resumed_windows = saved["windows"]

    raw_model = model  # what checkpoints and analysis see (no DDP/compile wrappers)
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                        forward_sync_buffers=False)  # BN stats: averaged after each step
    step_model = torch.compile(model, mode=c.compile_mode) if c.compile else model

    metrics = _MetricsLog(run_dir / "metrics.jsonl", keep_until=start_iteration if saved else None, enabled=d.main)
    metrics.write({"event": "resume" if saved else "start", "iteration": start_iteration, "config": c.to_dict()})

    def save(iteration: int) -> None:
        if not d.main:
            return
        ckpt.save_checkpoint(ckpt_path, {
            "config": c.to_dict(), "iteration": iteration, "model": raw_model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "data": split.train.state_dict(), "rng": ckpt.rng_state(), "curve": curve,
            "dataset": split.info, "noise": split.noise, "num_classes": split.num_classes, "data_mean": split.mean,
            "windows": [window.tolist(), log_window.tolist()],
            "spent": {**spent, "train_time_s": spent["train_time_s"] + train_time,
                      "wall_time_s": spent["wall_time_s"] + time.perf_counter() - wall_start,
                      "images": spent["images"] + images},
        })

    micro = c.batch_size // (d.world_size * c.accum_steps)
    # Training loss sum, correct count, image count since the last eval / log line (kept on device: no syncs).
    window, log_window = (torch.tensor(w, dtype=torch.float64, device=device) for w in resumed_windows)
    train_time, images, num_train = 0.0, 0, split.info["num_train"]
    show_bar = d.main and (c.progress if c.progress is not None else sys.stderr.isatty())
    bar = _progress(show_bar, start_iteration, c.iterations, c.run_name)
    batches = iter(split.train)
    model.train()
    iteration = start_iteration
    with _StopFlag() as stop:
        tick = time.perf_counter()
        while iteration < c.iterations:
            x, y = next(batches)
            if not split.sharded:  # every process drew the same global batch: keep this process's slice
                x, y = x.tensor_split(d.world_size)[d.rank], y.tensor_split(d.world_size)[d.rank]
            bn_start = [tuple(t.clone() for t in s) for s in _bn_running_state(raw_model)] \
                if c.accum_steps > 1 else None
            bn_sums = None
            for j, (xm, ym) in enumerate(zip(x.split(micro), y.split(micro))):
                if bn_start is not None and j > 0:  # every micro-batch starts from the same running stats
                    bn_sums = _add_running(bn_sums, _bn_running_state(raw_model))
                    _load_running(raw_model, bn_start)
                sync = contextlib.nullcontext() if (not d.enabled or j == c.accum_steps - 1) else model.no_sync()
                with sync:
                    with autocast(device, c.precision):
                        logits = step_model(xm)
                        loss = F.cross_entropy(logits, ym)
                    (loss / c.accum_steps).backward()
                with torch.no_grad():  # device-side sums: no host sync per step
                    batch_stats = torch.stack([loss.detach().double() * len(ym), logits.argmax(1).eq(ym).sum()])
                    for w in (window, log_window):
                        w[:2] += batch_stats
                        w[2] += len(ym)
            if bn_start is not None:
                _finish_running_average(raw_model, _add_running(bn_sums, _bn_running_state(raw_model)),
                                        c.accum_steps)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if not c.sync_bn:
                average_bn_running_stats(raw_model, d)
            iteration += 1
            images += c.batch_size
            bar.update(1)

            boundary = iteration % c.log_every == 0 or iteration == c.iterations
            if boundary:
                loss_sum, correct, count = _all_reduce(log_window.clone(), d).tolist()
                log_window.zero_()
                now = time.perf_counter()
                train_time += now - tick
                tick = now
                rate = images / max(train_time, 1e-9)
                bar.set_postfix(loss=f"{loss_sum / max(count, 1):.3f}", img_s=f"{rate:.0f}", lr=f"{lr:.3g}")
                metrics.write({"event": "train", "iteration": iteration, "epoch": iteration * c.batch_size / num_train,
                               "lr": lr, "train_loss": loss_sum / max(count, 1),
                               "train_top1_error": 100.0 * (1 - correct / max(count, 1)), "images_per_s": rate})
            if iteration % c.eval_every == 0 or iteration == c.iterations:
                loss_sum, correct, count = _all_reduce(window.clone(), d).tolist()  # waits for the device
                window.zero_()
                train_time += time.perf_counter() - tick
                test = evaluate(raw_model if d.enabled else step_model, split.test, device, c.precision, d)
                point = {"iteration": iteration, "epoch": iteration * c.batch_size / num_train, "lr": lr,
                         "train_loss": loss_sum / max(count, 1),
                         "train_top1_error": 100.0 * (1 - correct / max(count, 1)),
                         "test_top1_error": test["top1_error"], "test_top5_error": test["top5_error"],
                         "test_loss": test["loss"], "test_count": test["count"]}
                curve.append(point)
                metrics.write({"event": "eval", **point})
                tick = time.perf_counter()
            stop_now = _agree_to_stop(stop.signum, d) if (not d.enabled or boundary) else 0
            if stop_now and iteration < c.iterations:
                train_time += time.perf_counter() - tick
                save(iteration)
                bar.close()
                metrics.write({"event": "interrupted", "iteration": iteration, "signal": stop_now})
                raise TrainingInterrupted(
                    f"stopped by signal {stop_now} at iteration {iteration}/{c.iterations}; checkpoint saved to "
                    f"{ckpt_path}; continue with the same command plus --resume", stop_now)
            if iteration % c.checkpoint_every == 0 and iteration < c.iterations:
                _synchronize(device)  # queued steps count as training, not as checkpoint time
                t0 = time.perf_counter()
                save(iteration)
                tick += time.perf_counter() - t0  # checkpoint time is not training time
    bar.close()
    save(iteration)  # the final model, for `ranlib eval`

    final = curve[-1]
    model.eval()
    with torch.no_grad(), autocast(device, c.precision):
        from .analysis import stage_responses
        responses = [float(r) for r in stage_responses(raw_model, split.fixed_batch)]
    wall = spent["wall_time_s"] + time.perf_counter() - wall_start
    train_total = spent["train_time_s"] + train_time
    total_images = spent["images"] + images
    record = {
        "schema": SCHEMA_VERSION,
        "experiment": c.experiment,
        "run_name": c.run_name,
        "config": c.to_dict(),
        "model": {"name": c.model, "kwargs": c.model_kwargs, **complexity,
                  "input_size": info.input_size, "num_classes": split.num_classes},
        "dataset": split.info,
        "noise": split.noise,
        "final": {"top1_error": final["test_top1_error"],
                  "top5_error": final["test_top5_error"] if split.num_classes >= TOP5_MIN_CLASSES else None,
                  "test_loss": final["test_loss"], "iteration": final["iteration"],
                  "num_test": final["test_count"]},
        "curve": curve,
        "analysis": {"stage_response": responses, "stage_response_images": int(len(split.fixed_batch))},
        "provenance": {**provenance.collect(device, precision=c.precision, seed=c.seed, started_at=started_at),
                       "world_size": d.world_size, "resumed": saved is not None},
        "cost": {"wall_time_s": wall, "train_time_s": train_total,
                 "images_per_s": total_images / max(train_total, 1e-9),
                 "peak_memory_bytes": peak_memory_bytes(device),
                 "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_max_rss",
                 "device_hours": wall * d.world_size / 3600.0, "devices": d.world_size},
    }
    if d.main:
        write_results(record, c.results_dir, overwrite=c.overwrite)
        metrics.write({"event": "final", "iteration": iteration, **record["final"]})
    return record


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _agree_to_stop(signum: int, d: Dist) -> int:
    """The signal any process received (all processes stop at the same iteration)."""
    if not d.enabled:
        return signum
    flag = torch.tensor([signum], dtype=torch.float64)
    if torch.distributed.get_backend() == "nccl":
        flag = flag.cuda()
    return int(_all_reduce(flag, d).max().item())


def _add_running(acc, state):
    """Sum BN running means/vars over micro-batches (num_batches_tracked: keep the latest)."""
    if acc is None:
        return [(m.clone(), v.clone(), n.clone()) for m, v, n in state]
    return [(am + m, av + v, n.clone()) for (am, av, _), (m, v, n) in zip(acc, state)]


def _load_running(model: nn.Module, state) -> None:
    for module, (m, v, n) in zip(_bn_modules(model), state):
        module.running_mean.copy_(m)
        module.running_var.copy_(v)
        module.num_batches_tracked.copy_(n)


def _finish_running_average(model: nn.Module, sums, k: int) -> None:
    _load_running(model, [(m / k, v / k, n) for m, v, n in sums])


def _complexity(model: nn.Module, input_size: int) -> dict:
    import ranlib
    result = ranlib.complexity(model, input_size)
    return {"params": int(result["params"]), "macs": int(result["macs"])}


def _progress(enabled: bool, start: int, total: int, name: str):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=start, disable=not enabled, desc=name, unit="it", dynamic_ncols=True,
                smoothing=0.05)


# --------------------------------------------------------------------------------------------
# Evaluating a checkpoint
# --------------------------------------------------------------------------------------------

def evaluate_checkpoint(path: str | os.PathLike, *, dataset: str | None = None, data_root: str | None = None,
                        device: str = "auto", batch_size: int = 256, precision: str = "auto",
                        max_test_samples: int | None = None, test_size: int | None = None) -> dict:
    """Top-1/top-5 error of a checkpoint's model on a dataset's test split."""
    saved, trained = load_trained(path)
    c = dataclasses.replace(trained, dataset=dataset or trained.dataset, data_root=data_root or trained.data_root,
                            max_test_samples=max_test_samples, max_train_samples=None, noise_level=0.0,
                            test_size=test_size or trained.test_size, run_name=trained.run_name, profile=trained.profile)
    info = _check_dataset(c.model, c.dataset)
    dev = select_device(device, Dist())
    prec = resolve_precision(precision, dev)
    c.channels_last = dev.type == "cuda"
    split = load_split(c, dev, info.input_size, Dist(), train=False, eval_batch_size=batch_size,
                       mean=saved.get("data_mean"))
    num_classes = saved.get("num_classes") or _num_classes_of(saved["model"])
    if num_classes is not None and num_classes != split.num_classes:
        raise CheckpointError(f"checkpoint {path} predicts {num_classes} classes but {c.dataset} has "
                              f"{split.num_classes}; evaluate it on the dataset it was trained for")
    model = trained_model(saved, trained, split.num_classes, path)
    model = model.to(dev, memory_format=torch.channels_last if c.channels_last else torch.contiguous_format)
    result = evaluate(model, split.test, dev, prec)
    return {"checkpoint": str(path), "model": c.model, "model_kwargs": c.model_kwargs,
            "iteration": saved.get("iteration"), "dataset": split.info, "num_test": result["count"],
            "top1_error": result["top1_error"],
            "top5_error": result["top5_error"] if split.num_classes >= TOP5_MIN_CLASSES else None,
            "test_loss": result["loss"],
            "provenance": provenance.collect(dev, precision=prec, seed=c.seed)}


def load_trained(path: str | os.PathLike) -> tuple[dict, TrainConfig]:
    """A checkpoint written by ``ranlib train`` and the configuration it was trained with."""
    saved = ckpt.load_checkpoint(path, map_location="cpu")
    if "config" not in saved:
        raise CheckpointError(f"{path} holds no training configuration; it was not written by ranlib train")
    return saved, TrainConfig.from_dict(saved["config"])


def trained_model(saved: dict, trained: TrainConfig, num_classes: int, path: str | os.PathLike) -> nn.Module:
    """The checkpoint's model with its trained weights (on the CPU)."""
    model = build_model(trained.model, trained.model_kwargs, num_classes, 0)
    ckpt.load_model_state(model, saved["model"], path)
    return model


def _num_classes_of(state_dict: dict) -> int | None:
    """Rows of the last 2-D weight (the classifier) in a state dict."""
    weights = [v for k, v in state_dict.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 2]
    return int(weights[-1].shape[0]) if weights else None
