"""Collect finished runs into paper-style tables and plots (DESIGN.md: "collect runs -> tables (mean ± std
over seeds, paper numbers beside) + plots").

    python -m uda.report logs/study/first_table                           # markdown to stdout
    python -m uda.report logs/study/first_table --select best_target --out reports/first_table

Modules: :mod:`~uda.report.runs` (find finished and failed runs, model selections),
:mod:`~uda.report.paper` (the GH paper's numbers under our names), :mod:`~uda.report.table` (rows, avg rows,
markdown, CSV), :mod:`~uda.report.plots` (λ sensitivity, conflict rates), :mod:`~uda.report.paired` (paired
differences to ``none`` over seeds, 95 % t intervals), :mod:`~uda.report.curves` (learning curves from the CSV
logs), :mod:`~uda.report.cli`.
Only runs that finished write ``summary.json``; failed or diverged runs are listed, never averaged in.
"""

from uda.report.cli import main
from uda.report.paper import PaperResults
from uda.report.runs import SELECTIONS, NoFinishedRunsError, collect
from uda.report.table import aggregate, csv_frame, markdown

__all__ = ["SELECTIONS", "NoFinishedRunsError", "PaperResults", "aggregate", "collect", "csv_frame", "main", "markdown"]
