"""`python run.py ...` exactly as a user types it (subprocess, real Hydra app)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import QUICK, ROOT


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    env.pop("HYDRA_FULL_ERROR")
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_user_command_trains_and_prints_the_summary(tmp_path) -> None:
    proc = run_cli("baseline=cdan", "harmonizer=ghpp", "dataset=offline_digits", *QUICK, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for expected in (
        "task mnist→uci",
        "baseline     cdan",
        "harmonizer   ghpp(lam=0.5)",
        "seed         0",
        "target acc   last",
        "[oracle: selected with target labels]",
        "conflict",
        "s/iteration",
    ):
        assert expected in out
    run_dirs = list((tmp_path / "logs" / "train" / "runs").iterdir())
    assert len(run_dirs) == 1 and (run_dirs[0] / "summary.json").is_file()


@pytest.mark.parametrize(
    ("override", "sentence"),
    [
        ("harmonizer.lam=1.5", "error: harmonizer.lam=1.5 is outside [0, 1]"),
        ("optimizer.lr=-1", "error: optimizer.lr=-1 is invalid: the learning rate must be a positive number"),
        ("dataset.batch_size=0", "error: dataset.batch_size=0 is invalid"),
        ("dataset.target=usps", "error: dataset.target='usps' is not a domain of offline_digits; choose one of"),
    ],
)
def test_bad_values_exit_nonzero_with_one_sentence(tmp_path, override: str, sentence: str) -> None:
    proc = run_cli(override, cwd=tmp_path)
    assert proc.returncode == 2
    assert sentence in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "logs" / "train" / "runs").exists() or not any(
        (tmp_path / "logs" / "train" / "runs").rglob("summary.json")
    )


def test_unknown_group_option_lists_the_available_ones(tmp_path) -> None:
    proc = run_cli("harmonizer=ghp", cwd=tmp_path)
    assert proc.returncode != 0
    assert "Could not find 'harmonizer/ghp'" in proc.stderr
    assert "Available options in 'harmonizer'" in proc.stderr
    for name in ("gh", "ghpp", "none"):
        assert f"\t{name}\n" in proc.stderr
    assert "Traceback" not in proc.stderr
