"""Keep a finished run's record small enough to commit: ``python -m uda.report.keep RUN_DIR RECORD_DIR``.

A long study commits each run as it finishes so that losing the machine (or a session's scratch space)
loses nothing already measured. A run directory holds much that is not worth committing: the checkpoint
(27 MB for MCD's LeNet), the per-step CSV log (about 350 bytes per iteration, 1.7-3.5 MB per study run), the
feature dump for t-SNE (1.2 MB) and the diagnostic PNGs. The record keeps what :mod:`uda.report` and the
learning-curve plots read:

- ``summary.json`` (accuracies under every model selection, conflict rates, tau statistics, timing);
- ``.hydra/config.yaml`` and ``.hydra/overrides.yaml`` (what ran);
- ``analysis/*.json`` (class-balance curves, confusion matrices) and ``stdout.log`` when present;
- the CSV logs (``csv/metrics*.csv``) reduced to their evaluation rows plus, for each evaluation, the last
  training row at or before its step, which carries the ``train/iteration`` that
  :func:`uda.report.curves.read_curve` maps the evaluation to. Columns are kept as they are.

Reading the record gives the same table and the same learning curves as reading the run directory.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pandas as pd

#: files copied as they are, relative to the run directory (missing ones are skipped)
KEPT_FILES = (
    "summary.json",
    ".hydra/config.yaml",
    ".hydra/overrides.yaml",
    "analysis/curves.json",
    "analysis/confusion.json",
    "stdout.log",
)
#: a CSV row is an evaluation row when one of these columns has a value
EVAL_COLUMNS = ("target/acc", "source/acc")
ITERATION = "train/iteration"


class KeepError(RuntimeError):
    """The run directory is not a finished run."""


def thin_log(log: pd.DataFrame) -> pd.DataFrame:
    """The evaluation rows of one CSV log and, for each, the last training row (``train/iteration``) at or
    before its ``step``; the original row order and columns."""
    present = [c for c in EVAL_COLUMNS if c in log.columns]
    if not present or "step" not in log.columns:
        return log.iloc[0:0]
    is_eval = log[present].notna().any(axis=1)
    keep = is_eval.copy()
    steps = pd.to_numeric(log["step"])
    if ITERATION in log.columns:
        training = pd.DataFrame({"step": steps[log[ITERATION].notna()]})
        for step in steps[is_eval].unique():
            before = training.index[training["step"] <= step]
            if len(before):
                # the latest training row by step (ties: the one written last)
                keep.loc[training.loc[before, "step"].iloc[::-1].idxmax()] = True
    return log.loc[keep]


def keep_record(run_dir: str | Path, record_dir: str | Path) -> Path:
    """Write the small record of the finished run ``run_dir`` into ``record_dir`` (created; files replaced)."""
    run_dir, record_dir = Path(run_dir), Path(record_dir)
    summary = run_dir / "summary.json"
    try:
        json.loads(summary.read_text())
    except (OSError, ValueError) as err:
        raise KeepError(f"{run_dir} is not a finished run (no readable summary.json: {err})") from None
    for name in KEPT_FILES:
        source = run_dir / name
        if source.is_file():
            (record_dir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, record_dir / name)
    for source in sorted((run_dir / "csv").glob("metrics*.csv")):
        try:
            # as text, so that the kept rows are written back exactly as they were
            log = pd.read_csv(source, dtype=str)
        except (OSError, ValueError):
            continue  # an empty log (a run resumed before its first row) has nothing to keep
        target = record_dir / "csv" / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        thin_log(log).to_csv(target, index=False)
    return record_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a finished run (with summary.json)")
    parser.add_argument("record_dir", help="where the small record goes (created)")
    args = parser.parse_args(argv)
    try:
        print(keep_record(args.run_dir, args.record_dir))
    except KeepError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
