"""How much the JPEG copy itself moves a trained model's test error: measured on a checkpoint, and
read back for the book (:func:`jpeg_gap_table`, :func:`jpeg_cost`, the caveat beside every absolute
error).

The CIFAR-10 copy on these machines went through JPEG at quality 75. Its folder also holds the
exact official pixels of 846 test images (official indices 0-845, ``cifar10-exact-subset.npz``).
Evaluating one trained model on those exact images and on their JPEG versions, same images,
same labels, isolates what JPEG at test time costs:

    python -m ranlib.study.jpeg_gap --checkpoint checkpoints/<experiment>/<run>/last.pt \\
        --data-root ../shared/data/cifar10-jpeg --json results/jpeg_gap/<run>.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ranlib.data.batches import GpuBatches
from ranlib.data.cifar import load_arrays
from ranlib.data.decode import read_npz, sha256_file
from ranlib.errors import (DataFormatError, DataNotFoundError, RanlibError, print_error,
                           quiet_on_closed_pipe)
from ranlib.paths import resolve_path
from ranlib.training import provenance
from ranlib.training.evaluation import evaluate, load_trained, trained_model
from ranlib.training.results import ensure_writable
from ranlib.training.runtime import Dist, autocast, resolve_precision, select_device

from .verdicts import JPEG_ALLOWANCE

EXACT_SUBSET_FILE = "cifar10-exact-subset.npz"
# sha256 of the shared copy's exact subset (../shared/data/cifar10-jpeg/README.md): only that file is
# known to hold the official pixels; the result records whether the file used is it.
EXACT_SUBSET_SHA256 = "8aa560144b654d1610499a4bf1ed27c319cfb8444b860563a8c5141d93d3fc74"


def exact_subset_path(path: str | Path) -> Path:
    """The exact-subset file: ``path`` itself, or :data:`EXACT_SUBSET_FILE` in the folder ``path``."""
    path = Path(path)
    return path / EXACT_SUBSET_FILE if path.is_dir() else path


def load_exact_test_subset(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 N x 32 x 32 x 3, labels int64, official test indices) with exact official pixels."""
    path = exact_subset_path(path)
    if not path.is_file():
        raise DataNotFoundError(f"{path} does not exist; it ships beside cifar10-jpeg.npz in "
                                "../shared/data/cifar10-jpeg/")
    npz = read_npz(path, ("x_test", "y_test", "test_index"), "exact-subset (../shared/data/cifar10-jpeg/README.md)")
    return npz["x_test"], npz["y_test"].astype(np.int64), npz["test_index"].astype(np.int64)


@torch.no_grad()
def _correct(model: torch.nn.Module, batches, device: torch.device, precision: str) -> torch.Tensor:
    """Per image, in order: whether the model's top-1 prediction is its label (bool, shape ``(N,)``)."""
    model.eval()
    hits = []
    for x, y in batches:
        with autocast(device, precision):
            hits.append(model(x).float().argmax(1).eq(y).cpu())
    return torch.cat(hits)


def paired_interval(exact_correct: torch.Tensor, jpeg_correct: torch.Tensor, z: float = 1.96) -> list[float]:
    """95 % interval, in points, of the JPEG images' top-1 error minus the exact images' (the same
    model on the same images, so the two errors are correlated): the Wald interval of a paired
    difference of proportions, the one McNemar's test goes with (Agresti, *Categorical Data
    Analysis*, 10.1), from the discordant images alone."""
    n = len(exact_correct)
    only_jpeg_wrong = int((exact_correct & ~jpeg_correct).sum())
    only_exact_wrong = int((~exact_correct & jpeg_correct).sum())
    gap = (only_jpeg_wrong - only_exact_wrong) / n
    half = z * math.sqrt(max((only_jpeg_wrong + only_exact_wrong) / n - gap ** 2, 0.0) / n)
    return [100 * (gap - half), 100 * (gap + half)]


def jpeg_gap(checkpoint: str | Path, *, data_root: str | Path, exact_path: str | Path | None = None,
             device: str = "auto", precision: str = "auto", batch_size: int = 256) -> dict:
    """Top-1 error of a checkpoint on the exact official test images and on their JPEG versions, and
    the 95 % interval of their difference (:func:`paired_interval`)."""
    data_root = Path(data_root)
    default_exact = data_root.parent if data_root.is_file() else data_root  # beside the JPEG copy's npz
    exact_file = exact_subset_path(exact_path or default_exact)
    exact_images, exact_labels, indices = load_exact_test_subset(exact_file)
    jpeg = load_arrays("cifar10-jpeg", data_root)
    jpeg_images, jpeg_labels = jpeg.test_images[indices], jpeg.test_labels[indices].astype(np.int64)
    if not np.array_equal(jpeg_labels, exact_labels):
        raise DataFormatError("the exact subset's labels differ from the JPEG copy's at the same official indices")
    saved, trained = load_trained(checkpoint)
    dev = select_device(device, Dist())
    prec = resolve_precision(precision, dev)
    model = trained_model(saved, trained, jpeg.num_classes, checkpoint).to(dev)
    results, correct = {}, {}
    for name, images in (("exact", exact_images), ("jpeg", jpeg_images)):
        batches = GpuBatches(torch.from_numpy(images), torch.from_numpy(exact_labels), batch_size=batch_size,
                             train=False, device=dev, mean=saved.get("data_mean"))
        results[name] = evaluate(model, batches, dev, prec)
        correct[name] = _correct(model, batches, dev, prec)
    errors = {name: result["top1_error"] for name, result in results.items()}
    return {
        "experiment": "jpeg_gap",
        "checkpoint": str(checkpoint),
        "model": trained.model,
        "model_kwargs": trained.model_kwargs,
        "trained_on": saved.get("dataset"),
        "jpeg_images": jpeg.to_dict(),  # verified against the copy's digest (ranlib.data.cifar)
        "exact_subset_verified": sha256_file(exact_file) == EXACT_SUBSET_SHA256,
        "iteration": saved.get("iteration"),
        "num_images": results["exact"]["count"],
        "official_test_indices": [int(indices.min()), int(indices.max())],
        "top1_error_exact": errors["exact"],
        "top1_error_jpeg": errors["jpeg"],
        "jpeg_minus_exact": errors["jpeg"] - errors["exact"],
        "jpeg_minus_exact_interval": paired_interval(correct["exact"], correct["jpeg"]),
        "discordant_images": {"only_jpeg_wrong": int((correct["exact"] & ~correct["jpeg"]).sum()),
                              "only_exact_wrong": int((~correct["exact"] & correct["jpeg"]).sum())},
        "mean_abs_pixel_difference": float(np.abs(jpeg_images.astype(np.int16) - exact_images).mean()),
        "provenance": provenance.collect(dev, precision=prec, seed=trained.seed),
    }


@quiet_on_closed_pipe
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ranlib.study.jpeg_gap", description=__doc__.split("\n\n")[1])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by `ranlib train` (last.pt)")
    parser.add_argument("--data-root", required=True, help="folder (or file) of cifar10-jpeg.npz")
    parser.add_argument("--exact", help=f"the exact-subset npz (default: {EXACT_SUBSET_FILE} beside the JPEG copy)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--json", type=Path, help="write the figures here, e.g. results/jpeg_gap/<run>.json")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    args = parser.parse_args(argv)
    try:
        if args.json is not None:
            ensure_writable(args.json, args.overwrite)
        result = jpeg_gap(args.checkpoint, data_root=args.data_root, exact_path=args.exact, device=args.device,
                          precision=args.precision, batch_size=args.batch_size)
    except RanlibError as exc:
        print_error(exc)
        return 1
    unverified = "" if result["exact_subset_verified"] else " (not the copy's exact subset: its sha256 differs)"
    print(f"{result['model']}: top-1 error {result['top1_error_exact']:.2f} % on the {result['num_images']} exact "
          f"official test images{unverified}, {result['top1_error_jpeg']:.2f} % on their versions in "
          f"{result['jpeg_images']['label']} (JPEG - exact: {result['jpeg_minus_exact']:+.2f} points)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0



def jpeg_gap_table(results_root: str | os.PathLike = "results") -> pd.DataFrame:
    """What the JPEG copy costs trained models: one line per ``results/jpeg_gap/*.json`` written
    by ``python -m ranlib.study.jpeg_gap`` (top-1 error on the 846 exact official test images and on
    their JPEG q75 versions). Empty when none was measured."""
    columns = ["run", "model", "iteration", "images", "error exact (%)", "error JPEG (%)",
               "JPEG - exact", "mean |pixel diff|", "device"]
    folder = resolve_path(results_root) / "jpeg_gap"
    lines = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        gap = json.loads(path.read_text())
        lines.append({"run": Path(gap["checkpoint"]).parent.name, "model": gap["model"],
                      "iteration": gap["iteration"], "images": gap["num_images"],
                      "error exact (%)": round(gap["top1_error_exact"], 2),
                      "error JPEG (%)": round(gap["top1_error_jpeg"], 2),
                      "JPEG - exact": round(gap["jpeg_minus_exact"], 2),
                      "mean |pixel diff|": round(gap["mean_abs_pixel_difference"], 2),
                      "device": gap["provenance"].get("device_name")})
    return pd.DataFrame(lines, columns=columns)


def jpeg_cost(results_root: str | os.PathLike = "results") -> dict:
    """What the JPEG copy costs, for the caveat: measured (``results/jpeg_gap/*.json``, their mean)
    or, without a measurement, the figure the copy's README quotes, labelled as quoted.

    Returns ``{"source": "measured" | "quoted", "points", "low", "high", "allowance", "text", "short"}``
    (points of top-1 error; ``allowance``, what an absolute claim on the copy is allowed: the interval's
    upper end, at least 0; ``text`` for the caveat, ``short`` for a verdict rule). A measured interval is the
    file's ``jpeg_minus_exact_interval`` when it has one, else a conservative one: the 95 % normal interval of the difference of two independent error rates on
    ``num_images`` images each (the two evaluations share their images, which only narrows the true
    interval, so this one is too wide rather than too narrow).
    """
    folder = resolve_path(results_root) / "jpeg_gap"
    gaps = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    if not gaps:
        return {"source": "quoted", "points": None, "low": 2.0, "high": JPEG_ALLOWANCE, "allowance": JPEG_ALLOWANCE,
                "text": "2-3 points of top-1 error, as the copy's README quotes one public report (quoted, not "
                        "measured here)",
                "short": "2-3 points, quoted from the copy's README, not measured here"}
    points, lows, highs = [], [], []
    for gap in gaps:
        n, exact, jpeg = gap["num_images"], gap["top1_error_exact"] / 100, gap["top1_error_jpeg"] / 100
        interval = gap.get("jpeg_minus_exact_interval")
        if interval is None:
            half = 1.96 * math.sqrt(exact * (1 - exact) / n + jpeg * (1 - jpeg) / n) * 100
            interval = (gap["jpeg_minus_exact"] - half, gap["jpeg_minus_exact"] + half)
        points.append(gap["jpeg_minus_exact"])
        lows.append(interval[0])
        highs.append(interval[1])
    mean = sum(points) / len(points)
    models = sorted({f"{gap['model']} (iteration {gap['iteration']:,})" for gap in gaps})
    text = (f"{mean:+.2f} points of top-1 error (95 % interval {min(lows):+.2f} to {max(highs):+.2f}), measured "
            f"here on {', '.join(models)}: its error on the {gaps[0]['num_images']} exact official test images "
            "against their JPEG versions (what JPEG at test time costs; training on JPEG images may cost more)")
    short = f"{mean:+.2f} points measured here, 95 % interval {min(lows):+.2f} to {max(highs):+.2f}"
    return {"source": "measured", "points": mean, "low": min(lows), "high": max(highs),
            "allowance": max(max(highs), 0.0), "text": text, "short": short}


if __name__ == "__main__":
    raise SystemExit(main())
