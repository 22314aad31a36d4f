"""A dress rehearsal of the GPU sitting on the CPU: smoke profile, a two-minute budget.

It must stop on time, pack as it goes, unpack here, and the experiment pages render the new rows.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from test_notebooks import _execute, _text_outputs

from ranlib.campaign import sitting
from ranlib.campaign.archive import unpack
from ranlib.campaign.plan import plan_campaign
from ranlib.study import planning, report
from ranlib.study.ledger import LEDGER_NAME, read_ledger
from ranlib.study.planning import group_runs

from test_train import REPO, make_folder_dataset, subprocess_env

papermill = pytest.importorskip("papermill")

# Room for the set-up and the preflight (7 s alone, over 22 s beside the other pytest worker and a
# campaign; 1.2 minutes then left no time to start the first group) and the claims slice (~30 s).
BUDGET_MINUTES = 2.0


def test_slices_put_the_claims_first():
    slices = sitting.study_slices([0, 1, 2], "cifar10-jpeg")
    assert [s.seeds for s in slices[:2]] == [(0,), (1,)]
    assert slices[0].experiments[:2] == ("arl_vs_nal", "label_noise")  # Table 3 with Figure 4, then Table 5
    assert slices[2].action == "jpeg_gap" and slices[3].experiments == ("attention_masks",)
    assert "cifar_sota" in slices[4].experiments
    woof = sitting.study_slices([0, 1], "imagewoof")  # a call that carries the Imagewoof data
    assert (woof[0].experiments, woof[0].seeds) == (("imagewoof",), (0, 1))  # both seeds fuse
    assert woof[1].action == "imagewoof_masks"


def test_groups_join_seeds_noise_and_arl_nal_but_nothing_else(tmp_path):
    plan = plan_campaign(["arl_vs_nal", "label_noise"], profile="quick", seeds=[0],
                                  dataset="cifar10-jpeg", data_root=str(tmp_path), results_dir=tmp_path / "r",
                                  checkpoint_dir=tmp_path / "c")
    groups = group_runs(plan.runs, max_members=8)
    by_first = {g[0]["run_name"]: [c["run_name"] for c in g] for g in groups}
    assert by_first["attention56-arl-quick-s0"] == ["attention56-arl-quick-s0", "attention56-nal-quick-s0"]
    noise = next(g for g in groups if any(c["model"] == "cifar_attention92" and c.get("noise_level") for c in g))
    assert {c.get("noise_level", 0) for c in noise} >= {0.1, 0.3, 0.5, 0.7}  # and Table 3's clean ARL/NAL runs
    for group in groups:
        assert len({c["model"] for c in group}) == 1
    assert all(len(g) <= 2 for g in group_runs(plan.runs, max_members=2))


@pytest.mark.slow
def test_a_sitting_stops_on_time_packs_and_its_archive_renders(tmp_path):
    data = make_folder_dataset(tmp_path / "data", n_train=48, n_test=16, classes=3)
    results, checkpoints, out = tmp_path / "device-results", tmp_path / "device-ckpt", tmp_path / "out"
    command = [sys.executable, "-m", "ranlib.campaign", "sitting", "--minutes", str(BUDGET_MINUTES),
               "--out", str(out), "--profile", "smoke", "--seeds", "0", "--dataset", "folder",
               "--data-root", str(data), "--device", "cpu", "--results-dir", str(results),
               "--checkpoint-dir", str(checkpoints), "--max-group", "4"]
    start = time.monotonic()
    done = subprocess.run(command, env=subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    wall = time.monotonic() - start
    assert done.returncode == 0, done.stderr[-2000:]
    assert wall < BUDGET_MINUTES * 60 + 30, f"the sitting ran {wall:.0f} s on a {BUDGET_MINUTES} minute budget"
    assert "sitting: what ran" in done.stdout and "minutes of the budget left" in done.stdout
    assert "fused group" in done.stdout
    archive = out / sitting.ARCHIVE_NAME
    assert archive.is_file() and archive.stat().st_size < 16 * 2**20  # what the device call brings back

    # Back here: into a checkout's results folder; nothing is replaced, the ledger is merged.
    here = tmp_path / "results"
    counts = unpack(archive, results_dir=here, checkpoint_dir=tmp_path / "ckpt")
    assert counts["results"] >= 2 and counts["ledger_lines"] == counts["results"]
    assert unpack(archive, results_dir=here, checkpoint_dir=tmp_path / "ckpt")["results"] == 0
    ledger = read_ledger(here / LEDGER_NAME)
    assert {line["status"] for line in ledger} == {"finished"}
    records = planning.load_records(here, "arl_vs_nal")
    assert any(r["provenance"]["group"]["size"] > 1 for r in records)  # trained as a fused group
    claims = report.claims_table("arl_vs_nal", records)
    assert (claims["verdict"] == "not run here (smoke only)").any()

    nb = _execute("arl_vs_nal", tmp_path / "arl_vs_nal.ipynb",
                  {"profile": "smoke", "seeds": [0], "device": "cpu", "train": False, "results_dir": str(here),
                   "checkpoint_dir": str(tmp_path / "ckpt"), "dataset": "folder", "data_root": str(data)}, REPO)
    text = _text_outputs(nb)
    assert "No results yet" not in text and "smoke (6 it)" in text  # the rows the sitting trained


def test_a_step_model_fitted_to_two_batches():
    speed = sitting.StepModel.fit((1e9, 0.003), (4e9, 0.006))  # 2 ms fixed, then 1e12 multiply-adds/s
    assert speed.overhead_s == pytest.approx(2e-3) and speed.macs_per_s == pytest.approx(1e12)
    assert sitting.StepModel.fit((1e9, 0.003), (4e9, 0.002)).overhead_s == 0.0  # noise: all work


def test_the_full_profile_takes_the_smallest_batch_that_finishes(tmp_path):
    plan = plan_campaign(["arl_vs_nal"], profile="full", seeds=[0], dataset="cifar10-jpeg",
                                  data_root=str(tmp_path), results_dir=tmp_path / "r", checkpoint_dir=tmp_path / "c",
                                  rows=["attention92-arl", "attention92-nal"])
    [group] = group_runs(plan.runs)
    # 2 ms a step plus the work at 100 TFLOP/s: at batch 64 the fixed cost of 160k steps dominates
    rate = sitting.StepModel(overhead_s=2e-3, macs_per_s=50e12)
    times = {b: sitting.estimate_group_s([dict(c, batch_size=b) for c in group], rate) for b in sitting.FULL_BATCHES}
    assert times[64] > times[128] > times[256] > sitting.GROUP_STARTUP_S
    assert times[64] - times[256] == pytest.approx((160_000 - 40_000) * 2e-3, rel=1e-6)
    fitted = sitting.fit_batch(group, times[256] + 1, rate, checkpoint_dir=tmp_path / "c")
    assert {c["batch_size"] for c in fitted} == {256}
    assert [c["run_name"] for c in fitted] == ["attention92-arl-full-s0-b256", "attention92-nal-full-s0-b256"]
    assert sitting.fit_batch(group, 1.0, rate, checkpoint_dir=tmp_path / "c") is None
    # a checkpoint of an interrupted run is resumed at its own batch, whatever the time left
    (tmp_path / "c" / "arl_vs_nal" / "attention92-nal-full-s0-b1024").mkdir(parents=True)
    (tmp_path / "c" / "arl_vs_nal" / "attention92-nal-full-s0-b1024" / "last.pt").write_bytes(b"")
    resumed = sitting.fit_batch(group, times[64] * 2, rate, checkpoint_dir=tmp_path / "c")
    assert {c["batch_size"] for c in resumed} == {1024}
    assert sitting.study_slices([0, 1], "cifar10-jpeg")[-1].profile == "full"
