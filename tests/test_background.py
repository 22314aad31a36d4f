"""The background campaign (ranlib.campaign.background, ranlib.campaign.pinned) and the CPU's plan (ranlib.study.planning.cpu_order,
ranlib.campaign.estimates): detach, status, stop and resume from a pinned commit; the lock; the order and CPU-hours."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ranlib.campaign import background, estimates
from ranlib.campaign import cli as campaign
from ranlib.campaign.plan import CIFAR_EXPERIMENTS, plan_campaign
from ranlib.campaign.runner import Campaign
from ranlib.campaign.sitting import GROUP_STARTUP_S
from ranlib.errors import RanlibError
from ranlib.study import planning
from ranlib.study.ledger import LEDGER_NAME, read_ledger
from ranlib.training.results import load_results

from test_train import REPO, make_folder_dataset, subprocess_env

TINY = {"batch_size": 4, "iterations": 40, "eval_every": 20, "checkpoint_every": 40, "log_every": 1,
        "max_train_samples": 16, "max_test_samples": 8}


def _planned_run(**changes) -> tuple[str, str]:
    """(experiment, run name) of the one run `run_args` plans (with ``changes`` to TINY): its name
    carries the identity suffix of its training."""
    [config] = planning.plan_runs("mask_structure", profile="smoke", seeds=[0], dataset="folder", data_root="unused",
                                  device="cpu", rows=["attention56-local"], overrides={**TINY, **changes})
    return config["experiment"], config["run_name"]


RUN = _planned_run()


@pytest.fixture(autouse=True)
def caches(tmp_path, monkeypatch) -> Path:
    """Worktrees, checkpoints, the campaign's lock and state, counts: all under tmp_path."""
    for key, value in subprocess_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("RANLIB_CACHE_DIR", str(tmp_path / "xdg" / "counts"))
    return tmp_path / "xdg" / "ranlib"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("data") / "tiny")


def git(cwd: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def checkout(tmp_path: Path) -> Path:
    """A git checkout of this working tree's code (ranlib/, pyproject.toml), as one commit."""
    repo = tmp_path / "checkout"
    files = git(REPO, "ls-files", "-co", "--exclude-standard", "ranlib", "pyproject.toml").splitlines()
    for name in files:
        if (REPO / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            (repo / name).write_bytes((REPO / name).read_bytes())
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "the code")
    return repo


def run_args(data_root: Path, *extra: str) -> list[str]:
    return ["run", "--device", "cpu", "--profile", "smoke", "--experiments", RUN[0], "--rows", "attention56-local",
            "--seeds", "0", "--dataset", "folder", "--data-root", str(data_root), "--budget-minutes", "30",
            "--set", *(f"{k}={v}" for k, v in TINY.items()), *extra]


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def has_trained(metrics: Path) -> bool:
    return metrics.is_file() and '"event": "train"' in metrics.read_text()


# --- detach, status, stop, resume ----------------------------------------------------------------

@pytest.mark.slow
def test_detach_status_stop_resume_trains_the_pinned_commit_as_one_uninterrupted_run(tmp_path, data_root, caches,
                                                                                      monkeypatch, capsys):
    repo = checkout(tmp_path)
    pinned_commit = git(repo, "rev-parse", "HEAD")
    monkeypatch.chdir(repo)
    # The uninterrupted reference, trained alongside (two cores) from the same code.
    reference = subprocess.Popen(
        [sys.executable, "-m", "ranlib", "train", "--experiment", RUN[0], "--run-name", RUN[1],
         "--model", "cifar_attention56", "--model-kwargs", "mask=local", "--dataset", "folder", "--data-root",
         str(data_root), "--profile", "smoke", "--seed", "0", "--device", "cpu", "--no-progress",
         "--results-dir", str(tmp_path / "reference"), "--checkpoint-dir", str(tmp_path / "reference-ckpt"),
         *(f"--{k.replace('_', '-')}={v}" for k, v in TINY.items())],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    # returns while the campaign trains (niced by 1 here, not the default 10: the test would wait on other work)
    assert campaign.main(run_args(data_root, "--detach", "--nice", "1")) == 0
    out = capsys.readouterr().out
    assert "started in the background" in out and "niced 1" in out and pinned_commit[:10] in out, out
    run_dir = caches / "checkpoints" / RUN[0] / RUN[1]
    wait_for(lambda: has_trained(run_dir / "metrics.jsonl"), 240, "the first training step")

    campaign_pid = background.holder(caches / "campaign")
    assert os.getpriority(os.PRIO_PROCESS, campaign_pid) == min(os.getpriority(os.PRIO_PROCESS, 0) + 1, 19)

    # A commit in the checkout that would change the training (before and after a resume: the
    # schedule's lr), made while the campaign runs.
    schedule_py = repo / "ranlib" / "training" / "recipes.py"  # WarmupStepLR: the lr schedule
    source = schedule_py.read_text()
    assert "        factor = self.decay ** bisect" in source
    schedule_py.write_text(source.replace("        factor = self.decay ** bisect", "        factor = 0.5 * self.decay ** bisect"))
    git(repo, "commit", "-qam", "a change that would train something else")

    assert campaign.main(["status"]) == 0
    status = capsys.readouterr().out
    assert f"running (pid {campaign_pid})" in status and "of the budget left" in status
    assert f"running     {RUN[0]}/{RUN[1]}: iteration" in status and "images/s, ETA" in status, status

    assert campaign.main(["stop"]) == 0
    stopped = capsys.readouterr().out
    assert background.holder(caches / "campaign") is None
    at = estimates.checkpoint_iteration(run_dir / "last.pt")
    assert 0 < at < TINY["iterations"], stopped
    assert f"{RUN[0]}/{RUN[1]} stopped with its checkpoint at iteration {at}" in stopped
    assert "resume with: cd " in stopped and "--detach" in stopped
    assert not (repo / "results" / RUN[0]).exists()
    assert campaign.main(["status"]) == 0
    assert f"resumes from its checkpoint at iteration {at}/{TINY['iterations']}" in capsys.readouterr().out

    # The same command again, now that the checkout is at the new commit: the run resumes on its own.
    assert campaign.main(run_args(data_root, "--detach", "--nice", "1")) == 0
    capsys.readouterr()
    wait_for(lambda: background.holder(caches / "campaign") is None, 300, "the resumed campaign to end")
    assert reference.wait(timeout=300) == 0, reference.stderr.read()

    [resumed] = load_results(repo / "results" / RUN[0])  # landed in the checkout's results/
    [uninterrupted] = load_results(tmp_path / "reference" / RUN[0])
    assert resumed["provenance"]["git_commit"] == pinned_commit and resumed["provenance"]["git_dirty"] is False
    assert resumed["provenance"]["resumed"] is True
    assert resumed["curve"] == uninterrupted["curve"] and resumed["final"] == uninterrupted["final"]
    mine = torch.load(run_dir / "last.pt", weights_only=False)["model"]
    theirs = torch.load(tmp_path / "reference-ckpt" / RUN[0] / RUN[1] / "last.pt", weights_only=False)["model"]
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    ledger = read_ledger(repo / "results" / LEDGER_NAME)
    assert [(line["status"], line["git_commit"]) for line in ledger] == [("interrupted", pinned_commit),
                                                                          ("finished", pinned_commit)]
    assert campaign.main(["status"]) == 0
    assert "top-1 error" in capsys.readouterr().out


# --- the lock -------------------------------------------------------------------------------------

def test_the_lock_keeps_a_second_campaign_out_and_a_killed_ones_is_taken_over(tmp_path, data_root, caches, capsys):
    state_dir = caches / "campaign"
    state_dir.mkdir(parents=True)
    holder = subprocess.Popen(  # a campaign as far as the lock goes: holds it, names itself, is killed
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\nfcntl.flock(fd, fcntl.LOCK_EX)\n"
         "os.write(fd, f'{os.getpid()}\\n'.encode())\nprint('locked', flush=True)\ntime.sleep(120)",
         str(state_dir / background.LOCK_NAME)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    (state_dir / background.STATE_NAME).write_text(json.dumps(
        {"pid": holder.pid, "phase": "running", "started_at": "then", "runs": []}))
    assert background.holder(state_dir) == holder.pid

    assert campaign.main(run_args(data_root, "--results-dir", str(tmp_path / "results"))) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ranlib: error: a campaign is already running (pid {holder.pid}") and "\n" not in err
    assert not (caches / "checkpoints").exists()  # nothing trained

    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert background.holder(state_dir) is None  # the kernel released it
    lock = background.CampaignLock.acquire(state_dir)
    try:
        assert f"taking over the lock of campaign pid {holder.pid}" in capsys.readouterr().out
        assert background.holder(state_dir) == os.getpid()
    finally:
        lock.release()
    assert background.holder(state_dir) is None


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="a training learns of its campaign's death through Linux's prctl")
def test_a_killed_campaign_s_training_checkpoints_and_the_next_takes_its_lock_over(tmp_path, data_root, caches,
                                                                                  capsys):
    args = run_args(data_root, "--results-dir", str(tmp_path / "results"))
    args[args.index("iterations=40")] = "iterations=4000"
    killed = subprocess.Popen([sys.executable, "-m", "ranlib.campaign", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    experiment, name = _planned_run(iterations=4000)
    run_dir = caches / "checkpoints" / experiment / name
    wait_for(lambda: has_trained(run_dir / "metrics.jsonl"), 240, "the first training step")
    [run] = background.read_state(caches / "campaign")["runs"]
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    wait_for(lambda: not alive(run["pid"]), 60, "the orphaned training to stop")
    at = estimates.checkpoint_iteration(run_dir / "last.pt")
    assert 0 < at < 4000  # written when it was told its campaign was gone (checkpoint_every is 40)
    text = "\n".join(background.status_lines(caches / "campaign"))
    assert "ended without closing (killed?)" in text
    assert f"stopped     {experiment}/{name}: resumes from its checkpoint at iteration {at}/4000" in text, text
    lock = background.CampaignLock.acquire(caches / "campaign")
    lock.release()
    assert f"taking over the lock of campaign pid {killed.pid}" in capsys.readouterr().out


# --- the pinned commit ----------------------------------------------------------------------------

def test_uncommitted_code_or_no_git_is_refused_in_one_line(tmp_path, data_root, monkeypatch, capsys):
    import shutil

    from ranlib.campaign import pinned

    repo = checkout(tmp_path)
    monkeypatch.chdir(repo)
    (repo / "ranlib" / "paths.py").write_text((repo / "ranlib" / "paths.py").read_text() + "\n# edited\n")
    assert campaign.main(run_args(data_root, "--detach")) == 1
    err = capsys.readouterr().err.strip()
    assert "ranlib/paths.py in" in err and "uncommitted changes" in err and "\n" not in err
    git(repo, "checkout", "ranlib/paths.py")
    (repo / "notes.md").write_text("not code")
    git(repo, "add", "notes.md")
    git(repo, "commit", "-qm", "notes")
    (repo / "notes.md").write_text("changed: it does not change what trains")
    assert pinned.checkout_commit(repo) == git(repo, "rev-parse", "HEAD")
    shutil.rmtree(repo / ".git")
    assert campaign.main(run_args(data_root, "--detach")) == 1
    assert "is not a git checkout" in capsys.readouterr().err


def test_a_run_resumes_on_the_commit_it_started_on(tmp_path, caches):
    from ranlib.campaign import pinned

    repo = checkout(tmp_path)
    first = git(repo, "rev-parse", "HEAD")
    (repo / "ranlib" / "paths.py").write_text((repo / "ranlib" / "paths.py").read_text() + "\n# later\n")
    git(repo, "commit", "-qam", "later")
    later = git(repo, "rev-parse", "HEAD")
    config = {"experiment": RUN[0], "run_name": RUN[1], "checkpoint_dir": str(caches / "checkpoints")}
    folder = estimates.run_dir(config)
    pinned.record_commit(folder, first)
    assert pinned.resume_commit(folder) is None  # no checkpoint: it would start afresh
    torch.save({"iteration": 3}, folder / "last.pt")
    assert pinned.resume_commit(folder) == first
    here = pinned.worktree(repo, later)
    assert git(here, "rev-parse", "HEAD") == later and git(here, "status", "--porcelain") == ""
    older = pinned.worktree(repo, first)
    assert git(older, "rev-parse", "HEAD") == first and older.parent == here.parent == caches / "worktrees"
    env = pinned.code_env(older, {"PYTHONPATH": "/elsewhere"})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(older), "/elsewhere"]


def test_a_worktree_whose_record_the_repository_lost_is_made_afresh(tmp_path, caches):
    import shutil

    from ranlib.campaign import pinned

    repo = checkout(tmp_path)
    commit = git(repo, "rev-parse", "HEAD")
    here = pinned.worktree(repo, commit)
    shutil.rmtree(repo / ".git" / "worktrees")  # as in a restored or re-cloned checkout
    with pytest.raises(subprocess.CalledProcessError):
        git(here, "rev-parse", "HEAD")
    assert pinned.worktree(repo, commit) == here
    assert git(here, "rev-parse", "HEAD") == commit and git(here, "status", "--porcelain") == ""
    stranger = caches / "worktrees" / "not-a-worktree"
    stranger.mkdir()
    (stranger / "keep.txt").write_text("not ranlib's")
    with pytest.raises(RanlibError, match="is not a clean worktree"):
        pinned.worktree(repo, "not-a-worktree")
    assert (stranger / "keep.txt").is_file()  # a folder that is no worktree is never deleted


# --- status of what is left -----------------------------------------------------------------------

def ended_campaign_status(config: dict, state_dir: Path, status: str, wall_s: float) -> str:
    """`campaign status` after a campaign that ended with its one run (RUN) `status` after `wall_s` seconds."""
    tracker = background.Tracker(state_dir, [[config]], estimator=estimates.Estimator(torch.device("cpu")),
                                 commit="abc", worktree=None, command="python -m ranlib.campaign run ...",
                                 budget_s=600)
    tracker.finished([{"experiment": RUN[0], "run_name": RUN[1], "status": status, "message": "", "wall_s": wall_s}])
    tracker.ended(f"1 {status}")
    return "\n".join(background.status_lines(state_dir))


@pytest.fixture
def smoke_config(tmp_path, caches, data_root) -> dict:
    [config] = planning.plan_runs(RUN[0], profile="smoke", seeds=[0], dataset="folder", data_root=str(data_root),
                                  results_dir=tmp_path / "results", checkpoint_dir=caches / "checkpoints",
                                  device="cpu", rows=["attention56-local"], overrides=TINY)
    (caches / "campaign").mkdir(parents=True)
    return config


def test_status_says_whether_a_run_resumes_or_starts_over(smoke_config, caches):
    text = ended_campaign_status(smoke_config, caches / "campaign", "interrupted", 5.0)
    assert "none running" in text and "starts over: its checkpoint is not in" in text, text  # another machine's
    assert "resume with: python -m ranlib.campaign run ..." in text
    folder = estimates.run_dir(smoke_config)
    folder.mkdir(parents=True)
    torch.save({"iteration": 12}, folder / "last.pt")
    text = "\n".join(background.status_lines(caches / "campaign"))
    assert f"resumes from its checkpoint at iteration 12/{TINY['iterations']}" in text, text


def test_status_gives_a_resumed_run_s_whole_training_time_not_only_this_campaign_s(smoke_config, caches):
    from ranlib.training.results import results_path

    path = results_path(smoke_config["results_dir"], RUN[0], RUN[1])
    path.parent.mkdir(parents=True)

    def status(campaign_s: float, run_s: float) -> str:
        path.write_text(json.dumps({"final": {"top1_error": 46.43}, "cost": {"wall_time_s": run_s}}))
        return ended_campaign_status(smoke_config, caches / "campaign", "finished", campaign_s)

    text = status(1788.0, 12232.0)  # its last 30 minutes ran in this campaign, 3.4 hours in all
    assert "top-1 error 46.43 % after 3 h 24 min in all, 30 min of it in this campaign" in text, text
    assert "top-1 error 46.43 % after 30 min -> " in status(1788.0, 1790.0)  # trained in one campaign


def test_status_says_where_the_budget_s_end_stops_a_run_that_outlasts_it(tmp_path, caches):
    [config] = planning.plan_runs("arl_vs_nal", profile="quick", seeds=[0], dataset="cifar10-jpeg", data_root="d",
                                  results_dir=tmp_path / "results", checkpoint_dir=caches / "checkpoints",
                                  device="cpu", rows=["attention92-arl"])
    estimator = estimates.Estimator(torch.device("cpu"))
    settled = estimator.settled(config).to_dict()
    total, batch = settled["iterations"], settled["batch_size"]
    folder = estimates.run_dir(config)
    folder.mkdir(parents=True)
    # half done, at a rate that needs an hour for the other half
    rate = (total // 2) * batch / 3600.0
    (folder / "metrics.jsonl").write_text("".join(
        json.dumps(line) + "\n" for line in
        [{"event": "start", "iteration": 0, "config": settled}]
        + [{"event": "train", "iteration": i, "images_per_s": rate} for i in range(50, total // 2 + 1, 50)]))
    state_dir = caches / "campaign"
    lock = background.CampaignLock.acquire(state_dir)  # this process plays the running campaign
    try:
        def status(budget_s: float) -> str:
            tracker = background.Tracker(state_dir, [[config]], estimator=estimator, commit="abc", worktree=None,
                                         command="python -m ranlib.campaign run ...", budget_s=budget_s)
            tracker.running(budget_s)
            tracker.started([config], pid=os.getpid(), commit="abc")
            return "\n".join(background.status_lines(state_dir))

        text = status(1800.0)  # half the hour left: it stops about three quarters of the way
        assert f"iteration {total // 2}/{total}" in text, text
        near = int(text.split("checkpoints near iteration ")[1].split("/")[0])
        assert abs(near - 3 * total // 4) <= total // 50, text
        assert "the next campaign resumes it" in text
        assert "the budget ends first" not in status(3 * 3600.0)  # it finishes inside the budget
    finally:
        lock.release()


# --- the CPU's plan -------------------------------------------------------------------------------

def test_the_cpu_order_puts_the_claims_per_cpu_hour_first(tmp_path):
    # an empty results folder: the checkout's own results would leave their runs out of the plan
    plan = plan_campaign(list(CIFAR_EXPERIMENTS), profile="quick", seeds=[0, 1],
                         dataset="cifar10-jpeg", data_root="d", results_dir=tmp_path)
    ordered = planning.cpu_order(plan.runs)
    assert sorted(c["run_name"] for _, c in ordered) == sorted(c["run_name"] for c in plan.runs)

    def what(config):
        kwargs = {k: v for k, v in config["model_kwargs"].items() if v not in ("mixed", True, "encoder_decoder")}
        return config["model"].removeprefix("cifar_"), kwargs, config.get("noise_level", 0), config["seed"]

    att56 = [("attention56", {}), ("attention56", {"residual_attention": False}),
             ("attention56", {"attention": "channel"}), ("attention56", {"attention": "spatial"}),
             ("attention56", {"mask": "local"})]
    table5 = [("attention92", {}, 0.7), ("resnet164", {}, 0.7), ("attention92", {}, 0.5), ("resnet164", {}, 0.5),
              ("attention92", {}, 0), ("resnet164", {}, 0), ("attention92", {"residual_attention": False}, 0)]
    att164 = [("attention164", {}), ("attention164", {"residual_attention": False})]
    expected = ([(m, k, 0, s) for s in (0, 1) for m, k in att56] + [(m, k, n, s) for s in (0, 1) for m, k, n in table5]
                + [(m, k, 0, s) for s in (0, 1) for m, k in att164])
    assert [what(c) for _, c in ordered[:len(expected)]] == expected
    assert {part for part, _ in ordered[len(expected):]} == {"the rest"}
    rest = [c["run_name"] for _, c in ordered[len(expected):]]
    assert rest == [c["run_name"] for c in plan.runs if c["run_name"] in rest]  # in their planned order


def test_cpu_hours_come_from_the_run_s_measured_speed_and_its_checkpoint(tmp_path):
    [config] = planning.plan_runs("arl_vs_nal", profile="quick", seeds=[0], dataset="cifar10-jpeg", data_root="d",
                                  checkpoint_dir=tmp_path, device="cpu", rows=["attention92-arl"])
    estimator = estimates.Estimator(torch.device("cpu"))
    recorded = estimator.seconds(config)
    settled = estimator.settled(config).to_dict()
    folder = estimates.run_dir(config)
    folder.mkdir(parents=True)

    def measured(images_per_s: float) -> float:
        (folder / "metrics.jsonl").write_text(
            json.dumps({"event": "start", "iteration": 0, "config": settled}) + "\n"
            + json.dumps({"event": "train", "iteration": 50, "images_per_s": images_per_s}) + "\n")
        estimator.forget()
        return estimator.seconds(config) - GROUP_STARTUP_S

    slow, fast = measured(100.0), measured(200.0)
    assert slow == pytest.approx(2 * fast) and slow > settled["iterations"] * settled["batch_size"] / 100.0
    torch.save({"iteration": settled["iterations"] // 4}, folder / "last.pt")  # a quarter done
    estimator.forget()
    assert estimator.seconds(config) - GROUP_STARTUP_S == pytest.approx(0.75 * fast)
    assert recorded > 0
    # another run with these settings is timed at the rate fitted to this one; one with other settings is not
    same = dict(config, run_name="same-settings")
    assert estimator.seconds(same) - GROUP_STARTUP_S == pytest.approx(fast)
    other = dict(config, run_name="other-settings", batch_size=settled["batch_size"] * 2)
    assert estimator.seconds(other) == pytest.approx(recorded)


def test_a_sitting_that_began_beside_other_work_is_timed_by_its_windows_not_its_running_average(tmp_path):
    # 50-iteration windows at batch 100: three at 50 images/s (a loaded machine), then twelve at 200.
    windows = [50.0] * 3 + [200.0] * 12
    lines, seconds = [], 0.0
    for i, rate in enumerate(windows, start=1):
        seconds += 50 * 100 / rate
        lines.append((10 + 50 * i, 50 * i * 100 / seconds))  # what the loop logs: the sitting's running average
    assert estimates.window_rates(10, 100, lines) == pytest.approx(windows)
    assert lines[-1][1] < 150  # the running average still remembers the loaded start
    settings = {"batch_size": 100, "iterations": 8000, "precision": "bf16", "channels_last": True}
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text("".join(
        [json.dumps({"event": "start", "iteration": 0, "config": dict(settings, batch_size=50)}) + "\n",
         json.dumps({"event": "train", "iteration": 50, "images_per_s": 10.0}) + "\n",  # other settings: left out
         json.dumps({"event": "resume", "iteration": 10, "config": settings}) + "\n"]
        + [json.dumps({"event": "train", "iteration": i, "images_per_s": r}) + "\n" for i, r in lines]
        + ['{"event": "train", "iter\n']))  # a line cut by a kill
    progress = estimates.read_progress(folder)
    assert progress.iteration == lines[-1][0] and progress.iterations == 8000
    assert progress.images_per_s == pytest.approx(200.0)  # the last RECENT_WINDOWS windows
    assert progress.typical_images_per_s == pytest.approx(200.0)  # the median of the fifteen
    assert estimates.read_progress(tmp_path / "none") == estimates.Progress(0, None)


def test_the_recorded_cpu_rates_are_the_committed_benchmark_s():
    bench = json.loads((REPO / "results" / "performance" / "cpu-cifar_attention56.json").read_text())
    assert bench["model"] == estimates.CPU_RATE_MODEL
    fastest = {}  # the batch the constants name: 128 for bf16 with channels_last, else the one timed
    for step in bench["step"]:
        key = (step["precision"], step["channels_last"])
        if key != ("bf16", True) or step["batch_size"] == 128:
            fastest[key] = step["images_per_s"]
    assert fastest.keys() == estimates.CPU_STEP_IMAGES_PER_S.keys()
    for key, rate in fastest.items():
        assert estimates.CPU_STEP_IMAGES_PER_S[key] == pytest.approx(rate, rel=0.01), key
    assert estimates.CPU_LOOP_SHARE == pytest.approx(bench["loop"]["share"], rel=0.01)


def test_plan_for_a_cpu_prints_the_order_and_cpu_hours(tmp_path, capsys):
    assert campaign.main(["plan", "--device", "cpu", "--profile", "quick", "--seeds", "0", "--experiments",
                          "arl_vs_nal", "--rows", "attention164-arl", "attention56-nal", "--data-root", "d",
                          "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "CPU-h" in out[0]
    names = [line.split()[1] for line in out if line[:3].strip().isdigit()]
    assert names == ["arl_vs_nal/attention56-nal-quick-s0", "arl_vs_nal/attention164-arl-quick-s0"]
    hours = [float(line.split()[5]) for line in out if line[:3].strip().isdigit()]
    assert hours[1] > hours[0] > 0
    assert out[-1].startswith("2 runs to train one at a time, about")


def test_a_run_longer_than_the_budget_starts_only_where_its_checkpoint_is_kept(tmp_path):
    parser = campaign.build_parser()
    assert campaign._checkpoints_kept(parser.parse_args(["run"]))  # the default folder: the user's cache
    assert not campaign._checkpoints_kept(parser.parse_args(["run", "--checkpoint-dir", str(tmp_path)]))
    assert campaign._checkpoints_kept(parser.parse_args(["run", "--checkpoint-dir", str(tmp_path),
                                                         "--checkpoints-kept"]))
    group = [{"experiment": "x", "run_name": "y"}]
    for resumable, expected in ((False, None), (True, group)):
        runner = Campaign([group], budget_s=600, estimate_s=lambda g: 3600.0, resumable=resumable, echo=False)
        assert runner._next_fitting([group], 500.0, take=False) == expected
    fits = Campaign([group], budget_s=600, estimate_s=lambda g: 100.0, echo=False)
    assert fits._next_fitting([group], 500.0, take=False) == group
