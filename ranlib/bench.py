"""Training-step benchmark: ``python -m ranlib.bench --model cifar_attention92 --batch-size 64 ...``.

Measures ranlib's training step (the data path, forward, loss, backward, Nesterov SGD update) and
prints images/s, step time (CUDA events on GPU, ``perf_counter`` on CPU), peak memory and model
FLOP utilisation. ``--baseline`` measures, in the same process, the plain way most PyTorch ports
train the same model: eager fp32, NCHW, a torchvision-transforms DataLoader over PIL images
(RandomCrop(32, padding=4), flip, ToTensor, Normalize), and prints ranlib's speed-up over it.

Data: for 32x32 models ranlib's path is ``ranlib.data.GpuBatches`` (uint8 set on the device,
augmentation there) over synthetic images; for 224 models both paths feed device-resident
synthetic batches (data loading excluded, said so in the output), so the comparison isolates
precision, memory format and compilation.

Model FLOP utilisation = 3 x 2 x multiply-adds per image x images/s / the GPU's dense bf16 peak:
a training step costs about three forward passes (forward, and backward for activations and
weights); multiply-adds are counted by ``ranlib.complexity`` (convolutions and classifier).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import provenance
from .errors import RanlibError, ResultsExistError

# Dense bf16 tensor-core peaks in TFLOP/s (vendor datasheets, without sparsity), matched on the
# device name torch reports; first match wins. Unknown GPUs report MFU as n/a.
GPU_BF16_PEAK_TFLOPS = (
    (("H100", "PCIe"), 756.0),
    (("H100", "NVL"), 835.0),
    (("H100",), 989.0),  # SXM (HBM3)
    (("H200",), 989.0),
    (("GH200",), 989.0),
    (("A100",), 312.0),
)

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # the usual per-channel statistics the plain ports hard-code
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def bf16_peak_tflops(device_name: str) -> float | None:
    for keys, tflops in GPU_BF16_PEAK_TFLOPS:
        if all(k in device_name for k in keys):
            return tflops
    return None


class _Timer:
    """Per-step times: CUDA events on GPU (no host sync inside the loop), perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def step_seconds(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1000.0 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def _synthetic_images(n: int, size: int, seed: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
            rng.integers(0, num_classes, n, dtype=np.int64))


class _PilDataset(torch.utils.data.Dataset):
    """uint8 images handed out as PIL images through a transform, as torchvision's CIFAR10 does."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        from PIL import Image
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def _endless(iterable_factory):
    while True:
        yield from iterable_factory()


def measure(model_name: str, *, batch_size: int, device: torch.device, precision: str, channels_last: bool,
            compile_model: bool, steps: int, warmup: int, data: str, num_images: int, seed: int,
            workers: int = 4, image_size: int | None = None) -> dict:
    """Time ``steps`` training steps after ``warmup`` untimed ones; returns the figures."""
    from . import data as ranlib_data
    from .train import autocast, build_model, peak_memory_bytes

    import ranlib

    info = ranlib.model_info(model_name)
    size = image_size or info.input_size
    model = build_model(model_name, {}, info.num_classes, seed)
    counts = ranlib.complexity(model, size)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format).train()
    step_model = torch.compile(model) if compile_model else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)

    if data in ("gpu_batches", "dataloader"):
        if size != 32:
            raise RanlibError(f"the {data} data path is for 32x32 models; {model_name} takes {size}x{size}")
        images, labels = _synthetic_images(num_images, size, seed, info.num_classes)
    if data == "gpu_batches":
        batches = ranlib_data.GpuBatches(images, labels, batch_size=batch_size, train=True, device=device,
                                         channels_last=channels_last, seed=seed)
        stream = batches.forever()
    elif data == "dataloader":
        from torchvision import transforms
        transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                        transforms.ToTensor(),
                                        transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
        loader = torch.utils.data.DataLoader(_PilDataset(images, labels, transform), batch_size=batch_size,
                                             shuffle=True, drop_last=True, num_workers=workers,
                                             pin_memory=device.type == "cuda", persistent_workers=workers > 0)
        stream = ((x.to(device, non_blocking=True), y.to(device, non_blocking=True))
                  for x, y in _endless(lambda: loader))
    else:  # device-resident synthetic batches (224 models): data loading not measured
        generator = torch.Generator(device=device).manual_seed(seed)
        x = torch.randn(batch_size, 3, size, size, device=device, generator=generator)
        x = x.contiguous(memory_format=memory_format)
        y = torch.randint(0, info.num_classes, (batch_size,), device=device, generator=generator)
        stream = iter(lambda: (x, y), None)

    def step():
        xb, yb = next(stream)
        with autocast(device, precision):
            loss = F.cross_entropy(step_model(xb), yb)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step()
    timer = _Timer(device)
    timer.mark()
    for _ in range(steps):
        step()
        timer.mark()
    seconds = timer.step_seconds()
    mean = statistics.fmean(seconds)
    images_per_s = batch_size / mean
    peak = bf16_peak_tflops(provenance.device_name(device)) if device.type == "cuda" else None
    achieved_tflops = 3 * 2 * counts["macs"] * images_per_s / 1e12
    return {
        "data": data, "precision": precision, "channels_last": channels_last, "compile": compile_model,
        "steps": steps, "warmup": warmup, "images_per_s": images_per_s,
        "step_time_ms_mean": 1e3 * mean, "step_time_ms_median": 1e3 * statistics.median(seconds),
        "step_time_ms_min": 1e3 * min(seconds),
        "peak_memory_bytes": peak_memory_bytes(device),
        "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_max_rss",
        "peak_reserved_bytes": int(torch.cuda.max_memory_reserved(device)) if device.type == "cuda" else None,
        "achieved_tflops": achieved_tflops,
        "mfu": achieved_tflops / peak if peak else None,
        "timer": "cuda_events" if device.type == "cuda" else "perf_counter",
        "params": counts["params"], "macs": counts["macs"],
    }


def _format_row(label: str, r: dict) -> str:
    mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "n/a"
    return (f"{label:<10} {r['images_per_s']:>10.1f} {r['step_time_ms_mean']:>9.2f} {r['step_time_ms_median']:>9.2f} "
            f"{r['peak_memory_bytes'] / 2**30:>9.2f} {mfu:>7}   {r['data']}, {r['precision']}, "
            f"{'channels_last' if r['channels_last'] else 'NCHW'}{', compiled' if r['compile'] else ''}")


# Issue 5's side-by-side set: (model, batch size). The paper's CIFAR batch, ranlib's GPU-profile
# batch, the ResNet-164 baseline, and the ImageNet networks at 224.
SUITE = (
    ("cifar_attention92", 64),
    ("cifar_attention92", 256),  # the `quick` profile's batch (ranlib.train.PROFILES)
    ("cifar_resnet164", 64),
    ("attention56", 64),
    ("attention92", 64),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ranlib.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cifar_attention92")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="auto: bf16 autocast on CUDA, fp32 on CPU")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="default: on for CUDA")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (warm-up includes compiling)")
    p.add_argument("--steps", type=int, default=50, help="timed steps")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    p.add_argument("--device", default="auto")
    p.add_argument("--image-size", type=int, help="input resolution of a 224 model (e.g. 320, the paper's "
                   "Attention-92 test size); default: the model's training size")
    p.add_argument("--num-images", type=int, help="synthetic training images (default 50,000 on CUDA, 4 batches on CPU)")
    p.add_argument("--baseline", action="store_true",
                   help="also measure eager fp32 NCHW with a torchvision-transforms DataLoader, and the ratio")
    p.add_argument("--baseline-workers", type=int, default=min(4, len(os.sched_getaffinity(0))),
                   help="DataLoader workers of the baseline (default: 4, or fewer on fewer cores)")
    p.add_argument("--suite", action="store_true",
                   help="measure every (model, batch) of SUITE with its baseline (ignores --model/--batch-size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the figures with provenance to this file")
    p.add_argument("--out", type=Path, help="write each configuration's figures to a file named after it in this folder")
    p.add_argument("--overwrite", action="store_true", help="replace existing figure files")
    return p


def file_name(record: dict) -> str:
    r = record["ranlib"]
    parts = [record["model"], str(record["input_size"]), f"b{record['batch_size']}", r["precision"],
             "cl" if r["channels_last"] else "nchw"] + (["compiled"] if r["compile"] else [])
    return "-".join(parts) + ".json"


def bench_one(model_name: str, batch_size: int, args: argparse.Namespace, *, baseline: bool) -> dict:
    """Measure one (model, batch size) with the settings in ``args``; the record written to disk."""
    import ranlib
    from .train import RECIPES, Dist, PROFILES, resolve_precision, select_device

    try:
        info = ranlib.model_info(model_name)
    except ranlib.UnknownModelError as exc:
        raise RanlibError(str(exc)) from None
    if args.steps < 1 or args.warmup < 0 or batch_size < 1:
        raise RanlibError("need --steps >= 1, --warmup >= 0 and --batch-size >= 1")
    size = args.image_size if args.image_size and info.input_size != 32 else info.input_size
    if args.image_size and info.input_size == 32 and not args.suite:
        raise RanlibError(f"{model_name} is a 32x32 CIFAR model; --image-size applies to the 224 models")
    device = select_device(args.device, Dist())
    precision = resolve_precision(args.precision, device)
    channels_last = device.type == "cuda" if args.channels_last is None else args.channels_last
    num_images = args.num_images or (50_000 if device.type == "cuda" else 4 * batch_size)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    started = provenance.utc_now()
    common = dict(batch_size=batch_size, device=device, steps=args.steps, warmup=args.warmup,
                  num_images=max(num_images, batch_size), seed=args.seed, image_size=size)
    fast_data = "gpu_batches" if size == 32 else "synthetic_device"
    figures = {"ranlib": measure(model_name, precision=precision, channels_last=channels_last,
                                 compile_model=args.compile, data=fast_data, **common)}
    if baseline:
        figures["baseline"] = measure(model_name, precision="fp32", channels_last=False, compile_model=False,
                                      data="dataloader" if size == 32 else "synthetic_device",
                                      workers=args.baseline_workers, **common)
    counts = {k: figures["ranlib"][k] for k in ("params", "macs")}
    for f in figures.values():
        del f["params"], f["macs"]
    # What the measured rate means for whole schedules (training steps only: no evaluation, no start-up).
    recipe = RECIPES[info.dataset]
    paper_images = recipe.iterations * recipe.batch_size
    rate = figures["ranlib"]["images_per_s"]
    projection = {"paper_schedule_images": paper_images, "paper_schedule_min": paper_images / rate / 60,
                  "quick_profile_min": paper_images * PROFILES[info.dataset]["quick"].fraction / rate / 60}
    return {
        "benchmark": 1, "model": model_name, "input_size": size, "batch_size": batch_size, **counts,
        "device_name": provenance.device_name(device),
        "bf16_peak_tflops": bf16_peak_tflops(provenance.device_name(device)) if device.type == "cuda" else None,
        **figures,
        "speedup": figures["ranlib"]["images_per_s"] / figures["baseline"]["images_per_s"] if baseline else None,
        "projection": projection,
        "provenance": provenance.collect(device, precision=precision, seed=args.seed, started_at=started),
    }


def report(record: dict) -> str:
    lines = [f"ranlib bench: {record['model']} at {record['input_size']}x{record['input_size']}, batch "
             f"{record['batch_size']}, on {record['device_name']}",
             f"{'path':<10} {'images/s':>10} {'step ms':>9} {'median':>9} {'peak GiB':>9} {'MFU':>7}   setup",
             _format_row("ranlib", record["ranlib"])]
    if "baseline" in record:
        lines.append(_format_row("baseline", record["baseline"]))
        lines.append(f"speed-up ranlib / baseline: {record['speedup']:.2f}x")
    projection = record["projection"]
    lines.append(f"at this rate the paper's schedule ({projection['paper_schedule_images']:,} images) takes "
                 f"{projection['paper_schedule_min']:.1f} min of training steps, the quick profile "
                 f"{projection['quick_profile_min']:.1f} min")
    if record["ranlib"]["data"] == "synthetic_device":
        lines.append("note: 224 models are fed device-resident synthetic batches; data loading is not measured")
    return "\n".join(lines)


def _write(path: Path | None, record: dict, overwrite: bool) -> None:
    if path is None:
        return
    if path.exists() and not overwrite:
        raise ResultsExistError(f"{path} already exists; pass --overwrite to replace it or choose another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configurations = SUITE if args.suite else ((args.model, args.batch_size),)
    try:
        if args.json is not None and args.json.exists() and not args.overwrite:  # before minutes of measuring
            raise ResultsExistError(f"{args.json} already exists; pass --overwrite to replace it or choose "
                                    "another path")
        if args.json is not None and len(configurations) > 1:
            raise RanlibError("--suite writes several files: use --out DIR instead of --json")
        for model_name, batch_size in configurations:
            record = bench_one(model_name, batch_size, args, baseline=args.baseline or args.suite)
            print(report(record), flush=True)
            _write(args.out / file_name(record) if args.out else args.json, record, args.overwrite)
    except RanlibError as exc:
        print(f"ranlib: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
