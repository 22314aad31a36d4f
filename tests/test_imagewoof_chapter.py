"""The Imagewoof chapter: its experiment and claims, the parity rule, the recipe, the plan a sitting
uses, a CPU smoke training on a tiny slice of the real file, and the masks on real photos."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ranlib.errors import UnknownNameError
from ranlib.study import imagewoof, planning, plots, report, verdicts
from ranlib.study.experiments import EXPERIMENTS, experiment
from ranlib.training.config import TrainConfig, resolve
from ranlib.training.recipes import IMAGEWOOF_TRAIN_IMAGES, PROFILES, RECIPES, scaled_schedule, schedule_key

REAL_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagewoof"
TABLE7_REGISTERED = ["attention56", "resnet152", "attentionnext56", "resnext101", "attentioninception56",
                     "attention92", "resnet200"]


# --- experiment and claims ----------------------------------------------------------------------------------


def test_experiment_has_table7s_registered_networks_and_its_three_orderings():
    exp = experiment("imagewoof")
    assert exp.task == "imagewoof" and exp.dataset == "imagewoof" and exp.data_root == "../shared/data/imagewoof"
    assert [r.key for r in exp.rows] == TABLE7_REGISTERED == [r.model for r in exp.rows]
    assert all(r.imagewoof and r.paper_error is None for r in exp.rows), "no paper numbers for Imagewoof"
    assert [(c.kind, c.rows) for c in exp.claims] == [
        ("ordering", ("attention56", "resnet152")), ("parity", ("attentionnext56", "resnext101")),
        ("ordering", ("attention92", "resnet200"))]
    assert "absolute" not in {c.kind for c in exp.claims}
    assert set(exp.smoke_rows) <= {r.key for r in exp.rows}


def record(model: str, error: float, *, seed: int = 0, profile: str = "quick", dataset: str = "imagewoof") -> dict:
    labels = {"imagewoof": "Imagewoof (10 ImageNet dog classes, 112 px)", "imagenet-folder": "ImageNet"}
    return {"experiment": "imagewoof", "run_name": f"{model}-{profile}-s{seed}",
            "model": {"name": model, "kwargs": {}},
            "dataset": {"name": dataset, "label": labels[dataset], "id": dataset, "num_train": IMAGEWOOF_TRAIN_IMAGES},
            "config": {"profile": profile, "iterations": 705, "batch_size": 256, "seed": seed, "train_size": 112},
            "provenance": {"seed": seed, "device_name": "NVIDIA H200", "device_type": "cuda",
                           "finished_at": f"2025-01-0{seed + 1}"},
            "final": {"top1_error": error, "top5_error": None}, "cost": {"wall_time_s": 30.0, "device_hours": None},
            "curve": []}


def verdicts_of(records) -> dict:
    claims = report.claims_table("imagewoof", records)
    return dict(zip(claims["claim"].str.split(" ").str[0] + "/" + claims["kind"], claims["verdict"]))


def test_orderings_and_parity_on_synthetic_records():
    errors = {"attention56": (30.0, 30.4), "resnet152": (33.0, 33.2),  # clear ordering
              "attentionnext56": (31.0, 31.2), "resnext101": (31.1, 31.3),  # a tie well inside ±1
              "attention92": (29.0, 31.0), "resnet200": (29.5, 30.5)}  # gap 0, wide spread: inconclusive
    records = [record(m, e, seed=s) for m, pair in errors.items() for s, e in enumerate(pair)]
    got = verdicts_of(records)
    assert got == {"Attention-56/ordering": "reproduced", "AttentionNeXt-56/parity": "reproduced",
                   "Attention-92/ordering": "inconclusive"}
    # Smoke runs are never judged; Imagewoof runs are not runs of Table 7's ImageNet rows.
    smoke = [record(m, e, seed=s, profile="smoke") for m, pair in errors.items() for s, e in enumerate(pair)]
    assert set(verdicts_of(smoke).values()) == {verdicts.NOT_RUN_SMOKE}
    assert report.runs_frame("imagenet", records).empty
    assert report.runs_frame("imagewoof", [record("attention56", 20.0, dataset="imagenet-folder")]).empty
    table = imagewoof.results_table(records)
    assert table.loc[0, "top-1 error (%)"] == "30.20 ± 0.28 (n=2)" and table.loc[0, "epochs"] == 20.0
    assert list(table["network"]) == [r.label for r in experiment("imagewoof").rows]


def test_parity_rule_is_an_equivalence_test():
    judge = verdicts.judge_parity
    assert judge([], [1.0], profile="quick")[0] == verdicts.NOT_RUN
    assert judge([1.0, 1.1], [1.0, 1.1], profile="smoke")[0] == verdicts.NOT_RUN_SMOKE
    # 0.3 ± 4.30 x 0.14 (Welch's t at 2 degrees of freedom) lies inside ±1
    assert judge([30.0, 30.2], [30.3, 30.5], profile="quick")[0] == verdicts.REPRODUCED
    assert judge([30.0, 32.0], [30.5, 31.5], profile="quick")[0] == verdicts.INCONCLUSIVE  # noise too wide
    assert judge([30.0, 30.2], [33.0, 33.2], profile="quick")[0] == verdicts.NOT_REPRODUCED  # 3 points apart
    assert judge([30.0], [30.5], profile="quick")[0] == verdicts.INCONCLUSIVE  # one seed: no spread
    assert judge([30.0], [32.0], profile="quick")[0] == verdicts.INCONCLUSIVE
    verdict, reason = judge([30.0, 30.2], [30.3, 30.5], profile="quick")
    assert "difference +0.30" in reason and f"inside ±{verdicts.PARITY_MARGIN:g}" in reason


# --- recipe, profiles and the sitting's plan ----------------------------------------------------------------


def test_imagewoof_recipe_counts_its_own_epochs_and_warms_up():
    recipe = RECIPES["imagewoof"]
    assert recipe.nominal_train_size == IMAGEWOOF_TRAIN_IMAGES == 9_025
    assert (recipe.batch_size, recipe.lr, recipe.iterations) == (256, 0.1, round(20 * 9_025 / 256))
    c = resolve(TrainConfig(model="attention56", dataset="imagewoof", data_root=".", profile="quick"))
    assert (c.batch_size, c.lr, c.iterations, c.train_size, c.test_size) == (256, 0.1, 705, 112, 112)
    assert c.milestones == [round(705 * m / 530_000) for m in (200_000, 400_000, 500_000)]
    assert c.warmup_iterations == round(2 * 9_025 / 256) == 71  # 2 epochs of Imagewoof, not of ImageNet
    assert "warm-up over 2 epochs of 9,025 images" in c.schedule_rule
    doubled = scaled_schedule(recipe, 512)  # the large-batch rule still applies at another batch
    assert (doubled["lr"], doubled["iterations"], doubled["warmup_iterations"]) == (0.2, 352, 35)
    smoke = resolve(TrainConfig(model="attention56", dataset="imagewoof", data_root=".", profile="smoke"))
    assert smoke.train_size == 64 and smoke.iterations == 4 and smoke.max_train_samples == 20
    with pytest.raises(UnknownNameError, match="paper"):
        resolve(TrainConfig(model="attention56", dataset="imagewoof", data_root=".", profile="paper"))
    # Other datasets keep the model family's recipe.
    assert schedule_key("attention56", "imagenet-folder") == "imagenet" and set(PROFILES["imagewoof"]) == {"smoke", "quick"}
    assert resolve(TrainConfig(model="attention56", dataset="imagenet-folder", data_root=".",
                               profile="quick")).iterations == 5_300


def test_each_network_costs_about_a_minute_and_all_fit_one_call():
    cost = imagewoof.cost_table("quick", seeds=2)
    assumed, pessimistic = [c for c in cost.columns if c.startswith("est.")]
    per_network = cost[assumed].iloc[:-1]
    assert per_network.between(20, 90).all(), per_network
    assert cost[pessimistic].iloc[-1] < 10 * 60, "all rows, 2 seeds, must fit one 10-minute device call"
    assert imagewoof.nearest_leaderboard_epochs(imagewoof.schedule()["epochs"]) == 20


def test_plan_lists_every_row_and_seed_for_the_sitting(tmp_path):
    plan = planning.plan_runs("imagewoof", profile="quick", seeds=[0, 1], dataset="imagewoof",
                              data_root="../shared/data/imagewoof", results_dir=tmp_path / "r",
                              checkpoint_dir=tmp_path / "c")
    assert [(c["model"], c["seed"]) for c in plan] == [(m, s) for m in TABLE7_REGISTERED for s in (0, 1)]
    assert {c["dataset"] for c in plan} == {"imagewoof"} and {c["profile"] for c in plan} == {"quick"}
    assert all(resolve(TrainConfig(**c)).iterations == 705 for c in plan)
    from ranlib.campaign.plan import plan_campaign

    campaign = plan_campaign(["imagewoof"], profile="quick", seeds=[0, 1], dataset="imagewoof",
                             data_root="../shared/data/imagewoof", results_dir=tmp_path / "r",
                             checkpoint_dir=tmp_path / "c")
    assert len(campaign.runs) == 14 and not campaign.skipped


# --- on the real file ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    if not (REAL_ROOT / "imagewoof-112.npz").is_file():
        pytest.skip(f"the shared Imagewoof file is not on this machine ({REAL_ROOT}): no real-photo smoke run")
    root = tmp_path_factory.mktemp("woof-run")
    records = planning.train_experiment(
        "imagewoof", profile="smoke", seeds=[0], dataset="imagewoof", data_root=str(REAL_ROOT),
        results_dir=root / "results", checkpoint_dir=root / "checkpoints", device="cpu", rows=["attention56"],
        overrides=SMOKE_OVERRIDES)
    return root, records


SMOKE_OVERRIDES = {"iterations": 2, "batch_size": 2, "max_train_samples": 10, "max_test_samples": 10,
                   "num_workers": 0}


def _smoke_name() -> str:
    """The smoke run's planned name: batch 2 is not the smoke profile's, so it carries -b2 and a digest."""
    [config] = planning.plan_runs("imagewoof", profile="smoke", seeds=[0], dataset="imagewoof",
                                  data_root=str(REAL_ROOT), device="cpu", rows=["attention56"],
                                  overrides=SMOKE_OVERRIDES)
    assert config["run_name"].startswith("attention56-smoke-s0-b2-c")
    return config["run_name"]


def test_smoke_training_on_a_tiny_real_slice_through_the_chapters_plan(smoke_run):
    root, records = smoke_run
    (rec,) = records
    assert rec["run_name"] == _smoke_name() and rec["dataset"]["name"] == "imagewoof"
    assert rec["dataset"]["num_train"] == 10 and rec["final"]["num_test"] == 10
    assert rec["config"]["train_size"] == 64 and math.isfinite(rec["final"]["top1_error"])
    loaded = planning.load_records(root / "results", "imagewoof")
    assert [r["run_name"] for r in loaded] == [_smoke_name()]
    assert verdicts_of(loaded)["Attention-56/ordering"] == verdicts.NOT_RUN  # ResNet-152 has no run


def test_masks_on_real_photos_from_a_smoke_checkpoint(smoke_run, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    root, records = smoke_run
    path = plots.latest_checkpoint(root / "checkpoints", records, model="attention56")
    assert path is not None and path.is_file()
    assert plots.latest_checkpoint(root / "checkpoints", records, model="resnet152") is None
    out = plots.write_checkpoint_masks(path, tmp_path / "masks.npz", num_images=3, device="cpu")
    assert out.stat().st_size < 1_000_000, "the kept figure data must stay small"
    images, masks, source = plots.read_masks(out)
    assert images.shape == (3, 64, 64, 3) and images.dtype == np.uint8 and images.std() > 10
    assert list(masks) == ["stages.0.1", "stages.1.1", "stages.2.1"] and source == f"imagewoof/{_smoke_name()}"
    assert [m.shape for m in masks.values()] == [(3, 1, 16, 16), (3, 1, 8, 8), (3, 1, 4, 4)]
    assert all(((m > 0) & (m < 1)).all() for m in masks.values()), "sigmoid masks"
    fig = plots.plot_masks(images, masks, max_images=3)
    assert len(fig.axes) == 3 * 4
    assert plots.read_masks(tmp_path / "absent.npz") is None
