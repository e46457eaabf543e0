"""The 2-pass gradient engine against the official 3-pass procedure and explicit vector algebra."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from uda.baselines import CDAN, UDABatch
from uda.harmonizers import (
    FAMO,
    GH,
    GHPP,
    MGDA,
    GradStats,
    NoHarmonizer,
    feature_space_backward,
    harmonized_backward,
    loss_gradients,
    three_pass_backward,
)
from uda.harmonizers.engine import default_groups, gram_matrix, loss_values, trainable_params
from uda.models import LeNet


def grads(params: list[nn.Parameter]) -> list[torch.Tensor]:
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]


def clear(module: nn.Module) -> None:
    for p in module.parameters():
        p.grad = None


def cdan_losses(model: CDAN, batch: UDABatch, seed: int = 0) -> list[torch.Tensor]:
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # same dropout masks in every forward pass
        out = model.compute_losses("main", batch, iteration=500)
    return [out.losses["align"], out.losses["cls"]]


@pytest.fixture
def cdan() -> tuple[CDAN, UDABatch]:
    torch.manual_seed(0)
    model = CDAN(LeNet(), num_classes=10, discriminator_hidden=64)
    batch = UDABatch(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,)), torch.randn(8, 1, 28, 28))
    return model, batch


@pytest.mark.parametrize("harmonizer", [GH(), GHPP(0.5), GHPP(0.2), NoHarmonizer()], ids=repr)
@pytest.mark.parametrize("coefs", [(1.0, 1.0), (0.3, 1.0)])
def test_two_pass_equals_official_three_pass_on_cdan(cdan, harmonizer, coefs) -> None:
    model, batch = cdan
    params = list(model.parameters())
    scope = model.scope_parameters("official")

    three_tau = three_pass_backward(cdan_losses(model, batch), params, harmonizer, trade_offs=coefs, gram_params=scope)
    expected = grads(params)
    clear(model)
    stats = harmonized_backward(cdan_losses(model, batch), params, harmonizer, trade_offs=coefs, gram_params=scope)
    got = grads(params)

    torch.testing.assert_close(stats.tau, three_tau)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)
    assert any(e.abs().sum() > 0 for e in expected)


def test_official_scope_excludes_discriminator_but_tau_still_scales_it(cdan) -> None:
    model, batch = cdan
    params = list(model.parameters())
    scope = model.scope_parameters("official")
    disc = set(map(id, model.discriminator.parameters()))
    assert not disc & set(map(id, scope))

    stats = harmonized_backward(cdan_losses(model, batch), params, GHPP(0.5), gram_params=scope)
    official = [p.grad.clone() for p in model.discriminator.parameters()]
    clear(model)
    plain = harmonized_backward(cdan_losses(model, batch), params, NoHarmonizer(), gram_params=scope)
    assert plain.tau.tolist() == [1.0, 1.0]
    raw = [p.grad.clone() for p in model.discriminator.parameters()]
    # only the alignment loss reaches the discriminator: its gradient is tau1 * g_align there
    for o, r in zip(official, raw, strict=True):
        torch.testing.assert_close(o, stats.tau[0] * r)


def test_tau_on_gram_params_leaves_parameters_outside_the_scope_unweighted(cdan) -> None:
    model, batch = cdan
    params = list(model.parameters())
    scope = model.scope_parameters("official")
    harmonized_backward(cdan_losses(model, batch), params, NoHarmonizer(), trade_offs=[0.5, 1.0], gram_params=scope)
    plain = grads(params)
    clear(model)
    stats = harmonized_backward(
        cdan_losses(model, batch), params, GH(), trade_offs=[0.5, 1.0], gram_params=scope, tau_applies_to="gram_params"
    )
    scope_ids = set(map(id, scope))
    for p, g in zip(params, plain, strict=True):
        if id(p) not in scope_ids:
            torch.testing.assert_close(p.grad, g)
    assert stats.tau.shape == (2,)


def test_weighted_gram_uses_coefficient_scaled_gradients() -> None:
    w = nn.Parameter(torch.tensor([1.0, 0.0]))
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    losses = lambda: [w @ g1, w @ g2]  # noqa: E731 - gradients are exactly g1, g2
    coefs = [0.2, 1.0]
    stats = harmonized_backward(losses(), [w], GH(), trade_offs=coefs, trade_off_before=True)
    expected_tau = GH().weights(torch.stack([0.2 * g1, g2]) @ torch.stack([0.2 * g1, g2]).T)
    torch.testing.assert_close(stats.tau, expected_tau)
    torch.testing.assert_close(w.grad, 0.2 * expected_tau[0] * g1 + expected_tau[1] * g2)
    w.grad = None
    unweighted = harmonized_backward(losses(), [w], GH(), trade_offs=coefs, trade_off_before=False)
    torch.testing.assert_close(unweighted.tau, GH().weights(torch.stack([g1, g2]) @ torch.stack([g1, g2]).T))
    assert not torch.allclose(unweighted.tau, stats.tau)


def test_parameters_reached_by_one_loss_are_zero_filled() -> None:
    shared, only_a = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
    loss_a = (shared * 2).sum() + only_a.sum()
    loss_b = (shared * -1).sum()
    flat = loss_gradients([loss_a, loss_b], [shared, only_a])
    torch.testing.assert_close(flat, torch.tensor([[2.0, 2, 2, 1, 1], [-1.0, -1, -1, 0, 0]]))


def test_gram_scope_may_include_parameters_that_are_not_updated() -> None:
    """MCD step B: the Gram matrix is over the generator while only the classifiers step."""
    gen, head = nn.Parameter(torch.tensor([1.0, 2.0])), nn.Parameter(torch.tensor([0.5]))
    loss1 = (gen * torch.tensor([1.0, 0.0])).sum() + 3 * head.sum()
    loss2 = (gen * torch.tensor([-1.0, 1.0])).sum() - head.sum()
    stats = harmonized_backward([loss1, loss2], [head], GH(), gram_params=[gen])
    assert gen.grad is None
    torch.testing.assert_close(stats.gram, torch.tensor([[1.0, -1.0], [-1.0, 2.0]]))
    tau = GH().weights(stats.gram)
    torch.testing.assert_close(head.grad, torch.tensor([3.0 * tau[0] - tau[1]]))


def test_accumulates_into_existing_grad_like_backward() -> None:
    w = nn.Parameter(torch.tensor([1.0, 1.0]))
    w.grad = torch.tensor([10.0, 10.0])
    harmonized_backward([w.sum(), 2 * w.sum()], [w], NoHarmonizer())
    torch.testing.assert_close(w.grad, torch.tensor([13.0, 13.0]))


def test_stats_update_geometry_matches_explicit_vectors() -> None:
    torch.manual_seed(3)
    w = nn.Parameter(torch.zeros(6))
    g1, g2 = torch.randn(6), torch.randn(6)
    g2 = g2 - 2 * (g2 @ g1).abs() / (g1 @ g1) * g1  # make them conflict
    stats = harmonized_backward([w @ g1, w @ g2], [w], GH(), trade_offs=[0.7, 1.0])
    d = w.grad
    torch.testing.assert_close(stats.update_dots, torch.stack([d @ g1, d @ g2]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(stats.update_norm, d.norm(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(stats.cos(), (g1 @ g2) / (g1.norm() * g2.norm()), rtol=1e-4, atol=1e-6)
    assert stats.conflict().item() == 1.0


def test_gh_guarantee_holds_unless_the_trade_off_is_applied_after_harmonization() -> None:
    """GH's update never conflicts with its inputs; a trade-off applied afterwards (official CDAN) can
    break that, applying it before (`trade_off_before=True`) keeps it."""
    w = nn.Parameter(torch.zeros(2))
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-2.0, 0.5])

    def run(coefs, weighted):
        w.grad = None
        return harmonized_backward([w @ g1, w @ g2], [w], GH(), trade_offs=coefs, trade_off_before=weighted)

    assert run([1.0, 1.0], False).conflict_after().item() == 0.0
    assert run([0.1, 1.0], False).conflict_after().item() == 1.0
    assert run([0.1, 1.0], True).conflict_after().item() == 0.0


def test_plain_sum_of_conflicting_losses_is_reported_as_conflicting_after() -> None:
    w = nn.Parameter(torch.zeros(2))
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-3.0, 0.1])
    stats = harmonized_backward([w @ g1, w @ g2], [w], NoHarmonizer())
    assert stats.conflict().item() == 1.0
    assert stats.conflict_after().item() == 1.0  # d = g1 + g2 points against g1


def test_groups_harmonize_only_the_listed_losses() -> None:
    w = nn.Parameter(torch.zeros(2))
    g = [torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0]), torch.tensor([5.0, 5.0])]
    stats = harmonized_backward([w @ gi for gi in g], [w], GH(), groups=[[0, 1]])
    assert stats.tau[2].item() == 1.0
    expected = GH().weights(torch.stack(g[:2]) @ torch.stack(g[:2]).T)
    torch.testing.assert_close(stats.tau[:2], expected)
    with pytest.raises(ValueError, match="pass `groups`"):
        harmonized_backward([w @ gi for gi in g], [w], GH())


def feature_losses(model: CDAN, batch: UDABatch):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        out = model.compute_losses("main", batch, iteration=300)
    return [out.losses["align"], out.losses["cls"]], out.features


def test_feature_space_weights_whole_losses_or_only_the_extractor(cdan) -> None:
    model, batch = cdan
    (losses, z) = feature_losses(model, batch)
    stats_all = feature_space_backward(losses, z, GH(), trade_offs=[0.5, 1.0], tau_applies_to="all")
    all_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    clear(model)
    (losses, z) = feature_losses(model, batch)
    stats_gram = feature_space_backward(losses, z, GH(), trade_offs=[0.5, 1.0], tau_applies_to="gram_params")
    gram_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    clear(model)
    (losses, z) = feature_losses(model, batch)
    harmonized_backward(losses, model.parameters(), NoHarmonizer(), trade_offs=[0.5, 1.0])
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}

    torch.testing.assert_close(stats_all.tau, stats_gram.tau)
    tau1 = stats_all.tau[0]
    assert stats_all.space == "features" and tau1 > 1  # the feature gradients conflict here
    for name in all_grads:
        if name.startswith("backbone"):  # below z: reweighted in both modes, identically
            torch.testing.assert_close(gram_grads[name], all_grads[name], rtol=1e-5, atol=1e-7)
        if name.startswith("discriminator"):  # above z, reached by loss 1 only
            torch.testing.assert_close(all_grads[name], tau1 * plain[name], rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(gram_grads[name], plain[name], rtol=1e-5, atol=1e-7)


def test_feature_space_gram_is_over_feature_gradients(cdan) -> None:
    model, batch = cdan
    losses, z = feature_losses(model, batch)
    gz = [torch.autograd.grad(loss, z, retain_graph=True)[0].flatten() for loss in losses]
    stats = feature_space_backward(losses, z, NoHarmonizer())
    expected = torch.stack(gz) @ torch.stack(gz).T
    torch.testing.assert_close(stats.gram, expected)


@pytest.mark.parametrize("trade_off_before", [False, True])
def test_feature_space_pair_geometry_follows_where_the_trade_offs_apply(cdan, trade_off_before) -> None:
    """With no harmonization (A = I) the harmonized pair is the pair the harmonizer saw: the raw feature gradients,
    or coef_i·dL_i/dz when the trade-offs apply before harmonization; its Gram matrix is formed here by hand."""
    model, batch = cdan
    losses, z = feature_losses(model, batch)
    gz = torch.stack([torch.autograd.grad(loss, z, retain_graph=True)[0].flatten() for loss in losses])
    coefs = torch.tensor([0.5, 3.0])
    seen = gz * coefs[:, None] if trade_off_before else gz
    stats = feature_space_backward(
        losses, z, NoHarmonizer(), trade_offs=coefs.tolist(), trade_off_before=trade_off_before
    )
    torch.testing.assert_close(stats.pair_gram, seen @ seen.T)


def stats_from_vectors(g: torch.Tensor, tau, coefs, pair, groups, weighted=False) -> GradStats:
    return GradStats(
        gram=g @ g.T,
        tau=torch.as_tensor(tau, dtype=g.dtype),
        trade_offs=torch.as_tensor(coefs, dtype=g.dtype),
        groups=groups,
        pair_coefs=torch.as_tensor(pair, dtype=g.dtype),
        trade_off_before=weighted,
    )


@pytest.mark.parametrize("weighted", [False, True])
def test_grad_stats_geometry_equals_the_vectors(weighted) -> None:
    """Every GradStats quantity against the same quantity formed from explicit gradient vectors."""
    gen = torch.Generator().manual_seed(11)
    g = torch.randn(3, 7, generator=gen, dtype=torch.float64)
    tau, coefs = [1.5, 0.7, 1.0], [0.3, 1.0, 2.0]
    pair = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    stats = stats_from_vectors(g, tau, coefs, pair, ((0, 1, 2),), weighted)
    w = torch.tensor(tau, dtype=torch.float64) * torch.tensor(coefs, dtype=torch.float64)
    d = w @ g
    seen = g * torch.tensor(coefs, dtype=torch.float64)[:, None] if weighted else g
    harmonized = pair @ seen
    torch.testing.assert_close(stats.norms, g.norm(dim=1))
    for i, j in [(0, 1), (1, 2), (2, 0)]:
        torch.testing.assert_close(stats.cos(i, j), g[i] @ g[j] / (g[i].norm() * g[j].norm()))
        assert stats.conflict(i, j).item() == float(g[i] @ g[j] < 0)
        assert stats.pair_conflict_after(i, j).item() == float(harmonized[i] @ harmonized[j] < 0)
    torch.testing.assert_close(stats.update_weights, w)
    torch.testing.assert_close(stats.update_dots, g @ d)
    torch.testing.assert_close(stats.update_norm, d.norm())
    torch.testing.assert_close(stats.update_cos(), (g @ d) / (g.norm(dim=1) * d.norm()))
    torch.testing.assert_close(stats.pair_gram, harmonized @ harmonized.T)
    assert stats.conflict_after().item() == float(((g @ d) < 0).any())


def test_grad_stats_defaults_are_the_first_pair_and_flags_keep_the_dtype() -> None:
    # g1·g2 < 0 (and the harmonized pair too, A = I); g2·g3 > 0, g1·g3 > 0
    g = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    stats = stats_from_vectors(g, [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], torch.eye(3), ((0, 1, 2),))
    assert stats.conflict().item() == 1.0 and stats.conflict(1, 2).item() == 0.0
    assert stats.pair_conflict_after().item() == 1.0 and stats.pair_conflict_after(1, 2).item() == 0.0
    torch.testing.assert_close(stats.cos(), torch.tensor(-(2**-0.5)))
    for flag in (stats.conflict(), stats.conflict_after(), stats.pair_conflict_after()):
        assert flag.dtype == torch.float32 and flag.shape == ()


def test_grad_stats_zero_gradients_give_zero_cosines_not_nan() -> None:
    g = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    stats = stats_from_vectors(g, [1.0, 1.0], [1.0, 1.0], torch.eye(2), ((0, 1),))
    assert stats.cos().item() == 0.0 and stats.cos(1, 0).item() == 0.0
    assert stats.update_cos().tolist() == [0.0, 1.0]
    still = stats_from_vectors(g, [0.0, 0.0], [1.0, 1.0], torch.eye(2), ((0, 1),))  # d = 0
    assert still.update_cos().tolist() == [0.0, 0.0] and still.update_norm.item() == 0.0
    # g2 = -0.7 g1 and w = (1, 1/0.7): d = 0, yet in rounding wᵀKw < 0 (clamped to ‖d‖ = 0) and (K w)_2 = -4e-16
    g = torch.tensor([[1.0, 2.0], [-0.7, -1.4]], dtype=torch.float64)
    cancelled = stats_from_vectors(g, [1.0, 1 / 0.7], [1.0, 1.0], torch.eye(2), ((0, 1),))
    assert cancelled.update_norm.item() == 0.0 and cancelled.update_cos().tolist() == [0.0, 0.0]


def test_conflict_after_looks_only_at_harmonized_losses() -> None:
    # d = g1 + g2 + g3 = (1, 0.5): it opposes g3 = (-1, -1) only; g3 is harmonized in the second case alone
    g = torch.tensor([[1.0, 0.0], [1.0, 1.5], [-1.0, -1.0]])
    outside = stats_from_vectors(g, [1.0] * 3, [1.0] * 3, torch.eye(3), ((0, 1),))
    inside = stats_from_vectors(g, [1.0] * 3, [1.0] * 3, torch.eye(3), ((0, 1), (2,)))
    ungrouped = stats_from_vectors(g, [1.0] * 3, [1.0] * 3, torch.eye(3), ())  # no group: every loss counts
    assert outside.conflict_after().item() == 0.0
    assert inside.conflict_after().item() == 1.0 and ungrouped.conflict_after().item() == 1.0


def test_grad_stats_small_gradients_orthogonal_pairs_and_a_zero_update_are_not_conflicts() -> None:
    g = 1e-3 * torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)  # orthogonal, tiny norms
    stats = stats_from_vectors(g, [1.0, 1.0], [1.0, 1.0], torch.eye(2), ((0, 1),))
    assert stats.conflict().item() == 0.0 and stats.pair_conflict_after().item() == 0.0
    tilted = stats_from_vectors(
        g + torch.tensor([[0.0, 0.0], [1e-3, 0.0]]), [1.0] * 2, [1.0] * 2, torch.eye(2), ((0, 1),)
    )
    torch.testing.assert_close(tilted.cos(), torch.tensor(5**-0.5, dtype=torch.float64))  # ‖g1‖‖g2‖ ≈ 2e-6
    # d = g1 + g2 = (2e-3, 2e-3): cos(d, g1) = 1/√2, cos(d, g2) = 6e-6 / (2√2e-3 · √5e-3) = 3/√10 (‖d‖‖g_i‖ < 1)
    torch.testing.assert_close(tilted.update_cos(), torch.tensor([2**-0.5, 3 * 10**-0.5], dtype=torch.float64))
    zero_update = stats_from_vectors(g, [0.0, 0.0], [1.0, 1.0], torch.eye(2), ((0, 1),))
    assert zero_update.conflict_after().item() == 0.0
    zero_gradient = stats_from_vectors(g * torch.tensor([[1.0], [0.0]]), [1.0] * 2, [1.0] * 2, torch.eye(2), ((0, 1),))
    assert zero_gradient.pair_conflict_after().item() == 0.0


@pytest.mark.parametrize(
    ("epsilon", "weighted", "expected"), [(5e-7, True, 0.0), (5e-7, False, 1.0), (5e-6, True, 1.0)]
)
def test_pair_conflict_tolerance_is_relative_to_the_weighted_terms(epsilon, weighted, expected) -> None:
    """g1 = (1, 0), g2 = (-1, 1), coefs (1, 10), ĝ1 = g1' + a·g2', ĝ2 = g2' (g' = coef·g when weighted).

    Weighted: ĝ1·ĝ2 = -10 + 200a = -200ε for a = 0.05 - ε, against terms ≈ 20 (tolerance 2e-4): ε = 5e-7
    is rounding, 5e-6 a conflict. Unweighted the terms are ≈ 1.1 (tolerance 1.1e-5) and ĝ1·ĝ2 = -1 + 2a."""
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    a = 0.05 - epsilon if weighted else 0.5 - 50 * epsilon  # the same -1e-4·(ε / 5e-7) deficit unweighted
    stats = stats_from_vectors(g, [1.0, 1.0], [1.0, 10.0], [[1.0, a], [0.0, 1.0]], ((0, 1),), weighted)
    assert stats.pair_conflict_after().item() == expected


# ------------------------------------------------------------------------------------------------------
# feature_space_backward on a model small enough to differentiate by hand: z = x W (n samples, k features)
# and linear/quadratic heads on z, so every per-loss feature gradient dL_i/dz, the Gram matrix over them and
# the parameter gradient dL/dW = xᵀ dL/dz are written in closed form here.
# ------------------------------------------------------------------------------------------------------
HAND_N, HAND_D, HAND_K = 5, 4, 3


def hand_problem():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(HAND_N, HAND_D, generator=gen, dtype=torch.float64)
    w = torch.randn(HAND_D, HAND_K, generator=gen, dtype=torch.float64)
    u = torch.randn(3, HAND_K, generator=gen, dtype=torch.float64)
    u[1] = -u[0] + 0.3 * u[1]  # the first two heads pull the features in conflicting directions
    return x, w, u


def hand_losses_and_features(x, w, u, dtype=torch.float64):
    """L1 = Σ_s z_s·u1, L2 = ½ Σ_s (z_s·u2)², L3 = Σ_s z_s·u3, with z = x W (in ``dtype``)."""
    weight = w.clone().requires_grad_(True)
    z = (x @ weight).to(dtype)
    zz = z.to(torch.float64)
    losses = [(zz @ u[0]).sum(), 0.5 * ((zz @ u[1]) ** 2).sum(), (zz @ u[2]).sum()]
    return weight, z, losses


def hand_feature_gradients(x, w, u) -> torch.Tensor:
    """dL_i/dz by hand, flattened: rows u1, (z_s·u2) u2, u3 for every sample s."""
    z = x @ w
    rows = [u[0].expand(HAND_N, HAND_K), (z @ u[1])[:, None] * u[1], u[2].expand(HAND_N, HAND_K)]
    return torch.stack([r.reshape(-1) for r in rows])


def test_gram_and_parameter_gradient_match_the_hand_derivation() -> None:
    x, w, u = hand_problem()
    weight, z, losses = hand_losses_and_features(x, w, u)
    coefs = torch.tensor([0.5, 2.0], dtype=torch.float64)
    stats = feature_space_backward(losses[:2], z, MGDA(), trade_offs=coefs.tolist())
    gz = hand_feature_gradients(x, w, u)[:2]
    gram = gz @ gz.T
    torch.testing.assert_close(stats.gram, gram)
    # trade-offs after harmonization (the default): MGDA sees the raw Gram matrix
    torch.testing.assert_close(stats.tau, MGDA().weights(gram))
    update = (coefs * stats.tau) @ gz  # d = Σ_i coef_i tau_i dL_i/dz
    torch.testing.assert_close(weight.grad, x.T @ update.view(HAND_N, HAND_K))
    assert stats.space == "features" and stats.groups == ((0, 1),) and not stats.trade_off_before
    torch.testing.assert_close(stats.update_weights, coefs * stats.tau)
    assert stats.conflict().item() == float(gram[0, 1] < 0) == 1.0
    assert stats.conflict_after().item() == float(((gz @ update) < -1e-12).any())


def test_trade_offs_before_harmonization_give_the_harmonizer_the_weighted_gram() -> None:
    """MGDA is not scale-invariant, so whether it sees coef_i·g_i shows in its weights."""
    x, w, u = hand_problem()
    weight, z, losses = hand_losses_and_features(x, w, u)
    coefs = torch.tensor([0.5, 2.0], dtype=torch.float64)
    stats = feature_space_backward(losses[:2], z, MGDA(), trade_offs=coefs.tolist(), trade_off_before=True)
    gz = hand_feature_gradients(x, w, u)[:2]
    weighted = gz * coefs[:, None]
    torch.testing.assert_close(stats.tau, MGDA().weights(weighted @ weighted.T))
    assert not torch.allclose(stats.tau, MGDA().weights(gz @ gz.T))  # the two placements differ here
    torch.testing.assert_close(weight.grad, x.T @ (stats.tau @ weighted).view(HAND_N, HAND_K))
    assert stats.trade_off_before


def test_a_scaled_backward_is_unscaled_for_the_gram_and_a_reduction_is_applied() -> None:
    """A float16 GradScaler: the per-loss gradients are taken of the scaled losses and divided by the scale
    for the Gram matrix; the parameter gradients stay scaled (the scaler unscales them). A DDP reduction of the
    Gram matrix (here doubling it) is what the harmonizer sees."""
    x, w, u = hand_problem()
    scale = 1024.0
    gz = hand_feature_gradients(x, w, u)[:2]
    gram = gz @ gz.T
    weight, z, losses = hand_losses_and_features(x, w, u)
    stats = feature_space_backward(
        losses[:2], z, NoHarmonizer(), loss_scale=scale, backward=lambda total: (total * scale).backward()
    )
    torch.testing.assert_close(stats.gram, gram)
    torch.testing.assert_close(weight.grad, scale * (x.T @ gz.sum(0).view(HAND_N, HAND_K)))
    seen = []
    weight, z, losses = hand_losses_and_features(x, w, u)
    stats = feature_space_backward(losses[:2], z, NoHarmonizer(), reduce_gram=lambda g: seen.append(g) or 2.0 * g)
    torch.testing.assert_close(seen[0], gram)
    torch.testing.assert_close(stats.gram, 2.0 * gram)


def test_a_group_leaves_the_other_losses_unharmonized() -> None:
    x, w, u = hand_problem()
    weight, z, losses = hand_losses_and_features(x, w, u)
    stats = feature_space_backward(losses, z, GH(), groups=[(0, 1)])
    gz = hand_feature_gradients(x, w, u)
    assert stats.groups == ((0, 1),)
    assert stats.tau[2].item() == 1.0 and stats.tau[0].item() != 1.0  # GH acts on the conflicting pair only
    torch.testing.assert_close(stats.tau[:2], GH().weights(gz[:2] @ gz[:2].T))
    torch.testing.assert_close(weight.grad, x.T @ (stats.tau @ gz).view(HAND_N, HAND_K))
    assert stats.conflict_after().item() == 0.0  # GH removes the pair's conflict; loss 3 is not in the group


def test_losses_that_do_not_reach_the_features_have_zero_rows() -> None:
    """A regularizer on the weights only (requires grad, no path through z) and a constant (no grad at all)."""
    x, w, u = hand_problem()
    weight, z, losses = hand_losses_and_features(x, w, u)
    regularizer = (weight**2).sum()
    constant = torch.tensor(3.0, dtype=torch.float64)
    stats = feature_space_backward([losses[0], regularizer, constant], z, NoHarmonizer())
    gz = hand_feature_gradients(x, w, u)[0]
    expected = torch.zeros(3, 3, dtype=torch.float64)
    expected[0, 0] = gz @ gz
    torch.testing.assert_close(stats.gram, expected)
    torch.testing.assert_close(weight.grad, x.T @ gz.view(HAND_N, HAND_K) + 2.0 * w)


@pytest.mark.parametrize("tau_applies_to", ["all", "gram_params"])
def test_low_precision_features_give_a_float32_gram_and_full_precision_stays(tau_applies_to) -> None:
    """Under autocast the features are bfloat16: the geometry is computed in float32, and the hook that
    reweights the gradient entering the extractor returns it in the features' dtype (autograd refuses another)."""
    x, w, u = hand_problem()
    weight, z, losses = hand_losses_and_features(x, w, u, dtype=torch.bfloat16)
    stats = feature_space_backward(losses[:2], z, GH(), tau_applies_to=tau_applies_to)
    assert stats.gram.dtype == torch.float32
    gz = hand_feature_gradients(x, w, u)[:2]
    torch.testing.assert_close(stats.gram, (gz @ gz.T).float(), rtol=0.05, atol=0.05 * gz.norm().item() ** 2)
    assert torch.isfinite(weight.grad).all()
    weight, z, losses = hand_losses_and_features(x, w, u)
    assert feature_space_backward(losses[:2], z, GH(), tau_applies_to=tau_applies_to).gram.dtype == torch.float64


def test_no_losses_or_detached_features_are_refused() -> None:
    x, w, u = hand_problem()
    _, z, losses = hand_losses_and_features(x, w, u)
    with pytest.raises(ValueError, match="^feature_space_backward needs at least one loss$"):
        feature_space_backward([], z, GH())
    with pytest.raises(ValueError, match="^the shared features must be part of the autograd graph$"):
        feature_space_backward(losses[:2], z.detach(), GH())


@pytest.mark.parametrize("batched", [False, True])
def test_loss_gradients_are_the_hand_derived_rows_one_pass_or_vmapped(batched) -> None:
    """dL_i/dW = xᵀ dL_i/dz by hand, laid out as rows over (W, an unused bias); the bias is reached by no loss,
    so its columns are zeros. The vmapped path (one backward of the stacked losses with the identity as batched
    grad_outputs) and the per-loss path give the same buffer, and the graph is freed unless retained."""
    x, w, u = hand_problem()
    weight, z, losses = hand_losses_and_features(x, w, u)
    bias = torch.zeros(2, dtype=torch.float64, requires_grad=True)  # a parameter no loss reaches
    flat = loss_gradients(losses, [weight, bias], batched=batched)
    gz = hand_feature_gradients(x, w, u)
    expected = torch.stack([torch.cat([(x.T @ row.view(HAND_N, HAND_K)).reshape(-1), torch.zeros(2)]) for row in gz])
    assert flat.shape == (3, HAND_D * HAND_K + 2) and flat.dtype == torch.float64
    torch.testing.assert_close(flat, expected)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        torch.autograd.grad(losses[1], weight)
    weight, z, losses = hand_losses_and_features(x, w, u)
    torch.testing.assert_close(loss_gradients(losses, [weight], batched=batched, retain_graph=True), expected[:, :-2])
    torch.testing.assert_close(torch.autograd.grad(losses[1], weight)[0], x.T @ gz[1].view(HAND_N, HAND_K))


def test_loss_gradients_give_a_constant_loss_a_zero_row_even_when_batched() -> None:
    """A loss without a graph (identically constant for the batch) cannot join the vmapped pass: it falls back
    to the per-loss path, where its row is zero."""
    x, w, u = hand_problem()
    weight, z, losses = hand_losses_and_features(x, w, u)
    constant = torch.tensor(2.0, dtype=torch.float64)
    flat = loss_gradients([losses[0], constant], [weight], batched=True)
    expected = (x.T @ hand_feature_gradients(x, w, u)[0].view(HAND_N, HAND_K)).reshape(-1)
    torch.testing.assert_close(flat[0], expected)
    assert torch.equal(flat[1], torch.zeros_like(flat[1]))


def test_loss_gradients_refuse_parameters_of_mixed_dtypes_by_name() -> None:
    half = torch.zeros(2, dtype=torch.float32, requires_grad=True)
    full = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    loss = half.sum() + full.sum()
    message = r"^all optimized parameters must share one dtype, got \['torch.float32', 'torch.float64'\]$"
    with pytest.raises(TypeError, match=message):
        loss_gradients([loss], [half, full])


def hand_param_gradients(x, w, u) -> torch.Tensor:
    """dL_i/dW = xᵀ dL_i/dz for the hand model, one flattened row per loss."""
    return torch.stack([(x.T @ row.view(HAND_N, HAND_K)).reshape(-1) for row in hand_feature_gradients(x, w, u)])


def test_parameter_space_scaled_losses_trade_offs_before_and_the_pair_match_the_hand_derivation() -> None:
    """harmonized_backward with a float16-style loss scale: the Gram matrix is of the unscaled gradients, the
    written .grad is the scaled update (the scaler unscales it); MGDA sees coef_i·g_i with the trade-offs before."""
    x, w, u = hand_problem()
    g = hand_param_gradients(x, w, u)[:2]
    coefs = torch.tensor([0.5, 2.0], dtype=torch.float64)
    weighted = g * coefs[:, None]
    weight, _, losses = hand_losses_and_features(x, w, u)
    stats = harmonized_backward(
        losses[:2], [weight], MGDA(), trade_offs=coefs.tolist(), trade_off_before=True, loss_scale=1024.0
    )
    torch.testing.assert_close(stats.gram, g @ g.T)
    torch.testing.assert_close(stats.tau, MGDA().weights(weighted @ weighted.T))
    torch.testing.assert_close(weight.grad.reshape(-1), 1024.0 * (stats.tau @ weighted))
    harmonized = stats.tau[:, None] * weighted  # MGDA rescales each (weighted) gradient: A = diag(tau)
    torch.testing.assert_close(stats.pair_gram, harmonized @ harmonized.T)
    assert stats.trade_off_before and stats.space == "params"


def test_one_harmonizer_per_group_each_sees_its_own_block() -> None:
    x, w, u = hand_problem()
    g = hand_param_gradients(x, w, u)
    weight, _, losses = hand_losses_and_features(x, w, u)
    stats = harmonized_backward(losses, [weight], [GH(), MGDA()], groups=[(0, 1), (2,)])
    assert stats.groups == ((0, 1), (2,))
    torch.testing.assert_close(stats.tau[:2], GH().weights(g[:2] @ g[:2].T))
    assert stats.tau[2].item() == 1.0  # a one-loss group keeps its gradient
    torch.testing.assert_close(weight.grad.reshape(-1), stats.tau @ g)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda ls, p: harmonized_backward([], p, GH()), ValueError, r"^harmonized_backward needs at least one loss$"),
        (
            lambda ls, p: harmonized_backward(ls, [p[0].detach()], GH()),
            ValueError,
            r"^harmonized_backward needs at least one parameter that requires grad$",
        ),
        (
            lambda ls, p: harmonized_backward(ls, p, GH(), tau_applies_to="gram"),
            ValueError,
            r"^tau_applies_to must be 'all' or 'gram_params', got 'gram'$",
        ),
        (
            lambda ls, p: harmonized_backward(ls, p, GH(), trade_offs=[1.0, 1.0, 1.0]),
            ValueError,
            r"^expected 2 coefficients, got \(3,\)$",
        ),
        (
            lambda ls, p: harmonized_backward(ls, p, [GH(), GH()]),
            ValueError,
            r"^expected one harmonizer per harmonized group \(1\), got 2$",
        ),
        (
            lambda ls, p: harmonized_backward(ls, p, GH(), groups=[(0, 1), (1,)]),
            ValueError,
            r"^a loss appears in more than one harmonized group: ",
        ),
    ],
    ids=["no-loss", "no-trainable-parameter", "tau-applies-to", "trade-off-count", "harmonizer-count", "groups"],
)
def test_harmonized_backward_refusals_say_what_is_wrong(call, error, message) -> None:
    x, w, u = hand_problem()
    weight, _, losses = hand_losses_and_features(x, w, u)
    with pytest.raises(error, match=message):
        call(losses[:2], [weight])


# ------------------------------------------------------------------------------------------------------
# The engine's small helpers and its defaults, each against what a caller relies on.
# ------------------------------------------------------------------------------------------------------
def test_trainable_params_keeps_each_trainable_parameter_once_in_first_seen_order() -> None:
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)
    frozen = torch.zeros(4)
    kept = trainable_params([a, frozen, b, a, frozen, b])
    assert len(kept) == 2 and kept[0] is a and kept[1] is b


def test_default_groups_one_group_none_or_a_refusal_that_names_the_fix() -> None:
    assert default_groups(1, GH()) == ()
    assert default_groups(2, GH()) == ((0, 1),)
    assert default_groups(3, MGDA()) == ((0, 1, 2),)
    message = r"^gh harmonizes 2 losses but 3 were given; pass `groups` to say which losses are harmonized together$"
    with pytest.raises(ValueError, match=message):
        default_groups(3, GH())


def test_gram_matrix_of_bfloat16_rows_is_formed_in_float32_even_under_autocast() -> None:
    rows = torch.randn(2, 300, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    exact = rows.double() @ rows.double().T  # the bf16 values are exact in float64; their products nearly so
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gram = gram_matrix(rows)
    assert gram.dtype == torch.float32
    torch.testing.assert_close(gram.double(), exact, rtol=1e-6, atol=1e-4)  # bf16 accumulation is ~100x worse


def test_three_pass_reference_defaults_zero_fill_and_a_trade_off_count_mismatch() -> None:
    """The official procedure with its defaults (every trainable parameter is the Gram scope, trade-offs 1):
    a parameter that only the first loss reaches is zero-filled in the second row."""
    x, w, u = hand_problem()
    g = hand_param_gradients(x, w, u)[:2]
    weight, _, losses = hand_losses_and_features(x, w, u)
    extra = torch.tensor([0.7, -1.3], dtype=torch.float64, requires_grad=True)
    first = losses[0] + 0.5 * (extra**2).sum()  # d/d extra = extra, for the first loss only
    rows = torch.stack([torch.cat([g[0], extra.detach()]), torch.cat([g[1], torch.zeros(2, dtype=torch.float64)])])
    tau = three_pass_backward([first, losses[1]], [weight, extra], GH())
    torch.testing.assert_close(tau, GH().weights(rows @ rows.T))
    assert tau[0].item() != 1.0  # the pair conflicts, so the check below is not the plain sum
    torch.testing.assert_close(weight.grad.reshape(-1), tau @ g)
    torch.testing.assert_close(extra.grad, tau[0] * extra.detach())
    weight, _, losses = hand_losses_and_features(x, w, u)
    with pytest.raises(ValueError, match="zip"):
        three_pass_backward(losses[:2], [weight], GH(), trade_offs=[1.0])


def test_trade_offs_and_the_update_follow_the_parameter_dtype() -> None:
    """float64 parameters get float64 trade-offs by default; a float64 0-d tensor trade-off on float32
    parameters is cast to float32 (the update is one float32 matrix-vector product)."""
    x, w, u = hand_problem()
    weight, _, losses = hand_losses_and_features(x, w, u)
    assert harmonized_backward(losses[:2], [weight], GH()).trade_offs.dtype == torch.float64
    single = nn.Parameter(w.float())
    z = x.float() @ single
    losses32 = [(z @ u[0].float()).sum(), 0.5 * ((z @ u[1].float()) ** 2).sum()]
    stats = harmonized_backward(losses32, [single], GH(), trade_offs=torch.tensor(0.5, dtype=torch.float64))
    assert stats.trade_offs.dtype == torch.float32 and single.grad.dtype == torch.float32
    g = hand_param_gradients(x, w, u)[:2]
    torch.testing.assert_close(single.grad.reshape(-1).double(), 0.5 * (stats.tau.double() @ g), rtol=1e-4, atol=1e-4)


def test_the_graph_is_freed_by_default_and_kept_when_asked() -> None:
    x, w, u = hand_problem()
    weight, _, losses = hand_losses_and_features(x, w, u)
    harmonized_backward(losses[:2], [weight], GH())
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        losses[0].backward()
    weight, _, losses = hand_losses_and_features(x, w, u)
    harmonized_backward(losses[:2], [weight], GH(), retain_graph=True)
    losses[0].backward()  # still possible


class CountingDouble(torch.autograd.Function):
    """y = 2x with a backward that counts its calls: one call per backward pass over the graph."""

    calls = 0

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return 2 * x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        CountingDouble.calls += 1
        return 2 * grad


@pytest.mark.parametrize(("batched", "passes"), [(None, 2), (False, 2), (True, 1)])
def test_batched_takes_the_gradients_in_one_backward_pass_and_the_default_in_one_per_loss(batched, passes) -> None:
    """The default takes one backward pass per loss (any differentiable graph works, even one vmap cannot
    batch); ``batched=True`` takes all of them in a single vmapped pass. Both give 2·dL_i/dW."""
    x, w, u = hand_problem()
    weight = w.clone().requires_grad_(True)
    z = CountingDouble.apply(x @ weight)
    losses = [(z @ u[0]).sum(), 0.5 * ((z @ u[1]) ** 2).sum()]
    CountingDouble.calls = 0
    kwargs = {} if batched is None else {"batched": batched}
    stats = harmonized_backward(losses, [weight], NoHarmonizer(), **kwargs)
    assert CountingDouble.calls == passes
    z_hand = 2 * (x @ w)
    g = torch.stack([2 * (x.T @ u[0].expand(HAND_N, HAND_K)), 2 * (x.T @ ((z_hand @ u[1])[:, None] * u[1]))])
    torch.testing.assert_close(stats.gram, g.reshape(2, -1) @ g.reshape(2, -1).T)


@pytest.mark.parametrize(("harmonizer", "reduced"), [(GH(), ["gradients"]), (FAMO(), ["gradients", "losses"])])
def test_reduce_is_applied_to_the_gradients_and_to_the_loss_values_only_when_they_are_used(harmonizer, reduced) -> None:
    x, w, u = hand_problem()
    weight, _, losses = hand_losses_and_features(x, w, u)
    seen = []

    def reduce(t: torch.Tensor) -> torch.Tensor:
        seen.append("gradients" if t.dim() == 2 else "losses")
        return t.clone()

    harmonized_backward(losses[:2], [weight], harmonizer, reduce=reduce)
    assert seen == reduced


@pytest.mark.parametrize("outside", [False, True], ids=["all-in-scope", "outside-the-scope"])
def test_harmonized_backward_warns_about_nothing(outside) -> None:
    """No resized outputs, no deprecated calls: a warning here would repeat on every training step."""
    x, w, u = hand_problem()
    weight, _, losses = hand_losses_and_features(x, w, u)
    head = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    losses = [losses[0] + (head**2).sum(), losses[1]]
    params = [weight, head]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        harmonized_backward(losses, params, GH(), gram_params=[weight] if outside else None)
    assert weight.grad is not None and head.grad is not None


def test_a_loss_scale_that_is_not_a_power_of_two_is_divided_out_exactly_in_float64() -> None:
    """GradScaler's scales are powers of two, but any float works: the Gram matrix is divided by S² in the
    Gram matrix's own dtype (a float32 S would leave a 1e-7 relative error in a float64 Gram matrix)."""
    x, w, u = hand_problem()
    g = hand_param_gradients(x, w, u)[:2]
    weight, _, losses = hand_losses_and_features(x, w, u)
    stats = harmonized_backward(losses[:2], [weight], GH(), loss_scale=3.1)
    torch.testing.assert_close(stats.gram, g @ g.T, rtol=1e-13, atol=0)
    gz = hand_feature_gradients(x, w, u)[:2]
    weight, z, losses = hand_losses_and_features(x, w, u)
    stats = feature_space_backward(losses[:2], z, GH(), loss_scale=3.1, backward=lambda total: (3.1 * total).backward())
    torch.testing.assert_close(stats.gram, gz @ gz.T, rtol=1e-13, atol=0)


def test_loss_values_are_float32_or_wider_and_only_taken_when_a_harmonizer_uses_them() -> None:
    full = [torch.tensor(1.0 + 2.0**-40, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64)]
    values = loss_values(full, FAMO())
    assert values.dtype == torch.float64 and values[0].item() == 1.0 + 2.0**-40
    low = [torch.tensor(1.5, dtype=torch.bfloat16), torch.tensor(-2.0, dtype=torch.bfloat16)]
    widened = loss_values(low, [GH(), FAMO()])
    assert widened.dtype == torch.float32 and torch.equal(widened, torch.tensor([1.5, -2.0]))
    assert loss_values(full, GH()) is None and loss_values(full, [GH(), MGDA()]) is None


def test_loss_gradients_take_one_backward_pass_per_loss_by_default() -> None:
    x, w, u = hand_problem()
    weight = w.clone().requires_grad_(True)
    z = CountingDouble.apply(x @ weight)
    losses = [(z @ u[0]).sum(), (z @ u[2]).sum()]
    CountingDouble.calls = 0
    flat = loss_gradients(losses, [weight])
    assert CountingDouble.calls == 2
    torch.testing.assert_close(flat, torch.stack([2 * (x.T @ u[i].expand(HAND_N, HAND_K)).reshape(-1) for i in (0, 2)]))


def test_a_constant_loss_anywhere_in_the_list_gets_a_zero_row_and_the_rest_their_gradients() -> None:
    x, w, u = hand_problem()
    weight, _, losses = hand_losses_and_features(x, w, u)
    constant = torch.tensor(2.0, dtype=torch.float64)
    flat = loss_gradients([constant, losses[0], constant, losses[2]], [weight])
    g = hand_param_gradients(x, w, u)
    assert torch.equal(flat[0], torch.zeros_like(flat[0])) and torch.equal(flat[2], torch.zeros_like(flat[2]))
    torch.testing.assert_close(flat[1], g[0])
    torch.testing.assert_close(flat[3], g[2])


def test_a_loss_in_two_groups_is_refused_also_when_the_groups_are_not_adjacent() -> None:
    x, w, u = hand_problem()
    weight, _, losses = hand_losses_and_features(x, w, u)
    with pytest.raises(ValueError, match=r"^a loss appears in more than one harmonized group: "):
        harmonized_backward(losses, [weight], MGDA(), groups=[(0,), (2,), (0, 1)])
