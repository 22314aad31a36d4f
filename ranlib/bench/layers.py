"""Per-layer alternatives to the grouped convolutions of a fused model, part of ``python -m
ranlib.bench --fused`` (:mod:`ranlib.bench.fused`): every distinct convolution of the K-member fused
model (:func:`conv_layers`) at its real shape, forward and backward, grouped vs a 1x1 as one
``bmm`` over the members or a 3x3 as one dense convolution with a block-diagonal weight
(:func:`measure_layer_alternatives`); which is faster, recorded, not switched on.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F

from ranlib.models.fused import grouped_1x1_as_bmm, grouped_as_dense

from .step import Timer

LAYER_REPEATS = 10  # timed forward+backward passes per convolution and implementation


def _elapsed_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` over ``repeats`` calls (CUDA events on GPU, perf_counter on CPU)."""
    timer = Timer(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timer.mark()
    for _ in range(repeats):
        fn()
    timer.mark()
    return timer.step_seconds()[0] / repeats


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
