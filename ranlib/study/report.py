"""Tables that set our results beside the paper's, the compute ledgers, and the book's summaries.

The notebooks in ``notebooks/`` stay thin: they call :func:`ranlib.study.planning.train_experiment`
(which only builds :class:`ranlib.training.config.TrainConfig` objects and calls :func:`ranlib.training.loop.run`),
then :func:`ranlib.study.planning.load_records`, :func:`show_results` and :func:`show_claims` here
(:func:`results_table` and :func:`claims_table` shown with their labels, rule and units) and the
``plot_*`` helpers of :mod:`ranlib.study.plots`. The book's summary pages call :func:`claims_summary`
and :func:`compute_ledger`; where the study stands, and what a chapter without results needs, is
:mod:`ranlib.study.status`; how a measured number is labelled (budget, device, cost) :mod:`ranlib.study.labels`.
Paper numbers come from :mod:`ranlib.study.paper` only; the experiments' rows and claims from
:mod:`ranlib.study.experiments`; the rules a claim is judged by from :mod:`ranlib.study.verdicts`.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from . import paper
from .experiments import EXPERIMENTS, OTHER_EXPERIMENTS, Claim, experiment, model_label
from .labels import conditions, device_kind, device_text, hours_number, record_budget
from .ledger import LEDGER_NAME, charged_device_s, device_minutes, read_ledger, with_charged_time
from ranlib.paths import display_path, resolve_path
from .planning import load_records, train_commands
from ranlib.training.results import benchmark_file_name, load_results, setup_text
from .verdicts import (COMPLEXITY_TOLERANCE, DEPLOY_TOLERANCE, NOT_RUN, NOT_RUN_SMOKE, PROFILE_RANK,
                       judge_absolute, judge_complexity, judge_ordering, judge_parity, mean_std, rule_sentence,
                       welch_gap)


# ----------------------------------------------------------------------------------------------
# How the book shows a table

# The paper prints top-1/top-5 errors (and so their deltas and spreads) with two decimals.
PAPER_DECIMALS = 2
MISSING = "–"
DELTA = "ours − paper (points)"
RESULT_COLUMNS = ["network", "paper (%)", "ours (%)", DELTA, "budget"]
RESULT_DETAILS = ["network", "data", "seeds", "trained on", "cost"]
RESULT_FORMATS = {DELTA: "{:+.2f}"}
# Table 7's extra columns (test crop and top-5), shown where the paper gives them.
IMAGENET_COLUMNS = ["network", "test crop (px)", "paper (%)", "paper top-5 (%)", "ours (%)", DELTA, "budget"]
# The verdict next to the claim, so that it stays on a phone's screen; what the numbers are after.
CLAIM_COLUMNS = ["claim", "verdict", "paper", "ours", "reason"]
CLAIM_DETAILS = ["claim", "budget", "data", "seeds"]
# What the paper and ours columns of a verdicts table hold, per kind of claim.
_UNITS = {"absolute": "top-1 error in % for a claim about one network's error",
          "ordering": "for an ordering, the gap in points of top-1 error (the paper's worse network minus its "
                      "better one: positive when the order holds), ours with its 95 % interval and the seeds per row",
          "parity": "for a tie, the difference, ours with its 95 % interval",
          "response": "for Figure 4, ARL's last-stage response minus NAL's (normalised to stage 1)"}


def claim_units(kinds: Sequence[str]) -> str:
    """One sentence saying what the *paper* and *ours* columns mean for claims of these kinds."""
    parts = [text for kind, text in _UNITS.items() if kind in set(kinds)]
    return f"*paper* and *ours*: {'; '.join(parts)}." if parts else ""


COMPLEXITY_COLUMNS = ["model", "params (M)", "paper params (M)", "official params (M)", "GMACs",
                      "paper GFLOPs", "official GMACs"]
COMPLEXITY_DETAILS = ["model", "input", "Δ params vs paper (%)", "Δ GMACs vs paper (%)"]
# The paper's counts as it prints them; the differences to a tenth of a per cent.
COMPLEXITY_FORMATS = {"paper params (M)": "{:g}", "paper GFLOPs": "{:g}",
                      "Δ params vs paper (%)": "{:+.1f}", "Δ GMACs vs paper (%)": "{:+.1f}"}


def table_html(frame: pd.DataFrame, *, digits: int = PAPER_DECIMALS,
               formats: dict[str, str] | None = None, html: Sequence[str] = ()) -> str:
    """``frame`` as the book's HTML table: no index column, ``–`` where a value is missing,
    floats with ``digits`` decimals (``formats``: a format string per column instead, for its numbers;
    text in such a column, say a total line's label, is shown as it is). Columns in
    ``html`` hold markup ranlib built (links, anchors) and are not escaped."""
    columns = list(frame.columns)
    styler = frame.style.hide(axis="index").format(na_rep=MISSING, precision=digits, escape="html")
    for column, spec in (formats or {}).items():
        if column in columns:
            styler = styler.format(lambda v, spec=spec: MISSING if _missing(v) else
                                   spec.format(v) if isinstance(v, numbers.Number) else v, subset=[column])
    for column in html:
        if column in columns:
            styler = styler.format(lambda v: MISSING if _missing(v) else v, subset=[column], escape=None)
    # Styler draws a random table id: one from the content keeps a re-rendered page the same.
    uuid = hashlib.sha256(frame.to_json(default_handler=str).encode()).hexdigest()[:8]
    return styler.set_uuid(uuid).set_table_attributes('class="dataframe ranlib-table"').to_html()


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def show(frame: pd.DataFrame, columns: Sequence[str] | None = None, *,
         details: Sequence[str] | None = None, summary: str = "All columns",
         digits: int = PAPER_DECIMALS, formats: dict[str, str] | None = None,
         html: Sequence[str] = ()) -> None:
    """Display ``frame`` in a notebook the way every page of the book shows a table.

    Only ``columns`` (None: all; empty: none, the whole table folded) are shown, so that the
    table fits a 1280-px page; ``details`` (other columns) go to a second table folded under
    ``summary``. The frame itself is not changed (tables glued for the prose keep every column).
    ``html``: columns of markup (:func:`table_html`).
    """
    from IPython.display import HTML, display

    if columns is None or len(columns):
        shown = frame[[c for c in columns if c in frame.columns]] if columns is not None else frame
        display(HTML(table_html(shown, digits=digits, formats=formats, html=html)))
    rest = [c for c in details or [] if c in frame.columns]
    if rest and not frame.empty:
        display(HTML(f'<details class="ranlib-details"><summary>{summary}</summary>\n'
                     f"{table_html(frame[rest], digits=digits, formats=formats, html=html)}\n</details>"))


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
            batch_size=record.get("config", {}).get("batch_size"), budget=record_budget(record),
            dataset=record["dataset"]["label"], dataset_id=record["dataset"]["id"],
            top1_error=record["final"]["top1_error"], top5_error=record["final"]["top5_error"],
            device=prov.get("device_name"), device_type=prov.get("device_type"),
            trained_on=f"{device_text(record)}, {prov.get('precision') or '?'}",
            kind=device_kind(record), device_minutes=device_minutes(record)))
    columns = ["row", "label", "run_name", "seed", "profile", "iterations", "batch_size", "budget", "dataset",
               "dataset_id", "top1_error", "top5_error", "device", "device_type", "trained_on", "kind",
               "device_minutes"]
    return pd.DataFrame(lines, columns=columns)


def format_mean_std(mean: float, std: float, n: int, digits: int = 2, unit: str = "") -> str:
    """``"5.52 ± 0.10 (n=2)"``; ``"5.52 (n=1)"``; ``"–"`` without values; ``unit`` after the
    numbers (``" %"``: ``"5.52 ± 0.10 % (n=2)"``)."""
    if n == 0 or not math.isfinite(mean):
        return "–"
    if n > 1 and math.isfinite(std):
        return f"{mean:.{digits}f} ± {std:.{digits}f}{unit} (n={n})"
    return f"{mean:.{digits}f}{unit} (n={n})"


def _groups(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs aggregated per (row, profile, dataset)."""
    columns = ["row", "profile", "dataset", "mean", "std", "n", "top5_mean", "budget",
               "device_minutes", "cost", "device", "seeds"]
    if runs.empty:
        return pd.DataFrame(columns=columns)
    out = []
    for (row, profile, dataset), g in runs.groupby(["row", "profile", "dataset"], sort=False):
        mean, std, n = mean_std(g["top1_error"])
        top5, _, _ = mean_std(g["top5_error"].dropna())
        cost = " and ".join(f"{hours_number(g[g['kind'] == kind]['device_minutes'].sum() / 60)} {kind}-hours"
                            for kind in sorted(set(g["kind"]), key=lambda k: k != "GPU"))
        out.append(dict(row=row, profile=profile, dataset=dataset, mean=mean, std=std, n=n,
                        top5_mean=top5, budget=g["budget"].iloc[0],
                        device_minutes=float(g["device_minutes"].sum()), cost=cost,
                        device="; ".join(sorted(set(g["trained_on"]))), seeds=sorted(g["seed"].tolist())))
    return pd.DataFrame(out, columns=columns)


def _best_group(groups: pd.DataFrame, key: str) -> dict | None:
    """The row's results at the largest budget (then the most seeds)."""
    g = groups[groups["row"] == key]
    if g.empty:
        return None
    ranked = g.assign(rank=g["profile"].map(PROFILE_RANK).fillna(-1)).sort_values(
        ["rank", "n"], ascending=False)
    return ranked.iloc[0].to_dict()


def result_columns(name: str) -> list[str]:
    """The columns a chapter's paper-vs-ours table shows (Table 7 adds its test crop and top-5)."""
    return IMAGENET_COLUMNS if experiment(name).task == "imagenet" else RESULT_COLUMNS


def results_table(name: str, records: Sequence[dict]) -> pd.DataFrame:
    """Paper vs ours, one line per row of the paper's table and budget we ran it at.

    Rows we have no results for are listed with the paper's number and ``ours`` = "–".
    Columns: row (its key), network, paper (%), ours (%) (mean ± sample std (n)), ours − paper (points), budget,
    data, seeds, trained on (device and precision), cost (CPU- or GPU-hours); Table 7's rows add
    the paper's test crop and top-5.
    """
    exp = experiment(name)
    groups = _groups(runs_frame(name, records))
    lines = []
    for row in exp.rows:
        mine = groups[groups["row"] == row.key]
        if mine.empty and row.paper_error is None and not row.cifar100:
            continue
        paper_side = {"row": row.key, "network": row.label, "paper (%)": row.paper_error}
        if exp.task == "imagenet":
            paper_side.update({"test crop (px)": row.test_size, "paper top-5 (%)": row.paper_top5})
        if mine.empty:
            lines.append({**paper_side, "ours (%)": MISSING, DELTA: math.nan, "budget": "not run here",
                          "data": "", "seeds": "", "trained on": "", "cost": ""})
            continue
        for g in mine.to_dict("records"):
            delta = g["mean"] - row.paper_error if row.paper_error is not None else math.nan
            lines.append({**paper_side, "ours (%)": format_mean_std(g["mean"], g["std"], g["n"]),
                          DELTA: round(delta, 2), "budget": g["budget"], "data": g["dataset"],
                          "seeds": ", ".join(map(str, g["seeds"])), "trained on": g["device"],
                          "cost": g["cost"]})
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


def paper_error(name: str, key: str) -> float | None:
    """The paper's top-1 error for a row; for the Imagewoof proxy, the network's ImageNet error
    (Table 7), which only the ordering it claims is compared with."""
    exp = experiment(name)
    row = exp.row(key)
    if row.paper_error is None and exp.task == "imagewoof":
        return paper.TABLE7_IMAGENET[row.model]["top1"]
    return row.paper_error


def paper_claim(name: str, claim: Claim) -> tuple[float, str]:
    """The paper's number for a claim and how the book prints it: the error (absolute claims), the
    gap worse − better with both errors (orderings, ties), or Figure 4's last-stage responses."""
    where = " on ImageNet" if experiment(name).task == "imagewoof" else ""
    if claim.kind == "response":
        curves = paper.FIGURE4_STAGE_RESPONSE
        arl, nal = curves["Attention-164 ARL"][-1], curves["Attention-164 NAL"][-1]
        return arl - nal, f"{arl - nal:+.2f} ({arl:g} vs {nal:g})"
    errors = [paper_error(name, key) for key in claim.rows]
    if claim.kind == "absolute":
        return errors[0], f"{errors[0]:.2f} %"
    if any(e is None for e in errors):
        return math.nan, MISSING
    gap = errors[1] - errors[0]
    return gap, f"{gap:+.2f} ({errors[0]:.2f} vs {errors[1]:.2f} %{where})"


def claim_anchor(name: str, index: int) -> str:
    """The HTML id of claim ``index`` of experiment ``name`` on its chapter's page."""
    return f"claim-{name}-{index}"


def claims_table(name: str, records: Sequence[dict]) -> pd.DataFrame:
    """Every claim of an experiment, judged (:mod:`ranlib.study.verdicts`).

    Numeric columns: ``paper`` and ``ours`` (the error in %, or the gap worse − better in points),
    ``delta`` (ours − paper), ``low``/``high`` (the 95 % Welch interval of our gap, where >= 2 seeds
    a row); text columns ``paper_text``/``ours_text`` (as the book prints them, with their units or
    the two errors), ``verdict``, ``reason``, ``budget``, ``dataset``, ``seeds``; ``anchor``, the
    claim's id on its chapter's page.
    """
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
    for index, claim in enumerate(exp.claims):
        paper_value, paper_text = paper_claim(name, claim)
        line = dict(experiment=name, claim=claim.text, kind=claim.kind, paper=paper_value, paper_text=paper_text,
                    ours=math.nan, ours_text=MISSING, delta=math.nan, low=math.nan, high=math.nan,
                    verdict=NOT_RUN, reason="no results", budget="", dataset="", seeds="",
                    anchor=claim_anchor(name, index))
        best = [_best_group(groups, key) for key in claim.rows]
        if all(b is not None for b in best):
            # Judge every row of a claim at the same budget and dataset: the first row's.
            profile, dataset = best[0]["profile"], best[0]["dataset"]
            column = "response" if claim.kind == "response" else "top1_error"
            values = [_seed_values(runs, key, profile, dataset, column) for key in claim.rows]
            seeds = runs[(runs["row"].isin(claim.rows)) & (runs["profile"] == profile)]["seed"]
            line.update(budget=best[0]["budget"], dataset=dataset,
                        seeds=", ".join(map(str, sorted(set(seeds)))))
            if claim.kind == "absolute":
                mean, std, n = mean_std(values[0])
                verdict = judge_absolute(paper_value, values[0], profile=profile, task=exp.task, dataset=dataset)
                line.update(ours=mean, ours_text=format_mean_std(mean, std, n, unit=" %"))
            else:
                # Figure 4: larger is better, so the ordering is judged on the negated responses.
                better, worse = ([[-v for v in side] for side in values] if claim.kind == "response"
                                 else values)
                judge = judge_parity if claim.kind == "parity" else judge_ordering
                verdict = judge(better, worse, profile=profile)
                gap = mean_std(worse)[0] - mean_std(better)[0] if better and worse else math.nan
                interval = welch_gap(better, worse)
                shown = MISSING if not math.isfinite(gap) else f"{gap:+.2f}"
                if interval is not None:
                    line.update(low=interval.low, high=interval.high)
                    shown += f" {interval.interval()}"
                if better and worse:
                    shown += f", n = {len(better)} + {len(worse)}"
                line.update(ours=gap, ours_text=shown)
            line.update(verdict=verdict[0], reason=verdict[1])
            if math.isfinite(line["ours"]) and math.isfinite(paper_value):
                line["delta"] = line["ours"] - paper_value
            if any(not v for v in values) and line["verdict"] != NOT_RUN_SMOKE:
                line.update(verdict=NOT_RUN, reason="a row of this claim has no results at "
                            f"the {profile} budget on {dataset}")
        lines.append(line)
    columns = ["experiment", "claim", "kind", "paper", "ours", "delta", "low", "high", "verdict", "reason",
               "budget", "dataset", "seeds", "paper_text", "ours_text", "anchor"]
    return pd.DataFrame(lines, columns=columns)


def claims_view(claims: pd.DataFrame, *, link_from: str | None = None) -> pd.DataFrame:
    """The book's view of :func:`claims_table` rows: ``claim`` as markup (an anchor on the chapter's
    page; with ``link_from``, the folder of the page showing it, a link to the claim there),
    ``verdict``, ``paper``, ``ours`` (their texts), ``reason``, ``budget``, ``data``, ``seeds``.
    Show it with ``html=["claim"]``."""
    import html

    def cell(line):
        text = html.escape(line["claim"])
        if link_from is None:
            return f'<span id="{line["anchor"]}">{text}</span>'
        page = f"{link_from.rstrip('/') + '/' if link_from else ''}experiments/{line['experiment']}.html"
        return f'<a href="{page}#{line["anchor"]}">{text}</a>'

    view = pd.DataFrame({"claim": [cell(line) for line in claims.to_dict("records")]}, index=claims.index)
    view["verdict"] = claims["verdict"]
    view["paper"] = claims["paper_text"]
    view["ours"] = claims["ours_text"]
    for column, source in (("reason", "reason"), ("budget", "budget"), ("data", "dataset"), ("seeds", "seeds")):
        view[column] = claims[source]
    return view.reset_index(drop=True)


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
            "model": model_label(name), "name": name, "input": entry.get("input_size"),
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
            lines.append(dict(experiment="models", claim=f"{model_label(name)}: {what}", kind="complexity",
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

    from ranlib.models.complexity import model_table
    from ranlib.training.provenance import collect

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
    from ranlib.models.complexity import model_table

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


def chapter_title(name: str) -> str:
    """An experiment's chapter title (``"Attention types (Table 1)"``); other names as they are."""
    return EXPERIMENTS[name].title if name in EXPERIMENTS else {"models": "Model size and cost (Tables 2, 6, 7)",
                                                                 "performance": "Performance"}.get(name, name)


# Ledger columns as a public page names them: hours, not the ledger's minutes.
_HOURS = {"gpu_minutes": "GPU-hours", "cpu_minutes": "CPU-hours", "device_minutes": "device-hours",
          "wall_minutes": "wall-clock hours", "device minutes": "device-hours"}
_NAMES = {"experiment": "chapter", "devices": "devices", "profiles": "budgets", "sittings": "campaign sessions",
          "max_concurrent": "most at once", "device_name": "device", "sitting started (UTC)": "session started (UTC)"}


def hours_view(frame: pd.DataFrame) -> pd.DataFrame:
    """A ledger table (:func:`compute_ledger`, :func:`campaign_ledger`, :func:`sittings_table`) as the
    Compute page shows it: minutes as hours, chapters by their titles, columns in words."""
    view = frame.copy()
    for column in _HOURS:
        if column in view:
            view[column] = view[column].astype(float) / 60
    if "experiment" in view:
        view["experiment"] = view["experiment"].map(chapter_title)
    return view.rename(columns={**_HOURS, **_NAMES})


HOURS_FORMATS = {label: "{:.2f}" for label in _HOURS.values()}


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
    by ``python -m ranlib.study.jpeg_gap`` (top-1 error on the 846 exact official test images and on
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


def jpeg_cost(results_root: str | os.PathLike = "results") -> dict:
    """What the JPEG copy costs, for the caveat: measured (``results/jpeg_gap/*.json``, their mean)
    or, without a measurement, the figure the copy's README quotes, labelled as quoted.

    Returns ``{"source": "measured" | "quoted", "points", "low", "high", "text", "short"}`` (points of
    top-1 error; ``text`` for the caveat, ``short`` for a verdict rule). A measured interval is the
    file's ``jpeg_minus_exact_interval`` when it has one, else a conservative one: the 95 % normal interval of the difference of two independent error rates on
    ``num_images`` images each (the two evaluations share their images, which only narrows the true
    interval, so this one is too wide rather than too narrow).
    """
    folder = resolve_path(results_root) / "jpeg_gap"
    gaps = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    if not gaps:
        return {"source": "quoted", "points": None, "low": 2.0, "high": 3.0,
                "text": "2-3 points of top-1 error, as the copy's README quotes one public report (quoted, not "
                        "measured here)",
                "short": "2-3 points, quoted from the copy's README, not measured here"}
    points, lows, highs = [], [], []
    for gap in gaps:
        n, exact, jpeg = gap["num_images"], gap["top1_error_exact"] / 100, gap["top1_error_jpeg"] / 100
        interval = gap.get("jpeg_minus_exact_interval")
        if interval is None:
            half = 1.96 * math.sqrt(exact * (1 - exact) / n + jpeg * (1 - jpeg) / n) * 100
            interval = (gap["jpeg_minus_exact"] - half, gap["jpeg_minus_exact"] + half)
        points.append(gap["jpeg_minus_exact"])
        lows.append(interval[0])
        highs.append(interval[1])
    mean = sum(points) / len(points)
    models = sorted({f"{gap['model']} (iteration {gap['iteration']:,})" for gap in gaps})
    text = (f"{mean:+.2f} points of top-1 error (95 % interval {min(lows):+.2f} to {max(highs):+.2f}), measured "
            f"here on {', '.join(models)}: its error on the {gaps[0]['num_images']} exact official test images "
            "against their JPEG versions (what JPEG at test time costs; training on JPEG images may cost more)")
    short = f"{mean:+.2f} points measured here, 95 % interval {min(lows):+.2f} to {max(highs):+.2f}"
    return {"source": "measured", "points": mean, "low": min(lows), "high": max(highs), "text": text,
            "short": short}


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

    named = [(r, benchmark_file_name(r)) for r in records]
    return [{**r, "file": name, "profile": profiles.get(name.removesuffix(".json"))} for r, name in named]


def performance_table(benchmarks: Sequence[dict]) -> pd.DataFrame:
    """One line per benchmarked configuration: ranlib vs the plain baseline."""

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
    from ranlib.training.recipes import PROFILES

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
            "`ranlib.data.cifar.DATASETS`), or render from existing results with `train=False`.\n\n"
            + commands_block(name))


def commands_block(name: str) -> str:
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
    """:func:`ranlib.study.labels.conditions` of the runs (how many, budget, device, precision, data,
    seeds, CPU- or GPU-hours), or ``"no runs yet"``."""
    return conditions(records) if records else "no runs yet"


def show_results(name: str, records: Sequence[dict]) -> pd.DataFrame:
    """Display a chapter's paper-vs-ours table and, under it, where our numbers come from; without
    runs, the paper's columns only. Returns the whole table (for glue)."""
    from IPython.display import Markdown, display

    table = results_table(name, records)
    ran = [r for _, r in experiment(name).runs_of(records)]
    columns = result_columns(name)
    if not ran:
        columns = [c for c in columns if c == "network" or c.startswith("paper") or "crop" in c]
    show(table, columns, details=RESULT_DETAILS if ran else None, summary="Data, seeds, hardware and cost",
         formats=RESULT_FORMATS)
    if ran:
        display(Markdown(f"**Ours:** {conditions(ran)} Rows marked – are not run here."))
    return table


def show_claims(name: str, records: Sequence[dict], claims: pd.DataFrame,
                results_root: str | os.PathLike = "results") -> None:
    """Display a chapter's verdicts: the rule in one sentence (with its numbers), what the columns
    mean, and the claims table (the verdict beside the claim); without runs, the claims and the
    paper's numbers only, since every verdict would read *not run here*."""
    from IPython.display import Markdown, display

    rule = rule_sentence(claims["kind"], jpeg_cost=jpeg_cost(results_root)["short"])
    display(Markdown(f"**Rule.** {rule}\n\n{claim_units(claims['kind'])}"))
    view = claims_view(claims)
    if any(True for _ in experiment(name).runs_of(records)):
        show(view, CLAIM_COLUMNS, details=CLAIM_DETAILS, summary="Budgets, data and seeds", html=["claim"])
    else:
        show(view, ["claim", "paper"], html=["claim"])
