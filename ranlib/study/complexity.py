"""Model size and cost (Tables 2, 6 and 7): our parameter and multiply-add counts beside the
paper's and the official deploy files', their claims judged, and ``results/models/complexity.json``
written and read."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from ranlib.paths import resolve_path

from . import paper
from .experiments import model_label
from .verdicts import COMPLEXITY_TOLERANCE, DEPLOY_TOLERANCE, judge_complexity

COMPLEXITY_COLUMNS = ["model", "params (M)", "paper params (M)", "official params (M)", "GMACs",
                      "paper GFLOPs", "official GMACs"]


COMPLEXITY_DETAILS = ["model", "input", "Δ params vs paper (%)", "Δ GMACs vs paper (%)"]


# The paper's counts as it prints them; the differences to a tenth of a per cent.
COMPLEXITY_FORMATS = {"paper params (M)": "{:g}", "paper GFLOPs": "{:g}",
                      "Δ params vs paper (%)": "{:+.1f}", "Δ GMACs vs paper (%)": "{:+.1f}"}


def paper_complexity(name: str) -> tuple[float | None, float | None]:
    """The paper's (params in M, GFLOPs) for a registered model name, where it gives them."""
    if name in paper.TABLE6_CIFAR:
        return paper.TABLE6_CIFAR[name][0], None
    spec = paper.TABLE7_IMAGENET.get(name)
    return (spec["params"], spec["gflops"]) if spec else (None, None)


def read_complexity(path: str | os.PathLike) -> list[dict] | None:
    """``results/models/complexity.json`` as a list of {name, params, macs, ...}; None if absent.

    Accepts a list of entries, ``{"models": [...]}``, or a mapping name -> entry.
    """
    path = resolve_path(path)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if isinstance(data, dict) and "models" in data:
        data = data["models"]
    if isinstance(data, dict):
        data = [{"name": k, **v} for k, v in data.items()]
    return data


def complexity_table(entries: Sequence[dict]) -> pd.DataFrame:
    """Ours vs the paper's vs the official deploy files' parameters and multiply-adds."""
    lines = []
    for entry in entries:
        name = entry["name"]
        paper_params, paper_gflops = paper_complexity(name)
        deploy = paper.OFFICIAL_DEPLOY.get(name, {})
        params_m = entry["params"] / 1e6
        gmacs = entry["macs"] / 1e9 if entry.get("macs") is not None else math.nan
        lines.append({
            "model": model_label(name), "name": name, "input": entry.get("input_size"),
            "params (M)": round(params_m, 3),
            "paper params (M)": paper_params,
            "Δ params vs paper (%)": _percent_delta(params_m, paper_params),
            "official params (M)": round(deploy["params"] / 1e6, 3) if deploy else math.nan,
            "GMACs": round(gmacs, 3), "paper GFLOPs": paper_gflops,
            "Δ GMACs vs paper (%)": _percent_delta(gmacs, paper_gflops),
            "official GMACs": round(deploy["macs"] / 1e9, 3) if deploy else math.nan,
        })
    return pd.DataFrame(lines)


def _percent_delta(ours: float, reference: float | None) -> float:
    return round(100 * (ours - reference) / reference, 1) if reference else math.nan


def complexity_claims(entries: Sequence[dict] | None) -> pd.DataFrame:
    """One claim per count the paper (or the official deploy file) gives for a model."""
    lines = []
    entries = {e["name"]: e for e in entries or []}
    names = sorted(set(paper.TABLE6_CIFAR) | {n for n in paper.TABLE7_IMAGENET
                                               if paper.TABLE7_IMAGENET[n]["params"]})
    for name in names:
        entry = entries.get(name)
        paper_params, paper_gflops = paper_complexity(name)
        deploy = paper.OFFICIAL_DEPLOY.get(name, {})
        checks = [("params (M), paper", paper_params, "params", 1e6, COMPLEXITY_TOLERANCE),
                  ("GFLOPs (multiply-adds), paper", paper_gflops, "macs", 1e9,
                   COMPLEXITY_TOLERANCE)]
        if deploy:
            checks += [("params (M), official deploy file", deploy["params"] / 1e6, "params",
                        1e6, DEPLOY_TOLERANCE),
                       ("G multiply-adds, official deploy file", deploy["macs"] / 1e9, "macs",
                        1e9, DEPLOY_TOLERANCE)]
        for what, reference, key, scale, tolerance in checks:
            if reference is None:
                continue
            ours = entry[key] / scale if entry and entry.get(key) is not None else None
            verdict, reason = judge_complexity(ours, reference, tolerance)
            lines.append(dict(experiment="models", claim=f"{model_label(name)}: {what}", kind="complexity",
                              paper=reference, ours=ours if ours is not None else math.nan,
                              delta=ours - reference if ours is not None else math.nan,
                              verdict=verdict, reason=reason, budget="exact count",
                              dataset="", seeds=""))
    return pd.DataFrame(lines)


def write_complexity(path: str | os.PathLike = "results/models/complexity.json",
                     names: Sequence[str] | None = None) -> Path:
    """Count every (or the named) registered model afresh and write the counts with provenance, so
    re-rendering the models notebook reads them instead of counting again (a minute on 2 CPUs)."""
    import time

    from ranlib.models.complexity import model_table
    from ranlib.training.provenance import collect

    path = resolve_path(path)
    started = time.perf_counter()
    entries = model_table(list(names) if names else None, use_cache=False)
    payload = {"models": entries,
               "counter": "torch.utils.flop_counter on a meta-device model (multiply-adds = FLOPs / 2), "
                          "at 224 for ImageNet models and 32 for CIFAR models",
               "counting_time_s": round(time.perf_counter() - started, 1),
               "provenance": collect("cpu")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def complexity_entries(names: Sequence[str] | None = None) -> list[dict]:
    """Count parameters and multiply-adds live (``python -m ranlib models``' table: shapes only,
    at the models' input size, 32 for CIFAR and 224 for ImageNet, where the paper counts FLOPs)."""
    from ranlib.models.complexity import model_table

    return model_table(list(names) if names else None)
