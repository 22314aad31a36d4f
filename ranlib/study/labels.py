"""How the book labels a measured number: its budget (profile, epochs, share of the paper's
schedule), where it ran (device, precision), on what data, and what it cost (CPU- or GPU-hours).

A budget is a share of the paper's schedule in training images: iterations x batch over the
recipe's (Section 4.1: 160k iterations at batch 64, about 205 CIFAR epochs; Section 4.2: 530k at
256 for ImageNet). Imagewoof has no paper schedule (the paper never trained on it): its budget is
named in epochs only. CPU- and GPU-hours are the device time of :func:`ranlib.study.ledger.device_minutes`
(what a campaign charged a run, else its own device hours): wall-clock hours of the whole device,
all cores of a CPU.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

from .ledger import device_minutes


def _number(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def schedule_share(model: str, dataset: str, iterations: Any, batch_size: Any) -> dict | None:
    """``{"epochs", "paper_epochs", "share"}`` of a run's schedule against its recipe's (the paper's,
    except Imagewoof's, whose ``paper_epochs`` and ``share`` are None); None without a length."""
    from ranlib.training.recipes import RECIPES, schedule_key

    iterations, batch_size = _number(iterations), _number(batch_size)
    if not iterations or not batch_size:
        return None
    key = schedule_key(model, dataset)
    recipe = RECIPES[key]
    images = iterations * batch_size
    epochs = images / recipe.nominal_train_size
    if key == "imagewoof":
        return {"epochs": epochs, "paper_epochs": None, "share": None}
    paper_images = recipe.iterations * recipe.batch_size
    return {"epochs": epochs, "paper_epochs": paper_images / recipe.nominal_train_size,
            "share": images / paper_images}


def _epochs(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def budget_text(profile: str, iterations: Any, batch_size: Any, model: str, dataset: str) -> str:
    """``"quick, 20 of the paper's 205 epochs (10 %)"``; smoke runs by their length only
    (``"smoke (6 it)"``); the profile alone without a known length."""
    share = schedule_share(model, dataset, iterations, batch_size)
    if share is None:
        return profile
    if profile == "smoke":
        return f"smoke ({int(float(iterations)):,} it)"
    if share["share"] is None:
        return f"{profile}, {_epochs(share['epochs'])} epochs"
    return (f"{profile}, {_epochs(share['epochs'])} of the paper's {_epochs(share['paper_epochs'])} epochs "
            f"({100 * share['share']:.0f} %)")


def budget_phrase(profile: str, model: str, dataset: str) -> str:
    """A profile's default budget in words: ``"the quick budget (20 of the paper's 205 epochs, 10 %)"``."""
    from ranlib.training.recipes import PROFILES, RECIPES, scaled_schedule, schedule_key

    key = schedule_key(model, dataset)
    budget = PROFILES[key][profile]
    steps = scaled_schedule(RECIPES[key], budget.batch_size, budget.fraction, budget.iterations)["iterations"]
    share = schedule_share(model, dataset, steps, budget.batch_size)
    if share["share"] is None:
        return f"the {profile} budget ({_epochs(share['epochs'])} epochs)"
    return (f"the {profile} budget ({_epochs(share['epochs'])} of the paper's {_epochs(share['paper_epochs'])} "
            f"epochs, {100 * share['share']:.0f} %)")


def record_budget(record: dict) -> str:
    """:func:`budget_text` of a results record."""
    config = record.get("config", {})
    return budget_text(config.get("profile", "unknown"), config.get("iterations"), config.get("batch_size"),
                       record["model"]["name"], record["dataset"].get("name") or config.get("dataset", ""))


def device_kind(record: dict) -> str:
    """``"GPU"`` for a CUDA run, else ``"CPU"``."""
    return "GPU" if record.get("provenance", {}).get("device_type") == "cuda" else "CPU"


def device_text(record: dict) -> str:
    """``"NVIDIA H200 GPU"``, ``"AMD EPYC CPU (2 cores)"``; a CPU model's trademark marks and the words
    "Processor" and "CPU" are dropped (``"Intel(R) Xeon(R) Processor"`` reads ``"Intel Xeon CPU (2 cores)"``);
    the tables keep the provenance's own string."""
    prov = record.get("provenance", {})
    name, kind = prov.get("device_name") or "?", device_kind(record)
    if kind == "CPU":
        name = " ".join(re.sub(r"\((r|tm)\)|\b(processor|cpu)\b", " ", name, flags=re.I).split()) or "?"
    count = prov.get("device_count")
    return f"{name} CPU ({count} cores)" if kind == "CPU" and count else f"{name} {kind}"


def hours(records: Sequence[dict]) -> dict[str, float]:
    """Device hours by kind, ``{"CPU": h, "GPU": h}`` (kinds with runs only)."""
    out: dict[str, float] = {}
    for record in records:
        kind = device_kind(record)
        out[kind] = out.get(kind, 0.0) + device_minutes(record) / 60
    return out


def hours_number(value: float) -> str:
    """Hours as the book prints them: ``"0"``, ``"< 0.01"``, ``"0.42"``, ``"12.4"``, ``"1,230"``."""
    if value == 0:
        return "0"
    if value < 0.005:
        return "< 0.01"
    return f"{value:.2f}" if value < 1 else f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def hours_text(records: Sequence[dict]) -> str:
    """``"12.4 CPU-hours"``, ``"0.50 GPU-hours and 3.1 CPU-hours"``; ``"nothing"`` without runs."""
    by_kind = sorted(hours(records).items(), key=lambda kv: kv[0] != "GPU")  # GPU first
    parts = [f"{hours_number(h)} {kind}-hours" for kind, h in by_kind]
    return " and ".join(parts) or "nothing"


def _listed(values: Sequence[str]) -> str:
    values = list(dict.fromkeys(v for v in values if v))
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " and " + values[-1] if values else "?"


def conditions(records: Sequence[dict]) -> str:
    """One sentence saying where a set of runs' numbers come from: how many runs, their budgets,
    device and precision, data, seeds and cost. ``""`` without runs."""
    if not records:
        return ""
    budgets = _listed(sorted({record_budget(r) for r in records}))
    devices = _listed(sorted({device_text(r) for r in records}))
    precisions = _listed(sorted({r["provenance"].get("precision") or "?" for r in records}))
    data = _listed(sorted({r["dataset"]["label"] for r in records}))
    seeds = sorted({r["provenance"].get("seed") for r in records if r["provenance"].get("seed") is not None})
    n = len(records)
    return (f"{n} run{'s' * (n != 1)} at {budgets}; trained on {devices} in {precisions}, on {data}, "
            f"seed{'s' * (len(seeds) != 1)} {', '.join(map(str, seeds))}; {hours_text(records)} in all.")


def record_profile(record: dict) -> str:
    """The budget profile a results record was trained at."""
    return record.get("config", {}).get("profile", "unknown")
