"""uda.report turns a directory of fake finished runs into hand-checked tables, CSV values and plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from uda.report import PaperResults, aggregate, collect, main, markdown
from uda.report.paper import paper_harmonizer, paper_task
from uda.report.table import markdown_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_run(root: Path, name: str, **fields) -> None:
    """A finished run as uda.train writes it; target_acc_best defaults to last + 0.02."""
    run = root / name
    run.mkdir(parents=True)
    summary = {
        "dataset": "digits",
        "task": "mnist→usps",
        "baseline": "cdan",
        "harmonizer": "gh",
        "seed": 0,
        "target_acc_last": 0.9,
        "conflict_rate": 0.4,
        "conflict_rate_after": 0.0,
        "sec_per_iter": 0.05,
        "model_selection": {"last": "target_acc_last", "best_target (oracle)": "target_acc_best"},
    }
    summary.update(fields)
    summary.setdefault("target_acc_best", summary["target_acc_last"] + 0.02)
    if "target_acc_source_val" in summary:  # written by uda.train since source_val exists
        summary["model_selection"]["source_val"] = "target_acc_source_val"
        summary["model_selection"]["source_val_measured_on"] = "source test split (held out from training)"
    (run / "summary.json").write_text(json.dumps(summary))


def GHPP(lam: float) -> dict:  # noqa: N802 - reads like the harmonizer it describes
    """The harmonizer keys uda.train writes for GH++ at ``lam``."""
    return {"harmonizer": f"ghpp(lam={lam})", "harmonizer_name": "ghpp", "harmonizer_params": {"lam": lam}}


def failed_run(root: Path, name: str, message: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "error.txt").write_text(message)


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """Digits with three tasks (cdan none x 2 seeds and cdan gh on all; GH++ and DANN on M→U only) and one
    offline-digits run; accuracies chosen so that means, stds and averages are easy to check by hand."""
    root = tmp_path / "study"
    for task, accs in (("mnist→usps", (0.90, 0.94)), ("usps→mnist", (0.96, 0.98)), ("svhn→mnist", (0.80, 0.84))):
        for seed, acc in enumerate(accs):
            extra = {}
            if task == "mnist→usps":  # spread in the conflict and speed columns too
                extra = {"conflict_rate": (0.40, 0.44)[seed], "conflict_rate_after": (0.02, 0.04)[seed]}
                extra["sec_per_iter"] = (0.05, 0.07)[seed]
                if seed == 0:
                    extra["target_acc_source_val"] = 0.91
            fake_run(root, f"none/{task}/{seed}", task=task, harmonizer="none", seed=seed, target_acc_last=acc, **extra)
    for task, acc in (("mnist→usps", 0.93), ("usps→mnist", 0.97), ("svhn→mnist", 0.85)):
        fake_run(root, f"gh/{task}", task=task, harmonizer="gh", target_acc_last=acc)
    fake_run(root, "ghpp05", **GHPP(0.5), target_acc_last=0.95)
    fake_run(root, "ghpp01", **GHPP(0.1), target_acc_last=0.91)
    fake_run(root, "dann", baseline="dann", harmonizer="none", target_acc_last=0.88)
    fake_run(root, "offline", dataset="offline_digits", task="mnist→uci", target_acc_last=0.75)
    return root


DIGITS_LAST = """\
| task | baseline | harmonizer | target acc (last) | paper | conflict before | conflict after | s/iter | seeds |
|---|---|---|---|---|---|---|---|---|
| mnist→usps | dann | none | 88.0 | – | 40.0 | 0.0 | 0.0500 | 0 |
| mnist→usps | cdan | none | 92.0 ± 2.8 | 95.6 | 42.0 ± 2.8 | 3.0 ± 1.4 | 0.0600 ± 0.0141 | 0,1 |
| mnist→usps | cdan | gh | 93.0 | 96.8 | 40.0 | 0.0 | 0.0500 | 0 |
| mnist→usps | cdan | ghpp(lam=0.1) | 91.0 | – | 40.0 | 0.0 | 0.0500 | 0 |
| mnist→usps | cdan | ghpp(lam=0.5) | 95.0 | 96.5 | 40.0 | 0.0 | 0.0500 | 0 |
| svhn→mnist | cdan | none | 82.0 ± 2.8 | 89.2 | 40.0 ± 0.0 | 0.0 ± 0.0 | 0.0500 ± 0.0000 | 0,1 |
| svhn→mnist | cdan | gh | 85.0 | 90.6 | 40.0 | 0.0 | 0.0500 | 0 |
| usps→mnist | cdan | none | 97.0 ± 1.4 | 98.0 | 40.0 ± 0.0 | 0.0 ± 0.0 | 0.0500 ± 0.0000 | 0,1 |
| usps→mnist | cdan | gh | 97.0 | 98.1 | 40.0 | 0.0 | 0.0500 | 0 |
| avg | cdan | none | 90.3 | 94.3 | 40.7 | 1.0 | 0.0533 | mean of 3 tasks |
| avg | cdan | gh | 91.7 | 95.2 | 40.0 | 0.0 | 0.0500 | mean of 3 tasks |"""

OFFLINE_LAST = """\
| task | baseline | harmonizer | target acc (last) | paper | conflict before | conflict after | s/iter | seeds |
|---|---|---|---|---|---|---|---|---|
| mnist→uci | cdan | gh | 75.0 | – | 40.0 | 0.0 | 0.0500 | 0 |"""


def test_markdown_report_mean_std_paper_and_avg_rows(study: Path, capsys) -> None:
    # avg rows: only cdan none/gh have all three tasks; their paper avg is the paper's printed Avg (all its
    # digits tasks); the single-task offline pair gets no avg row and no paper number
    main([str(study)])
    out = capsys.readouterr().out
    sections = out.split("\n\n")
    assert sections[0] == "# Results (model selection: last)"
    assert sections[1].startswith("Model selection: `last` (the model at the end of training).")
    # nothing follows the tables: no failed runs, and every run has target_acc_last
    assert [s.strip() for s in sections[2:]] == ["## digits", DIGITS_LAST, "## offline_digits", OFFLINE_LAST]


def test_csv_holds_mean_std_n_paper_and_selection(study: Path, tmp_path: Path) -> None:
    main([str(study), "--out", str(tmp_path / "report")])
    csv = pd.read_csv(tmp_path / "report" / "results.csv", keep_default_na=False, na_values=[""])
    assert len(csv) == 12 and set(csv["selection"]) == {"last"}
    row = csv[(csv["task"] == "mnist→usps") & (csv["harmonizer"] == "none") & (csv["baseline"] == "cdan")].iloc[0]
    assert (row["kind"], row["harmonizer_name"], row["seeds"]) == ("task", "none", "0,1")
    assert row["acc_mean"] == pytest.approx(92.0)
    assert row["acc_std"] == pytest.approx(math.sqrt(8.0))  # sample std of 90 and 94
    assert row["acc_n"] == 2 and row["paper_acc"] == pytest.approx(95.6)
    assert row["conflict_after_mean"] == pytest.approx(3.0) and row["sec_per_iter_std"] == pytest.approx(0.02 / 2**0.5)
    avg = csv[(csv["kind"] == "avg") & (csv["harmonizer"] == "none")].iloc[0]
    assert avg["acc_mean"] == pytest.approx((92.0 + 97.0 + 82.0) / 3) and avg["acc_n"] == 3
    assert math.isnan(avg["acc_std"]) and avg["paper_acc"] == pytest.approx(94.3)
    ghpp = csv[csv["harmonizer"] == "ghpp(lam=0.1)"].iloc[0]
    assert ghpp["lam"] == pytest.approx(0.1) and math.isnan(ghpp["paper_acc"])


@pytest.mark.parametrize(
    ("selection", "cdan_none_mu", "avg_none", "note"),
    [
        ("last", "92.0 ± 2.8", "| avg | cdan | none | 90.3 |", None),
        ("best_target", "94.0 ± 2.8", "| avg | cdan | none | 92.3 |", None),
        # source_val exists for one seed of one task: that cell says so, and no avg can be formed
        ("source_val", "91.0 (n=1)", None, "Note: 12 of 13 finished runs have no `target_acc_source_val`"),
    ],
)
def test_each_model_selection(
    study: Path, selection: str, cdan_none_mu: str, avg_none: str | None, note: str | None
) -> None:
    runs = collect(study)
    table = aggregate(runs, selection)
    assert set(table["selection"]) == {selection}  # the CSV's selection column
    report = markdown(table, runs)
    assert report.startswith(f"# Results (model selection: {selection})")
    lines = report.splitlines()
    assert f"| task | baseline | harmonizer | target acc ({selection}) | paper |" in report
    assert f"| mnist→usps | cdan | none | {cdan_none_mu} | 95.6 |" in report
    if avg_none:
        assert any(line.startswith(avg_none) for line in lines)
    else:
        assert not any(line.startswith("| avg |") for line in lines)
        assert "| usps→mnist | cdan | gh | – | 98.1 |" in report
    assert (note in report) if note else ("Note:" not in report)
    split_named = "Source accuracy for source_val measured on: source test split (held out from training)."
    assert (split_named in lines[2]) == (selection == "source_val")


def test_older_runs_without_new_keys_show_dashes(tmp_path: Path) -> None:
    old = {"dataset": "office31", "task": "amazon→webcam", "baseline": "cdan", "harmonizer": "ghpp(lam=0.5)"}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "summary.json").write_text(json.dumps({**old, "seed": 3, "target_acc_last": 0.9}))
    (tmp_path / "nulls").mkdir()  # a run that monitored nothing writes nulls
    nulls = {**old, "seed": 4, "target_acc_last": 0.8, "conflict_rate": None, "sec_per_iter": None}
    (tmp_path / "nulls" / "summary.json").write_text(json.dumps(nulls))
    runs = collect(tmp_path)
    for selection, acc in (("last", "85.0 ± 7.1"), ("best_target", "–"), ("source_val", "–")):
        table = aggregate(runs, selection)
        assert markdown_table(table).splitlines()[2] == (
            # without harmonizer_name/params the label stays whole and no paper number is matched to it
            f"| amazon→webcam | cdan | ghpp(lam=0.5) | {acc} | – | – | – | – | 3,4 |"
        )


def test_failed_runs_are_counted_and_listed_under_the_table(study: Path, capsys) -> None:
    failed_run(study, "sweep/7_baseline=mcd", "dataset.root=/data/office31 is missing: download it first.\nmore")
    failed_run(study, "sweep/2_baseline=cdan", "")
    (study / "cut").mkdir()
    (study / "cut" / "summary.json").write_text('{"dataset": ')  # killed while writing
    # an attempt that failed and was then resumed to the end: finished, not failed
    (study / "none" / "mnist→usps" / "0" / "error.txt").write_text("CUDA out of memory")
    main([str(study)])
    out = capsys.readouterr().out
    assert out.rstrip().endswith(
        "Failed runs: 3 (error.txt and no summary.json; not averaged in):\n"
        "- `cut`: summary.json is not valid JSON\n"
        "- `sweep/2_baseline=cdan`: error.txt is empty\n"
        "- `sweep/7_baseline=mcd`: dataset.root=/data/office31 is missing: download it first."
    )
    assert DIGITS_LAST in out  # the failed runs change no row


def test_a_failed_runs_message_in_another_encoding_is_listed_not_fatal(study: Path, capsys) -> None:
    """error.txt written by a tool in Latin-1 (or cut mid-character) is not valid UTF-8: the report still lists
    the run, with the undecodable byte shown as U+FFFD, instead of stopping on a UnicodeDecodeError."""
    (study / "latin").mkdir()
    (study / "latin" / "error.txt").write_bytes(b"dataset.root=/data/caf\xe9 is missing\n")
    main([str(study)])
    assert "- `latin`: dataset.root=/data/caf\ufffd is missing" in capsys.readouterr().out


def _lambda_sweep(root: Path) -> None:
    for lam, accs in ((0.1, (0.90, 0.92)), (0.5, (0.94, 0.96)), (0.9, (0.91, 0.91))):
        for seed, acc in enumerate(accs):
            # new runs name λ in harmonizer_params; the label spells it out
            params = {"harmonizer": "ghpp", "harmonizer_params": {"lam": lam}, "seed": seed}
            fake_run(root, f"ghpp{lam}_{seed}", target_acc_last=acc, conflict_rate_after=0.05, **params)
    fake_run(root, "none", harmonizer="none", target_acc_last=0.89, conflict_rate=0.42, conflict_rate_after=0.42)
    fake_run(root, "gh", harmonizer="gh", target_acc_last=0.93)


def test_plots_are_valid_png_files_when_data_exist(tmp_path: Path, capsys) -> None:
    _lambda_sweep(tmp_path / "runs")
    out = tmp_path / "report"
    main([str(tmp_path / "runs"), "--out", str(out)])
    assert "| mnist→usps | cdan | ghpp(lam=0.5) | 95.0 ± 1.4 | 96.5 |" in capsys.readouterr().out
    for name in ("lambda_sensitivity.png", "conflict_rates.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width > 100 and image.height > 100
    results = (out / "results.md").read_text()
    assert "![λ sensitivity](lambda_sensitivity.png)" in results and "![conflict rates](conflict_rates.png)" in results


def test_plots_without_data_are_skipped_with_a_note(tmp_path: Path, capsys) -> None:
    # one λ only and no monitored conflicts: neither plot has data
    fake_run(tmp_path / "runs", "a", **GHPP(0.5), conflict_rate=None, conflict_rate_after=None)
    out = tmp_path / "report"
    out.mkdir()
    (out / "conflict_rates.png").write_bytes(PNG_MAGIC)  # a stale figure from an earlier report
    main([str(tmp_path / "runs"), "--out", str(out)])
    err = capsys.readouterr().err.splitlines()
    assert "skipped the λ sensitivity plot: no GH++ λ sweep" in err[2]
    assert err[3] == "skipped the conflict rates plot: no conflict rates (no run monitored gradient conflicts)"
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "results.md"]
    assert "conflict rates plot skipped: no conflict rates" in (out / "results.md").read_text()


@pytest.mark.parametrize("failed", [0, 2])
def test_directory_without_finished_runs_exits_2_with_one_sentence(tmp_path: Path, capsys, failed: int) -> None:
    for i in range(failed):
        failed_run(tmp_path, f"run{i}", "boom")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    why = " (2 failed runs: see their error.txt)" if failed else ""
    assert captured.err == (
        f"error: no finished run (summary.json) under {tmp_path}{why}: point uda.report at a directory of finished "
        "runs\n"
    )


def test_missing_directory_exits_2(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nope")])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.endswith("is not a directory: point uda.report at the output directory of a study")


def test_paper_names_and_numbers(tmp_path: Path) -> None:
    assert paper_task("office31", "amazon→webcam") == "A->W"
    assert paper_task("officehome", "Real_World→Art") == "Rw->Ar"
    assert paper_task("officehome", "Ar→Cl") == "Ar->Cl"  # short names are accepted too
    assert paper_task("visda2017", "Synthetic→Real") == "Syn->Real"
    assert paper_task("offline_digits", "mnist→uci") is None
    assert paper_task("office31", "amazon→caltech") is None  # a domain the paper's dataset does not have
    assert [paper_harmonizer("ghpp", lam) for lam in (0.5, None, 0.3)] == ["ghpp", "ghpp", None]
    assert paper_harmonizer("pcgrad", None) is None

    paper = PaperResults.load()
    assert paper.accuracy("office31", "amazon→webcam", "cdan", "gh", None) == 94.7
    assert paper.accuracy("officehome", "Art→Clipart", "cdan", "ghpp", 0.5) == 54.3
    assert paper.accuracy("visda2017", "Synthetic→Real", "cdan", "none", None) == 73.9
    assert paper.accuracy("office31", "amazon→webcam", "dann", "none", None) is None
    # a subset of the paper's tasks: the mean of its per-task numbers (95.6 and 98.0), not its printed Avg
    assert paper.average("digits", ["mnist→usps", "usps→mnist"], "cdan", "none", None) == pytest.approx(96.8)
    digits = ["mnist→usps", "usps→mnist", "svhn→mnist"]
    assert paper.average("digits", digits, "cdan", "none", None) == 94.3
    assert paper.average("digits", digits, "dann", "none", None) is None  # the paper has no DANN row at all
    assert paper.average("digits", digits, "cdan", "ghpp", 0.3) is None  # the paper's GH++ is λ = 0.5 only
    domainnet = ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"]
    all_pairs = [f"{s}→{t}" for s in domainnet for t in domainnet if s != t]
    assert paper.average("domainnet", all_pairs, "cdan", "ghpp", 0.5) == 31.4  # the printed 30-task mean
    assert paper.average("domainnet", all_pairs[:2], "cdan", "ghpp", 0.5) is None
    # a printed mean that states its task count ("avg3") without per-task numbers, read from a file
    made_up = tmp_path / "paper.csv"
    made_up.write_text("dataset,task,baseline,harmonizer,accuracy\ndomainnet,avg3,cdan,none,40.0\n")
    paper = PaperResults.load(made_up)
    assert paper.average("domainnet", all_pairs[:3], "cdan", "none", None) == 40.0
    assert paper.average("domainnet", all_pairs[:2], "cdan", "none", None) is None


SOURCE_VAL_CAPTION = (
    "Model selection: `source_val` (the evaluation with the best accuracy on held-out source data (no target labels "
    "used)). Target accuracy and conflict rates in %, mean ± sample std over seeds. conflict before: monitored steps "
    "whose loss gradients meet at an obtuse angle; conflict after: steps whose applied (harmonized) update still "
    "opposes one of them. (no-op): the harmonizer never acted in these runs (e.g. the baseline has one loss; each "
    "run's summary.json says why). s/iter: seconds per training iteration. paper: the accuracy reported in the GH "
    "paper (TPAMI) for the same task, baseline and harmonizer (GH++ at its λ = 0.5). avg: mean over the dataset's "
    "tasks, for methods with a result on all of them. Source accuracy for source_val measured on: 10 % of source "
    "train; source test split (held out from training)."
)

VARIANTS_REPORT = f"""\
# Results (model selection: source_val)

{SOURCE_VAL_CAPTION}

## digits

| task | baseline | harmonizer | target acc (source_val) | paper | conflict before | conflict after | s/iter | seeds |
|---|---|---|---|---|---|---|---|---|
| mnist→usps | dann | gh | 90.0 | – | 40.0 | 0.0 | 0.0500 | 0 |
| mnist→usps | cdan | none | 80.0 | 50.0 | 40.0 | 0.0 | 0.0500 | 0 |

## office31

| task | baseline | harmonizer | settings (where runs differ) | target acc (source_val) | paper | conflict before \
| conflict after | s/iter | seeds |
|---|---|---|---|---|---|---|---|---|---|
| amazon→webcam | cdan | ghpp | engine.batched=True; engine.clip=2 | 72.0 | 60.0 | 40.0 | 0.0 | 0.0500 | 0 |
| amazon→webcam | cdan | ghpp | engine.batched=–; engine.clip=1 | 70.0 (n=1) | 60.0 | 40.0 ± 0.0 | 0.0 ± 0.0 \
| 0.0500 ± 0.0000 | 0,1 |
| dslr→webcam | cdan | ghpp | – | 80.0 | 70.0 | 40.0 | 0.0 | 0.0500 | 0 |
| avg | cdan | ghpp | engine.batched=–; engine.clip=1 | 75.0 | 65.0 | 40.0 | 0.0 | 0.0500 | mean of 2 tasks |

Note: 1 of 6 finished runs have no `target_acc_source_val` (written before it existed); their target acc is left \
out (n = runs averaged, – = none)."""


def test_whole_report_with_variants_two_splits_a_two_task_average_and_a_given_paper(tmp_path: Path) -> None:
    """The complete source_val report, written out by hand for six runs.

    digits has one task (no avg row) and comes first, office31 has two (an avg row: (70 + 80) / 2, paper
    (60 + 70) / 2 from the paper table passed in, not the packaged one). On amazon→webcam the same label
    ``ghpp`` ran in two engine variants, so those rows name both differing settings ("–" where a run lacks
    one) and the avg row of the variant that ran on both tasks names them too. One run predates source_val (the
    n=1 cell and the note); one run names its source split in its results, the others in model_selection: both
    splits are listed in the caption.
    """
    paper = PaperResults.parse(
        "# a paper table made up for this test\n"
        "dataset,task,baseline,harmonizer,accuracy\n"
        "digits,M->U,cdan,none,50.0\n"
        "office31,A->W,cdan,ghpp,60.0\n"
        "office31,D->W,cdan,ghpp,70.0\n"
    )
    root = tmp_path / "runs"
    fake_run(root, "a/cdan", harmonizer="none", target_acc_source_val=0.80)
    fake_run(root, "a/dann", baseline="dann", target_acc_source_val=0.90, source_val_split="10 % of source train")
    office = {"dataset": "office31", "harmonizer": "ghpp"}  # an older GH++ run: no λ recorded
    aw, dw = {**office, "task": "amazon→webcam"}, {**office, "task": "dslr→webcam"}
    fake_run(root, "b/aw1", **aw, engine={"clip": 1}, target_acc_source_val=0.70)
    fake_run(root, "b/aw2", **aw, engine={"clip": 2, "batched": True}, target_acc_source_val=0.72)
    fake_run(root, "b/aw3", **aw, engine={"clip": 1}, seed=1)  # written before source_val existed
    fake_run(root, "b/dw1", **dw, engine={"clip": 1}, target_acc_source_val=0.80)
    runs = collect(root)
    assert markdown(aggregate(runs, "source_val", paper), runs) == VARIANTS_REPORT


def test_rows_sort_by_baseline_then_harmonizer_then_lambda_by_value(tmp_path: Path) -> None:
    """Row order on one task: the papers' baseline order (source_only, DANN, CDAN) before the harmonizer order
    (none before GH), then GH++ by λ as a number (a run without λ first), although the label
    ``ghpp(lam=1e-05)`` sorts after ``ghpp(lam=0.5)`` as text. A harmonizer that changed nothing says so in its
    label. The default selection is ``last``; an empty paper table gives no paper number; an unknown selection
    is refused naming the valid ones."""
    root = tmp_path / "runs"
    fake_run(root, "0", baseline="source_only", harmonizer="gh", harmonizer_noop="one loss", target_acc_last=0.8)
    fake_run(root, "a", baseline="dann", harmonizer="gh", target_acc_last=0.81)
    fake_run(root, "b", harmonizer="none", target_acc_last=0.82)
    fake_run(root, "c", harmonizer="ghpp", target_acc_last=0.83)  # an older run: no λ recorded
    fake_run(root, "d", **GHPP(1e-05), target_acc_last=0.84)
    fake_run(root, "e", **GHPP(0.5), target_acc_last=0.85)
    runs = collect(root)
    table = aggregate(runs, paper=PaperResults())
    assert list(zip(table["baseline"], table["harmonizer"], strict=True)) == [
        ("source_only", "gh (no-op)"),  # the label says that the harmonizer changed nothing
        ("dann", "gh"),
        ("cdan", "none"),
        ("cdan", "ghpp"),
        ("cdan", "ghpp(lam=1e-05)"),
        ("cdan", "ghpp(lam=0.5)"),
    ]
    assert table["acc_mean"].tolist() == pytest.approx([80.0, 81.0, 82.0, 83.0, 84.0, 85.0])
    assert set(table["selection"]) == {"last"} and table["paper_acc"].isna().all()
    with pytest.raises(ValueError) as refused:
        aggregate(runs, "best", PaperResults())
    assert str(refused.value) == "unknown model selection 'best'; choose one of last, best_target, source_val"


def test_non_finite_numbers_in_a_summary_count_as_missing(tmp_path: Path) -> None:
    """A summary can hold NaN or Infinity (Python's json writes both): neither is a result, so each counts as a
    missing value. Seed 1's NaN accuracy leaves 80 and 90 (mean 85, sample std √50 = 7.07, n=2 of 3 seeds);
    seed 2's infinite s/iter leaves 0.05 twice."""
    root = tmp_path / "runs"
    fake_run(root, "a", seed=0, target_acc_last=0.80)
    fake_run(root, "b", seed=1, target_acc_last=math.nan)
    fake_run(root, "c", seed=2, target_acc_last=0.90, sec_per_iter=math.inf)
    runs = collect(root)
    assert runs.missing("last") == 1
    table = aggregate(runs, "last", PaperResults())
    assert markdown_table(table).splitlines()[2] == (
        "| mnist→usps | cdan | gh | 85.0 ± 7.1 (n=2) | – | 40.0 ± 0.0 | 0.0 ± 0.0 | 0.0500 ± 0.0000 | 0,1,2 |"
    )
    assert (table["acc_n"].iloc[0], table["sec_per_iter_n"].iloc[0]) == (2, 2)


def test_average_rows_keep_their_lambda_variant_and_count_only_complete_metrics(tmp_path: Path) -> None:
    """GH++ at λ = 0.3 and 0.5 on two digits tasks. Each avg row keeps its method's λ and variant (the paper
    number is looked up at that λ: none for 0.3; for 0.5 the mean of the paper's M->U 96.5 and U->M 98.3, a
    subset of its tasks, = 97.4), has no seeds and no std. λ = 0.3 lacks conflict rates on one task, so its
    avg has no conflict mean and counts 0 tasks for it, while its accuracy averages both: (90 + 94) / 2."""
    root = tmp_path / "runs"
    for lam, accs in ((0.3, (0.90, 0.94)), (0.5, (0.96, 0.98))):
        for task, acc in zip(("mnist→usps", "usps→mnist"), accs, strict=True):
            missing = {"conflict_rate": None} if (lam, task) == (0.3, "usps→mnist") else {}
            fake_run(root, f"{lam}/{task}", task=task, **GHPP(lam), target_acc_last=acc, **missing)
    table = aggregate(collect(root))
    avg = table[table["kind"] == "avg"]
    assert avg["harmonizer"].tolist() == ["ghpp(lam=0.3)", "ghpp(lam=0.5)"]
    assert avg["lam"].tolist() == [0.3, 0.5]
    assert avg["variant"].tolist() == ['{"harmonizer: lam": 0.3}', '{"harmonizer: lam": 0.5}']
    assert avg["acc_mean"].tolist() == pytest.approx([92.0, 97.0]) and avg["acc_n"].tolist() == [2, 2]
    assert math.isnan(avg["paper_acc"].iloc[0]) and avg["paper_acc"].iloc[1] == pytest.approx(97.4)
    assert math.isnan(avg["conflict_before_mean"].iloc[0]) and avg["conflict_before_n"].tolist() == [0, 2]
    assert avg["acc_std"].isna().all() and avg["seeds"].tolist() == ["", ""]


def test_runs_that_differ_only_in_the_wording_of_the_no_op_reason_share_one_row(tmp_path: Path) -> None:
    """The reason a harmonizer was a no-op is an explanation, not part of the method: its wording changed between
    versions (the fonts study's first source-only seeds said "the baseline has one loss"), and two wordings must
    not split one method's seeds into two rows."""
    old = {"baseline": "source_only", "harmonizer": "none", "harmonizer_noop": "the baseline has one loss"}
    new = {**old, "harmonizer_noop": "no stage of the baseline has two losses to harmonize"}
    fake_run(tmp_path, "s0", **old, seed=0, target_acc_last=0.60)
    fake_run(tmp_path, "s1", **new, seed=1, target_acc_last=0.56)
    fake_run(tmp_path, "g0", harmonizer="none", seed=0, target_acc_last=0.70)
    table = aggregate(collect(tmp_path), "last")
    rows = table[table["kind"] == "task"]
    assert sorted(zip(rows["baseline"], rows["harmonizer"], rows["seeds"], strict=True)) == [
        ("cdan", "none", "0"),
        ("source_only", "none (no-op)", "0,1"),
    ]
    (acc,) = rows.loc[rows["baseline"] == "source_only", "acc_mean"]
    assert acc == pytest.approx(58.0)
