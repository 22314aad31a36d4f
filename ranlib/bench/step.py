"""The training-step benchmark (``python -m ranlib.bench --model cifar_attention92 --batch-size 64 ...``):
:func:`measure` times ranlib's training step (the data path, forward, loss, backward, Nesterov SGD
update) and returns images/s, step time (CUDA events on GPU, ``perf_counter`` on CPU: :class:`Timer`),
peak memory and model FLOP utilisation. ``--baseline`` measures, in the same process, the plain way
most PyTorch ports train the same model: eager fp32, NCHW, a torchvision-transforms DataLoader over
PIL images (RandomCrop(32, padding=4), flip, ToTensor, Normalize), and prints ranlib's speed-up over it.

Data: for 32x32 models ranlib's path is ``ranlib.data.batches.GpuBatches`` (uint8 set on the device,
augmentation there) over synthetic images; for 224 models both paths feed device-resident
synthetic batches (data loading excluded, said so in the output), so the comparison isolates
precision, memory format and compilation.

Model FLOP utilisation = 3 x 2 x multiply-adds per image x images/s / the GPU's dense bf16 peak
(:func:`bf16_peak_tflops`, from the vendors' datasheets): a training step costs about three forward
passes (forward, and backward for activations and weights); multiply-adds are counted by
``ranlib.complexity`` (convolutions and classifier).

``--compile`` / ``--compile-mode MODE`` wrap the model in ``torch.compile`` (warm-up steps include
compiling); ``reduce-overhead`` replays the step's kernels as CUDA graphs, for a step whose
time goes into launching many small kernels (a 32x32 network at batch 64 may be one: ``--profile``
tells). ``ranlib train --compile --compile-mode ...`` trains the same way.

``--grad-checkpointing`` recomputes the attention mask branches in backward
(``ResidualNet.set_grad_checkpointing``, as ``ranlib train --grad-checkpointing``): less activation
memory for about one more mask forward per step; the file name gets ``-gc``.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ranlib.errors import RanlibError
from ranlib.training import provenance

from .profile import profile_training

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


class Timer:
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
    import ranlib
    from ranlib.data.batches import GpuBatches
    from ranlib.training.evaluation import build_model
    from ranlib.training.loop import enable_grad_checkpointing
    from ranlib.training.runtime import autocast, peak_memory_bytes

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
        batches = GpuBatches(images, labels, batch_size=batch_size, train=True, device=device,
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
    timer = Timer(device)
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
