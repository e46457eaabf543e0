"""DDP consistency, proved with 2 CPU processes (gloo) through Lightning's DDP strategy.

Every rank must compute the same tau, equal to the single-process tau on the concatenated batch, and the
ranks' parameters must stay identical.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.integration.ddp_worker import ITERATIONS, build_baseline
from uda.baselines import UDABatch
from uda.harmonizers import GH, feature_space_backward, harmonized_backward

WORKER = Path(__file__).with_name("ddp_worker.py")


def run_ddp(tmp_path: Path, grad_space: str) -> tuple[dict, dict]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(tmp_path), grad_space], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")


def single_process_tau(record0: dict, record1: dict, grad_space: str) -> torch.Tensor:
    model = build_baseline()
    model.load_state_dict(record0["params_before"])
    (xs0, ys0, xt0), (xs1, ys1, xt1) = record0["batch"], record1["batch"]
    batch = UDABatch(torch.cat([xs0, xs1]), torch.cat([ys0, ys1]), torch.cat([xt0, xt1]))
    out = model.compute_losses("main", batch, iteration=record0["iteration"])
    losses = [out.losses["align"], out.losses["cls"]]
    if grad_space == "features":
        return feature_space_backward(losses, out.features, GH(), backward=lambda loss: None).tau
    stats = harmonized_backward(losses, model.parameters(), GH(), gram_params=model.scope_parameters("official"))
    return stats.tau


@pytest.mark.parametrize("grad_space", ["params", "features"])
def test_ddp_ranks_agree_with_each_other_and_with_one_process(tmp_path, grad_space) -> None:
    rank0, rank1 = run_ddp(tmp_path, grad_space)
    assert rank0["world_size"] == 2
    assert len(rank0["records"]) == len(rank1["records"]) == ITERATIONS
    harmonized = 0
    for r0, r1 in zip(rank0["records"], rank1["records"], strict=True):
        assert not torch.equal(r0["batch"][0], r1["batch"][0])  # the ranks saw different samples
        assert torch.equal(r0["tau"], r1["tau"])  # ... yet computed the very same tau
        for key, value in r0["params_before"].items():
            assert torch.equal(value, r1["params_before"][key]), key
        expected = single_process_tau(r0, r1, grad_space)
        torch.testing.assert_close(r0["tau"], expected, rtol=1e-4, atol=1e-6)
        harmonized += int((r0["tau"] != 1).any())
    assert harmonized > 0, "no step needed harmonization: the comparison would be vacuous"
    for key, value in rank0["final"].items():
        assert torch.equal(value, rank1["final"][key]), key
