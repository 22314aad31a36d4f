"""How long a planned run still takes on this machine, and how far it got.

A campaign starts a run only if it fits what is left of its budget (or its checkpoint is kept for
a later campaign), ``campaign plan --device cpu`` prints every run's CPU-hours, and ``campaign
status`` gives the running one's ETA; all three ask :class:`Estimator`. Its figure for a run is,
best first:

1. the run's own images/s (the ``train`` lines of the ``metrics.jsonl`` beside its checkpoint):
   for the run training now, its latest :data:`RECENT_WINDOWS` log windows; else the median window
   of all its sittings;
2. the multiply-add rate of the other runs in the same checkpoint folder that trained with the
   same settings (device type, precision, memory format, batch), each at its median window: the
   rate fitted on this machine;
3. on a CPU, the rate recorded on the project's machine (:data:`CPU_STEP_IMAGES_PER_S`);
   on CUDA without a measurement there is no estimate (None).

Each is the run's training steps and evaluations at that rate (:func:`ranlib.campaign.sitting.estimate_group_s`),
less the share its checkpoint has already done.

Why windows: a ``train`` line's images/s is the sitting's running average. A sitting that began
beside other work (a kernel that groups CPU time by session gives each an equal share, whatever
the campaign's nice value) keeps a low average for hours after the machine went quiet; the images/s
of each window between two lines, recovered from consecutive averages, does not.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ranlib.training.checkpoint import CHECKPOINT_NAME

# Attention-56's bare training step (Nesterov SGD, synthetic 32x32 images) in images/s per
# (precision, channels_last), as ``results/performance/cpu-cifar_attention56.json`` records it
# (``python -m ranlib.bench --device cpu``, quiet, 2 threads): AMD EPYC, 2 cores with AVX-512 and
# native bf16, torch 2.14.1; bf16 with channels_last at batch 128 (64 and 256 were within 11 %),
# the others at batch 256. An earlier measurement on this kind of machine had Attention-92 and
# ResNet-164 at Attention-56's multiply-add rate within 4 %, so one rate per multiply-add serves
# every CIFAR network. ``test_the_recorded_cpu_rates_are_the_committed_benchmark_s`` keeps these
# equal to the file.
CPU_STEP_IMAGES_PER_S = {("fp32", False): 37.4, ("fp32", True): 67.4, ("bf16", False): 103.7,
                         ("bf16", True): 175.0}
CPU_RATE_MODEL = "cifar_attention56"
# The real loop (augmentation, evaluation, logging; 40 iterations on the JPEG copy) against the bare
# step in that file: 192 against 189 images/s.
CPU_LOOP_SHARE = 1.02
# Settings a measured rate is reused for: a run that trains with other ones runs at another speed.
_SPEED_SETTINGS = ("precision", "channels_last", "batch_size")
# Log windows (``log_every`` iterations each) the running run's current rate is the median of.
RECENT_WINDOWS = 10


@dataclass(frozen=True)
class Progress:
    """What a run's files say: the iteration its checkpoint resumes from, its length, the latest
    sitting's last logged iteration and settings, and two rates in images/s (None before the
    first ``train`` line): ``images_per_s``, the median of the latest sitting's last
    :data:`RECENT_WINDOWS` log windows (its speed now), and ``typical_images_per_s``, the median
    window of every sitting that trained with the latest one's speed settings."""

    checkpoint_iteration: int
    iterations: int | None
    iteration: int | None = None
    images_per_s: float | None = None
    typical_images_per_s: float | None = None
    settings: dict | None = None  # the latest sitting's resolved configuration


def window_rates(start_iteration: int, batch_size: int, lines: Sequence[tuple[int, float]]) -> list[float]:
    """Images/s in each window between a sitting's consecutive ``train`` lines.

    ``lines`` are (iteration, images/s) pairs, the images/s being the sitting's running average
    since ``start_iteration`` (as :mod:`ranlib.training.loop` logs it): the training
    seconds up to a line are ``(iteration - start_iteration) * batch_size / images_per_s``.
    The first window runs from the sitting's start. Windows without training time are skipped.
    """
    rates, previous_iteration, previous_s = [], start_iteration, 0.0
    for iteration, average in lines:
        if not average or average <= 0:
            continue
        seconds = (iteration - start_iteration) * batch_size / average
        if seconds > previous_s and iteration > previous_iteration:
            rates.append((iteration - previous_iteration) * batch_size / (seconds - previous_s))
        previous_iteration, previous_s = iteration, seconds
    return rates


def run_dir(config: dict) -> Path:
    return Path(config["checkpoint_dir"]) / config["experiment"] / config["run_name"]


def checkpoint_iteration(path: Path) -> int:
    """The iteration the checkpoint at ``path`` resumes from; 0 without one (or an unreadable one:
    the training itself then says what is wrong)."""
    import torch

    if not path.is_file():
        return 0
    try:  # mmap: the tensors are not read, only the small entries
        return int(torch.load(path, map_location="cpu", weights_only=False, mmap=True)["iteration"])
    except Exception:  # noqa: BLE001 - any damage means "nothing to resume" here
        return 0


def read_progress(folder: Path) -> Progress:
    """A run folder's :class:`Progress` (its checkpoint and ``metrics.jsonl``)."""
    done = checkpoint_iteration(folder / CHECKPOINT_NAME)
    sittings: list[tuple[dict, int, list[tuple[int, float]]]] = []  # (config, start iteration, train lines)
    metrics = folder / "metrics.jsonl"
    lines = metrics.read_text(errors="replace").splitlines() if metrics.is_file() else []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if event.get("event") in ("start", "resume"):
            sittings.append((event.get("config") or {}, int(event.get("iteration") or 0), []))
        elif event.get("event") == "train" and sittings and event.get("iteration") is not None:
            sittings[-1][2].append((int(event["iteration"]), event.get("images_per_s")))
    if not sittings:
        return Progress(done, None)
    settings, start, last_lines = sittings[-1]
    batch = int(settings.get("batch_size") or 0)
    recent = window_rates(start, batch, last_lines)[-RECENT_WINDOWS:]
    windows = [rate for config, begin, train in sittings if _speed(config) == _speed(settings)
               for rate in window_rates(begin, int(config.get("batch_size") or 0), train)]
    last = last_lines[-1] if last_lines else (None, None)
    return Progress(done, settings.get("iterations"), last[0], statistics.median(recent) if recent else None,
                    statistics.median(windows) if windows else None, settings)


class Estimator:
    """Seconds a planned run (a :func:`ranlib.study.planning.plan_runs` config) still needs on ``device``
    (a ``torch.device``); see the module docstring for where the rate comes from. Figures are
    cached until :meth:`forget` (call it when a run ends: the measurements change)."""

    def __init__(self, device):
        self.device = device
        self._cache: dict[str, float | None] = {}
        self._rates: dict[Path, list[tuple[dict, float]]] = {}

    def forget(self) -> None:
        self._cache.clear()
        self._rates.clear()

    def settled(self, config: dict):
        """The config as the training will run it here (schedule and device defaults filled in)."""
        from ranlib.training.config import TrainConfig, resolve
        from ranlib.training.loop import _settle_runtime
        from ranlib.training.runtime import Dist

        c = resolve(TrainConfig(**config))
        _settle_runtime(c, self.device, Dist())
        return c

    def seconds(self, config: dict, *, iteration: int | None = None) -> float | None:
        """Seconds the run still needs from its checkpoint (start-up included), or, for a run
        training now, from ``iteration`` (its latest logged one)."""
        key = json.dumps([config, iteration], sort_keys=True, default=str)
        if key not in self._cache:
            self._cache[key] = self._seconds(config, iteration)
        return self._cache[key]

    def group_s(self, group: Sequence[dict]) -> float | None:
        """A fused group's members train in lockstep: the group takes as long as its first member."""
        return self.seconds(group[0])

    def _seconds(self, config: dict, iteration: int | None) -> float | None:
        from ranlib.models.complexity import model_counts

        from .sitting import GROUP_STARTUP_S, StepModel, estimate_group_s

        c = self.settled(config)
        macs = 3 * model_counts(c.model, c.model_kwargs, input_size=c.train_size)["macs"]  # per training image
        progress = read_progress(run_dir(config))
        measured = progress.images_per_s if iteration is not None else progress.typical_images_per_s
        mine = _speed(progress.settings) == _speed(c.to_dict()) and measured
        rate = mine * macs if mine else self.macs_per_s(c, Path(config["checkpoint_dir"]))
        if rate is None:
            return None
        whole = estimate_group_s([config], StepModel(0.0, rate)) - GROUP_STARTUP_S
        done = progress.checkpoint_iteration if iteration is None else iteration
        left = whole * (1.0 - min(done, c.iterations) / c.iterations)
        return left if iteration is not None else GROUP_STARTUP_S + left

    def macs_per_s(self, c, checkpoint_dir: Path) -> float | None:
        """Training multiply-adds per second for settings ``c``: fitted to the runs measured in
        ``checkpoint_dir`` with the same settings (their median), else the recorded CPU rate."""
        from ranlib.models.complexity import model_counts

        if checkpoint_dir not in self._rates:
            measured = []
            for folder in sorted(checkpoint_dir.glob("*/*")) if checkpoint_dir.is_dir() else []:
                p = read_progress(folder)
                here = p.settings and p.settings.get("device", "auto") in ("auto", self.device.type)
                if p.typical_images_per_s and here:
                    counts = model_counts(p.settings["model"], p.settings.get("model_kwargs"),
                                          input_size=p.settings.get("train_size"))
                    measured.append((_speed(p.settings), p.typical_images_per_s * 3 * counts["macs"]))
            self._rates[checkpoint_dir] = measured
        same = [rate for speed, rate in self._rates[checkpoint_dir] if speed == _speed(c.to_dict())]
        if same:
            return statistics.median(same)
        if self.device.type != "cpu":
            return None
        images = CPU_STEP_IMAGES_PER_S.get((c.precision, bool(c.channels_last)),
                                           CPU_STEP_IMAGES_PER_S[("fp32", bool(c.channels_last))])
        return images * CPU_LOOP_SHARE * 3 * model_counts(CPU_RATE_MODEL)["macs"]


def _speed(settings: dict | None) -> tuple | None:
    return None if settings is None else tuple(settings.get(k) for k in _SPEED_SETTINGS)


def format_duration(seconds: float | None) -> str:
    """``1 h 05 min``, ``12 min``, ``40 s``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = max(seconds, 0.0)
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"
