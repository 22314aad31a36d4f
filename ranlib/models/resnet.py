"""The paper's baselines: pre-activation ResNets, wide ResNets, ResNet-152 and ResNeXt-101.

Pre-activation ResNet-164/1001/200 and WRN-16-8/28-10 are ``ResidualNet``s with no attention
modules, so they share every unit with the attention nets. ResNet-152 and ResNeXt-101 (32x4d)
are torchvision's networks (torchvision has no 32x4d builder; its ``ResNet`` class with
``groups=32, width_per_group=4`` is that network), re-initialised with ``init_weights`` so
every model starts from the same He initialisation.
"""

from __future__ import annotations

import functools

from ._registry import register_model
from .network import ResidualNet, StageSpec
from .units import UNITS, init_weights


def _stages(widths: tuple[int, ...], units_per_stage: tuple[int, ...]) -> list[StageSpec]:
    return [
        StageSpec(width, stride=1 if i == 0 else 2, extra_units=units - 1)
        for i, (width, units) in enumerate(zip(widths, units_per_stage))
    ]


def _preact_resnet(widths, units_per_stage, *, stem: str, unit: str, num_classes: int) -> ResidualNet:
    return ResidualNet(
        stages=_stages(widths, units_per_stage), unit=UNITS[unit], stem=stem, num_classes=num_classes,
        stem_chs=64 if stem == "imagenet" else 16,
    )


def _cifar_preact_resnet(depth: int, num_classes: int) -> ResidualNet:
    """Bottleneck pre-activation ResNet for CIFAR (He et al. 2016): depth = 9n + 2."""
    n = (depth - 2) // 9
    return _preact_resnet((64, 128, 256), (n, n, n), stem="cifar", unit="preact", num_classes=num_classes)


def _wide_resnet(depth: int, widen: int, num_classes: int) -> ResidualNet:
    """WRN-depth-k: pre-activation basic units, widths 16k/32k/64k, depth = 6n + 4."""
    n = (depth - 4) // 6
    widths = (16 * widen, 32 * widen, 64 * widen)
    return _preact_resnet(widths, (n, n, n), stem="cifar", unit="basic", num_classes=num_classes)


@register_model(family="resnet", dataset="cifar", paper_name="ResNet-164")
def cifar_resnet164(*, num_classes=10):
    return _cifar_preact_resnet(164, num_classes)


@register_model(family="resnet", dataset="cifar", paper_name="ResNet-1001")
def cifar_resnet1001(*, num_classes=10):
    return _cifar_preact_resnet(1001, num_classes)


@register_model(family="wide_resnet", dataset="cifar", paper_name="WRN-16-8")
def cifar_wrn16_8(*, num_classes=10):
    return _wide_resnet(16, 8, num_classes)


@register_model(family="wide_resnet", dataset="cifar", paper_name="WRN-28-10")
def cifar_wrn28_10(*, num_classes=10):
    return _wide_resnet(28, 10, num_classes)


@register_model(family="resnet", dataset="imagenet", paper_name="ResNet-200", test_size=320)
def resnet200(*, num_classes=1000):
    """Pre-activation ResNet-200 (He et al. 2016, identity mappings): 3/24/36/3 bottlenecks."""
    return _preact_resnet((256, 512, 1024, 2048), (3, 24, 36, 3), stem="imagenet", unit="preact",
                          num_classes=num_classes)


@functools.cache
def _torchvision_resnet_class():
    """torchvision's ResNet with the ``forward_features``/``forward_head``/``stage_modules`` API.

    Imported on first use: importing torchvision costs seconds in every process that never
    builds these two baselines.
    """
    from torchvision.models.resnet import ResNet

    class TorchvisionResNet(ResNet):
        def stage_modules(self):
            return [self.layer1, self.layer2, self.layer3, self.layer4]

        def forward_features(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            return self.layer4(self.layer3(self.layer2(self.layer1(x))))

        def forward_head(self, x):
            return self.fc(self.avgpool(x).flatten(1))

        def forward(self, x):
            return self.forward_head(self.forward_features(x))

    return TorchvisionResNet


def _torchvision_bottleneck_resnet(layers: list[int], **kwargs):
    from torchvision.models.resnet import Bottleneck

    return init_weights(_torchvision_resnet_class()(Bottleneck, layers, **kwargs))


@register_model(family="resnet", dataset="imagenet", paper_name="ResNet-152")
def resnet152(*, num_classes=1000):
    return _torchvision_bottleneck_resnet([3, 8, 36, 3], num_classes=num_classes)


@register_model(family="resnet", dataset="imagenet", paper_name="ResNeXt-101")
def resnext101(*, num_classes=1000):
    """ResNeXt-101 32x4d (Xie et al. 2017)."""
    return _torchvision_bottleneck_resnet([3, 4, 23, 3], groups=32, width_per_group=4, num_classes=num_classes)
