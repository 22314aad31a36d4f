"""Horizontal fusion: K models of one architecture trained as one wide model.

Following HFTA (Wang et al., "Horizontally Fused Training Array", MLSys 2021), a population of
K members of the same architecture is computed by one network whose every layer is K times
wider: member ``k`` owns channels ``[k * C, (k + 1) * C)`` of every feature map, so that

* a convolution becomes one grouped convolution (``groups * K``) whose weight is the members'
  weights concatenated along the output channels;
* a BatchNorm becomes one BatchNorm over ``K * C`` channels (statistics are per channel, so
  each member's are its own);
* the classifier becomes a batched matrix product (:class:`BatchedLinear`), output ``(B, K, O)``;
* the channel attention f2, which normalises over the channels at a position, normalises within
  each member's own channels (:class:`FusedMaskActivation`);
* members may differ in ARL vs NAL: ``H = (r_k + M) * T`` with ``r_k`` in {0, 1}
  (:class:`FusedAttentionFusion`); a group where all agree keeps the solo fusion op.

The input is ``(B, K * 3, H, W)``: member ``k``'s own images in channels ``3k .. 3k + 2``
(:func:`fuse_inputs`). Every other layer (ReLU, pooling, interpolation, residual additions) is
per channel already. A fused model's ``state_dict`` has the solo model's keys, each tensor the
members' tensors concatenated along dim 0, so :func:`member_state_dict` splits it back into
state dicts that load into ``ranlib.create_model(...)`` with ``strict=True``.

BatchNorm's ``num_batches_tracked`` is only read when ``momentum`` is None; the fused model
drops the counter (one kernel per BatchNorm per step, about 12 % of Attention-92's eager ops)
and :func:`member_state_dict` writes the number of training steps in its place.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .attention import AttentionFusion, AttentionModule, MaskActivation
from .units import PreActInceptionUnit


class FusionError(ValueError):
    """Members that cannot share one fused model (different architectures or switches)."""


class BatchedLinear(nn.Module):
    """K independent linear layers ``F -> O`` applied to the K members' features at once.

    ``weight`` is ``(K * O, F)`` and ``bias`` ``(K * O,)``: the members' ``nn.Linear`` tensors
    concatenated, so the state dict splits like every other fused tensor. Input ``(B, K * F)``,
    output ``(B, K, O)``.
    """

    def __init__(self, members: int, in_features: int, out_features: int, bias: bool = True, *, device=None,
                 dtype=None):
        super().__init__()
        self.members, self.in_features, self.out_features = members, in_features, out_features
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(members * out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(members * out_features, **factory)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, o, f = self.members, self.out_features, self.in_features
        x = x.reshape(-1, k, f).transpose(0, 1)  # (K, B, F)
        weight = self.weight.view(k, o, f).transpose(1, 2)  # (K, F, O)
        if self.bias is None:
            out = torch.bmm(x, weight)
        else:
            out = torch.baddbmm(self.bias.view(k, 1, o), x, weight)
        return out.transpose(0, 1)  # (B, K, O)

    def extra_repr(self) -> str:
        return f"members={self.members}, in_features={self.in_features}, out_features={self.out_features}"


class FusedMaskActivation(MaskActivation):
    """Table 1's mask activations over K members' channels; only f2 (channel) needs the split,
    since it normalises over the channels at each position."""

    def __init__(self, attention: str, members: int):
        super().__init__(attention)
        self.members = members

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attention != "channel":
            return super().forward(x)
        b, c, h, w = x.shape
        return super().forward(x.reshape(b * self.members, c // self.members, h, w)).reshape(b, c, h, w)


class FusedAttentionFusion(nn.Module):
    """``H = (r + M) * T`` with ``r`` = 1 on ARL members' channels and 0 on NAL members' (Eq. 3)."""

    def __init__(self, residual: torch.Tensor):
        super().__init__()
        self.register_buffer("residual", residual.view(1, -1, 1, 1), persistent=False)

    def forward(self, trunk: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (mask + self.residual.to(mask.dtype)) * trunk


# --- grouped convolutions and their alternatives -----------------------------------------------

def grouped_1x1_as_bmm(x: torch.Tensor, weight: torch.Tensor, groups: int, stride: int = 1) -> torch.Tensor:
    """``F.conv2d(x, weight, stride=stride, groups=groups)`` for a 1x1 kernel without padding, as
    one batched matrix product over the groups: ``(K, B*H*W, Cin) @ (K, Cin, Cout)``. Returns a
    channels_last tensor."""
    if stride != 1:
        x = x[:, :, ::stride, ::stride]
    b, c, h, w = x.shape
    cout = weight.shape[0] // groups
    rows = x.permute(0, 2, 3, 1).reshape(b * h * w, groups, c // groups).transpose(0, 1)  # (K, N, Cin)
    out = torch.bmm(rows, weight.reshape(groups, cout, c // groups).transpose(1, 2))  # (K, N, Cout)
    return out.transpose(0, 1).reshape(b, h, w, groups * cout).permute(0, 3, 1, 2)


def block_diagonal_weight(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A grouped convolution's weight ``(K * Cout, Cin, kh, kw)`` as the dense one ``(K * Cout,
    K * Cin, kh, kw)`` with the groups' blocks on the diagonal and zeros elsewhere (differentiable)."""
    total, cin, kh, kw = weight.shape
    eye = torch.eye(groups, dtype=weight.dtype, device=weight.device)
    blocks = weight.reshape(groups, total // groups, cin, kh, kw)
    return torch.einsum("kocij,kl->kolcij", blocks, eye).reshape(total, groups * cin, kh, kw)


def grouped_as_dense(x: torch.Tensor, weight: torch.Tensor, groups: int, stride: int = 1,
                     padding: int = 0) -> torch.Tensor:
    """A grouped convolution as one dense convolution with :func:`block_diagonal_weight`."""
    return F.conv2d(x, block_diagonal_weight(weight, groups), None, stride, padding)


CONV_IMPLS = ("grouped", "bmm", "dense")


class FusedConv2d(nn.Conv2d):
    """K members' convolutions as one grouped convolution (``groups = K * g``), or, where the members'
    own convolutions are not grouped, the same computation by another kernel: ``bmm`` (a 1x1 kernel
    as one batched matrix product over the members) or ``dense`` (one dense convolution with a
    block-diagonal weight: K times the multiply-adds, but one large kernel). The weight is the grouped
    one in every case, so the state dict does not depend on the choice (:func:`choose_conv_impls`).
    """

    def __init__(self, *args, members: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.members = members
        self.impl = "grouped"

    def alternatives(self) -> tuple[str, ...]:
        """The implementations that compute this layer (the first is the grouped convolution)."""
        square = len(set(self.stride)) == 1 and len(set(self.padding)) == 1 and self.dilation == (1, 1)
        if self.members == 1 or self.groups != self.members or not square or self.padding_mode != "zeros":
            return ("grouped",)
        if self.kernel_size == (1, 1) and self.padding == (0, 0):
            return ("grouped", "bmm")
        return ("grouped", "dense")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.impl == "grouped":
            return super().forward(x)
        out = self.compute(x, self.weight, self.impl)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)

    def compute(self, x: torch.Tensor, weight: torch.Tensor, impl: str) -> torch.Tensor:
        """This layer's convolution (no bias) of ``x`` with ``weight`` by the implementation ``impl``."""
        if impl == "bmm":
            return grouped_1x1_as_bmm(x, weight, self.groups, self.stride[0])
        if impl == "dense":
            return grouped_as_dense(x, weight, self.groups, self.stride[0], self.padding[0])
        return F.conv2d(x, weight, None, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, members={self.members}, impl={self.impl}"


def choose_conv_impls(model: nn.Module, x: torch.Tensor, time_fn: Callable[[Callable[[], None]], float]) -> dict:
    """Set every :class:`FusedConv2d` of ``model`` to its fastest implementation, measured.

    One forward pass on ``x`` records each layer's input shape; ``time_fn(work)`` returns the time
    of ``work`` (forward and backward of one layer at that shape), e.g. with CUDA events. Layers of
    one shape share a measurement. Returns how many layers took each implementation, and the times.
    """
    inputs: dict[FusedConv2d, tuple] = {}

    def record(layer, args) -> None:  # returns None: the layer's input stays as it is
        inputs.setdefault(layer, (args[0].shape, args[0].dtype, args[0].stride()))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules()
             if isinstance(m, FusedConv2d) and len(m.alternatives()) > 1]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    chosen: dict[tuple, str] = {}
    times: dict[str, dict] = {}
    for layer, (shape, dtype, stride) in inputs.items():
        key = (tuple(shape), dtype, tuple(stride), tuple(layer.weight.shape), layer.stride, layer.padding)
        if key not in chosen:
            sample = torch.empty_strided(shape, stride, dtype=dtype, device=x.device).normal_().requires_grad_()
            weight = layer.weight.detach().to(dtype).requires_grad_()
            measured = {}
            for impl in layer.alternatives():
                def work(layer=layer, impl=impl):
                    torch.autograd.grad(layer.compute(sample, weight, impl).sum(), (sample, weight))

                measured[impl] = time_fn(work)
            chosen[key] = min(measured, key=measured.get)
            times[f"{tuple(shape)} {tuple(layer.weight.shape)}"] = measured
        layer.impl = chosen[key]
    counts = {impl: sum(1 for m in inputs if m.impl == impl) for impl in CONV_IMPLS}
    return {"layers": counts, "times_s": times}


def _factory(module: nn.Module) -> dict:
    tensor = next(module.parameters(), None)
    tensor = tensor if tensor is not None else next(module.buffers())
    return {"device": tensor.device, "dtype": tensor.dtype}


def _wide_conv(conv: nn.Conv2d, k: int) -> FusedConv2d:
    return FusedConv2d(conv.in_channels * k, conv.out_channels * k, conv.kernel_size, stride=conv.stride,
                       padding=conv.padding, dilation=conv.dilation, groups=conv.groups * k,
                       bias=conv.bias is not None, padding_mode=conv.padding_mode, members=k, **_factory(conv))


def _wide_batchnorm(bn: nn.BatchNorm2d, k: int) -> nn.BatchNorm2d:
    wide = nn.BatchNorm2d(bn.num_features * k, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                          track_running_stats=bn.track_running_stats, **_factory(bn))
    if bn.momentum is not None:
        wide.num_batches_tracked = None
    return wide


def _mask_channels(module: AttentionModule) -> int:
    return [m for m in module.mask_head.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


def _check_same_architecture(members: Sequence[nn.Module]) -> None:
    first = members[0]
    reference = {k: (tuple(v.shape), v.dtype) for k, v in first.state_dict().items()}
    kinds = [type(m) for m in first.modules()]
    for i, member in enumerate(members[1:], start=1):
        if [type(m) for m in member.modules()] != kinds or \
                {k: (tuple(v.shape), v.dtype) for k, v in member.state_dict().items()} != reference:
            raise FusionError(f"member {i} has another architecture than member 0; only models of one "
                              "architecture (same model, attention type and mask type) can be fused")
        for a, b in zip(first.modules(), member.modules()):
            if isinstance(a, MaskActivation) and a.attention != b.attention:
                raise FusionError(f"member {i} uses {b.attention} attention and member 0 {a.attention}; "
                                  "fuse members of one attention type")


def fuse(members: Sequence[nn.Module]) -> nn.Module:
    """One model computing ``len(members)`` models of one architecture (see the module docstring).

    Members are built as their solo runs build them (own seed, own initialisation) and may differ
    only in their weights and in ARL vs NAL. The result is a copy: the members are not changed.
    Input ``(B, K * 3, H, W)`` (:func:`fuse_inputs`), output ``(B, K, num_classes)``.

    Raises :class:`FusionError` for members of different architectures or attention types, or a
    layer fusion does not cover (the Inception unit's concatenation along the channels).
    """
    if not members:
        raise FusionError("fuse needs at least one member")
    if not list(members[0].children()):
        raise FusionError(f"fuse takes models made of layers, not a single {type(members[0]).__name__}")
    _check_same_architecture(members)
    k = len(members)
    fused = copy.deepcopy(members[0])
    per_member = [dict(m.named_modules()) for m in members]
    for name, module in list(fused.named_modules()):
        if not name:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = fused.get_submodule(parent_name) if parent_name else fused
        if isinstance(module, nn.Conv2d):
            setattr(parent, attr, _wide_conv(module, k))
        elif isinstance(module, nn.BatchNorm2d):
            setattr(parent, attr, _wide_batchnorm(module, k))
        elif isinstance(module, nn.Linear):
            setattr(parent, attr, BatchedLinear(k, module.in_features, module.out_features, module.bias is not None,
                                                **_factory(module)))
        elif isinstance(module, MaskActivation):
            setattr(parent, attr, FusedMaskActivation(module.attention, k))
        elif isinstance(module, AttentionModule):
            flags = [table[f"{name}.fusion"].residual_attention for table in per_member]
            if len(set(flags)) > 1:
                residual = torch.tensor(flags, dtype=torch.float32).repeat_interleave(_mask_channels(module))
                module.fusion = FusedAttentionFusion(residual)
        elif isinstance(module, PreActInceptionUnit) or not list(module.children()):
            _check_per_channel(name, module)
    loaded = fused.load_state_dict(fused_state_dict([m.state_dict() for m in members]), strict=False)
    unexpected = [key for key in loaded.unexpected_keys if not key.endswith("num_batches_tracked")]
    if loaded.missing_keys or unexpected:
        raise FusionError(f"fused model and members disagree on tensors {(loaded.missing_keys + unexpected)[:3]}")
    fused.num_members = k
    return fused


# Leaf modules that act on each channel (or each element) alone, so K members' channels side by
# side are K independent computations. (The Inception unit concatenates its branches along the
# channels, which would interleave the members.)
_PER_CHANNEL = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Identity, AttentionFusion,
                nn.Sequential, nn.ModuleList)  # (empty containers)


def _check_per_channel(name: str, module: nn.Module) -> None:
    if not isinstance(module, _PER_CHANNEL):
        raise FusionError(f"layer {name} ({type(module).__name__}) has no fused form; fusion covers networks of "
                          "convolutions, batch norms, per-channel layers and a linear classifier")


def fused_state_dict(states: Sequence[dict]) -> dict:
    """The members' state dicts concatenated along dim 0 (scalars, the BN counters, are dropped)."""
    return {key: torch.cat([s[key] for s in states]) for key, value in states[0].items() if _is_per_member(value)}


def member_state_dict(fused_state: dict, member: int, members: int, *, reference: dict, steps: int) -> dict:
    """Member ``member``'s state dict out of a fused one, with ``reference``'s keys (a solo model's
    ``state_dict()``); BatchNorm counters (dropped while fused) are set to ``steps``."""
    out = {}
    for key, value in reference.items():
        if _is_per_member(value):
            out[key] = fused_state[key].chunk(members)[member].clone()
        else:
            out[key] = torch.tensor(steps, dtype=value.dtype)
    return out


def fused_optimizer_state(states: Sequence[dict]) -> dict:
    """The members' ``optimizer.state_dict()`` (same optimizer, same parameter order) as one for the
    fused model: per-parameter tensors (momentum buffers) concatenated along dim 0."""
    fused = {}
    for index, entry in states[0]["state"].items():
        fused[index] = {name: torch.cat([s["state"][index][name] for s in states]) if _is_per_member(value)
                        else value for name, value in entry.items()}
    return {"state": fused, "param_groups": copy.deepcopy(states[0]["param_groups"])}


def member_optimizer_state(fused_state: dict, member: int, members: int) -> dict:
    """Member ``member``'s part of a fused model's ``optimizer.state_dict()``."""
    state = {index: {name: value.chunk(members)[member].clone() if _is_per_member(value) else value
                     for name, value in entry.items()}
             for index, entry in fused_state["state"].items()}
    return {"state": state, "param_groups": copy.deepcopy(fused_state["param_groups"])}


def _is_per_member(value) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim > 0


def fuse_inputs(batches: Sequence[torch.Tensor]) -> torch.Tensor:
    """K batches ``(B, C, H, W)`` (one per member) -> ``(B, K * C, H, W)`` in the fused layout."""
    return batches[0] if len(batches) == 1 else torch.cat(list(batches), dim=1)


def shared_inputs(x: torch.Tensor, members: int) -> torch.Tensor:
    """The same batch ``(B, C, H, W)`` for every member (evaluation) -> ``(B, K * C, H, W)``."""
    return x if members == 1 else x.repeat(1, members, 1, 1)


def member_view(features: torch.Tensor, members: int) -> torch.Tensor:
    """``(B, K * C, ...)`` features -> ``(B, K, C, ...)``: member ``k``'s own channels at ``[:, k]``."""
    return features.unflatten(1, (members, -1))
