"""Collect finished runs (their ``summary.json``) into a table of mean ± std over seeds.

    python -m uda.report logs/study/first_table            # prints a markdown table
    python -m uda.report logs/study/first_table --csv out.csv

Only runs that finished write ``summary.json``; failed or diverged runs are therefore never averaged in.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

GROUP = ["dataset", "task", "baseline", "harmonizer"]
METRICS = {
    "target_acc_last": "target acc, last",
    "target_acc_best": "target acc, best (oracle)",
    "conflict_rate": "conflict before",
    "conflict_rate_after": "conflict after",
    "sec_per_iter": "s/iter",
}


def collect(runs_dir: str | Path) -> pd.DataFrame:
    """One row per finished run found under ``runs_dir`` (searched recursively)."""
    rows = [json.loads(p.read_text()) for p in sorted(Path(runs_dir).rglob("summary.json"))]
    if not rows:
        raise FileNotFoundError(f"no summary.json under {runs_dir}: point uda.report at a directory of finished runs")
    return pd.DataFrame(rows)


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and number of seeds per (dataset, task, baseline, harmonizer)."""
    metrics = [m for m in METRICS if m in runs]
    grouped = runs.groupby(GROUP, sort=False)[metrics]
    out = grouped.mean().join(grouped.std(ddof=1).add_suffix("_std"))
    out["seeds"] = runs.groupby(GROUP, sort=False)["seed"].apply(lambda s: ",".join(map(str, sorted(s))))
    return out.reset_index()


def _pm(mean: float, std: float, pct: bool) -> str:
    if pd.isna(mean):
        return "–"
    scale = 100.0 if pct else 1.0
    text = f"{scale * mean:.1f}" if pct else f"{mean:.4f}"
    return text if pd.isna(std) else f"{text} ± {scale * std:.1f}" if pct else f"{text} ± {std:.4f}"


def markdown(table: pd.DataFrame) -> str:
    """Markdown table; accuracies and conflict rates in %, mean ± std (sample std over seeds)."""
    metrics = [m for m in METRICS if m in table]
    header = ["task", "baseline", "harmonizer", *[METRICS[m] for m in metrics], "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = [row["task"], row["baseline"], row["harmonizer"]]
        cells += [_pm(row[m], row[f"{m}_std"], pct=m != "sec_per_iter") for m in metrics]
        cells.append(row["seeds"])
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs_dir", help="directory searched recursively for summary.json files")
    parser.add_argument("--csv", help="also write the aggregated table as CSV")
    args = parser.parse_args(argv)
    try:
        table = aggregate(collect(args.runs_dir))
    except FileNotFoundError as err:
        raise SystemExit(f"error: {err}") from None
    print(markdown(table))
    if args.csv:
        table.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
