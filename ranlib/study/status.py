"""Where the study stands, and what running the rest would need: the status box the intro and the
summary open with, and the one line a chapter without results shows instead of its tables.

Estimates follow the campaign planner (``python -m ranlib.campaign plan``): a run trains
``iterations x batch`` images at 3 forward passes of the model's multiply-adds each
(:func:`ranlib.study.planning.training_size`), 2 FLOPs per multiply-add. GPU time is at the rate this
study's GPU runs achieved when there are any, else at an assumed share of an H200's dense bf16 peak
(:data:`ranlib.study.imagewoof.ASSUMED_MFU`, not measured); CPU time only at the rate this study's
CPU runs achieved (wall-clock device time, evaluation included). Multiply-adds come from
``results/models/complexity.json``, the models chapter's counts (the base model of each variant).
"""

from __future__ import annotations

import json
import os
import re
import statistics
from typing import Sequence

import pandas as pd

from ranlib.paths import display_path, resolve_path

from .experiments import EXPERIMENTS, experiment, with_model_defaults
from .labels import budget_phrase, conditions, device_kind, hours_number, record_profile
from .ledger import device_minutes
from .planning import load_records
from .report import claims_summary, commands_block
from .verdicts import NOT_RUN, PROFILE_RANK, VERDICTS

# What a chapter's training data is and how to get it (sizes from each copy's README).
DATA_NEEDS = {
    "cifar10-jpeg": "the CIFAR-10 JPEG q75 copy (60,000 images, 55.8 MB; `make device-data` puts it in "
                    ".data/cifar10-jpeg, the chapters' default data_root)",
    "cifar100": "the official CIFAR-100 (downloaded by torchvision; it needs internet, which this machine "
                "has not)",
    "imagenet-folder": "ImageNet (ILSVRC-2012, 1.28 million training images, not on this machine)",
    "imagewoof": "Imagewoof at 112 px (12,954 photos, 60.3 MB, in ../shared/data/imagewoof, the chapter's "
                 "default data_root; `make device-data-woof` copies it to .data/imagewoof for a GPU machine)",
}
ESTIMATED_PROFILES = ("quick", "paper")
SEEDS = (0, 1)  # what the notebooks train by default


def _macs(results_root) -> dict[str, int]:
    path = resolve_path(results_root) / "models" / "complexity.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    entries = data["models"] if isinstance(data, dict) and "models" in data else data
    return {e["name"]: int(e["macs"]) for e in entries if e.get("macs")}


def _all_records(results_root) -> list[dict]:
    return [r for name in EXPERIMENTS for r in load_records(results_root, name, shared=False)]


def training_flops(model: str, dataset: str, profile: str, macs: dict[str, int]) -> float | None:
    """FLOPs of one training run at ``profile`` (None when the model's count or profile is missing)."""
    from ranlib.training.recipes import PROFILES, RECIPES, scaled_schedule, schedule_key

    key = schedule_key(model, dataset)
    budget = PROFILES[key].get(profile)
    if model not in macs or budget is None:
        return None
    steps = scaled_schedule(RECIPES[key], budget.batch_size, budget.fraction, budget.iterations)["iterations"]
    per_image = macs[model] * ((budget.train_size or 224) / 224) ** 2 if key == "imagewoof" else macs[model]
    return 2 * 3 * per_image * steps * budget.batch_size


def measured_rates(records: Sequence[dict], macs: dict[str, int]) -> dict[str, float]:
    """FLOP/s of training this study's runs achieved, per device kind (median over non-smoke runs,
    on their device time: evaluation and start-up included)."""
    rates: dict[str, list[float]] = {}
    for r in records:
        config, seconds = r.get("config", {}), 60 * device_minutes(r)
        name = r["model"]["name"]
        if record_profile(r) == "smoke" or seconds <= 0 or name not in macs or not config.get("iterations"):
            continue
        flops = 2 * 3 * r["model"].get("macs", macs[name]) * config["iterations"] * (config.get("batch_size") or 0)
        if flops:
            rates.setdefault(device_kind(r), []).append(flops / seconds)
    return {kind: statistics.median(values) for kind, values in rates.items()}


def _gpu_rates(rates: dict[str, float]) -> tuple[list[float], str]:
    """The GPU rates (FLOP/s) an estimate uses, fastest first, and how they were had."""
    from .imagewoof import ASSUMED_MFU, H200_BF16_DENSE_TFLOPS, PESSIMISTIC_MFU

    if "GPU" in rates:
        return [rates["GPU"]], "at the rate this study's GPU runs achieved"
    return ([mfu * H200_BF16_DENSE_TFLOPS * 1e12 for mfu in (ASSUMED_MFU, PESSIMISTIC_MFU)],
            f"on an H200 at an assumed {100 * PESSIMISTIC_MFU:.0f}-{100 * ASSUMED_MFU:.0f} % of its bf16 peak "
            "(not measured)")


def _unrun_rows(name: str, records: Sequence[dict]) -> list:
    """The rows of ``name``'s default data set that have no results above the smoke budget."""
    exp = experiment(name)
    done = {row.key for row, record in exp.runs_of(records) if record_profile(record) != "smoke"}
    return [r for r in exp.rows if r.key not in done and not r.cifar100]


def estimate_hours(rows_by_experiment: dict[str, list], profile: str, results_root,
                   rates: dict[str, float] | None = None) -> dict[str, list[float]] | None:
    """Estimated device hours, ``{"GPU": [h, ...], "CPU": [h]}`` (GPU: one figure per rate of
    :func:`_gpu_rates`; CPU only with a measured CPU rate), of training ``rows_by_experiment`` at
    ``profile`` with :data:`SEEDS`; None without model counts."""
    macs = _macs(results_root)
    if rates is None:
        rates = measured_rates(_all_records(results_root), macs)
    total = 0.0
    for name, rows in rows_by_experiment.items():
        for row in rows:
            flops = training_flops(row.model, experiment(name).dataset, profile, macs)
            if flops is None:
                return None
            total += len(SEEDS) * flops
    out = {"GPU": [total / rate / 3600 for rate in _gpu_rates(rates)[0]]}
    if "CPU" in rates:
        out["CPU"] = [total / rates["CPU"] / 3600]
    return out


def _hours(values: list[float]) -> str:
    return "–".join(hours_number(v) for v in values)


def cost_phrase(rows_by_experiment: dict[str, list], results_root) -> str:
    """``"about 0.16–0.32 GPU-hours at the quick budget (...) and 1.6–3.2 at the paper's length (...), on an H200
    at an assumed 15-30 % of its bf16 peak (not measured); or 30 CPU-hours at the quick budget, at
    the rate this study's CPU runs achieved"``; ``""`` without model counts."""
    rates = measured_rates(_all_records(results_root), _macs(results_root))
    estimates = {p: estimate_hours(rows_by_experiment, p, results_root, rates) for p in ESTIMATED_PROFILES}
    if estimates["quick"] is None:
        return ""
    model, dataset = next((r.model, experiment(n).dataset) for n, rows in rows_by_experiment.items() for r in rows)
    paper_budget = (f" and {_hours(estimates['paper']['GPU'])} at the paper's length (the paper and full budgets)"
                    if estimates["paper"] else "")
    phrase = (f"about {_hours(estimates['quick']['GPU'])} GPU-hours at {budget_phrase('quick', model, dataset)}"
              f"{paper_budget}, {_gpu_rates(rates)[1]}")
    if "CPU" in estimates["quick"]:
        phrase += (f"; or {_hours(estimates['quick']['CPU'])} CPU-hours at the quick budget, at the rate this "
                   "study's CPU runs achieved")
    return phrase


def needs_markdown(name: str, results_root: str | os.PathLike = "results") -> str:
    """One line: what running a chapter needs (its data, with its size, and the estimated device
    hours of its rows at each budget, two seeds each)."""
    exp = experiment(name)
    rows = _unrun_rows(name, _all_records(results_root)) or [r for r in exp.rows if not r.cifar100]
    cost = cost_phrase({name: rows}, results_root)
    seeds = f"{len(rows)} network{'s' * (len(rows) != 1)} × {len(SEEDS)} seeds"
    return (f"Running it needs {DATA_NEEDS.get(exp.dataset, exp.dataset)}"
            + (f" and, for its {seeds}, {cost}." if cost else "."))


def no_results_markdown(name: str, results_root: str | os.PathLike = "results") -> str:
    """What a chapter with no results says, once: not run here, what running it needs, and the
    commands (folded) that do it."""
    shows = "its tables hold the paper's numbers only" if experiment(name).claims else "it shows nothing of ours"
    return (f"**Not run here:** no results for this chapter in `{display_path(resolve_path(results_root))}` "
            f"yet, so {shows}. {needs_markdown(name, results_root)} "
            "The commands are folded below; [Rerun anything](/rerun.md) explains them.\n\n" + commands_block(name))


# ----------------------------------------------------------------------------------------------
# The status box


def shared_trainings(claims: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """Absolute claims that repeat another's number because one training serves several tables
    (Attention-56 with mixed attention, ARL and the encoder-decoder mask is a row of Tables 1, 3 and
    4): ``[(network, [chapter titles])]`` for each number judged more than once."""
    seen: dict[tuple, tuple[str, list[str]]] = {}
    for line in claims[claims["kind"] == "absolute"].to_dict("records"):
        exp = experiment(line["experiment"])
        [claim] = [c for c in exp.claims if c.text == line["claim"]]
        row = exp.row(claim.rows[0])
        key = (row.model, json.dumps(with_model_defaults(row.kwargs), sort_keys=True), row.noise_level or 0.0,
               row.cifar100, row.imagewoof, row.paper_error)
        seen.setdefault(key, (row.label, []))[1].append(exp.title)
    return [entry for entry in seen.values() if len(entry[1]) > 1]


def _tables(titles: list[str]) -> str:
    """``["Attention types (Table 1)", "... (Table 3, Figure 4)"]`` -> ``"Tables 1 and 3"``."""
    numbers = [m.group(1) for t in titles if (m := re.search(r"Table (\d+)", t))]
    return "Tables " + ", ".join(numbers[:-1]) + " and " + numbers[-1] if len(numbers) > 1 else ", ".join(titles)


def counts_text(frame: pd.DataFrame) -> str:
    """How many claims got each verdict (``"2 reproduced, 1 partly, 5 not run here"``)."""
    counts = frame["verdict"].where(~frame["verdict"].str.startswith(NOT_RUN), NOT_RUN).value_counts()
    return ", ".join(f"{counts[v]} {v}" for v in VERDICTS if v in counts)  # in the legend's order


def judged_claims(claims: pd.DataFrame) -> pd.DataFrame:
    """The claims that got a verdict (every one whose verdict is not "not run here ...")."""
    return claims[~claims["verdict"].str.startswith(NOT_RUN)]


def split_claims(claims: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The summary's three groups: the paper's experiments, proxy claims (Imagewoof), counts."""
    proxy = claims["experiment"].map(lambda n: n in EXPERIMENTS and experiment(n).task == "imagewoof")
    facts = claims["kind"] == "complexity"
    return {"paper": claims[~proxy & ~facts], "proxy": claims[proxy], "facts": claims[facts]}


def judged_budgets(claims: pd.DataFrame) -> str:
    """The budgets the judged claims were judged at (``"quick, 20 of the paper's 205 epochs (10 %)"``)."""
    judged = claims[~claims["verdict"].str.startswith(NOT_RUN) & (claims["kind"] != "complexity")]
    return "; ".join(sorted(set(judged["budget"]), key=lambda b: PROFILE_RANK.get(b.split(",")[0].split(" ")[0], 9)))


def status_markdown(results_root: str | os.PathLike = "results", *, claims: pd.DataFrame | None = None,
                    rerun_link: str = "/rerun.md") -> str:
    """The status box: what was run (budget, hardware, precision, data, cost), how many claims are
    judged and with which verdicts, and what is not run and what it would need."""
    records = _all_records(results_root)
    claims = claims_summary(results_root) if claims is None else claims
    groups = split_claims(claims)
    trained = [r for r in records if record_profile(r) != "smoke"]
    smoke = len(records) - len(trained)
    if trained:
        ran = f"**Run:** {conditions(trained)}"
    else:
        ran = "**Run:** no training at a judged budget yet, so every number below is the paper's."
    if smoke:
        ran += (f" {smoke} smoke run{'s are' if smoke != 1 else ' is'} never judged: seconds long, "
                "they check the code only.")
    paper_claims = groups["paper"]
    judged = judged_claims(paper_claims)
    shared = shared_trainings(paper_claims)
    repeats = sum(len(chapters) - 1 for _, chapters in shared)
    which = "; ".join(f"{label} in {_tables(chapters)}" for label, chapters in shared)
    # The brackets break down the judged claims only; the unjudged ones are the "Not run" line's.
    count = (f"**Judged:** {len(judged)} of the paper's {len(paper_claims)} claims"
             + (f" ({counts_text(judged)}), at {judged_budgets(claims)}" if len(judged) else "") + ". "
             + (f"{repeats} of the paper's claims repeat another's number, since one training serves several tables "
                f"({which}). " if repeats else "")
             + f"Apart from them: {len(groups['proxy'])} claims of Table 7's orderings on the Imagewoof proxy "
               f"({counts_text(groups['proxy'])}) and {len(groups['facts'])} architecture counts "
               f"({counts_text(groups['facts'])}).")
    unrun = {name: rows for name in EXPERIMENTS if EXPERIMENTS[name].claims
             and EXPERIMENTS[name].task == "cifar" and (rows := _unrun_rows(name, records))}
    # One network trains once for all its tables: count each (model, variant, noise) once.
    distinct, seen = {}, set()
    for name, rows in unrun.items():
        for row in rows:
            key = (row.model, json.dumps(with_model_defaults(row.kwargs), sort_keys=True), row.noise_level or 0.0)
            if key not in seen:
                seen.add(key)
                distinct.setdefault(name, []).append(row)
    networks = sum(len(rows) for rows in distinct.values())
    cost = cost_phrase(distinct, results_root) if distinct else ""
    missing = (f"**Not run:** {len(paper_claims) - len(judged)} of the paper's claims. "
               + (f"The {networks} CIFAR-10 networks without results need, at {len(SEEDS)} seeds each, {cost}. "
                  if cost else "")
               + "CIFAR-100's rows need the official CIFAR-100 and Table 7's errors the full ImageNet, neither "
                 f"of which is on this machine; [Rerun anything]({rerun_link}) has the commands.")
    return (":::{admonition} Where the study stands\n:class: important\n\n" + "\n\n".join([ran, count, missing])
            + "\n:::")
