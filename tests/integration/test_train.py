"""Real Hydra composition + real Lightning Trainer on the offline digits, a few iterations each."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.conftest import QUICK
from uda.errors import DivergenceError
from uda.models import WarmStartSchedule
from uda.train import run

BASELINES = ["source_only", "dann", "cdan"]
HARMONIZERS = ["none", "gh", "ghpp"]


def read_metrics(output_dir: Path) -> list[dict[str, str]]:
    with open(output_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("harmonizer", HARMONIZERS)
@pytest.mark.parametrize("baseline", BASELINES)
def test_every_baseline_and_harmonizer_trains(train_cfg, tmp_path, baseline: str, harmonizer: str) -> None:
    cfg = train_cfg(f"baseline={baseline}", f"harmonizer={harmonizer}", *QUICK)
    summary = run(cfg)

    assert summary["iterations"] == 4
    assert summary["baseline"] == baseline
    assert 0.0 <= summary["target_acc_last"] <= 1.0 and 0.0 <= summary["target_acc_best"] <= 1.0
    assert summary["target_acc_best"] >= summary["target_acc_last"]
    assert json.loads((tmp_path / "summary.json").read_text())["task"] == "mnist→uci"

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
    eval_rows = [r for r in rows if r.get("target/acc")]
    assert len(eval_rows) == 2 and all(r.get("target/acc_mean_class") for r in eval_rows)


def test_grl_coefficient_follows_the_iteration_counter(train_cfg, tmp_path) -> None:
    summary = run(train_cfg("baseline=cdan", "harmonizer=gh", "baseline.grl.max_iter=40", *QUICK))
    rows = [r for r in read_metrics(tmp_path) if r.get("train/grl_coeff")]
    schedule = WarmStartSchedule(max_iter=40)
    # row k was logged at iteration k, after 2 gradient probes and 1 forward per iteration
    assert [float(r["train/grl_coeff"]) for r in rows] == pytest.approx([schedule(k) for k in range(4)])
    assert summary["iterations"] == 4


def test_trade_off_reaches_the_stage(train_cfg) -> None:
    cfg = train_cfg("baseline=cdan", "baseline.trade_off=0.3", *QUICK)
    from hydra.utils import instantiate

    from uda.models import LeNet

    baseline = instantiate(cfg.baseline, backbone=LeNet(), num_classes=10)
    assert baseline.stages[0].coefs == {"align": 0.3, "cls": 1.0}


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


def test_same_seed_gives_the_same_run(train_cfg, tmp_path) -> None:
    first = run(train_cfg("harmonizer=gh", "seed=3", *QUICK))
    first_rows = read_metrics(tmp_path)
    second = run(train_cfg("harmonizer=gh", "seed=3", *QUICK))
    assert second["target_acc_last"] == first["target_acc_last"]
    assert read_metrics(tmp_path)[-2]["train/cls_loss"] == first_rows[-2]["train/cls_loss"]
    other = run(train_cfg("harmonizer=gh", "seed=4", *QUICK))
    assert read_metrics(tmp_path)[-2]["train/cls_loss"] != first_rows[-2]["train/cls_loss"]
    assert other["iterations"] == 4
