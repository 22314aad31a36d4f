"""The campaign ledger, ``results/campaign_ledger.csv``, and the device time a run cost.

:mod:`ranlib.campaign` appends one line per run and sitting, with the device seconds it charged
the run (every second it held the device split equally between the trainings running in it).
The study's tables read it back here, so that they need not import the campaign.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

LEDGER_NAME = "campaign_ledger.csv"
LEDGER_FIELDS = ("campaign_started_at", "experiment", "run_name", "model", "profile", "seed", "status",
                 "started_at", "finished_at", "wall_s", "device_s", "max_concurrent", "device",
                 "device_name", "git_commit", "exit_code", "message")


def append_ledger(path: Path, lines: Sequence[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LEDGER_FIELDS)
        if new:
            writer.writeheader()
        writer.writerows(lines)


def read_ledger(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def charged_device_s(root: Path) -> dict[tuple[str, str], float]:
    """(experiment, run name) -> the device seconds the campaign ledger charged a run it finished,
    over all its sittings (shared time split between the runs sharing it)."""
    charged: dict[tuple[str, str], float] = {}
    finished = set()
    for line in read_ledger(root / LEDGER_NAME):
        key = (line["experiment"], line["run_name"])
        charged[key] = charged.get(key, 0.0) + float(line["device_s"])
        if line["status"] == "finished":
            finished.add(key)
    return {key: seconds for key, seconds in charged.items() if key in finished}


def with_charged_time(records: list[dict], charged: dict[tuple[str, str], float]) -> list[dict]:
    """Records of runs a campaign trained get ``"charged_device_s"``, which :func:`device_minutes`
    prefers to the run's own wall time."""
    return [{**r, "charged_device_s": charged[key]} if (key := (r["experiment"], r["run_name"])) in charged
            else r for r in records]


def device_minutes(record: dict) -> float:
    """The device minutes a run cost: what a campaign charged it, else its own device hours or
    wall time."""
    if "charged_device_s" in record:  # trained by a campaign, perhaps sharing the device
        return record["charged_device_s"] / 60.0
    cost = record.get("cost") or {}
    if cost.get("device_hours") is not None:
        return 60.0 * float(cost["device_hours"])
    return float(cost.get("wall_time_s") or 0.0) / 60.0
