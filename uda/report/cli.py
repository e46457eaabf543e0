"""``python -m uda.report RUNS_DIR [--select last|best_target|source_val] [--out DIR]``.

Prints the markdown report to stdout; when two or more seeds pair up, it ends with the paired differences
to ``harmonizer=none`` (and to ``source_only``) with 95 % t intervals (:mod:`uda.report.paired`).
``--out DIR`` also writes ``results.md``, ``results.csv``, ``paired.csv`` (when there are pairs) and the
plots (``lambda_sensitivity.png``, ``conflict_rates.png``, ``learning_curves.png``); a plot without data
is skipped with a one-line note. A directory without finished runs ends in one sentence and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from uda.report.curves import CURVES_PLOT, plot_learning_curves
from uda.report.paired import paired_differences, paired_frame, paired_markdown
from uda.report.plots import CONFLICT_PLOT, LAMBDA_PLOT, plot_conflict_rates, plot_lambda_sensitivity
from uda.report.runs import SELECTIONS, NoFinishedRunsError, collect
from uda.report.table import aggregate, csv_frame, markdown

PLOTS = {
    LAMBDA_PLOT: ("λ sensitivity", plot_lambda_sensitivity),
    CONFLICT_PLOT: ("conflict rates", plot_conflict_rates),
}


def write_outputs(report: str, table, out_dir: str | Path, runs=None, runs_dir=None, paired=None) -> list[str]:
    """Write results.md, results.csv, paired.csv (``paired``: a non-empty frame) and the plots into
    ``out_dir`` (the learning curves need ``runs`` and ``runs_dir``); return one note per file or skip."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_frame(table).to_csv(out / "results.csv", index=False)
    notes, figures = [f"wrote {out / 'results.md'}", f"wrote {out / 'results.csv'}"], []
    if paired is not None and len(paired):
        paired.to_csv(out / "paired.csv", index=False)
        notes.append(f"wrote {out / 'paired.csv'}")
    else:
        (out / "paired.csv").unlink(missing_ok=True)
    plots = dict(PLOTS)
    if runs is not None and runs_dir is not None:
        plots[CURVES_PLOT] = ("learning curves", lambda _table, path: plot_learning_curves(runs, runs_dir, path))
    for filename, (title, plot) in plots.items():
        skipped = plot(table, out / filename)
        if skipped is None:
            notes.append(f"wrote {out / filename}")
            figures.append(f"![{title}]({filename})")
        else:
            (out / filename).unlink(missing_ok=True)  # never leave a stale figure from an earlier report
            notes.append(f"skipped the {title} plot: {skipped}")
            figures.append(f"{title} plot skipped: {skipped}.")
    (out / "results.md").write_text(report + "\n\n## Plots\n\n" + "\n\n".join(figures) + "\n")
    return notes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m uda.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs_dir", help="directory searched recursively for summary.json (and error.txt) files")
    parser.add_argument(
        "--select",
        choices=list(SELECTIONS),
        default="last",
        help="model selection: " + "; ".join(f"{s.name} = {s.meaning}" for s in SELECTIONS.values()),
    )
    parser.add_argument("--out", help="directory for results.md, results.csv and the PNG plots")
    parser.add_argument("--csv", help="also write the table as CSV to this file")
    args = parser.parse_args(argv)
    try:
        runs = collect(args.runs_dir)
    except NoFinishedRunsError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    table = aggregate(runs, args.select)
    report = markdown(table, runs)
    differences = [d for d in paired_differences(runs, args.select) if d.interval.n >= 2]
    if differences:
        report += "\n\n" + paired_markdown(differences, args.select)
    print(report)
    if args.csv:
        csv_frame(table).to_csv(args.csv, index=False)
    if args.out:
        paired = paired_frame(differences, args.select)
        for note in write_outputs(report, table, args.out, runs, args.runs_dir, paired):
            print(note, file=sys.stderr)
