"""Residual units shared by the model families, and the one weight initialisation.

Every unit maps ``in_chs -> out_chs`` at a given ``stride`` and has a bottleneck width
``mid_chs``. ``preact`` says whether the unit expects a raw (pre-activation) input, which decides
whether an attention mask head starts with BN-ReLU (official Attention-56/92) or not (official
AttentionNeXt-56, whose units are post-activation). ``macs_per_pixel`` gives a stride-1,
``chs -> chs`` unit's multiply-adds per output position, used to size the local-convolution mask
of Table 4 to the encoder-decoder mask's FLOPs.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def conv1x1(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False)


def conv3x3(in_chs: int, out_chs: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, groups=groups, bias=False)


class PreActUnit(nn.Module):
    """What every pre-activation unit shares: BN-ReLU on the input, and a projection shortcut
    (1x1, stride) on the pre-activated input when the shape changes, identity otherwise."""

    preact = True

    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.relu = nn.ReLU(inplace=True)
        needs_projection = stride != 1 or in_chs != out_chs
        self.shortcut = conv1x1(in_chs, out_chs, stride) if needs_projection else None

    def preactivate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(BN-ReLU of x, the shortcut branch)."""
        pre = self.relu(self.bn1(x))
        return pre, x if self.shortcut is None else self.shortcut(pre)


class PreActBottleneck(PreActUnit):
    """BN-ReLU-1x1, BN-ReLU-3x3 (stride), BN-ReLU-1x1, plus identity (He et al. 2016).

    As in the official deploy files, the stride sits on the 3x3 convolution, and a projection
    shortcut (1x1, stride) takes the pre-activated input.
    """

    def __init__(self, in_chs: int, out_chs: int, *, stride: int = 1, mid_chs: int | None = None):
        super().__init__(in_chs, out_chs, stride)
        mid_chs = mid_chs or self.default_mid_chs(out_chs)
        self.conv1 = conv1x1(in_chs, mid_chs)
        self.bn2 = nn.BatchNorm2d(mid_chs)
        self.conv2 = conv3x3(mid_chs, mid_chs, stride)
        self.bn3 = nn.BatchNorm2d(mid_chs)
        self.conv3 = conv1x1(mid_chs, out_chs)

    @staticmethod
    def default_mid_chs(out_chs: int) -> int:
        return out_chs // 4

    @staticmethod
    def macs_per_pixel(chs: int, mid_chs: int) -> int:
        return chs * mid_chs + 9 * mid_chs * mid_chs + mid_chs * chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre, shortcut = self.preactivate(x)
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + shortcut


class PreActBasic(PreActUnit):
    """BN-ReLU-3x3 (stride), BN-ReLU-3x3, plus identity: the wide ResNet unit (Zagoruyko and
    Komodakis 2016), projection shortcut on the pre-activated input when the shape changes."""

    def __init__(self, in_chs: int, out_chs: int, *, stride: int = 1, mid_chs: int | None = None):
        super().__init__(in_chs, out_chs, stride)
        self.conv1 = conv3x3(in_chs, out_chs, stride)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.conv2 = conv3x3(out_chs, out_chs)

    @staticmethod
    def default_mid_chs(out_chs: int) -> int:
        return out_chs

    @staticmethod
    def macs_per_pixel(chs: int, mid_chs: int) -> int:
        return 9 * chs * mid_chs + 9 * mid_chs * chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre, shortcut = self.preactivate(x)
        return self.conv2(self.relu(self.bn2(self.conv1(pre)))) + shortcut


class ResNeXtBottleneck(nn.Module):
    """Post-activation aggregated unit, 32 groups x 4d (Xie et al. 2017; official AttentionNeXt).

    1x1-BN-ReLU, grouped 3x3 (stride)-BN-ReLU, 1x1-BN, plus shortcut (1x1 stride + BN when the
    shape changes), then ReLU. The bottleneck is half the output width (128 for 256, ...).
    """

    preact = False
    groups = 32

    def __init__(self, in_chs: int, out_chs: int, *, stride: int = 1, mid_chs: int | None = None):
        super().__init__()
        mid_chs = mid_chs or self.default_mid_chs(out_chs)
        self.conv1 = conv1x1(in_chs, mid_chs)
        self.bn1 = nn.BatchNorm2d(mid_chs)
        self.conv2 = conv3x3(mid_chs, mid_chs, stride, groups=self.groups)
        self.bn2 = nn.BatchNorm2d(mid_chs)
        self.conv3 = conv1x1(mid_chs, out_chs)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.relu = nn.ReLU(inplace=True)
        needs_projection = stride != 1 or in_chs != out_chs
        self.shortcut = (
            nn.Sequential(conv1x1(in_chs, out_chs, stride), nn.BatchNorm2d(out_chs)) if needs_projection else None
        )

    @staticmethod
    def default_mid_chs(out_chs: int) -> int:
        return out_chs // 2

    @classmethod
    def macs_per_pixel(cls, chs: int, mid_chs: int) -> int:
        return chs * mid_chs + 9 * mid_chs * mid_chs // cls.groups + mid_chs * chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


class PreActInceptionUnit(PreActUnit):
    """Pre-activation Inception-ResNet-style unit (our reading; the paper only names it).

    BN-ReLU, then three branches of width ``mid_chs / 2`` — 1x1; 1x1-3x3; 1x1-3x3-3x3 (each
    conv but the first of a branch preceded by BN-ReLU) — concatenated and projected back with a
    1x1, plus identity, as in Inception-ResNet-A (Szegedy et al. 2017). The stride sits on the
    first conv of the 1x1 branch and on the last 3x3 of the others. With the bottleneck width
    of the pre-activation unit this costs about 10 % more multiply-adds per unit.
    """

    def __init__(self, in_chs: int, out_chs: int, *, stride: int = 1, mid_chs: int | None = None):
        super().__init__(in_chs, out_chs, stride)
        branch_chs = max(1, (mid_chs or self.default_mid_chs(out_chs)) // 2)
        self.branch1 = conv1x1(in_chs, branch_chs, stride)
        self.branch3 = nn.Sequential(conv1x1(in_chs, branch_chs), *_bn_relu_conv3x3(branch_chs, stride))
        self.branch5 = nn.Sequential(
            conv1x1(in_chs, branch_chs), *_bn_relu_conv3x3(branch_chs), *_bn_relu_conv3x3(branch_chs, stride)
        )
        self.bn_out = nn.BatchNorm2d(3 * branch_chs)
        self.project = conv1x1(3 * branch_chs, out_chs)

    @staticmethod
    def default_mid_chs(out_chs: int) -> int:
        return out_chs // 4

    @staticmethod
    def macs_per_pixel(chs: int, mid_chs: int) -> int:
        branch = mid_chs // 2
        return 3 * chs * branch + 3 * 9 * branch * branch + 3 * branch * chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre, shortcut = self.preactivate(x)
        out = torch.cat([self.branch1(pre), self.branch3(pre), self.branch5(pre)], dim=1)
        return self.project(self.relu(self.bn_out(out))) + shortcut


def _bn_relu_conv3x3(chs: int, stride: int = 1) -> list[nn.Module]:
    return [nn.BatchNorm2d(chs), nn.ReLU(inplace=True), conv3x3(chs, chs, stride)]


UNITS = {"preact": PreActBottleneck, "basic": PreActBasic, "resnext": ResNeXtBottleneck, "inception": PreActInceptionUnit}


def init_weights(model: nn.Module) -> nn.Module:
    """He (MSRA) initialisation, as the paper trains from scratch with it (Section 4.1).

    Caffe's MSRA filler normalises by fan-in: N(0, 2 / fan_in) for convolutions and the
    classifier; BN scale 1, shift 0; biases 0.
    """
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model


def fan_in_std(module: nn.Conv2d | nn.Linear) -> float:
    """The standard deviation ``init_weights`` gives ``module``'s weights."""
    fan_in = module.weight[0].numel()
    return math.sqrt(2.0 / fan_in)
