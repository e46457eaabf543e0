"""The numbers behind the analysis figures, on hand-built runs and tensors, and the figures CLI on fake runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from uda.report.figures import (
    RunData,
    error_curve,
    find_runs,
    group_runs,
    main,
    mean_std,
    read_accuracy,
    row_percent,
    summed_confusion,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEADER = "epoch,step,target/acc,train/cls_loss,train/iteration\n"


def fake_run(
    root: Path,
    name: str,
    accs: list[float],
    seed: int = 0,
    harmonizer: str = "none",
    eval_every: int | None = 250,
    analysis: dict | None = None,
) -> Path:
    """A finished run as uda.train writes it: summary.json, .hydra/config.yaml, csv/metrics.csv with one
    training row per evaluation period and one evaluation row (epoch k) per entry of ``accs``."""
    run = root / name
    (run / "csv").mkdir(parents=True)
    summary = {
        "dataset": "offline_digits",
        "task": "mnist→uci",
        "baseline": "cdan",
        "harmonizer": harmonizer,
        "seed": seed,
        "iterations": 250 * len(accs),
        "target_acc_last": accs[-1],
    }
    (run / "summary.json").write_text(json.dumps(summary))
    if eval_every is not None:
        (run / ".hydra").mkdir()
        (run / ".hydra" / "config.yaml").write_text(f"seed: {seed}\neval_every: {eval_every}\niterations: 500\n")
    rows = [HEADER]
    for epoch, acc in enumerate(accs):
        rows.append(f",{epoch * 250},,2.0,{epoch * 250 + 1}\n")  # a training row: no target/acc
        rows.append(f"{epoch},{epoch * 250 + 249},{acc},,\n")
    (run / "csv" / "metrics.csv").write_text("".join(rows))
    if analysis:
        (run / "analysis").mkdir()
        for filename, content in analysis.items():
            if filename.endswith(".npz"):
                np.savez(run / "analysis" / filename, **content)
            else:
                (run / "analysis" / filename).write_text(json.dumps(content))
    return run


def test_convergence_curve_reads_the_csv_log_and_averages_seeds(tmp_path: Path) -> None:
    fake_run(tmp_path, "none_s0", [0.80, 0.90], seed=0)
    fake_run(tmp_path, "none_s1", [0.70, 0.86], seed=1)
    fake_run(tmp_path, "gh_s0", [0.85, 0.95], seed=0, harmonizer="gh")
    assert read_accuracy(tmp_path / "none_s0") == [(250, 0.80), (500, 0.90)]

    groups = group_runs(find_runs([tmp_path]))
    assert [(g.label, g.seeds) for g in groups] == [("none", [0, 1]), ("gh", [0])]
    none = groups[0]
    assert [pytest.approx(e) for _, e in error_curve(none.runs[0])] == [20.0, 10.0]
    x, mean, std = mean_std([error_curve(r) for r in none.runs])
    # errors (20, 10) and (30, 14): mean (25, 12), sample std (10/√2, 4/√2)
    assert x.tolist() == [250, 500]
    assert np.allclose(mean, [25.0, 12.0])
    assert np.allclose(std, [10 / math.sqrt(2), 4 / math.sqrt(2)])
    x, mean, std = mean_std([error_curve(groups[1].runs[0])])
    assert np.allclose(mean, [15.0, 5.0]) and not std.any()
    assert none.legend() == "none (2 seeds)" and groups[1].legend() == "gh"


def test_curves_of_different_lengths_average_where_all_have_points() -> None:
    x, mean, std = mean_std([[(0, 1.0), (10, 3.0), (20, 5.0)], [(0, 3.0), (10, 5.0)]])
    assert x.tolist() == [0, 10] and mean.tolist() == [2.0, 4.0]
    assert np.allclose(std, [math.sqrt(2), math.sqrt(2)])


def test_eval_period_comes_from_the_summary_without_hydra_config_and_resumed_logs_merge(tmp_path: Path) -> None:
    run = fake_run(tmp_path, "old", [0.5, 0.6, 0.7], eval_every=None)  # iterations 750 / 3 evaluations
    assert read_accuracy(run) == [(250, 0.5), (500, 0.6), (750, 0.7)]
    # a resumed run: the first attempt logged epochs 0-1, the second re-logged epoch 1 and added epoch 2
    resumed = fake_run(tmp_path, "resumed", [0.1, 0.2, 0.3])
    (resumed / "csv" / "metrics.before_resume_0.csv").write_text(HEADER + "0,249,0.1,,\n1,499,0.15,,\n")
    (resumed / "csv" / "metrics.csv").write_text(HEADER + "1,499,0.2,,\n2,749,0.3,,\n")
    assert read_accuracy(resumed) == [(250, 0.1), (500, 0.2), (750, 0.3)]


def test_runs_differing_in_more_than_the_seed_are_not_averaged(tmp_path: Path) -> None:
    a = fake_run(tmp_path, "a", [0.8, 0.9])
    b = fake_run(tmp_path, "b", [0.8, 0.9, 0.95])  # 750 iterations instead of 500
    groups = group_runs(find_runs([a, b]))
    assert sorted(g.label for g in groups) == ["none [iterations=500]", "none [iterations=750]"]


def test_confusion_counts_are_summed_over_seeds_and_row_normalized() -> None:
    def run(seed: int, counts: list[list[int]]) -> RunData:
        return RunData("", "p", "gh", "cdan", {}, seed, [], confusion=np.array(counts))

    runs = [run(0, [[3, 1, 0], [0, 2, 2], [0, 0, 0]]), run(1, [[1, 0, 1], [1, 3, 0], [0, 0, 0]])]
    (group,) = group_runs(runs)
    counts = summed_confusion(group)
    assert counts.tolist() == [[4, 1, 1], [1, 5, 2], [0, 0, 0]]
    assert np.allclose(row_percent(counts), [[400 / 6, 100 / 6, 100 / 6], [12.5, 62.5, 25.0], [0, 0, 0]])
    assert summed_confusion(group_runs([run(0, [[1]])])[0]).tolist() == [[1]]


def test_cli_writes_every_figure_with_analysis_files_and_skips_the_rest_with_a_note(tmp_path, capsys) -> None:
    gen = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 10)
    analysis = {
        "curves.json": {
            "iteration": [0, 250, 500],
            "mmd": [2.0, 1.0, 0.5],
            "j_source": [1.0, 2.0, 3.0],
            "j_target": [0.5, 1.0, 1.5],
        },
        "confusion.json": {
            "iteration": 500,
            "class_names": ["a", "b", "c"],
            "counts": [[5, 1, 0], [0, 6, 0], [1, 0, 5]],
        },
        "features.npz": {
            "source_features": gen.normal(size=(30, 8)).astype(np.float16),
            "source_labels": labels,
            "target_features": gen.normal(size=(30, 8)).astype(np.float16),
            "target_labels": labels,
        },
    }
    fake_run(tmp_path / "runs", "with", [0.8, 0.9], analysis=analysis)
    fake_run(tmp_path / "runs", "without", [0.7, 0.8], seed=1)
    out = tmp_path / "figures"
    main([str(tmp_path / "runs"), "--out", str(out), "--tsne-points", "20"])
    for name in ("convergence.png", "balance.png", "confusion.png", "tsne.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
    assert "2 runs in 1 groups" in capsys.readouterr().err

    only_logs = tmp_path / "only_logs"
    main([str(tmp_path / "runs" / "without"), "--out", str(only_logs)])
    err = capsys.readouterr().err
    assert (only_logs / "convergence.png").is_file() and not (only_logs / "tsne.png").exists()
    assert "skipped the t-SNE figure: no features" in err and "skipped the confusion figure" in err

    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "figures"), "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "no finished run" in capsys.readouterr().err
