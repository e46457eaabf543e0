"""Under 2-rank DDP (gloo, CPU, Lightning's DDP strategy) a prompt baseline's update equals the single-process update
on the global batch: DAPL with GH (the gradient engine) and PGA with its closure procedure. One launch trains both.
The single-process reference replays every step on the concatenated batches with the public step functions
(``harmonized_backward``, ``pga_backward``) and no reduction; a rank that used only its own gradients (no
all-reduce) or summed them instead of averaging ends with another prompt."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.integration.ddp_prompt_worker import ITERATIONS, LR, PGA_ALIGN, PGA_RADIUS, RUNS, build_baseline, record_path
from uda.baselines import UDABatch
from uda.harmonizers import GH
from uda.harmonizers.engine import harmonized_backward
from uda.procedures import pga_backward

WORKER = Path(__file__).with_name("ddp_prompt_worker.py")


@pytest.fixture(scope="module")
def ddp_prompt_run(tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("ddp_prompt")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(out_dir)], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out_dir


def replay(run: str, records: list[tuple[dict, dict]]) -> list[dict[str, torch.Tensor]]:
    """The prompt after each step of one process on the concatenated (global) batches."""
    model = build_baseline(run)
    model.prompt.load_state_dict(records[0][0]["before"])
    (stage,) = model.stages
    params = model.optimizer_groups()["main"]["heads"]
    optimizer = torch.optim.SGD(params, lr=LR)
    after = []
    for step, (r0, r1) in enumerate(records):
        (xs0, ys0, xt0), (xs1, ys1, xt1) = r0["batch"], r1["batch"]
        batch = UDABatch(torch.cat([xs0, xs1]), torch.cat([ys0, ys1]), torch.cat([xt0, xt1]))
        optimizer.zero_grad(set_to_none=True)
        out = stage.loss_fn(batch, step)
        if run == "dapl_gh":
            harmonized_backward(
                [out.losses["target"], out.losses["source"]],
                params,
                GH(),
                trade_offs=[stage.trade_offs["target"], stage.trade_offs["source"]],
                groups=[[0, 1]],
                gram_params=model.scope_parameters("official", stage.name),
                tau_applies_to=stage.tau_applies_to,
            )
        else:
            pga_backward(
                lambda name, b=batch, s=step: stage.loss_fn(b, s).losses[name],
                {name: out.losses[name] for name in ("target", "source")},
                model.scope_parameters("official"),
                model.private_parameters("main"),
                dict(stage.trade_offs),
                radius=PGA_RADIUS,
                align=PGA_ALIGN,
            )
        optimizer.step()
        after.append({k: v.detach().clone() for k, v in model.prompt.state_dict().items()})
    return after


@pytest.mark.parametrize("run", list(RUNS))
def test_prompt_update_under_ddp_equals_one_process_on_the_global_batch(ddp_prompt_run, run) -> None:
    rank0, rank1 = (torch.load(record_path(ddp_prompt_run, run, rank)) for rank in (0, 1))
    assert rank0["world_size"] == rank1["world_size"] == 2
    records = list(zip(rank0["records"], rank1["records"], strict=True))
    assert len(records) == ITERATIONS
    expected = replay(run, records)
    for step, ((r0, r1), ref) in enumerate(zip(records, expected, strict=True)):
        assert not torch.equal(r0["batch"][0], r1["batch"][0])  # the ranks saw different samples
        after = records[step + 1][0]["before"] if step + 1 < len(records) else rank0["final"]
        for key, value in ref.items():
            moved = float((value - r0["before"][key]).abs().max())
            assert moved > 1e-4, f"{run} step {step}: {key} barely moved; the comparison would be vacuous"
            # float32 noise of the normalized align term reaches ~1e-5 of a step; a rank without the all-reduce is
            # off by the order of the step itself
            tol = 1e-3 * moved
            torch.testing.assert_close(after[key], value, rtol=1e-4, atol=tol, msg=lambda m, k=key: f"{run} {k}: {m}")
    for key, value in rank0["final"].items():
        assert torch.equal(value, rank1["final"][key]), key
