"""Training-step benchmark: ``python -m ranlib.bench --model cifar_attention92 --batch-size 64 ...``.

Measures ranlib's training step (the data path, forward, loss, backward, Nesterov SGD update) and
prints images/s, step time (CUDA events on GPU, ``perf_counter`` on CPU), peak memory and model
FLOP utilisation. ``--baseline`` measures, in the same process, the plain way most PyTorch ports
train the same model: eager fp32, NCHW, a torchvision-transforms DataLoader over PIL images
(RandomCrop(32, padding=4), flip, ToTensor, Normalize), and prints ranlib's speed-up over it.

Data: for 32x32 models ranlib's path is ``ranlib.data.cifar.GpuBatches`` (uint8 set on the device,
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

``--device cpu`` alone (no ``--precision``, ``--channels-last``, ``--image-size`` or other mode)
prints the CPU's figures instead (issue 18, :mod:`ranlib.bench.cpu`): the training step's images/s
per precision and memory format, the bf16 and fp32 matrix-product peaks and the step's share of
them, and with ``--dataset``/``--data-root`` the real loop's share of the bare step, written to
``--out DIR/cpu-<model>.json``; ``--precision-check`` trains fp32 seeds 0 and 1 and bf16 seed 0
alike and compares their loss curves (``--out DIR/precision-check-<model>-b<batch>.json``).

``--fused`` (issue 10, item 5) measures horizontal fusion instead, in one process::

    python -m ranlib.bench --fused --budget-seconds 60 --out results/performance

For each of ``--fused-models`` (cifar_attention92, cifar_resnet164), ``--fused-batches`` (64 and
the quick profile's 256, per member), ``--members`` K (1 2 4 8 16) and ``--graphs`` (both, on,
off), it builds K members (``ranlib.create_model``, seeds 0..K-1), fuses them
(``ranlib.models.fused.fuse``) and times real training steps of ``ranlib.training.step.TrainStep`` as
``ranlib.training.loop.run_group`` runs them (Nesterov SGD with ``fused=graphs``, bf16 autocast and
channels_last on CUDA, the whole step one CUDA graph with graphs on), fed K random uint8
batches made and normalised on the device and fused by ``fuse_inputs``: CUDA-event times of up
to ``--steps`` steps (fewer when they would take longer than ``--seconds-per-config``) after
``--warmup`` (default 5; graphs capture after ``GRAPH_WARMUP_STEPS`` eager steps). Also, in the
same process: the GPU's bf16 matrix peak (``--peak-size`` 8192, n x n products), the plain
eager-fp32 DataLoader baseline per model and batch, and per-layer alternatives to the grouped
convolutions (every distinct convolution of the fused model at its real shape, forward and
backward, grouped vs a 1x1 as one ``bmm`` over the members or a 3x3 as one dense convolution
with a block-diagonal weight; which is faster, recorded, not switched on). Per configuration:
aggregate and per-member images/s, step time, achieved TFLOP/s (6 x multiply-adds per image x
images/s), its share of the measured peak, and the ratios to K separate solo trainings (K x the
K = 1 step time), to the best solo configuration (K = 1, graphs on or off) and to the baseline;
then the issue's targets, met or not. Measurements run in order of importance
(:func:`fused_plan`: the targets' K = 8 Attention-92 at batch 64 with graphs first, its solo
runs, the baseline, ...); with ``--budget-seconds S`` none starts after S seconds from the
process's start, nor one predicted to overrun them, and those are listed under ``"skipped"``;
a configuration that fails (out of memory, a capture failure) is listed under ``"failed"`` and
the rest go on. The record goes to ``--out DIR/fused.json`` (or ``--json PATH``) with provenance.
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

from ranlib.training import provenance
from ranlib.errors import RanlibError, ResultsExistError, print_error
from ranlib.files import atomic_write
from ranlib.models.fused import grouped_1x1_as_bmm, grouped_as_dense
from ranlib.training.results import benchmark_file_name, setup_text
from ranlib.training.runtime import PEAK_MATMUL_SIZE, PEAK_MATMUL_SIZE_CPU, matmul_peak
from ranlib.training.config import COMPILE_MODES

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
    from ranlib.data import cifar as ranlib_data
    from ranlib.training.runtime import autocast, peak_memory_bytes
    from ranlib.training.evaluation import build_model
    from ranlib.training.loop import enable_grad_checkpointing

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


# --------------------------------------------------------------------------------------------
# Horizontal fusion: K members as one model (issue 10, item 5)
# --------------------------------------------------------------------------------------------

FUSED_MODELS = ("cifar_attention92", "cifar_resnet164")
FUSED_MEMBERS = (1, 2, 4, 8, 16)
FUSED_KEY_MEMBERS = 8  # the K the targets speak of
FUSED_FILE = "fused.json"  # in --out DIR
LAYER_REPEATS = 10  # timed forward+backward passes per convolution and implementation
# The targets for fused K = 8 cifar_attention92 with CUDA graphs.
TARGET_FUSED_VS_BASELINE = 10.0
TARGET_FUSED_VS_BEST_SOLO = 4.0
TARGET_PEAK_SHARE = {64: 0.15, "quick": 0.30}  # share of the measured bf16 matrix peak, by batch


def quick_batch_size() -> int:
    from ranlib.training.recipes import PROFILES
    return PROFILES["cifar"]["quick"].batch_size


def _elapsed_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` over ``repeats`` calls (CUDA events on GPU, perf_counter on CPU)."""
    timer = _Timer(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timer.mark()
    for _ in range(repeats):
        fn()
    timer.mark()
    return timer.step_seconds()[0] / repeats


def _fused_batches(model_name: str, members: int, batch_size: int, device: torch.device, memory_format, seed: int):
    """A step's fused input and labels, made on the device: two pools of K random uint8 batches,
    normalised and fused (:func:`ranlib.models.fused.fuse_inputs`) at every call, as the
    training loop fuses its K streams."""
    import ranlib
    from ranlib.models.fused import fuse_inputs

    classes = ranlib.model_info(model_name).num_classes
    generator = torch.Generator(device=device).manual_seed(seed)
    pools = [[torch.randint(0, 256, (batch_size, 3, 32, 32), dtype=torch.uint8, device=device, generator=generator)
              for _ in range(members)] for _ in range(2)]
    labels = [torch.randint(0, classes, (batch_size, members), device=device, generator=generator) for _ in range(2)]
    mean = 255 * torch.tensor(CIFAR_MEAN, device=device).view(1, 3, 1, 1)
    std = 255 * torch.tensor(CIFAR_STD, device=device).view(1, 3, 1, 1)
    calls = [0]

    def batch():
        i = calls[0] % 2
        calls[0] += 1
        xs = [((u.float() - mean) / std).contiguous(memory_format=memory_format) for u in pools[i]]
        return fuse_inputs(xs).contiguous(memory_format=memory_format), labels[i]

    return batch


_MACS: dict[str, int] = {}  # multiply-adds per image, by model name


def measure_fused(model_name: str, *, members: int, batch_size: int, graphs: bool, device: torch.device,
                  precision: str, channels_last: bool, steps: int, warmup: int, seed: int,
                  max_seconds: float | None = None) -> dict:
    """Time real training steps of ``members`` fused members (seeds ``seed .. seed + K - 1``), as
    ``ranlib.training.loop.run_group`` trains them: :class:`ranlib.training.step.TrainStep`, Nesterov SGD
    (``fused=graphs``), ``precision`` autocast, the whole step one CUDA graph when ``graphs``.

    ``warmup`` untimed steps first (at least ``GRAPH_WARMUP_STEPS`` + 2 with graphs: eager steps,
    the capture, one replay); then ``steps`` timed ones, or fewer if the last warm-up step says
    they would take longer than ``max_seconds`` (at least 3).
    """
    import warnings

    import ranlib
    from ranlib.models.fused import choose_conv_impls, fuse
    from ranlib.training.runtime import autocast, cuda_time_s, peak_memory_bytes
    from ranlib.training.step import GRAPH_WARMUP_STEPS, TrainStep
    from ranlib.training.evaluation import build_model

    started = time.perf_counter()
    info = ranlib.model_info(model_name)
    if info.input_size != 32:
        raise RanlibError(f"the fused benchmark is for the 32x32 CIFAR models; {model_name} takes "
                          f"{info.input_size}x{info.input_size}")
    if graphs and device.type != "cuda":
        raise RanlibError("CUDA graphs need a CUDA device")
    solo = [build_model(model_name, {}, info.num_classes, seed + i) for i in range(members)]
    if model_name not in _MACS:  # FlopCounterMode takes seconds of host time: once per model
        _MACS[model_name] = ranlib.complexity(solo[0], 32)["macs"]
    macs = _MACS[model_name]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    model = fuse(solo).to(device, memory_format=memory_format).train()
    del solo
    batch = _fused_batches(model_name, members, batch_size, device, memory_format, seed)
    conv_impls = None
    if device.type == "cuda" and members > 1:  # as run_group does: each convolution's fastest kernel
        with autocast(device, precision):
            conv_impls = choose_conv_impls(model, batch()[0], cuda_time_s)["layers"]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4,
                                fused=graphs or None)  # as ranlib.training.loop._train_group builds it
    build_seconds = time.perf_counter() - started
    windows = [torch.zeros(members, 3, dtype=torch.float64, device=device) for _ in range(2)]
    step = TrainStep(model, model, optimizer, windows=windows, precision=precision, cuda_graphs=graphs)
    warmup = max(warmup, GRAPH_WARMUP_STEPS + 2 if graphs else 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(warmup):
            if i == warmup - 1:  # the last warm-up step alone, to size the timed run
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                last_start = time.perf_counter()
            step(*batch())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        last_step_s = time.perf_counter() - last_start
        if max_seconds is not None:
            steps = min(steps, max(3, int(max_seconds / max(last_step_s, 1e-6))))
        timer = _Timer(device)
        timer.mark()
        for _ in range(steps):
            step(*batch())
            timer.mark()
        seconds = timer.step_seconds()
    mean = statistics.fmean(seconds)
    aggregate = members * batch_size / mean
    return {
        "model": model_name, "members": members, "batch_size": batch_size, "graphs": graphs,
        "graph_captured": step.graph is not None, "conv_impls": conv_impls, "precision": precision,
        "channels_last": channels_last,
        "warmup": warmup, "steps": steps, "step_time_ms_mean": 1e3 * mean,
        "step_time_ms_median": 1e3 * statistics.median(seconds), "step_time_ms_min": 1e3 * min(seconds),
        "images_per_s": aggregate, "images_per_s_per_member": batch_size / mean,
        "macs_per_image": macs, "achieved_tflops": 3 * 2 * macs * aggregate / 1e12,
        "peak_memory_bytes": peak_memory_bytes(device),
        "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_max_rss",
        "peak_reserved_bytes": int(torch.cuda.max_memory_reserved(device)) if device.type == "cuda" else None,
        "warnings": sorted({str(w.message) for w in caught}),
        "timer": "cuda_events" if device.type == "cuda" else "perf_counter",
        "build_seconds": build_seconds, "seconds": time.perf_counter() - started,
    }


# --- per-layer alternatives to the grouped convolutions ----------------------------------------------

def conv_layers(model_name: str) -> list[dict]:
    """The distinct convolutions of one (solo) model with their input sizes and how often each occurs."""
    from torch import nn

    import ranlib
    from ranlib.training.evaluation import build_model

    info = ranlib.model_info(model_name)
    model = build_model(model_name, {}, info.num_classes, 0).eval()
    counts: dict[tuple, int] = {}

    def hook(module, inputs):
        h, w = inputs[0].shape[-2:]
        key = (module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
               module.dilation, module.groups, h, w)
        counts[key] = counts.get(key, 0) + 1

    hooks = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, 3, info.input_size, info.input_size))
    for h in hooks:
        h.remove()
    return [{"in_channels": cin, "out_channels": cout, "kernel": list(k), "stride": list(s), "padding": list(p),
             "dilation": list(d), "groups": g, "input_hw": [h, w], "count": n}
            for (cin, cout, k, s, p, d, g, h, w), n in counts.items()]


def _layer_alternative(layer: dict) -> str | None:
    square = len(set(layer["stride"])) == 1 and len(set(layer["padding"])) == 1
    if layer["groups"] != 1 or layer["dilation"] != [1, 1] or not square:
        return None
    if layer["kernel"] == [1, 1] and layer["padding"] == [0, 0]:
        return "bmm"
    return "dense_block_diagonal"


def measure_layer_alternatives(model_name: str, *, members: int, batch_size: int, device: torch.device,
                               dtype: torch.dtype, channels_last: bool, repeats: int = LAYER_REPEATS,
                               deadline: float | None = None) -> dict:
    """For every distinct convolution of the K-member fused model, forward + backward (gradients of
    input and weight) of the grouped convolution against its alternative at the real shape
    (``bmm`` for 1x1, a dense convolution with a block-diagonal weight otherwise); which is faster.

    Layers are measured in order of their share of the model's multiply-adds; those left when
    ``deadline`` (a ``time.perf_counter()`` value) has passed are listed as not measured.
    """
    layers = conv_layers(model_name)
    for layer in layers:
        h, w = layer["input_hw"]
        s = layer["stride"][0]
        layer["macs"] = (layer["count"] * members * batch_size * layer["out_channels"] * layer["in_channels"]
                         // layer["groups"] * layer["kernel"][0] * layer["kernel"][1] * (h // s) * (w // s))
    layers.sort(key=lambda layer: -layer["macs"])
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    generator = torch.Generator(device=device).manual_seed(0)
    rows, not_measured = [], []
    for layer in layers:
        alternative = _layer_alternative(layer)
        if alternative is None or members == 1:
            continue
        if deadline is not None and time.perf_counter() > deadline:
            not_measured.append(layer)
            continue
        k, s, p = members, layer["stride"][0], layer["padding"][0]
        x = torch.randn(batch_size, k * layer["in_channels"], *layer["input_hw"], device=device, generator=generator)
        x = x.to(dtype).contiguous(memory_format=memory_format).requires_grad_()
        weight = torch.randn(k * layer["out_channels"], layer["in_channels"], *layer["kernel"], device=device,
                             generator=generator).to(dtype).contiguous(memory_format=memory_format).requires_grad_()
        implementations = {
            "grouped": lambda: F.conv2d(x, weight, None, s, p, groups=k),
            alternative: (lambda: grouped_1x1_as_bmm(x, weight, k, s)) if alternative == "bmm"
            else (lambda: grouped_as_dense(x, weight, k, s, p)),
        }
        out = implementations["grouped"]()
        grad = torch.ones_like(out)

        def train_pass(fn):
            return torch.autograd.grad(fn(), (x, weight), grad)

        times = {}
        for name, fn in implementations.items():
            for _ in range(2):  # cuDNN's autotuner and the allocator settle first
                train_pass(fn)
            times[name] = _elapsed_seconds(lambda: train_pass(fn), repeats, device)
        winner = min(times, key=times.get)
        rows.append({**{key: layer[key] for key in ("in_channels", "out_channels", "kernel", "stride", "padding",
                                                     "input_hw", "count", "macs")},
                     "fused_groups": k, "grouped_ms": 1e3 * times["grouped"], "alternative": alternative,
                     "alternative_ms": 1e3 * times[alternative], "winner": winner,
                     "alternative_speedup": times["grouped"] / times[alternative],
                     "step_saving_ms": layer["count"] * 1e3 * max(0.0, times["grouped"] - times[alternative])})
        del x, weight, out, grad
    return {"model": model_name, "members": members, "batch_size": batch_size, "dtype": str(dtype).removeprefix("torch."),
            "channels_last": channels_last, "repeats": repeats, "pass": "forward+backward (input and weight gradients)",
            "layers": rows, "not_measured": len(not_measured),
            "alternative_wins": sum(r["winner"] != "grouped" for r in rows),
            "step_saving_ms": sum(r["step_saving_ms"] for r in rows)}


# --- the plan, the budget, the record -------------------------------------------------------------

def fused_plan(models: list[str], batches: list[int], members: list[int], graphs: list[bool]) -> list[tuple]:
    """The measurements in order of importance: ``("fused", model, batch, K, graphs)``,
    ``("baseline", model, batch)``, ``("layers", model, batch, K)``.

    First the target's configuration (the first model at the first batch, K = 8 or the largest
    K, graphs on) with its solo runs (K = 1, graphs on and off) and the plain baseline; the same
    at the other batches; the per-layer alternatives there; then the other models' such
    configurations and baselines; then every other K; then the other per-layer measurements.
    """
    plan: list[tuple] = []

    def add(*item):
        if item not in plan:
            plan.append(item)

    key = FUSED_KEY_MEMBERS if FUSED_KEY_MEMBERS in members else max(members)
    solo = [1] if 1 in members else []

    def core(model, batch):
        add("fused", model, batch, key, graphs[0])
        for g in graphs:
            for k in solo:
                add("fused", model, batch, k, g)

    first = models[0]
    core(first, batches[0])
    add("baseline", first, batches[0])
    for batch in batches[1:]:
        core(first, batch)
    if key > 1:
        add("layers", first, batches[0], key)
    for g in graphs[1:]:
        add("fused", first, batches[0], key, g)
    for model in models[1:]:
        for batch in batches:
            core(model, batch)
    for model in models:
        for batch in batches:
            add("baseline", model, batch)
    if key > 1:
        for model in models:
            for batch in batches:
                add("layers", model, batch, key)
    for g in graphs:
        for model in models:
            for batch in batches:
                for k in members:
                    add("fused", model, batch, k, g)
    for model in models:
        for batch in batches:
            for k in members:
                if k > 1:
                    add("layers", model, batch, k)
    return plan


def plan_label(item: tuple) -> str:
    kind, model, batch = item[:3]
    if kind == "fused":
        return f"fused {model} b{batch} K={item[3]} graphs {'on' if item[4] else 'off'}"
    if kind == "layers":
        return f"layers {model} b{batch} K={item[3]}"
    return f"baseline {model} b{batch}"


def _predicted_seconds(item: tuple, done: list[dict], steps: int, max_seconds: float | None) -> float:
    """What fused ``item`` will likely cost, from the latest measured one of its model: building
    scaled by K, its step time by K x batch (an upper bound: fusion is meant to scale better),
    the warm-up and the timed steps (at most ``max_seconds``). 0 when nothing is known."""
    same = [d for d in done if d["model"] == item[1]]
    if item[0] != "fused" or not same:
        return 0.0
    last = same[-1]
    step_s = last["step_time_ms_mean"] / 1e3 * item[3] * item[2] / (last["members"] * last["batch_size"])
    timed = steps * step_s if max_seconds is None else min(steps * step_s, max(max_seconds, 3 * step_s))
    return last["build_seconds"] / last["members"] * item[3] + (last["warmup"] + 1) * step_s + timed


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _release_memory(device: torch.device) -> None:
    import gc
    gc.collect()
    if device.type == "cuda":
        try:
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
        except Exception:  # a broken context: the next configurations fail and say so
            pass


def process_age_seconds() -> float:
    """Seconds since this process started (Linux ``/proc``; 0 where unknown), so that a budget
    counts the interpreter's start and torch's import too."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def run_fused(args: argparse.Namespace, clock_start: float, save: Callable[[dict], None] | None = None) -> dict:
    """Every configuration of ``fused_plan`` the budget allows; the record written to disk.

    ``save`` is handed the record so far (``"complete": False``) after every configuration, so
    that a run stopped from outside leaves what it measured."""
    import ranlib
    from ranlib.training.runtime import Dist, resolve_precision, select_device

    for name in args.fused_models:
        try:
            if ranlib.model_info(name).input_size != 32:
                raise RanlibError(f"--fused measures the 32x32 CIFAR models; {name} is not one")
        except ranlib.UnknownModelError as exc:
            raise RanlibError(str(exc)) from None
    if args.steps < 1 or min(args.members) < 1 or min(args.fused_batches) < 1:
        raise RanlibError("need --steps >= 1, --members >= 1 and --fused-batches >= 1")
    device = select_device(args.device, Dist())
    precision = resolve_precision(args.precision, device)
    channels_last = True if args.channels_last is None else args.channels_last
    if device.type == "cuda":  # as ranlib.training.loop._configure_backends (TF32 flags left at torch's defaults, as
        torch.backends.cudnn.benchmark = True  # the plain baseline has them; the fused steps run in bf16)
    warmup = args.warmup if args.warmup is not None else 5
    graphs = {"both": [True, False], "on": [True], "off": [False]}[args.graphs]
    started = provenance.utc_now()
    name = provenance.device_name(device)
    budget = args.budget_seconds
    deadline = None if budget is None else clock_start + budget
    plan = fused_plan(list(args.fused_models), list(args.fused_batches), sorted(set(args.members)), graphs)
    record = {"benchmark": "fused", "device_name": name,
              "bf16_peak_tflops_datasheet": bf16_peak_tflops(name) if device.type == "cuda" else None,
              "models": list(args.fused_models), "batches": list(args.fused_batches), "members": sorted(set(args.members)),
              "graphs": graphs, "precision": precision, "channels_last": channels_last, "seed": args.seed,
              "budget_seconds": budget, "plan": [plan_label(item) for item in plan]}
    record["matmul_peak"] = matmul_peak(device, size=args.peak_size)
    early_provenance = provenance.collect(device, precision=precision, seed=args.seed, started_at=started)
    print(f"measuring on {name} ({len(plan)} configurations planned): bf16 matrix peak {record['matmul_peak']['tflops']:.1f} TFLOP/s "
          f"({record['matmul_peak']['size']}^3)", flush=True)
    fused, baselines, layers, failed, skipped = [], [], [], [], []
    for item in plan:
        label = plan_label(item)
        now = time.perf_counter()
        if deadline is not None and now >= deadline:
            skipped.append({"item": label, "reason": "budget spent"})
            continue
        predicted = _predicted_seconds(item, fused, args.steps, args.seconds_per_config)
        if deadline is not None and now + predicted > deadline:
            skipped.append({"item": label, "reason": f"would overrun the budget (predicted {predicted:.1f} s, "
                                                     f"{deadline - now:.1f} s left)"})
            continue
        if item[0] == "fused" and item[4] and device.type != "cuda":
            skipped.append({"item": label, "reason": "CUDA graphs need a CUDA device"})
            continue
        t0 = time.perf_counter()
        try:
            if item[0] == "fused":
                result = measure_fused(item[1], members=item[3], batch_size=item[2], graphs=item[4], device=device,
                                       precision=precision, channels_last=channels_last, steps=args.steps,
                                       warmup=warmup, seed=args.seed, max_seconds=args.seconds_per_config)
                fused.append(result)
                print(f"  {label}: {result['images_per_s']:.0f} images/s, {result['step_time_ms_mean']:.2f} ms/step, "
                      f"{result['achieved_tflops']:.1f} TFLOP/s" + ("" if result["graph_captured"] or not item[4]
                                                                   else " (capture failed: eager)"), flush=True)
            elif item[0] == "baseline":
                steps = min(args.steps, 20)
                result = measure(item[1], batch_size=item[2], device=device, precision="fp32", channels_last=False,
                                 compile_model=False, steps=steps, warmup=2, data="dataloader",
                                 num_images=args.num_images or item[2] * (steps + 3), seed=args.seed,
                                 workers=args.baseline_workers)
                result = {"model": item[1], "batch_size": item[2], **result,
                          "seconds": time.perf_counter() - t0}
                baselines.append(result)
                print(f"  {label}: {result['images_per_s']:.0f} images/s (eager fp32, DataLoader)", flush=True)
            else:
                result = measure_layer_alternatives(item[1], members=item[3], batch_size=item[2], device=device,
                                                    dtype=torch.bfloat16 if precision == "bf16" else torch.float32,
                                                    channels_last=channels_last, deadline=deadline)
                result["seconds"] = time.perf_counter() - t0
                layers.append(result)
                print(f"  {label}: the alternative wins {result['alternative_wins']} of {len(result['layers'])} "
                      f"shapes, saving ~{result['step_saving_ms']:.2f} ms/step", flush=True)
        except Exception as exc:  # out of memory, a failed capture, ...: recorded, and on to the next
            failed.append({"item": label, "error": _first_line(exc), "seconds": time.perf_counter() - t0})
            print(f"  {label}: failed ({failed[-1]['error']})", flush=True)
            del exc
        _release_memory(device)
        if save is not None:
            partial = {**record, "fused": fused, "baselines": baselines, "layers": layers, "failed": failed,
                       "skipped": skipped, "spent_seconds": time.perf_counter() - clock_start, "complete": False}
            fused_summary(partial)
            save({**partial, "provenance": early_provenance})
    record.update(fused=fused, baselines=baselines, layers=layers, failed=failed, skipped=skipped)
    record["spent_seconds"] = time.perf_counter() - clock_start
    record["complete"] = True
    fused_summary(record)
    record["provenance"] = provenance.collect(device, precision=precision, seed=args.seed, started_at=started)
    return record


def fused_summary(record: dict) -> None:
    """Add the ratios to every fused figure and judge the targets (in place).

    ``vs_separate``: the aggregate rate over K separate solo trainings one after the other (K x the
    K = 1 step time with the same graphs setting, so the solo rate); ``vs_best_solo``: over the
    best K = 1 rate of the model and batch (graphs on or off); ``vs_baseline``: over the plain
    eager-fp32 DataLoader baseline; ``peak_share``: achieved TFLOP/s over the measured bf16 matrix peak.
    """
    peak = record["matmul_peak"]["tflops"]
    datasheet = record.get("bf16_peak_tflops_datasheet")
    solo = {(f["model"], f["batch_size"], f["graphs"]): f["images_per_s"] for f in record["fused"] if f["members"] == 1}
    baseline = {(b["model"], b["batch_size"]): b["images_per_s"] for b in record["baselines"]}
    for f in record["fused"]:
        where = (f["model"], f["batch_size"])
        same = solo.get((*where, f["graphs"]))
        best = max((rate for (m, b, _), rate in solo.items() if (m, b) == where), default=None)
        f["vs_separate"] = f["images_per_s"] / same if same else None
        f["vs_best_solo"] = f["images_per_s"] / best if best else None
        f["vs_baseline"] = f["images_per_s"] / baseline[where] if where in baseline else None
        f["peak_share"] = f["achieved_tflops"] / peak
        f["mfu_datasheet"] = f["achieved_tflops"] / datasheet if datasheet else None

    def find(batch):
        return next((f for f in record["fused"] if (f["model"], f["batch_size"], f["members"], f["graphs"])
                     == ("cifar_attention92", batch, FUSED_KEY_MEMBERS, True)), None)

    quick = quick_batch_size()
    at64, at_quick = find(64), find(quick)
    subject = f"fused K={FUSED_KEY_MEMBERS} cifar_attention92, graphs"

    def target(name, figure, key, threshold):
        value = figure.get(key) if figure else None
        return {"target": name, "threshold": threshold, "measured": value,
                "met": None if value is None else value >= threshold}

    record["targets"] = [
        target(f"{subject}, batch 64: aggregate images/s >= {TARGET_FUSED_VS_BASELINE:g}x the plain baseline",
               at64, "vs_baseline", TARGET_FUSED_VS_BASELINE),
        target(f"{subject}, batch 64: aggregate images/s >= {TARGET_FUSED_VS_BEST_SOLO:g}x the best solo",
               at64, "vs_best_solo", TARGET_FUSED_VS_BEST_SOLO),
        target(f"{subject}, batch 64: >= {100 * TARGET_PEAK_SHARE[64]:g} % of the measured bf16 matrix peak",
               at64, "peak_share", TARGET_PEAK_SHARE[64]),
        target(f"{subject}, batch {quick}: >= {100 * TARGET_PEAK_SHARE['quick']:g} % of the measured bf16 matrix "
               "peak", at_quick, "peak_share", TARGET_PEAK_SHARE["quick"]),
    ]


def _ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def fused_report(record: dict) -> str:
    peak = record["matmul_peak"]
    lines = [f"ranlib bench --fused on {record['device_name']}: measured bf16 matrix peak {peak['tflops']:.1f} TFLOP/s"
             + (f" (datasheet {record['bf16_peak_tflops_datasheet']:g})" if record["bf16_peak_tflops_datasheet"] else ""),
             f"{'model':<18} {'batch':>5} {'K':>3} {'graphs':>6} {'img/s all':>10} {'img/s each':>10} {'step ms':>8} "
             f"{'TFLOP/s':>8} {'% peak':>7} {'x separate':>10} {'x best solo':>11} {'x baseline':>10}"]
    for f in record["fused"]:
        graphs = ("on" if f["graph_captured"] else "FAIL") if f["graphs"] else "off"
        lines.append(f"{f['model']:<18} {f['batch_size']:>5} {f['members']:>3} {graphs:>6} {f['images_per_s']:>10.1f} "
                     f"{f['images_per_s_per_member']:>10.1f} {f['step_time_ms_mean']:>8.2f} {f['achieved_tflops']:>8.2f} "
                     f"{100 * f['peak_share']:>6.1f}% {_ratio(f['vs_separate']):>10} {_ratio(f['vs_best_solo']):>11} "
                     f"{_ratio(f['vs_baseline']):>10}")
    for b in record["baselines"]:
        lines.append(f"baseline (eager fp32, DataLoader) {b['model']} batch {b['batch_size']}: "
                     f"{b['images_per_s']:.1f} images/s, {b['step_time_ms_mean']:.2f} ms/step")
    for layer in record["layers"]:
        lines.append(f"per-layer alternatives, {layer['model']} batch {layer['batch_size']} K={layer['members']}: "
                     f"the alternative wins {layer['alternative_wins']} of {len(layer['layers'])} shapes "
                     f"(~{layer['step_saving_ms']:.2f} ms/step saved if used)"
                     + (f", {layer['not_measured']} not measured (budget)" if layer["not_measured"] else ""))
        for row in layer["layers"][:8]:
            lines.append(f"  {row['kernel'][0]}x{row['kernel'][1]} s{row['stride'][0]} {row['in_channels']}->"
                         f"{row['out_channels']} at {row['input_hw'][0]}x{row['input_hw'][1]} (x{row['count']}): "
                         f"grouped {row['grouped_ms']:.3f} ms, {row['alternative']} {row['alternative_ms']:.3f} ms "
                         f"-> {row['winner']}")
    for f in record["failed"]:
        lines.append(f"failed: {f['item']}: {f['error']}")
    if record["skipped"]:
        reasons = sorted({s["reason"].split(" (")[0] for s in record["skipped"]})
        lines.append(f"skipped {len(record['skipped'])} of {len(record['plan'])} ({'; '.join(reasons)}): "
                     + ", ".join(s["item"] for s in record["skipped"][:6])
                     + (", ..." if len(record["skipped"]) > 6 else ""))
    for t in record["targets"]:
        if t["met"] is None:
            lines.append(f"target not measured: {t['target']}")
        else:
            shown = f"{100 * t['measured']:.1f} %" if "peak" in t["target"] else f"{t['measured']:.2f}x"
            lines.append(f"target {'MET' if t['met'] else 'NOT met'}: {t['target']}: {shown}")
    lines.append(f"spent {record['spent_seconds']:.1f} s" + (f" of a {record['budget_seconds']:g} s budget"
                                                             if record["budget_seconds"] is not None else ""))
    return "\n".join(lines)


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
    Case("cifar_attention92", 256),  # the `quick` profile's batch (ranlib.training.recipes.PROFILES)
    Case("cifar_resnet164", 64),
    Case("attention56", 64),
    Case("attention56", 64, grad_checkpointing=True),
    Case("attention92", 64),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ranlib.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="default cifar_attention92 (cifar_attention56 for the CPU's figures)")
    p.add_argument("--batch-size", type=int, help="default 64 (the CPU's figures: the candidates of the CPU profiles)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="auto: bf16 autocast on CUDA and on a CPU with native bf16, else fp32")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="default: on")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (warm-up includes compiling)")
    p.add_argument("--compile-mode", choices=COMPILE_MODES,
                   help="torch.compile mode (implies --compile), e.g. reduce-overhead: CUDA graphs, less Python per step")
    p.add_argument("--steps", type=int, help="timed steps (default 50; the CPU's figures: 5)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 10; with --fused 5, and at least "
                   "the CUDA graph's warm-up and capture; the CPU's figures: 2)")
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
    cpu = p.add_argument_group("the CPU's figures (--device cpu alone) and the bf16 check (--precision-check)")
    cpu.add_argument("--precision-check", action="store_true",
                     help="train fp32 seeds 0 and 1 and bf16 seed 0 alike on the CPU and compare their loss curves")
    cpu.add_argument("--dataset", help="the real loop's data set (e.g. cifar10-jpeg); without it the CPU's figures "
                     "leave the loop out")
    cpu.add_argument("--data-root")
    cpu.add_argument("--iterations", type=int, help="training iterations of each run (default 40; --precision-check 200)")
    cpu.add_argument("--max-test-samples", type=int, default=1000, help="test images of each run's evaluation")
    fused = p.add_argument_group("horizontal fusion (--fused)")
    fused.add_argument("--fused", action="store_true",
                       help="measure K fused members (ranlib.models.fused, ranlib.training.step.TrainStep) against solo "
                            f"runs and the plain baseline; writes {FUSED_FILE} (ignores --model/--batch-size)")
    fused.add_argument("--fused-models", nargs="+", default=list(FUSED_MODELS), metavar="MODEL")
    fused.add_argument("--members", nargs="+", type=int, default=list(FUSED_MEMBERS), metavar="K")
    fused.add_argument("--fused-batches", nargs="+", type=int, metavar="B",
                       help="batch sizes per member (default: 64 and the quick profile's)")
    fused.add_argument("--graphs", choices=("both", "on", "off"), default="both",
                       help="the step as one CUDA graph, eager, or both (graph configurations need CUDA)")
    fused.add_argument("--budget-seconds", type=float, metavar="S",
                       help="start no measurement after S seconds from launch (nor one predicted to overrun); "
                            "what is left is recorded as skipped")
    fused.add_argument("--seconds-per-config", type=float, default=1.5, metavar="S",
                       help="time at most --steps steps, fewer if they would take longer than S (at least 3)")
    fused.add_argument("--peak-size", type=int, metavar="N",
                       help=f"matrix-peak measurement size (default {PEAK_MATMUL_SIZE} on CUDA, "
                            f"{PEAK_MATMUL_SIZE_CPU} on CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the figures with provenance to this file")
    p.add_argument("--out", type=Path, help="write each configuration's figures to a file named after it in this folder")
    p.add_argument("--overwrite", action="store_true", help="replace existing figure files")
    return p


def bench_one(case: Case, args: argparse.Namespace, *, baseline: bool) -> dict:
    """Measure one configuration with the settings in ``args``; the record written to disk.

    With ``--profile`` the record has a ``"profile"`` entry, which ``main`` writes to its own file.
    """
    import ranlib
    from ranlib.training.runtime import Dist, resolve_precision, select_device
    from ranlib.training.recipes import PROFILES, RECIPES

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
    channels_last = True if args.channels_last is None else args.channels_last
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


def main(argv: list[str] | None = None, started: float | None = None) -> int:
    """``started``: the ``time.perf_counter()`` from which ``--budget-seconds`` counts (default: now;
    ``python -m ranlib.bench`` passes its process's start)."""
    clock_start = time.perf_counter() if started is None else started
    args = build_parser().parse_args(argv)
    if args.fused:
        args.steps = 50 if args.steps is None else args.steps
        return main_fused(args, clock_start)
    if args.precision_check or _cpu_figures_asked(args):
        return main_cpu(args)
    args.model, args.batch_size = args.model or "cifar_attention92", args.batch_size or 64
    args.steps = 50 if args.steps is None else args.steps
    if args.warmup is None:
        args.warmup = 10
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
            _write(args.out / benchmark_file_name(record) if args.out else args.json, record, args.overwrite)
            if profiled is not None:
                print(profile_report(profiled), flush=True)
                # "benchmark" as in the figures files, so that results loaders skip it
                context = {k: record[k] for k in ("benchmark", "model", "input_size", "batch_size", "device_name")}
                _write(args.profile / (benchmark_file_name(record)[:-len(".json")] + "-profile.json"),
                       {**context, "setup": setup_text(record["ranlib"]), **profiled}, args.overwrite)
    except RanlibError as exc:
        print_error(exc)
        return 1
    return 0


def _cpu_figures_asked(args: argparse.Namespace) -> bool:
    """``--device cpu`` without a precision, memory format or another benchmark: the CPU's figures."""
    single = (args.precision != "auto" or args.channels_last is not None or args.suite or args.processes
              or args.profile or args.baseline or args.compile or args.compile_mode or args.grad_checkpointing
              or args.image_size or args.num_images)
    return args.device == "cpu" and not single


def main_cpu(args: argparse.Namespace) -> int:
    """The CPU's figures or, with ``--precision-check``, the bf16-vs-fp32 training check (:mod:`ranlib.bench.cpu`)."""
    from . import cpu as cpu_bench

    try:
        if (args.dataset is None) != (args.data_root is None):
            raise RanlibError("--dataset and --data-root go together: give both (e.g. --dataset cifar10-jpeg "
                              "--data-root ../shared/data/cifar10-jpeg) or neither")
        if args.precision_check and args.dataset is None:
            raise RanlibError("--precision-check trains on real data: add --dataset and --data-root")
        model = args.model or "cifar_attention56"
        if args.precision_check:
            batch = args.batch_size or 64
            name = cpu_bench.file_name({"benchmark": "precision_check", "model": model, "batch_size": batch})
        else:
            name = cpu_bench.file_name({"benchmark": "cpu", "model": model})
        path = args.out / name if args.out else args.json
        if path is not None and path.exists() and not args.overwrite:  # before minutes of measuring
            raise ResultsExistError(f"{path} already exists; pass --overwrite to replace it or choose another path")
        if args.precision_check:
            record = cpu_bench.precision_check(model, dataset=args.dataset, data_root=args.data_root, batch_size=batch,
                                               iterations=args.iterations or 200,
                                               max_test_samples=args.max_test_samples)
            print(cpu_bench.precision_report(record), flush=True)
        else:
            record = cpu_bench.cpu_figures(model, batch_size=args.batch_size, steps=args.steps or 5,
                                           warmup=2 if args.warmup is None else args.warmup, peak_size=args.peak_size,
                                           dataset=args.dataset, data_root=args.data_root,
                                           iterations=args.iterations or 40, max_test_samples=args.max_test_samples,
                                           seed=args.seed)
            print(cpu_bench.cpu_report(record), flush=True)
        _write(path, record, overwrite=True)
    except RanlibError as exc:
        print_error(exc)
        return 1
    return 0


def _write_atomic(path: Path, record: dict) -> None:
    with atomic_write(path, "w") as f:
        f.write(json.dumps(record, indent=1) + "\n")


def main_fused(args: argparse.Namespace, clock_start: float) -> int:
    if args.fused_batches is None:
        args.fused_batches = [64, quick_batch_size()]
    path = args.out / FUSED_FILE if args.out else args.json
    try:
        if args.suite:
            raise RanlibError("--fused and --suite are separate benchmarks; pass one")
        if path is not None and path.exists() and not args.overwrite:  # before the measuring
            raise ResultsExistError(f"{path} already exists; pass --overwrite to replace it or choose another path")
        record = run_fused(args, clock_start, save=None if path is None else lambda r: _write_atomic(path, r))
        print(fused_report(record), flush=True)
        if path is not None:
            _write_atomic(path, record)
    except RanlibError as exc:
        print_error(exc)
        return 1
    return 0
