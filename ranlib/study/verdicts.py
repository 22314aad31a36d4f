"""The verdict rules: how a claim of the paper is judged on our results.

Verdict rules
-------------
A claim gets exactly one of :data:`VERDICTS` (their meanings, one line each: :data:`LEGEND`).
Results are grouped by row (model and variant), budget profile and dataset; a claim is judged on
the largest budget present for its rows (paper > full > quick > smoke). ``full`` is the paper's
schedule in epochs (about 205) at a larger batch under the large-batch rule (Goyal et al. 2017):
the length a time-limited GPU slot can finish.

* No results for a row of the claim: ``"not run here"``.
* Only ``smoke``-profile results: ``"not run here (smoke only)"``. Smoke runs check that the
  code path works; their numbers are never judged.
* **Ordering claims** (ARL beats NAL, mixed attention beats channel and spatial, the
  encoder-decoder mask beats local convolutions, Attention-92 beats ResNet-164 at a noise
  level, ...). ``gap`` = mean of the paper's worse row minus mean of its better row, in points of
  top-1 error (positive when our ordering agrees). Its :data:`CONFIDENCE` interval is Welch's:
  ``gap ± t x se`` with ``se = sqrt(s_a**2/n_a + s_b**2/n_b)`` (sample std over seeds) and ``t``
  the Student t quantile at the Welch-Satterthwaite degrees of freedom (:func:`welch_gap`). With
  two seeds per row that is about 2 degrees of freedom and ``t`` = 4.30, so a gap needs 4.3
  standard errors, not 2. Judged at ``quick``, ``full`` and ``paper`` budgets, because an
  ordering inside one study is fair on the JPEG copy and a shorter schedule:

  - ``reproduced``: the interval lies above 0 (>= 2 seeds per row);
  - ``not reproduced``: the interval lies below 0 (reversed beyond the seed noise);
  - ``partly``: the mean gap has the paper's sign but the interval includes 0, or one seed per
    row (no spread to test against);
  - ``inconclusive``: the mean gap is reversed (or 0) but inside the seed noise, or one seed.

* **Parity claims** ("AttentionNeXt-56 matches ResNeXt-101", Table 7). A tie cannot be shown by
  failing to find a difference, so the rule is an equivalence test: the Welch interval of the
  difference, as above, against :data:`PARITY_MARGIN` points:

  - ``reproduced``: >= 2 seeds per row and the interval lies inside ``[-margin, +margin]``;
  - ``not reproduced``: the interval lies wholly outside it (a difference beyond the margin and
    beyond the seed noise);
  - ``inconclusive``: the interval straddles the margin, or one seed per row.

* **Absolute claims** (an error in a table). ``delta`` = ours - paper. Judged at the ``paper``
  budget only (a shortened schedule is not the paper's experiment: ``"not run here (paper
  budget needed)"``; nor is ``full``, whose larger batch changes the optimisation even with the
  large-batch rule, which Goyal et al. validated on ImageNet, not on CIFAR at batch 64), and on
  ImageNet rows only on the full ImageNet (``"not run here (needs full ImageNet)"``). The band is
  ``[-tol, tol + allowance]`` with ``tol = ABS_TOLERANCE[task] + SPREAD_SIGMAS * std over seeds``
  and ``allowance`` the JPEG copy's cost on the CIFAR-10 JPEG q75 copy (``JPEG_ALLOWANCE``, the
  2-3 points its README quotes, unless a measured figure is passed; the allowance only widens the
  band upwards, JPEG loss never lowers an error), else 0:

  - ``reproduced`` (official data) or ``consistent (JPEG copy)`` (the JPEG copy, whose
    allowance is too wide to call a match a reproduction): delta inside the band;
  - ``partly``: delta inside the band doubled;
  - ``not reproduced``: outside.

* **Complexity claims** (parameters and multiply-adds, Tables 2/6/7; exact, no seeds):
  relative difference ``|ours - paper| / paper`` <= :data:`COMPLEXITY_TOLERANCE` (the paper
  rounds to 0.1 M / 0.1 G) is ``reproduced``, <= 3 x that ``partly``, else ``not reproduced``.
  Against the official deploy files' counts the tolerance is :data:`DEPLOY_TOLERANCE`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

REPRODUCED = "reproduced"
CONSISTENT_JPEG = "consistent (JPEG copy)"
PARTLY = "partly"
INCONCLUSIVE = "inconclusive"
NOT_REPRODUCED = "not reproduced"
NOT_RUN = "not run here"
NOT_RUN_SMOKE = "not run here (smoke only)"
NOT_RUN_BUDGET = "not run here (paper budget needed)"
NOT_RUN_IMAGENET = "not run here (needs full ImageNet)"
VERDICTS = (REPRODUCED, CONSISTENT_JPEG, PARTLY, INCONCLUSIVE, NOT_REPRODUCED, NOT_RUN, NOT_RUN_SMOKE,
            NOT_RUN_BUDGET, NOT_RUN_IMAGENET)
# What each verdict word means, for the summary's legend (one line each).
LEGEND = {
    REPRODUCED: "our result agrees with the paper's beyond the seed noise (orderings: the gap's 95 % "
                "interval lies on the paper's side of 0; counts: within the rounding)",
    CONSISTENT_JPEG: "an error measured on the JPEG copy falls inside the paper's band widened by the "
                     "copy's cost: not a reproduction of the number, only no contradiction",
    PARTLY: "our means keep the paper's ordering, but the seeds cannot tell the gap from noise (or a "
            "number lies inside twice its band)",
    INCONCLUSIVE: "our means reverse the ordering (or miss a tie) only inside the seed noise, or one "
                  "seed gives no spread: no evidence either way",
    NOT_REPRODUCED: "our result contradicts the paper's beyond the seed noise",
    NOT_RUN: "not judged: a row has no results (in brackets: why a run present cannot be judged)",
}

PROFILE_RANK = {"smoke": 0, "quick": 1, "full": 2, "paper": 3}
CONFIDENCE = 0.95  # two-sided, of every interval a verdict uses
_CI = f"{100 * CONFIDENCE:.0f} %"
# Seed spreads that widen an absolute claim's band (not a test: absolute claims have one row).
SPREAD_SIGMAS = 2.0
# Points of top-1 error within which two networks "match" (a parity claim): the band the study
# already allows an ImageNet error (ABS_TOLERANCE["imagenet"]). Table 7's tie is 21.2 vs 21.2.
PARITY_MARGIN = 1.0
# Points of top-1 error: a seed-to-seed spread of a few tenths on CIFAR (community reruns) and
# a looser band for ImageNet, where recipes differ in unstated details (batch, weight decay).
ABS_TOLERANCE = {"cifar": 0.5, "imagenet": 1.0}
JPEG_ALLOWANCE = 3.0  # the upper end of the 2-3 points the copy's README quotes
COMPLEXITY_TOLERANCE = 0.05
DEPLOY_TOLERANCE = 0.01
JPEG_LABEL = "CIFAR-10 (JPEG q75 copy)"


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (NaN for one value) and count of finite values."""
    values = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(values) == 0:
        return math.nan, math.nan, 0
    std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
    return float(values.mean()), std, len(values)


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile (0.5 < p < 1) of Student's t with ``df`` (> 0, not necessarily whole)
    degrees of freedom: ``t_quantile(0.975, 2)`` = 4.303.

    Solved from the t distribution's CDF, ``1 - I_x(df/2, 1/2) / 2`` with ``x = df / (df + t**2)``
    (the regularised incomplete beta of mpmath, a declared dependency that torch installs anyway), for
    ``t`` up to 10,000 (p below 1 - 3e-5 at one degree of freedom). Above 10,000 degrees of freedom
    the quantile is taken at 10,000, where it differs from the normal's by under 1e-4.
    """
    if not 0.5 < p < 1 or not df > 0:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df > 0, not p={p}, df={df}")
    import mpmath

    df = min(df, 1e4)

    def cdf_minus_p(t):
        return 1 - 0.5 * mpmath.betainc(df / 2, 0.5, 0, df / (df + t * t), regularized=True) - p

    return float(mpmath.findroot(cdf_minus_p, (1e-12, 1e4), solver="bisect", tol=1e-24, maxsteps=400,
                                 verify=False))


@dataclass(frozen=True)
class Gap:
    """``mean(worse) - mean(better)`` with its Welch interval (points of top-1 error, or the
    values' unit). ``df`` and ``t`` are NaN and the interval the gap itself when both sides have
    no spread (identical seeds)."""

    gap: float
    se: float
    df: float
    t: float
    low: float
    high: float
    n: tuple[int, int]

    def interval(self) -> str:
        return f"[{self.low:+.2f}, {self.high:+.2f}]"

    def test(self) -> str:
        """How the interval was made, in words: ``"Welch t 4.30 at 2.0 df, n = 2 + 2 seeds"``."""
        seeds = f"n = {self.n[0]} + {self.n[1]} seeds"
        if not math.isfinite(self.t):
            return f"no spread over seeds, {seeds}"
        return f"{_CI} Welch interval, t {self.t:.2f} at {self.df:.1f} df, {seeds}"


def welch_gap(better: Sequence[float], worse: Sequence[float], confidence: float = CONFIDENCE) -> Gap | None:
    """The gap ``mean(worse) - mean(better)`` and its two-sided ``confidence`` interval by Welch's t
    (unequal variances, Welch-Satterthwaite degrees of freedom); None with under 2 values a side."""
    mb, sb, nb = mean_std(better)
    mw, sw, nw = mean_std(worse)
    if nb < 2 or nw < 2:
        return None
    gap = mw - mb
    vb, vw = sb ** 2 / nb, sw ** 2 / nw
    se = math.sqrt(vb + vw)
    if se == 0:
        return Gap(gap, 0.0, math.nan, math.nan, gap, gap, (nb, nw))
    df = (vb + vw) ** 2 / (vb ** 2 / (nb - 1) + vw ** 2 / (nw - 1))
    t = t_quantile(0.5 + confidence / 2, df)
    return Gap(gap, se, df, t, gap - t * se, gap + t * se, (nb, nw))


def _not_judged(first: Sequence[float], second: Sequence[float], profile: str) -> tuple[str, str] | None:
    """The verdict of a comparison that cannot be judged: a side without results, or smoke runs."""
    if not len(first) or not len(second):
        return NOT_RUN, "no results for one side"
    if profile == "smoke":
        return NOT_RUN_SMOKE, "smoke runs check the code path only"
    return None


def judge_ordering(better: Sequence[float], worse: Sequence[float], *, profile: str) -> tuple[str, str]:
    """Verdict and reason for "``better`` has a lower value than ``worse``" (per-seed values)."""
    if (unjudged := _not_judged(better, worse, profile)) is not None:
        return unjudged
    g = welch_gap(better, worse)
    if g is None:
        gap = mean_std(worse)[0] - mean_std(better)[0]
        if gap > 0:
            return PARTLY, f"gap {gap:+.2f} in the paper's direction, but one seed per row gives no spread to test it"
        return INCONCLUSIVE, f"gap {gap:+.2f} reversed, but one seed per row cannot tell that from seed noise"
    shown = f"gap {g.gap:+.2f}, interval {g.interval()} ({g.test()})"
    if g.low > 0:
        return REPRODUCED, f"{shown}: above 0"
    if g.high < 0:
        return NOT_REPRODUCED, f"{shown}: below 0, reversed beyond the seed noise"
    if g.gap > 0:
        return PARTLY, f"{shown}: the paper's direction, but the interval includes 0"
    return INCONCLUSIVE, f"{shown}: {'tied' if g.gap == 0 else 'reversed'} only inside the seed noise"


def judge_parity(first: Sequence[float], second: Sequence[float], *, profile: str,
                 margin: float = PARITY_MARGIN) -> tuple[str, str]:
    """Verdict and reason for "``first`` and ``second`` have the same value" (per-seed values)."""
    if (unjudged := _not_judged(first, second, profile)) is not None:
        return unjudged
    g = welch_gap(first, second)
    if g is None:
        gap = mean_std(second)[0] - mean_std(first)[0]
        return INCONCLUSIVE, f"difference {gap:+.2f}, but one seed per row gives no spread to test a tie"
    shown = f"difference {g.gap:+.2f}, interval {g.interval()} ({g.test()})"
    if -margin <= g.low and g.high <= margin:
        return REPRODUCED, f"{shown}: inside ±{margin:g}"
    if g.low > margin or g.high < -margin:
        return NOT_REPRODUCED, f"{shown}: wholly outside ±{margin:g}"
    return INCONCLUSIVE, f"{shown}: straddles ±{margin:g}"


def judge_absolute(paper_value: float, values: Sequence[float], *, profile: str, task: str,
                   dataset: str, allowance: float | None = None, sigmas: float = SPREAD_SIGMAS) -> tuple[str, str]:
    """Verdict and reason for "our error equals the paper's" (per-seed values, in %).

    ``allowance``: the JPEG copy's cost in points (default :data:`JPEG_ALLOWANCE`), used only for
    a ``dataset`` label naming the JPEG copy."""
    if not len(values):
        return NOT_RUN, "no results"
    if profile == "smoke":
        return NOT_RUN_SMOKE, "smoke runs check the code path only"
    if profile == "full":
        return NOT_RUN_BUDGET, ("full budget: the paper's epochs but not its batch of 64; absolute errors "
                                "are judged at the paper's schedule only")
    if profile != "paper":
        return NOT_RUN_BUDGET, f"{profile} budget: absolute errors need the paper's schedule"
    if task == "imagenet" and not is_full_imagenet(dataset):
        return NOT_RUN_IMAGENET, f"measured on {dataset}, not the full ImageNet"
    mean, std, _ = mean_std(values)
    tol = ABS_TOLERANCE[task] + (sigmas * std if math.isfinite(std) else 0.0)
    jpeg = "JPEG" in dataset
    allowance = (JPEG_ALLOWANCE if allowance is None else allowance) if jpeg else 0.0
    delta = mean - paper_value
    band = f"[-{tol:.2f}, +{tol + allowance:.2f}]"
    if -tol <= delta <= tol + allowance:
        if jpeg:
            return CONSISTENT_JPEG, f"delta {delta:+.2f} inside {band}, with {allowance:.2f} for the JPEG copy"
        return REPRODUCED, f"delta {delta:+.2f} inside {band}"
    if -2 * tol <= delta <= 2 * (tol + allowance):
        return PARTLY, f"delta {delta:+.2f} outside {band} but inside twice it"
    return NOT_REPRODUCED, f"delta {delta:+.2f} outside twice {band}"


def is_full_imagenet(dataset_label: str) -> bool:
    """Whether a dataset label names ImageNet itself, not a subset such as Imagenette."""
    label = dataset_label.lower()
    return "imagenet" in label and not any(s in label for s in ("imagenette", "imagewoof"))


def judge_complexity(ours: float | None, reference: float | None,
                     tolerance: float = COMPLEXITY_TOLERANCE) -> tuple[str, str]:
    """Verdict and reason for "our count equals the reference count"."""
    if ours is None or reference is None or not math.isfinite(ours):
        return NOT_RUN, "no count"
    rel = (ours - reference) / reference
    if abs(rel) <= tolerance:
        return REPRODUCED, f"{rel:+.1%} within ±{tolerance:.0%}"
    if abs(rel) <= 3 * tolerance:
        return PARTLY, f"{rel:+.1%} within ±{3 * tolerance:.0%}"
    return NOT_REPRODUCED, f"{rel:+.1%} beyond ±{3 * tolerance:.0%}"



def rule_sentence(kinds: Iterable[str], *, jpeg_cost: str = "", jpeg_allowance: float = JPEG_ALLOWANCE) -> str:
    """The verdict rule of a chapter's claims (their ``kind``s) in one sentence, with its numbers:
    the interval, its t quantile at two seeds a row, the tie margin, the absolute band and the JPEG
    copy's allowance (``jpeg_allowance``, in points, as :func:`judge_absolute` is given it;
    ``jpeg_cost``: what the caveat says the copy costs, measured or quoted)."""
    kinds = set(kinds)
    t2, t1 = (t_quantile(0.5 + CONFIDENCE / 2, df) for df in (2, 1))
    parts = []
    if kinds & {"ordering", "response"}:
        figure4 = "; for Figure 4, ARL's last-stage response minus NAL's" if "response" in kinds else ""
        parts.append(
            f"an ordering is judged on our gap (the paper's worse network minus its better one, in points "
            f"of top-1 error{figure4}) "
            f"and its {_CI} Welch interval, gap ± t × its standard error, where t is Student's "
            f"quantile at the Welch degrees of freedom (with 2 seeds a row between 1 and 2, so t is "
            f"{t2:.2f} to {t1:.2f}): "
            "*reproduced* if the interval lies above 0, *not reproduced* if below, *partly* if only the "
            "mean gap has the paper's sign (or a row has one seed), *inconclusive* if it is reversed inside "
            "the noise")
    if "parity" in kinds:
        parts.append(f"a tie is *reproduced* if the difference's {_CI} Welch interval lies inside "
                     f"±{PARITY_MARGIN:g} point, *not reproduced* if wholly outside, else *inconclusive*")
    if "absolute" in kinds:
        allowance = f" (the upper end of the copy's cost: {jpeg_cost})" if jpeg_cost else ""
        parts.append(
            f"an error is compared with the paper's only at the paper's budget, inside ±{ABS_TOLERANCE['cifar']:g} "
            f"point on CIFAR (±{ABS_TOLERANCE['imagenet']:g} on ImageNet) plus {SPREAD_SIGMAS:g} seed spreads, "
            f"widened upwards on the JPEG copy by {jpeg_allowance:.2f} points{allowance}, where a match reads "
            f"*{CONSISTENT_JPEG}*")
    text = "; ".join(parts)
    return text[:1].upper() + text[1:] + "." if text else ""
