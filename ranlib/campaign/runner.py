"""Many trainings on one device within a time budget: ``python -m ranlib.campaign``.

    python -m ranlib.campaign plan --profile quick --seeds 0 1            # what would run, and its size
    python -m ranlib.campaign run --profile quick --seeds 0 1 --device cuda \\
        --dataset cifar10-jpeg --data-root .data/cifar10-jpeg --concurrent 4 --budget-minutes 25
    python -m ranlib.campaign pack --out campaign.tar.gz                  # results to bring back
    python -m ranlib.campaign unpack campaign.tar.gz                      # here: into results/
    python -m ranlib.campaign run --detach --device cpu ...               # in the background, from a pinned commit
    python -m ranlib.campaign status                                      # what it trains, ETA, what finished
    python -m ranlib.campaign stop                                        # the run in flight checkpoints

The study needs dozens of CIFAR trainings, and a GPU is lent in short sittings. A campaign:

* plans the runs of the chosen experiments (:func:`ranlib.study.planning.plan_runs`) seed by seed, so
  that every table gets its first seed before any table gets its second, and leaves out a run
  whose results exist or that another experiment trains anyway (:func:`ranlib.study.planning.find_training`:
  Attention-56 with the default switches is a row of Tables 1, 3 and 4);
* puts runs that differ only in seed, label-noise level and ARL/NAL into fused groups of up to
  ``--max-group`` members (:func:`group_runs`), each trained as one wide model
  (:mod:`ranlib.models.fused`): a CIFAR network at batch 64 leaves most of a GPU idle, a group of
  eight fills it;
* runs up to ``--concurrent`` groups at once, each as its own process (``python -m ranlib train
  ... --resume`` for a single run, ``python -m ranlib.campaign train-group FILE`` for a group)
  on the same device, and with ``estimate_s`` launches only groups expected to finish in time;
* launches nothing once less than ``--launch-margin-minutes`` of the budget is left, and at the
  end of ``--budget-minutes`` sends SIGTERM: each training writes a checkpoint (by default in the
  user's cache, :func:`default_checkpoints`), which the next campaign resumes (nothing is trained
  twice because a sitting ended);
* on a CPU trains one run at a time, in the CPU's order (:func:`ranlib.study.planning.cpu_order`), each
  started only if its estimate (:mod:`ranlib.campaign.estimates`) fits the budget left or its checkpoint
  is kept for a later campaign;
* runs under a lock, in the foreground or with ``--detach`` in the background from a pinned
  commit (:mod:`ranlib.campaign.background`, :mod:`ranlib.campaign.pinned`);
* appends one line per run and sitting to a ledger (``results/campaign_ledger.csv``): start, end,
  status, wall time, and the **device seconds charged** to it, where every second of the
  campaign is split equally between the trainings running in it, so the ledger adds up to the
  device time actually held (a results file's own ``cost`` is its wall time, shared or not).

``pack`` and ``unpack`` carry what a sitting produced (results files, the ledger, the runs'
metrics and logs, and the checkpoints asked for) from the GPU machine back into the checkout;
``unpack`` never replaces a different results file.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from . import background, pinned
from ranlib.training import provenance
from ranlib.errors import ERROR_PREFIX, RanlibError, ResultsExistError, print_error
from ranlib.study.experiments import EXPERIMENTS, experiment
from ranlib.files import atomic_write
from ranlib.study.ledger import LEDGER_NAME, append_ledger, read_ledger
from ranlib.paths import cache_dir, resolve_path
from ranlib.study.planning import cpu_order, find_training, group_runs, plan_runs, same_training, training_size
from .sitting import (ARCHIVE_NAME, GROUP_STARTUP_S, SittingLog, estimate_group_s, fit_batch, imagewoof_masks_step,
                      jpeg_gap_step, preflight, print_table, study_slices)

LOG_NAME = "campaign.log"  # each run's stdout and stderr, beside its checkpoint
# The experiments trained on CIFAR, in the book's order (ImageNet needs data this project lacks).
CIFAR_EXPERIMENTS = tuple(name for name, exp in EXPERIMENTS.items() if exp.task == "cifar")
POLL_S = 0.5
# Results folders written outside training runs that a sitting on a GPU machine also brings back.
EXTRA_RESULTS = ("performance", "jpeg_gap")


def default_checkpoints() -> Path:
    """Where a campaign's checkpoints go unless told: outside any checkout, so that a later campaign
    on this machine resumes them whatever the checkout does (the user's cache, :func:`ranlib.paths.cache_dir`)."""
    return cache_dir() / "checkpoints"


# ----------------------------------------------------------------------------------------------
# Planning


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
    from ranlib.training.results import results_path

    if results_path(config["results_dir"], config["experiment"], config["run_name"]).is_file():
        return "results exist"
    done = find_training(config, config["results_dir"])
    if done is not None:
        return f"trained as {done['experiment']}/{done['run_name']}"
    twin = next((p for p in planned if same_training(config, {"config": p})), None)
    if twin is not None:
        return f"same training as {twin['experiment']}/{twin['run_name']}"
    return None


# ----------------------------------------------------------------------------------------------
# Running


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
        from ranlib.training.flags import train_argv

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
            status, message = "interrupted", "stopped (the budget's end or `campaign stop`) with a checkpoint; " \
                                             "the next campaign resumes it"
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


# ----------------------------------------------------------------------------------------------
# Carrying results between machines


def pack(out: Path, *, results_dir: Path, checkpoint_dir: Path, experiments: Sequence[str],
         checkpoints: Sequence[str] = ()) -> list[str]:
    """A ``.tar.gz`` of the experiments' results files, the ledger, every run's metrics and log,
    and the checkpoints of the runs named in ``checkpoints`` (``experiment/run_name``)."""
    from ranlib.training.checkpoint import CHECKPOINT_NAME

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
    from ranlib.training.results import validate

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
    from ranlib.training.checkpoint import load_checkpoint
    from ranlib.errors import CheckpointError

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


# ----------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ranlib.campaign", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def selection(q: argparse.ArgumentParser) -> None:
        q.add_argument("--experiments", nargs="+", default=list(CIFAR_EXPERIMENTS), metavar="NAME",
                       help=f"experiments to train (default: {' '.join(CIFAR_EXPERIMENTS)})")
        q.add_argument("--rows", nargs="+", metavar="KEY", help="only these rows: a planned run's name without -PROFILE-sSEED, e.g. attention92-noise70")
        q.add_argument("--profile", default="quick", choices=("smoke", "quick", "full", "paper"))
        q.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
        q.add_argument("--dataset", default="cifar10-jpeg")
        q.add_argument("--data-root", default=".data/cifar10-jpeg")
        q.add_argument("--device", default="auto")
        q.add_argument("--results-dir", type=Path, default=Path("results"))
        q.add_argument("--checkpoint-dir", type=Path, default=default_checkpoints(),
                       help="where the runs' checkpoints go (default: the user's cache, outside any checkout)")
        q.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                       help="TrainConfig fields for every run, e.g. iterations=4 (tests, trials)")

    plan = sub.add_parser("plan", help="list the runs a campaign would train, with their size")
    selection(plan)
    plan.add_argument("--tflops", type=float, help="also give the time at this achieved TFLOP/s")
    run = sub.add_parser("run", help="train the planned runs within a time budget")
    selection(run)
    run.add_argument("--concurrent", type=int, default=1, help="trainings (single runs or fused groups) at once "
                                                                   "on the device")
    run.add_argument("--max-group", type=int, help="runs per fused group (1: every run alone; default 8 on "
                                                    "CUDA, 1 on a CPU, where fusion does not pay)")
    run.add_argument("--budget-minutes", type=float, default=float("inf"),
                     help="stop (checkpointing) after this long; resume with the same command")
    run.add_argument("--launch-margin-minutes", type=float, default=1.0,
                     help="launch no run with less than this left of the budget")
    run.add_argument("--stop-grace-minutes", type=float, default=1.0,
                     help="time a stopped training gets to write its checkpoint")
    run.add_argument("--ledger", type=Path, help=f"default: <results-dir>/{LEDGER_NAME}")
    run.add_argument("--detach", action="store_true",
                     help="run in the background from a worktree of the checkout's commit, niced, and return at "
                          "once (then `status`, `stop`; see ranlib.campaign.background)")
    run.add_argument("--nice", type=int, help=f"lower the campaign's priority by this much (default with --detach: "
                                              f"{background.DEFAULT_NICE})")
    run.add_argument("--checkpoints-kept", action=argparse.BooleanOptionalAction,
                     help="the checkpoint folder outlives this campaign, so a run longer than the budget left may "
                          "start (a later campaign resumes it); --no-checkpoints-kept starts only runs expected "
                          "to finish (default: kept when the folder is in the user's cache)")
    for hidden in ("--lock-fd", "--pinned-from", "--resume-command"):  # from `run --detach` to the campaign it starts
        run.add_argument(hidden, type=int if hidden == "--lock-fd" else str, help=argparse.SUPPRESS)
    for q in (run, sub.add_parser("status", help="what the background campaign runs (iteration, images/s, ETA), "
                                                 "what finished or failed, the budget left"),
              stopper := sub.add_parser("stop", help="stop the background campaign: the run in flight writes its "
                                                     "checkpoint; waits until it has")):
        q.add_argument("--state-dir", type=Path, default=background.state_dir_default(),
                       help="the campaign's lock, state and log (default: the user's cache)")
    stopper.add_argument("--wait-minutes", type=float, default=10.0, help="give up waiting after this long")
    packer = sub.add_parser("pack", help="archive results, ledger, metrics (and checkpoints) to carry back")
    packer.add_argument("--out", type=Path, required=True)
    packer.add_argument("--experiments", nargs="+", default=[*CIFAR_EXPERIMENTS, *EXTRA_RESULTS], metavar="NAME",
                        help="results folders to pack (default: the CIFAR experiments', benchmarks, JPEG gap)")
    packer.add_argument("--checkpoints", nargs="*", default=[], metavar="EXPERIMENT/RUN",
                        help="also these runs' checkpoints (e.g. for ranlib.study.jpeg_gap)")
    packer.add_argument("--results-dir", type=Path, default=Path("results"))
    packer.add_argument("--checkpoint-dir", type=Path, default=default_checkpoints())
    member = sub.add_parser("train-group", help="train the runs in a JSON file (a list of TrainConfig fields) as "
                                                "one fused group, resuming their checkpoints")
    member.add_argument("group_file", type=Path)
    sit = sub.add_parser("sitting", help="one unattended GPU sitting: preflight, benchmark, the study claims first, "
                                         "results packed into --out as it goes (see ranlib.campaign.sitting)")
    selection(sit)
    sit.add_argument("--minutes", type=float, required=True, help="the sitting's whole budget, preflight included")
    sit.add_argument("--out", type=Path, required=True, help=f"where {ARCHIVE_NAME} and sitting.json go")
    sit.add_argument("--max-group", type=int, default=8, help="runs per fused group")
    sit.add_argument("--bench-seconds", type=float, default=60.0, help="time for the benchmark (0: none)")
    unpacker = sub.add_parser("unpack", help="put a packed archive's files into this checkout")
    unpacker.add_argument("archive", type=Path)
    unpacker.add_argument("--results-dir", type=Path, default=Path("results"))
    unpacker.add_argument("--checkpoint-dir", type=Path, default=default_checkpoints())
    return p


def _plan_from(args: argparse.Namespace, experiments: Sequence[str] | None = None, *, profile: str | None = None,
               seeds: Sequence[int] | None = None, rows: Sequence[str] | None = None,
               overrides: dict | None = None) -> Plan:
    """The plan the options ask for (or a part of it), every run's configuration checked by planning
    (:func:`ranlib.study.planning.named`): one error line, before anything starts, if ``--set`` or the data
    set does not fit a run."""
    from ranlib.training.flags import key_values

    try:
        return plan_campaign(experiments or args.experiments, profile=profile or args.profile,
                             seeds=seeds or args.seeds, dataset=args.dataset, data_root=args.data_root,
                             results_dir=args.results_dir, checkpoint_dir=args.checkpoint_dir, device=args.device,
                             rows=rows or args.rows, overrides={**key_values(args.set), **(overrides or {})})
    except RanlibError as exc:
        raise type(exc)(f"{exc} (--set {' '.join(args.set)})" if args.set else str(exc)) from None


def _cmd_plan(args: argparse.Namespace) -> int:
    from ranlib.training.runtime import Dist, select_device

    plan = _plan_from(args)
    device = select_device(args.device, Dist())
    if device.type == "cpu":
        return _print_cpu_plan(plan, device)
    sizes = [training_size(config) for config in plan.runs]
    total = sum(size["train_macs"] for size in sizes)
    print(f"{'experiment/run':<52} {'model':<20} {'iters':>7} {'batch':>5} {'train PMAC':>10}")
    for config, size in zip(plan.runs, sizes):
        print(f"{config['experiment'] + '/' + config['run_name']:<52} {config['model']:<20} "
              f"{size['iterations']:>7} {size['batch_size']:>5} {size['train_macs'] / 1e15:>10.1f}")
    print(f"{len(plan.runs)} runs to train, {total / 1e15:.1f} PMAC in all; {len(plan.skipped)} left out")
    if args.tflops:
        print(f"at {args.tflops:g} TFLOP/s achieved (2 FLOPs per multiply-add) that is "
              f"{2 * total / (args.tflops * 1e12) / 60:.0f} device minutes of training steps")
    _print_skipped(plan)
    return 0


def _print_cpu_plan(plan: Plan, device) -> int:
    """The runs in the CPU's order (:func:`ranlib.study.planning.cpu_order`), each with its CPU-hours."""
    from .estimates import Estimator, read_progress, run_dir

    estimator, total, part_now = Estimator(device), 0.0, None
    print(f"{'#':>3} {'experiment/run':<52} {'model':<20} {'iters':>6} {'batch':>5} {'CPU-h':>6}  from")
    for i, (part, config) in enumerate(cpu_order(plan.runs), 1):
        if part != part_now:
            print(f"--- {part}")
            part_now = part
        hours = estimator.seconds(config) / 3600
        total += hours
        size, done = training_size(config), read_progress(run_dir(config)).checkpoint_iteration
        print(f"{i:>3} {config['experiment'] + '/' + config['run_name']:<52} {config['model']:<20} "
              f"{size['iterations']:>6} {size['batch_size']:>5} {hours:>6.2f}  "
              f"{f'checkpoint at {done}' if done else 'start'}")
    print(f"{len(plan.runs)} runs to train one at a time, about {total:.1f} CPU-hours in all; {len(plan.skipped)} "
          f"left out. CPU-hours at each run's images/s measured in its last sitting, else the rate of the runs "
          f"measured in the checkpoint folder, else the rate recorded on the project's machine (ranlib.campaign.estimates)")
    _print_skipped(plan)
    return 0


def _print_skipped(plan: Plan) -> None:
    for config, why in plan.skipped:
        print(f"  left out {config['experiment']}/{config['run_name']}: {why}")


def _decode_once(dataset: str, data_root: str, download: bool = False) -> None:
    """Decode the data set here (into its decode cache), not in every training at once: a missing
    or broken data set is one error line before anything is launched, not one failed run each."""
    from ranlib.data.cifar import ARRAY_DATASETS, load_arrays

    if dataset in ARRAY_DATASETS:
        load_arrays(dataset, resolve_path(data_root), download=download)
    elif dataset == "imagewoof":
        from ranlib.data.imagewoof import load_imagewoof
        load_imagewoof(resolve_path(data_root))


def _cmd_run(args: argparse.Namespace) -> int:
    """A campaign in the foreground, or with ``--detach`` in the background from a pinned commit
    (:mod:`ranlib.campaign.background`); either way under the campaign lock. On a CPU the runs go in the
    CPU's order (:func:`ranlib.study.planning.cpu_order`), one at a time (fused groups do not pay there)."""
    from .estimates import Estimator
    from ranlib.training.runtime import Dist, select_device

    if args.max_group is not None:
        _check_max_group(args.max_group)
    plan = _plan_from(args)
    device = select_device(args.device, Dist())
    runs = [config for _, config in cpu_order(plan.runs)] if device.type == "cpu" else plan.runs
    max_group = args.max_group or (1 if device.type == "cpu" else 8)
    state_dir = resolve_path(args.state_dir)
    if args.detach:
        return background.detach(args, state_dir=state_dir, planned=len(runs), nice=args.nice)
    lock = background.CampaignLock.acquire(state_dir, inherited_fd=args.lock_fd)
    try:
        if args.nice:
            os.nice(args.nice)
        commit = provenance.git_state()[0] or ""
        code_for = pinned.pinned_code(Path(args.pinned_from), commit, say=print) if args.pinned_from else None
        estimator, groups = Estimator(device), group_runs(runs, max_group)
        tracker = background.Tracker(state_dir, groups, estimator=estimator, commit=commit,
                                     worktree=str(pinned.worktree(Path(args.pinned_from), commit))
                                     if args.pinned_from else None,
                                     command=args.resume_command or f"python -m ranlib.campaign {shlex.join(args.argv)}",
                                     budget_s=args.budget_minutes * 60)
        # `campaign stop` while the data is decoded, before Campaign.run takes the signals over
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        try:
            if plan.runs:
                _decode_once(args.dataset, args.data_root, download=bool(plan.runs[0].get("download")))
            campaign = Campaign(groups, concurrent=args.concurrent, budget_s=args.budget_minutes * 60,
                                launch_margin_s=args.launch_margin_minutes * 60,
                                stop_grace_s=args.stop_grace_minutes * 60,
                                ledger=resolve_path(args.ledger or args.results_dir / LEDGER_NAME),
                                device_name=provenance.device_name(device), estimate_s=estimator.group_s,
                                resumable=_checkpoints_kept(args), code_for=code_for, on_start=tracker.started,
                                on_finish=tracker.finished)
            print(f"campaign: {len(runs)} runs to train ({len(plan.skipped)} left out), {args.concurrent} at a "
                  f"time on {campaign.device_name}" + (f" from commit {commit[:10]}" if args.pinned_from else ""),
                  flush=True)
            tracker.running(campaign.budget_s)
            lines = campaign.run()
        except BaseException as exc:
            tracker.ended(f"stopped before training ({exc})" if isinstance(exc, SystemExit) else
                          f"ended by {type(exc).__name__}: {exc}")
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
        status = {s: sum(line["status"] == s for line in lines) for s in ("finished", "interrupted", "failed")}
        summary = (f"{status['finished']} finished, {status['interrupted']} interrupted, {status['failed']} failed, "
                   f"{len(campaign.left)} not started; {sum(line['device_s'] for line in lines) / 60:.1f} device "
                   f"minutes charged")
        tracker.ended(summary)
    finally:
        lock.release()
    print(f"campaign: {summary} (resume with the same command)", flush=True)
    return 1 if status["failed"] else 0


def _checkpoints_kept(args: argparse.Namespace) -> bool:
    """Whether a run stopped by the budget's end will be resumed by a later campaign: as told, else
    when its checkpoints are in the user's cache (a sitting's folder goes with its machine)."""
    if args.checkpoints_kept is not None:
        return args.checkpoints_kept
    return resolve_path(args.checkpoint_dir).resolve().is_relative_to(cache_dir().resolve())


def _cmd_status(args: argparse.Namespace) -> int:
    print("\n".join(background.status_lines(resolve_path(args.state_dir))))
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    return background.stop(resolve_path(args.state_dir), wait_s=args.wait_minutes * 60)


def _cmd_sitting(args: argparse.Namespace) -> int:
    """One GPU sitting (:mod:`ranlib.campaign.sitting` says what it does and in which order)."""
    from ranlib.training.runtime import Dist, select_device
    from ranlib.training.recipes import PROFILES

    if not args.minutes > 0:
        raise RanlibError(f"--minutes must be positive, not {args.minutes:g}")
    if not args.bench_seconds >= 0:
        raise RanlibError(f"--bench-seconds must be 0 (no benchmark) or more, not {args.bench_seconds:g}")
    _check_max_group(args.max_group)
    deadline = time.monotonic() + args.minutes * 60
    out = args.out
    if out.exists() and not out.is_dir():
        raise RanlibError(f"--out {out} is a file; give the folder the archive should go to")
    if (out / ARCHIVE_NAME).exists():
        raise RanlibError(f"{out / ARCHIVE_NAME} holds an earlier sitting; unpack it first (make unpack "
                          f"ARCHIVE={out / ARCHIVE_NAME}) and move it away, or give another --out")
    _decode_once(args.dataset, args.data_root)
    slices = study_slices(args.seeds, args.dataset)
    for part in slices:  # every planned run checked before the device is spent
        if part.action == "train":
            _plan_from(args, part.experiments, profile=part.profile, seeds=part.seeds, rows=part.rows)
    out.mkdir(parents=True, exist_ok=True)
    log = SittingLog(provenance.utc_now(), args.minutes * 60)
    device = select_device(args.device, Dist())
    device_name = provenance.device_name(device)
    print(f"sitting: {args.minutes:g} minutes on {device_name}; results into {args.results_dir}, "
          f"archive {out / ARCHIVE_NAME}", flush=True)

    def left_s() -> float:
        return deadline - time.monotonic()

    def pack_now(_lines=None) -> None:
        """Everything so far into the archive (atomically: a kill leaves the previous one)."""
        folders = [n for n in (*EXPERIMENTS, *EXTRA_RESULTS) if (args.results_dir / n).is_dir()]
        masks = [p.parent.relative_to(args.checkpoint_dir).as_posix()
                 for p in sorted((args.checkpoint_dir / "attention_masks").glob("*/last.pt"))]
        pack(out / ARCHIVE_NAME, results_dir=args.results_dir, checkpoint_dir=args.checkpoint_dir,
             experiments=folders, checkpoints=masks)
        (out / "sitting.json").write_text(json.dumps({"started_at": log.started_at, "device": device_name,
                                                      "steps": log.steps}, indent=1) + "\n")

    t0 = time.monotonic()
    profiles = PROFILES["cifar"]
    checks = preflight(args.device, batch_size=profiles.get(args.profile, profiles["quick"]).batch_size,
                       members=min(4, args.max_group) if device.type == "cuda" else min(2, args.max_group))
    log.add("preflight", "ok" if all(c["ok"] for c in checks.checks.values()) else "partly",
            ", ".join(f"{k} {'ok' if v['ok'] else 'off'}" for k, v in checks.checks.items()), time.monotonic() - t0)
    max_group = checks.max_group(args.max_group)

    if args.bench_seconds > 0 and device.type == "cuda" and left_s() > args.bench_seconds + 120:
        t0 = time.monotonic()
        bench = subprocess.run([sys.executable, "-m", "ranlib.bench", "--fused", "--budget-seconds",
                                str(args.bench_seconds), "--out", str(args.results_dir / "performance"),
                                "--overwrite"], capture_output=True, text=True, timeout=args.bench_seconds + 120)
        detail = (bench.stdout.strip().splitlines() or [""])[-1] if bench.returncode == 0 else \
            _last_error_text(bench.stderr)
        log.add("benchmark", "ok" if bench.returncode == 0 else "failed", detail, time.monotonic() - t0)
        pack_now()

    for part in slices:
        if checks.blocker() or left_s() < GROUP_STARTUP_S + 30:
            log.add(part.name, "not started", checks.blocker() or
                    f"{max(left_s(), 0):.0f} s left, too little to start a group ({GROUP_STARTUP_S + 30:.0f} s)")
            continue
        if part.action != "train":
            {"jpeg_gap": jpeg_gap_step, "imagewoof_masks": imagewoof_masks_step}[part.action](args, log)
            pack_now()
            continue
        t0 = time.monotonic()
        plan = _plan_from(args, part.experiments, profile=part.profile, seeds=part.seeds, rows=part.rows,
                          overrides=checks.overrides())
        if not plan.runs:
            log.add(part.name, "done before", f"{len(plan.skipped)} runs have results")
            continue
        groups = group_runs(plan.runs, max_group)
        if part.profile == "full":  # each group at the smallest batch that finishes in what is left
            fitted = [fit_batch(g, left_s() - GROUP_STARTUP_S, checks.speed, checkpoint_dir=args.checkpoint_dir)
                      for g in groups]
            groups = [g for g in fitted if g is not None]
            if not groups:
                log.add(part.name, "not started", "no batch finishes in the time left")
                continue
        runner = Campaign(groups, budget_s=max(left_s(), 1.0), launch_margin_s=GROUP_STARTUP_S,
                          stop_grace_s=min(45.0, max(left_s() / 4, 5.0)), ledger=args.results_dir / LEDGER_NAME,
                          device_name=device_name, estimate_s=lambda g: estimate_group_s(g, checks.speed),
                          on_finish=pack_now)
        lines = runner.run()
        status = {s: sum(line["status"] == s for line in lines) for s in ("finished", "interrupted", "failed")}
        failed = [f"{line['run_name']}: {line['message']}" for line in lines if line["status"] == "failed"]
        log.add(part.name, f"{status['finished']} finished, {status['interrupted']} interrupted, "
                           f"{status['failed']} failed, {len(runner.left)} not started",
                f"{len(groups)} fused groups" + ("; " + "; ".join(failed[:3]) if failed else ""), time.monotonic() - t0)
        pack_now()
    pack_now()
    print_table(log, args, left_s())
    return 0


def _last_error_text(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return (lines or ["no output"])[-1][:300]


def _check_max_group(max_group: int) -> None:
    if max_group < 1:
        raise RanlibError(f"--max-group must be at least 1, not {max_group}")


def _cmd_train_group(args: argparse.Namespace) -> int:
    from ranlib.training.config import TrainConfig, resolve_fields
    from ranlib.training.loop import run_group

    try:
        configs = json.loads(args.group_file.read_text())
    except (OSError, ValueError) as exc:
        raise RanlibError(f"cannot read the group file {args.group_file} ({exc}); it is written by `campaign run`") from None
    if not isinstance(configs, list) or not configs:
        raise RanlibError(f"{args.group_file} is not a list of runs (TrainConfig fields); it is written by "
                          "`campaign run`")
    for i, config in enumerate(configs):
        resolve_fields(config, f"{args.group_file}: run {i}")
    records = run_group([TrainConfig(**{**c, "resume": True, "progress": False}) for c in configs])
    for record in records:
        print(f"{record['run_name']}: final top-1 error {record['final']['top1_error']:.2f} %", flush=True)
    return 0


def _cmd_pack(args: argparse.Namespace) -> int:
    names = pack(args.out, results_dir=args.results_dir, checkpoint_dir=args.checkpoint_dir,
                 experiments=args.experiments, checkpoints=args.checkpoints)
    print(f"campaign: packed {len(names)} files into {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB)")
    return 0


def _cmd_unpack(args: argparse.Namespace) -> int:
    if not args.archive.is_file():
        raise RanlibError(f"no archive at {args.archive}; give the path of a file written by `campaign pack`")
    counts = unpack(args.archive, results_dir=args.results_dir, checkpoint_dir=args.checkpoint_dir)
    print(f"campaign: {counts['results']} new results files ({counts['identical']} already here), "
          f"{counts['ledger_lines']} ledger lines, {counts['other']} metrics/log/checkpoint files"
          + (f" ({counts['kept']} kept here: newer than the archive's)" if counts["kept"] else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command, for `status` to say how to resume
    commands = {"plan": _cmd_plan, "run": _cmd_run, "status": _cmd_status, "stop": _cmd_stop,
                "pack": _cmd_pack, "unpack": _cmd_unpack,
                "train-group": _cmd_train_group, "sitting": _cmd_sitting}
    try:
        return commands[args.command](args)
    except (RanlibError, tarfile.TarError) as exc:
        print_error(exc)
        return getattr(exc, "exit_code", 1)  # a stopped training says which signal, for the campaign
