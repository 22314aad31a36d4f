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

On a CPU the ``quick`` profile's batch is the fastest of ``CPU_BATCHES`` on that machine, measured
once and cached (:mod:`ranlib.training.cpu_batch`), and recorded in the run's ``batch_rule``; the schedule
follows from it by the large-batch rule. ``precision="auto"`` is bf16 autocast on CUDA and on a
CPU with native bf16, and ``channels_last`` is on by default everywhere (issue 18).

Imagewoof (``dataset="imagewoof"``) has a recipe and profiles of its own (``RECIPES`` and
``PROFILES`` are keyed by the dataset there, by the model's family "cifar"/"imagenet" otherwise):
the ImageNet recipe's optimiser and the shape of its step schedule (lr / 10 at 200k/530k,
400k/530k and 500k/530k of the run), 20 epochs of Imagewoof's 9,025 training images at batch 256
and lr 0.1 (Goyal et al.'s 0.1 per 256 images), with a linear warm-up over the first 2 epochs even
at the reference batch (a from-scratch run this short has no easy first epochs to spare).
There is no ``paper`` budget for it: the paper never trained on Imagewoof. Why these numbers:
``ranlib.models.choices.OPEN_CHOICES`` ("Imagewoof recipe").

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
import hashlib
import json
import math
import os
import re
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from . import checkpoint as ckpt
from . import provenance
from ranlib.errors import (CheckpointError, ConfigError, DataFormatError, DataNotFoundError, RanlibError, ResultsExistError,
                     StorageError, UnknownNameError)
from ranlib.files import FolderLock, check_free_space, check_writable
from ranlib.models.fused import (FusedConv2d, choose_conv_impls, fuse, fuse_inputs, fused_optimizer_state,
                           member_optimizer_state, member_state_dict, shared_inputs)
from ranlib.options import DEVICE, check_all, options_from_hints
from .results import SCHEMA_VERSION, check_name, results_path, write_record, write_results
from .runtime import (Dist, algorithms, all_reduce, autocast, average_bn_running_stats, cuda_time_s, device_type,
                      init_distributed, peak_memory_bytes, resolve_precision, seed_everything, select_device,
                      synchronize)
from .splits import IMAGENET_STYLE_DATASETS, load_split
from .step import TrainStep, member_losses

CIFAR_DATASETS = ("cifar10", "cifar100", "cifar10-jpeg", "folder")
IMAGEWOOF_SIZE = 112  # the shared copy's shorter side: ImageNet networks train and test at it there
PRECISIONS = ("auto", "fp32", "bf16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
DEFAULT_DOWNLOAD_ROOT = ".data"  # where --download puts official CIFAR when no --data-root is given
TOP5_MIN_CLASSES = 100  # top-5 error is reported for CIFAR-100 and ImageNet, not for 10 classes
# What the members of one fused group may differ in (and the model switch residual_attention).
GROUP_MAY_DIFFER = ("experiment", "run_name", "seed", "noise_level", "model_kwargs")


class TrainingInterrupted(RanlibError):
    """SIGTERM/SIGINT arrived: a checkpoint was written and the run can be resumed."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


# --------------------------------------------------------------------------------------------
# Recipes, profiles and the large-batch rule
# --------------------------------------------------------------------------------------------

# The paper's CIFAR training recipe (Section 4.1).
CIFAR_RECIPE = dict(
    batch_size=64, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4,
    milestones=(64_000, 96_000), iterations=160_000,
)
# The paper's ImageNet training recipe (Section 4.2); batch size and weight decay are not given.
IMAGENET_RECIPE = dict(
    lr=0.1, momentum=0.9, milestones=(200_000, 400_000, 500_000), iterations=530_000,
)


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
    warmup_at_reference: bool = False  # warm up at the reference batch too (not only above it)


IMAGEWOOF_TRAIN_IMAGES = 9_025  # fast.ai's official Imagewoof2 train split: one epoch
IMAGEWOOF_EPOCHS = 20  # the quick profile's length; fast.ai's leaderboard also reports 20 epochs
IMAGEWOOF_BATCH = 256


def _imagewoof_recipe() -> Recipe:
    """The ImageNet recipe's optimiser and schedule shape, 20 epochs of Imagewoof at batch 256."""
    iterations = round(IMAGEWOOF_EPOCHS * IMAGEWOOF_TRAIN_IMAGES / IMAGEWOOF_BATCH)
    reference = IMAGENET_RECIPE
    milestones = tuple(round(iterations * m / reference["iterations"]) for m in reference["milestones"])
    return Recipe("imagewoof", batch_size=IMAGEWOOF_BATCH, lr=0.1 * IMAGEWOOF_BATCH / 256,
                  momentum=reference["momentum"], nesterov=False, weight_decay=1e-4, iterations=iterations,
                  milestones=milestones, nominal_train_size=IMAGEWOOF_TRAIN_IMAGES, warmup_epochs=2.0,
                  warmup_at_reference=True)


RECIPES = {
    "cifar": Recipe("cifar", nominal_train_size=50_000, **CIFAR_RECIPE),
    "imagenet": Recipe("imagenet", batch_size=256, weight_decay=1e-4, nesterov=False,
                       nominal_train_size=1_281_167, **IMAGENET_RECIPE),
    "imagewoof": _imagewoof_recipe(),
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
    train_size: int | None = None  # crop size (Imagewoof: default IMAGEWOOF_SIZE)
    cpu_batches: tuple[int, ...] | None = None  # on a CPU: the fastest of these, measured (ranlib.training.cpu_batch)


CPU_BATCHES = (64, 128, 256)  # the batches issue 18 measured on the project's CPU
PROFILES: dict[str, dict[str, Profile]] = {
    "cifar": {
        "smoke": Profile(batch_size=8, iterations=6, eval_points=2, checkpoint_every=3, log_every=1,
                         max_train_samples=64, max_test_samples=32),
        "quick": Profile(batch_size=256, fraction=0.1, eval_points=10, checkpoint_every=1000, log_every=50,
                         cpu_batches=CPU_BATCHES),
        "paper": Profile(batch_size=64, eval_points=40, checkpoint_every=4000, log_every=100),
        # The paper's epochs (about 205) at a larger batch under the large-batch rule: what a short
        # GPU lease can finish. A GPU sitting picks the smallest batch that does (ranlib.campaign.sitting).
        "full": Profile(batch_size=512, eval_points=20, checkpoint_every=1000, log_every=100),
    },
    "imagenet": {
        "smoke": Profile(batch_size=4, iterations=4, eval_points=1, checkpoint_every=2, log_every=1,
                         max_train_samples=16, max_test_samples=8),
        "quick": Profile(batch_size=256, fraction=0.01, eval_points=5, checkpoint_every=1000, log_every=50),
        "paper": Profile(batch_size=256, eval_points=53, checkpoint_every=5000, log_every=100),
    },
    "imagewoof": {
        "smoke": Profile(batch_size=4, iterations=4, eval_points=1, checkpoint_every=2, log_every=1,
                         max_train_samples=20, max_test_samples=10, train_size=64),
        "quick": Profile(batch_size=IMAGEWOOF_BATCH, eval_points=5, checkpoint_every=200, log_every=35),
    },
}


def schedule_key(model: str, dataset: str) -> str:
    """Which ``RECIPES``/``PROFILES`` entry a run uses: the dataset's own when it has one
    (Imagewoof), else the model's family ("cifar" or "imagenet")."""
    return dataset if dataset in RECIPES else _model_info(model).dataset


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
    warmup = round(total * warmup_share) if k > 1 or recipe.warmup_at_reference else 0
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
    cuda_graphs: bool | None = None  # capture the training step as one CUDA graph (default: on CUDA when possible)
    conv_autotune: bool | None = None  # fused groups: each layer's fastest convolution, measured (default: CUDA)
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
    batch_rule: str | None = None  # filled by resolve(): how the batch size was chosen

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def resolve_fields(fields: dict, what: str) -> TrainConfig:
    """``resolve(TrainConfig(**fields))`` for fields read from a file or a plan, or one error line
    (the error's own class) that names ``what`` (a group file's run, a planned run) and says why."""
    if not isinstance(fields, dict):
        raise ConfigError(f"{what} is not an object of TrainConfig fields")
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        are = "is not a training option" if len(unknown) == 1 else "are not training options"
        raise ConfigError(f"{what}: {', '.join(unknown)} {are}; see `python -m ranlib train --help`")
    try:
        return resolve(TrainConfig(**fields))
    except RanlibError as exc:
        raise type(exc)(f"{what}: {exc}") from None
    except (TypeError, ValueError) as exc:  # a value no check foresaw
        raise ConfigError(f"{what}: {exc}") from None


# The range of each training option; its type is its TrainConfig annotation (ranlib.options). Every
# source of a configuration (command line, --set, group files, notebooks) is checked against these.
TRAIN_OPTIONS = options_from_hints(TrainConfig, {
    "seed": dict(minimum=0), "batch_size": dict(minimum=1), "lr": dict(above=0), "momentum": dict(minimum=0, below=1),
    "weight_decay": dict(minimum=0), "iterations": dict(minimum=1), "milestones": dict(minimum=0),
    "lr_decay": dict(above=0), "warmup_iterations": dict(minimum=0), "accum_steps": dict(minimum=1),
    "eval_every": dict(minimum=1), "checkpoint_every": dict(minimum=1), "log_every": dict(minimum=1),
    "max_train_samples": dict(minimum=1), "max_test_samples": dict(minimum=1), "num_workers": dict(minimum=0),
    "train_size": dict(minimum=1), "test_size": dict(minimum=1), "device": DEVICE,
    **{name: dict(path=True) for name in ("data_root", "results_dir", "checkpoint_dir")},
})


# Fields that may change between an interrupted run and its --resume (they do not change the result).
RESUMABLE_CHANGES = {"resume", "overwrite", "progress", "num_workers", "data_root", "results_dir",
                     "checkpoint_dir", "eval_every", "checkpoint_every", "log_every", "compile", "download",
                     "grad_checkpointing", "compile_mode", "cuda_graphs", "conv_autotune", "batch_rule"}


def _model_info(name: str):
    from ranlib import models
    try:
        return models.model_info(name)
    except models.UnknownModelError as exc:
        raise UnknownNameError(str(exc)) from None


def default_run_name(config: TrainConfig) -> str:
    """model[-k=v...]-dataset[-noiseX]-profile-sSEED and its :func:`identity_suffix` (``config``
    resolved): readable, a valid file name, and never shared by two different trainings."""
    parts = [config.model]
    parts += [f"{k}={v}" for k, v in sorted(config.model_kwargs.items())]
    parts.append(config.dataset)
    if config.noise_level:
        parts.append(f"noise{config.noise_level:g}")
    parts += [config.profile, f"s{config.seed}"]
    return "-".join(str(p).replace("/", "_").replace(" ", "") for p in parts) + identity_suffix(config)


# Run identity. A run's name spells out its model, switches, data set, label noise, profile and seed;
# these fields also change what it trains or reports (the final error), so when one differs from
# what the profile gives at the run's batch the name gets a digest of them. Not in the name: where a
# run is written and how often it logs, evaluates or checkpoints; how it computes (device, memory
# format, compile, CUDA graphs, determinism: provenance, recorded in the results file); the data
# root (the same data lies at different paths on different machines; the record keeps its
# fingerprint). Precision counts only when given explicitly and unlike what "auto" gives on the
# run's device (bf16 on CUDA): "auto" is each device's way of running the same training.
IDENTITY_FIELDS = ("lr", "momentum", "nesterov", "weight_decay", "iterations", "milestones", "lr_decay",
                   "warmup_iterations", "accum_steps", "sync_bn", "max_train_samples", "max_test_samples",
                   "train_size", "test_size")
IDENTITY_SUFFIX = re.compile(r"(-b\d+)?(-c[0-9a-f]{6})?$")  # what identity_suffix may add


def identity_suffix(c: TrainConfig) -> str:
    """What a resolved run's name adds after ``-sSEED``: ``-bB`` when its batch is not its profile's
    nominal batch (``PROFILES``; the ``full`` profile always shows it), ``-cXXXXXX`` (6 hex digits of
    a sha256 over the differing values) when a field of :data:`IDENTITY_FIELDS`, or an explicit
    precision, differs from what the profile gives at that batch (see the note above)."""
    nominal = PROFILES[schedule_key(c.model, c.dataset)][c.profile].batch_size
    parts = [f"b{c.batch_size}"] if c.batch_size != nominal or c.profile == "full" else []
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name in IDENTITY_FIELDS}
    baseline = resolve(dataclasses.replace(c, **defaults, run_name="unnamed"))
    differ = {k: getattr(c, k) for k in IDENTITY_FIELDS if getattr(c, k) != getattr(baseline, k)}
    if c.precision != "auto" and c.precision != resolve_precision("auto", device_type(c.device)):
        differ["precision"] = c.precision
    if differ:
        parts.append("c" + hashlib.sha256(json.dumps(differ, sort_keys=True).encode()).hexdigest()[:6])
    return "".join(f"-{part}" for part in parts)


def _check_dataset(model: str, dataset: str):
    """The model's info, after checking that ``dataset`` exists and suits the model."""
    info = _model_info(model)
    if dataset not in CIFAR_DATASETS + IMAGENET_STYLE_DATASETS:
        raise UnknownNameError(f"unknown dataset {dataset!r}; valid: {', '.join(CIFAR_DATASETS + IMAGENET_STYLE_DATASETS)}")
    valid = CIFAR_DATASETS if info.dataset == "cifar" else IMAGENET_STYLE_DATASETS
    if dataset not in valid:
        kind = "an ImageNet" if info.dataset == "imagenet" else "a CIFAR"
        raise ConfigError(f"model {model} is {kind} model but dataset {dataset!r} is not; use one of: "
                          f"{', '.join(valid)}")
    return info


def _check_model_kwargs(model: str, kwargs: dict) -> None:
    """Every switch known to the model and of its declared type (``ranlib.models.model_switches``)."""
    from ranlib.models import model_switches, model_variants
    allowed = model_variants(model)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ConfigError(f"model {model} does not take {', '.join(unknown)}; it takes: "
                          f"{', '.join(f'{k}={v!r}' for k, v in allowed.items()) or 'no options'}")
    check_all(kwargs, model_switches(model), f"{model} switch ")


def _batch_size(c: TrainConfig, profile: Profile, kind: str) -> tuple[int, str]:
    """The run's batch and how it was chosen: as given; on a CPU (one process) the fastest of the
    profile's ``cpu_batches`` on this machine (:func:`ranlib.training.cpu_batch.fastest_batch`); else the profile's."""
    if c.batch_size is not None:
        return int(c.batch_size), "explicit"
    if kind == "cpu" and profile.cpu_batches and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        from .cpu_batch import fastest_batch, rule_text
        choice = fastest_batch(c.model, precision=c.precision, channels_last=c.channels_last,
                               candidates=profile.cpu_batches)
        return choice["batch_size"], rule_text(choice)
    return profile.batch_size, f"the {c.profile} profile's"


def resolve(config: TrainConfig) -> TrainConfig:
    """A copy of ``config`` with every ``None`` filled from the recipe and profile, validated."""
    from ranlib.data.noise import check_noise_level

    check_all(dataclasses.asdict(config), TRAIN_OPTIONS)
    c = dataclasses.replace(config, model_kwargs=dict(config.model_kwargs))
    info = _check_dataset(c.model, c.dataset)
    _check_model_kwargs(c.model, c.model_kwargs)
    key = schedule_key(c.model, c.dataset)
    profiles = PROFILES[key]
    if c.profile not in profiles:
        raise UnknownNameError(f"unknown profile {c.profile!r} for {key}; valid: {', '.join(profiles)}")
    c.noise_level = check_noise_level(c.noise_level)
    if c.data_root is None:
        if c.download and c.dataset in ("cifar10", "cifar100"):
            c.data_root = DEFAULT_DOWNLOAD_ROOT
        else:
            from ranlib.data.cifar import HOW_TO_GET_CIFAR
            how = HOW_TO_GET_CIFAR if c.dataset.startswith("cifar") else "point it at the dataset's folder"
            raise DataNotFoundError(f"no --data-root given for dataset {c.dataset!r}: {how}")
    if c.precision not in PRECISIONS:
        raise UnknownNameError(f"unknown precision {c.precision!r}; valid: {', '.join(PRECISIONS)}")
    if c.compile_mode is not None and c.compile_mode not in COMPILE_MODES:
        raise UnknownNameError(f"unknown compile mode {c.compile_mode!r}; valid: {', '.join(COMPILE_MODES)}")
    if c.compile_mode is not None and not c.compile:
        raise ConfigError(f"compile mode {c.compile_mode!r} given without --compile; add --compile or drop the mode")
    profile, recipe = profiles[c.profile], RECIPES[key]
    kind = device_type(c.device)
    c.precision = resolve_precision(c.precision, kind)
    if c.channels_last is None:
        c.channels_last = True  # faster on CUDA and on a CPU alike (issue 18)
    c.batch_size, c.batch_rule = _batch_size(c, profile, kind)
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
                          + (f", linear warm-up over {recipe.warmup_epochs:g} epochs (Goyal et al. 2017)"
                             if scale > 1 else ""))
    if recipe.warmup_at_reference and c.warmup_iterations and scale <= 1:
        rule_parts.append(f"linear warm-up over {recipe.warmup_epochs:g} epochs of {recipe.nominal_train_size:,} images")
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
    if c.dataset == "imagewoof":
        c.train_size = int(c.train_size or profile.train_size or IMAGEWOOF_SIZE)
        c.test_size = int(c.test_size or c.train_size)
    else:
        c.train_size = int(c.train_size or info.input_size)
        c.test_size = int(c.test_size or getattr(info, "test_size", None) or info.input_size)
    c.run_name = c.run_name or default_run_name(c)
    check_name(c.experiment, "experiment")
    check_name(c.run_name, "run name")
    return c


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
def evaluate_members(model: nn.Module, batches, device: torch.device, precision: str, d: Dist = Dist(), *,
                     members: int = 1, topk: int = 5) -> list[dict]:
    """Per member: top-1/top-k error (%), mean loss and the number of images evaluated.

    ``model`` is a plain model (logits ``(B, O)``) or a fused one of ``members`` members (logits
    ``(B, K, O)``; every member sees the same test images). Batches are sharded over processes
    and the sums reduced, so ``count`` is the number of test images evaluated in all. The top-k
    error (key ``top5_error``) is None below :data:`TOP5_MIN_CLASSES` classes, here and so in every
    record made from it (the learning curve and the final figures say the same).
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(members, 4, dtype=torch.float64, device=device)  # loss, top-1, top-k hits, count
    classes = 0
    for x, y in batches:
        x, y = x.tensor_split(d.world_size)[d.rank], y.tensor_split(d.world_size)[d.rank]
        if not len(y):
            continue
        with autocast(device, precision):
            logits = model(shared_inputs(x, members))
        logits = logits.float()
        if logits.ndim == 2:
            logits = logits[:, None]
        classes = logits.shape[-1]
        hits = logits.topk(min(topk, logits.shape[-1]), dim=-1).indices.eq(y[:, None, None])  # (B, K, k)
        losses = member_losses(logits, y[:, None].expand(-1, members))
        seen = torch.full((members,), float(len(y)), dtype=torch.float64, device=device)
        sums += torch.stack([losses.double().sum(0), hits[..., 0].sum(0).double(), hits.any(-1).sum(0).double(),
                             seen], dim=1)
    model.train(was_training)
    results = []
    for loss, top1, topk_hits, count in all_reduce(sums, d).tolist():
        n = max(count, 1.0)
        results.append({"top1_error": 100.0 * (1 - top1 / n),
                        "top5_error": 100.0 * (1 - topk_hits / n) if classes >= TOP5_MIN_CLASSES else None,
                        "loss": loss / n, "count": int(count)})
    return results


def evaluate(model: nn.Module, batches, device: torch.device, precision: str, d: Dist = Dist(),
             topk: int = 5) -> dict:
    """Top-1/top-k error (%), mean loss and the count evaluated of one plain model over ``batches``."""
    return evaluate_members(model, batches, device, precision, d, members=1, topk=topk)[0]


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


def check_group(members: Sequence[TrainConfig]) -> None:
    """Raise :class:`ConfigError` unless resolved ``members`` may train as one fused group.

    Members share the architecture, attention type, mask type, batch size, schedule, precision
    and data set (every setting); they may differ in :data:`GROUP_MAY_DIFFER` and in ARL vs NAL
    (the model switch ``residual_attention``). Run names must differ.
    """
    from ranlib.models import model_variants

    first = members[0]
    names = [(m.experiment, m.run_name) for m in members]
    if len(set(names)) < len(names):
        raise ConfigError(f"two members of the group are the same run ({first.run_name}); give each its own "
                          "seed, noise level or ARL/NAL switch")
    defaults = model_variants(first.model)
    reference = first.to_dict()
    for member in members[1:]:
        values = member.to_dict()
        differ = [k for k in reference if k not in GROUP_MAY_DIFFER and reference[k] != values[k]]
        switches = {**defaults, **first.model_kwargs}, {**defaults, **member.model_kwargs}
        differ += [f"model switch {k}" for k in switches[0] if k != "residual_attention"
                   and switches[0][k] != switches[1].get(k)]
        if differ:
            raise ConfigError(
                f"run {member.run_name} cannot share a fused group with {first.run_name}: {', '.join(differ[:4])} "
                f"{'differs' if len(differ) == 1 else 'differ'}; a group shares model, attention and mask type, batch size, schedule, precision and data "
                "set, and only seeds, noise levels and ARL/NAL may differ")


@dataclass
class _Member:
    """One run of a group: its configuration, files, resumed state and learning curve."""

    config: TrainConfig
    out_path: Path
    run_dir: Path
    saved: dict | None = None
    curve: list = field(default_factory=list)
    spent: dict = field(default_factory=lambda: {"train_time_s": 0.0, "wall_time_s": 0.0, "images": 0,
                                                  "device_s": 0.0})
    metrics: _MetricsLog | None = None

    @property
    def ckpt_path(self) -> Path:
        return self.run_dir / ckpt.CHECKPOINT_NAME

    @classmethod
    def open(cls, c: TrainConfig, d: Dist, locks: contextlib.ExitStack) -> "_Member":
        """Lock the run's folder (main process; released by ``locks``), then check its files: results
        not yet written, and a checkpoint only when resuming."""
        member = cls(c, results_path(c.results_dir, c.experiment, c.run_name),
                     Path(c.checkpoint_dir) / c.experiment / c.run_name)
        if d.main:  # two processes never train one run at once (nor interleave its metrics.jsonl)
            locks.enter_context(FolderLock(member.run_dir, f"run {c.experiment}/{c.run_name}"))
        if member.out_path.exists() and not c.overwrite:
            raise ResultsExistError(f"run {c.experiment}/{c.run_name} is finished: its results file {member.out_path} "
                                    "already exists and is kept; give a new training another --run-name "
                                    f"(its model is {member.ckpt_path}, for `ranlib eval --checkpoint`)")
        if c.resume and member.ckpt_path.exists():
            member.saved = ckpt.load_checkpoint(member.ckpt_path, map_location="cpu")
            _check_resumable(member.saved, c, member.ckpt_path)
            member.curve = member.saved["curve"]
            member.spent = {"device_s": member.saved["spent"]["wall_time_s"] * d.world_size,
                            **member.saved["spent"]}
        elif member.ckpt_path.exists() and not c.overwrite:
            raise ResultsExistError(f"a checkpoint of run {c.run_name!r} exists at {member.ckpt_path}; pass --resume "
                                    "to continue it or --overwrite to start over")
        elif c.resume and d.main:
            print(f"ranlib: no checkpoint at {member.ckpt_path}; starting run {c.run_name} from iteration 0",
                  file=sys.stderr)
        return member

    @property
    def start_iteration(self) -> int:
        return self.saved["iteration"] if self.saved else 0


def _resume_point(members: Sequence[_Member]) -> int:
    """The iteration every member resumes from (they train in lockstep, so it must be one)."""
    points = {m.config.run_name: m.start_iteration for m in members}
    if len(set(points.values())) > 1:
        detail = ", ".join(f"{name} at {it}" for name, it in points.items())
        raise CheckpointError(f"members of a fused group resume together, but their checkpoints are at different "
                              f"iterations ({detail}); resume each alone, or pass --overwrite to start them over")
    return next(iter(points.values()))


def _settle_runtime(c: TrainConfig, device: torch.device, d: Dist) -> None:
    """Fill the device-dependent settings (determinism, convolution timing, CUDA graphs) and check them."""
    c.precision = resolve_precision(c.precision, device)  # resolve() did, for the device type it expected
    if c.deterministic is None:
        c.deterministic = device.type == "cpu"
    if c.batch_size % (d.world_size * c.accum_steps):
        raise ConfigError(f"global batch {c.batch_size} must divide by processes x accum_steps "
                          f"({d.world_size} x {c.accum_steps})")
    if c.sync_bn and device.type != "cuda":
        raise ConfigError("--sync-bn needs CUDA (torch's SyncBatchNorm has no CPU kernel); leave it off on CPU")
    if c.conv_autotune is None:
        c.conv_autotune = device.type == "cuda"
    elif c.conv_autotune and device.type != "cuda":
        raise ConfigError("--conv-autotune times convolutions with CUDA events; it needs a CUDA device")
    graphs_possible = device.type == "cuda" and not c.compile and not d.enabled and c.accum_steps == 1
    if c.cuda_graphs is None:
        c.cuda_graphs = graphs_possible
    elif c.cuda_graphs and not graphs_possible:
        raise ConfigError("--cuda-graphs needs a CUDA device, one process, accum_steps 1 and no --compile "
                          "(torch.compile's reduce-overhead mode captures graphs itself); drop one of them")


def _configure_backends(c: TrainConfig, device: torch.device) -> None:
    torch.use_deterministic_algorithms(c.deterministic, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not c.deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(device)


def run(config: TrainConfig) -> dict:
    """Train one run, evaluate the final iterate, write the results file (main process) and return
    the record: :func:`run_group` with one member."""
    return run_group([config])[0]


def run_group(configs: Sequence[TrainConfig]) -> list[dict]:
    """Train K >= 1 runs as one fused model (:mod:`ranlib.models.fused`) and return their records.

    Each member is built, fed and checkpointed exactly as its solo run would be (own seed,
    initialisation, data order, augmentation and labels), writes its own checkpoint, metrics and
    results file, and can be resumed or evaluated alone. Raises :class:`ConfigError` when the
    members may not share a group (:func:`check_group`) and :class:`TrainingInterrupted` after a
    SIGTERM/SIGINT (checkpoints written).
    """
    if not configs:
        raise ConfigError("a group needs at least one run")
    started_at = provenance.utc_now()
    d = init_distributed(configs[0].device)
    with algorithms(torch.are_deterministic_algorithms_enabled()):  # torch's settings come back on exit
        try:
            return _train_group(configs, d, started_at)
        finally:
            if d.enabled:
                torch.distributed.destroy_process_group()


def _train_group(configs: Sequence[TrainConfig], d: Dist, started_at: str) -> list[dict]:
    with contextlib.ExitStack() as locks:  # the members' run folders, locked until the group ends
        training = _GroupTraining(configs, d, started_at, locks)  # check, open files, load data, build, resume
        training.train()  # steps, with logs, evaluations and checkpoints; a signal checkpoints and stops
        return training.finish()  # the final checkpoints, records and results files


class _GroupTraining:
    """The training of a group of K >= 1 members, as named steps (see :func:`run_group`)."""

    def __init__(self, configs: Sequence[TrainConfig], d: Dist, started_at: str, locks: contextlib.ExitStack):
        self.wall_start, self.d, self.started_at = time.perf_counter(), d, started_at
        resolved = [resolve(c) for c in configs]
        self.device = select_device(resolved[0].device, d)
        for c in resolved:
            _settle_runtime(c, self.device, d)
        check_group(resolved)
        self.members = [_Member.open(c, d, locks) for c in resolved]
        if d.main:  # a folder that cannot be written is found now, not after the training
            for m in self.members:
                check_writable(m.out_path.parent, "make it writable or choose another --results-dir")
                check_writable(m.run_dir, "make it writable or choose another --checkpoint-dir")
        self.iteration = _resume_point(self.members)
        self.c, self.k = resolved[0], len(self.members)  # the settings the group shares, and its size
        self.info = _model_info(self.c.model)
        _configure_backends(self.c, self.device)
        seed_everything(self.c.seed)
        self.split = self._load_data(resolved)
        self._build()
        if d.main:  # an atomic checkpoint write holds the old file and the new one at once
            sizes = sum(t.numel() * t.element_size() for t in self.reference_state.values() if torch.is_tensor(t))
            check_free_space(self.members[0].run_dir, 2 * 2 * sizes * self.k,  # weights and momentum, twice
                             f"writing {'the checkpoint' if self.k == 1 else f'{self.k} checkpoints'} atomically",
                             "free some space or choose another --checkpoint-dir")
        if self.iteration:
            self._resume()
        self.step = TrainStep(self.step_model, self.raw_model, self.optimizer, windows=self.windows,
                              precision=self.c.precision, accum_steps=self.c.accum_steps, ddp=d.enabled,
                              cuda_graphs=self.c.cuda_graphs)
        self.group_names = [m.config.run_name for m in self.members]
        for m in self.members:
            m.metrics = _MetricsLog(m.run_dir / "metrics.jsonl", keep_until=self.iteration if m.saved else None,
                                    enabled=d.main)
            m.metrics.write({"event": "resume" if m.saved else "start", "iteration": self.iteration,
                             "config": m.config.to_dict(), "group": self.group_names})
        self.clock = {"train_time_s": 0.0, "images": 0}  # this sitting's share, added to each member's spent

    def _load_data(self, resolved: Sequence[TrainConfig]):
        split = load_split(resolved, self.device, self.info.input_size, self.d)
        for m in self.members:
            saved = (m.saved or {}).get("dataset", {}).get("fingerprint", split.info["fingerprint"])
            if saved != split.info["fingerprint"]:
                raise CheckpointError(f"checkpoint {m.ckpt_path} was trained on data with fingerprint {saved}, not "
                                      f"{split.info['fingerprint']}; point --data-root at the original data")
        return split

    def _build(self) -> None:
        """Each member's model as its solo run builds it, fused into one; optimizer and schedule."""
        c, d = self.c, self.d
        solo = [_member_model(m, self.split.num_classes) for m in self.members]
        self.complexity = _complexity(solo[0], c.train_size)
        self.reference_state = solo[0].state_dict()  # the keys and dtypes a member's state dict has
        memory_format = torch.channels_last if c.channels_last else torch.contiguous_format
        model = fuse(solo).to(self.device, memory_format=memory_format)
        self.conv_impls = self._choose_conv_impls(model) if c.conv_autotune else None
        if c.sync_bn and d.enabled:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.optimizer = torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum, nesterov=c.nesterov,
                                         weight_decay=c.weight_decay, fused=c.cuda_graphs or None)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, WarmupStepLR(c.milestones, c.lr_decay, c.warmup_iterations))
        self.windows = [torch.zeros(self.k, 3, dtype=torch.float64, device=self.device) for _ in range(2)]
        self.raw_model = model  # what checkpoints and analysis see (no DDP/compile wrappers)
        if d.enabled:
            from torch.nn.parallel import DistributedDataParallel
            model = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda"
                                            else None, forward_sync_buffers=False)  # BN stats: averaged per step
        self.model = model
        self.step_model = torch.compile(model, mode=c.compile_mode) if c.compile else model

    def _choose_conv_impls(self, model: nn.Module) -> dict | None:
        """Each fused convolution's fastest implementation, timed at its shape (a grouped convolution, a
        batched matrix product for 1x1, or a dense block-diagonal one): the same model either way."""
        c = self.c
        x = torch.randn(c.batch_size // self.d.world_size, 3 * self.k, c.train_size, c.train_size,
                        device=self.device).contiguous(memory_format=torch.channels_last if c.channels_last
                                                       else torch.contiguous_format)
        try:
            with autocast(self.device, c.precision):
                return choose_conv_impls(model, x, cuda_time_s)
        except RuntimeError as err:  # e.g. out of memory: the grouped convolutions stay
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            warnings.warn(f"ranlib: timing the convolutions failed ({first}); they stay grouped", stacklevel=2)
            for layer in model.modules():
                if isinstance(layer, FusedConv2d):
                    layer.impl = "grouped"
            return None

    def _resume(self) -> None:
        """The optimizer, schedule, data positions, random state and metric windows of the checkpoints."""
        saved = [m.saved for m in self.members]
        self.optimizer.load_state_dict(fused_optimizer_state([s["optimizer"] for s in saved]))
        for group in self.optimizer.param_groups:  # the saved flags belong to the device that wrote them
            group["fused"], group["foreach"] = self.c.cuda_graphs or None, None
        self.scheduler.load_state_dict(saved[0]["scheduler"])
        for s, stream in zip(saved, self.split.train):
            stream.load_state_dict(s["data"])
        ckpt.set_rng_state(saved[0]["rng"])
        for i, window in enumerate(self.windows):
            window.copy_(torch.tensor([s["windows"][i] for s in saved], dtype=torch.float64))

    def train(self) -> None:
        c = self.c
        show_bar = self.d.main and (c.progress if c.progress is not None else sys.stderr.isatty())
        self.bar = _progress(show_bar, self.iteration, c.iterations,
                             c.run_name if self.k == 1 else f"{self.k} fused runs")
        streams = [iter(stream) for stream in self.split.train]
        self.model.train()
        with _StopFlag() as stop, self._checkpoint_if_data_fail():
            self.tick = time.perf_counter()
            while self.iteration < c.iterations:
                lr = self._step(streams)
                boundary = self.iteration % c.log_every == 0 or self.iteration == c.iterations
                if boundary:
                    self._log(lr)
                if self.iteration % c.eval_every == 0 or self.iteration == c.iterations:
                    self._evaluate(lr)
                self._stop_if_signalled(stop.signum, boundary)
                if self.iteration % c.checkpoint_every == 0 and self.iteration < c.iterations:
                    self._checkpoint()
        self.bar.close()

    @contextlib.contextmanager
    def _checkpoint_if_data_fail(self):
        """An image that fails to decode mid-run (ImageNet-style folders decode as they train): a
        checkpoint of the steps done, and one line naming the file."""
        try:
            yield
        except DataFormatError as exc:
            # From a DataLoader worker the message carries the worker's traceback: keep ranlib's line.
            line = str(exc).strip().splitlines()[-1].split("DataFormatError: ", 1)[-1]
            self.save()
            self.bar.close()
            raise DataFormatError(f"{line} (at iteration {self.iteration} of {self.c.iterations}; checkpoint saved to "
                                  f"{self.members[0].ckpt_path}); with the file replaced the data differ from this "
                                  "run's, so start it again with --overwrite") from None

    def _step(self, streams: list) -> float:
        """One optimizer step of every member on its own next batch; returns the step's lr."""
        xs, ys = zip(*(next(stream) for stream in streams))
        x, y = fuse_inputs(xs), torch.stack(ys, dim=1)
        if not self.split.sharded:  # every process drew the same global batch: keep this process's slice
            x, y = x.tensor_split(self.d.world_size)[self.d.rank], y.tensor_split(self.d.world_size)[self.d.rank]
        lr = self.optimizer.param_groups[0]["lr"]
        self.step(x, y)
        self.scheduler.step()
        if not self.c.sync_bn:
            average_bn_running_stats(self.raw_model, self.d)
        self.iteration += 1
        self.clock["images"] += self.c.batch_size
        self.bar.update(1)
        return lr

    def _epoch(self) -> float:
        return self.iteration * self.c.batch_size / self.split.info["num_train"]

    def _log(self, lr: float) -> None:
        """A metrics line per member (training loss and error since the last line) and the bar."""
        log_window = self.windows[1]
        sums = all_reduce(log_window.clone(), self.d).tolist()
        log_window.zero_()
        now = time.perf_counter()
        self.clock["train_time_s"] += now - self.tick
        self.tick = now
        rate = self.clock["images"] / max(self.clock["train_time_s"], 1e-9)
        self.bar.set_postfix(loss=f"{sums[0][0] / max(sums[0][2], 1):.3f}", img_s=f"{rate * self.k:.0f}",
                             lr=f"{lr:.3g}")
        for m, (loss_sum, correct, count) in zip(self.members, sums):
            m.metrics.write({"event": "train", "iteration": self.iteration, "epoch": self._epoch(), "lr": lr,
                             "train_loss": loss_sum / max(count, 1),
                             "train_top1_error": 100.0 * (1 - correct / max(count, 1)), "images_per_s": rate,
                             "process_cpu_s": time.process_time()})  # beside wall time: a shared CPU's share

    def _evaluate(self, lr: float) -> None:
        """A learning-curve point per member: training figures since the last point, the test set now."""
        window = self.windows[0]
        sums = all_reduce(window.clone(), self.d).tolist()  # waits for the device
        window.zero_()
        self.clock["train_time_s"] += time.perf_counter() - self.tick
        model = self.raw_model if self.d.enabled else self.step_model
        tests = evaluate_members(model, self.split.test, self.device, self.c.precision, self.d, members=self.k)
        for m, (loss_sum, correct, count), test in zip(self.members, sums, tests):
            point = {"iteration": self.iteration, "epoch": self._epoch(), "lr": lr,
                     "train_loss": loss_sum / max(count, 1), "train_top1_error": 100.0 * (1 - correct / max(count, 1)),
                     "test_top1_error": test["top1_error"], "test_top5_error": test["top5_error"],
                     "test_loss": test["loss"], "test_count": test["count"]}
            m.curve.append(point)
            m.metrics.write({"event": "eval", **point})
        self.tick = time.perf_counter()

    def _stop_if_signalled(self, signum: int, boundary: bool) -> None:
        """After SIGTERM/SIGINT (in any process): checkpoint every member and raise TrainingInterrupted."""
        stop_now = _agree_to_stop(signum, self.d) if (not self.d.enabled or boundary) else 0
        if not stop_now or self.iteration >= self.c.iterations:
            return
        self.clock["train_time_s"] += time.perf_counter() - self.tick
        self.save()
        self.bar.close()
        for m in self.members:
            m.metrics.write({"event": "interrupted", "iteration": self.iteration, "signal": stop_now})
        first = self.members[0].ckpt_path
        where = first if self.k == 1 else f"{first} and {self.k - 1} more"
        raise TrainingInterrupted(
            f"stopped by signal {stop_now} at iteration {self.iteration}/{self.c.iterations}; checkpoint saved to "
            f"{where}; continue with the same command plus --resume", stop_now)

    def _checkpoint(self) -> None:
        synchronize(self.device)  # queued steps count as training, not as checkpoint time
        t0 = time.perf_counter()
        self.save()
        self.tick += time.perf_counter() - t0  # checkpoint time is not training time

    def _spent(self, m: _Member) -> dict:
        """The member's cost so far: earlier sittings' plus this one's (device time split over the group)."""
        wall = time.perf_counter() - self.wall_start
        return {"train_time_s": m.spent["train_time_s"] + self.clock["train_time_s"],
                "wall_time_s": m.spent["wall_time_s"] + wall, "images": m.spent["images"] + self.clock["images"],
                "device_s": m.spent["device_s"] + wall * self.d.world_size / self.k}

    def save(self) -> None:
        """Every member's checkpoint, as its solo run would write it (the main process only)."""
        if not self.d.main:
            return
        fused_state, optimizer_state = self.raw_model.state_dict(), self.optimizer.state_dict()
        split, k = self.split, self.k
        shared = {"iteration": self.iteration, "scheduler": self.scheduler.state_dict(), "rng": ckpt.rng_state(),
                  "dataset": split.info, "num_classes": split.num_classes, "data_mean": split.mean,
                  "group": self.group_names}
        for i, (m, stream) in enumerate(zip(self.members, split.train)):
            ckpt.save_checkpoint(m.ckpt_path, {
                **shared, "config": m.config.to_dict(),
                "model": member_state_dict(fused_state, i, k, reference=self.reference_state, steps=self.iteration),
                "optimizer": member_optimizer_state(optimizer_state, i, k), "data": stream.state_dict(),
                "curve": m.curve, "noise": split.noise[i], "windows": [w[i].tolist() for w in self.windows],
                "spent": self._spent(m)})

    def finish(self) -> list[dict]:
        """The final checkpoints (for ``ranlib eval``), each member's record and results file."""
        self.save()
        fused_state = self.raw_model.state_dict()
        records = [_final_record(m, i, self.split, fused_state, self.reference_state, self.iteration, self.device,
                                 self.d, self.complexity, self._spent(m), self.started_at, self.group_names,
                                 {"cuda_graphs": self.step.graph is not None,
                                  "conv_impls": self.conv_impls["layers"] if self.conv_impls else None})
                   for i, m in enumerate(self.members)]
        if self.d.main:
            failed = []
            for m, record in zip(self.members, records):
                failed += _write_record(m, record)
                m.metrics.write({"event": "final", "iteration": self.iteration, **record["final"]})
            if failed:
                raise StorageError(f"{failed[0]}" + (f" ({len(failed) - 1} more runs of the group alike)"
                                                     if len(failed) > 1 else ""))
        return records


def _write_record(m: _Member, record: dict) -> list[str]:
    """The member's results file; if it cannot be written, its record beside its checkpoint and a line
    on how to recover (nothing trained is lost: the final checkpoint is complete)."""
    kept = m.run_dir / "results.json"
    try:
        write_results(record, m.config.results_dir, overwrite=m.config.overwrite)
    except (ResultsExistError, OSError) as exc:
        write_record(record, kept)
        why = ("it appeared while this run trained (a run of this name with another --checkpoint-dir?) and is kept"
               if isinstance(exc, ResultsExistError) else getattr(exc, "strerror", None) or str(exc))
        return [f"run {m.config.experiment}/{m.config.run_name} is trained, but its results file {m.out_path} "
                f"could not be written ({why}); its record is kept at {kept}: copy it there, or fix the folder "
                "and run the same command with --resume, which trains nothing more and writes it"]
    kept.unlink(missing_ok=True)  # a record kept by an earlier attempt
    return []


def _member_model(m: _Member, num_classes: int) -> nn.Module:
    """The member's model as its solo run builds it (own seed), with its checkpoint's weights."""
    c = m.config
    model = build_model(c.model, c.model_kwargs, num_classes, c.seed)
    if c.grad_checkpointing:
        enable_grad_checkpointing(model, c.model)
    if m.saved is not None:
        ckpt.load_model_state(model, m.saved["model"], m.ckpt_path)
    return model


def _final_record(m: _Member, index: int, split, fused_state: dict, reference_state: dict, iteration: int,
                  device: torch.device, d: Dist, complexity: dict, spent: dict, started_at: str,
                  group_names: list[str], kernels: dict) -> dict:
    """The member's results record: the final iterate's errors, curve, stage responses, provenance, cost."""
    from ranlib.models.analysis import stage_responses

    c, k = m.config, len(group_names)
    final = m.curve[-1]
    model = build_model(c.model, c.model_kwargs, split.num_classes, c.seed)
    model.load_state_dict(member_state_dict(fused_state, index, k, reference=reference_state, steps=iteration))
    model = model.to(device, memory_format=torch.channels_last if c.channels_last else torch.contiguous_format)
    with torch.no_grad(), autocast(device, c.precision):
        responses = [float(r) for r in stage_responses(model, split.fixed_batch)]
    return {
        "schema": SCHEMA_VERSION,
        "experiment": c.experiment,
        "run_name": c.run_name,
        "config": c.to_dict(),
        "model": {"name": c.model, "kwargs": c.model_kwargs, **complexity,
                  "input_size": c.train_size, "num_classes": split.num_classes},
        "dataset": split.info,
        "noise": split.noise[index],
        "final": {"top1_error": final["test_top1_error"],
                  "top5_error": final["test_top5_error"],  # None below TOP5_MIN_CLASSES, as in the curve
                  "test_loss": final["test_loss"], "iteration": final["iteration"],
                  "num_test": final.get("test_count", split.info["num_test"])},
        "curve": m.curve,
        "analysis": {"stage_response": responses, "stage_response_images": int(len(split.fixed_batch))},
        "provenance": {**provenance.collect(device, precision=c.precision, seed=c.seed, started_at=started_at),
                       "world_size": d.world_size, "resumed": m.saved is not None, **kernels,
                       "group": {"size": k, "members": group_names, "device_share": 1.0 / k}},
        "cost": {"wall_time_s": spent["wall_time_s"], "train_time_s": spent["train_time_s"],
                 "images_per_s": spent["images"] / max(spent["train_time_s"], 1e-9),
                 "group_images_per_s": k * spent["images"] / max(spent["train_time_s"], 1e-9),
                 "peak_memory_bytes": peak_memory_bytes(device),
                 "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_max_rss",
                 "device_hours": spent["device_s"] / 3600.0, "devices": d.world_size},
    }


def _agree_to_stop(signum: int, d: Dist) -> int:
    """The signal any process received (all processes stop at the same iteration)."""
    if not d.enabled:
        return signum
    flag = torch.tensor([signum], dtype=torch.float64)
    if torch.distributed.get_backend() == "nccl":
        flag = flag.cuda()
    return int(all_reduce(flag, d).max().item())


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
    check_all(dict(device=device, batch_size=batch_size, max_test_samples=max_test_samples, test_size=test_size),
              TRAIN_OPTIONS)
    saved, trained = load_trained(path)
    c = dataclasses.replace(trained, dataset=dataset or trained.dataset, data_root=data_root or trained.data_root,
                            max_test_samples=max_test_samples, max_train_samples=None, noise_level=0.0,
                            test_size=test_size or trained.test_size, run_name=trained.run_name, profile=trained.profile)
    info = _check_dataset(c.model, c.dataset)
    dev = select_device(device, Dist())
    prec = resolve_precision(precision, dev)
    c.channels_last = True
    split = load_split([c], dev, info.input_size, Dist(), train=False, eval_batch_size=batch_size,
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
            "top5_error": result["top5_error"],
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
