"""A run's configuration: every setting it depends on, checked and filled from its recipe and profile.

This module holds :class:`TrainConfig` (one field per training option, with the ranges every source
of a configuration is checked against), :func:`resolve`, which fills every unset field from the
recipe and profile of :mod:`ranlib.training.recipes` and validates the result, a run's name and
the identity it encodes (:func:`default_run_name`, :func:`identity_suffix`), the fields a resume
may change, and the rule for which runs may train as one fused group (:func:`check_group`).

On a CPU the ``quick`` profile's batch is the fastest of ``CPU_BATCHES`` on that machine, measured
once and cached (:mod:`ranlib.training.cpu_batch`), and recorded in the run's ``batch_rule``; the schedule
follows from it by the large-batch rule. ``precision="auto"`` is bf16 autocast on CUDA and on a
CPU with native bf16, and ``channels_last`` is on by default everywhere (faster on CUDA and on a
CPU alike).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ranlib.errors import ConfigError, DataNotFoundError, RanlibError, UnknownNameError
from ranlib.options import DEVICE, check_all, options_from_hints

from .recipes import PROFILES, RECIPES, Profile, model_info, scaled_schedule, schedule_key
from .results import check_name
from .runtime import device_type, resolve_precision
from .splits import IMAGENET_STYLE_DATASETS

CIFAR_DATASETS = ("cifar10", "cifar100", "cifar10-jpeg", "folder")
IMAGEWOOF_SIZE = 112  # the shared copy's shorter side: ImageNet networks train and test at it there
PRECISIONS = ("auto", "fp32", "bf16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
DEFAULT_DOWNLOAD_ROOT = ".data"  # where --download puts official CIFAR when no --data-root is given
# What the members of one fused group may differ in (and the model switch residual_attention).
GROUP_MAY_DIFFER = ("experiment", "run_name", "seed", "noise_level", "model_kwargs")


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


def check_dataset(model: str, dataset: str):
    """The model's info, after checking that ``dataset`` exists and suits the model."""
    info = model_info(model)
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
    info = check_dataset(c.model, c.dataset)
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
        c.channels_last = True  # faster on CUDA and on a CPU alike
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
