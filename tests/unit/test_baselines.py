"""Baseline math on small hand-checked inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from uda.baselines import CDAN, DANN, SourceOnly, UDABatch
from uda.baselines.cdan import cdan_loss, entropy_weights, prediction_entropy
from uda.models import LeNet, RandomizedMultilinearMap, multilinear_map


class FixedLinear(nn.Module):
    """A discriminator with known weights (sum of inputs times w)."""

    def __init__(self, dim: int, w: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((dim,), w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


def batch(n: int = 4) -> UDABatch:
    torch.manual_seed(0)
    return UDABatch(torch.randn(n, 1, 28, 28), torch.randint(0, 10, (n,)), torch.randn(n, 1, 28, 28))


def test_entropy_and_weights_by_hand() -> None:
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.9, 0.1]])
    h = prediction_entropy(probs)
    expected = [
        -(1 * math.log(1 + 1e-5) + 0.0),
        -2 * 0.5 * math.log(0.5 + 1e-5),
        -(0.9 * math.log(0.9 + 1e-5) + 0.1 * math.log(0.1 + 1e-5)),
    ]
    assert h.tolist() == pytest.approx(expected, rel=1e-6, abs=1e-6)
    w = entropy_weights(h, num_source=1)
    raw = [1 + math.exp(-e) for e in expected]
    assert w.tolist() == pytest.approx([1.0, raw[1] / (raw[1] + raw[2]), raw[2] / (raw[1] + raw[2])], rel=1e-6)
    # normalized within each domain: one per domain, two in all
    assert w[:1].sum().item() == pytest.approx(1.0) and w[1:].sum().item() == pytest.approx(1.0)


def test_cdan_e_loss_by_hand() -> None:
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, -1.0]])
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 3.0], [1.0, -1.0]])
    disc = FixedLinear(4, 0.5)
    loss, _ = cdan_loss(features, logits, disc, coeff=1.0, num_source=2)

    p = F.softmax(logits, 1)
    d = torch.stack([(torch.outer(p[i], features[i]).flatten() * 0.5).sum() for i in range(4)])
    y = torch.tensor([1.0, 1.0, 0.0, 0.0])
    bce = -(y * torch.log(torch.sigmoid(d)) + (1 - y) * torch.log(1 - torch.sigmoid(d)))
    entropy = -(p * torch.log(p + 1e-5)).sum(1)
    w = 1 + torch.exp(-entropy)
    w = torch.cat([w[:2] / w[:2].sum(), w[2:] / w[2:].sum()])
    assert loss.item() == pytest.approx(((w * bce).sum() / w.sum()).item(), rel=1e-6)

    plain, _ = cdan_loss(features, logits, disc, coeff=1.0, num_source=2, entropy_conditioning=False)
    assert plain.item() == pytest.approx(bce.mean().item(), rel=1e-6)


def test_cdan_conditioning_is_detached_but_entropy_weight_reverses_into_the_classifier() -> None:
    features = torch.randn(6, 3, requires_grad=True)
    logits = torch.randn(6, 4, requires_grad=True)
    disc = FixedLinear(12, 0.1)
    loss, _ = cdan_loss(features, logits, disc, coeff=1.0, num_source=3, entropy_conditioning=False)
    loss.backward()
    assert logits.grad is None or logits.grad.abs().sum() == 0  # softmax in the map is detached
    assert features.grad.abs().sum() > 0

    logits2 = logits.detach().clone().requires_grad_(True)
    loss_e, _ = cdan_loss(features.detach(), logits2, disc, coeff=0.5, num_source=3)
    loss_e.backward()
    grad_half = logits2.grad.clone()
    logits2.grad = None
    loss_e, _ = cdan_loss(features.detach(), logits2, disc, coeff=1.0, num_source=3)
    loss_e.backward()
    assert grad_half.abs().sum() > 0  # CDAN+E: the entropy weight back-propagates ...
    torch.testing.assert_close(grad_half, 0.5 * logits2.grad)  # ... scaled by the GRL coefficient


def test_multilinear_and_randomized_maps() -> None:
    f, g = torch.randn(5, 3), F.softmax(torch.randn(5, 4), 1)
    m = multilinear_map(f, g)
    assert m.shape == (5, 12)
    torch.testing.assert_close(m[2].view(4, 3), torch.outer(g[2], f[2]))
    rmap = RandomizedMultilinearMap(3, 4, output_dim=16)
    out = rmap(f, g)
    torch.testing.assert_close(out, (f @ rmap.r_feature) * (g @ rmap.r_class) / 4.0)
    assert not any(p.requires_grad for p in rmap.parameters())
    assert set(rmap.state_dict()) == {"r_feature", "r_class"}


def test_cdan_official_scope_excludes_discriminator_and_shared_excludes_classifier() -> None:
    model = CDAN(LeNet(), num_classes=10, discriminator_hidden=16, bottleneck_dim=32)
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    official = ids(model.scope_parameters("official"))
    assert ids(model.discriminator.parameters()).isdisjoint(official)
    assert ids(model.classifier.parameters()) <= official
    assert ids(model.bottleneck.parameters()) <= official
    shared = ids(model.scope_parameters("shared"))
    assert ids(model.classifier.parameters()).isdisjoint(shared)
    assert ids(model.scope_parameters("backbone")) == ids(model.backbone.parameters())
    with pytest.raises(ValueError, match="official, backbone, shared"):
        model.scope_parameters("everything")


@pytest.mark.parametrize("randomized", [False, True])
def test_cdan_returns_named_losses_and_metrics(randomized: bool) -> None:
    model = CDAN(LeNet(), num_classes=10, discriminator_hidden=16, randomized=randomized, randomized_dim=64)
    out = model.compute_losses("main", batch(), iteration=0)
    assert set(out.losses) == {"align", "cls"}
    assert out.metrics["grl_coeff"] == 0.0
    assert model.stages[0].harmonize == (("align", "cls"),)  # official order: alignment is loss "1"
    assert model.stages[0].trade_offs == {"align": 1.0, "cls": 1.0}
    assert model.predict(batch().x_source).shape == (4, 10)


def test_dann_loss_is_domain_bce() -> None:
    model = DANN(LeNet(), num_classes=10, discriminator_hidden=16)
    b = batch()
    with torch.random.fork_rng():
        torch.manual_seed(1)
        out = model.compute_losses("main", b, iteration=100)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        f = model.backbone(torch.cat([b.x_source, b.x_target]))
        d = model.discriminator(f)
    expected = F.binary_cross_entropy_with_logits(d, torch.tensor([1.0] * 4 + [0.0] * 4))
    assert out.losses["align"].item() == pytest.approx(expected.item(), rel=1e-5)
    # the GRL makes the backbone ascend the domain loss
    model.zero_grad()
    out.losses["align"].backward()
    assert all(p.grad is not None for p in model.discriminator.parameters())


def test_source_only_has_one_loss_and_ignores_target() -> None:
    model = SourceOnly(LeNet(), num_classes=10)
    b = batch()
    out = model.compute_losses("main", b._replace(x_target=torch.full_like(b.x_target, float("nan"))), 0)
    assert set(out.losses) == {"cls"} and torch.isfinite(out.losses["cls"])
    assert model.stages[0].harmonize == ()


def test_backbone_must_expose_feature_dimension() -> None:
    with pytest.raises(TypeError, match="out_features"):
        SourceOnly(nn.Identity(), num_classes=2)


@pytest.mark.parametrize("cls", [CDAN, DANN])
def test_adversarial_baselines_keep_tau_off_the_discriminator_by_default(cls) -> None:
    stage = cls(LeNet(), num_classes=10, discriminator_hidden=8).stages[0]
    assert stage.tau_applies_to == "gram_params" and stage.trade_off == "after"
