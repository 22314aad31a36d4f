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

``--compile`` / ``--compile-mode MODE`` wrap the model in ``torch.compile`` (warm-up steps include
compiling); ``reduce-overhead`` replays the step's kernels as CUDA graphs, for a step whose
time goes into launching many small kernels (a 32x32 network at batch 64 may be one: ``--profile``
tells). ``ranlib train --compile --compile-mode ...`` trains the same way.

``--grad-checkpointing`` recomputes the attention mask branches in backward
(``ResidualNet.set_grad_checkpointing``, as ``ranlib train --grad-checkpointing``): less activation
memory for about one more mask forward per step; the file name gets ``-gc``.

``--profile DIR`` runs a few more steps under ``torch.profiler`` after the timed ones and writes
``DIR/<figures file stem>-profile.json``: the top ops (CPU) or kernels (GPU) by self time and the
self time split into ``PROFILE_CATEGORIES`` (convolution/matmul, batch norm, elementwise, the
mask branch's pool/upsample, copies, optimizer), host and device separately on CUDA, with the
fraction of the profiled window in which the GPU ran nothing.

``--processes K`` also runs K copies of ranlib's measurement at once, each in its own process
on the same device, their timed steps started together (a barrier), and reports the images/s
of all K together against one process's rate: whether packing small trainings onto one GPU
raises total throughput. Without CUDA MPS (``nvidia-cuda-mps-control -d``) the processes'
kernels time-slice rather than overlap.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import provenance
from .errors import RanlibError, ResultsExistError, print_error
from .train import COMPILE_MODES

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
            workers: int = 4, image_size: int | None = None, grad_checkpointing: bool = False,
            compile_mode: str | None = None, profile_steps: int = 0, before_timing: Callable[[], None] | None = None) -> dict:
    """Time ``steps`` training steps after ``warmup`` untimed ones; returns the figures.

    ``before_timing`` is called between the warm-up and the timed steps; ``profile_steps`` more
    steps then run under the profiler, their summary under the figures' ``"profile"`` key.
    """
    from . import data as ranlib_data
    from .runtime import autocast, peak_memory_bytes
    from .train import build_model, enable_grad_checkpointing

    import ranlib

    info = ranlib.model_info(model_name)
    size = image_size or info.input_size
    if device.type == "cuda":  # here, not in the caller: --processes workers start with torch's defaults
        torch.backends.cudnn.benchmark = True
    model = build_model(model_name, {}, info.num_classes, seed)
    if grad_checkpointing:
        enable_grad_checkpointing(model, model_name)
    counts = ranlib.complexity(model, size)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format).train()
    step_model = torch.compile(model, mode=compile_mode) if compile_model else model
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
    if before_timing is not None:
        before_timing()
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
    figures = {
        "data": data, "precision": precision, "channels_last": channels_last, "compile": compile_model, "compile_mode": compile_mode,
        "grad_checkpointing": grad_checkpointing, "steps": steps, "warmup": warmup, "images_per_s": images_per_s,
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
    if profile_steps:  # after the figures, so that profiling costs stay out of them
        figures["profile"] = profile_training(step, device, profile_steps)
    return figures


# --------------------------------------------------------------------------------------------
# Profiler pass
# --------------------------------------------------------------------------------------------

# Where self time goes, by op (CPU) or kernel (GPU) name: the first category with a substring
# of the lower-cased name wins, "other" if none. The order matters: copies first (casts run as
# elementwise copy kernels, cuDNN's layout transposes are named nchwToNhwc), batch norm and
# pooling before convolution (cuDNN names its BN and pooling kernels cudnn::...), matrix
# products before elementwise ("addmm" contains "add"). "mulbackward"/"mulfunctor" rather than
# "mul", which would match AccumulateGrad.
PROFILE_CATEGORIES = (
    ("memcpy/copy", ("copy", "memcpy", "memset", "nchwtonhwc", "nhwctonchw")),
    ("optimizer", ("optimizer.", "_foreach", "multi_tensor_apply", "sgd")),
    ("batchnorm", ("batch_norm", "batchnorm", "bn_fw", "bn_bw")),
    ("pool/upsample", ("pool", "upsample", "interpolate")),
    ("conv/matmul", ("conv", "gemm", "xmma", "cutlass", "cudnn", "winograd", "wgrad", "dgrad", "addmm", "aten::mm",
                     "matmul")),
    ("elementwise/activation", ("elementwise", "add", "aten::mul", "mulbackward", "mulfunctor", "sub", "div",
                                "sigmoid", "relu", "threshold", "clamp")),
)
PROFILE_STEPS = 5  # profiled steps after the timed ones
PROFILE_TOP = 25  # ops/kernels listed by self time


def profile_category(name: str) -> str:
    lowered = name.lower()
    for category, substrings in PROFILE_CATEGORIES:
        if any(s in lowered for s in substrings):
            return category
    return "other"


def _time_breakdown(rows: list[tuple[str, int, float]], steps: int) -> dict:
    """Self times (name, calls, microseconds): total, per category and the top names."""
    total = sum(us for _, _, us in rows)
    categories = {name: 0.0 for name, _ in PROFILE_CATEGORIES} | {"other": 0.0}
    for name, _, us in rows:
        categories[profile_category(name)] += us
    top = sorted(rows, key=lambda row: -row[2])[:PROFILE_TOP]
    return {"total_self_us": total, "per_step_ms": total / steps / 1e3, "categories_us": categories,
            "top": [{"name": name, "count": count, "self_us": us, "category": profile_category(name)}
                    for name, count, us in top]}


def idle_fraction(busy: list[tuple[float, float]], start: float, end: float) -> float:
    """Share of [start, end] covered by none of the (start, end) spans in ``busy``."""
    covered, reach = 0.0, start
    for span_start, span_end in sorted(busy):
        if span_end > reach:
            covered += span_end - max(span_start, reach)
            reach = span_end
    return 1.0 - covered / (end - start)


def profile_training(step: Callable[[], None], device: torch.device, steps: int) -> dict:
    """Run ``steps`` training steps under torch.profiler; where their self time goes.

    ``host``: self CPU time of every op, autograd node and annotation (all of the time the
    profiler sees on the CPU). On CUDA also ``device``: self time of every kernel, copy and memset
    (what the profiler's table calls self CUDA time), ``gpu_idle_fraction`` (the share of the
    profiled window in which no kernel ran: host overhead and waiting) and ``host_synchronizations``
    (calls of cuda*Synchronize; the profiler's own at stop is one of them).
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = device.type == "cuda"
    with torch_profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for _ in range(steps):
            step()
    averages = prof.key_averages()
    host = [(e.key, e.count, e.self_cpu_time_total) for e in averages if e.device_type == DeviceType.CPU]
    summary = {"profiled_steps": steps, "host": _time_breakdown(host, steps)}
    if cuda:
        def on_device(e):  # kernels, copies, memsets; not the GPU-side spans of record_function ranges
            return e.device_type == DeviceType.CUDA and not e.is_user_annotation

        summary["device"] = _time_breakdown(
            [(e.key, e.count, e.self_device_time_total) for e in averages if on_device(e)], steps)
        events = prof.events()
        summary["gpu_idle_fraction"] = idle_fraction(
            [(e.time_range.start, e.time_range.end) for e in events if on_device(e)],
            min(e.time_range.start for e in events), max(e.time_range.end for e in events))
        summary["host_synchronizations"] = sum(e.count for e in averages
                                               if e.device_type == DeviceType.CPU and "synchronize" in e.key.lower())
    return summary


def profile_report(record: dict) -> str:
    side = "device" if "device" in record else "host"
    breakdown = record[side]
    total = breakdown["total_self_us"] or 1.0
    lines = [f"profile of {record['profiled_steps']} steps, self {side} time: {breakdown['per_step_ms']:.2f} ms "
             "per step" + (f", GPU idle {100 * record['gpu_idle_fraction']:.1f} % of the window, "
                           f"{record['host_synchronizations']} host synchronisations" if side == "device" else "")]
    lines += [f"  {name:<24} {us / record['profiled_steps'] / 1e3:>9.2f} ms {100 * us / total:>6.1f} %"
              for name, us in sorted(breakdown["categories_us"].items(), key=lambda item: -item[1])]
    lines.append("  top by self time:")
    lines += [f"  {row['self_us'] / record['profiled_steps'] / 1e3:>9.2f} ms {row['count']:>6}x  {row['name'][:90]}"
              for row in breakdown["top"][:10]]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Several trainings at once on one device
# --------------------------------------------------------------------------------------------

def _concurrent_worker(model_name: str, kwargs: dict, barrier, results) -> None:
    """One of ``--processes``: measure() with its timed steps started together with the others'."""
    window = []

    def start_together():
        if kwargs["device"].type == "cuda":
            torch.cuda.synchronize(kwargs["device"])  # the warm-up is done before the barrier
        barrier.wait()
        window.append(time.time())  # wall clock: comparable between processes

    try:
        figures = measure(model_name, before_timing=start_together, **kwargs)
        results.put({"figures": figures, "start": window[0], "end": time.time()})
    except threading.BrokenBarrierError:  # another process failed and said why
        results.put({"error": None})
    except Exception as exc:  # whatever it is, the parent reports it as one line
        barrier.abort()
        results.put({"error": f"{type(exc).__name__}: {exc}"})


def measure_concurrent(model_name: str, processes: int, kwargs: dict) -> dict:
    """``processes`` copies of ``measure(model_name, **kwargs)`` at once; per-process and total images/s."""
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")  # CUDA cannot be used in forked children
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_concurrent_worker, args=(model_name, kwargs, barrier, results))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    try:
        answers = []
        while len(answers) < processes:
            try:
                answers.append(results.get(timeout=1.0))
            except queue.Empty:
                dead = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
                if dead:  # killed (out of memory?) before it could answer; release the others
                    barrier.abort()
                    raise RanlibError(f"a --processes worker died with exit code {dead[0]}") from None
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.terminate()
    return _combine(answers, kwargs["batch_size"])


def _combine(answers: list[dict], batch_size: int) -> dict:
    """The workers' answers as one figure, or the first failure's reason as a RanlibError.

    The total rate is every process's timed images over the wall-clock span from the first start
    to the last end, so a process finishing early counts against it.
    """
    failed = [a["error"] for a in answers if "error" in a]
    if failed:
        raise RanlibError(f"a --processes worker failed: {next(filter(None, failed), 'no reason given')}")
    images = sum(a["figures"]["steps"] for a in answers) * batch_size
    span = max(a["end"] for a in answers) - min(a["start"] for a in answers)
    return {"processes": len(answers), "images_per_s": [a["figures"]["images_per_s"] for a in answers],
            "peak_memory_bytes": [a["figures"]["peak_memory_bytes"] for a in answers],
            "aggregate_images_per_s": images / span}


def setup_text(r: dict) -> str:
    """How a path was measured: ``"gpu_batches, bf16, channels_last, compiled (default)"``."""
    compiled = f", compiled ({r.get('compile_mode') or 'default'})" if r["compile"] else ""
    return (f"{r['data']}, {r['precision']}, {'channels_last' if r['channels_last'] else 'NCHW'}{compiled}"
            f"{', grad checkpointing' if r['grad_checkpointing'] else ''}")


def _format_row(label: str, r: dict) -> str:
    mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "n/a"
    return (f"{label:<10} {r['images_per_s']:>10.1f} {r['step_time_ms_mean']:>9.2f} {r['step_time_ms_median']:>9.2f} "
            f"{r['peak_memory_bytes'] / 2**30:>9.2f} {mfu:>7}   {setup_text(r)}")


@dataclass(frozen=True)
class Case:
    """One benchmarked configuration: a model at a batch size, and options of ranlib's path."""

    model: str
    batch_size: int
    grad_checkpointing: bool = False


# Issue 5's side-by-side set. The paper's CIFAR batch, ranlib's GPU-profile batch, the ResNet-164
# baseline, and the ImageNet networks at 224; Attention-56 both ways, for its memory target.
SUITE = (
    Case("cifar_attention92", 64),
    Case("cifar_attention92", 256),  # the `quick` profile's batch (ranlib.train.PROFILES)
    Case("cifar_resnet164", 64),
    Case("attention56", 64),
    Case("attention56", 64, grad_checkpointing=True),
    Case("attention92", 64),
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
    p.add_argument("--compile-mode", choices=COMPILE_MODES,
                   help="torch.compile mode (implies --compile), e.g. reduce-overhead: CUDA graphs, less Python per step")
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
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute the attention mask branches in backward (less memory; attention models only)")
    p.add_argument("--suite", action="store_true", help="measure every configuration of SUITE with its baseline "
                   "(ignores --model/--batch-size/--grad-checkpointing)")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help=f"then profile {PROFILE_STEPS} more steps: where the time goes, in DIR/<name>-profile.json")
    p.add_argument("--processes", type=int, metavar="K",
                   help="also run K copies of ranlib's measurement at once on the device; total images/s vs one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the figures with provenance to this file")
    p.add_argument("--out", type=Path, help="write each configuration's figures to a file named after it in this folder")
    p.add_argument("--overwrite", action="store_true", help="replace existing figure files")
    return p


def file_name(record: dict) -> str:
    r = record["ranlib"]
    parts = [record["model"], str(record["input_size"]), f"b{record['batch_size']}", r["precision"],
             "cl" if r["channels_last"] else "nchw"]
    parts += [flag for flag, on in (("gc", r["grad_checkpointing"]), ("compiled", r["compile"]),
                                    (r.get("compile_mode"), r.get("compile_mode"))) if on]
    if "concurrent" in record:  # a file of its own beside the one-process measurement
        parts.append(f"x{record['concurrent']['processes']}")
    return "-".join(parts) + ".json"


def bench_one(case: Case, args: argparse.Namespace, *, baseline: bool) -> dict:
    """Measure one configuration with the settings in ``args``; the record written to disk.

    With ``--profile`` the record has a ``"profile"`` entry, which ``main`` writes to its own file.
    """
    import ranlib
    from .runtime import Dist, resolve_precision, select_device
    from .train import PROFILES, RECIPES

    model_name, batch_size = case.model, case.batch_size
    try:
        info = ranlib.model_info(model_name)
    except ranlib.UnknownModelError as exc:
        raise RanlibError(str(exc)) from None
    if args.steps < 1 or args.warmup < 0 or batch_size < 1 or (args.processes is not None and args.processes < 1):
        raise RanlibError("need --steps >= 1, --warmup >= 0, --batch-size >= 1 and --processes >= 1")
    size = args.image_size if args.image_size and info.input_size != 32 else info.input_size
    if args.image_size and info.input_size == 32 and not args.suite:
        raise RanlibError(f"{model_name} is a 32x32 CIFAR model; --image-size applies to the 224 models")
    device = select_device(args.device, Dist())
    precision = resolve_precision(args.precision, device)
    channels_last = device.type == "cuda" if args.channels_last is None else args.channels_last
    num_images = args.num_images or (50_000 if device.type == "cuda" else 4 * batch_size)
    started = provenance.utc_now()
    common = dict(batch_size=batch_size, device=device, steps=args.steps, warmup=args.warmup,
                  num_images=max(num_images, batch_size), seed=args.seed, image_size=size)
    fast = dict(precision=precision, channels_last=channels_last,
                compile_model=args.compile or args.compile_mode is not None, compile_mode=args.compile_mode,
                data="gpu_batches" if size == 32 else "synthetic_device", grad_checkpointing=case.grad_checkpointing,
                **common)
    figures = {"ranlib": measure(model_name, profile_steps=PROFILE_STEPS if args.profile else 0, **fast)}
    profiled = figures["ranlib"].pop("profile", None)
    if baseline:
        figures["baseline"] = measure(model_name, precision="fp32", channels_last=False, compile_model=False,
                                      data="dataloader" if size == 32 else "synthetic_device",
                                      workers=args.baseline_workers, **common)
    concurrent = None
    if args.processes:
        concurrent = measure_concurrent(model_name, args.processes, fast)
        concurrent["one_process_images_per_s"] = figures["ranlib"]["images_per_s"]  # measured alone, above
        concurrent["ratio"] = concurrent["aggregate_images_per_s"] / concurrent["one_process_images_per_s"]
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
        **({"concurrent": concurrent} if concurrent else {}),
        **({"profile": profiled} if profiled else {}),
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
    if "concurrent" in record:
        c = record["concurrent"]
        lines.append(f"{c['processes']} processes at once: {c['aggregate_images_per_s']:.1f} images/s in all "
                     f"(each: {', '.join(f'{r:.1f}' for r in c['images_per_s'])}), {c['ratio']:.2f}x one "
                     "process's rate")
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
    configurations = SUITE if args.suite else (Case(args.model, args.batch_size, args.grad_checkpointing),)
    try:
        if args.json is not None and args.json.exists() and not args.overwrite:  # before minutes of measuring
            raise ResultsExistError(f"{args.json} already exists; pass --overwrite to replace it or choose "
                                    "another path")
        if args.json is not None and len(configurations) > 1:
            raise RanlibError("--suite writes several files: use --out DIR instead of --json")
        for case in configurations:
            record = bench_one(case, args, baseline=args.baseline or args.suite)
            profiled = record.pop("profile", None)
            print(report(record), flush=True)
            _write(args.out / file_name(record) if args.out else args.json, record, args.overwrite)
            if profiled is not None:
                print(profile_report(profiled), flush=True)
                # "benchmark" as in the figures files, so that results loaders skip it
                context = {k: record[k] for k in ("benchmark", "model", "input_size", "batch_size", "device_name")}
                _write(args.profile / (file_name(record)[:-len(".json")] + "-profile.json"),
                       {**context, "setup": setup_text(record["ranlib"]), **profiled}, args.overwrite)
    except RanlibError as exc:
        print_error(exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
