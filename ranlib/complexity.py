"""Parameters and multiply-adds (the paper's "FLOPs"), counted by torch.utils.flop_counter."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def complexity(model: nn.Module, input_size: int | tuple[int, int], *, in_chans: int = 3) -> dict[str, int]:
    """``{"params", "macs"}`` for one image of ``input_size``.

    Parameters count every learnable tensor (conv, FC with bias, BN scale and shift), as the
    deploy-file counts do. Multiply-adds are half of FlopCounterMode's FLOPs, which covers the
    convolutions and the classifier (pooling, interpolation and element-wise work are not
    counted, as in the paper's figures).
    """
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    params = sum(p.numel() for p in model.parameters())
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, in_chans, height, width, device=device))
    finally:
        model.train(was_training)
    return {"params": params, "macs": counter.get_total_flops() // 2}
