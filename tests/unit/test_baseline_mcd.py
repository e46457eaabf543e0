"""MCD: discrepancy and class-balance entropy by hand; each stage steps exactly its modules."""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial

import pytest
import torch

from tests.unit.harmonizer_fakes import FixedTau
from uda.baselines import MCD, UDABatch
from uda.baselines.mcd import class_balance_entropy, classifier_discrepancy
from uda.harmonizers import GH
from uda.models import LeNet
from uda.module import UDAModule
from uda.training import EngineOptions, run_stage


def test_discrepancy_is_mean_absolute_probability_difference() -> None:
    p1 = torch.tensor([[0.7, 0.3], [0.2, 0.8]])
    p2 = torch.tensor([[0.5, 0.5], [0.2, 0.8]])
    # |0.2| + |0.2| + 0 + 0 over 4 entries
    assert classifier_discrepancy(p1, p2).item() == pytest.approx(0.1)
    assert classifier_discrepancy(p1, p1).item() == 0.0


def test_class_balance_entropy_by_hand() -> None:
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # balanced batch: mean prediction (0.5, 0.5)
    assert class_balance_entropy(probs).item() == pytest.approx(-math.log(0.5 + 1e-6), rel=1e-6)
    collapsed = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # every sample in class 0: large penalty
    expected = -(math.log(1 + 1e-6) + math.log(1e-6)) / 2
    assert class_balance_entropy(collapsed).item() == pytest.approx(expected, rel=1e-6)
    assert class_balance_entropy(collapsed) > class_balance_entropy(probs)


def test_stages_follow_the_three_step_procedure() -> None:
    model = MCD(LeNet(), num_classes=10, trade_off=2.0, num_k=3, hidden=16)
    source, maximize, minimize = model.stages
    assert source.optimizers == ("g", "f") and source.trade_offs == {"cls": 1.0}
    # step B: L1 = classification, L2 = −discrepancy, trade-off before harmonization, only F steps
    assert maximize.harmonize == (("cls", "neg_discrepancy"),) and maximize.trade_off == "before"
    assert maximize.optimizers == ("f",) and maximize.trade_offs == {"cls": 1.0, "neg_discrepancy": 2.0}
    assert minimize.optimizers == ("g",) and minimize.repeat == 3 and minimize.trade_offs == {"discrepancy": 2.0}
    assert model.optimizer_overrides() == {"g": {"momentum": 0.0, "nesterov": False}}


def mcd_module(harmonizer) -> UDAModule:
    torch.manual_seed(0)
    m = UDAModule(
        MCD(LeNet(), num_classes=10, hidden=16),
        harmonizer,
        optimizer=partial(torch.optim.SGD, lr=0.1, momentum=0.9),
        engine=EngineOptions(),
    )
    return m


def step_stage(m: UDAModule, name: str):
    gen = torch.Generator().manual_seed(1)
    batch = UDABatch(
        torch.randn(8, 1, 28, 28, generator=gen),
        torch.randint(0, 10, (8,), generator=gen),
        torch.randn(8, 1, 28, 28, generator=gen),
    )
    stage, plan = m.baseline.stage(name), m.plans[name]
    optimizers = dict(zip(["g", "f"], m.configure_optimizers()[0], strict=True))
    before = {n: p.detach().clone() for n, p in m.baseline.named_parameters()}
    opts = [optimizers[o] for o in plan.optimizers]
    stats = run_stage(plan, partial(stage.loss_fn, batch, 0), opts, m.group_harmonizers[name]).stats
    changed = {n.split(".")[0] for n, p in m.baseline.named_parameters() if not torch.equal(p, before[n])}
    return changed, stats


@pytest.mark.parametrize(
    ("stage", "expected"),
    [
        ("source", {"backbone", "classifier1", "classifier2"}),
        ("maximize", {"classifier1", "classifier2"}),
        ("minimize", {"backbone"}),
    ],
)
def test_each_stage_changes_exactly_its_modules(stage: str, expected: set[str]) -> None:
    changed, _ = step_stage(mcd_module(GH()), stage)
    assert changed == expected


def maximize_batch() -> UDABatch:
    gen = torch.Generator().manual_seed(1)
    return UDABatch(
        torch.randn(8, 1, 28, 28, generator=gen),
        torch.randint(0, 10, (8,), generator=gen),
        torch.randn(8, 1, 28, 28, generator=gen),
    )


def test_step_b_gram_is_over_the_generator_and_tau_multiplies_the_classifier_update() -> None:
    harmonizer = FixedTau((2.0, 0.5))
    m = mcd_module(harmonizer)
    plan = replace(m.plans["maximize"], trade_offs=(1.0, 3.0))  # trade-offs (cls, neg_discrepancy)
    f_params = [*m.baseline.classifier1.parameters(), *m.baseline.classifier2.parameters()]
    loss_fn = partial(m.baseline.stage("maximize").loss_fn, maximize_batch(), 0)
    with torch.random.fork_rng():
        torch.manual_seed(5)  # same dropout masks as the reference below
        run_stage(plan, loss_fn, [torch.optim.SGD(f_params, lr=0.0)], m.group_harmonizers["maximize"])
    got = torch.cat([p.grad.flatten() for p in f_params])
    assert all(p.grad is None for p in m.baseline.backbone.parameters())  # G is not stepped in step B

    with torch.random.fork_rng():
        torch.manual_seed(5)
        ref = m.baseline.compute_losses("maximize", maximize_batch(), 0)
    g_params = list(m.baseline.backbone.parameters())

    def flat(loss: torch.Tensor, params: list) -> torch.Tensor:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        pairs = zip(grads, params, strict=True)
        return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in pairs])

    # weighted placement: the Gram matrix is over G of (1·g_cls, 3·g_neg_disc)
    over_g = torch.stack([flat(ref.losses["cls"], g_params), 3.0 * flat(ref.losses["neg_discrepancy"], g_params)])
    torch.testing.assert_close(harmonizer.seen[0].double(), (over_g @ over_g.T).double(), rtol=1e-4, atol=1e-8)
    # and the classifiers' update is tau1·g_cls + tau2·3·g_neg_disc over F
    expected = 2.0 * flat(ref.losses["cls"], f_params) + 0.5 * 3.0 * flat(ref.losses["neg_discrepancy"], f_params)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    ("stage", "stepped"), [("maximize", ("classifier1", "classifier2")), ("minimize", ("backbone",))]
)
def test_plain_pass_differentiates_only_the_stepped_modules_with_the_full_passs_gradients(
    stage: str, stepped: tuple[str, ...]
) -> None:
    from uda.harmonizers import NoHarmonizer
    from uda.training import StepHooks

    def grads(hooks: StepHooks) -> dict[str, torch.Tensor | None]:
        m = mcd_module(NoHarmonizer())  # same initial weights each time (seed 0)
        params = [p for name in stepped for p in getattr(m.baseline, name).parameters()]
        loss_fn = partial(m.baseline.stage(stage).loss_fn, maximize_batch(), 0)
        with torch.random.fork_rng():
            torch.manual_seed(5)  # the same dropout masks in both passes
            # iteration 1: not a monitored step (monitor_every 10), so the stage takes one plain backward pass
            run_stage(m.plans[stage], loss_fn, [torch.optim.SGD(params, lr=0.0)], [], iteration=1, hooks=hooks)
        return {n: p.grad for n, p in m.baseline.named_parameters()}

    restricted, full = grads(StepHooks()), grads(StepHooks(only_stepped=False))
    for name, grad in restricted.items():
        if name.split(".")[0] in stepped:
            assert grad is not None and torch.equal(grad, full[name]), name  # bitwise the full pass's
        else:
            assert grad is None, name  # not computed at all
            assert full[name] is not None  # while the full pass computed (and wasted) it


def test_ddp_hooks_fill_every_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    import uda.training.hooks as hooks_module

    assert hooks_module.scaled_step_hooks(torch.Tensor.backward, None, torch.device("cpu")).only_stepped
    monkeypatch.setattr(hooks_module, "world_size", lambda: 2)  # under DDP the reducer needs every gradient
    assert not hooks_module.scaled_step_hooks(torch.Tensor.backward, None, torch.device("cpu")).only_stepped
