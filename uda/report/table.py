"""Runs -> paper-style result rows (mean ± std over seeds, the paper's number beside, an avg row) -> markdown.

One row per (dataset, task, baseline, harmonizer label, resolved variant), in the order a reader compares
them: by task, then baseline, then harmonizer (none, GH, GH++ by λ, others). Accuracies and conflict rates
are in % (the paper's unit), ``s/iter`` in seconds; std is the sample std over seeds (none for a single
seed); ``n`` counts the runs that have the metric, which is fewer than the seeds when older runs lack a key.

The avg row (the paper tables' Avg column) of a dataset/baseline/harmonizer is the mean of its per-task
means, written only when the dataset has several tasks and the method has a result on every one of them,
so all avg rows of a dataset average the same tasks.

Runs that differ in any resolved setting (:meth:`uda.summary.RunSummary.variant`: e.g. what tau multiplies,
the trade-off's placement, a harmonizer hyper-parameter) are never averaged together. Where one (dataset,
task, baseline, harmonizer) has several variants, the ``settings`` column names the settings in which its
rows differ, so every row says what it is.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable
from typing import Any

import pandas as pd

from uda.report.paper import PaperResults
from uda.report.runs import SELECTIONS, FailedRun, Runs

#: a row's identity: runs are averaged only when all of these agree, the resolved variant included
KEY = ("dataset", "task", "baseline", "harmonizer", "variant")
#: report metric -> (markdown header, in %)
METRICS = {
    "acc": ("target acc", True),
    "conflict_before": ("conflict before", True),
    "conflict_after": ("conflict after", True),
    "sec_per_iter": ("s/iter", False),
}
#: the papers' order; baselines and harmonizers not listed follow alphabetically
BASELINE_ORDER = ("source_only", "dann", "cdan", "mcd", "gvb", "dwl", "ssrt")
HARMONIZER_ORDER = ("none", "gh", "ghpp", "ghpp_rot")
AVG = "avg"


def _stats(values: Iterable[float | None], scale: float) -> tuple[float, float, int]:
    present = [scale * v for v in values if v is not None]
    mean = statistics.fmean(present) if present else math.nan
    std = statistics.stdev(present) if len(present) > 1 else math.nan
    return mean, std, len(present)


def _rank(value: str, order: tuple[str, ...]) -> tuple[int, str]:
    return (order.index(value), "") if value in order else (len(order), value)


def _order(row: dict[str, Any]) -> tuple:
    lam = row["lam"] if row["lam"] is not None and not math.isnan(row["lam"]) else -math.inf
    return (
        row["dataset"],
        row["task"] == AVG,  # avg rows close each dataset, like the paper's last column
        row["task"],
        _rank(row["baseline"], BASELINE_ORDER),
        _rank(row["harmonizer_name"], HARMONIZER_ORDER),
        lam,
        row["harmonizer"],
        row["settings"],
    )


def aggregate(runs: Runs, selection: str = "last", paper: PaperResults | None = None) -> pd.DataFrame:
    """One row per (dataset, task, baseline, harmonizer) and one avg row per dataset/baseline/harmonizer.

    Columns: ``kind`` (task | avg), the key, ``harmonizer_name``, ``lam``, ``selection``, ``<metric>_mean``,
    ``<metric>_std``, ``<metric>_n`` for each of :data:`METRICS`, ``paper_acc`` and ``seeds``.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"unknown model selection {selection!r}; choose one of {', '.join(SELECTIONS)}")
    paper = PaperResults.load() if paper is None else paper
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for record in runs.finished:
        groups.setdefault(tuple(record[k] for k in KEY), []).append(record)

    rows = []
    for key, records in groups.items():
        row: dict[str, Any] = {"kind": "task", **dict(zip(KEY, key, strict=True))}
        row["harmonizer_name"], row["lam"] = records[0]["harmonizer_name"], records[0]["lam"]
        row["selection"] = selection
        for metric, (_, pct) in METRICS.items():
            column = f"acc_{selection}" if metric == "acc" else metric
            stats = _stats((r[column] for r in records), 100.0 if pct else 1.0)
            row.update(zip((f"{metric}_mean", f"{metric}_std", f"{metric}_n"), stats, strict=True))
        row["paper_acc"] = paper.accuracy(
            row["dataset"], row["task"], row["baseline"], row["harmonizer_name"], row["lam"]
        )
        row["seeds"] = ",".join(str(s) for s in sorted(r["seed"] for r in records if r["seed"] is not None))
        rows.append(row)
    _name_settings(rows)
    rows += _average_rows(rows, paper)
    rows.sort(key=_order)
    return pd.DataFrame(rows)


def _name_settings(rows: list[dict[str, Any]]) -> None:
    """Set each row's ``settings``: "" when its (dataset, task, baseline, harmonizer) has one variant, else the
    settings in which that method's variants differ, as ``name=value; ...``."""
    methods: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        methods.setdefault(tuple(row[k] for k in KEY[:-1]), []).append(row)
    for method_rows in methods.values():
        variants = [json.loads(r["variant"]) for r in method_rows]
        names = sorted({k for v in variants for k in v})
        differing = [k for k in names if len({json.dumps(v.get(k)) for v in variants}) > 1]
        for row, variant in zip(method_rows, variants, strict=True):
            row["settings"] = "; ".join(f"{k}={variant.get(k, '–')}" for k in differing)


def _average_rows(rows: list[dict[str, Any]], paper: PaperResults) -> list[dict[str, Any]]:
    by_dataset: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_dataset.setdefault(row["dataset"], []).append(row)
    averages = []
    for dataset, dataset_rows in by_dataset.items():
        tasks = sorted({r["task"] for r in dataset_rows})
        if len(tasks) < 2:
            continue
        methods: dict[str, list[dict[str, Any]]] = {}
        for row in dataset_rows:
            methods.setdefault((row["baseline"], row["harmonizer"], row["variant"]), []).append(row)
        for (baseline, harmonizer, variant), method_rows in methods.items():
            if len(method_rows) < len(tasks) or any(math.isnan(r["acc_mean"]) for r in method_rows):
                continue  # an average over fewer tasks would not compare with the others
            first = method_rows[0]
            avg: dict[str, Any] = {"kind": AVG, "dataset": dataset, "task": AVG, "baseline": baseline}
            avg.update(harmonizer=harmonizer, harmonizer_name=first["harmonizer_name"], lam=first["lam"])
            avg.update(variant=variant, settings=first["settings"])
            avg["selection"] = first["selection"]
            for metric in METRICS:
                means = [r[f"{metric}_mean"] for r in method_rows]
                complete = not any(math.isnan(m) for m in means)
                avg[f"{metric}_mean"] = statistics.fmean(means) if complete else math.nan
                avg[f"{metric}_std"] = math.nan  # a spread over seeds has no single meaning across tasks
                avg[f"{metric}_n"] = len(means) if complete else 0
            avg["paper_acc"] = paper.average(dataset, tasks, baseline, first["harmonizer_name"], first["lam"])
            avg["seeds"] = ""
            averages.append(avg)
    return averages


def _cell(mean: float, std: float, pct: bool) -> str:
    if math.isnan(mean):
        return "–"
    fmt = "{:.1f}" if pct else "{:.4f}"
    return fmt.format(mean) if math.isnan(std) else f"{fmt.format(mean)} ± {fmt.format(std)}"


def _row_cells(row: pd.Series, with_settings: bool) -> list[str]:
    cells = [row["task"], row["baseline"], row["harmonizer"]]
    if with_settings:
        cells.append(row["settings"] or "–")
    for metric, (_, pct) in METRICS.items():
        cell = _cell(row[f"{metric}_mean"], row[f"{metric}_std"], pct)
        seeds = len(row["seeds"].split(",")) if row["seeds"] else 0
        if metric == "acc":
            if row["kind"] == "task" and 0 < row["acc_n"] < seeds:
                cell += f" (n={row['acc_n']})"  # some seeds predate this selection's key
            paper = row["paper_acc"]
            cells += [cell, "–" if paper is None or pd.isna(paper) else f"{paper:.1f}"]
        else:
            cells.append(cell)
    cells.append(f"mean of {row['acc_n']} tasks" if row["kind"] == AVG else row["seeds"])
    return cells


def caption(selection: str) -> str:
    """The paragraph above the tables: the model selection and the units."""
    return (
        f"Model selection: `{selection}` ({SELECTIONS[selection].meaning}). "
        "Target accuracy and conflict rates in %, mean ± sample std over seeds. conflict before: monitored "
        "steps whose loss gradients meet at an obtuse angle; conflict after: steps whose applied (harmonized) "
        "update still opposes one of them. (no-op): the harmonizer never acted in these runs (e.g. the "
        "baseline has one loss; each run's summary.json says why). s/iter: seconds per training iteration. "
        "paper: the accuracy reported in the GH paper (TPAMI) for the same task, baseline and harmonizer "
        "(GH++ at its λ = 0.5). avg: mean over the dataset's tasks, for methods with a result on all of them."
    )


def markdown_table(table: pd.DataFrame) -> str:
    """The markdown rows of one dataset's table."""
    selection = table["selection"].iloc[0]
    with_settings = bool(table["settings"].astype(bool).any())
    header = ["task", "baseline", "harmonizer"] + (["settings (where runs differ)"] if with_settings else [])
    header += [f"target acc ({selection})", "paper"]
    header += [METRICS[m][0] for m in METRICS if m != "acc"] + ["seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_row_cells(row, with_settings)) + " |" for _, row in table.iterrows()]
    return "\n".join(lines)


def failed_note(failed: list[FailedRun]) -> str:
    """The "failed runs" note under the tables, or "" when none failed."""
    if not failed:
        return ""
    lines = [f"Failed runs: {len(failed)} (error.txt and no summary.json; not averaged in):"]
    lines += [f"- `{f.path}`: {f.reason}" for f in failed]
    return "\n".join(lines)


def markdown(table: pd.DataFrame, runs: Runs) -> str:
    """The whole report: a title naming the selection, the caption, one table per dataset, then notes."""
    selection = table["selection"].iloc[0]
    text = caption(selection)
    splits = sorted({r["source_val_split"] for r in runs.finished if r["source_val_split"]})
    if selection == "source_val" and splits:
        text += f" Source accuracy for source_val measured on: {'; '.join(splits)}."
    parts = [f"# Results (model selection: {selection})", text]
    for dataset, rows in table.groupby("dataset", sort=False):
        parts += [f"## {dataset}", markdown_table(rows)]
    missing = runs.missing(selection)
    if missing:
        key = SELECTIONS[selection].key
        parts.append(
            f"Note: {missing} of {len(runs.finished)} finished runs have no `{key}` (written before it existed); "
            "their target acc is left out (n = runs averaged, – = none)."
        )
    note = failed_note(runs.failed)
    if note:
        parts.append(note)
    return "\n\n".join(parts)


def csv_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The machine-readable table (the same rows as the markdown, unrounded)."""
    metric_columns = [f"{m}_{s}" for m in METRICS for s in ("mean", "std", "n")]
    columns = ["kind", *KEY, "settings", "harmonizer_name", "lam", "selection", *metric_columns, "paper_acc", "seeds"]
    return table[columns]
