"""Where a training runs: the torchrun process group, the device, precision and seeds.

Multi-GPU runs launch with ``torchrun``; every helper here is a no-op in a single process, so the
training loop reads the same either way.
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from .errors import ConfigError
from .options import DEVICE, Option

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


def device_kind(request: str) -> str:
    """The type ("cpu", "cuda") of the device ``request`` names, without claiming it."""
    if request == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(request).type


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 autocast on CUDA, plain fp32 on CPU."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


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


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated GPU memory, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB
