"""DDP consistency, proved with 2 CPU processes (gloo) through Lightning's DDP strategy.

One launch per gradient space trains every harmonizer below one after another (launches are the expensive
part). For each: both ranks compute the same tau and keep identical parameters although they see different
samples; and a single process replaying the run on the concatenated (global) batch, written here with plain
autograd, gets the same Gram matrix, tau and parameters after every step. The Gram matrix and the
parameters catch an all-reduce that sums instead of averaging (GH's tau is scale-invariant, the step is
not) and a feature-space Gram without the 1/world² of the global mean; Nash-MTL's weights scale like 1/‖g‖,
so they catch a wrong scale by themselves.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.integration.ddp_worker import (
    HARMONIZER_CONF,
    ITERATIONS,
    LR,
    MOMENTUM,
    build_baseline,
    build_harmonizer,
    record_path,
)
from uda.baselines import UDABatch

WORKER = Path(__file__).with_name("ddp_worker.py")
#: GH (scale-invariant tau), Nash-MTL (tau not scale-invariant), GradVac (state changes every step)
CORE = ("gh", "nash_mtl", "gradvac")
#: newer harmonizers, checked once their config exists
NEWER = ("upgrad", "dualproj", "fairgrad", "config", "famo", "dbmtl")
HARMONIZERS = CORE + tuple(n for n in NEWER if (HARMONIZER_CONF / f"{n}.yaml").is_file())


@pytest.fixture(scope="module", params=["params", "features"])
def ddp_run(request, tmp_path_factory) -> tuple[str, Path]:
    grad_space = request.param
    out_dir = tmp_path_factory.mktemp(f"ddp_{grad_space}")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(out_dir), grad_space, *HARMONIZERS],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return grad_space, out_dir


def load(out_dir: Path, harmonizer: str) -> tuple[dict, dict]:
    return tuple(torch.load(record_path(out_dir, harmonizer, rank)) for rank in (0, 1))


def replay(records: list[tuple[dict, dict]], harmonizer: str, grad_space: str) -> list[dict]:
    """One process, the same steps on the concatenated batches: per-loss gradients by autograd, their Gram
    matrix (over the official scope, or over the batch features), tau, the update Σ coef_i·tau_i·g_i where tau
    reaches (the Gram scope, or the parameters below the features) and Σ coef_i·g_i elsewhere, then SGD."""
    model = build_baseline()
    model.load_state_dict(records[0][0]["params_before"])
    h = build_harmonizer(harmonizer)
    (stage,) = model.stages
    assert (
        stage.harmonize == (("align", "cls"),) and stage.trade_off == "after" and stage.tau_applies_to == "gram_params"
    )
    names = list(stage.trade_offs)
    coefs = torch.tensor([float(stage.trade_offs[n]) for n in names])
    params = list(model.parameters())
    reached = {id(p) for p in model.scope_parameters("official" if grad_space == "params" else "shared")}
    optimizer = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)
    steps = []
    for r0, r1 in records:
        (xs0, ys0, xt0), (xs1, ys1, xt1) = r0["batch"], r1["batch"]
        batch = UDABatch(torch.cat([xs0, xs1]), torch.cat([ys0, ys1]), torch.cat([xt0, xt1]))
        out = model.compute_losses("main", batch, iteration=r0["iteration"])
        losses = [out.losses[n] for n in names]
        grads = [
            torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True, materialize_grads=True)
            for loss in losses
        ]
        if grad_space == "params":
            rows = [
                torch.cat([g.flatten() for g, p in zip(gs, params, strict=True) if id(p) in reached]) for gs in grads
            ]
        else:
            rows = [torch.autograd.grad(loss, out.features, retain_graph=True)[0].flatten() for loss in losses]
        gram = torch.stack(rows) @ torch.stack(rows).T
        values = torch.stack([loss.detach() for loss in losses])
        tau = h.weights(gram, values) if getattr(h, "needs_losses", False) else h.weights(gram)
        for k, p in enumerate(params):
            w = coefs * tau if id(p) in reached else coefs
            p.grad = sum(w_i * gs[k] for w_i, gs in zip(w, grads, strict=True))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps.append({"gram": gram, "tau": tau, "params": {k: v.clone() for k, v in model.state_dict().items()}})
    return steps


def assert_params_close(actual: dict, expected: dict, what: str) -> None:
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=1e-4, atol=1e-6, msg=lambda m, k=key: f"{what} {k}: {m}")


@pytest.mark.parametrize("harmonizer", HARMONIZERS)
def test_ranks_see_different_samples_yet_keep_identical_weights(ddp_run, harmonizer) -> None:
    _, out_dir = ddp_run
    rank0, rank1 = load(out_dir, harmonizer)
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert len(rank0["records"]) == len(rank1["records"]) == ITERATIONS
    for r0, r1 in zip(rank0["records"], rank1["records"], strict=True):
        assert not torch.equal(r0["batch"][0], r1["batch"][0])  # the ranks saw different samples
        assert torch.equal(r0["tau"], r1["tau"])  # ... yet computed the very same tau
        assert torch.equal(r0["gram"], r1["gram"])
        for key, value in r0["params_before"].items():
            assert torch.equal(value, r1["params_before"][key]), key
    for key, value in rank0["final"].items():
        assert torch.equal(value, rank1["final"][key]), key


@pytest.mark.parametrize("harmonizer", HARMONIZERS)
def test_each_rank_matches_one_process_on_the_global_batch(ddp_run, harmonizer) -> None:
    grad_space, out_dir = ddp_run
    rank0, rank1 = load(out_dir, harmonizer)
    records = list(zip(rank0["records"], rank1["records"], strict=True))
    expected = replay(records, harmonizer, grad_space)
    for step, ((r0, r1), ref) in enumerate(zip(records, expected, strict=True)):
        scale = float(ref["gram"].abs().max())
        for rank, record in enumerate((r0, r1)):
            where = f"{harmonizer}, rank {rank}, step {step}"
            gram, tau = record["gram"].to(ref["gram"].dtype), record["tau"].to(ref["tau"].dtype)
            torch.testing.assert_close(
                gram, ref["gram"], rtol=1e-4, atol=1e-6 * scale, msg=lambda m, w=where: f"{w}, Gram matrix: {m}"
            )
            torch.testing.assert_close(tau, ref["tau"], rtol=1e-3, atol=1e-6, msg=lambda m, w=where: f"{w}, tau: {m}")
        after = records[step + 1][0]["params_before"] if step + 1 < len(records) else rank0["final"]
        assert_params_close(after, ref["params"], f"step {step}")
    if harmonizer == "gh":
        harmonized = sum(int((r0["tau"] != 1).any()) for r0, _ in records)
        assert harmonized > 0, "no step needed harmonization: the comparison of tau would be vacuous"
