"""Real Hydra composition + real Lightning Trainer on the offline digits, a few iterations each."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from tests.conftest import QUICK
from uda.errors import DivergenceError
from uda.models import WarmStartSchedule
from uda.train import run

BASELINES = ["source_only", "dann", "cdan"]
HARMONIZERS = ["none", "gh", "ghpp"]


def read_metrics(output_dir: Path) -> list[dict[str, str]]:
    with open(output_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def assert_png_figure(path: Path) -> None:
    """``path`` is a PNG with drawn content: the signature, a real size, many colours (not a blank canvas)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert len(data) > 20_000, f"{path} has only {len(data)} bytes"
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= 400, image.size
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, f"{path} looks blank"


def check_harmonized_steps(harmonizer: str, tau_rows: list[dict[str, str]]) -> None:
    """GH and GH++ act exactly on the conflicting steps: tau = (1, 1) where g1·g2 >= 0, and where the pair
    conflicts GH raises both weights (paper Eq. 42: tau_i = 1 - c/‖g_i‖² > 1) while GH++ raises tau1 and lowers
    tau2 (Eq. 43). GH's update never opposes either gradient."""
    conflicting = [r for r in tau_rows if float(r["harmonizer/conflict"]) == 1.0]
    assert conflicting, "no step conflicted: the check of the applied tau would be vacuous"
    for row in tau_rows:
        tau1, tau2 = float(row["harmonizer/tau1"]), float(row["harmonizer/tau2"])
        if row in conflicting:
            assert (tau1 > 1.0 and tau2 >= 1.0) if harmonizer == "gh" else (tau1 > 1.0 > tau2), (tau1, tau2)
        else:
            assert (tau1, tau2) == (1.0, 1.0)
        if harmonizer == "gh":
            assert float(row["harmonizer/conflict_after"]) == 0.0


#: make test trains these; the other baseline x harmonizer pairs run with `make test-slow`
FAST_PAIRS = {("source_only", "none"), ("cdan", "none"), ("cdan", "gh"), ("cdan", "ghpp"), ("dann", "gh")}


@pytest.mark.parametrize(
    ("baseline", "harmonizer"),
    [
        (b, h) if (b, h) in FAST_PAIRS else pytest.param(b, h, marks=pytest.mark.slow)
        for b in BASELINES
        for h in HARMONIZERS
    ],
)
def test_every_baseline_and_harmonizer_trains(train_cfg, tmp_path, baseline: str, harmonizer: str) -> None:
    # a GRL that warms up within the 4 iterations, so the alignment gradient conflicts on some step
    grl = () if baseline == "source_only" else ("baseline.grl.max_iter=40",)
    cfg = train_cfg(f"baseline={baseline}", f"harmonizer={harmonizer}", *grl, *QUICK)
    summary = run(cfg).to_dict()

    assert summary["iterations"] == 4
    assert summary["baseline"] == baseline
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["task"] == "mnist→uci"
    # the engine options are left at null in the config: summary.json records what they resolved to
    assert OmegaConf.select(cfg, "engine.tau_applies_to") is None and OmegaConf.select(cfg, "engine.trade_off") is None
    official = {"source_only": ("after", "all"), "cdan": ("after", "gram_params"), "mcd": ("before", "all")}
    if baseline in official:
        stage = written["plan"][0] if baseline != "mcd" else next(p for p in written["plan"] if p["name"] == "maximize")
        assert (stage["trade_off"], stage["tau_applies_to"]) == official[baseline]

    rows = read_metrics(tmp_path)
    train_rows = [r for r in rows if r.get("train/cls_loss")]
    assert len(train_rows) == 4
    tau_rows = [r for r in rows if r.get("harmonizer/tau1")]
    if baseline == "source_only":
        assert not tau_rows and summary["monitored_steps"] == 0
        assert "no-op" in summary["harmonizer"]
    elif harmonizer == "none":
        # measured only every engine.monitor_every=10 iterations: iteration 0 here
        assert len(tau_rows) == 1 and summary["monitored_steps"] == 1
        assert float(tau_rows[0]["harmonizer/tau1"]) == 1.0
    else:
        assert len(tau_rows) == 4 and summary["monitored_steps"] == 4
        assert all(r.get("train/align_loss") for r in train_rows)
        assert {"harmonizer/cos", "harmonizer/conflict", "harmonizer/tau2"} <= set(rows[0])
        check_harmonized_steps(harmonizer, tau_rows)
        conflicts = [float(r["harmonizer/conflict"]) for r in tau_rows]
        assert summary["conflict_rate"] == pytest.approx(sum(conflicts) / 4)
        if harmonizer == "gh":
            assert summary["conflict_rate_after"] == 0.0
    if baseline != "source_only":  # the gradient diagnostics were measured, hence plotted
        for name in ("epoch_000.png", "final.png"):
            assert_png_figure(tmp_path / "diagnostics" / name)
    eval_rows = [r for r in rows if r.get("target/acc")]
    assert len(eval_rows) == 2 and all(r.get("target/acc_mean_class") for r in eval_rows)
    # the summary reports the logged evaluations: the last one, and the best one (the oracle selection)
    accs = [float(r["target/acc"]) for r in eval_rows]
    assert summary["target_acc_last"] == pytest.approx(accs[-1])
    assert summary["target_acc_best"] == pytest.approx(max(accs))
    assert summary["target_acc_best_iteration"] == 2 * (accs.index(max(accs)) + 1)


def test_grl_coefficient_and_learning_rate_follow_the_iteration_counter(train_cfg, tmp_path) -> None:
    schedule_overrides = ("optimizer.lr=0.02", "scheduler.gamma=0.1", "scheduler.power=0.5")
    summary = run(
        train_cfg("baseline=cdan", "harmonizer=gh", "baseline.grl.max_iter=40", *schedule_overrides, *QUICK)
    ).to_dict()
    metrics = read_metrics(tmp_path)
    rows = [r for r in metrics if r.get("train/grl_coeff")]
    schedule = WarmStartSchedule(max_iter=40)
    # row k was logged at iteration k, after 2 gradient probes and 1 forward per iteration
    assert [float(r["train/grl_coeff"]) for r in rows] == pytest.approx([schedule(k) for k in range(4)])
    assert summary["iterations"] == 4
    # the inv schedule lr·(1 + γi)^-p, stepped once per iteration; row k is logged after iteration k's step,
    # so it shows the rate of iteration k + 1
    lrs = [float(r["train/lr"]) for r in metrics if r.get("train/lr")]
    assert lrs == pytest.approx([0.02 * (1 + 0.1 * (k + 1)) ** -0.5 for k in range(4)], rel=1e-6)


def test_trade_off_reaches_the_stage(train_cfg) -> None:
    cfg = train_cfg("baseline=cdan", "baseline.trade_off=0.3", *QUICK)
    from hydra.utils import instantiate

    from uda.models import LeNet

    baseline = instantiate(cfg.baseline, backbone=LeNet(), num_classes=10)
    assert baseline.stages[0].trade_offs == {"align": 0.3, "cls": 1.0}


def test_wandb_offline_run_lives_in_the_run_directory_and_is_finished(train_cfg, tmp_path) -> None:
    import wandb

    from uda.train import main

    cfg = train_cfg("logger=wandb", *[o for o in QUICK if not o.startswith("logger=")])
    value = main(cfg)
    assert value is not None and 0.0 <= value <= 1.0
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    assert (tmp_path / "csv" / "metrics.csv").is_file()  # the CSV copy is written beside W&B
    assert wandb.run is None  # wandb.finish() was called


def test_divergence_stops_with_one_sentence_and_no_summary(train_cfg, tmp_path) -> None:
    import wandb

    from uda.train import main

    quick = [o for o in QUICK if not o.startswith(("logger=", "iterations", "eval_every"))]
    with pytest.raises(DivergenceError, match=r"training diverged: the \w+ loss became nan at iteration \d+"):
        run(train_cfg("optimizer.lr=1e4", "iterations=20", "eval_every=10", "logger=csv", *quick))
    assert not (tmp_path / "summary.json").exists()

    with pytest.raises(SystemExit) as exit_info:
        main(train_cfg("optimizer.lr=1e4", "iterations=20", "eval_every=10", "logger=wandb", *quick))
    assert exit_info.value.code == 2
    assert wandb.run is None  # the W&B run was closed although the job failed
    assert not (tmp_path / "summary.json").exists()


@pytest.mark.slow  # three runs; the resume and DDP tests also compare runs bit for bit
def test_same_seed_gives_the_same_run(train_cfg, tmp_path) -> None:
    first = run(train_cfg("harmonizer=gh", "seed=3", *QUICK)).to_dict()
    first_rows = read_metrics(tmp_path)
    second = run(train_cfg("harmonizer=gh", "seed=3", *QUICK)).to_dict()
    assert second["target_acc_last"] == first["target_acc_last"]
    assert read_metrics(tmp_path)[-2]["train/cls_loss"] == first_rows[-2]["train/cls_loss"]
    other = run(train_cfg("harmonizer=gh", "seed=4", *QUICK)).to_dict()
    assert read_metrics(tmp_path)[-2]["train/cls_loss"] != first_rows[-2]["train/cls_loss"]
    assert other["iterations"] == 4
