"""Residual Attention Networks (Wang et al., CVPR 2017): ImageNet and CIFAR.

Ordered as blocks (mask activations, mask branches, the attention module) -> stage specs ->
registered builders. Structural facts follow the official deploy files
(fwang91/residual-attention-network); where the paper is silent, the choice and its reason are
written here and collected in ``ranlib.models.choices.OPEN_CHOICES`` for the book.

An attention module (Section 3, Figure 2): ``p`` pre-processing units, then a trunk of ``t``
units and a soft mask branch that both start from the pre-processed features, fused as
``H = (1 + M) * T`` (attention residual learning, ARL, Eq. 3) or ``H = M * T`` (naive attention
learning, NAL, Table 3), then ``p`` more units.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ranlib.options import Option

from ._registry import register_model
from .network import ResidualNet, StageSpec
from .units import UNITS

ATTENTION_TYPES = ("mixed", "channel", "spatial")
MASK_TYPES = ("encoder_decoder", "local")
# The switches of every attention network (Tables 1, 3, 4 and 6 vary them), each with its type.
SWITCHES = {
    "attention": Option(str, choices=ATTENTION_TYPES),  # f1 mixed, f2 channel, f3 spatial (Table 1)
    "residual_attention": Option(bool),  # True: ARL, (1 + M) * T; False: NAL, M * T (Table 3)
    "mask": Option(str, choices=MASK_TYPES),  # Table 4
    "p": Option(int, minimum=0), "t": Option(int, minimum=1), "r": Option(int, minimum=1),  # Table 6
}
# f2 and f3 divide by a norm; the paper gives no epsilon. BatchNorm's 1e-5 keeps a zero
# feature map finite without changing any non-degenerate value measurably.
MASK_EPS = 1e-5


class MaskActivation(nn.Module):
    """The mask's last step, Section 3.3 / Table 1.

    mixed   f1(x) = sigmoid(x), per channel and position;
    channel f2(x) = x / ||x_i||, L2 over the channels at each position;
    spatial f3(x) = sigmoid((x - mean_c) / std_c), each channel normalised over its positions.
    """

    def __init__(self, attention: str = "mixed"):
        super().__init__()
        if attention not in ATTENTION_TYPES:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_TYPES)}, not {attention!r}")
        self.attention = attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attention == "mixed":
            return torch.sigmoid(x)
        if self.attention == "channel":
            return x / torch.sqrt(x.square().sum(dim=1, keepdim=True) + MASK_EPS)
        var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
        return torch.sigmoid((x - mean) * torch.rsqrt(var + MASK_EPS))

    def extra_repr(self) -> str:
        return self.attention


class MaskHead(nn.Sequential):
    """[BN-ReLU]-1x1-BN-ReLU-1x1-activation, the deploy files' ``linear_1``/``linear_2``.

    The leading BN-ReLU is there for pre-activation units only (Attention-56/92); the
    post-activation AttentionNeXt feeds the interpolated features straight into ``linear_1``.
    """

    def __init__(self, chs: int, *, preact: bool, attention: str):
        layers = [nn.BatchNorm2d(chs), nn.ReLU(inplace=True)] if preact else []
        layers += [
            nn.Conv2d(chs, chs, 1, bias=False), nn.BatchNorm2d(chs), nn.ReLU(inplace=True),
            nn.Conv2d(chs, chs, 1, bias=False),
            MaskActivation(attention),
        ]
        super().__init__(*layers)


def _upsample(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    # Caffe's Interp layer is bilinear with corner pixels aligned.
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class EncoderDecoderMask(nn.Module):
    """Bottom-up top-down mask branch (Section 3.2, Figure 3), as in the deploy files.

    ``pools`` max-pools (3x3/2, Caffe ceil mode), ``r`` units after each and ``r + 1`` at the
    coarsest level; then bilinear up-sampling, adding at each intermediate resolution the output
    of one skip unit applied to the down path's features there — and nothing else — followed by
    ``r`` units. Caffe's two-input Interp layer uses its second input for the output size only;
    the popular PyTorch port adds trunk features there, which is not the paper's model.

    The deploy files (r = 1) have two units at the coarsest level, which reads as ``2r`` or as
    ``r + 1``. Only ``r + 1`` keeps Attention-452 (r = 3) near the paper's 8.6M parameters
    (9.07M; ``2r`` gives 10.2M), so ranlib uses ``r + 1``.
    """

    def __init__(self, unit: type[nn.Module], chs: int, *, pools: int, r: int):
        super().__init__()
        if pools < 1:
            raise ValueError("the encoder-decoder mask needs at least one pooling level")
        self.pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.down = nn.ModuleList(
            nn.Sequential(*[unit(chs, chs) for _ in range(self.coarsest_units(r) if level == pools - 1 else r)])
            for level in range(pools)
        )
        self.skips = nn.ModuleList(unit(chs, chs) for _ in range(pools - 1))
        self.up = nn.ModuleList(nn.Sequential(*[unit(chs, chs) for _ in range(r)]) for _ in range(pools - 1))

    @staticmethod
    def coarsest_units(r: int) -> int:
        return r + 1

    @classmethod
    def full_resolution_units(cls, pools: int, r: int) -> float:
        """How many full-resolution units cost as much as this branch (each pool quarters the area)."""
        down = sum((cls.coarsest_units(r) if level == pools else r) / 4**level for level in range(1, pools + 1))
        skip_and_up = sum((1 + r) / 4**level for level in range(1, pools))
        return down + skip_and_up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_size = x.shape[-2:]
        skips = []
        for level, down in enumerate(self.down):
            x = down(self.pool(x))
            if level < len(self.skips):
                skips.append(self.skips[level](x))
        for skip, up in zip(reversed(skips), reversed(self.up)):
            x = up(_upsample(x, skip.shape[-2:]) + skip)
        return _upsample(x, out_size)


class LocalMask(nn.Sequential):
    """Table 4's local-convolution mask: three units at full resolution, no down/up-sampling.

    The paper says it uses the same FLOPs as the encoder-decoder mask. Three full-width units
    would cost several times more, so the bottleneck width is chosen to match the
    encoder-decoder branch's multiply-adds at the same stage (``local_mask_width``).
    """

    num_units = 3

    def __init__(self, unit: type[nn.Module], chs: int, *, mid_chs: int):
        super().__init__(*[unit(chs, chs, mid_chs=mid_chs) for _ in range(self.num_units)])


def local_mask_width(unit: type[nn.Module], chs: int, *, pools: int, r: int) -> int:
    """The bottleneck width that gives three units the encoder-decoder branch's multiply-adds."""
    full_mid = unit.default_mid_chs(chs)
    target = EncoderDecoderMask.full_resolution_units(pools, r) * unit.macs_per_pixel(chs, full_mid)
    step = getattr(unit, "groups", 1)  # grouped convolutions need a multiple of the groups
    candidates = range(step, full_mid + 1, step)
    return min(candidates, key=lambda mid: abs(LocalMask.num_units * unit.macs_per_pixel(chs, mid) - target))


class AttentionFusion(nn.Module):
    """H = (1 + M) * T with attention residual learning (Eq. 3), else H = M * T (NAL)."""

    def __init__(self, residual_attention: bool = True):
        super().__init__()
        self.residual_attention = residual_attention

    def forward(self, trunk: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.residual_attention:
            return torch.addcmul(trunk, mask, trunk)
        return mask * trunk

    def extra_repr(self) -> str:
        return "ARL: (1 + M) * T" if self.residual_attention else "NAL: M * T"


class AttentionModule(nn.Module):
    """p pre-processing units, trunk (t units) and soft mask, fusion, p units (Figure 2).

    The mask branch starts from the pre-processed features, as the trunk does (the deploy
    files pool the mask's input from ``trunk/res1``, the pre-processing unit's output).
    """

    def __init__(
        self,
        unit: type[nn.Module],
        chs: int,
        *,
        pools: int,
        p: int,
        t: int,
        r: int,
        attention: str,
        residual_attention: bool,
        mask: str,
    ):
        super().__init__()
        self.pre = nn.Sequential(*[unit(chs, chs) for _ in range(p)])
        self.trunk = nn.Sequential(*[unit(chs, chs) for _ in range(t)])
        if mask == "encoder_decoder":
            self.mask = EncoderDecoderMask(unit, chs, pools=pools, r=r)
        else:
            self.mask = LocalMask(unit, chs, mid_chs=local_mask_width(unit, chs, pools=pools, r=r))
        self.mask_head = MaskHead(chs, preact=unit.preact, attention=attention)
        self.fusion = AttentionFusion(residual_attention)
        self.post = nn.Sequential(*[unit(chs, chs) for _ in range(p)])
        # Recompute the mask branch in the backward pass instead of storing its activations
        # (ResidualNet.set_grad_checkpointing): the same model, less memory, one more mask forward.
        self.checkpoint_mask = False

    def _soft_mask(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask_head(self.mask(x))

    def _checkpointed_soft_mask(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            # Traced, the recomputation is part of the compiled backward graph, which moves no
            # running statistics (tests/test_models.py checks both ways against the plain model).
            return checkpoint(self._soft_mask, x, use_reentrant=False)

        # Eager, the recomputation in backward normalises with the same batch statistics but must
        # not move the running statistics a second time: the model stays the un-checkpointed one.
        def contexts():
            return contextlib.nullcontext(), _running_stats_kept(self.mask, self.mask_head)

        return checkpoint(self._soft_mask, x, use_reentrant=False, context_fn=contexts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre(x)
        trunk = self.trunk(x)
        if self.checkpoint_mask and torch.is_grad_enabled():
            soft_mask = self._checkpointed_soft_mask(x)
        else:
            soft_mask = self._soft_mask(x)
        return self.post(self.fusion(trunk, soft_mask))


@contextlib.contextmanager
def _running_stats_kept(*modules: nn.Module):
    """Restore the BatchNorm running statistics (and batch counts) of ``modules`` on exit."""
    norms = [m for module in modules for m in module.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    # A fused model drops the batch counters (ranlib.models.fused): None, nothing to restore.
    saved = [[None if t is None else t.clone() for t in (m.running_mean, m.running_var, m.num_batches_tracked)]
             for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (mean, var, count) in zip(norms, saved):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                if count is not None:
                    m.num_batches_tracked.copy_(count)


def imagenet_stages(modules: tuple[int, int, int]) -> list[StageSpec]:
    """Deploy-file layout: 256/512/1024-channel stages at 56/28/14 whose masks pool 3/2/1 times
    (down to 7x7), then three plain units at 2048 (stride 2)."""
    return [
        StageSpec(256, stride=1, num_modules=modules[0], mask_pools=3),
        StageSpec(512, stride=2, num_modules=modules[1], mask_pools=2),
        StageSpec(1024, stride=2, num_modules=modules[2], mask_pools=1),
        StageSpec(2048, stride=2, extra_units=2),
    ]


def cifar_stages(modules_per_stage: int) -> list[StageSpec]:
    """Three stages at 32/16/8 with pre-activation ResNet-164's widths (outputs 64/128/256).

    Each stage: a transition unit, m modules, one more unit — the paper's "two more residual
    units per stage", which gives the trunk depth 36m + 20 (stem conv + 6 units + classifier
    = 20 layers). The masks pool 3/2/1 times (down to 4x4), the deploy files' pattern of
    pooling to the last stage's resolution.
    """
    return [
        StageSpec(64, stride=1, num_modules=modules_per_stage, mask_pools=3, extra_units=1),
        StageSpec(128, stride=2, num_modules=modules_per_stage, mask_pools=2, extra_units=1),
        StageSpec(256, stride=2, num_modules=modules_per_stage, mask_pools=1, extra_units=1),
    ]


def _attention_net(
    stages: list[StageSpec],
    *,
    stem: str,
    unit: str,
    num_classes: int,
    attention: str,
    residual_attention: bool,
    mask: str,
    p: int,
    t: int,
    r: int,
) -> ResidualNet:
    unit_cls = UNITS[unit]

    def make_module(unit_cls: type[nn.Module], chs: int, spec: StageSpec) -> AttentionModule:
        return AttentionModule(
            unit_cls, chs, pools=spec.mask_pools, p=p, t=t, r=r,
            attention=attention, residual_attention=residual_attention, mask=mask,
        )

    return ResidualNet(
        stages=stages, unit=unit_cls, stem=stem, num_classes=num_classes,
        stem_chs=64 if stem == "imagenet" else 16, make_module=make_module,
    )


def _imagenet(modules: tuple[int, int, int], unit: str, **kwargs) -> ResidualNet:
    return _attention_net(imagenet_stages(modules), stem="imagenet", unit=unit, **kwargs)


def _cifar(modules_per_stage: int, **kwargs) -> ResidualNet:
    return _attention_net(cifar_stages(modules_per_stage), stem="cifar", unit="preact", **kwargs)


# --- registered builders: ImageNet (224 input) --------------------------------------------------

@register_model(family="attention", dataset="imagenet", paper_name="Attention-56", is_attention=True, test_size=224,
                switches=SWITCHES)
def attention56(*, num_classes=1000, attention="mixed", residual_attention=True, mask="encoder_decoder", p=1, t=2, r=1):
    return _imagenet((1, 1, 1), "preact", num_classes=num_classes, attention=attention,
                     residual_attention=residual_attention, mask=mask, p=p, t=t, r=r)


@register_model(family="attention", dataset="imagenet", paper_name="Attention-92", is_attention=True, test_size=320,
                switches=SWITCHES)
def attention92(*, num_classes=1000, attention="mixed", residual_attention=True, mask="encoder_decoder", p=1, t=2, r=1):
    return _imagenet((1, 2, 3), "preact", num_classes=num_classes, attention=attention,
                     residual_attention=residual_attention, mask=mask, p=p, t=t, r=r)


@register_model(family="attention", dataset="imagenet", paper_name="AttentionNeXt-56", is_attention=True, test_size=224,
                switches=SWITCHES)
def attentionnext56(*, num_classes=1000, attention="mixed", residual_attention=True, mask="encoder_decoder", p=1, t=2, r=1):
    return _imagenet((1, 1, 1), "resnext", num_classes=num_classes, attention=attention,
                     residual_attention=residual_attention, mask=mask, p=p, t=t, r=r)


@register_model(family="attention", dataset="imagenet", paper_name="AttentionInception-56", is_attention=True,
                test_size=299, switches=SWITCHES)
def attentioninception56(*, num_classes=1000, attention="mixed", residual_attention=True, mask="encoder_decoder", p=1,
                         t=2, r=1):
    return _imagenet((1, 1, 1), "inception", num_classes=num_classes, attention=attention,
                     residual_attention=residual_attention, mask=mask, p=p, t=t, r=r)


# --- registered builders: CIFAR (32 input), m modules per stage, depth 36m + 20 ------------------

def _register_cifar(depth: int, modules_per_stage: int, p: int = 1, t: int = 2, r: int = 1):
    def builder(*, num_classes=10, attention="mixed", residual_attention=True, mask="encoder_decoder", p=p, t=t, r=r):
        return _cifar(modules_per_stage, num_classes=num_classes, attention=attention,
                      residual_attention=residual_attention, mask=mask, p=p, t=t, r=r)

    builder.__name__ = f"cifar_attention{depth}"
    builder.__doc__ = f"Attention-{depth} for CIFAR: {modules_per_stage} module(s) per stage, p, t, r = {p}, {t}, {r}."
    return register_model(family="attention", dataset="cifar", paper_name=f"Attention-{depth}", is_attention=True,
                          switches=SWITCHES)(builder)


cifar_attention56 = _register_cifar(56, 1)
cifar_attention92 = _register_cifar(92, 2)
cifar_attention128 = _register_cifar(128, 3)
cifar_attention164 = _register_cifar(164, 4)
cifar_attention236 = _register_cifar(236, 6)  # not described in the paper: 36m + 20 = 236 gives m = 6
cifar_attention452 = _register_cifar(452, 6, p=2, t=4, r=3)  # Table 6: p, t, r = 2, 4, 3
