"""One training step of a group of K >= 1 fused members, eager or replayed as one CUDA graph.

A step takes the fused batch ``x`` ``(B, K * 3, H, W)`` and labels ``y`` ``(B, K)`` (member
``k``'s own labels in column ``k``), and does forward, backward and the optimizer update. The loss
is the sum over members of each member's mean cross-entropy, so every member's gradient is its
solo run's. Per-member sums of the loss, the correct predictions and the images seen accumulate
on the device in ``(K, 3)`` windows (no host synchronisation per step).

On CUDA the whole step (forward, backward, optimizer, with the learning rate read from a device
tensor that the scheduler's value is copied into before each replay) is captured once as a CUDA
graph after a few eager steps, as in PyTorch's "whole-network capture" recipe
(``torch.cuda.graphs``), and replayed afterwards: a CIFAR network at batch 64 is a long chain of
small kernels whose launch latency, not arithmetic, sets the step time. Capture costs a second,
where ``torch.compile`` costs minutes. If capture fails, the step warns once and stays eager.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from .runtime import bn_modules

# Eager steps before capture: cuDNN's autotuner, the optimizer's momentum buffers and autograd's
# lazily built state are settled first (PyTorch's recipe warms up on a side stream).
GRAPH_WARMUP_STEPS = 3


def member_losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample, per-member cross-entropy ``(B, K)`` of fused logits ``(B, K, O)`` and labels ``(B, K)``."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 autocast logits: in fp32
    return F.cross_entropy(logits.transpose(1, 2), y, reduction="none")


class TrainStep:
    """``step(x, y)``: one optimizer step of the group; updates ``windows`` (each ``(K, 3)``).

    ``model`` is what the forward pass calls (the fused model, maybe compiled or wrapped in DDP);
    ``raw_model`` the unwrapped one, whose BatchNorm running statistics ``accum_steps > 1``
    averages over micro-batches (each micro-batch normalises with its own statistics, as one
    process of a multi-GPU run would). ``cuda_graphs`` needs a CUDA device, one process, no
    micro-batches and no ``torch.compile``, and an optimizer whose update accepts a tensor
    learning rate (``torch.optim.SGD(..., fused=True)``).
    """

    def __init__(self, model: nn.Module, raw_model: nn.Module, optimizer: torch.optim.Optimizer, *,
                 windows: list[torch.Tensor], precision: str, accum_steps: int = 1, ddp: bool = False,
                 cuda_graphs: bool = False):
        self.model, self.raw_model, self.optimizer = model, raw_model, optimizer
        self.windows, self.precision, self.accum_steps, self.ddp = windows, precision, accum_steps, ddp
        self.cuda_graphs = cuda_graphs
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager_steps = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.graph is not None:
            self.static_x.copy_(x)
            self.static_y.copy_(y)
            self.lr.fill_(self.optimizer.param_groups[0]["lr"])
            self.graph.replay()
        elif self.cuda_graphs and self.eager_steps >= GRAPH_WARMUP_STEPS:
            self._capture(x, y)
        elif self.cuda_graphs:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._eager(x, y)
            torch.cuda.current_stream().wait_stream(side)
            self.eager_steps += 1
        else:
            self._eager(x, y)

    def _autocast(self, device_type: str):
        if self.precision != "bf16":
            return contextlib.nullcontext()
        # A graph replays the casts it captured: autocast's weight-cast cache must be off.
        return torch.autocast(device_type, dtype=torch.bfloat16, cache_enabled=not self.cuda_graphs)

    def _eager(self, x: torch.Tensor, y: torch.Tensor) -> None:
        micro = len(y) // self.accum_steps
        bn_start = _running_stats(self.raw_model, clone=True) if self.accum_steps > 1 else None
        bn_sums = None
        for j, (xm, ym) in enumerate(zip(x.split(micro), y.split(micro))):
            if bn_start is not None and j > 0:  # every micro-batch starts from the same running stats
                bn_sums = _add(bn_sums, _running_stats(self.raw_model))
                _load_running_stats(self.raw_model, bn_start)
            last = j == self.accum_steps - 1
            sync = self.model.no_sync() if self.ddp and not last else contextlib.nullcontext()
            with sync:
                with self._autocast(xm.device.type):
                    logits = self.model(xm)
                losses = member_losses(logits, ym)
                (losses.mean(0).sum() / self.accum_steps).backward()
            with torch.no_grad():
                seen = torch.full_like(losses[0], len(ym), dtype=torch.float64)
                sums = torch.stack([losses.detach().double().sum(0), logits.argmax(2).eq(ym).sum(0).double(),
                                    seen], dim=1)
                for window in self.windows:
                    window += sums
        if bn_start is not None:
            sums = _add(bn_sums, _running_stats(self.raw_model))
            _load_running_stats(self.raw_model, [(m / self.accum_steps, v / self.accum_steps) for m, v in sums])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        group = self.optimizer.param_groups[0]
        self.static_x, self.static_y = x.clone(), y.clone()
        self.lr = torch.tensor(float(group["lr"]), device=x.device)
        graph = torch.cuda.CUDAGraph()
        lr_value = group["lr"]
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr  # captured by reference; the scheduler's float goes back below
        try:
            torch.cuda.synchronize()
            with torch.cuda.graph(graph):
                self._eager(self.static_x, self.static_y)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            warnings.warn(f"ranlib: CUDA graph capture failed ({first}); training goes on eagerly", stacklevel=2)
            self.cuda_graphs = False
            self.optimizer.zero_grad(set_to_none=True)
            self._eager(x, y)
            return
        finally:
            for g in self.optimizer.param_groups:
                g["lr"] = lr_value
        self.graph = graph
        graph.replay()  # capture records the step without running it


def _running_stats(model: nn.Module, clone: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    stats = [(m.running_mean, m.running_var) for m in bn_modules(model)]
    return [(mean.clone(), var.clone()) for mean, var in stats] if clone else stats


def _add(acc, state):
    if acc is None:
        return [(m.clone(), v.clone()) for m, v in state]
    return [(am + m, av + v) for (am, av), (m, v) in zip(acc, state)]


def _load_running_stats(model: nn.Module, state) -> None:
    for module, (mean, var) in zip(bn_modules(model), state):
        module.running_mean.copy_(mean)
        module.running_var.copy_(var)
