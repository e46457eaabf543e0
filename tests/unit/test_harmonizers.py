"""GH and GH++ weights against the closed forms of reference/harmonizers.md, on hand-built Gram matrices."""

from __future__ import annotations

import math

import pytest
import torch

from uda.harmonizers import GH, GHPP, MGDA, Harmonizer, NoHarmonizer


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


# GH-specific properties (the properties every harmonizer shares are in test_harmonizer_family.py)
def test_gh_never_conflicts_on_random_pairs() -> None:
    torch.manual_seed(2)
    for _ in range(200):
        g = torch.randn(2, 20, dtype=torch.float64) * torch.rand(2, 1, dtype=torch.float64) * 10
        tau = GH().weights(g @ g.T)
        d = tau @ g
        assert (g @ d >= -1e-10 * d.norm() * g.norm(dim=1)).all()


def test_gh_is_not_invariant_to_scaling_one_loss() -> None:
    """Why `engine.trade_off` exists: harmonizing (λ·L1, L2) differs from harmonizing (L1, L2)."""
    k = gram(1.0, 1.0, math.radians(120))
    lam = 0.3
    weighted = k * torch.outer(torch.tensor([lam, 1.0]), torch.tensor([lam, 1.0])).double()
    assert not torch.allclose(GH().weights(weighted), GH().weights(k))


# ------------------------------------------------------- details found by mutation testing (make mutate)
# Each test below pins a behaviour that a surviving mutant of `make mutate` changed without any test noticing;
# the expected values come from the papers' definitions or from vector algebra, not from the code.


def unit_vectors_at(theta: float, n1: float, n2: float) -> torch.Tensor:
    """Two 2-d vectors with norms n1, n2 at angle theta (g1 along the x axis)."""
    return torch.tensor([[n1, 0.0], [n2 * math.cos(theta), n2 * math.sin(theta)]], dtype=torch.float64)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize(
    ("cls", "defaults"),
    [
        ("PCGrad", {"seed": 0}),
        ("GradVac", {"beta": 0.01, "seed": 0}),  # GradVac paper: β = 0.01
        ("GHPP", {"lam": 0.5}),  # GH paper: λ = 0.5 in every table
        ("GHPPRotation", {"lam": 0.5}),
        ("ProGrad", {"lam": 1.0, "keep_anchor": True}),
        ("FairGrad", {"alpha": 2.0}),  # conf/harmonizer/fairgrad.yaml: minimum potential delay fairness
        ("DBMTL", {"beta": 0.9, "beta_sigma": 0.0}),  # DB-MTL official defaults
        ("ConFIGMomentum", {"momentum": 0.9}),
        ("CAGrad", {"c_a": 0.4, "rescale": True}),
        ("SignFlip", {"negate": 1}),  # flip_align: loss 1 is negated
    ],
)
def test_constructor_defaults_are_the_documented_values(cls: str, defaults: dict) -> None:
    import uda.harmonizers as harmonizers

    instance = getattr(harmonizers, cls)()
    assert {k: getattr(instance, k) for k in defaults} == defaults


@pytest.mark.parametrize(("harmonizer", "text"), [(GH(), "gh"), (GHPP(0.25), "ghpp(lam=0.25)")])
def test_repr_is_the_name_and_its_parameters(harmonizer: Harmonizer, text: str) -> None:
    assert repr(harmonizer) == text


def test_repr_joins_several_parameters() -> None:
    from uda.harmonizers import CAGrad, ProGrad

    assert repr(ProGrad(0.5, keep_anchor=False)) == "prograd(lam=0.5, keep_anchor=False)"
    assert repr(CAGrad(c_a=0.2, rescale=False)) == "cagrad(c_a=0.2, rescale=False)"


@pytest.mark.parametrize(
    ("cls", "kwargs", "text"),
    [
        ("PCGrad", {"seed": 3}, "pcgrad(seed=3)"),
        ("GradVac", {"beta": 0.5}, "gradvac(beta=0.5)"),
        ("FairGrad", {"alpha": 1.0}, "fairgrad(alpha=1.0)"),
        ("DBMTL", {"beta": 0.5}, "dbmtl(beta=0.5, beta_sigma=0.0, min_losses=0.0)"),
        ("FAMO", {"lr": 0.5}, "famo(lr=0.5, gamma=0.01, min_losses=0.0)"),
        ("ConFIGMomentum", {"momentum": 0.5}, "config_momentum(momentum=0.5)"),
        ("UPGrad", {"reg_eps": 0.001}, "upgrad(reg_eps=0.001)"),
        ("DualProj", {"reg_eps": 0.001}, "dualproj(reg_eps=0.001)"),
        ("GHPPRotation", {"lam": 0.25}, "ghpp_rot(lam=0.25)"),
    ],
)
def test_repr_carries_the_hyper_parameters_reports_group_by(cls: str, kwargs: dict, text: str) -> None:
    """uda.report parses ``name(key=value, ...)`` from the summary's harmonizer string to group runs."""
    import uda.harmonizers as harmonizers

    assert repr(getattr(harmonizers, cls)(**kwargs)) == text


def test_calling_a_harmonizer_gives_its_weights() -> None:
    k = gram(2.0, 0.5, math.radians(130))
    torch.testing.assert_close(GHPP(0.3)(k), GHPP(0.3).weights(k))


def test_gradvac_lifts_the_cosine_to_its_target_and_moves_the_target_by_its_ema() -> None:
    """GradVac (Wang et al. 2021, Eq. 5-6): when φ = cos(g_i, g_j) < φ_T, ĝ_i = g_i + w·g_j reaches
    cos(ĝ_i, g_j) = φ_T exactly; then φ_T ← (1 − β)·φ_T + β·φ. Norms below 1 on purpose."""
    from uda.harmonizers import GradVac

    g = unit_vectors_at(math.radians(100), 0.5, 0.3)  # φ = cos 100° ≈ -0.17
    phi = math.cos(math.radians(100))
    h = GradVac(beta=0.25)
    h.load_state_dict({"target": torch.tensor([[0.0, 0.4], [0.4, 0.0]], dtype=torch.float64)})
    harmonized = h.coefficients(g @ g.T) @ g
    assert cosine(harmonized[0], g[1]) == pytest.approx(0.4, abs=1e-12)
    assert cosine(harmonized[1], g[0]) == pytest.approx(0.4, abs=1e-12)
    # ĝ_i moved along g_j only: its component orthogonal to g_j is g_i's
    for i, j in ((0, 1), (1, 0)):
        along = g[j] / g[j].norm()
        torch.testing.assert_close(harmonized[i] - (harmonized[i] @ along) * along, g[i] - (g[i] @ along) * along)
    expected_target = 0.75 * 0.4 + 0.25 * phi
    expected = torch.tensor([[0.0, expected_target], [expected_target, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(h.state_dict()["target"], expected)


def test_gradvac_leaves_pairs_above_their_target_alone_and_still_updates_the_target() -> None:
    from uda.harmonizers import GradVac

    g = unit_vectors_at(math.radians(60), 0.5, 0.3)  # φ = 0.5 > φ_T = 0.2
    h = GradVac(beta=0.5)
    h.load_state_dict({"target": torch.tensor([[0.0, 0.2], [0.2, 0.0]], dtype=torch.float64)})
    assert h.coefficients(g @ g.T).tolist() == [[1.0, 0.0], [0.0, 1.0]]
    torch.testing.assert_close(h.state_dict()["target"], torch.tensor([[0.0, 0.35], [0.35, 0.0]], dtype=torch.float64))


def test_gradvac_state_before_any_step_and_a_zero_gradient_keep_the_target() -> None:
    from uda.harmonizers import GradVac

    h = GradVac(beta=0.5)
    assert h.state_dict()["target"] is None
    g = unit_vectors_at(math.radians(120), 0.5, 0.3)
    h.coefficients(g @ g.T)
    moved = h.state_dict()["target"].clone()
    assert moved[0, 1] == pytest.approx(0.5 * math.cos(math.radians(120)))
    zero = torch.tensor([[0.25, 0.0], [0.0, 0.0]], dtype=torch.float64)  # g2 = 0: nothing to learn from
    assert h.coefficients(zero).tolist() == [[1.0, 0.0], [0.0, 1.0]]
    torch.testing.assert_close(h.state_dict()["target"], moved)


@pytest.mark.parametrize(("beta", "ok"), [(0.0, True), (1.0, True), (1.5, False), (-0.1, False)])
def test_gradvac_beta_is_a_rate_in_the_unit_interval(beta: float, ok: bool) -> None:
    from uda.errors import ConfigError
    from uda.harmonizers import GradVac

    if ok:
        assert GradVac(beta=beta).beta == beta
    else:
        with pytest.raises(ConfigError, match=rf"harmonizer.beta={beta} is outside \[0, 1\]"):
            GradVac(beta=beta)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("IMTLG", 1.0),
        ("ConFIG", 1.0),
        ("NoHarmonizer", 1.0),
        ("MGDA", 1.0),
        ("UPGrad", 1.0),
        ("DualProj", 1.0),
        ("FairGrad", 4.0 ** (-1 / 1.5)),  # K w = w^(-1/α) with K = ‖g‖² = 4, α = 2
    ],
)
def test_a_single_loss_gets_its_one_loss_weight(name: str, expected: float) -> None:
    import uda.harmonizers as harmonizers

    h = getattr(harmonizers, name)()
    tau = h.weights(torch.tensor([[4.0]], dtype=torch.float64))
    assert tau.shape == (1,) and tau.dtype == torch.float64 and tau.item() == pytest.approx(expected)


@pytest.mark.parametrize(("lam", "ok"), [(1.0, True), (0.0, True), (1.5, False)])
def test_prograd_strength_is_in_the_unit_interval(lam: float, ok: bool) -> None:
    from uda.errors import ConfigError
    from uda.harmonizers import ProGrad

    if ok:
        assert ProGrad(lam).lam == lam
    else:
        with pytest.raises(ConfigError, match=r"harmonizer.lam=1.5 is outside \[0, 1\]: for ProGrad"):
            ProGrad(lam)


def test_prograd_projects_loss_one_off_loss_two_by_its_strength_only_on_conflict() -> None:
    """ProGrad (Zhu et al. 2023, Eq. 4): ĝ1 = g1 − λ (g1·g2/‖g2‖²) g2 when g1·g2 < 0, else g1."""
    from uda.harmonizers import ProGrad

    g = unit_vectors_at(math.radians(120), 0.8, 0.5)
    c = float(g[0] @ g[1])
    harmonized = ProGrad(0.5).coefficients(g @ g.T) @ g
    torch.testing.assert_close(harmonized[0], g[0] - 0.5 * c / float(g[1] @ g[1]) * g[1])
    torch.testing.assert_close(harmonized[1], g[1])
    acute = unit_vectors_at(math.radians(80), 0.8, 0.5)  # g1·g2 ≈ 0.07 > 0: no projection
    assert ProGrad(0.5).coefficients(acute @ acute.T).tolist() == [[1.0, 0.0], [0.0, 1.0]]


@pytest.mark.parametrize("lam", [0.25, 0.5])
@pytest.mark.parametrize("theta_deg", [100, 150])
def test_ghpp_rotation_rotates_both_gradients_within_their_plane_to_orthogonal(lam: float, theta_deg: float) -> None:
    """The rotation extension: g1 turns toward g2 by β = λ(θ − 90°), g2 toward g1 by (1 − λ)(θ − 90°), norms kept,
    so the harmonized pair is orthogonal."""
    from uda.harmonizers import GHPPRotation

    theta = math.radians(theta_deg)
    g = unit_vectors_at(theta, 0.7, 2.0)
    harmonized = GHPPRotation(lam).coefficients(g @ g.T) @ g
    torch.testing.assert_close(harmonized.norm(dim=1), g.norm(dim=1))
    assert float(harmonized[0] @ harmonized[1]) == pytest.approx(0.0, abs=1e-12)
    phi = theta - math.pi / 2
    assert math.acos(cosine(harmonized[0], g[0])) == pytest.approx(lam * phi)
    assert math.acos(cosine(harmonized[1], g[1])) == pytest.approx((1 - lam) * phi)
    assert math.acos(cosine(harmonized[0], g[1])) == pytest.approx(theta - lam * phi)  # toward g2, not away


def test_ghpp_rotation_falls_back_to_gh_strictly_below_its_sine_threshold() -> None:
    """The plane is used while sin θ >= eps (a rotation: norms kept, pair orthogonal); GH only below it."""
    from uda.harmonizers import GHPPRotation
    from uda.harmonizers.base import pair_angle

    g = unit_vectors_at(math.radians(150), 0.7, 2.0)
    k = g @ g.T
    s = float(torch.sin(pair_angle(k[0, 0], k[1, 1], k[0, 1])))  # sin θ as the harmonizer sees it (≈ 0.5)
    at_threshold = GHPPRotation(eps=s).coefficients(k) @ g
    torch.testing.assert_close(at_threshold.norm(dim=1), g.norm(dim=1))
    assert float(at_threshold[0] @ at_threshold[1]) == pytest.approx(0.0, abs=1e-12)
    above = GHPPRotation(eps=math.nextafter(s, 1.0)).weights(k)
    torch.testing.assert_close(above, GH().weights(k))


def test_ghpp_rotation_leaves_acute_pairs_alone_and_names_itself_in_its_error() -> None:
    from uda.errors import ConfigError
    from uda.harmonizers import GHPPRotation

    g = unit_vectors_at(math.radians(60), 0.7, 0.9)  # g1·g2 = 0.315: acute
    assert GHPPRotation().coefficients(g @ g.T).tolist() == [[1.0, 0.0], [0.0, 1.0]]
    with pytest.raises(ConfigError, match=r"harmonizer.lam=2.0 is outside \[0, 1\]: for GH\+\+ rotation it"):
        GHPPRotation(2.0)


@pytest.mark.parametrize("small", [1e-20, 2 * torch.finfo(torch.float64).eps])
def test_aligned_mtl_drops_directions_at_or_below_its_rank_threshold(small: float) -> None:
    """Aligned-MTL keeps the eigen-directions of the Gram matrix above m·eps·λ_max; a direction at or below it
    (a numerically absent gradient) gets weight 0, the others the usual σ_min/σ scaling."""
    from uda.harmonizers import AlignedMTL

    k = torch.tensor([[1.0, 0.0], [0.0, small]], dtype=torch.float64)
    assert AlignedMTL().weights(k).tolist() == [1.0, 0.0]
    kept = torch.tensor([[1.0, 0.0], [0.0, 4 * torch.finfo(torch.float64).eps]], dtype=torch.float64)
    assert AlignedMTL().weights(kept).tolist() == pytest.approx([2 * math.sqrt(torch.finfo(torch.float64).eps), 1.0])


def test_config_momentum_weights_come_from_the_bias_corrected_running_gram() -> None:
    """K̄_t = β K̄_{t−1} + (1 − β) K_t from K̄_0 = 0, K̂ = K̄_t / (1 − β^t), and for two losses
    tau_i = (n̂_1 + n̂_2) / (2 n̂_i) with n̂_i = sqrt(K̂_ii)."""
    from uda.harmonizers import ConFIGMomentum

    beta = 0.5
    k1 = torch.tensor([[4.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    k2 = torch.tensor([[1.0, 0.5], [0.5, 9.0]], dtype=torch.float64)
    h = ConFIGMomentum(momentum=beta)
    for step, expected_running in ((1, (1 - beta) * k1), (2, beta * (1 - beta) * k1 + (1 - beta) * k2)):
        k = k1 if step == 1 else k2
        tau = h.weights(k)
        smoothed = torch.sqrt(torch.diagonal(expected_running / (1 - beta**step)))
        torch.testing.assert_close(tau, smoothed.sum() / (2 * smoothed))
        torch.testing.assert_close(h.state_dict()["running_gram"], expected_running)
        assert h.state_dict()["steps"].item() == step


@pytest.mark.parametrize(("n1", "n2", "sign"), [(1.0, 3.0, -1.0), (2.0, 0.5, 1.0)])
def test_two_loss_config_and_imtl_g_keep_their_closed_forms_for_collinear_gradients(
    n1: float, n2: float, sign: float
) -> None:
    """Exactly (anti)parallel gradients, where the general m-loss formulas are singular: ConFIG's two-loss
    form is tau_i = (‖g_1‖ + ‖g_2‖) / (2 ‖g_i‖) (so the antiparallel update is exactly 0), IMTL-G's is
    tau ∝ (1/‖g_1‖, 1/‖g_2‖) with sum 1."""
    from uda.harmonizers import IMTLG, ConFIG

    g = torch.tensor([[n1, 0.0], [sign * n2, 0.0]], dtype=torch.float64)
    k = g @ g.T
    torch.testing.assert_close(ConFIG().weights(k), torch.tensor([(n1 + n2) / (2 * n1), (n1 + n2) / (2 * n2)]).double())
    torch.testing.assert_close(IMTLG().weights(k), torch.tensor([n2 / (n1 + n2), n1 / (n1 + n2)]).double())
    if sign < 0:
        assert (ConFIG().weights(k) @ g).abs().max() < 1e-12


@pytest.mark.parametrize("m", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_config_weights_come_in_the_gram_dtype(m: int, dtype: torch.dtype) -> None:
    """The public Gram-form function returns its weights in the Gram matrix's dtype for every number of losses
    (one loss: the weight 1)."""
    from uda.harmonizers.config import config_weights

    k = torch.eye(m, dtype=dtype) * 4.0
    weights = config_weights(k)
    assert weights.dtype == dtype and weights.tolist() == [1.0] * m


def test_dbmtl_averages_log_loss_gradient_norms_with_a_decaying_rate() -> None:
    """n_i = ‖g_i‖ / (L_i − min + ε); n̄ ← n + β_t (n̄ − n) from n̄ = 0 with β_t = β / t^σ; tau_i = max_j n̄_j / ‖g_i‖."""
    from uda.harmonizers import DBMTL

    beta, sigma, eps = 0.5, 1.0, 0.25
    h = DBMTL(beta=beta, beta_sigma=sigma, eps=eps)
    running = torch.zeros(2, dtype=torch.float64)
    steps = [
        (torch.tensor([[4.0, -1.0], [-1.0, 1.0]], dtype=torch.float64), torch.tensor([1.0, 0.5], dtype=torch.float64)),
        (torch.tensor([[1.0, 0.2], [0.2, 9.0]], dtype=torch.float64), torch.tensor([0.5, 2.0], dtype=torch.float64)),
    ]
    for t, (k, losses) in enumerate(steps, start=1):
        norms = torch.sqrt(torch.diagonal(k))
        n = norms / (losses + eps)
        running = n + beta / t**sigma * (running - n)
        torch.testing.assert_close(h.weights(k, losses), running.max() / norms)
    torch.testing.assert_close(h.state_dict()["running_norms"], running)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beta": 1.0}, r"harmonizer.beta=1.0 is outside \[0, 1\): it is DB-MTL's"),
        ({"beta_sigma": -1.0}, r"harmonizer.beta_sigma=-1.0 is invalid: DB-MTL's decay power must be >= 0"),
        ({"eps": 0.0}, r"harmonizer.eps=0.0 is invalid: DB-MTL's offset inside the log must be > 0"),
    ],
)
def test_dbmtl_rejects_bad_settings_in_one_sentence(kwargs: dict, message: str) -> None:
    from uda.errors import ConfigError
    from uda.harmonizers import DBMTL

    with pytest.raises(ConfigError, match=message):
        DBMTL(**kwargs)


def test_dbmtl_wants_one_lower_bound_per_loss_and_names_itself() -> None:
    from uda.errors import ConfigError
    from uda.harmonizers import DBMTL

    k = torch.eye(2, dtype=torch.float64)
    with pytest.raises(ConfigError, match="has 3 values for a group of 2 losses: give DB-MTL one lower bound"):
        DBMTL(min_losses=[0.0, 0.0, 0.0]).weights(k, torch.ones(2, dtype=torch.float64))


def test_a_harmonizer_called_as_a_function_passes_the_loss_values_on() -> None:
    """DB-MTL's first step, called as h(K, L): norms (2, 1), losses (1, 0.25), so the log-loss gradient norms are
    n = (2, 4), the running average (1 − β) n = (1, 2) at β = 0.5, and tau_i = max_j n̄_j / ‖g_i‖ = (1, 2)."""
    from uda.harmonizers import DBMTL

    k = torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64))
    tau = DBMTL(beta=0.5)(k, torch.tensor([1.0, 0.25], dtype=torch.float64))
    torch.testing.assert_close(tau, torch.tensor([1.0, 2.0], dtype=torch.float64), rtol=1e-6, atol=0)


@pytest.mark.parametrize("alpha", [0.2, 2.0, 5.0])
@pytest.mark.parametrize("m", [2])  # m = 3 raises numpy's LinAlgError in the Newton solver (reported)
def test_fairgrad_falls_back_to_the_plain_sum_when_no_fair_weights_exist(m: int, alpha: float) -> None:
    """K w = w^(−1/α) has no positive solution when the gradients admit no common descent direction (exactly
    opposite ones): the residual check (relative to w^(−1/α), whatever the size of w) rejects whatever the
    solver returned and the step is the plain sum, for small and large α."""
    from uda.harmonizers import FairGrad

    g = torch.tensor([[1.0, 2.0], [-0.1, -0.2], [2.0, 4.0]], dtype=torch.float64)[:m]  # opposite, norms 10:1
    assert FairGrad(alpha).weights(g @ g.T).tolist() == [1.0] * m


@pytest.mark.parametrize("offset", [1e-4, -1e-4])
def test_fairgrad_two_loss_search_finds_a_root_beside_a_point_of_its_grid(offset: float) -> None:
    """Orthogonal gradients, K = diag(a, 1): K w = w^(−1/α) gives w = (a^(−α/(α+1)), 1), so log(w2/w1) =
    log(a)/(1 + 1/α). a is chosen to put that root 1e-4 above (below) a point of the search's first grid:
    the zoomed grid then holds it in its first (last) cell, the edges of the bracket search."""
    from uda.harmonizers import FairGrad
    from uda.harmonizers.fairgrad import _GRID_POINTS, _LOG_RATIO_BOUND

    alpha = 1.0
    grid_point = -_LOG_RATIO_BOUND + 2 * _LOG_RATIO_BOUND * (_GRID_POINTS // 2) / (_GRID_POINTS - 1)
    a = math.exp((1 + 1 / alpha) * (grid_point + offset))
    weights = FairGrad(alpha).weights(torch.tensor([[a, 0.0], [0.0, 1.0]], dtype=torch.float64))
    torch.testing.assert_close(weights, torch.tensor([a ** (-alpha / (alpha + 1)), 1.0], dtype=torch.float64))


def test_fairgrad_newton_solver_at_alpha_one_solves_without_floating_point_warnings() -> None:
    """α = 1 (Nash-MTL's K w = 1/w) with three losses: the solver's barrier is Σ log w there, since the general
    Σ w^(1−1/α)/(1 − 1/α) would divide by zero (numpy warns and the line search sees −inf)."""
    import warnings

    from uda.harmonizers import FairGrad

    g = torch.tensor([[1.0, 0.2, 0.0], [-0.5, 1.0, 0.3], [0.1, -0.4, 2.0]], dtype=torch.float64)
    k = g @ g.T
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w = FairGrad(1.0).weights(k)
    torch.testing.assert_close(k @ w, 1 / w)


def cagrad_dual_objective(w: torch.Tensor, k: torch.Tensor, c: float) -> torch.Tensor:
    """CAGrad's dual, F(w) = wᵀ K b + c ‖g0‖ sqrt(wᵀ K w) with b uniform and ‖g0‖ = sqrt(bᵀ K b), for rows w."""
    b = torch.full((k.shape[0],), 1.0 / k.shape[0], dtype=k.dtype)
    g0 = torch.sqrt(b @ k @ b)
    return w @ k @ b + c * g0 * torch.sqrt(torch.clamp(((w @ k) * w).sum(-1), min=0.0))


def cagrad_two_loss_optimum(k: torch.Tensor, c: float) -> float:
    """x* = argmin_{x ∈ [0, 1]} F(x, 1 − x) by bisection on the analytic derivative, F convex:
    F'(x) = (K b)_1 − (K b)_2 + c‖g0‖ ((K w)_1 − (K w)_2) / sqrt(wᵀ K w), w = (x, 1 − x)."""
    kb = k @ torch.full((2,), 0.5, dtype=k.dtype)
    g0 = torch.sqrt(k.sum() / 4)

    def slope(x: float) -> float:
        w = torch.tensor([x, 1 - x], dtype=k.dtype)
        kw = k @ w
        return (kb[0] - kb[1] + c * g0 * (kw[0] - kw[1]) / torch.sqrt(w @ kw)).item()

    if slope(0.0) >= 0:
        return 0.0
    if slope(1.0) <= 0:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
    return 0.5 * (lo + hi)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("c", [0.2, 1.0, 2.0])
def test_cagrad_with_two_losses_minimizes_its_dual_on_the_segment(seed: int, c: float) -> None:
    """Two losses: the on-device grid search (3 zooms of 1001 points, so about 4e-9 in x) against the optimum
    found by bisection on the dual's derivative; w is recovered from tau (no rescale) as the normalized tau − 1/2,
    and tau must be 1/2 + (c‖g0‖/‖g_w‖) w, divided by 1 + c² with the rescale."""
    from uda.harmonizers import CAGrad

    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    g[1] = -0.7 * g[0] * (seed + 1) + 0.4 * g[1]  # conflicting, of different norms
    k = g @ g.T
    tau = CAGrad(c_a=c, rescale=False).weights(k)
    w = (tau - 0.5) / (tau - 0.5).sum()
    best = cagrad_two_loss_optimum(k, c)
    if c == 2.0:
        assert 0.0 < best < 1.0  # a large radius: interior optima (the small ones sit on a bound)
    assert abs(w[0].item() - best) <= 1e-8
    w_best = torch.tensor([best, 1 - best], dtype=torch.float64)
    g0 = torch.sqrt(k.sum() / 4)
    expected = 0.5 + c * g0 / torch.sqrt(w_best @ k @ w_best) * w_best
    torch.testing.assert_close(tau, expected, rtol=1e-7, atol=0)
    torch.testing.assert_close(CAGrad(c_a=c).weights(k), expected / (1 + c**2), rtol=1e-7, atol=0)


def test_cagrad_with_three_losses_is_precise_to_a_zoomed_brute_force() -> None:
    """m = 3 to about 1e-6: the simplex grid (step 1/200) is zoomed five times around its best point (each time
    a 41 × 41 grid over ± two steps), an exhaustive search independent of SLSQP; the solver's w must agree to
    2e-6 (SLSQP with its default tolerance, 1e-6 on the objective, is only about 1e-3 close)."""
    from uda.harmonizers import CAGrad

    gen = torch.Generator().manual_seed(0)
    g = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    g[1] = -0.8 * g[0] + 0.3 * g[1]
    k, c = g @ g.T, 2.0
    tau = CAGrad(c_a=c, rescale=False).weights(k)
    w = (tau - 1.0 / 3) / (tau - 1.0 / 3).sum()
    steps = 200
    i, j = torch.meshgrid(torch.arange(steps + 1), torch.arange(steps + 1), indexing="ij")
    keep = i + j <= steps
    grid = torch.stack([i[keep], j[keep]], dim=1).to(torch.float64) / steps
    step = 1.0 / steps
    for _ in range(6):
        candidates = torch.cat([grid, 1 - grid.sum(1, keepdim=True)], dim=1)
        candidates = candidates[(candidates >= 0).all(1)]
        best = candidates[torch.argmin(cagrad_dual_objective(candidates, k, c))]
        offsets = torch.linspace(-2 * step, 2 * step, 41, dtype=torch.float64)
        grid = torch.stack(torch.meshgrid(best[0] + offsets, best[1] + offsets, indexing="ij"), dim=-1).reshape(-1, 2)
        grid = grid.clamp(0.0, 1.0)
        step = step / 10
    assert best.min() > 0.05  # an interior optimum: no bound decides it
    torch.testing.assert_close(w, best, rtol=0, atol=2e-6)


def test_cagrad_refuses_a_negative_radius_in_one_sentence() -> None:
    from uda.errors import ConfigError
    from uda.harmonizers import CAGrad

    with pytest.raises(
        ConfigError, match=r"^harmonizer.c_a=-0.1 is invalid: CAGrad's conflict-averse radius must be >= 0"
    ):
        CAGrad(c_a=-0.1)
    assert CAGrad(c_a=0.0).c_a == 0.0  # the edge is allowed: the mean gradient


def test_cagrad_at_a_pareto_stationary_point_keeps_the_mean_gradient() -> None:
    """g1 = −g2 and g3 ⟂ both: the hull contains 0 at w* = (½, ½, 0), where the dual F(w) = wᵀKb + c‖g0‖‖g_w‖
    reaches its minimum 0 (Kb = (0, 0, ⅓) >= 0, so F >= 0, and F = c‖g0‖|w1 − w2| on w3 = 0); ‖g_{w*}‖ = 0, so
    CAGrad's correction vanishes and the update is the mean gradient: tau = 1/3 for every loss."""
    from uda.harmonizers import CAGrad

    g = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    tau = CAGrad(c_a=0.4, rescale=False).weights(g @ g.T)
    torch.testing.assert_close(tau, torch.full((3,), 1.0 / 3, dtype=torch.float64), rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cagrad_with_three_losses_minimizes_its_dual_over_the_simplex(seed: int) -> None:
    """The weights solve min_{w ∈ Δ} F(w) (brute force on a grid of step 1/300): tau = 1/m + (c‖g0‖/‖g_w‖) w, so
    w is recovered from tau as the normalized tau − 1/m (no rescale)."""
    from uda.harmonizers import CAGrad

    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    g[1] = -0.8 * g[0] + 0.3 * g[1]  # a conflicting pair, so the solution is not the uniform point
    k, c = g @ g.T, 0.5
    tau = CAGrad(c_a=c, rescale=False).weights(k)
    w = tau - 1.0 / 3
    w = w / w.sum()
    assert (w >= -1e-9).all()
    steps = 300
    i, j = torch.meshgrid(torch.arange(steps + 1), torch.arange(steps + 1), indexing="ij")
    keep = i + j <= steps
    grid = torch.stack([i[keep], j[keep], steps - i[keep] - j[keep]], dim=1).to(torch.float64) / steps
    best = cagrad_dual_objective(grid, k, c).min()
    assert cagrad_dual_objective(w.unsqueeze(0), k, c).item() <= best.item() + 1e-9
    assert cagrad_dual_objective(w.unsqueeze(0), k, c).item() >= best.item() - 1e-3  # the grid is that close


@pytest.mark.parametrize(
    ("g", "expected"),
    [
        ([[1.0, 2.0], [1.0, 2.0]], [0.5, 0.5]),  # identical gradients: the symmetric choice
        ([[2.0, 0.0], [1.0, 0.1]], [0.0, 1.0]),  # g1·g2 >= ‖g2‖²: the min-norm point is the vertex g2
        ([[1.0, 0.1], [2.0, 0.0]], [1.0, 0.0]),  # ... and the vertex g1 in the mirror case
    ],
)
def test_mgda_two_losses_at_the_simplex_vertices(g, expected) -> None:
    vectors = torch.tensor(g, dtype=torch.float64)
    assert MGDA().weights(vectors @ vectors.T).tolist() == pytest.approx(expected, abs=1e-12)


def test_mgda_three_losses_whose_min_norm_point_is_a_vertex() -> None:
    """g1 = (0.1, 0) has g1·g_j = 0.1 >= ‖g1‖² = 0.01 for the others: the min-norm point of the hull is g1 itself."""
    from uda.harmonizers import MGDA

    g = torch.tensor([[0.1, 0.0], [1.0, 0.2], [1.0, -0.2]], dtype=torch.float64)
    assert MGDA().weights(g @ g.T).tolist() == pytest.approx([1.0, 0.0, 0.0], abs=1e-12)


def test_famo_first_step_weights_are_the_normalized_inverse_shifted_losses() -> None:
    """FAMO with fresh logits (z uniform): tau_i = z_i / (c D_i) with D_i = L_i − min + ε and c = Σ z_j / D_j, i.e.
    tau_i = (1/D_i) / Σ_j (1/D_j); ε = 0.5 on purpose, so its sign shows."""
    from uda.harmonizers import FAMO

    losses = torch.tensor([1.0, 3.0], dtype=torch.float64)
    tau = FAMO(eps=0.5).weights(torch.eye(2, dtype=torch.float64), losses)
    inverse = 1.0 / (losses + 0.5)
    torch.testing.assert_close(tau, inverse / inverse.sum())


def test_famo_checkpoints_nothing_before_its_first_step_and_its_logits_after() -> None:
    """A run checkpointed before FAMO's first step (e.g. resumed at iteration 0) saves no state; after a step the
    state is on the CPU and restores into a fresh instance, which then gives the same next weights."""
    from uda.harmonizers import FAMO

    fresh = FAMO()
    assert fresh.state_dict() == {}
    k = torch.eye(2, dtype=torch.float64)
    fresh.weights(k, torch.tensor([1.0, 3.0], dtype=torch.float64))
    saved = fresh.state_dict()
    assert saved and all(v.device.type == "cpu" for v in saved.values())
    restored = FAMO()
    restored.load_state_dict(saved)
    losses = torch.tensor([0.5, 2.0], dtype=torch.float64)
    torch.testing.assert_close(restored.weights(k, losses), fresh.weights(k, losses), rtol=0, atol=0)


def test_famo_logits_follow_torch_adam_on_the_softmax_jacobian_product() -> None:
    """The official FAMO step, rebuilt from torch parts: δ = log L̃_prev − log L̃ (L̃ = L − min + ε), the logit
    gradient is the vector-Jacobian product of softmax with δ (autograd here), and torch.optim.Adam with
    ``weight_decay=gamma`` takes the step; the weights are then softmax(ξ)_i / L̃_i, normalized. The second
    pair of losses differs by 1e-7, so the gradient is about 1e-8 and Adam's ε (1e-8) visibly matters."""
    from uda.harmonizers import FAMO

    h = FAMO(lr=0.025, gamma=0.01)
    xi = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    adam = torch.optim.Adam([xi], lr=0.025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    k = torch.eye(2, dtype=torch.float64)
    previous = None
    for values in ([1.0, 2.0], [1.0 + 1e-7, 2.0 - 1e-7], [0.9, 2.1], [0.5, 2.5]):
        losses = torch.tensor(values, dtype=torch.float64)
        shifted = losses + 1e-8
        tau = h.weights(k, losses)
        if previous is not None:
            (xi.grad,) = torch.autograd.grad(torch.softmax(xi, 0), xi, grad_outputs=previous.log() - shifted.log())
            adam.step()
        inverse = torch.softmax(xi.detach(), 0) / shifted
        torch.testing.assert_close(tau, inverse / inverse.sum(), rtol=1e-12, atol=0)
        previous = shifted
    assert not torch.allclose(xi.detach(), torch.zeros(2, dtype=torch.float64))  # the logits did move


def test_famo_falls_back_to_the_plain_sum_when_a_loss_is_below_its_bound() -> None:
    from uda.harmonizers import FAMO

    h = FAMO(min_losses=[0.0, 2.0])
    assert h.weights(torch.eye(2, dtype=torch.float64), torch.tensor([1.0, 1.5], dtype=torch.float64)).tolist() == [
        1.0,
        1.0,
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0.0}, r"harmonizer.lr=0.0 is invalid: FAMO's logit learning rate must be > 0"),
        ({"gamma": -0.1}, r"harmonizer.gamma=-0.1 is invalid: FAMO's logit decay must be >= 0"),
        ({"eps": 0.0}, r"harmonizer.eps=0.0 is invalid: FAMO's offset inside the log must be > 0"),
        ({"betas": (1.0, 0.5)}, r"harmonizer.betas=\[1.0, 0.5\] is invalid: give Adam's two rates in \[0, 1\)"),
        ({"betas": (0.9, 0.99, 0.5)}, r"harmonizer.betas=\[0.9, 0.99, 0.5\] is invalid"),
    ],
)
def test_famo_rejects_bad_settings_in_one_sentence(kwargs: dict, message: str) -> None:
    from uda.errors import ConfigError
    from uda.harmonizers import FAMO

    with pytest.raises(ConfigError, match=message):
        FAMO(**kwargs)


def test_famo_accepts_the_edges_of_its_ranges_and_names_itself_for_bad_bounds() -> None:
    from uda.errors import ConfigError
    from uda.harmonizers import FAMO

    edge = FAMO(gamma=0.0, betas=(0.0, 0.5))
    assert (edge.gamma, edge.betas) == (0.0, (0.0, 0.5))
    assert (FAMO().lr, FAMO().gamma) == (0.025, 0.01)  # the paper's defaults
    with pytest.raises(ConfigError, match="give FAMO one lower bound per loss"):
        FAMO(min_losses=[0.0, 0.0, 0.0]).weights(torch.eye(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))


class _RecordingHarmonizer(Harmonizer):
    """A harmonizer whose hook records the matrix it is given and returns weights no float32 can hold."""

    name = "recording"

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def _weights(self, gram: torch.Tensor) -> torch.Tensor:
        self.seen.append(gram)
        return torch.full((gram.shape[0],), 1.0 + 2.0**-40, dtype=gram.dtype)


def test_hooks_work_in_float64_on_a_symmetrized_matrix_and_callers_get_their_dtype_back() -> None:
    """The precision rule for harmonizer authors: a float32 Gram matrix reaches the hook as float64 (its exact
    values, symmetrized), and the weights come back in float32."""
    h = _RecordingHarmonizer()
    k32 = torch.tensor([[4.0, 1.0 + 2.0**-20], [1.0, 9.0]], dtype=torch.float32)
    tau = h.weights(k32)
    (k,) = h.seen
    assert k.dtype == torch.float64
    assert torch.equal(k, torch.tensor([[4.0, 1.0 + 2.0**-21], [1.0 + 2.0**-21, 9.0]], dtype=torch.float64))
    assert tau.dtype == torch.float32 and torch.equal(tau, torch.ones(2))  # 1 + 2^-40 rounds to 1 in float32
    assert h.weights(k32.double()).dtype == torch.float64
    assert h.weights(k32.double())[0].item() == 1.0 + 2.0**-40


def test_an_empty_gram_matrix_is_refused_by_name() -> None:
    from uda.harmonizers import MGDA

    with pytest.raises(ValueError, match=r"^mgda: empty Gram matrix$"):
        MGDA().weights(torch.zeros(0, 0, dtype=torch.float64))
