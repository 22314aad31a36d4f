"""Results files: one JSON per run at ``results/<experiment>/<run_name>.json``, and the names a
step benchmark's figures take in ``results/performance/``.

The schema (version 1) is the contract every reader (notebooks, book) relies on; the
writer and :func:`load_results` both validate it, so a malformed file fails loudly.
A run never silently overwrites another run's file.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from ranlib.errors import ResultsExistError, ResultsSchemaError
from ranlib.files import atomic_write

SCHEMA_VERSION = 1

# key -> required sub-keys (None: any value of the given type).
_REQUIRED: dict[str, tuple[type | tuple[type, ...], tuple[str, ...]]] = {
    "schema": (int, ()),
    "experiment": (str, ()),
    "run_name": (str, ()),
    "config": (dict, ()),
    "model": (dict, ("name", "kwargs", "params", "macs")),
    "dataset": (dict, ("name", "id", "label", "fingerprint", "num_train", "num_test")),
    "noise": ((dict, type(None)), ()),
    "final": (dict, ("top1_error", "top5_error", "test_loss")),
    "curve": (list, ()),
    "analysis": (dict, ("stage_response",)),
    "provenance": (dict, ("git_commit", "git_dirty", "hostname", "device_name", "device_type",
                          "torch", "cuda", "cudnn", "python", "precision", "seed", "started_at",
                          "finished_at", "command")),
    "cost": (dict, ("wall_time_s", "train_time_s", "images_per_s", "peak_memory_bytes",
                    "device_hours")),
}
_CURVE_KEYS = ("iteration", "epoch", "lr", "train_loss", "train_top1_error", "test_top1_error")
_NOISE_KEYS = ("level", "seed", "achieved_rate", "transition_matrix", "counts")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")


def validate(record: Any, source: str = "record") -> dict:
    """Check ``record`` against schema version 1; raise :class:`ResultsSchemaError` if it is not."""
    def fail(why: str):
        raise ResultsSchemaError(f"{source}: not a ranlib results record ({why})")

    if not isinstance(record, dict):
        fail("top level is not an object")
    for key, (kind, subkeys) in _REQUIRED.items():
        if key not in record:
            fail(f"missing key {key!r}")
        if not isinstance(record[key], kind):
            fail(f"{key!r} has type {type(record[key]).__name__}")
        missing = [k for k in subkeys if k not in record[key]]
        if missing:
            fail(f"{key!r} lacks {', '.join(missing)}")
    if record["schema"] != SCHEMA_VERSION:
        fail(f"schema {record['schema']!r}, expected {SCHEMA_VERSION}")
    if record["noise"] is not None and any(k not in record["noise"] for k in _NOISE_KEYS):
        fail(f"'noise' lacks one of {', '.join(_NOISE_KEYS)}")
    for i, point in enumerate(record["curve"]):
        if not isinstance(point, dict) or any(k not in point for k in _CURVE_KEYS):
            fail(f"curve point {i} lacks one of {', '.join(_CURVE_KEYS)}")
    top1 = record["final"]["top1_error"]
    if not isinstance(top1, (int, float)) or not (0.0 <= top1 <= 100.0):
        fail(f"final top1_error {top1!r} is not a percentage")
    if not isinstance(record["analysis"]["stage_response"], list):
        fail("analysis.stage_response is not a list")
    return record


def check_name(name: str, what: str) -> str:
    """Experiment and run names become path components: keep them simple."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        raise ResultsSchemaError(f"{what} {name!r} is not a valid name (letters, digits and . _ = + - "
                                 "only, not starting with a dot)")
    return name


def results_path(results_dir: str | os.PathLike, experiment: str, run_name: str) -> Path:
    """Where a run's results file lives."""
    return Path(results_dir) / check_name(experiment, "experiment") / f"{check_name(run_name, 'run name')}.json"


def ensure_writable(path: str | os.PathLike, overwrite: bool) -> None:
    """Refuse (one clear line) to replace an existing file unless ``overwrite``; the line never
    advises a flag that would destroy the file."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ResultsExistError(f"{path} already exists and is kept; choose another name (or move it away first "
                                "to replace it)")


def _json_default(value: Any):
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_results(record: dict, results_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Validate and write ``record`` atomically to ``results/<experiment>/<run_name>.json``."""
    record = _as_json(record)
    path = results_path(results_dir, record["experiment"], record["run_name"])
    ensure_writable(path, overwrite)
    return write_record(record, path)


def _as_json(record: dict) -> dict:
    """``record`` as JSON will hold it (numpy/torch numbers as numbers, NaN as null), validated."""
    return validate(_finite(json.loads(json.dumps(record, default=_json_default))))


def write_record(record: dict, path: str | os.PathLike) -> Path:
    """Validate ``record`` and write it atomically to ``path``."""
    record = _as_json(record)
    with atomic_write(path, "w") as f:
        json.dump(record, f, indent=1, sort_keys=False)
        f.write("\n")
    return Path(path)


def load_results(path_or_dir: str | os.PathLike) -> list[dict]:
    """Read one results file, or every ``*.json`` under a folder (recursively, sorted by path).

    Each record is validated; a malformed file raises :class:`ResultsSchemaError` naming it.
    Files whose name starts with ``.`` (temporary files) and benchmark figures written by
    ``python -m ranlib.bench --json`` (a top-level ``"benchmark"`` key) are skipped.
    """
    root = Path(path_or_dir)
    if root.is_dir():
        files = sorted(p for p in root.rglob("*.json") if not p.name.startswith("."))
    elif root.is_file():
        files = [root]
    else:
        raise ResultsSchemaError(f"no results at {root} (no such file or folder)")
    records = []
    for file in files:
        try:
            record = json.loads(file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ResultsSchemaError(f"{file}: cannot be read as JSON ({exc})") from None
        if isinstance(record, dict) and "benchmark" in record and "schema" not in record:
            continue
        records.append(validate(record, source=str(file)))
    return records


def benchmark_file_name(record: dict) -> str:
    """A step benchmark's file in ``results/performance/``: model, input size, batch and the setup
    (``cifar_attention92-32-b64-bf16-cl.json``; ``-xN`` for N concurrent processes)."""
    r = record["ranlib"]
    parts = [record["model"], str(record["input_size"]), f"b{record['batch_size']}", r["precision"],
             "cl" if r["channels_last"] else "nchw"]
    parts += [flag for flag, on in (("gc", r["grad_checkpointing"]), ("compiled", r["compile"]),
                                    (r.get("compile_mode"), r.get("compile_mode"))) if on]
    if "concurrent" in record:  # a file of its own beside the one-process measurement
        parts.append(f"x{record['concurrent']['processes']}")
    return "-".join(parts) + ".json"


def setup_text(r: dict) -> str:
    """How a path was measured: ``"gpu_batches, bf16, channels_last, compiled (default)"``."""
    compiled = f", compiled ({r.get('compile_mode') or 'default'})" if r["compile"] else ""
    return (f"{r['data']}, {r['precision']}, {'channels_last' if r['channels_last'] else 'NCHW'}{compiled}"
            f"{', grad checkpointing' if r['grad_checkpointing'] else ''}")
