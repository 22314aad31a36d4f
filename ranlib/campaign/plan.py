"""A campaign's plan: the runs of the chosen experiments still to train, seed by seed, so that every
table gets its first seed before any table gets its second (:func:`ranlib.study.planning.plan_runs`).
A run is left out when its results exist or another experiment trains it anyway
(:func:`ranlib.study.planning.find_training`: Attention-56 with the default switches is a row of
Tables 1, 3 and 4).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ranlib.errors import RanlibError
from ranlib.paths import cache_dir
from ranlib.study.experiments import EXPERIMENTS, experiment
from ranlib.study.planning import find_training, plan_runs, same_training
from ranlib.training.results import results_path

# The experiments trained on CIFAR, in the book's order (ImageNet needs data this project lacks).
CIFAR_EXPERIMENTS = tuple(name for name, exp in EXPERIMENTS.items() if exp.task == "cifar")


def default_checkpoints() -> Path:
    """Where a campaign's checkpoints go unless told: outside any checkout, so that a later campaign
    on this machine resumes them whatever the checkout does (the user's cache, :func:`ranlib.paths.cache_dir`)."""
    return cache_dir() / "checkpoints"


@dataclass
class Plan:
    runs: list[dict]  # plan_runs configs, in launch order
    skipped: list[tuple[dict, str]] = field(default_factory=list)  # (config, why)


def plan_campaign(experiments: Sequence[str], *, profile: str, seeds: Sequence[int], dataset: str,
                  data_root: str, results_dir: str | os.PathLike = "results",
                  checkpoint_dir: str | os.PathLike = "checkpoints", device: str = "auto",
                  rows: Sequence[str] | None = None, overrides: dict | None = None) -> Plan:
    """The runs still to train, seed-major, without duplicates or runs that have results.

    ``rows`` keeps only these row keys (of any of the experiments).
    """
    unknown = [name for name in experiments if name not in EXPERIMENTS]
    if unknown:
        raise RanlibError(f"unknown experiment(s) {', '.join(unknown)}; valid: {', '.join(EXPERIMENTS)}")
    if rows:
        known = {row.key for name in experiments for row in experiment(name).rows}
        missing = sorted(set(rows) - known)
        if missing:
            raise RanlibError(f"row(s) {', '.join(missing)} are in none of {', '.join(experiments)}; a row is "
                              "a run's name in `python -m ranlib.campaign plan` without -PROFILE-sSEED")
    plan = Plan([])
    for seed in seeds:
        for name in experiments:
            picked = [r.key for r in experiment(name).rows if r.key in rows] if rows else None
            if picked == []:
                continue
            configs = plan_runs(name, profile=profile, seeds=[seed], dataset=dataset,
                                data_root=data_root, results_dir=results_dir,
                                checkpoint_dir=checkpoint_dir, device=device, rows=picked,
                                overrides=overrides)
            for config in configs:
                why = _why_skip(config, plan.runs)
                if why:
                    plan.skipped.append((config, why))
                else:
                    plan.runs.append(config)
    return plan


def _why_skip(config: dict, planned: list[dict]) -> str | None:
    if results_path(config["results_dir"], config["experiment"], config["run_name"]).is_file():
        return "results exist"
    done = find_training(config, config["results_dir"])
    if done is not None:
        return f"trained as {done['experiment']}/{done['run_name']}"
    twin = next((p for p in planned if same_training(config, {"config": p})), None)
    if twin is not None:
        return f"same training as {twin['experiment']}/{twin['run_name']}"
    return None
