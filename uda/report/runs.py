"""Find the runs of a study: finished ones (``summary.json``) and failed ones (``error.txt``, no summary).

A finished run becomes one flat record: its identity (dataset, task, baseline, harmonizer label, seed), the
harmonizer's name and GH++ λ, the target accuracy under each model selection, and the conflict and speed
figures. Keys that older runs lack become ``None`` here and "–" in the tables; they never stop a report.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uda.errors import UserError


class NoFinishedRunsError(UserError):
    """The runs directory holds no readable ``summary.json``; there is nothing to report."""


@dataclass(frozen=True)
class Selection:
    """A named model-selection rule: which evaluation's target accuracy a table reports."""

    name: str
    key: str  # the summary.json key written by uda.module.UDAModule.results
    meaning: str


#: DomainBed's lesson: model selection is part of the result, so every table names it.
SELECTIONS: dict[str, Selection] = {
    s.name: s
    for s in (
        Selection("last", "target_acc_last", "the model at the end of training"),
        Selection(
            "best_target",
            "target_acc_best",
            "oracle: the evaluation with the best target-test accuracy, as the papers report",
        ),
        Selection(
            "source_val",
            "target_acc_source_val",
            "the evaluation with the best accuracy on held-out source data (no target labels used)",
        ),
    )
}

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


# "ghpp(lam=0.5)", "none (no-op: the baseline has one loss)", "cagrad(c_a=0.4, rescale=True)"; the
# parameters must follow the name directly, so a parenthesised note after a space stays a note.
_HARMONIZER = re.compile(r"^\s*(?P<name>\w+)(?:\((?P<params>[^()]*)\))?(?P<note>.*)$", re.DOTALL)


def _value(text: str) -> Any:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        return text


def parse_harmonizer(text: str) -> tuple[str, dict[str, Any], str]:
    """Split a summary's harmonizer string into (name, parameters, note): ``"ghpp(lam=0.5)"`` -> ``("ghpp",
    {"lam": 0.5}, "")``. Numbers become floats; anything unparsable is kept whole as the name."""
    match = _HARMONIZER.match(text)
    if match is None:
        return text.strip(), {}, ""
    params = {}
    for part in (match["params"] or "").split(","):
        key, sep, value = part.partition("=")
        if sep:
            params[key.strip()] = _value(value)
    return match["name"], params, match["note"]


def _harmonizer_label(text: str, name: str, params: dict[str, Any], note: str) -> str:
    """The label that groups runs: the summary's string, with ``harmonizer_params`` spelled out when the
    string does not carry them (so GH++ runs with different λ never share a row)."""
    if "(" in text.split(" ", 1)[0] or not params:
        return text.strip()
    spelled = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
    return f"{name}({spelled}){note}".strip()


def _number(value: Any) -> float | None:
    """A finite float, or None for missing / null / non-numeric / NaN values."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


def selected_accuracy(summary: dict[str, Any], selection: Selection) -> float | None:
    """The target accuracy of ``selection`` in one summary, or None when the run predates that key.

    The summary's own ``model_selection`` map (name -> key, names possibly annotated as in
    ``"best_target (oracle)"``) wins over the default key, so a renamed key is still found.
    """
    key = selection.key
    for name, named_key in (summary.get("model_selection") or {}).items():
        if str(name).split(" ")[0] == selection.name:
            key = named_key
    return _number(summary.get(key))


def run_record(summary: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """The flat record of one finished run (see the module docstring)."""
    text = str(summary.get("harmonizer", "?"))
    name, parsed, note = parse_harmonizer(text)
    given = summary.get("harmonizer_params")
    params = dict(given) if isinstance(given, dict) and given else parsed
    lam = _number(params.get("lam"))
    record: dict[str, Any] = {
        "dataset": str(summary.get("dataset", "?")),
        "task": str(summary.get("task", "?")),
        "baseline": str(summary.get("baseline", "?")),
        "harmonizer": _harmonizer_label(text, name, params, note),
        "harmonizer_name": name,
        "lam": lam,
        "seed": summary.get("seed"),
        "run_dir": run_dir,
        # what source_val's source accuracy was measured on (uda.train names the split since it exists)
        "source_val_split": (summary.get("model_selection") or {}).get("source_val_measured_on"),
    }
    for selection in SELECTIONS.values():
        record[f"acc_{selection.name}"] = selected_accuracy(summary, selection)
    for metric, key in RUN_METRICS.items():
        record[metric] = _number(summary.get(key))
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
