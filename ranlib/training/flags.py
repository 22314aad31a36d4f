"""The ``ranlib train`` command line's flags, both ways: one flag per :class:`TrainConfig` field
(:func:`add_train_flags`) and the flags that give a configuration (:func:`train_argv`), so that a
planned run is launched, and recorded in its results file, as a command anyone can type.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from ranlib.errors import RanlibError

# One line of help per TrainConfig field; every field gets a flag (--field-name).
TRAIN_HELP = {
    "experiment": "experiment name: results go to <results-dir>/<experiment>/ (default: default)",
    "run_name": "run name (default: model-variant-dataset[-noise]-profile-sSEED)",
    "model": "registered model name (see `python -m ranlib models`)",
    "model_kwargs": "model switches as key=value, e.g. attention=channel residual_attention=false mask=local",
    "dataset": "cifar10, cifar100, cifar10-jpeg, folder, imagenet-folder or imagewoof",
    "data_root": "dataset folder (or the cifar10-jpeg.npz file)",
    "download": "download official CIFAR through torchvision if missing (needs internet)",
    "profile": "smoke (seconds, CPU), quick (minutes, GPU), full (the paper's epochs at a larger batch, "
               "large-batch rule) or paper (the paper's schedule)",
    "seed": "seed for initialisation, data order, augmentation and label noise",
    "noise_level": "fraction of training labels corrupted by the paper's Q (Table 5), in [0, 1)",
    "batch_size": "global batch size; lr, iterations, milestones follow the large-batch rule unless given "
                  "(default: the profile's; on a CPU, the quick profile's is the fastest of 64/128/256 measured "
                  "there once)",
    "lr": "peak learning rate (default: 0.1 x batch / reference batch)",
    "momentum": "SGD momentum (default 0.9)",
    "nesterov": "Nesterov momentum (default: on for CIFAR as in the paper, off for ImageNet)",
    "weight_decay": "weight decay (default 1e-4)",
    "iterations": "training iterations (default: the recipe scaled by the profile and batch size)",
    "milestones": "iterations at which lr is divided by 10 (default: the recipe's share of the run)",
    "lr_decay": "lr factor at each milestone (default 0.1)",
    "warmup_iterations": "linear lr warm-up iterations (default: 5 epochs when batch > the reference)",
    "accum_steps": "split each batch into this many micro-batches (each with its own BN statistics)",
    "eval_every": "evaluate the test set every N iterations, for the learning curve only",
    "checkpoint_every": "write a checkpoint every N iterations",
    "log_every": "write a metrics line and refresh the progress bar every N iterations",
    "results_dir": "where results files go (default: results)",
    "checkpoint_dir": "where checkpoints and metrics.jsonl go (default: checkpoints)",
    "device": "auto, cpu, cuda or cuda:N",
    "precision": "auto (bf16 autocast on CUDA and on a CPU with native bf16, else fp32), fp32 or bf16",
    "channels_last": "channels_last memory format (default: on)",
    "compile": "torch.compile the model",
    "compile_mode": "torch.compile mode with --compile: default, reduce-overhead (CUDA graphs), max-autotune, "
                    "max-autotune-no-cudagraphs",
    "grad_checkpointing": "recompute the attention mask branches in backward: less activation memory, one "
                          "more mask forward per step, the same model",
    "cuda_graphs": "capture the whole training step as one CUDA graph (default: on CUDA without --compile, "
                   "torchrun or accum-steps; falls back to eager with a warning if capture fails)",
    "conv_autotune": "fused groups: time each convolution as a grouped one, a batched matrix product (1x1) "
                     "or a dense block-diagonal one, and use the fastest (default: on CUDA)",
    "sync_bn": "under torchrun: batch norm over the global batch (SyncBatchNorm, CUDA only)",
    "deterministic": "deterministic algorithms (default: on for CPU, off for CUDA)",
    "resume": "continue from the run's last checkpoint",
    "overwrite": "replace an existing results file / checkpoint of the same run",
    "max_train_samples": "use only the first N training images",
    "max_test_samples": "use only the first N test images",
    "num_workers": "DataLoader workers (ImageNet path)",
    "train_size": "ImageNet training crop size (default: the model's input size)",
    "test_size": "ImageNet single-crop test size (default: the paper's size for the model)",
    "progress": "show the tqdm progress bar (default: when stderr is a terminal)",
}


def parse_value(text: str):
    """key=value values: JSON literals (numbers, true/false, null) else the string; True/False too."""
    if text in ("True", "False"):
        return text == "True"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def key_values(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RanlibError(f"model option {item!r} is not key=value (e.g. attention=channel)")
        out[key] = parse_value(value)
    return out


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    from .config import TrainConfig

    for f in dataclasses.fields(TrainConfig):
        if f.name not in TRAIN_HELP:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type)
        common = dict(dest=f.name, default=argparse.SUPPRESS, help=TRAIN_HELP[f.name])
        if kind.startswith("bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif kind.startswith("list[int]"):
            parser.add_argument(flag, nargs="+", type=int, metavar="N", **common)
        elif kind == "dict":
            parser.add_argument(flag, nargs="*", metavar="KEY=VALUE", **common)
        elif kind.startswith("int"):
            parser.add_argument(flag, type=int, metavar="N", **common)
        elif kind.startswith("float"):
            parser.add_argument(flag, type=float, metavar="X", **common)
        else:
            parser.add_argument(flag, metavar=f.name.upper(), **common)


def train_argv(config: dict) -> list[str]:
    """The ``ranlib train`` flags that give ``config`` (TrainConfig field -> value; None is left
    to the default): the inverse of the parser, so a planned run can be launched, and recorded in
    its results file, as a command anyone can type."""
    argv = []
    for name, value in config.items():
        if value is None:
            continue
        if name not in TRAIN_HELP:
            raise RanlibError(f"{name!r} is not a training option; see `python -m ranlib train --help`")
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        elif isinstance(value, dict):
            argv += [flag, *(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in value.items())]
        else:
            argv += [flag, str(value)]
    return argv
