"""uda.report.keep: a finished run's committed record gives the report what the full run directory gives it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from uda.report import aggregate, collect
from uda.report.curves import read_curve
from uda.report.figures import read_accuracy
from uda.report.keep import KeepError, keep_record, main, thin_log


def _run(root: Path) -> Path:
    """A finished run as uda.train leaves it: summary, Hydra config, analysis JSONs, a checkpoint, a feature
    dump and a CSV log (training rows every step, evaluations at steps 3 and 7) plus a resumed attempt's log."""
    run = root / "fonts_mnist" / "cdan" / "gh" / "seed0"
    summary = {
        "dataset": "offline_digits",
        "task": "fonts→mnist",
        "baseline": "cdan",
        "harmonizer": "gh",
        "harmonizer_name": "gh",
        "seed": 0,
        "target_acc_last": 0.7,
        "conflict_rate": 0.3,
        "conflict_rate_after": 0.0,
        "sec_per_iter": 0.1,
        "model_selection": {"last": "target_acc_last"},
    }
    for name, text in {
        "summary.json": json.dumps(summary),
        ".hydra/config.yaml": "iterations: 8\neval_every: 4\n",
        ".hydra/overrides.yaml": "- baseline=cdan\n",
        ".hydra/hydra.yaml": "hydra: {}\n",
        "analysis/curves.json": '{"iteration": [4, 8]}',
        "analysis/confusion.json": "[[1, 0], [0, 1]]",
        "checkpoints/last.ckpt": "weights",
        "analysis/features.npz": "features",
        "stdout.log": "done\n",
    }.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(text)
    rows = []
    for step in range(8):  # Lightning's rows: a training row per step, evaluation rows at the epoch's last step
        rows.append({"epoch": None, "step": step, "train/iteration": step + 1, "train/loss": 1.0 / (step + 1)})
        if step in (3, 7):
            rows.append({"epoch": step // 4, "step": step, "target/acc": 0.5 + step / 40, "source/acc": 0.9})
    (run / "csv").mkdir()
    pd.DataFrame(rows).to_csv(run / "csv" / "metrics.csv", index=False)
    resumed = [{"epoch": None, "step": s, "train/iteration": s + 1, "train/loss": 2.0} for s in range(4)]
    resumed.append({"epoch": 0, "step": 3, "target/acc": 0.4, "source/acc": 0.8})
    pd.DataFrame(resumed).to_csv(run / "csv" / "metrics.before_resume_1.csv", index=False)
    return run


def test_thin_log_keeps_each_evaluation_and_the_training_row_that_places_it() -> None:
    log = pd.DataFrame(
        {
            "step": ["0", "1", "1", "2", "2", "2", "3"],
            "train/iteration": ["1", "2", None, "3", "4", None, "5"],
            "target/acc": [None, None, "0.5", None, None, "0.6", None],
            "other": ["a", "b", "c", "d", "e", "f", "g"],
        }
    )
    kept = thin_log(log)
    # step 1: its evaluation (row 2) and the training row at step 1 (row 1); step 2: the training row
    # written last at that step (row 4, iteration 4, not row 3) and the evaluation (row 5)
    assert kept.index.tolist() == [1, 2, 4, 5]
    assert kept["other"].tolist() == ["b", "c", "e", "f"] and list(kept.columns) == list(log.columns)
    assert thin_log(pd.DataFrame({"step": [0], "train/loss": [1.0]})).empty  # no evaluation column
    # an evaluation before any training row keeps just itself
    early = pd.DataFrame({"step": [0, 1], "train/iteration": [None, 2], "source/acc": [0.3, None]})
    assert thin_log(early).index.tolist() == [0]


def test_record_gives_the_same_table_and_curves_and_leaves_the_bulk_behind(tmp_path: Path) -> None:
    run = _run(tmp_path / "runs")
    record = keep_record(run, tmp_path / "records" / "fonts_mnist" / "cdan" / "gh" / "seed0")
    kept = sorted(str(p.relative_to(record)) for p in record.rglob("*") if p.is_file())
    assert kept == [
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
        "analysis/confusion.json",
        "analysis/curves.json",
        "csv/metrics.before_resume_1.csv",
        "csv/metrics.csv",
        "stdout.log",
        "summary.json",
    ]
    assert (record / "summary.json").read_text() == (run / "summary.json").read_text()
    # the log keeps 2 evaluations + 2 training rows (steps 3 and 7) of its 10 rows, values as written
    log = pd.read_csv(record / "csv" / "metrics.csv")
    assert log["step"].tolist() == [3, 3, 7, 7] and log["train/iteration"].dropna().tolist() == [4.0, 8.0]
    assert log["target/acc"].dropna().tolist() == [0.575, 0.675]
    # the report reads the record as it reads the run: the same curve, the same accuracy series, the same table
    pd.testing.assert_frame_equal(read_curve(record), read_curve(run))
    assert read_curve(record)["iteration"].tolist() == [4, 8]
    assert read_accuracy(record) == read_accuracy(run) == [(4, 0.575), (8, 0.675)]
    pd.testing.assert_frame_equal(
        aggregate(collect(tmp_path / "records")).drop(columns="run_dirs", errors="ignore"),
        aggregate(collect(tmp_path / "runs")).drop(columns="run_dirs", errors="ignore"),
    )


def test_an_unfinished_run_has_no_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    (run / "csv").mkdir(parents=True)
    with pytest.raises(KeepError, match="not a finished run"):
        keep_record(run, tmp_path / "record")
    assert not (tmp_path / "record").exists()
    with pytest.raises(SystemExit, match=r"^error: .*run is not a finished run \(no readable summary.json"):
        main([str(run), str(tmp_path / "record")])
