"""DWL through real Hydra composition and the real Lightning Trainer on the offline digits."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from tests.conftest import QUICK, compose_train
from uda.train import run

#: small repeats and an "epoch" of 2 iterations, so that T is recomputed twice in QUICK's 4 iterations
DWL_QUICK = (
    "baseline=dwl",
    "baseline.num_k1=1",
    "baseline.num_k3=2",
    "baseline.iters_per_epoch=2",
    "baseline.hidden=32",
    "baseline.discriminator_hidden=32",
)
TAU = "harmonizer/generator/adversarial_discrepancy/tau1"


def read_metrics(output_dir: Path) -> list[dict[str, str]]:
    with open(output_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    "harmonizer", [pytest.param("none", marks=pytest.mark.slow), "gh", pytest.param("ghpp", marks=pytest.mark.slow)]
)
def test_dwl_trains_with_every_harmonizer(train_cfg, tmp_path, harmonizer: str) -> None:
    cfg = train_cfg(*DWL_QUICK, f"harmonizer={harmonizer}", *QUICK)
    assert cfg.optimizer.momentum == 0.9 and cfg.scheduler is None  # baseline=dwl selects scheduler=constant
    summary = run(cfg).to_dict()

    assert summary["iterations"] == 4 and summary["baseline"] == "dwl"
    assert 0.0 <= summary["target_acc_last"] <= summary["target_acc_best"] <= 1.0

    rows = read_metrics(tmp_path)
    train = [r for r in rows if r.get("train/generator/adversarial_loss")]
    train.sort(key=lambda r: float(r["train/iteration"]))
    assert [float(r["train/iteration"]) for r in train] == [1.0, 2.0, 3.0, 4.0]
    stage_losses = ("source/cls", "discriminator/domain", "classifiers/neg_discrepancy", "pseudo_label/pseudo_label")
    assert all(r[f"train/{name}_loss"] for r in train for name in stage_losses)
    # T is 0.5 during the first epoch, recomputed after iterations 1 and 3, and the generator stage of the
    # next epoch uses the new value
    used = [float(r["train/generator/T"]) for r in train]
    after = [float(r["train/dwl/T"]) for r in train]
    assert used[:2] == [0.5, 0.5] and used[2] == pytest.approx(after[1]) and after[0] == 0.5
    assert [bool(r.get("train/dwl/alignment")) for r in train] == [False, True, False, True]
    assert all(0.0 <= t <= 1.0 for t in after)

    tau_rows = [r for r in rows if r.get(TAU)]
    if harmonizer == "none":
        # measured at iteration 0 only (engine.monitor_every=10), in both generator repeats
        assert len(tau_rows) == 1 and summary["monitored_steps"] == 2
        assert float(tau_rows[0][TAU]) == 1.0
    else:
        assert len(tau_rows) == 4 and summary["monitored_steps"] == 8
    eval_rows = [r for r in rows if r.get("target/acc")]
    assert len(eval_rows) == 2


@pytest.mark.slow  # about a minute; test_resume.py checks exact resume in make test
def test_interrupted_dwl_run_resumes_with_the_same_dynamic_weight(tmp_path: Path) -> None:
    # an "epoch" of 3 iterations straddles the checkpoint written at iteration 2, so the resumed run needs
    # both T's running state and the two batches of features collected before the crash
    dwl_run = (
        "baseline=dwl",
        "baseline.num_k1=1",
        "baseline.num_k3=1",
        "baseline.iters_per_epoch=3",
        "baseline.hidden=32",
        "baseline.discriminator_hidden=32",
        "harmonizer=gh",
        "iterations=6",
        "eval_every=2",
        "logger=csv",
        "~callbacks.gradient_diagnostics",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "dataset.eval_batch_size=1000",
    )
    straight = run(compose_train([*dwl_run], tmp_path / "straight")).to_dict()
    crash = "+callbacks.crash._target_=tests.integration.test_resume.CrashAt"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(compose_train([*dwl_run, crash, "+callbacks.crash.iteration=3"], tmp_path / "resumed"))
    resumed = run(compose_train([*dwl_run, "ckpt_path=last"], tmp_path / "resumed")).to_dict()

    assert resumed["target_acc_last"] == straight["target_acc_last"]
    a, b = (torch.load(tmp_path / d / "checkpoints" / "last.ckpt", weights_only=False) for d in ("straight", "resumed"))
    extra_a, extra_b = a["state_dict"].pop("baseline._extra_state"), b["state_dict"].pop("baseline._extra_state")
    assert extra_a["dynamic_weight"] == extra_b["dynamic_weight"] and extra_a["dynamic_weight"]["epochs"] == 2
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
