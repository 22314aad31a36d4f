"""A timm-style model registry: ``@register_model`` builders, ``create_model``, ``list_models``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import asdict, dataclass

from torch import nn

DEFAULT_NUM_CLASSES = {"cifar": 10, "imagenet": 1000}
INPUT_SIZE = {"cifar": 32, "imagenet": 224}


class UnknownModelError(ValueError):
    """A model name that is not registered; the message lists the valid ones."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str  # "attention", "resnet", "wide_resnet"
    dataset: str  # "cifar" or "imagenet"
    paper_name: str  # the name the paper's tables use
    is_attention: bool
    test_size: int  # the paper's single-crop test size (Table 7); 32 for CIFAR

    @property
    def input_size(self) -> int:
        return INPUT_SIZE[self.dataset]

    @property
    def num_classes(self) -> int:
        return DEFAULT_NUM_CLASSES[self.dataset]

    def to_dict(self) -> dict:
        return asdict(self) | {"input_size": self.input_size, "num_classes": self.num_classes}


_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_INFO: dict[str, ModelInfo] = {}


def register_model(*, family: str, dataset: str, paper_name: str, is_attention: bool = False, test_size: int | None = None):
    """Register a builder ``fn(*, num_classes, **variant) -> nn.Module`` under its function name."""

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _BUILDERS:
            raise RuntimeError(f"model {name!r} is registered twice")
        _BUILDERS[name] = fn
        _INFO[name] = ModelInfo(
            name=name, family=family, dataset=dataset, paper_name=paper_name, is_attention=is_attention,
            test_size=test_size or INPUT_SIZE[dataset],
        )
        return fn

    return decorator


def list_models(dataset: str | None = None) -> list[str]:
    """Registered model names, sorted; only those for ``dataset`` ("cifar" or "imagenet") if given."""
    return sorted(name for name, info in _INFO.items() if dataset is None or info.dataset == dataset)


def model_info(name: str) -> ModelInfo:
    _check_name(name)
    return _INFO[name]


def model_variants(name: str) -> dict[str, object]:
    """The keyword arguments a model takes besides ``num_classes``, with their defaults."""
    _check_name(name)
    params = inspect.signature(_BUILDERS[name]).parameters
    return {k: p.default for k, p in params.items() if k != "num_classes"}


def create_model(name: str, *, num_classes: int | None = None, **variant) -> nn.Module:
    """Build a registered model. ``variant`` holds the model's switches (see ``model_variants``)."""
    allowed = model_variants(name)
    unknown = sorted(set(variant) - set(allowed))
    if unknown:
        takes = ", ".join(allowed) or "no switches"
        raise ValueError(f"{name} does not take {', '.join(unknown)}; it takes: {takes}")
    info = _INFO[name]
    model = _BUILDERS[name](num_classes=num_classes or info.num_classes, **variant)
    model.model_info = info
    return model


def _check_name(name: str) -> None:
    if name not in _BUILDERS:
        raise UnknownModelError(f"unknown model {name!r}; valid models: {', '.join(list_models())}")
