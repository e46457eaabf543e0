"""SSRT through real Hydra composition and the real Trainer on the offline digits, with a 2-block ViT."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from tests.conftest import QUICK
from uda.train import run

#: a 2-block, 32-wide ViT and small heads keep a 4-iteration run at a few seconds; T = 2 with L = 1 so the
#: safe-training drop test runs (at iterations 1 and 3) and snapshots are taken (iterations 0 and 2)
TINY_SSRT = (
    "backbone.depth=2",
    "backbone.embed_dim=32",
    "backbone.num_heads=2",
    "baseline.bottleneck_dim=32",
    "baseline.sr_layers=[-1,0,1]",
    "baseline.safe_period=2",
    "baseline.safe_levels=1",
    "dataset.batch_size=16",
)


def read_metrics(output_dir: Path) -> list[dict[str, str]]:
    with open(output_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("harmonizer", ["none", "gh", "ghpp"])
def test_ssrt_trains_with_every_harmonizer(train_cfg, tmp_path, harmonizer: str) -> None:
    summary = run(train_cfg("baseline=ssrt", f"harmonizer={harmonizer}", *QUICK, *TINY_SSRT)).to_dict()

    assert summary["iterations"] == 4 and summary["baseline"] == "ssrt"
    assert 0.0 <= summary["target_acc_last"] <= summary["target_acc_best"] <= 1.0
    rows = read_metrics(tmp_path)
    train_rows = [r for r in rows if r.get("train/cls_loss")]
    assert len(train_rows) == 4
    assert all(r["train/align_loss"] and r["train/domain_loss"] and r["train/sr_loss"] for r in train_rows)
    assert [float(r["train/sr_layer"]) in (-1.0, 0.0, 1.0) for r in train_rows] == [True] * 4
    # drop tests at the period ends i = 1, 3; a restore decided at i = 1 happens at i = 2 and restarts the ramp
    assert [bool(r.get("train/safe_restore_scheduled")) for r in train_rows] == [False, True, False, True]
    scheduled = float(train_rows[1]["train/safe_restore_scheduled"]) == 1.0
    assert [float(r["train/safe_restored"]) for r in train_rows] == [0.0, 0.0, float(scheduled), 0.0]
    r_period = float(train_rows[1]["train/safe_r_period"])  # doubled by a restore: 1 - 0 <= T = 2
    expected_r2 = math.sin(1 / r_period * math.pi / 2) if scheduled else 1.0  # r(i) = sin(i/T · π/2), T = 2
    assert float(train_rows[0]["train/sr_ramp"]) == 0.0
    assert float(train_rows[2]["train/sr_ramp"]) == pytest.approx(expected_r2)
    assert r_period == (4.0 if scheduled else 2.0)
    tau_rows = [r for r in rows if r.get("harmonizer/tau1")]
    if harmonizer == "none":
        assert len(tau_rows) == 1 and summary["monitored_steps"] == 1  # measured at iteration 0 only
    else:
        assert len(tau_rows) == 4 and summary["monitored_steps"] == 4
