"""Carrying what a sitting produced from the GPU machine back into the checkout: :func:`pack`
archives results files, the ledger, the runs' metrics and logs and the checkpoints asked for;
:func:`unpack` puts them in place and never replaces a different results file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Sequence

from ranlib.errors import CheckpointError, RanlibError, ResultsExistError
from ranlib.files import atomic_write
from ranlib.study.experiments import EXPERIMENTS
from ranlib.study.ledger import LEDGER_NAME, append_ledger, read_ledger
from ranlib.training.checkpoint import CHECKPOINT_NAME, load_checkpoint
from ranlib.training.results import validate

from .runner import LOG_NAME

# Results folders written outside training runs that a sitting on a GPU machine also brings back.
EXTRA_RESULTS = ("performance", "jpeg_gap")


def pack(out: Path, *, results_dir: Path, checkpoint_dir: Path, experiments: Sequence[str],
         checkpoints: Sequence[str] = ()) -> list[str]:
    """A ``.tar.gz`` of the experiments' results files, the ledger, every run's metrics and log,
    and the checkpoints of the runs named in ``checkpoints`` (``experiment/run_name``)."""
    members = []
    for name in experiments:  # run records, benchmark files and profiles, small figure data (.npz)
        members += [(p, Path("results") / p.relative_to(results_dir))
                    for p in sorted((results_dir / name).rglob("*")) if p.suffix in (".json", ".npz")]
        members += [(p, Path("checkpoints") / p.relative_to(checkpoint_dir))
                    for p in sorted((checkpoint_dir / name).glob("*/*"))
                    if p.name in ("metrics.jsonl", LOG_NAME)]
    ledger = results_dir / LEDGER_NAME
    if ledger.is_file():
        members.append((ledger, Path("results") / LEDGER_NAME))
    for run in checkpoints:
        path = checkpoint_dir / run / CHECKPOINT_NAME
        if not path.is_file():
            raise RanlibError(f"no checkpoint {path} to pack; name runs as experiment/run_name")
        members.append((path, Path("checkpoints") / run / CHECKPOINT_NAME))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for source, name in members:
            tar.add(source, arcname=str(name))
    os.replace(tmp, out)
    return [str(name) for _, name in members]


def unpack(archive: Path, *, results_dir: Path, checkpoint_dir: Path) -> dict:
    """Put a :func:`pack` archive's files in place: new results files are added (identical ones
    skipped; a different one with the same name is an error, nothing is replaced), ledger lines
    not yet in the local ledger are appended, metrics, logs and checkpoints are written, but never
    over newer ones (:func:`_newer_of`: a local checkpoint or metrics.jsonl that reached a later
    iteration is kept, counted in ``kept``)."""
    counts = {"results": 0, "identical": 0, "ledger_lines": 0, "other": 0, "kept": 0}
    try:
        tar = tarfile.open(archive, "r:gz")
    except (tarfile.TarError, OSError) as exc:
        raise RanlibError(f"{archive} is not a campaign archive ({exc}); give the .tar.gz that `campaign pack` "
                          "or a sitting wrote") from None
    with tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        for m in members:
            parts = Path(m.name).parts
            if parts[0] not in ("results", "checkpoints") or ".." in parts or Path(m.name).is_absolute():
                raise RanlibError(f"{archive}: unexpected member {m.name!r}; not a campaign archive")
        conflicts = []
        for m in members:  # check every results file before writing any
            if m.name.startswith("results/") and m.name.endswith(".json"):
                target = results_dir / Path(m.name).relative_to("results")
                data = tar.extractfile(m).read()
                try:
                    record = json.loads(data)
                except ValueError as exc:
                    raise RanlibError(f"{archive}:{m.name} is not JSON ({exc})") from None
                if Path(m.name).parts[1] in EXPERIMENTS:  # run records; benchmarks have their own layout
                    validate(record, source=f"{archive}:{m.name}")
                if target.exists() and target.read_bytes() != data:
                    conflicts.append(str(target))
        if conflicts:
            raise ResultsExistError(f"{len(conflicts)} results file(s) differ from the archive's, e.g. "
                                    f"{conflicts[0]}; nothing was unpacked (move them away to take the archive's)")
        for m in members:
            data = tar.extractfile(m).read()
            relative = Path(m.name).relative_to(Path(m.name).parts[0])
            if m.name == f"results/{LEDGER_NAME}":
                theirs = list(csv.DictReader(io.StringIO(data.decode())))
                ours = {tuple(line.values()) for line in read_ledger(results_dir / LEDGER_NAME)}
                new = [line for line in theirs if tuple(line.values()) not in ours]
                append_ledger(results_dir / LEDGER_NAME, new)
                counts["ledger_lines"] += len(new)
                continue
            target = (results_dir if m.name.startswith("results/") else checkpoint_dir) / relative
            if m.name.endswith(".json") and m.name.startswith("results/"):
                if target.exists():
                    counts["identical"] += 1
                    continue
                counts["results"] += 1
            elif m.name.startswith("checkpoints/") and target.exists():
                data = _newer_of(target, data)
                if data is None:
                    counts["kept"] += 1
                    continue
                counts["other"] += 1
            else:
                counts["other"] += 1
            with atomic_write(target) as f:
                f.write(data)
    return counts


def _newer_of(target: Path, theirs: bytes) -> bytes | None:
    """What ``target`` (a run's checkpoint, metrics or log that exists here) should become from the
    archive's ``theirs``, or None to keep it: a checkpoint or metrics.jsonl only when the archive's
    reaches a later iteration; a log extended (the archive's when it continues ours, else ours then
    theirs, never shortened)."""
    ours = target.read_bytes()
    if ours == theirs:
        return None
    if target.name == LOG_NAME:
        if theirs.startswith(ours):
            return theirs
        return None if ours.startswith(theirs) else ours + theirs
    return theirs if _reached(theirs, target.name) > _reached(ours, target.name) else None


def _reached(content: bytes, name: str) -> int:
    """The iteration a checkpoint (its ``iteration``) or a metrics.jsonl (its last line's) reached;
    -1 when it cannot be read (a damaged file is replaced)."""
    if name != "metrics.jsonl":
        with tempfile.NamedTemporaryFile(suffix=".pt") as tmp:
            tmp.write(content)
            tmp.flush()
            try:
                return int(load_checkpoint(tmp.name)["iteration"])
            except (CheckpointError, KeyError, TypeError, ValueError):
                return -1
    iterations = [-1]
    for line in content.decode(errors="replace").splitlines():
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            iterations.append(int(json.loads(line).get("iteration", -1)))
    return max(iterations)
