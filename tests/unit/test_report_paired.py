"""Paired differences over seeds (hand-computed t intervals) and learning curves read from CSV logs."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from tests.unit.test_report import fake_run
from uda.report import collect, curves, main
from uda.report.curves import plot_learning_curves, read_curve
from uda.report.paired import (
    Interval,
    PairedDifference,
    paired_differences,
    paired_frame,
    paired_interval,
    paired_markdown,
    t_975,
)
from uda.report.table import aggregate


def test_t_quantiles_match_the_printed_table(monkeypatch) -> None:
    # Student's t, two-sided 95 %: the standard table's values (scipy when installed)
    for df, t in ((1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042)):
        assert t_975(df) == pytest.approx(t, abs=1e-3)
    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # as if scipy were not installed: the table
    assert (t_975(2), t_975(4)) == (4.303, 2.776)
    assert t_975(35) == 2.042 and t_975(59) == 2.021 and t_975(500) == 1.980  # the next smaller df of the table
    assert (t_975(40), t_975(60), t_975(120)) == (2.021, 2.000, 1.980)  # each row's own df reads that row
    with pytest.raises(ValueError, match="at least one degree of freedom"):
        t_975(0)


def test_paired_interval_by_hand() -> None:
    # d = 2, 1, 3: mean 2, std 1, half-width t(2) / sqrt(3) = 4.303 / 1.7320508 = 2.48434
    unresolved = paired_interval([2.0, 1.0, 3.0])
    assert (unresolved.n, unresolved.mean, unresolved.std) == (3, 2.0, 1.0)
    assert unresolved.low == pytest.approx(2.0 - 2.48434, abs=1e-3)  # the table rounds t to 3 decimals
    assert unresolved.high == pytest.approx(2.0 + 2.48434, abs=1e-3)
    assert not unresolved.resolved
    # d = 1, 1.2, .8, 1, 1: mean 1, variance (.04 + .04) / 4 = .02, half-width 2.776 * sqrt(.02 / 5) = .17557
    resolved = paired_interval([1.0, 1.2, 0.8, 1.0, 1.0])
    assert resolved.std == pytest.approx(math.sqrt(0.02))
    assert (resolved.low, resolved.high) == (pytest.approx(0.82443, abs=1e-4), pytest.approx(1.17557, abs=1e-4))
    assert resolved.resolved
    single = paired_interval([0.5])
    assert single.n == 1 and single.mean == 0.5 and not single.resolved
    assert all(math.isnan(x) for x in (single.std, single.low, single.high))
    empty = paired_interval([])
    assert empty.n == 0 and all(math.isnan(x) for x in (empty.mean, empty.std, empty.low, empty.high))


def test_paired_section_is_a_markdown_table_with_signed_points_and_dashes_for_missing_intervals() -> None:
    """The section exactly as a reader sees it: title, how it is computed, one row per comparison; the mean is
    signed, the std is not, and a single common seed has no std and no interval (a dash, not 'nan')."""
    nan = float("nan")
    differences = [
        PairedDifference(
            "digits",
            "fonts→mnist",
            "cdan + gh",
            "cdan + none",
            (0, 1, 2, 3, 4),
            Interval(5, -1.0, 0.1414, -1.17557, -0.82443),
        ),
        PairedDifference("digits", "fonts→mnist", "cdan + ghpp", "cdan + none", (2,), Interval(1, 0.5, nan, nan, nan)),
    ]
    assert paired_markdown(differences, "source_val") == (
        "## Paired differences over seeds\n\n"
        "Target accuracy of each method minus its reference on the same seeds (model selection: `source_val`), "
        "in points: mean, sample std and Student's paired 95 % t interval (mean ± t_0.975,n−1 · std/√n). "
        "A difference is called real only when its interval excludes 0.\n\n"
        "| task | method | minus | n | seeds | mean diff | std | 95 % interval | verdict |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        "| fonts→mnist | cdan + gh | cdan + none | 5 | 0,1,2,3,4 | -1.00 | 0.14 | [-1.18, -0.82] | real: lower |\n"
        "| fonts→mnist | cdan + ghpp | cdan + none | 1 | 2 | +0.50 | – | – | no interval (fewer than 2 common seeds) |"
    )


def _study(root: Path) -> None:
    """cdan none/gh over seeds 0-2 (+ a gh seed 3 without a none partner), ghpp on 5 seeds, source_only."""
    for seed, (none, gh) in enumerate(((0.90, 0.92), (0.92, 0.93), (0.94, 0.97))):
        fake_run(root, f"cdan/none/{seed}", baseline="cdan", harmonizer="none", seed=seed, target_acc_last=none)
        fake_run(root, f"cdan/gh/{seed}", baseline="cdan", harmonizer="gh", seed=seed, target_acc_last=gh)
    fake_run(root, "cdan/gh/3", baseline="cdan", harmonizer="gh", seed=3, target_acc_last=0.5)
    for seed, acc in enumerate((0.80, 0.81, 0.82)):
        fake_run(root, f"so/{seed}", baseline="source_only", harmonizer="none (no-op)", seed=seed, target_acc_last=acc)


def test_each_harmonizer_against_none_on_common_seeds(tmp_path: Path) -> None:
    _study(tmp_path)
    differences = {(d.method, d.reference): d for d in paired_differences(collect(tmp_path), "last")}
    gh = differences[("cdan + gh", "cdan + none")]
    assert gh.seeds == (0, 1, 2)  # seed 3 has no none run
    assert gh.interval.mean == pytest.approx(2.0) and gh.interval.std == pytest.approx(1.0)
    assert gh.verdict == "not resolved (interval includes 0)"
    # adaptation against source_only: d = 10, 11, 12 -> mean 11, std 1, interval 11 ± 2.484: real
    adaptation = differences[("cdan + none", "source_only")]
    assert adaptation.interval.mean == pytest.approx(11.0) and adaptation.verdict == "real: higher"
    assert adaptation.interval.low == pytest.approx(11.0 - 2.48434, abs=1e-3)
    assert set(differences) == {("cdan + gh", "cdan + none"), ("cdan + none", "source_only")}


def test_runs_of_different_lengths_are_never_paired_and_get_their_own_rows(tmp_path: Path) -> None:
    """A study extended part-way holds cdan at 5000 and at 10000 iterations for the same seeds. Each length is
    its own comparison (by hand: gh − none at 5000, d = 1, 2, 0 -> mean 1, std 1; at 10000, d = 2, 1, 3 ->
    mean 2, std 1), both lengths are compared with the longest source-only runs (5000; a lone 2000-iteration
    source-only run of seed 0 is left out: d = 10, 11, 12 and 20, 21, 22), and the table has one row per
    length, named by the setting in which they differ. Pooling the lengths would average 0.80 with 0.90."""
    root = tmp_path / "runs"
    for seed in range(3):
        for iterations, none, gh in ((5000, 0.80, (0.81, 0.84, 0.84)), (10000, 0.90, (0.92, 0.93, 0.97))):
            none_acc = none + 0.02 * seed
            common = {"baseline": "cdan", "seed": seed, "iterations": iterations}
            fake_run(root, f"cdan/none/{iterations}/{seed}", harmonizer="none", target_acc_last=none_acc, **common)
            fake_run(root, f"cdan/gh/{iterations}/{seed}", harmonizer="gh", target_acc_last=gh[seed], **common)
        so = {"baseline": "source_only", "harmonizer": "none (no-op)", "seed": seed, "iterations": 5000}
        fake_run(root, f"so/{seed}", target_acc_last=0.70 + 0.01 * seed, **so)
    fake_run(root, "so/short", **{**so, "seed": 0, "iterations": 2000}, target_acc_last=0.10)
    runs = collect(root)
    differences = {(d.method, d.reference): d for d in paired_differences(runs, "last")}
    assert set(differences) == {
        ("cdan (5000 it) + gh", "cdan (5000 it) + none"),
        ("cdan (10000 it) + gh", "cdan (10000 it) + none"),
        ("cdan (5000 it) + none", "source_only (5000 it)"),
        ("cdan (10000 it) + none", "source_only (5000 it)"),
    }
    for (method, reference), (mean, std) in {
        ("cdan (5000 it) + gh", "cdan (5000 it) + none"): (1.0, 1.0),
        ("cdan (10000 it) + gh", "cdan (10000 it) + none"): (2.0, 1.0),
        ("cdan (5000 it) + none", "source_only (5000 it)"): (11.0, 1.0),
        ("cdan (10000 it) + none", "source_only (5000 it)"): (21.0, 1.0),
    }.items():
        interval = differences[(method, reference)].interval
        assert differences[(method, reference)].seeds == (0, 1, 2)
        assert (interval.mean, interval.std) == (pytest.approx(mean), pytest.approx(std)), method
    table = aggregate(runs, "last")
    none_rows = table[(table["baseline"] == "cdan") & (table["harmonizer"] == "none")]
    assert sorted(zip(none_rows["settings"], none_rows["acc_mean"], strict=True)) == [
        ("iterations=10000", pytest.approx(92.0)),
        ("iterations=5000", pytest.approx(82.0)),
    ]


def test_paired_frame_by_hand_with_seeds_in_numeric_order_and_a_run_without_the_accuracy(tmp_path: Path) -> None:
    """The paired.csv rows written out by hand for seeds 2 and 10 (listed in that order, as the results table
    lists them). cdan + gh minus cdan + none: d = 1, 3 -> mean 2, std √2, half-width t(1) · √2 / √2 = t(1);
    cdan + none minus source_only: d = 10, 11 -> mean 10.5, std √0.5, half-width t(1) · √0.5 / √2 = t(1) / 2.
    A gh run of seed 5 without a last accuracy counts nowhere, and source_only (itself run with ``none``) is not
    compared with itself. The default selection is ``last``."""
    root = tmp_path / "runs"
    for seed, none, gh, source in ((2, 0.90, 0.91, 0.80), (10, 0.92, 0.95, 0.81)):
        fake_run(root, f"none{seed}", harmonizer="none", seed=seed, target_acc_last=none)
        fake_run(root, f"gh{seed}", harmonizer="gh", seed=seed, target_acc_last=gh)
        fake_run(root, f"so{seed}", baseline="source_only", harmonizer="none", seed=seed, target_acc_last=source)
    fake_run(root, "gh5", harmonizer="gh", seed=5)
    summary = json.loads((root / "gh5" / "summary.json").read_text())
    (root / "gh5" / "summary.json").write_text(json.dumps({**summary, "target_acc_last": None}))
    frame = paired_frame(paired_differences(collect(root)), "last")
    t1 = 12.7062047  # t_0.975 with 1 degree of freedom
    common = {"dataset": "digits", "task": "mnist→usps", "selection": "last", "n": 2, "seeds": "2,10"}
    expected = [
        {"method": "cdan + gh", "reference": "cdan + none", "mean_diff": 2.0, "std_diff": math.sqrt(2.0)},
        {"method": "cdan + none", "reference": "source_only", "mean_diff": 10.5, "std_diff": math.sqrt(0.5)},
    ]
    expected[0].update(ci95_low=2.0 - t1, ci95_high=2.0 + t1, verdict="not resolved (interval includes 0)")
    expected[1].update(ci95_low=10.5 - t1 / 2, ci95_high=10.5 + t1 / 2, verdict="real: higher")
    assert list(frame.columns) == [
        "dataset", "task", "method", "reference", "selection", "n", "seeds",
        "mean_diff", "std_diff", "ci95_low", "ci95_high", "verdict",
    ]  # fmt: skip
    assert len(frame) == len(expected)
    for (_, row), want in zip(frame.iterrows(), expected, strict=True):
        for column, value in {**common, **want}.items():
            assert row[column] == (pytest.approx(value, abs=1e-4) if isinstance(value, float) else value), column


def test_report_ends_with_the_paired_section_and_writes_paired_csv(tmp_path: Path, capsys) -> None:
    _study(tmp_path / "runs")
    main([str(tmp_path / "runs"), "--out", str(tmp_path / "report")])
    out = capsys.readouterr().out
    section = out[out.index("## Paired differences over seeds") :]
    assert (
        "| mnist→usps | cdan + gh | cdan + none | 3 | 0,1,2 | +2.00 | 1.00 | [-0.48, +4.48] | not resolved" in section
    )
    assert (
        "| mnist→usps | cdan + none | source_only | 3 | 0,1,2 | +11.00 | 1.00 | [+8.52, +13.48] | real: higher"
        in section
    )
    paired = pd.read_csv(tmp_path / "report" / "paired.csv")
    assert list(paired["method"]) == ["cdan + gh", "cdan + none"] and set(paired["selection"]) == {"last"}
    assert paired["ci95_high"].iloc[0] == pytest.approx(4.48434, abs=1e-3)


def _metrics(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["epoch", "step", "target/acc", "train/iteration"]
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)


def test_learning_curve_joins_evaluations_to_iterations(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "cdan"
    fake_run(tmp_path / "runs", "cdan", harmonizer="none")
    # Lightning's CSV rows: training rows (step, train/iteration), evaluation rows (epoch, step, target/acc)
    train = [{"step": s, "train/iteration": s + 1} for s in range(6)]
    evals = [{"epoch": 0, "step": 2, "target/acc": 0.5}, {"epoch": 1, "step": 5, "target/acc": 0.7}]
    _metrics(run / "csv" / "metrics.csv", train + evals)
    # the interrupted attempt of a resumed run evaluated iteration 3 too; the resumed value wins
    _metrics(run / "csv" / "metrics.before_resume_1.csv", train[:3] + [{"epoch": 0, "step": 2, "target/acc": 0.4}])
    curve = read_curve(run)
    assert curve["iteration"].tolist() == [3, 6] and curve["target_acc"].tolist() == [0.5, 0.7]
    assert read_curve(tmp_path / "nowhere") is None
    runs = collect(tmp_path / "runs")
    assert plot_learning_curves(runs, tmp_path / "runs", tmp_path / "curves.png") is None
    with Image.open(tmp_path / "curves.png") as image:  # one 8 x 3.6 inch panel at 120 dpi
        assert image.format == "PNG" and image.size == (960, 432)
    fake_run(tmp_path / "bare", "a")
    assert plot_learning_curves(collect(tmp_path / "bare"), tmp_path / "bare", tmp_path / "x.png") == (
        "no learning curves (no run has a CSV log with target/acc: run with logger=csv)"
    )


def test_learning_curve_skips_logs_of_attempts_that_left_no_evaluation(tmp_path: Path) -> None:
    """A resumed run's earlier attempts can leave a log with nothing to read: an empty file (killed before its
    first write), a log without the needed columns, a log killed before its first evaluation. Each is skipped
    and the curve comes from the log that has evaluations, whose only columns are the three needed ones; the
    curve has exactly the columns ``iteration`` (integers) and ``target_acc``, indexed from 0. A run whose log
    has evaluations but no training iteration to place them at has no curve."""
    run = tmp_path / "run"
    (run / "csv").mkdir(parents=True)
    (run / "csv" / "metrics.before_resume_1.csv").write_text("")
    pd.DataFrame({"step": [0, 1], "train/loss": [1.0, 0.5]}).to_csv(run / "csv" / "metrics.before_resume_2.csv")
    _metrics(run / "csv" / "metrics.before_resume_3.csv", [{"step": s, "train/iteration": s + 1} for s in range(3)])
    log = {
        "step": [0, 1, 1, 3, 3],
        "train/iteration": [1, 2, None, 4, None],
        "target/acc": [None, None, 0.6, None, 0.8],
    }
    pd.DataFrame(log).to_csv(run / "csv" / "metrics.csv", index=False)
    curve = read_curve(run)
    assert list(curve.columns) == ["iteration", "target_acc"] and curve.index.tolist() == [0, 1]
    assert curve["iteration"].dtype.kind == "i" and curve["iteration"].tolist() == [2, 4]
    assert curve["target_acc"].tolist() == [0.6, 0.8]
    no_iterations = tmp_path / "no_iterations"
    _metrics(no_iterations / "csv" / "metrics.csv", [{"epoch": 0, "step": 2, "target/acc": 0.5}])
    assert read_curve(no_iterations) is None


def test_learning_curves_plot_the_lowest_none_seed_of_each_baseline_one_panel_per_task(tmp_path: Path) -> None:
    """Of a baseline's runs the plot draws the ``none`` harmonizer's lowest seed, even when another harmonizer has
    a lower one, and still draws the other baselines after skipping a baseline's further runs. The SVG holds one
    axes per task (two here), each titled and labelled, its legend naming the lines, on an 8 x 3.6 inch panel
    per task (576 x 518.4 pt for two)."""
    root = tmp_path / "runs"
    runs = (("a", "cdan", "gh", 0), ("b", "cdan", "none", 1), ("c", "cdan", "none", 0), ("d", "dann", "none", 1))
    for name, baseline, harmonizer, seed in runs:
        fake_run(root, name, baseline=baseline, harmonizer=harmonizer, seed=seed)
        _metrics(root / name / "csv" / "metrics.csv", [{"step": 0, "train/iteration": 1, "target/acc": 0.5}])
    fake_run(root, "e", task="usps→mnist", harmonizer="none")
    _metrics(root / "e" / "csv" / "metrics.csv", [{"step": 0, "train/iteration": 1, "target/acc": 0.6}])
    assert plot_learning_curves(collect(root), root, tmp_path / "curves.svg") is None
    svg = (tmp_path / "curves.svg").read_text()
    assert 'width="576pt" height="518.4pt"' in svg
    assert svg.count('<g id="axes_') == 2
    for text in (
        "cdan + none, seed 0",
        "dann + none, seed 1",
        "digits mnist→usps: target accuracy during training (one seed per baseline)",
        "digits usps→mnist: target accuracy during training (one seed per baseline)",
        "training iteration",
        "target test accuracy (%)",
    ):
        assert f"<!-- {text} -->" in svg, text
    assert "cdan + gh" not in svg and "cdan + none, seed 1" not in svg


@pytest.fixture
def made(monkeypatch) -> list:
    """The figures the curves module makes, recorded as they are made (so a test reads the saved figure)."""
    figures: list = []

    class RecordedFigure(curves.Figure):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            figures.append(self)

    monkeypatch.setattr(curves, "Figure", RecordedFigure)
    return figures


def test_learning_curve_lines_are_accuracy_in_percent_over_iterations(tmp_path: Path, made: list) -> None:
    """The drawn line holds the evaluations as (iteration, 100 · accuracy) points with a marker on each, read
    off the figure that is saved (the module's Figure, recorded as it is made). With three tasks stacked, no
    panel's title, labels or ticks run into the next panel's (their drawn extents do not overlap)."""
    root = tmp_path / "runs"
    fake_run(root, "a", harmonizer="none")
    train = [{"step": s, "train/iteration": s + 1} for s in range(4)]
    evals = [{"step": 1, "target/acc": 0.5}, {"step": 3, "target/acc": 0.75}]
    _metrics(root / "a" / "csv" / "metrics.csv", train + evals)
    for task in ("svhn→mnist", "usps→mnist"):
        fake_run(root, task, task=task, harmonizer="none")
        _metrics(root / task / "csv" / "metrics.csv", train + evals)
    assert plot_learning_curves(collect(root), root, tmp_path / "curves.png") is None
    renderer = FigureCanvasAgg(made[0]).get_renderer()
    extents = [ax.get_tightbbox(renderer) for ax in made[0].axes]
    assert len(extents) == 3 and not any(a.overlaps(b) for a, b in zip(extents, extents[1:], strict=False))
    (line,) = made[0].axes[0].get_lines()
    assert line.get_xydata().tolist() == [[2.0, 50.0], [4.0, 75.0]]
    assert line.get_marker() == "o" and line.get_linestyle() == "-"


def test_learning_curves_give_a_baseline_the_same_colour_in_every_panel(tmp_path: Path, made: list) -> None:
    """A baseline missing from one task's panel does not shift the colours of the others: mcd is drawn in the
    same colour on both tasks though the second task has no dann line (colours assigned over all panels)."""
    root = tmp_path / "runs"
    cells = (
        ("mnist→usps", "cdan"),
        ("mnist→usps", "dann"),
        ("mnist→usps", "mcd"),
        ("usps→mnist", "cdan"),
        ("usps→mnist", "mcd"),
    )
    for task, baseline in cells:
        name = f"{task}_{baseline}"
        fake_run(root, name, task=task, baseline=baseline, harmonizer="none")
        _metrics(root / name / "csv" / "metrics.csv", [{"step": 0, "train/iteration": 1, "target/acc": 0.5}])
    assert plot_learning_curves(collect(root), root, tmp_path / "curves.png") is None
    colours = [{line.get_label().split(" + ")[0]: line.get_color() for line in ax.get_lines()} for ax in made[0].axes]
    assert set(colours[0]) == {"cdan", "dann", "mcd"} and set(colours[1]) == {"cdan", "mcd"}
    assert len(set(colours[0].values())) == 3
    assert colours[1] == {"cdan": colours[0]["cdan"], "mcd": colours[0]["mcd"]}
