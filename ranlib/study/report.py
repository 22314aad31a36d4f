"""A chapter's tables: our results beside the paper's, its claims judged, and what its prose cites.

The notebooks in ``notebooks/`` stay thin: they call :func:`ranlib.study.planning.train_experiment`
(which only builds :class:`ranlib.training.config.TrainConfig` objects and calls :func:`ranlib.training.loop.run`),
then :func:`ranlib.study.planning.load_records`, :func:`show_results` and :func:`show_claims` here
(:func:`results_table` and :func:`claims_table` shown with their labels, rule and units) and the
``plot_*`` helpers of :mod:`ranlib.study.plots`. The book's summary pages call :func:`claims_summary`
and :func:`ranlib.study.compute.compute_ledger`; how a table is shown is :mod:`ranlib.study.tables`;
the models' counts :mod:`ranlib.study.complexity`; the benchmarks' figures
:mod:`ranlib.study.performance`; the JPEG copy's cost :mod:`ranlib.study.jpeg_gap`; where the study stands, and what a chapter without results needs, is
:mod:`ranlib.study.status`; how a measured number is labelled (budget, device, cost) :mod:`ranlib.study.labels`.
Paper numbers come from :mod:`ranlib.study.paper` only; the experiments' rows and claims from
:mod:`ranlib.study.experiments`; the rules a claim is judged by from :mod:`ranlib.study.verdicts`.
"""

from __future__ import annotations

import html
import math
import os
from typing import Sequence

import pandas as pd

from ranlib.paths import display_path, resolve_path

from . import paper
from .complexity import complexity_claims, read_complexity
from .experiments import EXPERIMENTS, Claim, experiment
from .jpeg_gap import jpeg_cost
from .labels import conditions, device_kind, device_text, hours_number, record_budget, record_profile
from .ledger import device_minutes
from .planning import load_records, train_commands
from .tables import MISSING, format_mean_std, show
from .verdicts import (NOT_RUN, NOT_RUN_SMOKE, PROFILE_RANK, judge_absolute, judge_ordering, judge_parity, mean_std,
                       rule_sentence, welch_gap)

# ----------------------------------------------------------------------------------------------
# A chapter's tables

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


# ----------------------------------------------------------------------------------------------
# Paper vs ours, per experiment


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


def claims_table(name: str, records: Sequence[dict], results_root: str | os.PathLike = "results") -> pd.DataFrame:
    """Every claim of an experiment, judged (:mod:`ranlib.study.verdicts`).

    An absolute claim on the JPEG copy is allowed the copy's cost: the upper end of its 95 % interval
    where ``results_root`` holds a measurement (:func:`ranlib.study.jpeg_gap.jpeg_cost`), else the
    quoted figure (:data:`ranlib.study.verdicts.JPEG_ALLOWANCE`).

    Numeric columns: ``paper`` and ``ours`` (the error in %, or the gap worse − better in points),
    ``delta`` (ours − paper), ``low``/``high`` (the 95 % Welch interval of our gap, where >= 2 seeds
    a row); text columns ``paper_text``/``ours_text`` (as the book prints them, with their units or
    the two errors), ``verdict``, ``reason``, ``budget``, ``dataset``, ``seeds``; ``anchor``, the
    claim's id on its chapter's page.
    """
    exp = experiment(name)
    runs = runs_frame(name, records)
    allowance = jpeg_cost(results_root)["allowance"]
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
                verdict = judge_absolute(paper_value, values[0], profile=profile, task=exp.task, dataset=dataset,
                                         allowance=allowance)
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
# Summaries for the book


def claims_summary(results_root: str | os.PathLike = "results") -> pd.DataFrame:
    """Every claim of every experiment, judged on what ``results_root`` holds."""
    root = resolve_path(results_root)
    frames = [complexity_claims(read_complexity(root / "models" / "complexity.json"))]
    for name, exp in EXPERIMENTS.items():
        if exp.claims:
            frames.append(claims_table(name, load_records(root, name), root))
    return pd.concat(frames, ignore_index=True)


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

    cost = jpeg_cost(results_root)
    rule = rule_sentence(claims["kind"], jpeg_cost=cost["short"], jpeg_allowance=cost["allowance"])
    display(Markdown(f"**Rule.** {rule}\n\n{claim_units(claims['kind'])}"))
    view = claims_view(claims)
    if any(True for _ in experiment(name).runs_of(records)):
        show(view, CLAIM_COLUMNS, details=CLAIM_DETAILS, summary="Budgets, data and seeds", html=["claim"])
    else:
        show(view, ["claim", "paper"], html=["claim"])
