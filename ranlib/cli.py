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

from .errors import RanlibError, ResultsExistError, print_error, quiet_on_closed_pipe
from .models.complexity import model_table
from .training.flags import add_train_flags, key_values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ranlib",
                                     description="Residual Attention Network reproduction: train, evaluate, list models.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model and write a results file",
                           description="Train with the paper's recipe (scaled by --profile) and write "
                                       "results/<experiment>/<run_name>.json. Launch with torchrun for DDP.")
    add_train_flags(train)
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
    from .training.config import TrainConfig
    from .training.loop import run_group

    values = {k: v for k, v in vars(args).items() if k not in ("command", "seeds", "noise_levels")}
    if "model_kwargs" in values:
        values["model_kwargs"] = key_values(values["model_kwargs"])
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
    from .training.evaluation import evaluate_checkpoint

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


@quiet_on_closed_pipe
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
