"""engine.procedure=pga: PGA's closure procedure on a classic baseline's stage, through run_stage (plain PyTorch)."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from uda.baselines import CDAN, SourceOnly, UDABatch
from uda.errors import ConfigError
from uda.harmonizers import GH, NoHarmonizer
from uda.models import DTN, LeNet
from uda.procedures import pga_backward
from uda.training import EngineOptions, resolve_plans, run_stage


def cdan(train: bool = False, backbone: type = LeNet) -> CDAN:
    torch.manual_seed(0)
    model = CDAN(backbone(), num_classes=10, discriminator_hidden=32)
    return model.train(train)  # eval: dropout off, so a re-evaluation at the same point is the same loss


def batch(channels: int = 1, size: int = 28) -> UDABatch:
    gen = torch.Generator().manual_seed(1)
    return UDABatch(
        torch.randn(8, channels, size, size, generator=gen),
        torch.randint(0, 10, (8,), generator=gen),
        torch.randn(8, channels, size, size, generator=gen),
    )


def step(baseline: CDAN, harmonizer=None, data: UDABatch | None = None, **engine) -> dict[str, torch.Tensor]:
    """The gradients one run_stage of CDAN's stage writes at iteration 100 (GRL warmed up)."""
    harmonizer = harmonizer or NoHarmonizer()
    plan = resolve_plans(baseline, harmonizer, EngineOptions(**engine))["main"]
    optimizer = torch.optim.SGD(baseline.parameters(), lr=0.0)
    loss_fn = partial(baseline.stage("main").loss_fn, data or batch(), 100)
    run_stage(plan, loss_fn, [optimizer], [harmonizer], iteration=100)
    return {n: p.grad.clone() for n, p in baseline.named_parameters() if p.grad is not None}


def test_pga_with_zero_radius_and_align_is_the_plain_weighted_sum() -> None:
    plain = step(cdan())
    pga = step(cdan(), procedure="pga", pga_radius=0.0, pga_align=0.0)
    assert plain.keys() == pga.keys()
    for name in plain:
        torch.testing.assert_close(pga[name], plain[name], rtol=1e-5, atol=1e-7)


def test_run_stage_gives_pga_backward_on_the_stage_losses_with_every_parameter_shared() -> None:
    radius, align = 0.05, 0.02
    through_stage = step(cdan(), procedure="pga", pga_radius=radius, pga_align=align)

    baseline = cdan()
    loss_fn = partial(baseline.stage("main").loss_fn, batch(), 100)
    losses = loss_fn().losses
    trade_offs = dict(baseline.stage("main").trade_offs)
    params = [p for p in baseline.parameters() if p.requires_grad]
    pga_backward(lambda n: loss_fn().losses[n], losses, params, {}, trade_offs, radius, align)
    direct = {n: p.grad for n, p in baseline.named_parameters() if p.grad is not None}
    for name in direct:
        torch.testing.assert_close(through_stage[name], direct[name], rtol=1e-5, atol=1e-7)
    # and the perturbation matters: the update is not the plain sum
    plain = step(cdan())
    assert any(not torch.allclose(through_stage[n], plain[n], rtol=1e-3, atol=1e-6) for n in plain)


def test_the_perturbed_passes_leave_batch_norm_statistics_alone() -> None:
    def running_stats(model: CDAN) -> list[torch.Tensor]:
        return [b.clone() for name, b in model.named_buffers() if "running" in name]

    once, pga = cdan(train=True, backbone=DTN), cdan(train=True, backbone=DTN)  # DTN has batch norm
    svhn_like = batch(channels=3, size=32)
    torch.manual_seed(3)  # the same dropout masks in both first forward passes
    step(once, data=svhn_like)  # one forward pass counts the batch once
    torch.manual_seed(3)
    step(pga, data=svhn_like, procedure="pga", pga_radius=0.05, pga_align=0.02)  # plus two re-evaluations
    assert running_stats(once), "the test needs a model with batch norm"
    for a, b in zip(running_stats(once), running_stats(pga), strict=True):
        torch.testing.assert_close(a, b)


def test_pga_settings_resolve_engine_first_then_the_baseline_then_the_official_values() -> None:
    default = resolve_plans(cdan(), NoHarmonizer(), EngineOptions(procedure="pga"))["main"]
    assert default.procedure_options == {"radius": 3e-4, "align": 1.0}
    chosen = resolve_plans(cdan(), NoHarmonizer(), EngineOptions(procedure="pga", pga_align=0.5))["main"]
    assert chosen.procedure_options == {"radius": 3e-4, "align": 0.5}
    assert chosen.describe()["pga_align"] == 0.5 and chosen.describe()["procedure"] == "pga"
    assert resolve_plans(cdan(), GH(), EngineOptions())["main"].procedure_options == {}


def test_pga_needs_two_losses_and_valid_settings() -> None:
    with pytest.raises(ConfigError, match="two or more losses"):
        resolve_plans(SourceOnly(LeNet(), num_classes=10), NoHarmonizer(), EngineOptions(procedure="pga"))
    with pytest.raises(ConfigError, match="radius"):
        EngineOptions(procedure="pga", pga_radius=-1.0)
    with pytest.raises(ConfigError, match="engine.procedure='sam' is unknown; choose one of: backprop, pga, null"):
        EngineOptions(procedure="sam")
