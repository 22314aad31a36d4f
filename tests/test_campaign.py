"""ranlib.campaign: planning without duplicates, concurrent trainings, the budget's stop and resume,
the ledger, and carrying results between machines (real CPU trainings on tiny data)."""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

import pytest

from ranlib.campaign import cli as campaign
from ranlib.campaign.archive import pack, unpack
from ranlib.campaign.plan import CIFAR_EXPERIMENTS, plan_campaign
from ranlib.campaign.runner import LOG_NAME, Campaign
from ranlib.errors import RanlibError, ResultsExistError
from ranlib.study import planning
from ranlib.study.ledger import LEDGER_NAME, read_ledger
from ranlib.study.planning import training_size
from ranlib.training.results import load_results

from test_train import REPO, make_folder_dataset, subprocess_env

TINY = {"batch_size": 4, "iterations": 2, "eval_every": 2, "checkpoint_every": 2,
        "max_train_samples": 16, "max_test_samples": 8}
LONG = {"iterations": 30, "eval_every": 30, "checkpoint_every": 30}  # long enough to be stopped


@pytest.fixture(autouse=True)
def cache_here(tmp_path, monkeypatch):
    """The campaign's lock, state and default checkpoint folder, and model counts, go to the user's
    cache: here, tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("RANLIB_CACHE_DIR", str(tmp_path / "xdg" / "counts"))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("data") / "tiny")


def planned_name(data_root, row, **overrides) -> str:
    """What a tiny plan names the run of ``row`` (its overrides give it a suffix of its own)."""
    [config] = planning.plan_runs("mask_structure", profile="smoke", seeds=[0], dataset="folder",
                                  data_root=str(data_root), rows=[row], overrides={**TINY, **overrides})
    return config["run_name"]


def tiny_plan(tmp_path, data_root, rows, **overrides):
    return plan_campaign(["mask_structure"], profile="smoke", seeds=[0], dataset="folder",
                                  data_root=str(data_root), results_dir=tmp_path / "results",
                                  checkpoint_dir=tmp_path / "checkpoints", device="cpu", rows=rows,
                                  overrides={**TINY, **overrides})


@pytest.fixture
def child_env(monkeypatch):
    """Trainings start as `python -m ranlib train`: one thread each, ranlib importable."""
    for key, value in subprocess_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(REPO)


def ledger_lines(tmp_path) -> list[dict]:
    return read_ledger(tmp_path / "results" / LEDGER_NAME)


# --- planning -----------------------------------------------------------------------------------

def test_plan_is_seed_major_and_trains_a_shared_row_once(tmp_path):
    plan = plan_campaign(["attention_types", "arl_vs_nal", "mask_structure"], profile="quick",
                                  seeds=[0, 1], dataset="cifar10-jpeg", data_root="d",
                                  results_dir=tmp_path)
    names = [f"{c['experiment']}/{c['run_name']}" for c in plan.runs]
    assert len(names) == len(set(names))
    seeds = [c["seed"] for c in plan.runs]
    assert seeds == sorted(seeds)  # every table's first seed before any second seed
    # Attention-56 with default switches: Table 1's mixed row; Table 3's ARL and Table 4's
    # encoder-decoder rows are the same training
    assert "attention_types/attention56-mixed-quick-s0" in names
    assert "arl_vs_nal/attention56-arl-quick-s0" not in names
    assert "mask_structure/attention56-encoder_decoder-quick-s0" not in names
    skipped = {f"{c['experiment']}/{c['run_name']}": why for c, why in plan.skipped}
    assert skipped["arl_vs_nal/attention56-arl-quick-s1"] == \
        "same training as attention_types/attention56-mixed-quick-s1"
    assert len(plan.runs) == 2 * (3 + 8 + 1)  # Table 1, Table 3 less its shared row, Table 4's local row
    assert len(plan.runs) + len(plan.skipped) == 2 * (3 + 9 + 2)


def test_plan_rows_and_bad_selections(tmp_path):
    plan = plan_campaign(list(CIFAR_EXPERIMENTS), profile="quick", seeds=[0],
                                  dataset="cifar10-jpeg", data_root="d", results_dir=tmp_path,
                                  rows=["attention92-noise70", "resnet164-noise70"])
    assert [c["run_name"] for c in plan.runs] == ["resnet164-noise70-quick-s0",
                                                  "attention92-noise70-quick-s0"]
    with pytest.raises(RanlibError, match="unknown experiment"):
        plan_campaign(["table9"], profile="quick", seeds=[0], dataset="x", data_root="d")
    with pytest.raises(RanlibError, match="row.*nope"):
        plan_campaign(["label_noise"], profile="quick", seeds=[0], dataset="x", data_root="d",
                               rows=["nope"])


def test_a_run_trained_under_its_old_name_is_still_found(tmp_path):
    """a batch other than the profile's now shows in the name (-b128), but a run
    trained before under the plain name is matched by its configuration, not by its name."""
    from test_results import make_record

    from ranlib.training.results import write_results

    def plan():
        return plan_campaign(["attention_types"], profile="quick", seeds=[0], dataset="cifar10-jpeg",
                                      data_root="d", results_dir=tmp_path, rows=["attention56-mixed"],
                                      overrides={"batch_size": 128})

    [config] = plan().runs
    assert config["run_name"] == "attention56-mixed-quick-s0-b128"
    old = {**config, "run_name": "attention56-mixed-quick-s0", "lr": 0.2, "iterations": 8000}  # as resolve filled it
    write_results({**make_record("attention56-mixed-quick-s0"), "experiment": "attention_types", "config": old},
                  tmp_path)
    later = plan()
    assert later.runs == [] and later.skipped[0][1] == "trained as attention_types/attention56-mixed-quick-s0"
    other = {**old, "batch_size": 64}  # a different training under the same old name is not it
    write_results({**make_record("attention56-mixed-quick-s0"), "experiment": "attention_types", "config": other},
                  tmp_path, overwrite=True)
    assert [c["run_name"] for c in plan().runs] == ["attention56-mixed-quick-s0-b128"]


def test_training_size_counts_the_variant_and_the_scaled_schedule():
    [config] = planning.plan_runs("label_noise", profile="quick", seeds=[0], dataset="cifar10-jpeg",
                                  data_root="d", rows=["attention92-noise10"])
    size = training_size(config)
    assert (size["iterations"], size["batch_size"]) == (4000, 256)  # a tenth of 160k at batch 64, x 64/256
    from ranlib.models.complexity import model_counts
    assert size["train_macs"] == 3 * model_counts("cifar_attention92")["macs"] * 4000 * 256


# --- running ------------------------------------------------------------------------------------

def test_concurrent_runs_finish_with_results_and_a_ledger(tmp_path, data_root, child_env):
    plan = tiny_plan(tmp_path, data_root, ["attention56-local", "attention56-encoder_decoder"])
    ledger = tmp_path / "results" / LEDGER_NAME
    lines = Campaign(singles(plan.runs), concurrent=2, ledger=ledger, device_name="CPU", echo=False).run()
    assert [line["status"] for line in lines] == ["finished", "finished"], lines
    assert {line["max_concurrent"] for line in lines} == {2}
    for line in lines:  # shared time: each run is charged about half of what it held
        assert 0 < line["device_s"] < line["wall_s"]
    records = load_results(tmp_path / "results" / "mask_structure")
    assert sorted(r["run_name"] for r in records) == sorted(c["run_name"] for c in plan.runs)
    # launched as a command anyone can type, recorded in the results file
    assert all("-m ranlib train" in r["provenance"]["command"] and "--resume" in r["provenance"]["command"]
               for r in records)
    assert [line["run_name"] for line in ledger_lines(tmp_path)] == [line["run_name"] for line in lines]
    # a second campaign finds nothing left to do
    assert tiny_plan(tmp_path, data_root, ["attention56-local", "attention56-encoder_decoder"]).runs == []


def _has_trained(metrics: Path) -> bool:
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    return any(json.loads(line).get("event") == "train" for line in lines)


def singles(runs: list[dict]) -> list[list[dict]]:
    """Every run a group of its own: launched as the ``ranlib train`` command anyone can type."""
    return [[config] for config in runs]


class StopOnceTraining(Campaign):
    """Stops the campaign (as the end of its budget does) once its training is past its first
    step, so that the test does not depend on how fast this machine starts a process."""

    def stop_requested(self) -> bool:
        return super().stop_requested() or any(
            _has_trained(Path(c["checkpoint_dir"]) / c["experiment"] / c["run_name"] / "metrics.jsonl")
            for group in self.groups for c in group)


def test_a_stopped_run_checkpoints_and_the_next_campaign_resumes_it(tmp_path, data_root, child_env):
    plan = tiny_plan(tmp_path, data_root, ["attention56-local"], **LONG)
    ledger = tmp_path / "results" / LEDGER_NAME
    [line] = StopOnceTraining(singles(plan.runs), ledger=ledger, stop_grace_s=120, echo=False).run()
    assert line["status"] == "interrupted", line
    run_dir = tmp_path / "checkpoints" / "mask_structure" / planned_name(data_root, "attention56-local", **LONG)
    assert (run_dir / "last.pt").is_file()
    assert not (tmp_path / "results" / "mask_structure").exists()

    plan = tiny_plan(tmp_path, data_root, ["attention56-local"], **LONG)  # the next sitting
    [line] = Campaign(singles(plan.runs), ledger=ledger, echo=False).run()
    assert line["status"] == "finished", line
    [record] = load_results(tmp_path / "results" / "mask_structure")
    assert record["provenance"]["resumed"] and record["final"]["iteration"] == 30
    assert [l["status"] for l in ledger_lines(tmp_path)] == ["interrupted", "finished"]


# Stand-ins for a training, stopped once they run (their marker file exists): one stops as the loop
# does after its checkpoint (exit 128 + SIGTERM), one is killed by the signal, as in start-up.
CHECKPOINTS_ON_SIGTERM = ("import signal, sys, time, pathlib\n"
                          "signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))\n"
                          "pathlib.Path(sys.argv[1]).touch()\ntime.sleep(60)")
DIES_ON_SIGTERM = "import sys, time, pathlib\npathlib.Path(sys.argv[1]).touch()\ntime.sleep(60)"


@pytest.mark.parametrize("script, kept", [(CHECKPOINTS_ON_SIGTERM, True), (DIES_ON_SIGTERM, False)])
def test_the_ledger_says_whether_a_stopped_sitting_kept_a_checkpoint(tmp_path, script, kept):
    marker = tmp_path / "running"

    class StandIn(Campaign):
        def command(self, group):
            return [sys.executable, "-c", script, str(marker)]

        def stop_requested(self):
            return super().stop_requested() or marker.exists()

    config = {"checkpoint_dir": str(tmp_path), "experiment": "mask_structure", "run_name": "r", "model": "m",
              "profile": "quick", "seed": 0}
    [line] = StandIn([[config]], ledger=tmp_path / "ledger.csv", stop_grace_s=30, echo=False).run()
    assert line["status"] == "interrupted", line
    assert ("with a checkpoint" in line["message"]) is kept
    assert ("before it wrote its stop checkpoint" in line["message"]) is not kept
    assert read_ledger(tmp_path / "ledger.csv")[0]["message"] == line["message"]


def test_a_failing_run_is_reported_in_one_line_and_the_others_go_on(tmp_path, data_root, child_env):
    plan = tiny_plan(tmp_path, data_root, ["attention56-local", "attention56-encoder_decoder"])
    plan.runs[0]["data_root"] = str(tmp_path / "missing")
    lines = Campaign(singles(plan.runs), concurrent=2, ledger=tmp_path / "l.csv", echo=False).run()
    assert [line["status"] for line in lines] == ["failed", "finished"]
    assert lines[0]["message"].startswith("ranlib: error:") and "missing" in lines[0]["message"]


def test_no_run_is_launched_without_enough_budget(tmp_path, data_root):
    plan = tiny_plan(tmp_path, data_root, ["attention56-local"])
    runner = Campaign(singles(plan.runs), budget_s=30, launch_margin_s=60, echo=False)
    assert runner.run() == [] and runner.left == plan.runs
    with pytest.raises(RanlibError, match="at least 1"):
        Campaign(singles(plan.runs), concurrent=0)


# --- carrying results ---------------------------------------------------------------------------

def test_unpack_refuses_an_archive_that_is_not_a_campaign(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    (tmp_path / "x.txt").write_text("x")
    with tarfile.open(bad, "w:gz") as tar:
        tar.add(tmp_path / "x.txt", arcname="../x.txt")
    with pytest.raises(RanlibError, match="not a campaign archive"):
        unpack(bad, results_dir=tmp_path / "r", checkpoint_dir=tmp_path / "c")


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert campaign.main(["unpack", str(tmp_path / "nope.tar.gz")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ranlib: error: no archive") and "\n" not in err
    assert campaign.main(["plan", "--experiments", "table9"]) == 1
    assert "unknown experiment" in capsys.readouterr().err
    # missing data: one line before anything is launched, not one failed run per training
    args = ["run", "--experiments", "mask_structure", "--profile", "smoke", "--device", "cpu",
            "--data-root", str(tmp_path / "nowhere"), "--results-dir", str(tmp_path / "results")]
    assert campaign.main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ranlib: error: no cifar10-jpeg.npz") and "\n" not in err
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("case", ["set-unknown", "set-wrong-type", "not-an-archive", "group-file-field",
                                  "group-file-object", "sitting-out-is-a-file", "sitting-archive-exists",
                                  "sitting-no-data", "sitting-bench-seconds", "run-max-group"])
def test_bad_input_is_one_line_and_starts_nothing(case, tmp_path, data_root, capsys):
    """Found by a newcomer's trial: each of these ended in a traceback, lost an archive or spent a sitting."""
    folder = ["--dataset", "folder", "--data-root", str(data_root), "--device", "cpu", "--profile", "smoke",
              "--results-dir", str(tmp_path / "results"), "--checkpoint-dir", str(tmp_path / "ckpt")]
    sitting = ["sitting", "--minutes", "1", "--out", str(tmp_path / "out"), *folder]
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "group.json").write_text(json.dumps(
        [{"model": "cifar_attention56", "bogus": 1}] if case == "group-file-field" else {"model": "x"}))
    argv, expected = {
        "set-unknown": (["plan", *folder, "--set", "bogus=1"], "bogus is not a training option"),
        "set-wrong-type": (["plan", *folder, "--set", "iterations=abc"], "iterations=abc"),
        "not-an-archive": (["unpack", str(tmp_path / "a-file")], "is not a campaign archive"),
        "group-file-field": (["train-group", str(tmp_path / "group.json")], "bogus is not a training option"),
        "group-file-object": (["train-group", str(tmp_path / "group.json")], "is not a list of runs"),
        "sitting-out-is-a-file": ([*sitting[:3], "--out", str(tmp_path / "a-file"), *folder], "is a file"),
        "sitting-archive-exists": (sitting, "holds an earlier sitting"),
        "sitting-no-data": ([*sitting[:5], *folder[:2], "--data-root", str(tmp_path / "nowhere"), *folder[4:]],
                            "does not exist"),
        "sitting-bench-seconds": ([*sitting, "--bench-seconds", "-5"], "--bench-seconds"),
        "run-max-group": (["run", *folder, "--max-group", "0"], "--max-group"),
    }[case]
    if case == "sitting-archive-exists":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "sitting.tar.gz").write_bytes(b"an earlier sitting")
    assert campaign.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ranlib: error:") and "\n" not in err and expected in err, err
    assert not (tmp_path / "ckpt").exists()  # nothing was trained
    if case == "sitting-archive-exists":
        assert (tmp_path / "out" / "sitting.tar.gz").read_bytes() == b"an earlier sitting"


def test_a_sitting_runs_detached_and_packs_what_unpack_puts_in_place(tmp_path, data_root):
    """tools/sitting.sh start / wait, then unpack: results, ledger, a checkpoint; a
    results file that differs from the archive's is never replaced."""
    import subprocess
    import sys

    (tmp_path / "results" / "performance").mkdir(parents=True)  # the committed results it is seeded with
    (tmp_path / "results" / "performance" / "bench.json").write_text('{"benchmark": 1}')
    env = {**subprocess_env(), "PYTHON": sys.executable}
    script = str(REPO / "tools" / "sitting.sh")
    run = "mask_structure/" + planned_name(data_root, "attention56-local")
    options = ["--experiments", "mask_structure", "--rows", "attention56-local", "--profile", "smoke",
               "--seeds", "0", "--dataset", "folder", "--data-root", str(data_root), "--device", "cpu",
               "--set", *(f"{k}={v}" for k, v in TINY.items())]
    measured_there = tmp_path / ".sitting" / "results" / "performance" / "measured-there.json"
    measured_there.parent.mkdir(parents=True)
    measured_there.write_text('{"benchmark": 1}')  # a benchmark written before the campaign started
    started = subprocess.run([script, "start", "5", *options], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    assert "campaign started" in started.stdout
    assert (measured_there.parent / "bench.json").is_file() and measured_there.is_file()  # seeded, kept
    waited = subprocess.run([script, "wait", "300", str(tmp_path / "out"), "--checkpoints", run],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert waited.returncode == 0, waited.stderr
    assert "campaign ended" in waited.stdout and "1 finished" in waited.stdout

    archive = tmp_path / "out" / "campaign.tar.gz"
    here = dict(results_dir=tmp_path / "here", checkpoint_dir=tmp_path / "here-checkpoints")
    counts = unpack(archive, **here)
    assert (counts["results"], counts["ledger_lines"]) == (3, 1)  # the run's record and two benchmarks
    assert (tmp_path / "here-checkpoints" / run / "last.pt").is_file()
    again = unpack(archive, **here)
    assert (again["results"], again["identical"], again["ledger_lines"]) == (0, 3, 0)
    target = tmp_path / "here" / f"{run}.json"
    record = json.loads(target.read_text())
    record["final"]["top1_error"] = 1.0
    target.write_text(json.dumps(record))
    with pytest.raises(ResultsExistError, match="differ"):
        unpack(archive, **here)
    assert json.loads(target.read_text())["final"]["top1_error"] == 1.0

    usage = subprocess.run([script, "nonsense"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert usage.returncode == 2 and usage.stderr.startswith("usage:")


def _a_run_at(root: Path, iteration: int, log: str) -> Path:
    """A run's checkpoint, metrics and log as a training leaves them at ``iteration``."""
    from ranlib.training import checkpoint

    run = root / "mask_structure" / "attention56-local-smoke-s0"
    checkpoint.save_checkpoint(run / "last.pt", {"model": {}, "iteration": iteration})
    (run / "metrics.jsonl").write_text("".join(json.dumps({"event": "train", "iteration": i}) + "\n"
                                               for i in range(1, iteration + 1)))
    (run / LOG_NAME).write_text(log)
    return run


def test_unpack_never_replaces_a_newer_checkpoint_or_metrics(tmp_path):
    """unpack replaced a local checkpoint at iteration 30 with the archive's at 4
    and shortened metrics.jsonl."""
    from ranlib.training import checkpoint

    there, here = tmp_path / "there", tmp_path / "here"
    _a_run_at(there, 4, "there: started\n")
    archive = tmp_path / "old.tar.gz"
    pack(archive, results_dir=tmp_path / "r", checkpoint_dir=there, experiments=["mask_structure"],
                  checkpoints=["mask_structure/attention56-local-smoke-s0"])
    run = _a_run_at(here, 30, "here: started\nhere: resumed\n")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    counts = unpack(archive, results_dir=tmp_path / "r", checkpoint_dir=here)
    assert counts["kept"] == 2  # the checkpoint and the metrics: newer here
    assert checkpoint.load_checkpoint(run / "last.pt")["iteration"] == 30
    assert (run / "metrics.jsonl").read_bytes() == before["metrics.jsonl"]
    assert (run / LOG_NAME).read_text() == "here: started\nhere: resumed\nthere: started\n"  # both kept

    newer = tmp_path / "new.tar.gz"  # the other way round: the archive's run went further
    _a_run_at(there, 40, "here: started\nhere: resumed\nthere: went on\n")
    pack(newer, results_dir=tmp_path / "r", checkpoint_dir=there, experiments=["mask_structure"],
                  checkpoints=["mask_structure/attention56-local-smoke-s0"])
    _a_run_at(here, 30, "here: started\nhere: resumed\n")
    assert unpack(newer, results_dir=tmp_path / "r", checkpoint_dir=here)["kept"] == 0
    assert checkpoint.load_checkpoint(run / "last.pt")["iteration"] == 40
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 40
    assert (run / LOG_NAME).read_text().endswith("there: went on\n")
