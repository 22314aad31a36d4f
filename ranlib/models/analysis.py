"""Looking inside a trained model: each stage's response (Figure 4) and the soft masks.

Forward hooks are attached only for the duration of one call and removed afterwards, so the
normal forward pass carries no analysis cost.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .attention import AttentionFusion


@contextmanager
def _hooks(modules: list[tuple[str, nn.Module]], record) -> Iterator[None]:
    handles = [module.register_forward_hook(record(name)) for name, module in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def stage_responses(model: nn.Module, x: torch.Tensor) -> list[float]:
    """Mean absolute value of each stage's output on ``x`` (eval mode), not normalised.

    Figure 4 plots these divided by the first stage's value.
    """
    stages = [(str(i), module) for i, module in enumerate(model.stage_modules())]
    sums: dict[str, float] = {}

    def record(name):
        def hook(_module, _inputs, output):
            sums[name] = output.float().abs().mean().item()
        return hook

    with _eval_mode(model), _hooks(stages, record):
        model(x)
    return [sums[name] for name, _ in stages]


def capture_masks(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The soft mask M of every attention module on ``x`` (eval mode), keyed by module name.

    Each mask has the trunk's shape (N, C, H, W); for pictures, average over channels.
    """
    fusions = [(name, module) for name, module in model.named_modules() if isinstance(module, AttentionFusion)]
    masks: dict[str, torch.Tensor] = {}

    def record(name):
        def hook(_module, inputs, _output):
            masks[name.removesuffix(".fusion")] = inputs[1].detach().float().cpu()
        return hook

    with _eval_mode(model), _hooks(fusions, record):
        model(x)
    return masks
