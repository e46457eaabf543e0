"""GH and GH++ weights against the closed forms of reference/harmonizers.md, on hand-built Gram matrices."""

from __future__ import annotations

import math

import pytest
import torch

from uda.harmonizers import GH, GHPP, Harmonizer, NoHarmonizer


def gram_of(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    g = torch.stack([g1, g2]).double()
    return g @ g.T


def gram(n1: float, n2: float, theta: float) -> torch.Tensor:
    """2x2 Gram matrix of two vectors with norms n1, n2 at angle theta."""
    c = n1 * n2 * math.cos(theta)
    return torch.tensor([[n1 * n1, c], [c, n2 * n2]], dtype=torch.float64)


def ghpp_closed_form(theta: float, lam: float) -> tuple[float, float]:
    if math.cos(theta) >= 0:
        return 1.0, 1.0
    phi = theta - math.pi / 2
    return 1 + 2 * math.sin(lam * phi / 2), 1 - 2 * math.sin((1 - lam) * phi / 2)


ALL = [NoHarmonizer(), GH(), GHPP(0.0), GHPP(0.5), GHPP(1.0)]


# ----------------------------------------------------------------------------- GH
def test_gh_conflicting_matches_closed_form() -> None:
    n1, n2, theta = 2.0, 0.5, math.radians(130)
    c = n1 * n2 * math.cos(theta)
    tau = GH().weights(gram(n1, n2, theta))
    # tau1 divides by ||g1||^2, tau2 by ||g2||^2 (crossed norms)
    assert tau.tolist() == pytest.approx([1 - c / n1**2, 1 - c / n2**2], rel=1e-12)
    assert (tau >= 1).all()


def test_gh_equals_sum_of_mutual_projections() -> None:
    torch.manual_seed(0)
    g1 = torch.randn(50, dtype=torch.float64)
    g2 = -0.7 * g1 + 0.3 * torch.randn(50, dtype=torch.float64)
    c = g1 @ g2
    assert c < 0
    g1_hat = g1 - c / (g2 @ g2) * g2
    g2_hat = g2 - c / (g1 @ g1) * g1
    tau = GH().weights(gram_of(g1, g2))
    d = tau[0] * g1 + tau[1] * g2
    torch.testing.assert_close(d, g1_hat + g2_hat)
    # the harmonized pair makes the angle pi - theta, and d conflicts with neither gradient
    assert g1_hat @ g2_hat >= 0
    assert d @ g1 >= -1e-12 and d @ g2 >= -1e-12


@pytest.mark.parametrize("theta_deg", [0, 30, 89.9, 90])
def test_gh_non_conflicting_is_identity(theta_deg: float) -> None:
    tau = GH().weights(gram(1.5, 3.0, math.radians(theta_deg)))
    assert tau.tolist() == [1.0, 1.0]


def test_gh_exactly_orthogonal_c_zero_is_identity() -> None:
    k = torch.tensor([[4.0, 0.0], [0.0, 9.0]], dtype=torch.float64)
    assert GH().weights(k).tolist() == [1.0, 1.0]
    assert GHPP(0.5).weights(k).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("harmonizer", ALL, ids=repr)
@pytest.mark.parametrize("zero", [0, 1])
def test_zero_norm_gradient_gives_identity_and_finite(harmonizer: Harmonizer, zero: int) -> None:
    k = torch.zeros(2, 2, dtype=torch.float64)
    k[1 - zero, 1 - zero] = 3.0
    tau = harmonizer.weights(k)
    assert torch.isfinite(tau).all()
    assert tau.tolist() == [1.0, 1.0]


def test_gh_antiparallel_cancels_exactly() -> None:
    g1 = torch.tensor([1.0, 2.0, -2.0], dtype=torch.float64)
    g2 = -2.5 * g1
    tau = GH().weights(gram_of(g1, g2))
    assert torch.isfinite(tau).all()
    assert tau.tolist() == pytest.approx([1 + 2.5, 1 + 1 / 2.5])
    torch.testing.assert_close(tau[0] * g1 + tau[1] * g2, torch.zeros(3, dtype=torch.float64))


# --------------------------------------------------------------------------- GH++
@pytest.mark.parametrize("lam", [0.0, 0.1, 1 / 3, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("theta_deg", [10, 90, 91, 120, 150, 179.9])
def test_ghpp_matches_closed_form(lam: float, theta_deg: float) -> None:
    theta = math.radians(theta_deg)
    tau = GHPP(lam).weights(gram(3.0, 0.2, theta))
    assert tau.tolist() == pytest.approx(ghpp_closed_form(theta, lam), abs=1e-9)


def test_ghpp_matches_official_degree_code() -> None:
    """The official code: θ in degrees, β = k(θ − 90), gh1 = 1 + 2 sin(β/2), gh2 = 1 + 2 sin((β + 90 − θ)/2)."""
    torch.manual_seed(1)
    for _ in range(20):
        g1, g2 = torch.randn(30, dtype=torch.float64), torch.randn(30, dtype=torch.float64)
        k = gram_of(g1, g2)
        lam = float(torch.rand(()))
        cos = float(g1 @ g2 / (g1.norm() * g2.norm()))
        if cos >= 0:
            expected = [1.0, 1.0]
        else:
            theta = math.degrees(math.acos(cos))
            beta = lam * (theta - 90)
            expected = [
                1 + 2 * math.sin(math.radians(beta / 2)),
                1 + 2 * math.sin(math.radians((beta + 90 - theta) / 2)),
            ]
        assert GHPP(lam).weights(k).tolist() == pytest.approx(expected, abs=1e-9)


def test_ghpp_antiparallel_is_finite_and_favours_loss_one() -> None:
    g1 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    tau = GHPP(0.5).weights(gram_of(g1, -4.0 * g1))
    # θ = π, φ = π/2: tau1 = 1 + 2 sin(π/8), tau2 = 1 − 2 sin(π/8)
    assert tau.tolist() == pytest.approx([1 + 2 * math.sin(math.pi / 8), 1 - 2 * math.sin(math.pi / 8)])
    assert tau[0] > 1 > tau[1]


def test_ghpp_can_make_tau2_negative_for_small_lambda() -> None:
    # documented property: for λ < 1/3 at large θ, tau2 < 0 (gradient ascent on loss 2)
    tau = GHPP(0.0).weights(gram(1.0, 1.0, math.radians(179)))
    assert tau[1] < 0


@pytest.mark.parametrize("lam", [-0.1, 1.5])
def test_ghpp_rejects_lambda_outside_unit_interval(lam: float) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        GHPP(lam)


# ------------------------------------------------------------------ shared properties
@pytest.mark.parametrize("harmonizer", ALL, ids=repr)
def test_weights_are_detached_finite_and_in_gram_dtype(harmonizer: Harmonizer) -> None:
    k = gram(1.0, 2.0, math.radians(140)).float().requires_grad_(True)
    tau = harmonizer.weights(k)
    assert not tau.requires_grad
    assert tau.dtype == torch.float32 and tau.shape == (2,)
    assert torch.isfinite(tau).all()


@pytest.mark.parametrize("harmonizer", ALL, ids=repr)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_gram_falls_back_to_plain_sum(harmonizer: Harmonizer, bad: float) -> None:
    for i, j in [(0, 0), (0, 1), (1, 1)]:
        k = gram(1.0, 2.0, math.radians(150))
        k[i, j] = bad
        k[j, i] = bad
        assert harmonizer.weights(k).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("harmonizer", ALL, ids=repr)
@pytest.mark.parametrize("scale", [1e-6, 1e-3, 7.0, 1e4])
def test_invariant_to_a_common_gradient_scale(harmonizer: Harmonizer, scale: float) -> None:
    k = gram(0.3, 2.0, math.radians(125))
    torch.testing.assert_close(harmonizer.weights(k * scale**2), harmonizer.weights(k))


def test_gh_never_conflicts_on_random_pairs() -> None:
    torch.manual_seed(2)
    for _ in range(200):
        g = torch.randn(2, 20, dtype=torch.float64) * torch.rand(2, 1, dtype=torch.float64) * 10
        tau = GH().weights(g @ g.T)
        d = tau @ g
        assert (g @ d >= -1e-10 * d.norm() * g.norm(dim=1)).all()


def test_gh_is_not_invariant_to_scaling_one_loss() -> None:
    """Why `engine.weighted` exists: harmonizing (λ·L1, L2) differs from harmonizing (L1, L2)."""
    k = gram(1.0, 1.0, math.radians(120))
    lam = 0.3
    weighted = k * torch.outer(torch.tensor([lam, 1.0]), torch.tensor([lam, 1.0])).double()
    assert not torch.allclose(GH().weights(weighted), GH().weights(k))


@pytest.mark.parametrize("harmonizer", [GH(), GHPP()], ids=repr)
def test_two_loss_methods_reject_other_sizes(harmonizer: Harmonizer) -> None:
    with pytest.raises(ValueError, match="exactly 2"):
        harmonizer.weights(torch.eye(3))
    with pytest.raises(ValueError, match="square"):
        harmonizer.weights(torch.ones(2, 3))
