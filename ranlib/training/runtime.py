"""Where a training runs: the torchrun process group, the device, precision and seeds.

Multi-GPU runs launch with ``torchrun``; every helper here is a no-op in a single process, so the
training loop reads the same either way.
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from ranlib.errors import ConfigError
from ranlib.options import DEVICE, Option


@dataclass
class Dist:
    """This process's place in a torchrun job (world_size 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_request: str) -> Dist:
    """Join the torchrun process group if WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_request != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, local)


def select_device(request: str, d: Dist) -> torch.device:
    """The device ``request`` names (auto, cpu, cuda or cuda:N; anything else is a ConfigError line)."""
    Option(str, **DEVICE).check(request, "device")
    if request == "auto":
        return torch.device(f"cuda:{d.local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(request)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {request!r} asked for but CUDA is not available; use --device cpu")
        if d.enabled:
            device = torch.device(f"cuda:{d.local_rank}")
    return device


def device_type(request: str) -> str:
    """``"cuda"`` or ``"cpu"``: the kind of device a request (``auto``, ``cpu``, ``cuda``, ``cuda:1``)
    trains on, known before any process group is joined (:func:`select_device` checks the rest)."""
    if request == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return torch.device(request).type
    except RuntimeError:
        raise ConfigError(f"unknown device {request!r}; use auto, cpu, cuda or cuda:N") from None


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively: AVX-512 BF16 or AMX-BF16 on x86, the BF16 or SVE-BF16
    extension on Arm, as ``torch.cpu.get_capabilities()`` reports them (cpuinfo), with oneDNN there
    to use them. Without them bf16 is emulated and slower than fp32."""
    caps = torch.cpu.get_capabilities()
    native = any(caps.get(flag, False) for flag in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"))
    return native and torch.backends.mkldnn.is_available()


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """'auto' -> bf16 autocast on CUDA and on a CPU with native bf16 (:func:`native_bf16`), else fp32;
    'fp32' and 'bf16' as given."""
    if precision == "auto":
        kind = torch.device(device).type
        return "bf16" if kind == "cuda" or (kind == "cpu" and native_bf16()) else "fp32"
    return precision


@contextlib.contextmanager
def algorithms(deterministic: bool):
    """torch's deterministic algorithms on or off inside (warnings, not errors, for ops without one),
    the previous setting restored on exit. Fresh memory is not filled with NaN meanwhile: that is a
    debugging aid of ``torch.use_deterministic_algorithms`` (``torch.utils.deterministic.
    fill_uninitialized_memory``) which changes no result of a correct kernel and costs a CPU
    training step about 10 % (PyTorch's profiler, a CPU step of Attention-56)."""
    import torch.utils.deterministic as det

    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              det.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    det.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        det.fill_uninitialized_memory = before[2]


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def all_reduce(tensor: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        import torch.distributed as dist
        dist.all_reduce(tensor)
    return tensor


def bn_modules(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def average_bn_running_stats(model: nn.Module, d: Dist) -> None:
    """Per-process BN: make the running statistics the mean over processes (identical everywhere)."""
    if not d.enabled:
        return
    stats = [t for m in bn_modules(model) for t in (m.running_mean, m.running_var)]
    if not stats:
        return
    flat = torch.cat([t.reshape(-1).float() for t in stats])
    all_reduce(flat, d).div_(d.world_size)
    offset = 0
    for t in stats:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cuda_time_s(work, *, warmup: int = 2, repeats: int = 5) -> float:
    """Seconds one call of ``work()`` takes on the current CUDA stream (CUDA events, median of ``repeats``)."""
    for _ in range(warmup):
        work()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        work()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


PEAK_MATMUL_SIZE = 8192  # the matrix-peak measurement: (n x n) @ (n x n), on CUDA
PEAK_MATMUL_SIZE_CPU = 1024  # large enough for a CPU's peak (907 GFLOP/s bf16 measured on the project's 2 cores)
PEAK_MATMUL_REPEATS = 20


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.bfloat16, size: int | None = None,
                repeats: int = PEAK_MATMUL_REPEATS) -> dict:
    """The device's matrix throughput in ``dtype``, measured: ``repeats`` products of two ``size`` x
    ``size`` matrices after three untimed ones (CUDA events on GPU, ``perf_counter`` on CPU);
    TFLOP/s = 2 size^3 / seconds per product. On a CPU also ``cpu_tflops``, per second of the
    process's CPU time (all its threads): what the cores did while they ran this, on a shared machine."""
    size = size or (PEAK_MATMUL_SIZE if device.type == "cuda" else PEAK_MATMUL_SIZE_CPU)
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, generator=generator).to(dtype)
    b = torch.randn(size, size, device=device, generator=generator).to(dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)

    def products():
        for _ in range(repeats):
            torch.matmul(a, b, out=out)

    for _ in range(3):
        torch.matmul(a, b, out=out)
    cpu_tflops = None
    if device.type == "cuda":
        seconds = cuda_time_s(products, warmup=0, repeats=1) / repeats
    else:
        start, cpu = time.perf_counter(), time.process_time()
        products()
        seconds = (time.perf_counter() - start) / repeats
        cpu_tflops = 2 * size**3 * repeats / (time.process_time() - cpu) / 1e12
    return {"dtype": str(dtype).removeprefix("torch.").replace("bfloat16", "bf16").replace("float32", "fp32"),
            "size": size, "repeats": repeats, "ms_per_matmul": 1e3 * seconds, "tflops": 2 * size**3 / seconds / 1e12,
            "cpu_tflops": cpu_tflops, "timer": "cuda_events" if device.type == "cuda" else "perf_counter"}


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated GPU memory, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB
