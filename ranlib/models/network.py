"""The network every ranlib model shares: stem -> stages -> head, with stages given as data.

A stage is a transition unit (changes width and resolution), then ``num_modules`` attention
modules, then ``extra_units`` plain residual units. With no modules this is a residual network:
pre-activation ResNet-164 is Attention-92's trunk without its attention modules, which is the
comparison the paper makes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .units import init_weights


@dataclass(frozen=True)
class StageSpec:
    out_chs: int
    stride: int
    num_modules: int = 0
    mask_pools: int = 0  # max-pools from the stage's resolution to the mask's coarsest one
    extra_units: int = 0

    @property
    def num_units(self) -> int:
        """Plain residual units of the stage (transition + extra), modules not counted."""
        return 1 + self.extra_units


class ImageNetStem(nn.Sequential):
    """conv 7x7/2 - BN - ReLU - max-pool 3x3/2 (Caffe ceil mode: 112 -> 56), as in the deploy files."""

    def __init__(self, out_chs: int = 64, in_chans: int = 3):
        super().__init__(
            nn.Conv2d(in_chans, out_chs, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(out_chs),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),
        )
        self.out_chs = out_chs


class CifarStem(nn.Sequential):
    """A single 3x3 convolution; the first pre-activation unit normalises it (He et al. 2016)."""

    def __init__(self, out_chs: int = 16, in_chans: int = 3):
        super().__init__(nn.Conv2d(in_chans, out_chs, 3, padding=1, bias=False))
        self.out_chs = out_chs


STEMS = {"imagenet": ImageNetStem, "cifar": CifarStem}

ModuleFactory = Callable[[type[nn.Module], int, StageSpec], nn.Module]


def make_stage(unit: type[nn.Module], in_chs: int, spec: StageSpec, make_module: ModuleFactory | None) -> nn.Sequential:
    if spec.num_modules and make_module is None:
        raise ValueError("a stage with attention modules needs a module factory")
    layers = [unit(in_chs, spec.out_chs, stride=spec.stride)]
    layers += [make_module(unit, spec.out_chs, spec) for _ in range(spec.num_modules)]
    layers += [unit(spec.out_chs, spec.out_chs) for _ in range(spec.extra_units)]
    return nn.Sequential(*layers)


class ResidualNet(nn.Module):
    """Stem, stages of residual units (and attention modules), final BN-ReLU, pool, classifier."""

    def __init__(
        self,
        *,
        stages: Sequence[StageSpec],
        unit: type[nn.Module],
        stem: str,
        num_classes: int,
        stem_chs: int,
        make_module: ModuleFactory | None = None,
        in_chans: int = 3,
    ):
        super().__init__()
        self.stage_specs = tuple(stages)
        self.num_classes = num_classes
        self.stem = STEMS[stem](stem_chs, in_chans)
        chs = stem_chs
        blocks = []
        for spec in self.stage_specs:
            blocks.append(make_stage(unit, chs, spec, make_module))
            chs = spec.out_chs
        self.stages = nn.Sequential(*blocks)
        self.num_features = chs
        # Pre-activation nets end on BN-ReLU before pooling; post-activation units already did.
        self.final_act = nn.Sequential(nn.BatchNorm2d(chs), nn.ReLU(inplace=True)) if unit.preact else nn.Identity()
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(chs, num_classes)
        init_weights(self)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every attention module's mask branch during backward (saves activation memory).

        Outputs, gradients and BatchNorm running statistics are those of the plain model (the
        recomputation does not update the statistics a second time); it costs one more forward
        pass of each mask branch.
        """
        for module in self.modules():
            if hasattr(module, "checkpoint_mask"):
                module.checkpoint_mask = enable

    def stage_modules(self) -> list[nn.Module]:
        """The modules whose outputs are 'each stage's output' (Figure 4)."""
        return list(self.stages)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_act(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.global_pool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
