"""The campaign ledger, ``results/campaign_ledger.csv``.

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
