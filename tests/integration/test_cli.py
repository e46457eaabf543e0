"""`python run.py ...` exactly as a user types it (subprocess, real Hydra app)."""

from __future__ import annotations

import json
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


def test_a_bad_value_exits_nonzero_with_one_sentence_and_no_traceback(tmp_path) -> None:
    """The entry point's handling, once through a real process (which values are refused, and their
    sentences, are checked in-process by tests/unit/test_config.py)."""
    proc = run_cli("harmonizer=prograd", "harmonizer.lam=2", cwd=tmp_path)
    assert proc.returncode == 2
    assert "error: harmonizer.lam=2.0 is outside [0, 1]: for ProGrad it is the projection strength" in proc.stderr
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


def read_wandb_run_record(run_dir: Path):
    """The RunRecord of an offline W&B run, read from its ``run-*.wandb`` file: W&B's leveldb-style log
    (7-byte file header, 32 KiB blocks, records of crc32 + length + kind followed by a protobuf ``Record``)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("run-*.wandb")
    data, block, pos, pending = path.read_bytes(), 32 * 1024, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record is assembled
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "run":
                return record.run
    raise AssertionError(f"no run record in {path}")


@pytest.mark.slow  # a subprocess run with W&B; test_train.py checks the offline W&B run in-process
def test_wandb_run_is_grouped_named_typed_and_carries_config_and_provenance(tmp_path) -> None:
    quick = [o for o in QUICK if not o.startswith("logger=")]
    proc = run_cli("logger=wandb", "baseline=dann", "harmonizer=gh", "seed=4", *quick, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run_dir,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    run = read_wandb_run_record(offline)

    assert run.run_group == "offline_digits-mnist-uci-dann"  # no experiment preset: dataset-source-target-baseline
    assert run.job_type == "gh"
    # name = the job's overrides (logging/progress-bar switches are excluded from it, as from the directory name)
    assert run.display_name.startswith("baseline=dann,") and "harmonizer=gh" in run.display_name
    assert "seed=4" in run.display_name and "logger" not in run.display_name
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["baseline"]["_target_"] == "uda.baselines.DANN"
    assert config["seed"] == 4
    from uda.provenance import git_commit

    provenance = config["provenance"]
    assert provenance["git_commit"] == git_commit()  # the SHA of this checkout (None outside git)
    assert provenance["versions"]["torch"] and provenance["versions"]["lightning"]


def test_wandb_group_is_the_experiment_preset(tmp_path) -> None:
    from tests.conftest import compose_train
    from uda.loggers import run_group

    cfg = compose_train(["experiment=office31_cdan", "harmonizer=ghpp"], tmp_path)
    assert run_group(cfg) == "office31_cdan"
    cfg = compose_train(["dataset.source=uci", "dataset.target=mnist", "baseline=mcd"], tmp_path)
    assert run_group(cfg) == "offline_digits-uci-mnist-mcd"


@pytest.mark.slow  # two gloo processes through the CLI; test_ddp.py checks the DDP numerics in make test
def test_ddp_on_cpu_with_the_default_callbacks_runs_and_reports_once(tmp_path) -> None:
    """`trainer=ddp_cpu` (2 gloo processes) with every default callback: no rank waits for a collective the
    other never joins, epoch metrics need no sync_dist warning, and one summary is printed."""
    proc = run_cli("trainer=ddp_cpu", *QUICK, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sync_dist" not in proc.stdout + proc.stderr
    assert proc.stdout.count("target acc   last") == 1
