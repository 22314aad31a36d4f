"""Command line: ``python -m ranlib train | eval | models``.

Bad input ends with one line on stderr (``ranlib: error: ...``, saying what was wrong and what
to do) and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from .errors import RanlibError, ResultsExistError, print_error
from .paths import cache_dir

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


def _parse_value(text: str):
    """key=value values: JSON literals (numbers, true/false, null) else the string; True/False too."""
    if text in ("True", "False"):
        return text == "True"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _key_values(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RanlibError(f"model option {item!r} is not key=value (e.g. attention=channel)")
        out[key] = _parse_value(value)
    return out


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    from .train import TrainConfig

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ranlib",
                                     description="Residual Attention Network reproduction: train, evaluate, list models.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model and write a results file",
                           description="Train with the paper's recipe (scaled by --profile) and write "
                                       "results/<experiment>/<run_name>.json. Launch with torchrun for DDP.")
    _add_train_flags(train)
    group = train.add_argument_group(
        "fused groups", "train several runs of one architecture at once as one wide model (horizontal fusion): "
                        "every combination of these seeds and noise levels, each run with its own results file "
                        "and checkpoint, exactly as if trained alone")
    group.add_argument("--seeds", nargs="+", type=int, metavar="N", default=argparse.SUPPRESS,
                       help="the runs' seeds (instead of --seed)")
    group.add_argument("--noise-levels", nargs="+", type=float, metavar="X", default=argparse.SUPPRESS,
                       help="the runs' label-noise levels (instead of --noise-level)")

    evaluate = sub.add_parser("eval", help="evaluate a checkpoint on a test set")
    evaluate.add_argument("--checkpoint", required=True, help="a checkpoint written by `ranlib train` (last.pt)")
    evaluate.add_argument("--dataset", help="dataset name (default: the one it was trained on)")
    evaluate.add_argument("--data-root", help="dataset folder (default: the one it was trained with)")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    evaluate.add_argument("--batch-size", type=int, default=256)
    evaluate.add_argument("--max-test-samples", type=int, help="only the first N test images")
    evaluate.add_argument("--test-size", type=int, help="ImageNet single-crop test size")
    evaluate.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing --json file")

    models = sub.add_parser("models", help="list the registered models with parameters and multiply-adds")
    models.add_argument("names", nargs="*", help="only these models (default: all)")
    models.add_argument("--dataset", choices=("cifar", "imagenet"), help="only CIFAR or only ImageNet models")
    return parser


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, run_group

    values = {k: v for k, v in vars(args).items() if k not in ("command", "seeds", "noise_levels")}
    if "model_kwargs" in values:
        values["model_kwargs"] = _key_values(values["model_kwargs"])
    configs = [TrainConfig(**values)]
    for name, choices in (("seed", getattr(args, "seeds", None)), ("noise_level", getattr(args, "noise_levels", None))):
        if choices is None:
            continue
        if name in values:
            raise RanlibError(f"give --{name.replace('_', '-')} or --{name.replace('_', '-')}s, not both")
        configs = [dataclasses.replace(c, **{name: choice}) for c in configs for choice in choices]
    if len(configs) > 1 and "run_name" in values:
        raise RanlibError("a fused group names each run itself (model-...-sSEED); drop --run-name")
    records = run_group(configs)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only the first process reports
        for record in records:
            final = record["final"]
            top5 = f", top-5 error {final['top5_error']:.2f} %" if final.get("top5_error") is not None else ""
            print(f"{record['run_name']}: final top-1 error {final['top1_error']:.2f} %{top5} on "
                  f"{record['dataset']['label']} ({final['num_test']} test images, iteration "
                  f"{final['iteration']}); {record['cost']['images_per_s']:.3g} images/s")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .train import evaluate_checkpoint

    if args.json is not None and args.json.exists() and not args.overwrite:
        raise ResultsExistError(f"{args.json} already exists; pass --overwrite to replace it or choose another path")
    result = evaluate_checkpoint(args.checkpoint, dataset=args.dataset, data_root=args.data_root, device=args.device,
                                 batch_size=args.batch_size, precision=args.precision,
                                 max_test_samples=args.max_test_samples, test_size=args.test_size)
    top5 = f"  top-5 error {result['top5_error']:.2f} %" if result["top5_error"] is not None else ""
    print(f"top-1 error {result['top1_error']:.2f} %{top5}  ({result['num_test']} test images of "
          f"{result['dataset']['label']}; {result['model']} at iteration {result['iteration']})")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _complexity_cache() -> Path:
    """A JSON cache of model counts, keyed by the model code and torch version (counting is slow)."""
    import hashlib

    import torch

    package = Path(__file__).resolve().parent
    digest = hashlib.sha256(torch.__version__.encode())
    for source in sorted([*package.joinpath("models").glob("*.py"), package / "complexity.py"]):
        digest.update(source.name.encode() + source.read_bytes())
    root = Path(os.environ.get("RANLIB_CACHE_DIR") or cache_dir())
    return root / f"complexity-{digest.hexdigest()[:16]}.json"


def model_counts(name: str, model_kwargs: dict | None = None, *, input_size: int | None = None,
                 use_cache: bool = True) -> dict:
    """Parameters and multiply-adds of a model variant at ``input_size`` (default: its own, 32 or 224).

    Counted on a meta-device model (shapes only) and cached on disk per version of the model
    code, so only the first call pays for counting. A results file counts afresh
    (``use_cache=False``).
    """
    import torch

    import ranlib

    input_size = input_size or ranlib.model_info(name).input_size
    key = name + (json.dumps(model_kwargs, sort_keys=True) if model_kwargs else "")
    if input_size != ranlib.model_info(name).input_size:
        key += f"@{input_size}"
    cache_path = _complexity_cache()
    try:
        cache = json.loads(cache_path.read_text()) if use_cache else {}
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    with torch.device("meta"):  # shapes only: counting needs no real weights
        model = ranlib.create_model(name, **(model_kwargs or {}))
    counts = ranlib.complexity(model, input_size)
    counts = {"params": int(counts["params"]), "macs": int(counts["macs"])}
    if use_cache:
        try:
            from .files import atomic_write

            with atomic_write(cache_path, "w") as f:
                f.write(json.dumps({**cache, key: counts}))
        except OSError:  # a read-only home: count again next time
            pass
    return counts


def model_table(names: list[str] | None = None, dataset: str | None = None, *, use_cache: bool = True) -> list[dict]:
    """One row per model: name, dataset, paper name, params, multiply-adds at its input size."""
    import ranlib

    rows = []
    for name in names or ranlib.list_models(dataset):
        info = ranlib.model_info(name)
        if dataset and info.dataset != dataset:
            continue
        rows.append({"name": name, "dataset": info.dataset, "paper_name": info.paper_name,
                     "input_size": info.input_size, "test_size": info.test_size,
                     **model_counts(name, use_cache=use_cache)})
    return rows


def _cmd_models(args: argparse.Namespace) -> int:
    import ranlib

    for name in args.names:
        try:
            ranlib.model_info(name)
        except ranlib.UnknownModelError as exc:
            raise RanlibError(str(exc)) from None
    rows = model_table(args.names, args.dataset)
    header = f"{'model':<22} {'dataset':<9} {'paper name':<24} {'size':>4} {'params (M)':>10} {'mult-adds (G)':>13}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['name']:<22} {r['dataset']:<9} {r['paper_name']:<24} {r['input_size']:>4} "
              f"{r['params'] / 1e6:>10.2f} {r['macs'] / 1e9:>13.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    import ranlib

    args = build_parser().parse_args(argv)
    commands = {"train": _cmd_train, "eval": _cmd_eval, "models": _cmd_models}
    try:
        return commands[args.command](args)
    except (RanlibError, ranlib.UnknownModelError) as exc:
        print_error(exc)
        return getattr(exc, "exit_code", 1)
    except KeyboardInterrupt:
        print("ranlib: interrupted", file=sys.stderr)
        return 130
