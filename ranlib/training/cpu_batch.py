"""The batch a CPU trains fastest at: measured once per machine, cached, the same ever after.

On a CPU the speed of a step depends on the batch in ways no rule predicts (caches, how well two
threads share a small layer): on the project's 2-core EPYC, Attention-56 (bf16, channels_last, 2 threads)
ran at 156, 175 and 169 images/s at batch 64, 128 and 256 (``results/performance/cpu-cifar_attention56.json``),
and at 335, 366 and 316 in an earlier measurement. :func:`fastest_batch` times a few training
steps at each candidate batch and keeps the fastest. The rates are cached in
``<user cache>/ranlib/cpu-batch.json`` (:func:`ranlib.paths.cache_dir`) under a key naming the
CPU, torch's thread count and version, the model, precision and memory format, so every later
run on the machine resolves the same batch without measuring (a lock keeps two processes from
measuring at once), and a run on another machine measures its own. ``ranlib.training.config.resolve``
asks it for profiles with CPU candidates (``Profile.cpu_batches``) and records the figures in the
run's ``batch_rule``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ranlib.files import atomic_write
from ranlib.paths import cache_dir

from . import provenance
from .runtime import algorithms

CACHE_NAME = "cpu-batch.json"
WARMUP_STEPS = 1
TIMED_STEPS = 3


def step_seconds(model: str, *, batch_size: int, precision: str, channels_last: bool, steps: int = TIMED_STEPS,
                 warmup: int = WARMUP_STEPS, input_size: int = 32, num_classes: int = 10, seed: int = 0) -> dict:
    """Seconds of the training loop's step on this CPU, ``{"wall": [...], "cpu": [...]}`` (wall clock and
    the process's CPU time) for each of ``steps`` steps after ``warmup`` untimed ones:
    :class:`ranlib.training.step.TrainStep` of the model as the loop builds it (one member,
    :func:`ranlib.models.fused.fuse`), Nesterov SGD, bf16 autocast or fp32, channels_last or NCHW,
    deterministic algorithms as ``ranlib train`` uses them on a CPU, on synthetic
    ``(batch_size, 3, input_size, input_size)`` batches."""
    import ranlib
    from ranlib.models.fused import fuse

    from .step import TrainStep

    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(seed)
    net = fuse([ranlib.create_model(model, num_classes=num_classes)]).to(memory_format=memory_format).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    step = TrainStep(net, net, optimizer, windows=[torch.zeros(1, 3, dtype=torch.float64)], precision=precision)
    x = torch.randn(batch_size, 3, input_size, input_size).contiguous(memory_format=memory_format)
    y = torch.randint(0, num_classes, (batch_size, 1))
    times = {"wall": [], "cpu": []}
    with algorithms(True):
        for i in range(warmup + steps):
            wall, cpu = time.perf_counter(), time.process_time()
            step(x, y)
            if i >= warmup:
                times["wall"].append(time.perf_counter() - wall)
                times["cpu"].append(time.process_time() - cpu)
    return times


def step_images_per_s(model: str, *, batch_size: int, **kwargs) -> float:
    """Images/s of :func:`step_seconds`'s steps: ``batch_size`` over the median wall-clock step."""
    return batch_size / statistics.median(step_seconds(model, batch_size=batch_size, **kwargs)["wall"])


def cache_key(model: str, precision: str, channels_last: bool) -> str:
    """What a measured rate belongs to: CPU, threads, torch, model, precision, memory format."""
    threads = torch.get_num_threads()
    return (f"{provenance.cpu_name()} / {threads} thread{'s' if threads > 1 else ''} / torch {torch.__version__} / {model} / "
            f"{precision} / {'channels_last' if channels_last else 'NCHW'}")


def fastest_batch(model: str, *, precision: str, channels_last: bool, candidates: Sequence[int],
                  measure: Callable[..., float] | None = None) -> dict:
    """The fastest of ``candidates`` for ``model`` on this CPU, from the cache or measured now.

    Returns ``{"batch_size", "images_per_s": {batch: rate}, "measured_at", "key"}``; ``measure``
    (default :func:`step_images_per_s`) is called as ``measure(model, batch_size=, precision=,
    channels_last=)`` for each candidate the cache lacks. An unreadable cache is measured again.
    """
    measure = measure or step_images_per_s
    key = cache_key(model, precision, channels_last)
    path = cache_dir() / CACHE_NAME
    with _locked(path.with_suffix(".lock")):
        entries = _read(path)
        entry = entries.get(key) or {"images_per_s": {}}
        missing = [b for b in candidates if str(b) not in entry["images_per_s"]]
        if missing:
            print(f"ranlib: timing {model}'s training step at batch {', '.join(map(str, missing))} on this CPU, "
                  f"once (cached in {path})", file=sys.stderr, flush=True)
            for batch in missing:
                entry["images_per_s"][str(batch)] = measure(model, batch_size=batch, precision=precision,
                                                            channels_last=channels_last)
            entry["measured_at"] = provenance.utc_now()
            entries[key] = entry
            _write(path, entries)
    rates = {int(b): float(entry["images_per_s"][str(b)]) for b in candidates}
    return {"batch_size": max(rates, key=rates.get), "images_per_s": rates, "measured_at": entry["measured_at"],
            "key": key}


def rule_text(choice: dict) -> str:
    """The ``batch_rule`` of a run whose batch :func:`fastest_batch` chose."""
    rates = ", ".join(f"{b}: {r:.0f}" for b, r in choice["images_per_s"].items())
    return (f"fastest on this CPU of {', '.join(map(str, choice['images_per_s']))} (images/s {rates}; "
            f"{choice['key']}; measured {choice['measured_at']})")


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read(path: Path) -> dict:
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _write(path: Path, entries: dict) -> None:
    with atomic_write(path, "w") as f:
        f.write(json.dumps(entries, indent=1, sort_keys=True) + "\n")
