"""Many trainings on one device within a time budget (:class:`Campaign`).

The study needs dozens of CIFAR trainings, and a GPU is lent in short sittings. A campaign:

* trains fused groups (:func:`ranlib.study.planning.group_runs`: runs that differ only in seed,
  label-noise level and ARL/NAL, each group trained as one wide model, :mod:`ranlib.models.fused`;
  a CIFAR network at batch 64 leaves most of a GPU idle, a group of eight fills it);
* runs up to ``concurrent`` groups at once, each as its own process (``python -m ranlib train
  ... --resume`` for a single run, ``python -m ranlib.campaign train-group FILE`` for a group)
  on the same device, and with ``estimate_s`` launches only groups expected to finish in time;
* launches nothing once less than the launch margin of the budget is left, and at the end of the
  budget sends SIGTERM: each training writes a checkpoint, which the next campaign resumes
  (nothing is trained twice because a sitting ended);
* runs each group with the code of its pinned commit when told (:mod:`ranlib.campaign.pinned`);
* appends one line per run and sitting to a ledger (``results/campaign_ledger.csv``): start, end,
  status, wall time, and the **device seconds charged** to it, where every second of the
  campaign is split equally between the trainings running in it, so the ledger adds up to the
  device time actually held (a results file's own ``cost`` is its wall time, shared or not).
"""

from __future__ import annotations

import io
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ranlib.errors import ERROR_PREFIX, RanlibError
from ranlib.study.ledger import append_ledger
from ranlib.training import provenance
from ranlib.training.flags import train_argv

from . import pinned

LOG_NAME = "campaign.log"  # each run's stdout and stderr, beside its checkpoint
POLL_S = 0.5


@dataclass
class _Active:
    group: list[dict]
    process: subprocess.Popen
    started_at: str
    started: float
    device_s: float = 0.0
    max_concurrent: int = 1
    log: io.TextIOBase | None = None
    commit: str = ""  # the code it runs


@dataclass
class Campaign:
    """Trains ``groups`` (lists of plan configs, see :func:`group_runs`; one run is a group of one)
    at most ``concurrent`` groups at a time within ``budget_s`` seconds.

    ``estimate_s(group)``, if given, is a group's expected training time (None: unknown): a group is
    launched only when it fits in what is left of the budget (less the stop grace), else the next
    that fits, unless ``resumable``: its checkpoint outlives the campaign, so a later one resumes
    what the budget's end stops. ``code_for(group)``, if given, is the (folder, commit) of the code
    the group trains with (:mod:`ranlib.campaign.pinned`; default: this process's). ``on_start(group, pid,
    commit)`` and ``on_finish(lines)`` are called as a group starts and with the ledger lines of
    every group that ends.
    """

    groups: Sequence[list[dict]]
    concurrent: int = 1
    budget_s: float = float("inf")
    launch_margin_s: float = 60.0  # launch nothing with less than this left
    stop_grace_s: float = 60.0  # time the trainings get to checkpoint after SIGTERM
    ledger: Path | None = None
    device_name: str = ""
    echo: bool = True
    estimate_s: Callable[[list[dict]], float] | None = None
    on_finish: Callable[[list[dict]], None] | None = None
    group_dir: Path | None = None  # where group files go (default: <checkpoint_dir>/groups)
    resumable: bool = False
    code_for: Callable[[list[dict]], tuple[Path, str]] | None = None
    on_start: Callable[[list[dict], int, str], None] | None = None

    def __post_init__(self):
        if self.concurrent < 1:
            raise RanlibError(f"--concurrent must be at least 1, not {self.concurrent}")
        if not self.budget_s > 0:
            raise RanlibError(f"the budget must be positive, not {self.budget_s / 60:g} minutes")
        self.campaign_started_at = provenance.utc_now()
        self.git_commit = provenance.git_state()[0] or ""
        self.lines: list[dict] = []
        self.left: list[dict] = []
        self._signalled = False

    def command(self, group: list[dict]) -> list[str]:
        """A single run as the ``ranlib train`` command anyone can type; a group through a file of
        its members' configurations (each member's results file records its full configuration)."""
        if len(group) == 1:
            return [sys.executable, "-m", "ranlib", "train", *train_argv(group[0]), "--resume", "--no-progress"]
        folder = self.group_dir or Path(group[0]["checkpoint_dir"]) / "groups"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{group[0]['run_name']}+{len(group) - 1}.json"
        path.write_text(json.dumps(group, indent=1) + "\n")
        return [sys.executable, "-m", "ranlib.campaign", "train-group", str(path)]

    def run(self) -> list[dict]:
        """Train until every group is done or the budget is spent; the ledger lines written."""
        pending, active = list(self.groups), []
        start = last = time.monotonic()
        stop_at, kill_at = start + self.budget_s - self.stop_grace_s, None
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while pending or active:
                now = time.monotonic()
                members = sum(len(a.group) for a in active)
                for a in active:  # every second of the campaign is split between the runs in it
                    a.device_s += (now - last) * len(a.group) / members
                last = now
                for a in [a for a in active if a.process.poll() is not None]:
                    active.remove(a)
                    self._finish(a, stopped=kill_at is not None)
                if kill_at is None and active and (now >= stop_at or self.stop_requested()):
                    for a in active:
                        a.process.send_signal(signal.SIGTERM)
                    kill_at = now + self.stop_grace_s
                if kill_at is not None and now >= kill_at:
                    for a in active:
                        a.process.kill()
                launch = (kill_at is None and not self.stop_requested()
                          and now < start + self.budget_s - self.launch_margin_s)
                while launch and len(active) < self.concurrent:
                    group = self._next_fitting(pending, stop_at - now)
                    if group is None:
                        break
                    active.append(self._launch(group))
                for a in active:
                    a.max_concurrent = max(a.max_concurrent, len(active))
                if not active and (not launch or self._next_fitting(pending, stop_at - now, take=False) is None):
                    break
                time.sleep(POLL_S)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.left = [config for group in pending for config in group]
        return self.lines

    def _next_fitting(self, pending: list, left_s: float, take: bool = True) -> list[dict] | None:
        """The first pending group expected to finish in ``left_s`` (any, without an estimate)."""
        for i, group in enumerate(pending):
            estimate = None if self.estimate_s is None or self.resumable else self.estimate_s(group)
            if estimate is None or estimate <= left_s:
                return pending.pop(i) if take else group
        return None

    def _on_signal(self, signum, frame):
        self._signalled = True

    def stop_requested(self) -> bool:
        """SIGTERM/SIGINT reached the campaign: stop the trainings (they checkpoint), launch no more."""
        return self._signalled

    def _launch(self, group: list[dict]) -> _Active:
        config = group[0]
        run_dir = Path(config["checkpoint_dir"]) / config["experiment"] / config["run_name"]
        run_dir.mkdir(parents=True, exist_ok=True)
        log = open(run_dir / LOG_NAME, "a")
        command = self.command(group)
        log.write(f"# {provenance.utc_now()} campaign {self.campaign_started_at}: {shlex.join(command)}\n")
        log.flush()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        folder, commit = self.code_for(group) if self.code_for else (None, self.git_commit)
        if folder is not None:
            env = pinned.code_env(folder, env)
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder,
                                   start_new_session=True,  # a Ctrl-C reaches the campaign, which stops them in order
                                   preexec_fn=_stop_with_parent if sys.platform == "linux" else None)
        more = f" and {len(group) - 1} more as one fused group" if len(group) > 1 else ""
        self._say(f"start {config['experiment']}/{config['run_name']}{more}"
                  + (f" (commit {commit[:10]})" if folder is not None else ""))
        if self.on_start is not None:
            self.on_start(group, process.pid, commit)
        return _Active(group, process, provenance.utc_now(), time.monotonic(), log=log, commit=commit)

    def _finish(self, a: _Active, *, stopped: bool) -> None:
        a.log.close()
        code = a.process.returncode
        if code == 0:
            status, message = "finished", ""
        elif stopped and code in (128 + signal.SIGTERM, -signal.SIGTERM, -signal.SIGKILL):
            status, message = "interrupted", _stop_message(code)
        else:
            status, message = "failed", _last_error(Path(a.log.name))
        lines = []
        for config in a.group:
            lines.append({"campaign_started_at": self.campaign_started_at, "experiment": config["experiment"],
                          "run_name": config["run_name"], "model": config["model"], "profile": config["profile"],
                          "seed": config["seed"], "status": status, "started_at": a.started_at,
                          "finished_at": provenance.utc_now(), "wall_s": round(time.monotonic() - a.started, 1),
                          "device_s": round(a.device_s / len(a.group), 1), "max_concurrent": a.max_concurrent,
                          "device": config.get("device", ""), "device_name": self.device_name,
                          "git_commit": a.commit, "exit_code": code, "message": message})
        self.lines += lines
        if self.ledger is not None:
            append_ledger(self.ledger, lines)
        what = a.group[0]["experiment"] + "/" + a.group[0]["run_name"]
        if len(a.group) > 1:
            what += f" and {len(a.group) - 1} more"
        self._say(f"{status} {what} after {lines[0]['wall_s']:.0f} s{': ' + message if message else ''}")
        if self.on_finish is not None:
            self.on_finish(lines)

    def _say(self, text: str) -> None:
        if self.echo:
            print(f"campaign: {text}", flush=True)


def _stop_message(code: int) -> str:
    """The ledger's message for a training the campaign stopped, by its exit code: ``128 + SIGTERM`` is
    the training loop's own stop, after it checkpointed (:class:`ranlib.training.loop.TrainingInterrupted`);
    a process the signal killed outright (SIGTERM in start-up, before the loop's handler was set, or
    SIGKILL past the stop grace) lost what it trained since its last periodic checkpoint."""
    if code == 128 + signal.SIGTERM:
        return "stopped (the budget's end or `campaign stop`) with a checkpoint; the next campaign resumes it"
    return ("stopped (the budget's end or `campaign stop`) before it wrote its stop checkpoint: what it "
            "trained since its last checkpoint is lost; the next campaign resumes from that one, if it has one")


def _stop_with_parent() -> None:
    """In a training's process before it starts (Linux): SIGTERM it when the campaign dies, even by
    SIGKILL, so that it checkpoints and stops instead of training on unwatched."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _last_error(log: Path) -> str:
    """The one-line error a failed training printed (``errors.print_error``), else its last line."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(ERROR_PREFIX)]
    return (errors or lines or ["no output"])[-1][:500]
