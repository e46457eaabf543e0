"""Find the runs of a study: finished ones (``summary.json``) and failed ones (``error.txt``, no summary).

A finished run becomes one flat record: its identity (dataset, task, baseline, harmonizer label, resolved
variant, seed), the harmonizer's name and GH++ λ, the target accuracy under each model selection, and the
conflict and speed figures. The summary is read through :class:`uda.summary.RunSummary`. Keys that older runs
lack become ``None`` here and "–" in the tables; they never stop a report.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uda.errors import UserError
from uda.record import SELECTIONS, Selection
from uda.summary import RunSummary

__all__ = ["SELECTIONS", "FailedRun", "NoFinishedRunsError", "Runs", "Selection", "collect", "run_record"]


class NoFinishedRunsError(UserError):
    """The runs directory holds no readable ``summary.json``; there is nothing to report."""


#: report metric -> summary.json key; accuracies of the selections are added as ``acc_<selection>``.
RUN_METRICS = {
    "conflict_before": "conflict_rate",
    "conflict_after": "conflict_rate_after",
    "sec_per_iter": "sec_per_iter",
}


@dataclass(frozen=True)
class FailedRun:
    """A run directory with ``error.txt`` and no ``summary.json`` (uda.train writes it when a sweep job fails)."""

    path: str  # relative to the runs directory
    reason: str  # first line of error.txt


@dataclass(frozen=True)
class Runs:
    """What a runs directory holds: one record per finished run, and the failed runs."""

    finished: list[dict[str, Any]]
    failed: list[FailedRun]

    def missing(self, selection: str) -> int:
        """How many finished runs have no accuracy for ``selection`` (older runs lack new keys)."""
        return sum(r[f"acc_{selection}"] is None for r in self.finished)


def _number(value: Any) -> float | None:
    """A finite float, or None for missing / null / non-numeric / NaN / infinite values."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None  # json reads NaN and Infinity; neither is a result


def _iterations(value: Any) -> int | None:
    """A run's length as an int, or None when the summary lacks it (or holds something else)."""
    number = _number(value)
    return None if number is None else int(number)


def selected_accuracy(summary: RunSummary, selection: Selection) -> float | None:
    """The target accuracy of ``selection`` in one summary, or None when the run predates that key."""
    return _number(summary.results.get(selection.key))


def run_record(data: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """The flat record of one finished run (see the module docstring), from its ``summary.json`` object.

    ``harmonizer`` is the label that groups runs: the harmonizer's name and hyper-parameters, marked
    " (no-op)" when it never acted (the reason is left out: its wording changed between versions, and it follows
    from the baseline and settings, which do group);
    ``variant`` is the run's resolved settings (:meth:`uda.summary.RunSummary.variant`) and its length
    (``iterations``) as one canonical string, so runs that differ in any resolved setting, or that trained for
    a different number of iterations (a study extended part-way), land in different rows.
    """
    summary = RunSummary.from_dict(data)
    iterations = _iterations(summary.results.get("iterations"))
    variant = summary.variant()
    if iterations is not None:  # older summaries lack it; they keep the variant they always had
        variant["iterations"] = iterations
    noop = " (no-op)" if summary.harmonizer_noop else ""
    split = summary.results.get("source_val_split") or (data.get("model_selection") or {}).get("source_val_measured_on")
    record: dict[str, Any] = {
        "dataset": summary.dataset,
        "task": summary.task,
        "baseline": summary.baseline,
        "harmonizer": summary.harmonizer_label + noop,
        "harmonizer_name": summary.harmonizer_name,
        "lam": _number(summary.harmonizer_params.get("lam")),
        "variant": json.dumps(variant, sort_keys=True),
        "iterations": iterations,
        "seed": summary.seed,
        "run_dir": run_dir,
        # what source_val's source accuracy was measured on (uda.train names the split since it exists)
        "source_val_split": split,
    }
    for selection in SELECTIONS.values():
        record[f"acc_{selection.name}"] = selected_accuracy(summary, selection)
    for metric, key in RUN_METRICS.items():
        record[metric] = _number(summary.results.get(key))
    return record


def _first_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError as err:
        return f"error.txt unreadable ({err.strerror})"
    return lines[0].strip() if lines else "error.txt is empty"


def collect(runs_dir: str | Path) -> Runs:
    """All finished and failed runs under ``runs_dir`` (searched recursively, in path order).

    Raises :class:`NoFinishedRunsError` when there is no finished run to report.
    """
    root = Path(runs_dir)
    if not root.is_dir():
        raise NoFinishedRunsError(f"{root} is not a directory: point uda.report at the output directory of a study")
    finished, failed = [], []
    for path in sorted(root.rglob("summary.json")):
        rel = str(path.parent.relative_to(root))
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            # a summary cut short (killed while writing) is a failed run, not a reason to stop the report
            failed.append(FailedRun(rel, "summary.json is not valid JSON"))
            continue
        finished.append(run_record(summary, rel))
    for path in sorted(root.rglob("error.txt")):
        if not (path.parent / "summary.json").exists():
            failed.append(FailedRun(str(path.parent.relative_to(root)), _first_line(path)))
    if not finished:
        why = f" ({len(failed)} failed runs: see their error.txt)" if failed else ""
        raise NoFinishedRunsError(
            f"no finished run (summary.json) under {root}{why}: point uda.report at a directory of finished runs"
        )
    return Runs(finished, sorted(failed, key=lambda f: f.path))
