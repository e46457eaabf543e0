"""Sweeps through the real Hydra launchers and sweeper: per-job directories, failures that do not stop a sweep,
the Optuna preset's non-oracle objective, device pinning."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import compose_train
from tests.integration.test_cli import run_cli
from uda.train import pinned_device

FAST = ("+trainer.fast_dev_run=true", "logger=csv", "trainer.enable_progress_bar=false")
#: the sweep tests check the launchers, not the figures: the drawing callbacks stay off
LEAN = ("~callbacks.analysis", "~callbacks.gradient_diagnostics")


@pytest.mark.slow  # the sequential sweep below checks that a failing job does not stop the sweep
def test_joblib_multirun_runs_each_job_in_its_own_directory_and_survives_a_failing_job(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "-m",
        "hydra/launcher=local_parallel",
        "hydra.launcher.n_jobs=2",
        "harmonizer.lam=0.5,7",  # the second job has an invalid lambda
        *FAST,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0_+trainer.fast_dev_run=True,harmonizer.lam=0.5", "1_+trainer.fast_dev_run=True,harmonizer.lam=7"]
    good, bad = (sweep / j for j in jobs)
    summary = json.loads((good / "summary.json").read_text())
    assert summary["harmonizer_params"] == {"lam": 0.5} and summary["iterations"] == 1
    assert not (bad / "summary.json").exists()
    error = (bad / "error.txt").read_text().strip()
    assert "harmonizer.lam" in error and len(error.splitlines()) == 1


def test_sequential_sweep_goes_on_after_a_job_that_crashes_in_the_middle(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    # momentum=0 passes validation, but torch's SGD refuses Nesterov (the preset's) without momentum: the middle
    # job dies of an unexpected ValueError inside trainer.fit, not of a user error
    proc = run_cli("-m", "optimizer.momentum=0.9,0,0.5", *FAST, *LEAN, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    lean = ",~callbacks.analysis=null,~callbacks.gradient_diagnostics=null"
    assert [p.name for p in jobs] == [
        f"{k}_+trainer.fast_dev_run=True,optimizer.momentum={m}{lean}" for k, m in enumerate(("0.9", "0", "0.5"))
    ]
    first, failed, last = jobs
    for job in (first, last):  # the job after the failure ran too
        assert json.loads((job / "summary.json").read_text())["iterations"] == 1
        assert not (job / "error.txt").exists()
    assert not (failed / "summary.json").exists()
    error = (failed / "error.txt").read_text()
    assert error.endswith("\n") and len(error.strip().splitlines()) == 1
    assert "ValueError: Nesterov momentum requires a momentum" in error and "run.log" in error
    assert "Traceback" in (failed / "run.log").read_text()  # the details are kept for whoever fixes it


@pytest.mark.slow  # an Optuna study of several trials
def test_optuna_preset_tunes_lambda_on_source_accuracy_not_the_target_oracle(tmp_path) -> None:
    cfg = compose_train(["sweep=lam_optuna"], tmp_path)
    assert cfg.optimized_metric == "source_acc_best"
    assert cfg.hydra.sweeper.params["harmonizer.lam"] == "interval(0.0, 1.0)"
    assert "optuna" in cfg.hydra.sweeper._target_.lower()
    assert cfg.harmonizer._target_.endswith("GHPP")

    sweep = tmp_path / "optuna"
    proc = run_cli(
        "-m", "sweep=lam_optuna", "hydra.sweeper.n_trials=2", *FAST, f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    summaries = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
    assert len(summaries) == 2
    assert best["best_value"] == pytest.approx(max(s["source_acc_best"] for s in summaries))
    assert 0.0 <= best["best_params"]["harmonizer.lam"] <= 1.0


def test_slurm_preset_asks_for_one_task_per_ddp_device(tmp_path) -> None:
    cfg = compose_train(["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4"], tmp_path)
    launcher = cfg.hydra.launcher
    assert "submitit" in launcher._target_.lower() and "slurm" in launcher._target_.lower()
    assert launcher.gpus_per_node == 4 and launcher.tasks_per_node == 4 and launcher.nodes == 1


def test_unknown_optimized_metric_is_one_sentence(tmp_path) -> None:
    proc = run_cli("optimized_metric=target_acc", *FAST, cwd=tmp_path)
    assert proc.returncode == 2
    assert "optimized_metric='target_acc' is unknown" in proc.stderr + proc.stdout


@pytest.mark.parametrize(("job", "count", "expected"), [(0, 4, 0), (5, 4, 1), (3, 1, 0)])
def test_jobs_are_pinned_round_robin(job: int, count: int, expected: int) -> None:
    assert pinned_device(job, count) == expected
