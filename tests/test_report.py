"""The study layer on synthetic results records: verdict rules (ranlib.study.verdicts), mean ± std, deltas,
missing data (ranlib.study.report), run planning (ranlib.study.planning) and plots (ranlib.study.plots)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from ranlib import paths
from ranlib.study import (complexity, compute, experiments, jpeg_gap, labels, paper, planning, plots, report, tables,
                          verdicts)
from ranlib.study.ledger import LEDGER_FIELDS, LEDGER_NAME, append_ledger
from ranlib.training.results import write_results

JPEG = verdicts.JPEG_LABEL


def make_record(experiment, run_name, model, *, error, seed=0, profile="quick", kwargs=None,
                dataset="cifar10-jpeg", label=JPEG, noise_level=None, stage_response=(1.0, 0.5, 0.3),
                device_type="cuda", wall_time_s=600.0, iterations=8000, batch_size=128):
    """A schema-1 results record as ranlib.training.loop.run writes it (values made up)."""
    noise = None
    if noise_level:
        k = 10
        q = np.full((k, k), noise_level / (k - 1))
        np.fill_diagonal(q, 1 - noise_level)
        noise = {"level": noise_level, "seed": seed, "achieved_rate": noise_level + 0.004,
                 "transition_matrix": q.tolist(), "counts": [[0] * k] * k}
    return {
        "schema": 1, "experiment": experiment, "run_name": run_name,
        "config": {"profile": profile, "seed": seed, "iterations": iterations, "batch_size": batch_size,
                   "model": model,
                   "model_kwargs": kwargs or {}, "noise_level": noise_level or 0.0,
                   "dataset": dataset},
        "model": {"name": model, "kwargs": kwargs or {}, "params": 1_000_000, "macs": 2_000_000},
        "dataset": {"name": dataset, "id": "cifar10-jpeg-q75", "label": label,
                    "fingerprint": "ab" * 32, "num_train": 50000, "num_test": 10000},
        "noise": noise,
        "final": {"top1_error": error, "top5_error": None, "test_loss": 0.3},
        "curve": [{"iteration": i, "epoch": i / 10, "lr": 0.1, "train_loss": 1.0 / i,
                   "train_top1_error": error + 10 / i, "test_top1_error": error + 5 / i}
                  for i in (1, 2)],
        "analysis": {"stage_response": list(stage_response)},
        "provenance": {"git_commit": "0" * 40, "git_dirty": False, "hostname": "h",
                       "device_name": "NVIDIA H100" if device_type == "cuda" else "AMD EPYC",
                       "device_type": device_type, "device_count": 1 if device_type == "cuda" else 2, "torch": "2.14.1", "cuda": None, "cudnn": None,
                       "python": "3.11", "precision": "bf16", "seed": seed,
                       "started_at": f"2026-11-22T00:0{seed}:00+00:00",
                       "finished_at": f"2026-11-22T01:0{seed}:00+00:00", "command": "test"},
        "cost": {"wall_time_s": wall_time_s, "train_time_s": wall_time_s * 0.9,
                 "images_per_s": 1000.0, "peak_memory_bytes": 1, "device_hours": wall_time_s / 3600},
    }


def arl_nal_records(arl, nal, model="cifar_attention56", profile="quick", **kw):
    """Runs of one ARL/NAL pair, one record per seed."""
    short = model.removeprefix("cifar_")
    out = []
    for mode, errors, residual in (("arl", arl, True), ("nal", nal, False)):
        for seed, err in enumerate(errors):
            out.append(make_record("arl_vs_nal", f"{short}-{mode}-{profile}-s{seed}", model,
                                   error=err, seed=seed, profile=profile,
                                   kwargs={"residual_attention": residual}, **kw))
    return out


def claim(claims: pd.DataFrame, text: str) -> dict:
    rows = claims[claims["claim"].str.contains(text, regex=False)]
    assert len(rows) == 1, f"{text!r} matches {len(rows)} claims"
    return rows.iloc[0].to_dict()


# --- paths -----------------------------------------------------------------------------------

def test_resolve_path_is_relative_to_the_repo_root_not_the_cwd(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert paths.repo_root() == tmp_path
    assert paths.resolve_path("results") == tmp_path / "results"
    assert paths.resolve_path(tmp_path / "x") == tmp_path / "x"


# --- mean ± std, formatting -------------------------------------------------------------------

def test_mean_std_uses_the_sample_std_and_skips_missing_values():
    mean, std, n = verdicts.mean_std([5.0, 6.0, None, float("nan")])
    assert (mean, n) == (5.5, 2)
    assert std == pytest.approx(math.sqrt(0.5))
    assert math.isnan(verdicts.mean_std([4.0])[1])
    assert verdicts.mean_std([])[2] == 0


def test_format_mean_std():
    assert tables.format_mean_std(5.5, 0.7071, 2) == "5.50 ± 0.71 (n=2)"
    assert tables.format_mean_std(5.5, math.nan, 1) == "5.50 (n=1)"
    assert tables.format_mean_std(math.nan, math.nan, 0) == "–"


# --- verdict rules ----------------------------------------------------------------------------

def test_t_quantiles_are_students():
    # Two-sided 95 % critical values from any t table.
    for df, t in ((1, 12.706), (2, 4.303), (3, 3.182), (10, 2.228), (30, 2.042), (1e6, 1.960)):
        assert verdicts.t_quantile(0.975, df) == pytest.approx(t, abs=1e-3), df
    assert verdicts.t_quantile(0.95, 2) == pytest.approx(2.920, abs=1e-3)
    with pytest.raises(ValueError):
        verdicts.t_quantile(0.975, 0)


def test_welch_gap_interval_and_degrees_of_freedom():
    g = verdicts.welch_gap([5.0, 5.2], [6.0, 6.2])  # equal spreads, 2 + 2 seeds: df = 2
    se = math.sqrt(0.02 / 2 + 0.02 / 2)  # each side: sample variance 0.02 over 2 seeds
    assert g.gap == pytest.approx(1.0) and g.se == pytest.approx(se) and g.df == pytest.approx(2.0)
    assert (g.low, g.high) == pytest.approx((1.0 - 4.3027 * se, 1.0 + 4.3027 * se), abs=1e-3)
    assert verdicts.welch_gap([5.0, 5.2], [6.0, 6.0]).df == pytest.approx(1.0)  # one side without spread
    assert verdicts.welch_gap([5.0], [6.0, 6.2]) is None  # one seed: no interval
    flat = verdicts.welch_gap([5.0, 5.0], [6.0, 6.0])
    assert (flat.low, flat.high) == (1.0, 1.0) and math.isnan(flat.t)


def test_ordering_verdicts():
    q = dict(profile="quick")
    assert verdicts.judge_ordering([5.0, 5.1], [6.0, 6.1], **q)[0] == verdicts.REPRODUCED
    # right direction, 2.5 standard errors: enough for a normal 2-sigma rule, not for Welch's t at
    # 2 degrees of freedom (4.30 standard errors)
    verdict, reason = verdicts.judge_ordering([5.0, 5.2], [5.25, 5.45], **q)
    assert verdict == verdicts.PARTLY and "t 4.30 at 2.0 df" in reason and "n = 2 + 2" in reason
    assert verdicts.judge_ordering([5.0, 6.0], [5.3, 6.3], **q)[0] == verdicts.PARTLY
    assert verdicts.judge_ordering([5.0], [6.0], **q)[0] == verdicts.PARTLY  # one seed: no spread
    assert verdicts.judge_ordering([6.0, 6.1], [5.0, 5.1], **q)[0] == verdicts.NOT_REPRODUCED
    # reversed, but inside the seed noise: no evidence either way
    assert verdicts.judge_ordering([5.3, 6.3], [5.0, 6.0], **q)[0] == verdicts.INCONCLUSIVE
    assert verdicts.judge_ordering([6.0], [5.0], **q)[0] == verdicts.INCONCLUSIVE  # one seed
    assert verdicts.judge_ordering([5.0, 5.0], [5.0, 5.0], **q)[0] == verdicts.INCONCLUSIVE
    assert verdicts.judge_ordering([5.0], [6.0], profile="smoke")[0] == verdicts.NOT_RUN_SMOKE
    assert verdicts.judge_ordering([], [6.0], profile="paper")[0] == verdicts.NOT_RUN


def test_parity_verdicts_use_the_welch_interval():
    q = dict(profile="quick")
    assert verdicts.judge_parity([21.0, 21.1], [21.2, 21.3], **q)[0] == verdicts.REPRODUCED
    assert verdicts.judge_parity([21.0, 21.1], [24.0, 24.1], **q)[0] == verdicts.NOT_REPRODUCED
    assert verdicts.judge_parity([20.0, 22.0], [20.5, 22.5], **q)[0] == verdicts.INCONCLUSIVE
    assert verdicts.judge_parity([21.0], [21.2], **q)[0] == verdicts.INCONCLUSIVE  # one seed


def test_every_verdict_has_a_legend_line_and_rules_state_their_numbers():
    assert set(verdicts.LEGEND) == set(verdicts.VERDICTS[:6])  # the "not run here" kinds share a line
    rule = verdicts.rule_sentence({"ordering", "parity", "absolute"}, jpeg_cost="2-3 points, quoted")
    for number in ("95 %", "4.30", "12.71", "±1 point", "±0.5", "by 3.00 points", "2-3 points, quoted"):
        assert number in rule, number
    measured = verdicts.rule_sentence({"absolute"}, jpeg_cost="+0.71 points measured", jpeg_allowance=2.01)
    assert "by 2.01 points" in measured and "3.00" not in measured  # the allowance the verdicts use
    assert verdicts.CONSISTENT_JPEG in rule and verdicts.INCONCLUSIVE in rule
    assert "tie" not in verdicts.rule_sentence({"ordering"})


def test_absolute_verdicts_account_for_the_jpeg_copy_only_upwards():
    p = dict(profile="paper", task="cifar")
    assert verdicts.judge_absolute(5.0, [5.3], dataset="CIFAR-10", **p)[0] == verdicts.REPRODUCED
    assert verdicts.judge_absolute(5.0, [5.8], dataset="CIFAR-10", **p)[0] == verdicts.PARTLY
    assert verdicts.judge_absolute(5.0, [6.5], dataset="CIFAR-10", **p)[0] == verdicts.NOT_REPRODUCED
    # the JPEG copy costs accuracy: +3.0 is inside the band on it, not on the official data, and a
    # match that wide reads as consistent, not reproduced
    assert verdicts.judge_absolute(5.0, [8.0], dataset=JPEG, **p)[0] == verdicts.CONSISTENT_JPEG
    assert verdicts.judge_absolute(5.0, [5.1], dataset=JPEG, **p)[0] == verdicts.CONSISTENT_JPEG
    assert verdicts.judge_absolute(5.0, [8.0], dataset=JPEG, allowance=1.0, **p)[0] == verdicts.PARTLY
    # ...but never excuses an error far *below* the paper's
    assert verdicts.judge_absolute(5.0, [3.8], dataset=JPEG, **p)[0] == verdicts.NOT_REPRODUCED
    # seed spread widens the band
    assert verdicts.judge_absolute(5.0, [5.5, 6.1], dataset="CIFAR-10", **p)[0] == verdicts.REPRODUCED


def test_absolute_claims_are_not_judged_below_the_paper_budget_or_off_imagenet():
    assert verdicts.judge_absolute(5.0, [5.0], profile="quick", task="cifar",
                                 dataset=JPEG)[0] == verdicts.NOT_RUN_BUDGET
    assert verdicts.judge_absolute(5.0, [5.0], profile="smoke", task="cifar",
                                 dataset=JPEG)[0] == verdicts.NOT_RUN_SMOKE
    assert verdicts.judge_absolute(21.76, [21.8], profile="paper", task="imagenet",
                                 dataset="Imagenette (imagenette2-320)")[0] == verdicts.NOT_RUN_IMAGENET
    assert verdicts.judge_absolute(21.76, [21.8], profile="paper", task="imagenet",
                                 dataset="ImageNet (ILSVRC-2012)")[0] == verdicts.REPRODUCED


def test_complexity_verdicts():
    assert verdicts.judge_complexity(1.75, 1.7)[0] == verdicts.REPRODUCED  # +2.9 %
    assert verdicts.judge_complexity(1.9, 1.7)[0] == verdicts.PARTLY  # +11.8 %
    assert verdicts.judge_complexity(3.0, 1.7)[0] == verdicts.NOT_REPRODUCED
    assert verdicts.judge_complexity(None, 1.7)[0] == verdicts.NOT_RUN
    assert verdicts.judge_complexity(31.9, 31.8, verdicts.DEPLOY_TOLERANCE)[0] == verdicts.REPRODUCED
    assert verdicts.judge_complexity(33.0, 31.8, verdicts.DEPLOY_TOLERANCE)[0] != verdicts.REPRODUCED


# --- tables from records ----------------------------------------------------------------------

def test_results_table_mean_std_delta_and_missing_rows():
    records = arl_nal_records([5.0, 6.0], [7.0, 7.0])
    table = report.results_table("arl_vs_nal", records).set_index("row")
    arl = table.loc["attention56-arl"]
    assert arl["ours (%)"] == "5.50 ± 0.71 (n=2)"
    assert arl[report.DELTA] == pytest.approx(5.5 - paper.TABLE3_ARL_NAL["cifar_attention56"]["arl"])
    # the budget as a share of the paper's schedule: 8,000 iterations at batch 128 = 10 %
    assert arl["budget"] == "quick, 20 of the paper's 205 epochs (10 %)"
    assert arl["data"] == JPEG
    assert arl["seeds"] == "0, 1"
    assert arl["trained on"] == "NVIDIA H100 GPU, bf16" and arl["cost"] == "0.33 GPU-hours"
    missing = table.loc["attention164-nal"]
    assert missing["ours (%)"] == "–" and missing["budget"] == "not run here"
    assert missing["paper (%)"] == paper.TABLE3_ARL_NAL["cifar_attention164"]["nal"]


def test_rows_match_on_model_variant_defaults_and_noise_level():
    row = experiments.experiment("attention_types").row("attention56-mixed")
    # a record without an explicit attention= kwarg is the default (mixed) variant
    assert row.matches(make_record("attention_types", "r", "cifar_attention56", error=5.0))
    assert not row.matches(make_record("attention_types", "r", "cifar_attention56", error=5.0,
                                       kwargs={"attention": "spatial"}))
    noisy = experiments.experiment("label_noise").row("attention92-noise30")
    assert noisy.matches(make_record("label_noise", "r", "cifar_attention92", error=6.0,
                                     noise_level=0.3))
    assert not noisy.matches(make_record("label_noise", "r", "cifar_attention92", error=6.0,
                                         noise_level=0.5))


def test_claims_table_judges_orderings_and_reports_gaps():
    records = arl_nal_records([5.0, 5.1], [6.0, 6.1])
    claims = report.claims_table("arl_vs_nal", records)
    a56 = claim(claims, "Attention-56: ARL beats NAL")
    assert a56["verdict"] == verdicts.REPRODUCED
    assert a56["ours"] == pytest.approx(1.0)
    paper_gap = paper.TABLE3_ARL_NAL["cifar_attention56"]["nal"] - paper.TABLE3_ARL_NAL[
        "cifar_attention56"]["arl"]
    assert a56["paper"] == pytest.approx(paper_gap)
    assert a56["delta"] == pytest.approx(1.0 - paper_gap)
    assert claim(claims, "Attention-164: ARL beats NAL")["verdict"] == verdicts.NOT_RUN
    # the absolute cell at a quick budget is shown but not judged
    absolute = claim(claims, "Attention-56 ARL: error")
    assert absolute["verdict"] == verdicts.NOT_RUN_BUDGET
    assert absolute["ours"] == pytest.approx(5.05)


def test_reversed_ordering_is_not_reproduced():
    claims = report.claims_table("arl_vs_nal", arl_nal_records([6.0, 6.1], [5.0, 5.1]))
    assert claim(claims, "Attention-56: ARL beats NAL")["verdict"] == verdicts.NOT_REPRODUCED


def test_claims_use_the_largest_budget_present():
    records = arl_nal_records([6.0, 6.1], [5.0, 5.1], profile="quick")
    records += arl_nal_records([5.0, 5.1], [6.0, 6.1], profile="paper", iterations=160000, batch_size=64)
    line = claim(report.claims_table("arl_vs_nal", records), "Attention-56: ARL beats NAL")
    assert line["verdict"] == verdicts.REPRODUCED
    assert line["budget"] == "paper, 205 of the paper's 205 epochs (100 %)"


def test_smoke_results_are_never_judged():
    records = arl_nal_records([5.0, 5.1], [60.0, 61.0], profile="smoke")
    claims = report.claims_table("arl_vs_nal", records)
    assert claim(claims, "Attention-56: ARL beats NAL")["verdict"] == verdicts.NOT_RUN_SMOKE
    assert claim(claims, "Attention-56 ARL: error")["verdict"] == verdicts.NOT_RUN_SMOKE


def test_no_records_gives_every_claim_not_run_here():
    for name, exp in experiments.EXPERIMENTS.items():
        claims = report.claims_table(name, [])
        assert len(claims) == len(exp.claims)
        assert set(claims["verdict"]) <= {verdicts.NOT_RUN}


def test_figure4_response_claim_uses_normalised_last_stage():
    records = []
    for mode, residual, curve in (("arl", True, (2.0, 1.0, 0.6)), ("nal", False, (2.0, 0.03, 0.02))):
        for seed in (0, 1):
            records.append(make_record(
                "arl_vs_nal", f"attention164-{mode}-quick-s{seed}", "cifar_attention164",
                error=5.0, seed=seed, kwargs={"residual_attention": residual},
                stage_response=[v * (1 + 0.01 * seed) if i else v for i, v in enumerate(curve)]))
    line = claim(report.claims_table("arl_vs_nal", records), "Figure 4")
    assert line["verdict"] == verdicts.REPRODUCED
    assert line["ours"] == pytest.approx(0.3 * 1.005 - 0.01 * 1.005, rel=1e-6)
    frame = plots.responses_frame("arl_vs_nal", records)
    ours = frame[frame["source"] != "paper"]
    assert set(ours["stage"]) == {1, 2, 3}
    assert (ours[ours["stage"] == 1]["response"] == 1.0).all()


def test_label_noise_tables():
    records = [make_record("label_noise", f"{m}-noise70-quick-s0", f"cifar_{m}", error=e,
                           noise_level=0.7)
               for m, e in (("resnet164", 20.0), ("attention92", 18.0))]
    claims = report.claims_table("label_noise", records)
    assert claim(claims, "70% label noise")["verdict"] == verdicts.PARTLY  # one seed
    assert claim(claims, "10% label noise")["verdict"] == verdicts.NOT_RUN
    noise = plots.noise_frame(records)
    assert list(noise["level"]) == [0.7, 0.7]
    assert noise["achieved_rate"].iloc[0] == pytest.approx(0.704)


def test_cifar100_rows_only_match_cifar100_runs():
    c10 = make_record("cifar_sota", "attention92-quick-s0", "cifar_attention92", error=5.0)
    c100 = make_record("cifar_sota", "attention92-c100-quick-s0", "cifar_attention92", error=22.0,
                       dataset="cifar100", label="CIFAR-100")
    table = report.results_table("cifar_sota", [c10, c100]).set_index("row")
    assert table.loc["attention92", "ours (%)"] == "5.00 (n=1)"
    assert table.loc["attention92-c100", "ours (%)"] == "22.00 (n=1)"
    assert table.loc["attention92-c100", report.DELTA] == pytest.approx(
        22.0 - paper.TABLE6_CIFAR["cifar_attention92"][2])


def test_plan_runs_names_every_run_and_uses_the_smoke_subset(tmp_path):
    plan = planning.plan_runs("label_noise", profile="smoke", seeds=[0, 1], dataset="folder",
                            data_root=tmp_path, results_dir=tmp_path / "r",
                            overrides={"iterations": 2})
    exp = experiments.experiment("label_noise")
    assert len(plan) == 2 * len(exp.smoke_rows)
    assert len({c["run_name"] for c in plan}) == len(plan)
    assert all(c["iterations"] == 2 and c["results_dir"] == str(tmp_path / "r") for c in plan)
    assert {c["noise_level"] for c in plan} == {0.1, 0.7}
    full = planning.plan_runs("cifar_sota", profile="quick", seeds=[0], dataset="cifar10-jpeg",
                            data_root="d")
    assert all(not c["run_name"].endswith("c100-quick-s0") for c in full)
    with pytest.raises(ValueError, match="unknown row"):
        planning.plan_runs("arl_vs_nal", profile="quick", seeds=[0], dataset="x", data_root="d",
                         rows=["nope"])
    with pytest.raises(ValueError, match="unknown experiment"):
        experiments.experiment("table9")


def test_plan_runs_configs_are_valid_train_configs(tmp_path):
    train_config = pytest.importorskip("ranlib.training.config")
    for name in experiments.EXPERIMENTS:
        exp = experiments.experiment(name)
        for config in planning.plan_runs(name, profile="quick", seeds=[0], dataset=exp.dataset,
                                       data_root=tmp_path):
            resolved = train_config.resolve(train_config.TrainConfig(**config))
            assert resolved.run_name == config["run_name"]


def test_no_results_page_says_so_once_with_what_running_needs_and_the_commands(tmp_path):
    from ranlib.study import status

    text = status.no_results_markdown("mask_structure", tmp_path)
    assert text.count("Not run here") == 1 and "[Rerun anything](/rerun.md)" in text
    assert "CIFAR-10 JPEG q75 copy (60,000 images" in text and "make device-data" in text
    assert "make reproduce PROFILE=quick NOTEBOOKS=mask_structure" in text
    import shlex

    from ranlib.campaign import cli as campaign
    [line] = [l for l in text.splitlines() if l.startswith("python -m ranlib.campaign")]
    args = campaign.build_parser().parse_args(shlex.split(line)[3:])
    assert (args.command, args.experiments, args.profile) == ("run", ["mask_structure"], "quick")
    assert "python -m ranlib train --experiment mask_structure" in text
    assert "--model cifar_attention56" in text
    assert "--run-name attention56-local-quick-s0" in text
    assert "--model-kwargs mask=local" in text


@pytest.mark.parametrize("name", sorted(experiments.EXPERIMENTS))
def test_train_commands_parse_with_the_cli_into_the_planned_configs(name):
    import shlex

    from ranlib import cli
    from ranlib.training import flags

    lines = [l for l in planning.train_commands(name).splitlines() if l.startswith("python -m ranlib train")]
    exp = experiments.experiment(name)
    plan = planning.plan_runs(name, profile="quick", seeds=[0], dataset=exp.dataset,
                            data_root=exp.data_root)
    assert len(lines) == len(plan)
    for line, config in zip(lines, plan):
        args = vars(cli.build_parser().parse_args(shlex.split(line)[3:]))
        args["model_kwargs"] = flags.key_values(args.get("model_kwargs", []))
        assert args.pop("data_root") == exp.data_root
        for where in ("data_root", "results_dir", "checkpoint_dir", "device"):
            config.pop(where)
        assert {k: v for k, v in args.items() if k != "command"} == config


def test_train_argv_round_trips_every_kind_of_option():
    from ranlib import cli
    from ranlib.training import flags

    config = {"model": "cifar_attention92", "model_kwargs": {"attention": "channel",
                                                             "residual_attention": False},
              "milestones": [10, 20], "lr": 0.05, "nesterov": False, "compile": True,
              "noise_level": 0.3, "seed": 2, "batch_size": None}
    args = vars(cli.build_parser().parse_args(["train", *flags.train_argv(config)]))
    args["model_kwargs"] = flags.key_values(args["model_kwargs"])
    assert {k: v for k, v in args.items() if k != "command"} == {
        k: v for k, v in config.items() if v is not None}
    with pytest.raises(flags.RanlibError, match="'colour' is not a training option"):
        flags.train_argv({"colour": "red"})


# --- complexity -------------------------------------------------------------------------------

def test_complexity_claims_against_paper_and_deploy_files(tmp_path):
    entries = [{"name": "attention56", "params": 31.8e6, "macs": 6.27e9, "input_size": 224},
               {"name": "cifar_attention92", "params": 2.6e6, "macs": 1e9, "input_size": 32}]
    path = tmp_path / "complexity.json"
    path.write_text(json.dumps({"models": entries}))
    claims = complexity.complexity_claims(complexity.read_complexity(path))
    # paper names, not the registry's identifiers
    assert claim(claims, "Attention-56 (ImageNet): params (M), official")["verdict"] == verdicts.REPRODUCED
    assert claim(claims, "Attention-56 (ImageNet): params (M), paper")["verdict"] == verdicts.REPRODUCED
    assert claim(claims, "Attention-92 (CIFAR): params (M), paper")["verdict"] == verdicts.NOT_REPRODUCED
    assert claim(claims, "ResNet-152 (ImageNet): params (M), paper")["verdict"] == verdicts.NOT_RUN
    table = complexity.complexity_table(entries).set_index("name")
    assert table.loc["cifar_attention92", "model"] == "Attention-92 (CIFAR)"
    assert table.loc["attention56", "official params (M)"] == pytest.approx(31.8)
    assert complexity.read_complexity(tmp_path / "absent.json") is None


# --- summaries on a results folder ------------------------------------------------------------

def test_claims_summary_and_ledger_from_a_results_folder(tmp_path):
    for record in arl_nal_records([5.0, 5.1], [6.0, 6.1]):
        write_results(record, tmp_path)
    write_results(make_record("label_noise", "resnet164-noise10-quick-s0", "cifar_resnet164",
                              error=6.0, noise_level=0.1, device_type="cpu", wall_time_s=120),
                  tmp_path)
    summary = report.claims_summary(tmp_path)
    assert {"claim", "paper", "ours", "delta", "verdict", "budget", "seeds"} <= set(summary)
    assert set(summary["experiment"]) >= {"models", "arl_vs_nal", "label_noise", "imagenet"}
    assert set(summary["verdict"]) <= set(verdicts.VERDICTS)
    assert claim(summary, "Attention-56: ARL beats NAL")["verdict"] == verdicts.REPRODUCED

    ledger = compute.compute_ledger(tmp_path).set_index("experiment")
    assert ledger.loc["arl_vs_nal", "runs"] == 4
    assert ledger.loc["arl_vs_nal", "gpu_minutes"] == pytest.approx(40.0)
    assert ledger.loc["label_noise", "cpu_minutes"] == pytest.approx(2.0)
    assert ledger.loc["label_noise", "gpu_minutes"] == 0
    assert ledger.loc["total", "runs"] == 5
    assert ledger.loc["imagenet", "runs"] == 0


def test_one_training_serves_every_table_with_that_row(tmp_path):
    """Attention-56 (mixed, ARL, encoder-decoder) trained for Table 3 is also Table 1's and 4's
    row; it is listed there but counted once, in the ledger of the experiment that trained it."""
    for record in arl_nal_records([5.0, 5.1], [6.0, 6.1]):
        write_results(record, tmp_path)
    types = planning.load_records(tmp_path, "attention_types")
    assert sorted(r["run_name"] for r in types) == ["attention56-arl-quick-s0",
                                                    "attention56-arl-quick-s1"]
    table = report.results_table("attention_types", types).set_index("row")
    assert table.loc["attention56-mixed", "ours (%)"] == "5.05 ± 0.07 (n=2)"
    assert table.loc["attention56-channel", "ours (%)"] == "–"
    assert planning.load_records(tmp_path, "attention_types", shared=False) == []
    assert len(planning.load_records(tmp_path, "arl_vs_nal")) == 4  # its own, not twice
    assert planning.load_records(tmp_path, "label_noise") == []  # noise rows do not match
    ledger = compute.compute_ledger(tmp_path).set_index("experiment")
    assert (ledger.loc["attention_types", "runs"], ledger.loc["total", "runs"]) == (0, 4)


def test_find_training_recognises_the_same_training_under_another_name(tmp_path):
    write_results(make_record("arl_vs_nal", "attention56-arl-quick-s0", "cifar_attention56",
                              error=5.0, kwargs={"residual_attention": True}), tmp_path)
    [mixed] = planning.plan_runs("attention_types", profile="quick", seeds=[0],
                               dataset="cifar10-jpeg", data_root="d", results_dir=tmp_path,
                               rows=["attention56-mixed"])
    assert planning.find_training(mixed, tmp_path)["run_name"] == "attention56-arl-quick-s0"
    for change in ({"seed": 1}, {"profile": "paper"}, {"model_kwargs": {"attention": "channel"}},
                   {"noise_level": 0.1}, {"iterations": 99}, {"dataset": "cifar10"}):
        assert planning.find_training({**mixed, **change}, tmp_path) is None, change
    # where the run goes, or how fast, does not make it another training
    moved = {**mixed, "experiment": "x", "run_name": "y", "device": "cpu", "data_root": "e",
             "compile": True, "compile_mode": "reduce-overhead", "grad_checkpointing": True}
    assert planning.find_training(moved, tmp_path) is not None


def test_train_experiment_does_not_train_what_another_experiment_trained(tmp_path, monkeypatch):
    write_results(make_record("arl_vs_nal", "attention56-arl-quick-s0", "cifar_attention56",
                              error=5.0, kwargs={"residual_attention": True}), tmp_path)
    trained = []
    monkeypatch.setattr("ranlib.training.loop.run_group", lambda configs: [trained.append(c.run_name) or {} for c in configs])
    records = planning.train_experiment("mask_structure", profile="quick", seeds=[0],
                                      dataset="cifar10-jpeg", data_root="d",
                                      results_dir=tmp_path)
    assert trained == ["attention56-local-quick-s0"]
    assert [r.get("run_name") for r in records if r] == ["attention56-arl-quick-s0"]


def test_campaign_ledger_sums_the_charged_device_time_per_experiment(tmp_path):
    assert compute.campaign_ledger(tmp_path).empty
    line = dict.fromkeys(LEDGER_FIELDS, "")
    append_ledger(tmp_path / LEDGER_NAME, [
        {**line, "experiment": "arl_vs_nal", "run_name": "a", "status": "finished", "wall_s": 600,
         "device_s": 300, "max_concurrent": 2, "device_name": "H100"},
        {**line, "experiment": "arl_vs_nal", "run_name": "b", "status": "finished", "wall_s": 600,
         "device_s": 300, "max_concurrent": 2, "device_name": "H100"},
        {**line, "experiment": "arl_vs_nal", "run_name": "c", "status": "interrupted", "wall_s": 60,
         "device_s": 60, "max_concurrent": 1, "device_name": "H100"}])
    table = compute.campaign_ledger(tmp_path).set_index(["experiment", "status"])
    finished = table.loc[("arl_vs_nal", "finished")]
    assert (finished["sittings"], finished["device_minutes"], finished["wall_minutes"]) == (2, 10.0, 20.0)
    assert table.loc[("arl_vs_nal", "interrupted"), "device_minutes"] == 1.0

    # the runs' own records (10 wall minutes each): the book counts what the campaign charged
    for run in ("a", "b", "c"):
        write_results(make_record("arl_vs_nal", run, "cifar_attention56", error=5.0), tmp_path)
    minutes = report.runs_frame("arl_vs_nal", planning.load_records(tmp_path, "arl_vs_nal")).set_index(
        "run_name")["device_minutes"]
    assert (minutes["a"], minutes["b"]) == (5.0, 5.0)
    assert minutes["c"] == 10.0  # interrupted and not finished by a campaign: its own record
    assert compute.compute_ledger(tmp_path).set_index("experiment").loc["arl_vs_nal", "gpu_minutes"] == 20.0


def test_ledger_skips_files_that_are_not_run_records(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "complexity.json").write_text(json.dumps({"models": []}))
    ledger = compute.compute_ledger(tmp_path).set_index("experiment")
    assert ledger.loc["models", "runs"] == 0


def test_runs_summary_names_budget_device_precision_data_and_cost():
    assert report.runs_summary([]) == "no runs yet"
    text = report.runs_summary(arl_nal_records([5.0], [6.0], device_type="cpu", wall_time_s=7200))
    assert text == ("2 runs at quick, 20 of the paper's 205 epochs (10 %); trained on AMD EPYC CPU (2 cores) "
                    "in bf16, on CIFAR-10 (JPEG q75 copy), seed 0; 4.0 CPU-hours in all.")


@pytest.mark.parametrize("name, kind, text", [
    ("Intel(R) Xeon(R) Processor", "cpu", "Intel Xeon CPU (2 cores)"),
    ("Intel(R) Core(TM) i7-9700 CPU @ 3.00GHz", "cpu", "Intel Core i7-9700 @ 3.00GHz CPU (2 cores)"),
    ("AMD EPYC", "cpu", "AMD EPYC CPU (2 cores)"),
    ("NVIDIA H200", "cuda", "NVIDIA H200 GPU"),
])
def test_device_labels_drop_a_cpu_model_s_trademark_marks(name, kind, text):
    record = {"provenance": {"device_name": name, "device_type": kind, "device_count": 2 if kind == "cpu" else 1}}
    assert labels.device_text(record) == text


def test_plots_render_with_and_without_results():
    import matplotlib
    matplotlib.use("Agg")
    records = arl_nal_records([5.0, 5.1], [6.0, 6.1])
    ax = plots.plot_learning_curves("arl_vs_nal", records)
    # the paper's final errors as reference lines, the legend outside the axes, a band: 2 seeds
    assert {"paper, Attention-56 ARL (final)", "paper, Attention-56 NAL (final)"} <= {
        line.get_label() for line in ax.get_lines()}
    assert ax.get_legend().get_bbox_to_anchor().x0 > ax.get_window_extent().x1 - 1
    assert len(ax.collections) > 0
    one_seed = plots.plot_learning_curves("arl_vs_nal", arl_nal_records([5.0], [6.0]))
    assert len(one_seed.collections) == 0  # one seed: no spread band
    assert plots.plot_learning_curves("arl_vs_nal", []) is None  # nothing to draw: no empty axes
    assert plots.plot_stage_responses("arl_vs_nal", records) is not None
    assert plots.plot_error_vs_noise([]) is not None
    noisy = make_record("label_noise", "r", "cifar_resnet164", error=6.0, noise_level=0.3)
    assert plots.plot_transition_matrix(noisy) is not None


def test_plot_masks_draws_one_panel_per_module_and_image():
    import matplotlib
    import torch
    matplotlib.use("Agg")
    masks = {"stages.0.1": torch.rand(3, 4, 16, 16), "stages.1.1": torch.rand(3, 4, 8, 8)}
    fig = plots.plot_masks(np.zeros((3, 32, 32, 3), np.uint8), masks, max_images=2)
    assert len(fig.axes) == 2 * 3


def test_write_complexity_round_trip(tmp_path):
    path = complexity.write_complexity(tmp_path / "models" / "complexity.json", ["cifar_attention56"])
    entries = complexity.read_complexity(path)
    assert [e["name"] for e in entries] == ["cifar_attention56"]
    assert entries[0]["params"] > 0 and entries[0]["macs"] > 0
    table = complexity.complexity_table(entries)
    assert table.loc[0, "paper params (M)"] is None  # Attention-56 is not in Table 6


def test_book_tables_have_no_index_a_dash_for_missing_values_and_the_papers_decimals():
    import math

    frame = pd.DataFrame({"network": ["A", "B"], "paper (%)": [5.52, 4.4], "delta": [0.123, math.nan]})
    html = tables.table_html(frame)
    assert "row_heading" not in html and "5.52" in html and "4.40" in html and "0.12" in html
    assert "NaN" not in html and "nan" not in html and tables.MISSING in html
    html = tables.table_html(frame, formats={"paper (%)": "{:g}"})
    assert ">4.4<" in html


def test_show_folds_the_detail_columns(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj.data))
    frame = pd.DataFrame({"claim": ["c"], "verdict": ["v"], "seeds": ["0, 1"]})
    tables.show(frame, ["claim", "verdict"], details=["claim", "seeds"], summary="More")
    assert len(shown) == 2 and "seeds" not in shown[0]
    assert shown[1].startswith('<details class="ranlib-details"><summary>More</summary>')
    assert "0, 1" in shown[1]
    shown.clear()
    tables.show(frame, [], details=["claim", "seeds"])
    assert len(shown) == 1 and shown[0].startswith("<details")


def test_display_path_never_shows_the_machines_absolute_path(tmp_path):
    from ranlib.paths import display_path

    assert display_path(tmp_path / "results" / "x", root=tmp_path) == "results/x"
    assert display_path("results/x", root=tmp_path) == "results/x"
    assert display_path("/elsewhere/data/cifar", root=tmp_path) == "…/cifar"


def test_sittings_table_gives_each_sittings_device_minutes(tmp_path):
    assert compute.sittings_table(tmp_path).empty
    line = dict.fromkeys(LEDGER_FIELDS, "")
    first, second = "2026-11-29T10:00:00+00:00", "2026-11-30T10:00:00+00:00"
    append_ledger(tmp_path / LEDGER_NAME, [
        {**line, "campaign_started_at": first, "run_name": "a", "status": "finished", "device_s": 300,
         "device_name": "H200"},
        {**line, "campaign_started_at": first, "run_name": "b", "status": "interrupted", "device_s": 120,
         "device_name": "H200"},
        {**line, "campaign_started_at": second, "run_name": "b", "status": "finished", "device_s": 60,
         "device_name": "H200"}])
    table = compute.sittings_table(tmp_path)
    assert table["sitting started (UTC)"].tolist() == [first, second]
    assert table["device minutes"].tolist() == [7.0, 1.0]
    assert table[["finished", "interrupted", "failed"]].values.tolist() == [[1, 1, 0], [1, 0, 0]]
    view = compute.hours_view(table)  # as the Compute page shows it: hours, no machinery words
    assert view["device-hours"].tolist() == pytest.approx([7 / 60, 1 / 60])
    assert not any("sitting" in column or "minutes" in column for column in view.columns)


def test_the_full_profile_judges_orderings_but_not_absolute_errors():
    verdict, reason = verdicts.judge_absolute(5.0, [5.1, 5.2], profile="full", task="cifar",
                                              dataset="CIFAR-10 (JPEG q75 copy)")
    assert verdict == verdicts.NOT_RUN_BUDGET and "batch of 64" in reason
    assert verdicts.judge_ordering([5.0, 5.1], [6.0, 6.1], profile="full")[0] == verdicts.REPRODUCED
    assert verdicts.PROFILE_RANK["quick"] < verdicts.PROFILE_RANK["full"] < verdicts.PROFILE_RANK["paper"]


# --- what a reader meets: the paper's number always, claims as the paper states them ---------

def test_every_claim_row_shows_the_papers_number_even_without_results():
    for name, exp in experiments.EXPERIMENTS.items():
        for line in report.claims_table(name, []).to_dict("records"):
            assert math.isfinite(line["paper"]) and line["paper_text"] != tables.MISSING, (name, line["claim"])
            if line["kind"] != "absolute" and line["kind"] != "response":  # the two errors beside the gap
                assert " vs " in line["paper_text"] and "%" in line["paper_text"], line["paper_text"]
    proxy = report.claims_table("imagewoof", [])
    assert proxy["paper_text"].str.contains("on ImageNet").all()  # the proxy's paper number is ImageNet's


def test_the_papers_own_numbers_support_every_claim_it_is_checked_for():
    for name, exp in experiments.EXPERIMENTS.items():
        claims = report.claims_table(name, [])
        for line in claims.to_dict("records"):
            if line["kind"] in ("ordering", "response"):
                assert line["paper"] > 0, (name, line["claim"])
            if line["kind"] == "parity":
                assert abs(line["paper"]) <= verdicts.PARITY_MARGIN, (name, line["claim"])


def test_table6_headline_and_claims_match_the_papers_table():
    exp = experiments.experiment("cifar_sota")
    t6 = paper.TABLE6_CIFAR
    assert "similar or larger size" not in exp.claim
    # The exceptions the headline states hold in the paper's own table...
    assert t6["cifar_resnet1001"][1] < t6["cifar_attention92"][1]
    assert t6["cifar_wrn16_8"][1] < t6["cifar_attention92"][1]
    assert t6["cifar_wrn28_10"][2] < t6["cifar_attention236"][2]
    assert all(s in exp.claim for s in ("ResNet-1001", "WRN-16-8", "WRN-28-10"))
    # ...Attention-236 has about half ResNet-1001's parameters, and beats it on both data sets...
    assert 0.4 < t6["cifar_attention236"][0] / t6["cifar_resnet1001"][0] < 0.6
    texts = [c.text for c in exp.claims if c.kind == "ordering"]
    assert sum("Attention-236 beats ResNet-1001 with about half its parameters" in t for t in texts) == 2
    # ...and "Attention-452 beats every baseline" is judged against the best baseline of each data set.
    baselines = ("cifar_resnet164", "cifar_resnet1001", "cifar_wrn16_8", "cifar_wrn28_10")
    for column, suffix in ((1, ""), (2, "-c100")):
        best = min(baselines, key=lambda m: t6[m][column])
        [claim] = [c for c in exp.claims if c.kind == "ordering" and c.rows[0] == "attention452" + suffix]
        assert claim.rows[1] == best.removeprefix("cifar_") + suffix
        assert t6["cifar_attention452"][column] < t6[best][column]


def test_table7_judges_its_tie_and_shows_test_crops_and_top5():
    exp = experiments.experiment("imagenet")
    [tie] = [c for c in exp.claims if c.kind == "parity"]
    assert tie.rows == ("attentionnext56", "resnext101")
    table = report.results_table("imagenet", []).set_index("row")
    assert {"test crop (px)", "paper top-5 (%)"} <= set(report.result_columns("imagenet"))
    for name, spec in paper.TABLE7_IMAGENET.items():
        if name in table.index:
            assert table.loc[name, "test crop (px)"] == spec["test_size"]
            assert table.loc[name, "paper top-5 (%)"] == spec["top5"]


def test_table3_states_the_gap_growth_as_the_papers_observation():
    exp = experiments.experiment("arl_vs_nal")
    gaps = [f"{e['nal'] - e['arl']:.2f}" for e in paper.TABLE3_ARL_NAL.values()]
    assert ", ".join(gaps) in exp.claim and "observes" in exp.claim
    assert not any("grow" in c.text or "widen" in c.text for c in exp.claims)


def test_claims_view_anchors_each_claim_and_links_to_it_from_another_page():
    claims = report.claims_table("attention_types", [])
    here = report.claims_view(claims)
    assert here.loc[0, "claim"] == '<span id="claim-attention_types-0">mixed attention beats channel attention</span>'
    there = report.claims_view(claims, link_from="")
    assert there.loc[0, "claim"].startswith('<a href="experiments/attention_types.html#claim-attention_types-0">')
    assert list(here.columns[:2]) == ["claim", "verdict"]  # the verdict next to the claim (phones)


# --- labels, the status box, estimates, the JPEG caveat ----------------------------------------

def test_budget_labels_name_the_share_of_the_papers_schedule():
    from ranlib.study import labels

    assert labels.budget_text("quick", 8000, 128, "cifar_attention56", "cifar10-jpeg") == \
        "quick, 20 of the paper's 205 epochs (10 %)"
    assert labels.budget_text("quick", 5300, 256, "attention56", "imagenet-folder") == \
        "quick, 1.1 of the paper's 106 epochs (1 %)"
    assert labels.budget_text("quick", 705, 256, "attention56", "imagewoof") == "quick, 20 epochs"
    assert labels.budget_text("smoke", 6, 8, "cifar_attention56", "folder") == "smoke (6 it)"
    assert labels.budget_phrase("quick", "cifar_attention92", "cifar10-jpeg") == \
        "the quick budget (20 of the paper's 205 epochs, 10 %)"
    cpu = arl_nal_records([5.0], [6.0], device_type="cpu", wall_time_s=1800)
    assert labels.hours_text(cpu) == "1.0 CPU-hours"
    assert labels.hours_text(cpu + arl_nal_records([5.0], [6.0])) == "0.33 GPU-hours and 1.0 CPU-hours"


def test_status_box_says_what_ran_what_was_judged_and_what_is_left(tmp_path):
    from ranlib.study import status

    empty = status.status_markdown(tmp_path)
    assert empty.startswith(":::{admonition} Where the study stands")
    assert "no training at a judged budget yet" in empty and "Judged:** 0 of the paper's" in empty
    assert "Tables 1, 3 and 4" in empty  # one training serves three tables: said, not counted thrice
    for record in arl_nal_records([5.0, 5.1], [6.0, 6.1], device_type="cpu", wall_time_s=3600):
        write_results(record, tmp_path)
    text = status.status_markdown(tmp_path)
    assert "4 runs at quick, 20 of the paper's 205 epochs (10 %)" in text
    assert "AMD EPYC CPU (2 cores) in bf16" in text and "CIFAR-10 (JPEG q75 copy)" in text
    assert "4.0 CPU-hours" in text
    assert "claims (1 reproduced), at quick, 20 of the paper's 205 epochs (10 %)" in text
    assert "Not run:**" in text and "[Rerun anything](/rerun.md)" in text


def test_what_running_a_chapter_needs_is_estimated_from_the_planner_and_measured_rates(tmp_path):
    from ranlib.study import status

    (tmp_path / "models").mkdir()
    entries = [{"name": "cifar_attention56", "params": 1e6, "macs": 1e8}]
    (tmp_path / "models" / "complexity.json").write_text(json.dumps({"models": entries}))
    line = status.needs_markdown("mask_structure", tmp_path)
    assert "2 networks × 2 seeds" in line and "GPU-hours at the quick budget" in line
    assert "assumed" in line and "CPU-hours" not in line  # no CPU rate measured yet
    # A CPU run measures the rate: 8000 it x 128 images x 3 x 1e8 multiply-adds x 2 FLOPs in an hour.
    cpu = make_record("attention_types", "attention56-mixed-quick-s0", "cifar_attention56", error=14.0,
                      device_type="cpu", wall_time_s=3600)
    cpu["model"]["macs"] = 1e8
    write_results(cpu, tmp_path)
    line = status.needs_markdown("mask_structure", tmp_path)  # the local-mask row is left
    assert "1 network × 2 seeds" in line and "or 2.0 CPU-hours at the quick budget" in line


def test_the_jpeg_caveat_reads_a_measured_cost_or_labels_the_quoted_one(tmp_path):
    quoted = jpeg_gap.jpeg_cost(tmp_path)
    assert quoted["source"] == "quoted" and "quoted, not measured here" in quoted["text"]
    (tmp_path / "jpeg_gap").mkdir()
    (tmp_path / "jpeg_gap" / "a.json").write_text(json.dumps({
        "checkpoint": "checkpoints/attention_types/attention56-mixed-quick-s0/last.pt", "model": "cifar_attention56",
        "iteration": 8000, "num_images": 846, "top1_error_exact": 14.0, "top1_error_jpeg": 15.0,
        "jpeg_minus_exact": 1.0, "mean_abs_pixel_difference": 5.8, "provenance": {"device_name": "AMD EPYC"}}))
    measured = jpeg_gap.jpeg_cost(tmp_path)
    half = 1.96 * math.sqrt(0.14 * 0.86 / 846 + 0.15 * 0.85 / 846) * 100
    assert measured["source"] == "measured" and measured["points"] == 1.0
    assert (measured["low"], measured["high"]) == pytest.approx((1.0 - half, 1.0 + half))
    assert "+1.00 points" in measured["text"] and "measured here" in measured["text"]


def test_an_absolute_claim_on_the_jpeg_copy_is_allowed_the_measured_cost(tmp_path, monkeypatch):
    records = arl_nal_records([8.4, 8.6], [9.0, 9.1], profile="paper", iterations=160000, batch_size=64)
    quoted = claim(report.claims_table("arl_vs_nal", records, tmp_path), "Attention-56 ARL: error")
    assert quoted["verdict"] == verdicts.CONSISTENT_JPEG and "with 3.00 for the JPEG copy" in quoted["reason"]
    (tmp_path / "jpeg_gap").mkdir()
    (tmp_path / "jpeg_gap" / "a.json").write_text(json.dumps({
        "checkpoint": "c/last.pt", "model": "cifar_attention56", "iteration": 8000, "num_images": 846,
        "top1_error_exact": 14.0, "top1_error_jpeg": 14.5, "jpeg_minus_exact": 0.5,
        "jpeg_minus_exact_interval": [-0.2, 1.2], "mean_abs_pixel_difference": 5.8, "provenance": {}}))
    measured = claim(report.claims_table("arl_vs_nal", records, tmp_path), "Attention-56 ARL: error")
    tol = verdicts.ABS_TOLERANCE["cifar"] + verdicts.SPREAD_SIGMAS * verdicts.mean_std([8.4, 8.6])[1]
    # the band's upper end is the tolerance plus the measured interval's upper end, not the quoted 3
    assert measured["verdict"] == verdicts.PARTLY and f"+{tol + 1.2:.2f}]" in measured["reason"]
    assert jpeg_gap.jpeg_cost(tmp_path)["allowance"] == 1.2
    # and the chapter's rule sentence states that allowance, not the quoted one
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(getattr(obj, "data", str(obj))))
    report.show_claims("arl_vs_nal", records, report.claims_table("arl_vs_nal", records, tmp_path), tmp_path)
    assert "by 1.20 points" in shown[0] and "by 3.00 points" not in shown[0]
