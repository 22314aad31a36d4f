"""What the study cost: device time per chapter from the results files (or, for runs a campaign
trained, what its ledger charged them), the campaign ledger per run status and per sitting, and
these ledgers as the Compute page shows them (hours, chapters by title)."""

from __future__ import annotations

import json
import os

import pandas as pd

from ranlib.paths import resolve_path
from ranlib.training.results import load_results

from .experiments import EXPERIMENTS, OTHER_EXPERIMENTS
from .labels import record_profile
from .ledger import LEDGER_NAME, charged_device_s, device_minutes, read_ledger, with_charged_time
from .verdicts import PROFILE_RANK


def compute_ledger(results_root: str | os.PathLike = "results") -> pd.DataFrame:
    """Device time per experiment, from the ``cost`` fields of every results record (or, for
    runs a campaign trained, the device time its ledger charged them).

    Columns: experiment, runs, gpu_minutes (CUDA runs), cpu_minutes (the rest), devices,
    profiles; a last line ``total``.
    """
    root = resolve_path(results_root)
    charged = charged_device_s(root)
    lines = []
    names = list(EXPERIMENTS) + [n for n in OTHER_EXPERIMENTS if n not in EXPERIMENTS]
    for name in names:
        folder = root / name
        files = sorted(p for p in folder.glob("*.json") if not p.name.startswith(".")) \
            if folder.is_dir() else []
        # complexity.json and benchmark files are not run records: only those with "cost".
        records = with_charged_time([r for p in files if "cost" in json.loads(p.read_text())
                                      for r in load_results(p)], charged)
        gpu = sum(device_minutes(r) for r in records
                  if r["provenance"].get("device_type") == "cuda")
        cpu = sum(device_minutes(r) for r in records
                  if r["provenance"].get("device_type") != "cuda")
        lines.append(dict(
            experiment=name, runs=len(records), gpu_minutes=round(gpu, 2),
            cpu_minutes=round(cpu, 2),
            devices=", ".join(sorted({r["provenance"].get("device_name") or "?"
                                      for r in records})),
            profiles=", ".join(sorted({record_profile(r) for r in records},
                                      key=lambda p: PROFILE_RANK.get(p, 9)))))
    ledger = pd.DataFrame(lines)
    total = dict(experiment="total", runs=int(ledger["runs"].sum()),
                 gpu_minutes=round(float(ledger["gpu_minutes"].sum()), 2),
                 cpu_minutes=round(float(ledger["cpu_minutes"].sum()), 2), devices="",
                 profiles="")
    return pd.concat([ledger, pd.DataFrame([total])], ignore_index=True)


def chapter_title(name: str) -> str:
    """An experiment's chapter title (``"Attention types (Table 1)"``); other names as they are."""
    return EXPERIMENTS[name].title if name in EXPERIMENTS else {"models": "Model size and cost (Tables 2, 6, 7)",
                                                                 "performance": "Performance"}.get(name, name)


# Ledger columns as a public page names them: hours, not the ledger's minutes.
_HOURS = {"gpu_minutes": "GPU-hours", "cpu_minutes": "CPU-hours", "device_minutes": "device-hours",
          "wall_minutes": "wall-clock hours", "device minutes": "device-hours"}


_NAMES = {"experiment": "chapter", "devices": "devices", "profiles": "budgets", "sittings": "campaign sessions",
          "max_concurrent": "most at once", "device_name": "device", "sitting started (UTC)": "session started (UTC)"}


def hours_view(frame: pd.DataFrame) -> pd.DataFrame:
    """A ledger table (:func:`compute_ledger`, :func:`campaign_ledger`, :func:`sittings_table`) as the
    Compute page shows it: minutes as hours, chapters by their titles, columns in words."""
    view = frame.copy()
    for column in _HOURS:
        if column in view:
            view[column] = view[column].astype(float) / 60
    if "experiment" in view:
        view["experiment"] = view["experiment"].map(chapter_title)
    return view.rename(columns={**_HOURS, **_NAMES})


HOURS_FORMATS = {label: "{:.2f}" for label in _HOURS.values()}


def campaign_ledger(results_root: str | os.PathLike = "results") -> pd.DataFrame:
    """Device time ``ranlib.campaign`` charged, per experiment and run status, from its ledger.

    The campaign splits every second it held the device equally between the trainings running
    in it, so ``device_minutes`` adds up to the time the device was held (unlike the sum of the
    runs' wall times when several shared it). Empty when no campaign ran.
    """
    columns = ["experiment", "status", "sittings", "device_minutes", "wall_minutes", "max_concurrent",
               "device_name"]
    lines = read_ledger(resolve_path(results_root) / LEDGER_NAME)
    if not lines:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(lines).astype({"device_s": float, "wall_s": float, "max_concurrent": int})
    out = frame.groupby(["experiment", "status"], sort=False).agg(
        sittings=("run_name", "size"), device_minutes=("device_s", lambda v: round(v.sum() / 60, 2)),
        wall_minutes=("wall_s", lambda v: round(v.sum() / 60, 2)), max_concurrent=("max_concurrent", "max"),
        device_name=("device_name", lambda v: ", ".join(sorted(set(v))))).reset_index()
    return out[columns]


def sittings_table(results_root: str | os.PathLike = "results") -> pd.DataFrame:
    """One line per campaign sitting (``python -m ranlib.campaign run`` or ``sitting``): when it
    started, on which device, its runs by how they ended, and the device minutes it charged, which
    add up to the time it held the device. Empty when no campaign ran."""
    columns = ["sitting started (UTC)", "device", "finished", "interrupted", "failed", "device minutes"]
    lines = read_ledger(resolve_path(results_root) / LEDGER_NAME)
    if not lines:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(lines).astype({"device_s": float})
    out = frame.groupby("campaign_started_at", sort=True).agg(
        device=("device_name", lambda v: ", ".join(sorted(set(v)))),
        **{status: ("status", lambda v, s=status: int((v == s).sum()))
           for status in ("finished", "interrupted", "failed")},
        device_minutes=("device_s", lambda v: round(v.sum() / 60, 2))).reset_index()
    out = out.rename(columns={"campaign_started_at": "sitting started (UTC)", "device_minutes": "device minutes"})
    return out[columns]
