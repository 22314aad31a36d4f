"""A timm-style model registry: ``@register_model`` builders, ``create_model``, ``list_models``."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

from torch import nn

from ranlib.options import Option

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
_SWITCHES: dict[str, dict[str, Option]] = {}


def register_model(*, family: str, dataset: str, paper_name: str, is_attention: bool = False,
                   test_size: int | None = None, switches: Mapping[str, Option] | None = None):
    """Register a builder ``fn(*, num_classes, **variant) -> nn.Module`` under its function name.

    ``switches`` declares the type and accepted values of each keyword argument besides
    ``num_classes`` (every one must be declared); the registered builder refuses any other value
    with one :class:`ranlib.errors.ConfigError` line (a ValueError), whoever calls it.
    """
    switches = dict(switches or {})

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _BUILDERS:
            raise RuntimeError(f"model {name!r} is registered twice")
        undeclared = sorted(set(inspect.signature(fn).parameters) - {"num_classes"} - set(switches))
        if undeclared:
            raise RuntimeError(f"model {name!r} does not declare the type of switch(es) {', '.join(undeclared)}")

        @functools.wraps(fn)
        def checked(**variant):
            for key, value in variant.items():
                if key in switches:
                    switches[key].check(value, f"{name} switch {key}")
            return fn(**variant)

        _BUILDERS[name], _SWITCHES[name] = checked, switches
        _INFO[name] = ModelInfo(
            name=name, family=family, dataset=dataset, paper_name=paper_name, is_attention=is_attention,
            test_size=test_size or INPUT_SIZE[dataset],
        )
        return checked

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


def model_switches(name: str) -> dict[str, Option]:
    """Each switch of a model with its declared type and accepted values (:class:`ranlib.options.Option`)."""
    _check_name(name)
    return dict(_SWITCHES[name])


def create_model(name: str, *, num_classes: int | None = None, **variant) -> nn.Module:
    """Build a registered model. ``variant`` holds the model's switches (see ``model_variants``; each
    is checked against its declared type, ``model_switches``). Raises ValueError for an unknown
    switch or a value it does not accept."""
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
