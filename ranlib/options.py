"""Typed options: what a training option, a model switch or a notebook parameter accepts.

Values reach ranlib from the command line, ``--set FIELD=VALUE``, group files (JSON), papermill
parameters (``-p train false`` arrives as the string ``"false"``) and Python. Each option declares
its type and range once (an :class:`Option`), and :meth:`Option.check` refuses anything else with
one :class:`ranlib.errors.ConfigError` line naming the option, the value and what it takes; a
value is never coerced (``bool("no")`` is True, which once trained ARL under a NAL name).

Declared here: the notebooks' and the book pages' parameters (:func:`notebook_parameters`, checked
by each one's set-up cell through :func:`check_notebook_parameters`). The training options are declared beside
:class:`ranlib.training.config.TrainConfig` (``TRAIN_OPTIONS``), the model switches with each model
(``ranlib.models``' ``register_model(switches=...)``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import ConfigError

_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
               list: "a list", dict: "an object of key: value pairs"}
# What --device takes (ranlib.training.runtime.select_device).
DEVICE = dict(pattern=r"auto|cpu|cuda(:\d+)?", spelled="auto, cpu, cuda or cuda:N")


@dataclass(frozen=True)
class Option:
    """One option's type (``bool``, ``int``, ``float``, ``str``, ``list`` or ``dict``) and range.

    ``optional``: None is allowed (it means "the default"). ``minimum``/``maximum`` bound numbers
    (inclusive), ``above``/``below`` exclusively; ``choices`` and ``pattern`` (a full-match regular
    expression, said in words by ``spelled``) restrict strings; ``items`` is the type of a list's
    elements; ``path``: a string or an ``os.PathLike``.
    """

    kind: type
    optional: bool = False
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    below: float | None = None
    choices: tuple | None = None
    pattern: str | None = None
    items: type | None = None
    path: bool = False
    spelled: str | None = None  # how to say what ``pattern`` takes

    def describe(self) -> str:
        """What the option takes, in words: "an integer >= 1 (or null)"."""
        what = _KIND_NAMES[self.kind]
        if self.kind is list and self.items is not None:
            what = f"a list of {_KIND_NAMES[self.items].removeprefix('an ').removeprefix('a ')}s"
        if self.choices is not None:
            what = "one of " + ", ".join(map(str, self.choices))
        bounds = [f"{sign} {value:g}" for sign, value in ((">=", self.minimum), ("<=", self.maximum),
                                                          (">", self.above), ("<", self.below)) if value is not None]
        if bounds:
            what += " " + " and ".join(bounds)
        if self.pattern is not None:
            what = self.spelled or f"a string matching {self.pattern}"
        return what + (" (or null for the default)" if self.optional else "")

    def check(self, value, name: str, hint: str = ""):
        """``value`` as given if it fits, else :class:`ConfigError`: "<name> must be ..., not <value>
        (<its type>)<hint>"."""
        if value is None and self.optional:
            return value
        if not self._fits(value):
            raise ConfigError(f"{name} must be {self.describe()}, not {value!r} ({type(value).__name__}){hint}")
        return value

    def _fits(self, value) -> bool:
        if not _is(value, self.kind, self.path):
            return False
        if self.kind is list and self.items is not None and not all(_is(v, self.items) for v in value):
            return False
        if self.kind is dict and not all(isinstance(k, str) for k in value):
            return False
        if self.choices is not None and value not in self.choices:
            return False
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            return False
        if self.kind in (int, float) and not math.isfinite(value):
            return False
        numbers = value if self.kind is list else [value]
        return all(self._in_range(v) for v in numbers) if self.kind in (int, float, list) else True

    def _in_range(self, v) -> bool:
        if not isinstance(v, (int, float)):
            return True
        return ((self.minimum is None or v >= self.minimum) and (self.maximum is None or v <= self.maximum)
                and (self.above is None or v > self.above) and (self.below is None or v < self.below))


def _is(value, kind: type, path: bool = False) -> bool:
    """``isinstance`` without Python's conveniences: a bool is not an integer, an integer is a number."""
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str) or (path and isinstance(value, os.PathLike))
    if kind is list:
        return isinstance(value, (list, tuple))
    return isinstance(value, kind)


def options_from_hints(cls: type, ranges: Mapping[str, dict]) -> dict[str, Option]:
    """An :class:`Option` per field of dataclass ``cls``: the type from its annotation (``int | None``
    gives an optional integer, ``list[int]`` a list of integers), the range from ``ranges[field]``."""
    import dataclasses
    import types
    import typing

    hints = typing.get_type_hints(cls)
    options = {}
    for f in dataclasses.fields(cls):
        hint, optional = hints[f.name], False
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            optional, (hint,) = len(args) < len(typing.get_args(hint)), args
        items = (typing.get_args(hint) or (None,))[0] if typing.get_origin(hint) is list else None
        options[f.name] = Option(typing.get_origin(hint) or hint, optional=optional, items=items,
                                 **ranges.get(f.name, {}))
    return options


def check_all(values: Mapping, options: Mapping[str, Option], what: str = "", hint: str = "") -> None:
    """Check every value whose name ``options`` declares (``what`` prefixes the names in errors,
    ``hint`` follows them)."""
    for name, value in values.items():
        if name in options:
            options[name].check(value, f"{what}{name}", hint.format(name=name))


# The notebooks' parameters (tools/make_notebooks.py writes their `parameters` cells): the common
# ones, then each notebook's own. papermill injects them as Python literals.
_PROFILES = ("smoke", "quick", "full", "paper")
COMMON_NOTEBOOK_PARAMETERS = {
    "profile": Option(str, choices=_PROFILES),
    "seeds": Option(list, items=int, minimum=0),
    "dataset": Option(str),
    "data_root": Option(str, path=True),
    "device": Option(str, **DEVICE),
    "results_dir": Option(str, path=True),
    "checkpoint_dir": Option(str, path=True),
    "train": Option(bool),
    "rows": Option(list, optional=True, items=str),
    "train_overrides": Option(dict),
}
NOTEBOOK_PARAMETERS = {  # a notebook's own, besides the common ones
    "models": {"complexity_file": Option(str, path=True), "model_names": Option(list, items=str)},
    "attention_masks": {"checkpoint": Option(str, optional=True, path=True), "num_images": Option(int, minimum=1),
                        "masks_file": Option(str, optional=True, path=True),
                        "woof_checkpoint": Option(str, optional=True, path=True),
                        "woof_masks_file": Option(str, optional=True, path=True),
                        "woof_num_images": Option(int, minimum=1)},
}
# The book's own pages (book/pages/*.md) that take parameters: they only read results.
PAGE_PARAMETERS = {name: {"results_dir": Option(str, path=True)}
                   for name in ("intro", "summary", "setup", "performance", "compute")}


def notebook_parameters(name: str) -> dict[str, Option]:
    """Every parameter notebook (or book page) ``name`` declares, with its type."""
    if name in PAGE_PARAMETERS:
        return dict(PAGE_PARAMETERS[name])
    return {**COMMON_NOTEBOOK_PARAMETERS, **NOTEBOOK_PARAMETERS.get(name, {})}


def check_notebook_parameters(name: str, namespace: Mapping) -> None:
    """Check the parameters of notebook ``name`` as its `parameters` cell (and papermill) left them in
    ``namespace`` (the notebook's ``globals()``); one ConfigError line for the first wrong one."""
    check_all({k: namespace[k] for k in notebook_parameters(name) if k in namespace}, notebook_parameters(name),
              "notebook parameter ", "; papermill -p passes a Python literal (True, False, None, numbers) or a string, "
              "-y '{name}: ...' a YAML value")
