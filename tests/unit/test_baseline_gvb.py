"""GVB-GD: bridged logits, entropy weights, Myloss and bridge losses by hand; GH over the official scope."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.unit.harmonizer_fakes import FixedTau
from uda.baselines import UDABatch
from uda.baselines.gvb import GVB, bridge_loss, gvb_entropy_weights, weighted_domain_bce
from uda.errors import ConfigError
from uda.harmonizers import GH, Harmonizer
from uda.models import LeNet
from uda.module import UDAModule
from uda.training import EngineOptions, run_stage


class Flat(nn.Module):
    """Identity "backbone" on 2-d inputs, so every head can be checked by hand."""

    out_features = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def set_linear(layer: nn.Linear, weight: list[list[float]], bias: list[float]) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))


def hand_model(**kwargs: float) -> GVB:
    """2 features, 2 classes, discriminator 2 wide with identity hidden layers and no dropout.

    fc = identity, gvbg(f) = (0.5·f0, 0.5) ⇒ logits y = (0.5·f0, f1 − 0.5); the discriminator's hidden
    layer is h = softmax(y) (non-negative, so the ReLUs pass it), ad_layer(h) = p0 − p1 and
    gvbd(h) = 0.5·(p0 + p1) = 0.5 ⇒ domain logit p0 − p1 − 0.5.
    """
    model = GVB(Flat(), num_classes=2, discriminator_hidden=2, discriminator_dropout=0.0, **kwargs)
    set_linear(model.fc, [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    if model.gvbg is not None:
        set_linear(model.gvbg, [[0.5, 0.0], [0.0, 0.0]], [0.0, 0.5])
    set_linear(model.discriminator.body[0], [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    set_linear(model.discriminator.body[3], [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    set_linear(model.discriminator.ad_layer, [[1.0, -1.0]], [0.0])
    if model.discriminator.gvbd is not None:
        set_linear(model.discriminator.gvbd, [[0.5, 0.5]], [0.0])
    return model


HAND_BATCH = UDABatch(
    torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 1]), torch.tensor([[1.0, 1.0], [-1.0, 0.0]])
)


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def entropy(p: list[float]) -> float:
    return -sum(q * math.log(q + 1e-5) for q in p)


def test_bridged_logits_subtract_the_generator_bridge_also_at_test_time() -> None:
    model = hand_model()
    # y = fc(f) − gvbg(f) = (f0 − 0.5 f0, f1 − 0.5)
    expected = [[0.5, -0.5], [0.0, 1.5]]
    torch.testing.assert_close(model.predict(HAND_BATCH.x_source), torch.tensor(expected))
    logits, bridge = model.classify(HAND_BATCH.x_source)
    torch.testing.assert_close(bridge, torch.tensor([[0.5, 0.5], [0.0, 0.5]]))
    torch.testing.assert_close(logits, torch.tensor(expected))
    # without the generator bridge the logits are fc(f) alone and there is no gvbg module at all
    plain = hand_model(gvbg_weight=0.0)
    assert plain.gvbg is None
    torch.testing.assert_close(plain.predict(HAND_BATCH.x_source), HAND_BATCH.x_source)


def test_all_four_losses_by_hand() -> None:
    model = hand_model()
    out = model.compute_losses("main", HAND_BATCH, iteration=0)

    # probabilities of the bridged logits (0.5, −0.5), (0, 1.5), (0.5, 0.5), (−0.5, −0.5)
    probs = [[sigmoid(1.0), sigmoid(-1.0)], [sigmoid(-1.5), sigmoid(1.5)], [0.5, 0.5], [0.5, 0.5]]
    d = [sigmoid(p0 - p1 - 0.5) for p0, p1 in probs]  # domain probability, source = 1
    bce = [-math.log(d[0] + 1e-8), -math.log(d[1] + 1e-8), -math.log(1 - d[2] + 1e-8), -math.log(1 - d[3] + 1e-8)]
    raw = [math.exp(-entropy(p)) for p in probs]
    w = [raw[0] / (raw[0] + raw[1]), raw[1] / (raw[0] + raw[1]), 0.5, 0.5]
    assert out.losses["transfer"].item() == pytest.approx(sum(wi * bi for wi, bi in zip(w, bce, strict=True)) / 2)
    ce = [-math.log(probs[0][0]), -math.log(probs[1][1])]
    assert out.losses["cls"].item() == pytest.approx(sum(ce) / 2, rel=1e-6)
    # |gvbg(f)| = 0.5·|f0| and 0.5 per sample: (0.5 + 0.5 + 0 + 0.5 + 0.5 + 0.5 + 0.5 + 0.5) / 8
    assert out.losses["gvbg"].item() == pytest.approx(3.5 / 8)
    assert out.losses["gvbd"].item() == pytest.approx(0.5)  # 0.5·(p0 + p1) for every sample
    # every domain logit is negative: the sources are misclassified, the targets right
    assert out.metrics["domain_acc"].item() == pytest.approx(0.5)
    assert out.metrics["entropy_weight_mean"].item() == pytest.approx(sum(raw) / 4, rel=1e-6)


def test_without_the_discriminator_bridge_the_domain_logit_is_ad_layer_alone() -> None:
    model = hand_model(gvbd_weight=0.0)
    assert model.discriminator.gvbd is None
    out = model.compute_losses("main", HAND_BATCH, iteration=0)
    assert set(out.losses) == {"transfer", "cls", "gvbg"}
    probs = [[sigmoid(1.0), sigmoid(-1.0)], [sigmoid(-1.5), sigmoid(1.5)], [0.5, 0.5], [0.5, 0.5]]
    d = [sigmoid(p0 - p1) for p0, p1 in probs]
    bce = [-math.log(d[0] + 1e-8), -math.log(d[1] + 1e-8), -math.log(1 - d[2] + 1e-8), -math.log(1 - d[3] + 1e-8)]
    raw = [math.exp(-entropy(p)) for p in probs]
    w = [raw[0] / (raw[0] + raw[1]), raw[1] / (raw[0] + raw[1]), 0.5, 0.5]
    assert out.losses["transfer"].item() == pytest.approx(sum(wi * bi for wi, bi in zip(w, bce, strict=True)) / 2)


def test_entropy_weights_by_hand_and_their_gradient_is_reversed_and_scaled() -> None:
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.9, 0.1]])
    w = gvb_entropy_weights(probs, coeff=1.0, num_source=1)
    raw = [math.exp(-entropy(p)) for p in probs.tolist()]  # exp(−H), no "1 +" unlike CDAN+E
    assert w.tolist() == pytest.approx([1.0, raw[1] / (raw[1] + raw[2]), raw[2] / (raw[1] + raw[2])], rel=1e-6)

    logits = torch.tensor([[2.0, -1.0], [0.3, 0.1], [1.0, 1.5], [-0.5, 2.0]], requires_grad=True)
    costs = torch.tensor([0.7, 1.3, 0.2, 2.0])  # stands for the per-sample BCE the weights multiply

    def weight_grad(coeff: float | None) -> torch.Tensor:
        p = F.softmax(logits, dim=1)
        if coeff is None:  # reference without any GRL
            h = -(p * torch.log(p + 1e-5)).sum(1)
            raw_w = torch.exp(-h)
            w = torch.cat([raw_w[:2] / raw_w[:2].sum().detach(), raw_w[2:] / raw_w[2:].sum().detach()])
        else:
            w = gvb_entropy_weights(p, coeff, num_source=2)
        (grad,) = torch.autograd.grad((w * costs).sum(), logits)
        return grad

    reference = weight_grad(None)
    assert reference.abs().sum() > 0
    torch.testing.assert_close(weight_grad(0.3), -0.3 * reference)
    torch.testing.assert_close(weight_grad(1.0), -reference)


def test_transfer_loss_is_official_myloss() -> None:
    probs = torch.tensor([0.9, 0.6, 0.3, 0.2])
    labels = torch.tensor([1.0, 1.0, 0.0, 0.0])
    weights = torch.tensor([0.75, 0.25, 0.5, 0.5])
    expected = (0.75 * -math.log(0.9) + 0.25 * -math.log(0.6) + 0.5 * -math.log(0.7) + 0.5 * -math.log(0.8)) / 2
    assert weighted_domain_bce(probs, labels, weights).item() == pytest.approx(expected, rel=1e-6)
    # the ε = 1e-8 inside the logarithm caps a saturated wrong prediction at −log(1e-8) (no inf)
    saturated = weighted_domain_bce(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([2.0]))
    assert saturated.item() == pytest.approx(-math.log(1e-8), rel=1e-5)


def test_bridge_loss_is_mean_absolute_value() -> None:
    assert bridge_loss(torch.tensor([[1.0, -2.0], [0.5, -0.5]])).item() == pytest.approx(1.0)
    assert bridge_loss(torch.tensor([-3.0, 1.0])).item() == pytest.approx(2.0)


def test_stage_has_the_official_pairs_and_trade_offs() -> None:
    model = GVB(LeNet(), num_classes=10, trade_off=0.7, gvbg_weight=0.3, gvbd_weight=0.2, discriminator_hidden=8)
    (stage,) = model.stages
    assert stage.trade_offs == {"transfer": 0.7, "cls": 1.0, "gvbg": 0.3, "gvbd": 0.2}
    assert stage.harmonize == (("transfer", "cls"), ("gvbg", "gvbd"))  # official GH pairs, loss "1" first
    assert stage.trade_off == "after" and stage.tau_applies_to == "gram_params"
    with pytest.raises(ConfigError, match="gvbd_weight=-1.0 is invalid"):
        GVB(LeNet(), num_classes=10, gvbd_weight=-1.0)


@pytest.mark.parametrize(
    ("off", "kept"),
    [
        ({"gvbg_weight": 0.0}, {"transfer", "cls", "gvbd"}),
        ({"gvbd_weight": 0.0}, {"transfer", "cls", "gvbg"}),
        ({"gvbg_weight": 0.0, "gvbd_weight": 0.0}, {"transfer", "cls"}),
    ],
)
def test_a_bridge_switched_off_loses_its_loss_and_the_bridge_pair(off: dict, kept: set) -> None:
    model = GVB(LeNet(), num_classes=10, discriminator_hidden=8, **off)
    (stage,) = model.stages
    assert set(stage.trade_offs) == kept
    assert stage.harmonize == (("transfer", "cls"),)  # a bridge pair needs both bridges
    gen = torch.Generator().manual_seed(0)
    batch = UDABatch(
        torch.randn(4, 1, 28, 28, generator=gen), torch.arange(4), torch.randn(4, 1, 28, 28, generator=gen)
    )
    assert set(model.compute_losses("main", batch, 100).losses) == kept


def test_official_scope_is_the_base_network_with_the_generator_bridge() -> None:
    model = GVB(LeNet(), num_classes=10, discriminator_hidden=8)
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    official = ids(model.scope_parameters("official"))
    base = ids([*model.backbone.parameters(), *model.fc.parameters(), *model.gvbg.parameters()])
    assert official == base
    assert ids(model.discriminator.parameters()).isdisjoint(official)  # gvbd head included in the exclusion
    assert ids(model.discriminator.gvbd.parameters()) <= ids(model.discriminator.parameters())
    assert ids(model.scope_parameters("shared")) == ids(model.backbone.parameters())
    no_bridge = GVB(LeNet(), num_classes=10, gvbg_weight=0.0, discriminator_hidden=8)
    assert ids(no_bridge.scope_parameters("official")) == ids(
        [*no_bridge.backbone.parameters(), *no_bridge.fc.parameters()]
    )
    # learning-rate groups: the backbone, and every head (fc, gvbg, discriminator)
    groups = model.optimizer_groups()["main"]
    assert ids(groups["backbone"]) == ids(model.backbone.parameters())
    assert ids(groups["heads"]) == ids(model.parameters()) - ids(model.backbone.parameters())


# ------------------------------------------------------------------ harmonized step through the engine
def gvb_module(harmonizer: Harmonizer, engine: EngineOptions | None = None) -> tuple[UDAModule, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = GVB(LeNet(), num_classes=10, trade_off=0.7, gvbg_weight=0.3, gvbd_weight=0.2, discriminator_hidden=32)
    m = UDAModule(model, harmonizer, optimizer=partial(torch.optim.SGD, lr=0.01), engine=engine or EngineOptions())
    (opt,), _ = m.configure_optimizers()
    return m, opt


ITERATION = 2000  # GRL coefficient λ ≈ 0.96, so the adversarial gradients reach the base network


def main_step(m: UDAModule, opt: torch.optim.Optimizer) -> list:
    """One run_stage of GVB's stage with the module's plan and harmonizers; returns the step's stats."""
    loss_fn = partial(m.baseline.stage("main").loss_fn, digits_batch(), ITERATION)
    return run_stage(m.plans["main"], loss_fn, [opt], m.group_harmonizers["main"], iteration=ITERATION).stats


def digits_batch() -> UDABatch:
    gen = torch.Generator().manual_seed(1)
    return UDABatch(
        torch.randn(8, 1, 28, 28, generator=gen),
        torch.randint(0, 10, (8,), generator=gen),
        torch.randn(8, 1, 28, 28, generator=gen),
    )


def test_gh_step_changes_every_module_and_reweights_conflicting_pairs() -> None:
    m, opt = gvb_module(GH())
    model = m.baseline
    modules = {
        "backbone": model.backbone,
        "fc": model.fc,
        "gvbg": model.gvbg,
        "discriminator.body": model.discriminator.body,
        "discriminator.ad_layer": model.discriminator.ad_layer,
        "discriminator.gvbd": model.discriminator.gvbd,
    }
    before = {name: [p.detach().clone() for p in mod.parameters()] for name, mod in modules.items()}
    step_stats = main_step(m, opt)
    for name, mod in modules.items():
        changed = [not torch.equal(p, b) for p, b in zip(mod.parameters(), before[name], strict=True)]
        assert all(changed), f"{name} was not updated"

    assert [item.names for item in step_stats] == [("transfer", "cls"), ("gvbg", "gvbd")]
    conflicting = 0
    for item in step_stats:
        i, j = item.stats.groups[item.group]
        tau = item.stats.tau[[i, j]]
        if item.stats.gram[i, j] < 0:  # GH: tau_k = 1 − g1·g2/‖g_k‖² > 1 for both losses
            conflicting += 1
            assert (tau > 1).all()
            n1, n2, dot = item.stats.gram[i, i], item.stats.gram[j, j], item.stats.gram[i, j]
            torch.testing.assert_close(tau, torch.stack([1 - dot / n1, 1 - dot / n2]))
        else:
            assert tau.tolist() == [1.0, 1.0]
    assert conflicting >= 1  # this batch and seed make at least one pair conflict


@pytest.mark.parametrize("tau_applies_to", [None, "all"])
def test_each_pair_gets_its_own_tau_after_the_trade_off(tau_applies_to: str | None) -> None:
    harmonizer = FixedTau((2.0, 0.5))
    m, _ = gvb_module(harmonizer, EngineOptions(tau_applies_to=tau_applies_to))
    model = m.baseline
    with torch.random.fork_rng():
        torch.manual_seed(5)  # same dropout masks as the reference below
        main_step(m, torch.optim.SGD(model.parameters(), lr=0.0))  # lr 0: the weights stay, .grad is read
    with torch.random.fork_rng():
        torch.manual_seed(5)
        ref = model.compute_losses("main", digits_batch(), ITERATION)

    def flat(loss: torch.Tensor, params: list) -> torch.Tensor:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True, materialize_grads=True)
        return torch.cat([g.flatten() for g in grads])

    scope = model.scope_parameters("official")
    gvb_pair = torch.stack([flat(ref.losses["gvbg"], scope), flat(ref.losses["gvbd"], scope)])
    # the second pair's Gram matrix is over backbone + fc + gvbg of the raw (unweighted) gradients
    torch.testing.assert_close(harmonizer.seen[1].double(), (gvb_pair @ gvb_pair.T).double(), rtol=1e-4, atol=1e-10)

    # in the Gram scope: tau, then the trade-off (official: trade_off·gh1·transfer + gh2·cls + ...)
    weights = {"transfer": 2.0 * 0.7, "cls": 0.5, "gvbg": 2.0 * 0.3, "gvbd": 0.5 * 0.2}
    expected = sum(w * flat(ref.losses[n], scope) for n, w in weights.items())
    torch.testing.assert_close(torch.cat([p.grad.flatten() for p in scope]), expected, rtol=1e-4, atol=1e-7)
    # the discriminator: plain Σ coef·g by default (tau_applies_to=gram_params), tau-weighted with the official "all"
    disc = list(model.discriminator.parameters())
    if tau_applies_to is None:
        weights = {"transfer": 0.7, "cls": 1.0, "gvbg": 0.3, "gvbd": 0.2}
    expected = sum(w * flat(ref.losses[n], disc) for n, w in weights.items())
    torch.testing.assert_close(torch.cat([p.grad.flatten() for p in disc]), expected, rtol=1e-4, atol=1e-7)
