"""The engine passes the loss values to the harmonizers that weight by them (FAMO, DB-MTL), with no extra pass."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from uda.harmonizers import DBMTL, FAMO, GH, feature_space_backward, harmonized_backward
from uda.harmonizers.engine import harmonize_groups, loss_values


def tiny_problem(seed: int = 0) -> tuple[nn.Module, nn.Module, list[torch.Tensor], torch.Tensor]:
    torch.manual_seed(seed)
    body, head = nn.Linear(4, 3), nn.Linear(3, 2)
    x = torch.randn(8, 4)
    z = body(x)
    out = head(z)
    losses = [out[:, 0].pow(2).mean() + 0.1, (out[:, 1] - 1).pow(2).mean() + 0.2]
    return body, head, losses, z


def explicit_update(losses: list[torch.Tensor], params: list[nn.Parameter], tau: torch.Tensor) -> list[torch.Tensor]:
    grads = [torch.autograd.grad(loss, params, retain_graph=True) for loss in losses]
    return [sum(t * g[i] for t, g in zip(tau, grads, strict=True)) for i in range(len(params))]


def test_harmonized_backward_gives_famo_the_loss_values() -> None:
    body, head, losses, _ = tiny_problem()
    params = [*body.parameters(), *head.parameters()]
    values = torch.stack([loss.detach() for loss in losses])
    expected_tau = (1 / values) / (1 / values).sum()  # FAMO's first step: z uniform, tau ∝ 1 / L_i
    expected = explicit_update(losses, params, expected_tau)
    stats = harmonized_backward(losses, params, FAMO())
    torch.testing.assert_close(stats.tau, expected_tau)
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.grad, e)


def test_weighted_harmonization_shows_the_harmonizer_the_weighted_losses() -> None:
    body, head, losses, _ = tiny_problem(1)
    params = [*body.parameters(), *head.parameters()]
    coefs = torch.tensor([0.5, 2.0])
    grads = torch.stack(
        [torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, retain_graph=True)]) for loss in losses]
    )
    norms, values = grads.norm(dim=1), torch.stack([loss.detach() for loss in losses])
    # DB-MTL on coef_i g_i and coef_i L_i: tau_i = max_j (‖c_j g_j‖ / (c_j L_j)) / ‖c_i g_i‖ (the c_j cancel)
    expected = (norms / values).max() / (coefs * norms)
    stats = harmonized_backward(losses, params, DBMTL(beta=0.0), trade_offs=coefs.tolist(), trade_off_before=True)
    torch.testing.assert_close(stats.tau, expected.float())


def test_feature_space_backward_gives_famo_the_loss_values() -> None:
    body, head, losses, z = tiny_problem(2)
    values = torch.stack([loss.detach() for loss in losses])
    stats = feature_space_backward(losses, z, FAMO())
    torch.testing.assert_close(stats.tau, (1 / values) / (1 / values).sum())


def test_the_loss_values_are_reduced_like_the_gradients_under_ddp() -> None:
    body, head, losses, z = tiny_problem(3)
    shapes: list[tuple[int, ...]] = []

    def record(t: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(t.shape))
        return t

    harmonized_backward(losses, [*body.parameters(), *head.parameters()], FAMO(), reduce=record, retain_graph=True)
    assert (2,) in shapes  # the (m,) loss values went through the same all-reduce as the gradients
    shapes.clear()
    feature_space_backward(losses, z, FAMO(), reduce_losses=record)
    assert shapes == [(2,)]


def test_gram_only_harmonizers_cost_nothing_and_loss_methods_must_get_values() -> None:
    _, _, losses, _ = tiny_problem()
    assert loss_values(losses, GH()) is None
    assert loss_values(losses, [GH(), FAMO()]).shape == (2,)
    with pytest.raises(ValueError, match="loss values|losses"):
        harmonize_groups(torch.eye(2), FAMO(), torch.ones(2), None, False)


def test_a_harmonizer_without_its_loss_values_says_what_to_pass() -> None:
    """The two refusals a user can meet when calling a loss-weighting harmonizer directly, word for word."""
    missing = (
        "famo weights the losses by their values: pass `losses` (one value per row of the Gram matrix); "
        "the engine does this for every harmonizer with needs_losses = True"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(missing)}$"):
        FAMO().weights(torch.eye(3))
    with pytest.raises(ValueError, match=re.escape("famo: expected 3 loss values, got shape (2,)")):
        FAMO().weights(torch.eye(3), torch.ones(2))
    with pytest.raises(ValueError, match=re.escape("dbmtl: expected 2 loss values, got shape (2, 1)")):
        DBMTL().weights(torch.eye(2), torch.ones(2, 1))


@pytest.mark.parametrize("min_losses", [0.9999999, (0.9999999, 0.0)], ids=["one bound", "per loss"])
def test_famo_compares_losses_with_their_bounds_in_float64(min_losses) -> None:
    """A loss 1e-7 above its lower bound: FAMO's first weights are tau_i ∝ 1/(L_i − b_i + ε) (uniform logits),
    computed here by hand in float64. The subtraction must happen in float64 whatever the losses' dtype: float32
    losses or bounds would round 0.9999999 to 0.99999988 and give that loss a weight about 15 % too small."""
    losses = torch.tensor([1.0, 2.0], dtype=torch.float32)  # exact in float32
    bounds = [0.9999999, 0.9999999 if isinstance(min_losses, float) else 0.0]
    inverse = torch.tensor([1.0 / (1.0 - bounds[0] + 1e-8), 1.0 / (2.0 - bounds[1] + 1e-8)], dtype=torch.float64)
    tau = FAMO(min_losses=min_losses).weights(torch.eye(2, dtype=torch.float64), losses)
    torch.testing.assert_close(tau, inverse / inverse.sum(), rtol=1e-9, atol=0)
