"""A campaign in the background: ``run --detach``, ``status`` and ``stop``.

    python -m ranlib.campaign run --detach --device cpu ...  # starts it, returns at once
    python -m ranlib.campaign status                          # what runs, its ETA, what finished or failed
    python -m ranlib.campaign stop                            # the run in flight checkpoints; waits for it

``run --detach`` checks the plan, pins the checkout's commit (:mod:`ranlib.campaign.pinned`) and starts the
campaign from that commit's worktree as a process of its own session (it outlives the shell that
started it), niced, with its output in ``campaign.log``. Its files are in ``<cache>/campaign``
(:func:`ranlib.paths.cache_dir`; ``--state-dir`` elsewhere):

* ``lock``: an exclusive ``flock`` held as long as a campaign runs, naming its pid, so that two
  campaigns never train at once (the second gets one line saying which one runs). The kernel
  releases it when the process ends, however it ends; a lock file left by a campaign that was
  killed is taken over, with a line saying so.
* ``state.json``: the campaign's plan and what became of each run (pending, running with its
  process, finished, interrupted, failed with its one-line reason), its commit, budget end and the
  command that resumes it; rewritten atomically as it goes (:class:`Tracker`).
* ``campaign.log``: what the campaign printed (each training's own output is the ``campaign.log``
  beside its checkpoint).

``status`` reads these and each run's folder (:mod:`ranlib.campaign.estimates`): the running run's
iteration, images/s and ETA (and, when the budget ends first, about which iteration it will
checkpoint at), and for each run still to train whether it resumes from a checkpoint on this
machine or starts over. ``stop`` sends the campaign SIGTERM, which stops the
training in flight at its next step with a checkpoint (:class:`ranlib.campaign.runner.Campaign`), and
waits until the lock is free.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Sequence

from ranlib.errors import ERROR_PREFIX, RanlibError
from ranlib.paths import cache_dir
from ranlib.training import provenance

from .estimates import Estimator, format_duration, read_progress, run_dir

LOCK_NAME, STATE_NAME, LOG_NAME = "lock", "state.json", "campaign.log"
DEFAULT_NICE = 10  # a background study leaves the machine to whoever works on it


def state_dir_default() -> Path:
    return cache_dir() / "campaign"


# ----------------------------------------------------------------------------------------------
# The lock


class CampaignLock:
    """The exclusive lock on ``<state_dir>/lock`` (see the module docstring), held while the
    returned object's file descriptor is open (:meth:`acquire`); a detached campaign inherits it."""

    def __init__(self, state_dir: Path, fd: int):
        self.path, self.fd = state_dir / LOCK_NAME, fd

    @classmethod
    def acquire(cls, state_dir: Path, *, inherited_fd: int | None = None) -> "CampaignLock":
        """Take the lock (or adopt the one a detaching parent took: ``inherited_fd``), writing this
        process's pid into it; :class:`RanlibError` if another campaign holds it."""
        if inherited_fd is not None:
            lock = cls(state_dir, inherited_fd)
            lock.write_pid(os.getpid())
            return lock
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        for _ in range(10):  # `status` holds a shared lock for an instant to test it
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.05)
        else:
            os.close(fd)
            state = read_state(state_dir) or {}
            raise RanlibError(f"a campaign is already running (pid {_read_pid(state_dir / LOCK_NAME)}, started "
                              f"{state.get('started_at', '?')}): `python -m ranlib.campaign status` says what it "
                              "does, `python -m ranlib.campaign stop` stops it")
        state, previous = read_state(state_dir), _read_pid(state_dir / LOCK_NAME)
        if state and state.get("phase") != "ended" and previous == state.get("pid"):
            print(f"campaign: taking over the lock of campaign pid {previous}, which is no longer running (it was "
                  f"killed before it could finish; its runs' checkpoints are kept)", flush=True)
        lock = cls(state_dir, fd)
        lock.write_pid(os.getpid())
        return lock

    def write_pid(self, pid: int) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{pid}\n".encode(), 0)

    def release(self) -> None:
        os.close(self.fd)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def holder(state_dir: Path) -> int | None:
    """The pid of the campaign holding the lock, None when none runs."""
    path = state_dir / LOCK_NAME
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_pid(path) or -1
    finally:
        os.close(fd)  # closing releases a shared lock taken just now
    return None


# ----------------------------------------------------------------------------------------------
# The state


def read_state(state_dir: Path) -> dict | None:
    try:
        return json.loads((state_dir / STATE_NAME).read_text())
    except (OSError, ValueError):
        return None


class Tracker:
    """The running campaign's ``state.json``: its plan, and each run's fate as it happens."""

    def __init__(self, state_dir: Path, groups: Sequence[list[dict]], *, estimator: Estimator | None,
                 commit: str, worktree: str | None, command: str, budget_s: float):
        self.path = state_dir / STATE_NAME
        self.estimator = estimator
        self.data = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": provenance.utc_now(),
                     "budget_s": budget_s if budget_s != float("inf") else None, "deadline": None,
                     "device": estimator.device.type if estimator else None, "commit": commit, "worktree": worktree, "command": command,
                     "log": str(state_dir / LOG_NAME), "phase": "starting", "ended_at": None, "summary": None,
                     "runs": [self._entry(config) for group in groups for config in group]}
        self.save()

    def _entry(self, config: dict) -> dict:
        return {"experiment": config["experiment"], "run_name": config["run_name"], "status": "pending",
                "config": config, "pid": None, "commit": None, "started_at": None, "message": "",
                "estimate_s": self.estimator.seconds(config) if self.estimator else None}

    def _runs(self, group: Sequence[dict]) -> list[dict]:
        names = {(c["experiment"], c["run_name"]) for c in group}
        return [r for r in self.data["runs"] if (r["experiment"], r["run_name"]) in names]

    def running(self, budget_s: float) -> None:
        if budget_s != float("inf"):
            self.data["deadline"] = time.time() + budget_s
        self.data["phase"] = "running"
        self.save()

    def started(self, group: Sequence[dict], pid: int, commit: str) -> None:
        for run in self._runs(group):
            run.update(status="running", pid=pid, commit=commit, started_at=provenance.utc_now())
        self.save()

    def finished(self, lines: Sequence[dict]) -> None:
        for line in lines:
            for run in self._runs([line]):
                run.update(status=line["status"], pid=None, message=line["message"], wall_s=line["wall_s"])
        if self.estimator:
            self.estimator.forget()  # the runs' measurements changed
        self.save()

    def ended(self, summary: str) -> None:
        self.data.update(phase="ended", ended_at=provenance.utc_now(), summary=summary)
        self.save()

    def save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n")
        os.replace(tmp, self.path)


# ----------------------------------------------------------------------------------------------
# status and stop


def status_lines(state_dir: Path) -> list[str]:
    """What ``campaign status`` prints: the campaign, then one line per run."""
    import torch

    state, pid = read_state(state_dir), holder(state_dir)
    if state is None:
        return [f"campaign: no campaign has run here yet (nothing in {state_dir}); start one with "
                "`python -m ranlib.campaign run --detach ...`"]
    commit = (state.get("commit") or "?")[:10]
    if pid is not None and pid == state.get("pid"):
        deadline = state.get("deadline")
        left = f"{format_duration(deadline - time.time())} of the budget left" if deadline else "no time limit"
        head = (f"campaign: running (pid {pid}) since {state['started_at']} from commit {commit}; {left}"
                + (" (it is still planning)" if state.get("phase") == "starting" else ""))
    elif pid is not None:
        head = f"campaign: pid {pid} holds the lock; the state below is from an earlier campaign (pid {state['pid']})"
    elif state.get("phase") == "ended":
        head = f"campaign: none running; the last one (commit {commit}) ran {state['started_at']} to " \
               f"{state['ended_at']}: {state.get('summary')}"
    else:
        head = (f"campaign: none running; the last one (pid {state['pid']}, commit {commit}, started "
                f"{state['started_at']}) ended without closing (killed?): {_last_error(state.get('log'))}")
    lines = [head, f"  log: {state.get('log')}"]
    estimator = Estimator(torch.device(state["device"])) if state.get("device") else None
    running = pid is not None and pid == state.get("pid")
    budget_left = state["deadline"] - time.time() if running and state.get("deadline") else None
    for run in state["runs"]:
        lines.append(f"  {_run_status(run, running):<11} {run['experiment']}/{run['run_name']}: "
                     f"{_run_detail(run, running, estimator, budget_left)}")
    counts = {s: sum(r["status"] == s for r in state["runs"]) for s in ("finished", "interrupted", "failed")}
    if not running and any(r["status"] != "finished" for r in state["runs"]):
        lines.append(f"  resume with: {state['command']}")
    lines.append(f"campaign: {counts['finished']} finished, {counts['interrupted']} interrupted, "
                 f"{counts['failed']} failed, of {len(state['runs'])} planned")
    return lines


def _run_status(run: dict, campaign_running: bool) -> str:
    if run["status"] == "running" and not campaign_running:
        return "stopped"  # its campaign was killed; the training was stopped with it
    return run["status"]


def _run_detail(run: dict, campaign_running: bool, estimator: Estimator | None, budget_left: float | None) -> str:
    from ranlib.training.config import TrainConfig, resolve
    from ranlib.training.results import results_path

    config = run["config"]
    folder = run_dir(config)
    progress = read_progress(folder)
    total = progress.iterations or resolve(TrainConfig(**config)).iterations
    if run["status"] == "running" and campaign_running:
        if progress.iteration is None:
            return f"starting (from iteration {progress.checkpoint_iteration}), commit {(run['commit'] or '?')[:10]}"
        eta = estimator.seconds(config, iteration=progress.iteration) if estimator else None
        detail = (f"iteration {progress.iteration}/{total}, {progress.images_per_s:.0f} images/s, "
                  f"ETA {format_duration(eta)}")
        if eta and budget_left is not None and eta > budget_left:
            # the budget's end stops it first (with a checkpoint): say about where, at the rate the ETA assumes
            near = progress.iteration + int((total - progress.iteration) * max(budget_left, 0) / eta)
            detail += (f"; the budget ends first: it checkpoints near iteration {near}/{total} "
                       "and the next campaign resumes it")
        return detail
    if run["status"] == "finished":
        path = results_path(config["results_dir"], config["experiment"], config["run_name"])
        try:
            record = json.loads(path.read_text())
            error, run_wall = record["final"]["top1_error"], record["cost"]["wall_time_s"]
            took = format_duration(run_wall)
            if run.get("wall_s") is not None and run_wall > run["wall_s"] + 60:  # resumed: earlier sittings count
                took += f" in all, {format_duration(run['wall_s'])} of it in this campaign"
            return f"top-1 error {error:.2f} % after {took} -> {path}"
        except (OSError, ValueError, KeyError, TypeError):
            return f"finished after {format_duration(run.get('wall_s'))}; no results file at {path} now"
    if run["status"] == "failed":
        return run["message"] or "failed (see its campaign.log)"
    # pending, interrupted, or stopped with a killed campaign: what the next campaign does with it
    if progress.checkpoint_iteration:
        at = f"resumes from its checkpoint at iteration {progress.checkpoint_iteration}/{total}"
    elif run["status"] in ("interrupted", "running"):
        at = f"starts over: its checkpoint is not in {folder}"
    else:
        at = "starts from iteration 0"
    left = estimator.seconds(config) if estimator else None
    return f"{at}; about {format_duration(left)} to train"


def _last_error(log: str | None) -> str:
    try:
        lines = [line.strip() for line in Path(log).read_text(errors="replace").splitlines() if line.strip()]
    except (OSError, TypeError):
        return "no log"
    errors = [line for line in lines if line.startswith(ERROR_PREFIX)]
    return (errors or lines or ["its log is empty"])[-1][:300]


def stop(state_dir: Path, wait_s: float) -> int:
    """Send the running campaign SIGTERM and wait (up to ``wait_s``) until it has stopped."""
    pid = holder(state_dir)
    if pid is None:
        print("campaign: none is running; nothing to stop")
        return 0
    if pid < 0:
        raise RanlibError(f"the lock {state_dir / LOCK_NAME} is held by a process that wrote no pid; stop it by hand")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass  # it ended just now
    except PermissionError:
        raise RanlibError(f"campaign pid {pid} belongs to another user; ask them to stop it") from None
    print(f"campaign: asked campaign pid {pid} to stop; the run in flight writes its checkpoint ...", flush=True)
    deadline = time.monotonic() + wait_s
    while holder(state_dir) is not None:
        if time.monotonic() > deadline:
            print(f"campaign: pid {pid} is still stopping after {wait_s:.0f} s; `python -m ranlib.campaign status` "
                  "says when it has", flush=True)
            return 1
        time.sleep(0.2)
    state = read_state(state_dir) or {"runs": [], "command": "?"}
    for run in state["runs"]:
        if run["status"] == "interrupted":
            done = read_progress(run_dir(run["config"])).checkpoint_iteration
            print(f"campaign: {run['experiment']}/{run['run_name']} stopped with its checkpoint at iteration {done}")
    print(f"campaign: stopped ({state.get('summary')}); resume with: {state['command']}")
    return 0


def wait_until_started(state_dir: Path, process, timeout_s: float) -> None:
    """After a detach: return once the campaign has planned and runs, has ended, or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        state = read_state(state_dir) or {}
        if state.get("pid") == process.pid and state.get("phase") != "starting":
            return
        time.sleep(0.2)


# ----------------------------------------------------------------------------------------------
# run --detach

# Path options of `campaign run` a detached campaign gets as absolute paths: it runs in its worktree.
_PATH_OPTIONS = ("results_dir", "checkpoint_dir", "data_root", "ledger")


def detach(args, *, state_dir: Path, planned: int, nice: int | None) -> int:
    """``campaign run --detach``: take the lock, pin the checkout's commit (:mod:`ranlib.campaign.pinned`),
    start the same campaign from its worktree in a session of its own (niced; output to
    ``campaign.log``; the lock handed over), and return once it runs (or say why it ended)."""
    import shlex
    import subprocess
    import sys

    from ranlib.paths import repo_root, resolve_path

    from . import pinned

    checkout = repo_root()
    if checkout is None:
        raise RanlibError("run --detach from a ranlib checkout (a folder at or under the one with pyproject.toml)")
    commit = pinned.checkout_commit(checkout)
    lock = CampaignLock.acquire(state_dir)
    try:
        folder = pinned.worktree(checkout, commit)
        command = f"cd {shlex.quote(str(checkout))} && python -m ranlib.campaign {shlex.join(args.argv)}"
        child = [sys.executable, "-m", "ranlib.campaign", *(a for a in args.argv if a != "--detach")]
        for name in _PATH_OPTIONS:
            if getattr(args, name) is not None:
                child += [f"--{name.replace('_', '-')}", str(resolve_path(getattr(args, name)))]
        child += ["--state-dir", str(state_dir), "--lock-fd", str(lock.fd), "--pinned-from", str(checkout),
                  "--nice", str(DEFAULT_NICE if nice is None else nice), "--resume-command", command]
        log_path = state_dir / LOG_NAME
        with open(log_path, "a") as log:
            log.write(f"# {provenance.utc_now()} {command}  (commit {commit})\n")
            log.flush()
            process = subprocess.Popen(child, cwd=folder, env=pinned.code_env(folder), stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                       pass_fds=(lock.fd,))
        lock.write_pid(process.pid)
    finally:
        lock.release()  # the campaign holds the lock through its own copy of the descriptor
    wait_until_started(state_dir, process, timeout_s=120)
    if process.poll():
        raise RanlibError(f"the background campaign ended at once: {_last_error(str(log_path))} (its log: {log_path})")
    if process.poll() == 0:
        print(f"campaign: the background campaign ended at once: {(read_state(state_dir) or {}).get('summary')}")
        return 0
    print(f"campaign: started in the background (pid {process.pid}, niced {DEFAULT_NICE if nice is None else nice}): "
          f"{planned} runs planned, from commit {commit[:10]} (its worktree {folder}); log {log_path}\n"
          f"campaign: watch it with `python -m ranlib.campaign status`, stop it with "
          f"`python -m ranlib.campaign stop`", flush=True)
    return 0
