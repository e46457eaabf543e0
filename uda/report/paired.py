"""Paired differences over seeds: does a harmonizer change a baseline's accuracy beyond seed noise?

Runs with the same seed share the model initialisation and the data order, so the per-seed difference
``acc(baseline + harmonizer, seed) - acc(baseline + none, seed)`` removes the seed-to-seed variation that
both share, and a paired t interval on those differences is tighter than comparing two means.

For each (dataset, task, baseline) and each harmonizer label other than ``none``, over the seeds that
both have a finished run with the selected accuracy:

    d_i = 100 * (acc_h(seed_i) - acc_none(seed_i))          (points)
    mean = (1/n) Σ d_i,  s = sqrt(Σ (d_i - mean)² / (n - 1)),
    95 % interval = mean ± t_{0.975, n-1} · s / sqrt(n)

(Student's paired t interval). A difference is called real only when the interval excludes 0; with fewer
than two common seeds there is no interval. Adaptation itself is compared the same way: each baseline with
``none`` against ``source_only`` on the same task and seeds. Several runs of one (method, seed), e.g. a
rerun in another directory, count as one: their mean. Runs of different lengths are never paired
(:func:`paired_differences`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from uda.report.runs import Runs

REFERENCE = "none"
SOURCE_ONLY = "source_only"
#: t_{0.975, df} for df = 1..30 (two-sided 95 %), from the standard t table; used when scipy is missing
T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
#: further rows of the table (df -> t); between rows the smaller df is used (a wider, conservative interval)
T_975_LARGE = ((40, 2.021), (60, 2.000), (120, 1.980))


def t_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (scipy when installed, else the table)."""
    if df < 1:
        raise ValueError(f"a t quantile needs at least one degree of freedom, got {df}")
    try:
        from scipy.stats import t
    except ImportError:
        if df <= len(T_975):
            return T_975[df - 1]
        value = T_975[-1]
        for row_df, row_t in T_975_LARGE:
            if df >= row_df:
                value = row_t
        return value
    return float(t.ppf(0.975, df))


@dataclass(frozen=True)
class Interval:
    """Mean, sample std and 95 % t interval of paired differences (NaN where n is too small)."""

    n: int
    mean: float
    std: float
    low: float
    high: float

    @property
    def resolved(self) -> bool:
        """Whether the interval excludes 0 (the only case this report calls a difference real)."""
        return self.n >= 2 and (self.low > 0 or self.high < 0)


def paired_interval(differences: Sequence[float]) -> Interval:
    """Student's paired 95 % t interval of ``differences`` (see the module docstring)."""
    n = len(differences)
    if n == 0:
        return Interval(0, math.nan, math.nan, math.nan, math.nan)
    mean = statistics.fmean(differences)
    if n == 1:
        return Interval(1, mean, math.nan, math.nan, math.nan)
    std = statistics.stdev(differences)
    half = t_975(n - 1) * std / math.sqrt(n)
    return Interval(n, mean, std, mean - half, mean + half)


@dataclass(frozen=True)
class PairedDifference:
    """``method`` minus ``reference`` on one dataset/task, over ``seeds``, in accuracy points."""

    dataset: str
    task: str
    method: str  # "cdan + gh", or "cdan + none" against source_only
    reference: str  # "cdan + none", or "source_only"
    seeds: tuple[Any, ...]
    interval: Interval

    @property
    def verdict(self) -> str:
        if self.interval.n < 2:
            return "no interval (fewer than 2 common seeds)"
        if not self.interval.resolved:
            return "not resolved (interval includes 0)"
        return "real: higher" if self.interval.mean > 0 else "real: lower"


def _by_seed(records: list[dict[str, Any]], column: str) -> dict[Any, float]:
    values: dict[Any, list[float]] = {}
    for record in records:
        if record["seed"] is not None and record[column] is not None:
            values.setdefault(record["seed"], []).append(record[column])
    return {seed: statistics.fmean(accs) for seed, accs in values.items()}


def _difference(dataset, task, method, reference, ours, theirs, column) -> PairedDifference:
    mine, base = _by_seed(ours, column), _by_seed(theirs, column)
    seeds = tuple(sorted(set(mine) & set(base)))  # numeric order, as the results table lists seeds
    interval = paired_interval([100.0 * (mine[s] - base[s]) for s in seeds])
    return PairedDifference(dataset, task, method, reference, seeds, interval)


def _length_order(iterations: int | None) -> tuple[bool, int]:
    return iterations is None, iterations or 0  # shortest first; runs of unknown length last


def _named(baseline: str, iterations: int | None, lengths: int) -> str:
    """``baseline``, with its length when the task holds runs of several lengths of it: "cdan (10000 it)"."""
    return baseline if lengths == 1 or iterations is None else f"{baseline} ({iterations} it)"


def paired_differences(runs: Runs, selection: str = "last") -> list[PairedDifference]:
    """Every harmonizer against ``none`` per dataset/task/baseline/length, then every baseline with ``none``
    against ``source_only`` (see the module docstring); comparisons without a common seed are left out.

    Runs of different lengths (``iterations``) are never paired with each other: a study extended part-way
    would otherwise compare a long run with a short one. When a task holds several lengths of a baseline, each
    length is its own comparison and its name carries the length, "cdan (10000 it) + gh". A baseline is
    compared with the longest ``source_only`` runs of its task (source-only has no schedule to match).
    """
    column = f"acc_{selection}"
    # (dataset, task, baseline) -> iterations -> harmonizer label -> records
    groups: dict[tuple[str, str, str], dict[int | None, dict[str, list[dict[str, Any]]]]] = {}
    for record in runs.finished:
        key = (record["dataset"], record["task"], record["baseline"])
        by_label = groups.setdefault(key, {}).setdefault(record.get("iterations"), {})
        by_label.setdefault(record["harmonizer"], []).append(record)
    out = []
    for (dataset, task, baseline), lengths in sorted(groups.items()):
        for iterations in sorted(lengths, key=_length_order):
            harmonizers = lengths[iterations]
            name = _named(baseline, iterations, len(lengths))
            reference = [r for records in harmonizers.values() for r in records if r["harmonizer_name"] == REFERENCE]
            for label, records in sorted(harmonizers.items()):
                if records[0]["harmonizer_name"] != REFERENCE and reference:
                    out.append(
                        _difference(dataset, task, f"{name} + {label}", f"{name} + none", records, reference, column)
                    )
    for (dataset, task, baseline), lengths in sorted(groups.items()):
        source_only = groups.get((dataset, task, SOURCE_ONLY), {})
        if baseline == SOURCE_ONLY or not source_only:
            continue
        known = [k for k in source_only if k is not None]
        longest = max(known) if known else None
        others = [r for records in source_only[longest].values() for r in records]
        reference_name = _named(SOURCE_ONLY, longest, len(source_only))
        for iterations in sorted(lengths, key=_length_order):
            harmonizers = lengths[iterations]
            plain = [r for records in harmonizers.values() for r in records if r["harmonizer_name"] == REFERENCE]
            if plain:
                name = _named(baseline, iterations, len(lengths))
                out.append(_difference(dataset, task, f"{name} + none", reference_name, plain, others, column))
    return [d for d in out if d.seeds]


def _points(value: float, signed: bool = True) -> str:
    if math.isnan(value):
        return "–"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def paired_markdown(differences: list[PairedDifference], selection: str) -> str:
    """The paired-differences section of the report (title, how it is computed, one table)."""
    header = ["task", "method", "minus", "n", "seeds", "mean diff", "std", "95 % interval", "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for d in differences:
        i = d.interval
        interval = "–" if math.isnan(i.low) else f"[{_points(i.low)}, {_points(i.high)}]"
        seeds = ",".join(str(s) for s in d.seeds)
        cells = [d.task, d.method, d.reference, str(i.n), seeds, _points(i.mean), _points(i.std, signed=False)]
        lines.append("| " + " | ".join([*cells, interval, d.verdict]) + " |")
    text = (
        f"Target accuracy of each method minus its reference on the same seeds (model selection: `{selection}`), "
        "in points: mean, sample std and Student's paired 95 % t interval (mean ± t_0.975,n−1 · std/√n). "
        "A difference is called real only when its interval excludes 0."
    )
    return "\n\n".join(["## Paired differences over seeds", text, "\n".join(lines)])


def paired_frame(differences: list[PairedDifference], selection: str) -> pd.DataFrame:
    """The paired differences as a table (one row per comparison, unrounded)."""
    rows = [
        {
            "dataset": d.dataset,
            "task": d.task,
            "method": d.method,
            "reference": d.reference,
            "selection": selection,
            "n": d.interval.n,
            "seeds": ",".join(str(s) for s in d.seeds),
            "mean_diff": d.interval.mean,
            "std_diff": d.interval.std,
            "ci95_low": d.interval.low,
            "ci95_high": d.interval.high,
            "verdict": d.verdict,
        }
        for d in differences
    ]
    return pd.DataFrame(rows)
