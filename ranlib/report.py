"""Tables that set our results beside the paper's, the compute ledgers, and the book's summaries.

The notebooks in ``notebooks/`` stay thin: they call :func:`ranlib.planning.train_experiment`
(which only builds :class:`ranlib.train.TrainConfig` objects and calls :func:`ranlib.train.run`),
then :func:`ranlib.planning.load_records`, :func:`results_table`, :func:`claims_table` here and
the ``plot_*`` helpers of :mod:`ranlib.plots`. The book's summary pages call
:func:`claims_summary` and :func:`compute_ledger`. Paper numbers come from :mod:`ranlib.paper`
only; the experiments' rows and claims from :mod:`ranlib.experiments`; the rules a claim is
judged by from :mod:`ranlib.verdicts`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from . import paper
from .experiments import EXPERIMENTS, OTHER_EXPERIMENTS, experiment
from .ledger import LEDGER_NAME, charged_device_s, device_minutes, read_ledger, with_charged_time
from .paths import display_path, resolve_path
from .planning import load_records, train_commands
from .results import load_results
from .verdicts import (COMPLEXITY_TOLERANCE, DEPLOY_TOLERANCE, NOT_RUN, NOT_RUN_SMOKE, PROFILE_RANK,
                       judge_absolute, judge_complexity, judge_ordering, judge_parity, mean_std)


# ----------------------------------------------------------------------------------------------
# How the book shows a table

# The paper prints top-1/top-5 errors (and so their deltas and spreads) with two decimals.
PAPER_DECIMALS = 2
MISSING = "–"
RESULT_COLUMNS = ["network", "paper (%)", "ours (%)", "delta", "budget"]
RESULT_DETAILS = ["row", "network", "dataset", "seeds", "device min", "device"]
CLAIM_COLUMNS = ["claim", "paper", "ours", "verdict", "reason"]
CLAIM_DETAILS = ["claim", "delta", "budget", "dataset", "seeds"]
COMPLEXITY_COLUMNS = ["model", "params (M)", "paper params (M)", "official params (M)", "GMACs",
                      "paper GFLOPs", "official GMACs"]
COMPLEXITY_DETAILS = ["model", "input", "Δ params vs paper (%)", "Δ GMACs vs paper (%)"]
# The paper's counts as it prints them; the differences to a tenth of a per cent.
COMPLEXITY_FORMATS = {"paper params (M)": "{:g}", "paper GFLOPs": "{:g}",
                      "Δ params vs paper (%)": "{:+.1f}", "Δ GMACs vs paper (%)": "{:+.1f}"}


def table_html(frame: pd.DataFrame, *, digits: int = PAPER_DECIMALS,
               formats: dict[str, str] | None = None) -> str:
    """``frame`` as the book's HTML table: no index column, ``–`` where a value is missing,
    floats with ``digits`` decimals (``formats``: a format string per column instead)."""
    columns = list(frame.columns)
    styler = frame.style.hide(axis="index").format(na_rep=MISSING, precision=digits, escape="html")
    for column, spec in (formats or {}).items():
        if column in columns:
            styler = styler.format(lambda v, spec=spec: MISSING if _missing(v) else spec.format(v),
                                   subset=[column])
    # Styler draws a random table id: one from the content keeps a re-rendered page the same.
    uuid = hashlib.sha256(frame.to_json(default_handler=str).encode()).hexdigest()[:8]
    return styler.set_uuid(uuid).set_table_attributes('class="dataframe ranlib-table"').to_html()


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def show(frame: pd.DataFrame, columns: Sequence[str] | None = None, *,
         details: Sequence[str] | None = None, summary: str = "All columns",
         digits: int = PAPER_DECIMALS, formats: dict[str, str] | None = None) -> None:
    """Display ``frame`` in a notebook the way every page of the book shows a table.

    Only ``columns`` (None: all; empty: none, the whole table folded) are shown, so that the
    table fits a 1280-px page; ``details`` (other columns) go to a second table folded under
    ``summary``. The frame itself is not changed (tables glued for the prose keep every column).
    """
    from IPython.display import HTML, display

    if columns is None or len(columns):
        shown = frame[[c for c in columns if c in frame.columns]] if columns is not None else frame
        display(HTML(table_html(shown, digits=digits, formats=formats)))
    rest = [c for c in details or [] if c in frame.columns]
    if rest and not frame.empty:
        display(HTML(f'<details class="ranlib-details"><summary>{summary}</summary>\n'
                     f"{table_html(frame[rest], digits=digits, formats=formats)}\n</details>"))


# ----------------------------------------------------------------------------------------------
# Paper vs ours, per experiment


def record_profile(record: dict) -> str:
    """The budget profile a results record was trained at."""
    return record.get("config", {}).get("profile", "unknown")


def runs_frame(name: str, records: Sequence[dict]) -> pd.DataFrame:
    """One line per run of a known row: row key, seed, profile, dataset, errors, compute."""
    exp = experiment(name)
    lines = []
    for row, record in exp.runs_of(records):
        prov = record.get("provenance", {})
        lines.append(dict(
            row=row.key, label=row.label, run_name=record["run_name"],
            seed=prov.get("seed", record.get("config", {}).get("seed")),
            profile=record_profile(record), iterations=record.get("config", {}).get("iterations"),
            batch_size=record.get("config", {}).get("batch_size"),
            dataset=record["dataset"]["label"], dataset_id=record["dataset"]["id"],
            top1_error=record["final"]["top1_error"], top5_error=record["final"]["top5_error"],
            device=prov.get("device_name"), device_type=prov.get("device_type"),
            device_minutes=device_minutes(record)))
    columns = ["row", "label", "run_name", "seed", "profile", "iterations", "batch_size", "dataset",
               "dataset_id", "top1_error", "top5_error", "device", "device_type",
               "device_minutes"]
    return pd.DataFrame(lines, columns=columns)


def format_mean_std(mean: float, std: float, n: int, digits: int = 2) -> str:
    """``"5.52 ± 0.10 (n=2)"``; ``"5.52 (n=1)"``; ``"–"`` without values."""
    if n == 0 or not math.isfinite(mean):
        return "–"
    if n > 1 and math.isfinite(std):
        return f"{mean:.{digits}f} ± {std:.{digits}f} (n={n})"
    return f"{mean:.{digits}f} (n={n})"


def _budget(profile: str, iterations: Any, batch_size: Any = None) -> str:
    """``"quick (625 it)"``; the ``full`` profile names its batch, which defines it."""
    if iterations is None or (isinstance(iterations, float) and math.isnan(iterations)):
        return profile
    if profile == "full" and batch_size:
        return f"full, batch {int(batch_size)} ({int(iterations):,} it)"
    return f"{profile} ({int(iterations):,} it)"


def _groups(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs aggregated per (row, profile, dataset)."""
    columns = ["row", "profile", "dataset", "mean", "std", "n", "top5_mean", "budget",
               "device_minutes", "device", "seeds"]
    if runs.empty:
        return pd.DataFrame(columns=columns)
    out = []
    for (row, profile, dataset), g in runs.groupby(["row", "profile", "dataset"], sort=False):
        mean, std, n = mean_std(g["top1_error"])
        top5, _, _ = mean_std(g["top5_error"].dropna())
        devices = sorted({d for d in g["device"] if d})
        out.append(dict(row=row, profile=profile, dataset=dataset, mean=mean, std=std, n=n,
                        top5_mean=top5, budget=_budget(profile, g["iterations"].iloc[0], g["batch_size"].iloc[0]),
                        device_minutes=float(g["device_minutes"].sum()),
                        device=", ".join(devices), seeds=sorted(g["seed"].tolist())))
    return pd.DataFrame(out, columns=columns)


def _best_group(groups: pd.DataFrame, key: str) -> dict | None:
    """The row's results at the largest budget (then the most seeds)."""
    g = groups[groups["row"] == key]
    if g.empty:
        return None
    ranked = g.assign(rank=g["profile"].map(PROFILE_RANK).fillna(-1)).sort_values(
        ["rank", "n"], ascending=False)
    return ranked.iloc[0].to_dict()


def results_table(name: str, records: Sequence[dict]) -> pd.DataFrame:
    """Paper vs ours, one line per row of the paper's table and budget we ran it at.

    Rows we have no results for are listed with the paper's number and ``ours`` = "–".
    """
    exp = experiment(name)
    groups = _groups(runs_frame(name, records))
    lines = []
    for row in exp.rows:
        mine = groups[groups["row"] == row.key]
        if mine.empty:
            if row.paper_error is None and not row.cifar100:
                continue
            lines.append({"row": row.key, "network": row.label, "paper (%)": row.paper_error,
                          "ours (%)": "–", "delta": math.nan, "budget": "not run here",
                          "dataset": "", "seeds": "", "device min": math.nan, "device": ""})
            continue
        for g in mine.to_dict("records"):
            delta = g["mean"] - row.paper_error if row.paper_error is not None else math.nan
            lines.append({"row": row.key, "network": row.label, "paper (%)": row.paper_error,
                          "ours (%)": format_mean_std(g["mean"], g["std"], g["n"]),
                          "delta": round(delta, 2), "budget": g["budget"],
                          "dataset": g["dataset"], "seeds": ", ".join(map(str, g["seeds"])),
                          "device min": round(g["device_minutes"], 2), "device": g["device"]})
    return pd.DataFrame(lines)


def normalised_responses(record: dict) -> list[float] | None:
    """Figure 4's curve for one run: stage responses divided by stage 1's."""
    values = (record.get("analysis") or {}).get("stage_response") or []
    if not values or not values[0]:
        return None
    return [float(v) / float(values[0]) for v in values]


def _seed_values(runs: pd.DataFrame, key: str, profile: str, dataset: str,
                 column: str = "top1_error") -> list[float]:
    sel = runs[(runs["row"] == key) & (runs["profile"] == profile) & (runs["dataset"] == dataset)]
    return [float(v) for v in sel[column] if v is not None and math.isfinite(v)]


def claims_table(name: str, records: Sequence[dict]) -> pd.DataFrame:
    """Every claim of an experiment: claim, paper, ours, delta, verdict, reason, budget, seeds."""
    exp = experiment(name)
    runs = runs_frame(name, records)
    response = {}
    for record in records:  # last-stage response normalised to stage 1, per run
        curve = normalised_responses(record)
        if curve is not None:
            response[record["run_name"]] = curve[-1]
    runs["response"] = runs["run_name"].map(response)
    groups = _groups(runs)
    lines = []
    for claim in exp.claims:
        best = [_best_group(groups, key) for key in claim.rows]
        line = dict(experiment=name, claim=claim.text, kind=claim.kind, paper=math.nan,
                    ours=math.nan, delta=math.nan, verdict=NOT_RUN, reason="no results",
                    budget="", dataset="", seeds="")
        if all(b is not None for b in best):
            # Judge every row of a claim at the same budget and dataset: the first row's.
            profile, dataset = best[0]["profile"], best[0]["dataset"]
            column = "response" if claim.kind == "response" else "top1_error"
            values = [_seed_values(runs, key, profile, dataset, column) for key in claim.rows]
            seeds = runs[(runs["row"].isin(claim.rows)) & (runs["profile"] == profile)]["seed"]
            line.update(budget=best[0]["budget"], dataset=dataset,
                        seeds=", ".join(map(str, sorted(set(seeds)))))
            if claim.kind == "absolute":
                row = exp.row(claim.rows[0])
                mean, std, n = mean_std(values[0])
                verdict = judge_absolute(row.paper_error, values[0], profile=profile,
                                         task=exp.task, dataset=dataset)
                line.update(paper=row.paper_error, ours=mean, delta=mean - row.paper_error)
            else:
                a, b = (exp.row(k) for k in claim.rows)
                if claim.kind == "ordering":
                    verdict = judge_ordering(values[0], values[1], profile=profile)
                    paper_gap = (b.paper_error - a.paper_error
                                 if a.paper_error is not None and b.paper_error is not None
                                 else math.nan)
                    ours_gap = mean_std(values[1])[0] - mean_std(values[0])[0]
                elif claim.kind == "parity":  # the gap, signed as for an ordering; 0 is the claim
                    verdict = judge_parity(values[0], values[1], profile=profile)
                    paper_gap = (b.paper_error - a.paper_error
                                 if a.paper_error is not None and b.paper_error is not None
                                 else math.nan)
                    ours_gap = mean_std(values[1])[0] - mean_std(values[0])[0]
                else:  # response: larger is better, so judge the negated values
                    verdict = judge_ordering([-v for v in values[0]], [-v for v in values[1]],
                                             profile=profile)
                    curves = paper.FIGURE4_STAGE_RESPONSE
                    paper_gap = curves["Attention-164 ARL"][-1] - curves["Attention-164 NAL"][-1]
                    ours_gap = mean_std(values[0])[0] - mean_std(values[1])[0]
                line.update(paper=paper_gap, ours=ours_gap, delta=ours_gap - paper_gap)
            line.update(verdict=verdict[0], reason=verdict[1])
            if any(not v for v in values) and line["verdict"] != NOT_RUN_SMOKE:
                line.update(verdict=NOT_RUN, reason="a row of this claim has no results at "
                            f"the {profile} budget on {dataset}")
        lines.append(line)
    columns = ["experiment", "claim", "kind", "paper", "ours", "delta", "verdict", "reason",
               "budget", "dataset", "seeds"]
    return pd.DataFrame(lines, columns=columns)


# ----------------------------------------------------------------------------------------------
# Model complexity (Tables 2, 6, 7)


def paper_complexity(name: str) -> tuple[float | None, float | None]:
    """The paper's (params in M, GFLOPs) for a registered model name, where it gives them."""
    if name in paper.TABLE6_CIFAR:
        return paper.TABLE6_CIFAR[name][0], None
    spec = paper.TABLE7_IMAGENET.get(name)
    return (spec["params"], spec["gflops"]) if spec else (None, None)


def read_complexity(path: str | os.PathLike) -> list[dict] | None:
    """``results/models/complexity.json`` as a list of {name, params, macs, ...}; None if absent.

    Accepts a list of entries, ``{"models": [...]}``, or a mapping name -> entry.
    """
    path = resolve_path(path)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if isinstance(data, dict) and "models" in data:
        data = data["models"]
    if isinstance(data, dict):
        data = [{"name": k, **v} for k, v in data.items()]
    return data


def complexity_table(entries: Sequence[dict]) -> pd.DataFrame:
    """Ours vs the paper's vs the official deploy files' parameters and multiply-adds."""
    lines = []
    for entry in entries:
        name = entry["name"]
        paper_params, paper_gflops = paper_complexity(name)
        deploy = paper.OFFICIAL_DEPLOY.get(name, {})
        params_m = entry["params"] / 1e6
        gmacs = entry["macs"] / 1e9 if entry.get("macs") is not None else math.nan
        lines.append({
            "model": name, "input": entry.get("input_size"),
            "params (M)": round(params_m, 3),
            "paper params (M)": paper_params,
            "Δ params vs paper (%)": _percent_delta(params_m, paper_params),
            "official params (M)": round(deploy["params"] / 1e6, 3) if deploy else math.nan,
            "GMACs": round(gmacs, 3), "paper GFLOPs": paper_gflops,
            "Δ GMACs vs paper (%)": _percent_delta(gmacs, paper_gflops),
            "official GMACs": round(deploy["macs"] / 1e9, 3) if deploy else math.nan,
        })
    return pd.DataFrame(lines)


def _percent_delta(ours: float, reference: float | None) -> float:
    return round(100 * (ours - reference) / reference, 1) if reference else math.nan


def complexity_claims(entries: Sequence[dict] | None) -> pd.DataFrame:
    """One claim per count the paper (or the official deploy file) gives for a model."""
    lines = []
    entries = {e["name"]: e for e in entries or []}
    names = sorted(set(paper.TABLE6_CIFAR) | {n for n in paper.TABLE7_IMAGENET
                                               if paper.TABLE7_IMAGENET[n]["params"]})
    for name in names:
        entry = entries.get(name)
        paper_params, paper_gflops = paper_complexity(name)
        deploy = paper.OFFICIAL_DEPLOY.get(name, {})
        checks = [("params (M), paper", paper_params, "params", 1e6, COMPLEXITY_TOLERANCE),
                  ("GFLOPs (multiply-adds), paper", paper_gflops, "macs", 1e9,
                   COMPLEXITY_TOLERANCE)]
        if deploy:
            checks += [("params (M), official deploy file", deploy["params"] / 1e6, "params",
                        1e6, DEPLOY_TOLERANCE),
                       ("G multiply-adds, official deploy file", deploy["macs"] / 1e9, "macs",
                        1e9, DEPLOY_TOLERANCE)]
        for what, reference, key, scale, tolerance in checks:
            if reference is None:
                continue
            ours = entry[key] / scale if entry and entry.get(key) is not None else None
            verdict, reason = judge_complexity(ours, reference, tolerance)
            lines.append(dict(experiment="models", claim=f"{name}: {what}", kind="complexity",
                              paper=reference, ours=ours if ours is not None else math.nan,
                              delta=ours - reference if ours is not None else math.nan,
                              verdict=verdict, reason=reason, budget="exact count",
                              dataset="", seeds=""))
    return pd.DataFrame(lines)


def write_complexity(path: str | os.PathLike = "results/models/complexity.json",
                     names: Sequence[str] | None = None) -> Path:
    """Count every (or the named) registered model afresh and write the counts with provenance, so
    re-rendering the models notebook reads them instead of counting again (a minute on 2 CPUs)."""
    import time

    from .cli import model_table
    from .provenance import collect

    path = resolve_path(path)
    started = time.perf_counter()
    entries = model_table(list(names) if names else None, use_cache=False)
    payload = {"models": entries,
               "counter": "torch.utils.flop_counter on a meta-device model (multiply-adds = FLOPs / 2), "
                          "at 224 for ImageNet models and 32 for CIFAR models",
               "counting_time_s": round(time.perf_counter() - started, 1),
               "provenance": collect("cpu")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def complexity_entries(names: Sequence[str] | None = None) -> list[dict]:
    """Count parameters and multiply-adds live (``python -m ranlib models``' table: shapes only,
    at the models' input size, 32 for CIFAR and 224 for ImageNet, where the paper counts FLOPs)."""
    from .cli import model_table

    return model_table(list(names) if names else None)


# ----------------------------------------------------------------------------------------------
# Summaries for the book


def claims_summary(results_root: str | os.PathLike = "results") -> pd.DataFrame:
    """Every claim of every experiment, judged on what ``results_root`` holds."""
    root = resolve_path(results_root)
    frames = [complexity_claims(read_complexity(root / "models" / "complexity.json"))]
    for name, exp in EXPERIMENTS.items():
        if exp.claims:
            frames.append(claims_table(name, load_records(root, name)))
    return pd.concat(frames, ignore_index=True)


def compute_ledger(results_root: str | os.PathLike = "results") -> pd.DataFrame:
    """Device time per experiment, from the ``cost`` fields of every results record (or, for
    runs a campaign trained, the device time its ledger charged them).

    Columns: experiment, runs, gpu_minutes (CUDA runs), cpu_minutes (the rest), devices,
    profiles; a last line ``total``.
    """
    root = resolve_path(results_root)
    charged = charged_device_s(root)
    lines = []
    names = list(EXPERIMENTS) + [n for n in OTHER_EXPERIMENTS if n not in EXPERIMENTS]
    for name in names:
        folder = root / name
        files = sorted(p for p in folder.glob("*.json") if not p.name.startswith(".")) \
            if folder.is_dir() else []
        # complexity.json and benchmark files are not run records: only those with "cost".
        records = with_charged_time([r for p in files if "cost" in json.loads(p.read_text())
                                      for r in load_results(p)], charged)
        gpu = sum(device_minutes(r) for r in records
                  if r["provenance"].get("device_type") == "cuda")
        cpu = sum(device_minutes(r) for r in records
                  if r["provenance"].get("device_type") != "cuda")
        lines.append(dict(
            experiment=name, runs=len(records), gpu_minutes=round(gpu, 2),
            cpu_minutes=round(cpu, 2),
            devices=", ".join(sorted({r["provenance"].get("device_name") or "?"
                                      for r in records})),
            profiles=", ".join(sorted({record_profile(r) for r in records},
                                      key=lambda p: PROFILE_RANK.get(p, 9)))))
    ledger = pd.DataFrame(lines)
    total = dict(experiment="total", runs=int(ledger["runs"].sum()),
                 gpu_minutes=round(float(ledger["gpu_minutes"].sum()), 2),
                 cpu_minutes=round(float(ledger["cpu_minutes"].sum()), 2), devices="",
                 profiles="")
    return pd.concat([ledger, pd.DataFrame([total])], ignore_index=True)


def campaign_ledger(results_root: str | os.PathLike = "results") -> pd.DataFrame:
    """Device time ``ranlib.campaign`` charged, per experiment and run status, from its ledger.

    The campaign splits every second it held the device equally between the trainings running
    in it, so ``device_minutes`` adds up to the time the device was held (unlike the sum of the
    runs' wall times when several shared it). Empty when no campaign ran.
    """
    columns = ["experiment", "status", "sittings", "device_minutes", "wall_minutes", "max_concurrent",
               "device_name"]
    lines = read_ledger(resolve_path(results_root) / LEDGER_NAME)
    if not lines:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(lines).astype({"device_s": float, "wall_s": float, "max_concurrent": int})
    out = frame.groupby(["experiment", "status"], sort=False).agg(
        sittings=("run_name", "size"), device_minutes=("device_s", lambda v: round(v.sum() / 60, 2)),
        wall_minutes=("wall_s", lambda v: round(v.sum() / 60, 2)), max_concurrent=("max_concurrent", "max"),
        device_name=("device_name", lambda v: ", ".join(sorted(set(v))))).reset_index()
    return out[columns]


def sittings_table(results_root: str | os.PathLike = "results") -> pd.DataFrame:
    """One line per campaign sitting (``python -m ranlib.campaign run`` or ``sitting``): when it
    started, on which device, its runs by how they ended, and the device minutes it charged, which
    add up to the time it held the device. Empty when no campaign ran."""
    columns = ["sitting started (UTC)", "device", "finished", "interrupted", "failed", "device minutes"]
    lines = read_ledger(resolve_path(results_root) / LEDGER_NAME)
    if not lines:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(lines).astype({"device_s": float})
    out = frame.groupby("campaign_started_at", sort=True).agg(
        device=("device_name", lambda v: ", ".join(sorted(set(v)))),
        **{status: ("status", lambda v, s=status: int((v == s).sum()))
           for status in ("finished", "interrupted", "failed")},
        device_minutes=("device_s", lambda v: round(v.sum() / 60, 2))).reset_index()
    out = out.rename(columns={"campaign_started_at": "sitting started (UTC)", "device_minutes": "device minutes"})
    return out[columns]


def jpeg_gap_table(results_root: str | os.PathLike = "results") -> pd.DataFrame:
    """What the JPEG copy costs trained models: one line per ``results/jpeg_gap/*.json`` written
    by ``python -m ranlib.jpeg_gap`` (top-1 error on the 846 exact official test images and on
    their JPEG q75 versions). Empty when none was measured."""
    columns = ["run", "model", "iteration", "images", "error exact (%)", "error JPEG (%)",
               "JPEG - exact", "mean |pixel diff|", "device"]
    folder = resolve_path(results_root) / "jpeg_gap"
    lines = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        gap = json.loads(path.read_text())
        lines.append({"run": Path(gap["checkpoint"]).parent.name, "model": gap["model"],
                      "iteration": gap["iteration"], "images": gap["num_images"],
                      "error exact (%)": round(gap["top1_error_exact"], 2),
                      "error JPEG (%)": round(gap["top1_error_jpeg"], 2),
                      "JPEG - exact": round(gap["jpeg_minus_exact"], 2),
                      "mean |pixel diff|": round(gap["mean_abs_pixel_difference"], 2),
                      "device": gap["provenance"].get("device_name")})
    return pd.DataFrame(lines, columns=columns)


# Issue targets for the training step on one H100 (the Performance page checks the figures against them).
TARGET_SPEEDUP = 3.0  # ranlib's CIFAR path over the plain baseline, Attention-92
TARGET_PAPER_SCHEDULE_MIN = 20.0  # Attention-92, the paper-length CIFAR schedule
TARGET_QUICK_MIN = 3.0  # Attention-92, the quick profile
TARGET_MEMORY_BYTES = 11e9  # Attention-56 at 224, batch 64, a whole training step


def read_benchmarks(results_root: str | os.PathLike = "results") -> list[dict]:
    """The figures files ``python -m ranlib.bench --out results/performance`` wrote, with their
    profiles (``--profile results/performance/profiles``) under ``"profile"`` when present."""
    folder = resolve_path(results_root) / "performance"
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    records = [r for r in records if "ranlib" in r]  # not bench --fused's file (read_fused_benchmarks)
    profiles = {p.name.removesuffix("-profile.json"): json.loads(p.read_text())
                for p in sorted(folder.glob("profiles/*-profile.json"))}
    from .bench import file_name

    named = [(r, file_name(r)) for r in records]
    return [{**r, "file": name, "profile": profiles.get(name.removesuffix(".json"))} for r, name in named]


def performance_table(benchmarks: Sequence[dict]) -> pd.DataFrame:
    """One line per benchmarked configuration: ranlib vs the plain baseline."""
    from .bench import setup_text

    lines = []
    for b in benchmarks:
        fast, plain = b["ranlib"], b.get("baseline") or {}
        lines.append({
            "model": b["model"], "size": b["input_size"], "batch": b["batch_size"],
            "setup": setup_text(fast), "images/s": round(fast["images_per_s"], 1),
            "baseline images/s": round(plain["images_per_s"], 1) if plain else math.nan,
            "speed-up": round(b["speedup"], 2) if b.get("speedup") else math.nan,
            "step ms": round(fast["step_time_ms_median"], 2),
            "peak GiB": round(fast["peak_memory_bytes"] / 2**30, 2),
            "baseline peak GiB": round(plain["peak_memory_bytes"] / 2**30, 2) if plain else math.nan,
            "MFU %": round(100 * fast["mfu"], 1) if fast.get("mfu") is not None else math.nan,
            "paper schedule min": round(b["projection"]["paper_schedule_min"], 1),
            "device": b["device_name"], "torch": b["provenance"].get("torch")})
    return pd.DataFrame(lines)


def performance_targets(benchmarks: Sequence[dict]) -> pd.DataFrame:
    """The issue's targets against every figures file that speaks to one: met, or not."""
    from .bench import setup_text
    from .train import PROFILES

    quick_batch = PROFILES["cifar"]["quick"].batch_size
    lines = []

    def add(target, b, value, unit, met):
        lines.append({"target": target, "model": b["model"], "batch": b["batch_size"],
                      "setup": setup_text(b["ranlib"]), "measured": f"{value:.2f} {unit}",
                      "met": "yes" if met else "no", "device": b["device_name"]})

    for b in benchmarks:
        if b["model"] == "cifar_attention92":
            if b.get("speedup"):
                add(f"CIFAR path >= {TARGET_SPEEDUP:g}x the plain baseline", b, b["speedup"], "x",
                    b["speedup"] >= TARGET_SPEEDUP)
            minutes = b["projection"]["paper_schedule_min"]
            add(f"paper-length schedule <= {TARGET_PAPER_SCHEDULE_MIN:g} min (projected)", b, minutes, "min",
                minutes <= TARGET_PAPER_SCHEDULE_MIN)
            if b["batch_size"] == quick_batch:
                minutes = b["projection"]["quick_profile_min"]
                add(f"quick profile <= {TARGET_QUICK_MIN:g} min (projected)", b, minutes, "min",
                    minutes <= TARGET_QUICK_MIN)
        if (b["model"], b["input_size"], b["batch_size"]) == ("attention56", 224, 64):
            # What the card must hold: the allocator's reserved peak when recorded, else allocated.
            peak = b["ranlib"].get("peak_reserved_bytes") or b["ranlib"]["peak_memory_bytes"]
            add(f"training step <= {TARGET_MEMORY_BYTES / 1e9:g} GB peak memory", b, peak / 1e9, "GB",
                peak <= TARGET_MEMORY_BYTES)
    return pd.DataFrame(lines, columns=["target", "model", "batch", "setup", "measured", "met", "device"])


def read_performance(benchmark: str, results_root: str | os.PathLike = "results") -> list[dict]:
    """The files of one kind (their ``"benchmark"``: ``fused``, ``cpu``, ``precision_check``) that
    ``python -m ranlib.bench ... --out results/performance`` wrote."""
    folder = resolve_path(results_root) / "performance"
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    return [r for r in records if r.get("benchmark") == benchmark]


def read_fused_benchmarks(results_root: str | os.PathLike = "results") -> list[dict]:
    """The files ``python -m ranlib.bench --fused --out results/performance`` wrote."""
    return read_performance("fused", results_root)


def cpu_table(records: Sequence[dict]) -> pd.DataFrame:
    """The CPU's training-step figures (``python -m ranlib.bench --device cpu``): one line per precision,
    memory format and batch, with the share of that precision's measured matrix peak."""
    lines = [{"model": r["model"], "precision": s["precision"], "format": "channels_last" if s["channels_last"] else "NCHW",
              "batch": s["batch_size"], "images/s": round(s["images_per_s"], 1),
              "GFLOP/s": round(1e3 * s["achieved_tflops"]), "% of peak": round(100 * s["peak_share"], 1),
              "images per CPU-s": round(s["images_per_cpu_s"], 1),
              "% of peak (CPU time)": round(100 * s["peak_share_cpu_time"], 1),
              "peak GFLOP/s": round(1e3 * r["matmul_peak"][s["precision"]]["tflops"]),
              "peak GFLOP per CPU-s": round(1e3 * r["matmul_peak"][s["precision"]]["cpu_tflops"]),
              "threads": r["conditions"]["start"]["threads"], "load": round(r["conditions"]["start"]["load_average"][0], 1),
              "device": r["device_name"]}
             for r in records for s in r["step"]]
    return pd.DataFrame(lines)


def loop_share_table(records: Sequence[dict]) -> pd.DataFrame:
    """The real loop against the bare step at the same settings (``python -m ranlib.bench --device cpu --dataset ...``)."""
    lines = [{"model": r["model"], "batch": r["loop"]["batch_size"], "precision": r["loop"]["precision"],
              "data": r["loop"]["dataset"]["label"], "iterations": r["loop"]["iterations"],
              "loop images/s": round(r["loop"]["loop_images_per_s"], 1),
              "bare step images/s": " / ".join(f"{v:.1f}" for v in r["loop"]["bare_step_images_per_s"]),
              "loop share %": round(100 * r["loop"]["share"], 1),
              "loop share by CPU time %": round(100 * r["loop"]["share_cpu_time"], 1)
              if r["loop"].get("share_cpu_time") else None,
              "threads": r["conditions"]["start"]["threads"], "device": r["device_name"]}
             for r in records if r.get("loop")]
    return pd.DataFrame(lines)


def precision_check_table(records: Sequence[dict]) -> pd.DataFrame:
    """bf16 against two fp32 seeds (``python -m ranlib.bench --precision-check``): one line per check."""
    lines = [{"model": r["model"], "batch": r["batch_size"], "iterations": r["iterations"],
              "data": r["runs"][0]["dataset"]["label"],
              "mean |loss gap| bf16 vs fp32, seed 0": round(r["mean_abs_gap"]["bf16_vs_fp32_same_seed"], 4),
              "mean |loss gap| fp32 seed 1 vs 0": round(r["mean_abs_gap"]["fp32_seeds"], 4),
              "test error % (fp32 s0, fp32 s1, bf16 s0)": ", ".join(f"{x['test_top1_error']:.1f}" for x in r["runs"]),
              "test images": r["runs"][0]["num_test"],
              "images/s (fp32 s0, fp32 s1, bf16 s0)": ", ".join(f"{x['images_per_s']:.0f}" for x in r["runs"]),
              "bf16 trains like fp32": "yes" if r["agree"] else "no", "device": r["device_name"],
              "threads": r["conditions"]["start"]["threads"]}
             for r in records]
    return pd.DataFrame(lines)


def fused_table(records: Sequence[dict]) -> pd.DataFrame:
    """One line per fused configuration (K members as one model): rates, TFLOP/s and the ratios."""
    def ratio(value):
        return round(value, 2) if value is not None else math.nan

    lines = [{"model": f["model"], "batch": f["batch_size"], "K": f["members"],
              "graphs": ("on" if f["graph_captured"] else "capture failed") if f["graphs"] else "off",
              "images/s (all)": round(f["images_per_s"], 1), "images/s (each)": round(f["images_per_s_per_member"], 1),
              "step ms": round(f["step_time_ms_mean"], 2), "TFLOP/s": round(f["achieved_tflops"], 2),
              "% of bf16 peak": round(100 * f["peak_share"], 1), "x separate": ratio(f["vs_separate"]),
              "x best solo": ratio(f["vs_best_solo"]), "x baseline": ratio(f["vs_baseline"]),
              "device": r["device_name"]}
             for r in records for f in r["fused"]]
    return pd.DataFrame(lines)


def fused_targets(records: Sequence[dict]) -> pd.DataFrame:
    """The fused benchmark's targets as it judged them (met, not met, or not measured)."""
    lines = [{"target": t["target"],
              "measured": "not measured" if t["measured"] is None else
              (f"{100 * t['measured']:.1f} %" if "peak" in t["target"] else f"{t['measured']:.2f}x"),
              "met": {True: "yes", False: "no", None: "not measured"}[t["met"]], "device": r["device_name"]}
             for r in records for t in r["targets"]]
    return pd.DataFrame(lines, columns=["target", "measured", "met", "device"])


def profile_table(benchmarks: Sequence[dict]) -> pd.DataFrame:
    """Where a step's time goes (``bench --profile``): per configuration, the share of self time
    of each category, device kernels on a GPU (host ops otherwise), and the GPU's idle share."""
    from .bench import setup_text

    lines = []
    for b in benchmarks:
        profiled = b.get("profile")
        if not profiled:
            continue
        side = "device" if "device" in profiled else "host"
        total = profiled[side]["total_self_us"] or 1.0
        lines.append({"model": b["model"], "batch": b["batch_size"], "setup": setup_text(b["ranlib"]),
                      "time": f"{side} self", "ms per step": round(profiled[side]["per_step_ms"], 2),
                      **{f"{k} %": round(100 * v / total, 1) for k, v in profiled[side]["categories_us"].items()},
                      "GPU idle %": round(100 * profiled["gpu_idle_fraction"], 1)
                      if "gpu_idle_fraction" in profiled else math.nan})
    return pd.DataFrame(lines)


def concurrency_table(benchmarks: Sequence[dict]) -> pd.DataFrame:
    """``bench --processes K``: K trainings at once on one device against one alone."""
    lines = [{"model": b["model"], "batch": b["batch_size"], "processes": c["processes"],
              "one process images/s": round(c["one_process_images_per_s"], 1),
              "all together images/s": round(c["aggregate_images_per_s"], 1), "ratio": round(c["ratio"], 2),
              "device": b["device_name"]}
             for b in benchmarks if (c := b.get("concurrent"))]
    return pd.DataFrame(lines)


def missing_data_markdown(name: str, dataset: str, data_root: str | os.PathLike) -> str:
    """What a notebook asked to train says when its data is not there."""
    return (f"**Not run here: no data.** `{dataset}` was expected at `{display_path(resolve_path(data_root))}`, "
            "which does not exist, so nothing was trained. Point `data_root` at the data (see "
            "`ranlib.data.DATASETS`), or render from existing results with `train=False`.\n\n"
            + _commands_block(name))


def _commands_block(name: str) -> str:
    """The commands that produce ``name``'s results, folded (their lines are wider than a page)."""
    return ("<details class=\"ranlib-details\"><summary>Commands that produce these results</summary>\n\n"
            f"```bash\n{train_commands(name)}\n```\n\n</details>")


def glue_claims(name: str, records: Sequence[dict], claims: pd.DataFrame) -> None:
    """Glue (myst-nb) what a notebook's prose cites, as Markdown: ``<name>_claim<i>`` (the
    verdict of claim ``i`` with its reason and budget), ``<name>_runs`` (how many runs on what
    data and budget) and ``<name>_verdicts`` (counts of each verdict)."""
    from IPython.display import Markdown
    from myst_nb import glue

    for i, claim in enumerate(claims.to_dict("records")):
        budget = f"; {claim['budget']}, seeds {claim['seeds']}" if claim["budget"] else ""
        glue(f"{name}_claim{i}", Markdown(f"**{claim['verdict']}** ({claim['reason']}{budget})"),
             display=False)
    glue(f"{name}_runs", Markdown(runs_summary(records)), display=False)
    counts = claims["verdict"].value_counts()
    glue(f"{name}_verdicts", Markdown(", ".join(f"{n} {v}" for v, n in counts.items())
                                      or "no claims"), display=False)


def runs_summary(records: Sequence[dict]) -> str:
    """``"4 runs (smoke; folder:tiny)"``, or ``"no runs yet"``."""
    if not records:
        return "no runs yet"
    profiles = sorted({record_profile(r) for r in records}, key=lambda p: PROFILE_RANK.get(p, 9))
    datasets = sorted({r["dataset"]["label"] for r in records})
    minutes = sum(device_minutes(r) for r in records)
    return (f"{len(records)} run{'s' * (len(records) != 1)} ({', '.join(profiles)} budget; "
            f"{', '.join(datasets)}; {minutes:.1f} device minutes)")


def no_results_markdown(name: str) -> str:
    """What a page with no results says: plainly that, and the commands that produce them."""
    shows = ("the table below shows the paper's numbers only" if any(r.paper_error is not None
             for r in experiment(name).rows) else "the tables below have none of ours")
    return (f"**No results yet for `{name}`** in this results folder: {shows} and every verdict is "
            "*not run here*. The commands that produce them are folded below; the page *Rerun "
            "anything* explains them.\n\n" + _commands_block(name))
