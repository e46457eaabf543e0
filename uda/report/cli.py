"""``python -m uda.report RUNS_DIR [--select last|best_target|source_val] [--out DIR]``.

Prints the markdown report to stdout. ``--out DIR`` also writes ``results.md``, ``results.csv`` and the
plots (``lambda_sensitivity.png``, ``conflict_rates.png``); a plot without data is skipped with a one-line
note. A directory without finished runs ends in one sentence and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from uda.report.plots import CONFLICT_PLOT, LAMBDA_PLOT, plot_conflict_rates, plot_lambda_sensitivity
from uda.report.runs import SELECTIONS, NoFinishedRunsError, collect
from uda.report.table import aggregate, csv_frame, markdown

PLOTS = {
    LAMBDA_PLOT: ("λ sensitivity", plot_lambda_sensitivity),
    CONFLICT_PLOT: ("conflict rates", plot_conflict_rates),
}


def write_outputs(report: str, table, out_dir: str | Path) -> list[str]:
    """Write results.md, results.csv and the plots into ``out_dir``; return one note per file or skip."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_frame(table).to_csv(out / "results.csv", index=False)
    notes, figures = [f"wrote {out / 'results.md'}", f"wrote {out / 'results.csv'}"], []
    for filename, (title, plot) in PLOTS.items():
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
    print(report)
    if args.csv:
        csv_frame(table).to_csv(args.csv, index=False)
    if args.out:
        for note in write_outputs(report, table, args.out):
            print(note, file=sys.stderr)
