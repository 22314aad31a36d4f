"""Many trainings on one device within a time budget: ``python -m ranlib.campaign``.

    python -m ranlib.campaign plan --profile quick --seeds 0 1            # what would run, and its size
    python -m ranlib.campaign run --profile quick --seeds 0 1 --device cuda \\
        --dataset cifar10-jpeg --data-root .data/cifar10-jpeg --concurrent 4 --budget-minutes 25
    python -m ranlib.campaign pack --out campaign.tar.gz                  # results to bring back
    python -m ranlib.campaign unpack campaign.tar.gz                      # here: into results/
    python -m ranlib.campaign run --detach --device cpu ...               # in the background, from a pinned commit
    python -m ranlib.campaign status                                      # what it trains, ETA, what finished
    python -m ranlib.campaign stop                                        # the run in flight checkpoints

``plan`` lists what would run (:mod:`ranlib.campaign.plan`); ``run`` trains it within a budget
(:class:`ranlib.campaign.runner.Campaign`): on a CPU one run at a time, in the CPU's order
(:func:`ranlib.study.planning.cpu_order`), each started only if its estimate
(:mod:`ranlib.campaign.estimates`) fits the budget left or its checkpoint is kept for a later
campaign (by default in the user's cache, :func:`ranlib.campaign.plan.default_checkpoints`); under
a lock, in the foreground or with ``--detach`` in the background from a pinned commit
(:mod:`ranlib.campaign.background`, :mod:`ranlib.campaign.pinned`). ``sitting`` is one unattended
GPU sitting (:mod:`ranlib.campaign.sitting`); ``pack`` and ``unpack`` carry its results home
(:mod:`ranlib.campaign.archive`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Sequence

from ranlib.errors import RanlibError, print_error, quiet_on_closed_pipe
from ranlib.paths import cache_dir, resolve_path
from ranlib.study.experiments import EXPERIMENTS
from ranlib.study.ledger import LEDGER_NAME
from ranlib.study.planning import cpu_order, group_runs, training_size
from ranlib.training import provenance

from . import background, pinned
from .archive import EXTRA_RESULTS, pack, unpack
from .plan import CIFAR_EXPERIMENTS, Plan, default_checkpoints, plan_campaign
from .runner import Campaign
from .sitting import (ARCHIVE_NAME, GROUP_STARTUP_S, SittingLog, estimate_group_s, fit_batch, imagewoof_masks_step,
                      jpeg_gap_step, preflight, print_table, study_slices)


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
          f"left out. CPU-hours at each run's images/s measured in its own sittings (the median log window), else "
          f"the rate of the runs measured in the checkpoint folder, else the rate recorded on the project's machine "
          f"(ranlib.campaign.estimates)")
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
    from ranlib.training.runtime import Dist, select_device

    from .estimates import Estimator

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
    from ranlib.training.recipes import PROFILES
    from ranlib.training.runtime import Dist, select_device

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


@quiet_on_closed_pipe
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
