"""Property tests shared by the whole harmonizer family (torchjd style), on hand-built Gram matrices."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from uda.harmonizers import (
    GH,
    GHPP,
    IMTLG,
    MGDA,
    AlignedMTL,
    CAGrad,
    GHPPRotation,
    GradVac,
    Harmonizer,
    NashMTL,
    NoHarmonizer,
    PCGrad,
    ProGrad,
)

TWO_LOSS = [GH, GHPP, GHPPRotation, ProGrad, NashMTL]
ANY_M = [NoHarmonizer, PCGrad, MGDA, IMTLG, CAGrad, AlignedMTL, GradVac]
FAMILY = TWO_LOSS + ANY_M
SCALE_INVARIANT_TAU = [c for c in FAMILY if c is not NashMTL]
# guaranteed for two losses by GH, PCGrad and IMTL-G (IMTL-G only equalizes projections for m > 2,
# PCGrad's guarantee is a two-task one); MGDA's min-norm point is a common descent direction for any m
NEVER_CONFLICTS = [(GH, 2), (PCGrad, 2), (IMTLG, 2), (MGDA, 2), (MGDA, 3), (MGDA, 5)]


def random_grads(m: int, dim: int = 12, seed: int = 0, conflict: bool = True) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(m, dim, generator=gen, dtype=torch.float64) * torch.rand(m, 1, generator=gen, dtype=torch.float64)
    if conflict:
        g[1] = -0.9 * g[0] * (g[1].norm() / g[0].norm()) + 0.2 * g[1]
    return g


def gram(g: torch.Tensor) -> torch.Tensor:
    return g @ g.T


def sizes(cls: type[Harmonizer]) -> list[int]:
    return [2] if cls in TWO_LOSS else [2, 3, 5]


def cases() -> list[tuple[type[Harmonizer], int]]:
    return [(cls, m) for cls in FAMILY for m in sizes(cls)]


@pytest.mark.parametrize(("cls", "m"), cases(), ids=lambda v: getattr(v, "name", v))
def test_finite_detached_and_shaped(cls, m) -> None:
    for seed in range(5):
        k = gram(random_grads(m, seed=seed)).float().requires_grad_(True)
        h = cls()
        tau, a = h.weights(k), cls().coefficients(k)
        assert tau.shape == (m,) and a.shape == (m, m)
        assert not tau.requires_grad and not a.requires_grad
        assert torch.isfinite(tau).all() and torch.isfinite(a).all()
        assert tau.dtype == torch.float32


@pytest.mark.parametrize(("cls", "m"), cases(), ids=lambda v: getattr(v, "name", v))
def test_degenerate_gram_matrices_never_give_nan(cls, m) -> None:
    base = random_grads(m)
    antiparallel = base.clone()
    antiparallel[1] = -3.0 * antiparallel[0]
    zero = base.clone()
    zero[0] = 0.0
    parallel = base.clone()
    parallel[1] = 2.0 * parallel[0]
    for g in (antiparallel, zero, parallel, base * 1e-20, base * 1e20):
        assert torch.isfinite(cls().weights(gram(g))).all(), g
    for bad in (float("nan"), float("inf")):
        k = gram(base)
        k[0, 1] = k[1, 0] = bad
        assert cls().weights(k).tolist() == [1.0] * m


@pytest.mark.parametrize(("cls", "m"), cases(), ids=lambda v: getattr(v, "name", v))
def test_zero_gradient_means_plain_sum(cls, m) -> None:
    g = random_grads(m)
    g[-1] = 0.0
    assert cls().weights(gram(g)).tolist() == [1.0] * m


@pytest.mark.parametrize(
    ("cls", "m"), [c for c in cases() if c[0] in SCALE_INVARIANT_TAU], ids=lambda v: getattr(v, "name", v)
)
@pytest.mark.parametrize("scale", [1e-4, 3.0, 1e5])
def test_invariant_to_a_common_gradient_scale(cls, m, scale) -> None:
    g = random_grads(m, seed=3)
    torch.testing.assert_close(cls().weights(gram(g * scale)), cls().weights(gram(g)), rtol=1e-6, atol=1e-9)


def test_nash_mtl_update_is_scale_invariant_and_solves_its_fixed_point() -> None:
    g = random_grads(2, seed=4)
    k = gram(g)
    tau = NashMTL().weights(k)
    torch.testing.assert_close(k @ tau, 1.0 / tau)  # Gram · α = 1/α
    d = tau @ g
    d_scaled = NashMTL().weights(gram(7.0 * g)) @ (7.0 * g)
    torch.testing.assert_close(d_scaled, d)


@pytest.mark.parametrize(("cls", "m"), NEVER_CONFLICTS, ids=lambda v: getattr(v, "name", v))
def test_update_never_conflicts_where_guaranteed(cls, m) -> None:
    for seed in range(50):
        g = random_grads(m, seed=seed)
        d = cls().weights(gram(g)) @ g
        assert (g @ d >= -1e-9 * d.norm() * g.norm(dim=1)).all(), (seed, g @ d)


def test_plain_sum_does_conflict_on_these_cases() -> None:
    """The non-conflict test above is not vacuous: the unharmonized sum conflicts on most of them."""
    conflicts = sum(bool((g @ g.sum(0) < 0).any()) for g in (random_grads(2, seed=s) for s in range(50)))
    assert conflicts > 10


def test_gh_equals_pcgrad_for_two_losses() -> None:
    for seed in range(20):
        k = gram(random_grads(2, seed=seed))
        torch.testing.assert_close(PCGrad(seed=seed).coefficients(k), GH().coefficients(k))


@pytest.mark.parametrize("m", [2, 3, 4])
def test_gradvac_with_fixed_zero_target_equals_pcgrad(m) -> None:
    gradvac, pcgrad = GradVac(beta=0.0, seed=5), PCGrad(seed=5)
    for seed in range(10):
        k = gram(random_grads(m, seed=seed))
        torch.testing.assert_close(gradvac.coefficients(k), pcgrad.coefficients(k))


def test_gradvac_target_moves_and_is_checkpointed() -> None:
    h = GradVac(beta=0.5)
    k = gram(random_grads(3, seed=1))
    h.weights(k)
    state = h.state_dict()
    assert state["target"].abs().sum() > 0
    nxt = gram(random_grads(3, seed=2))
    expected = h.weights(nxt)
    restored = GradVac(beta=0.5)
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.weights(nxt), expected)


def test_gradvac_ignores_non_finite_steps_in_its_target() -> None:
    h = GradVac(beta=0.5)
    h.weights(gram(random_grads(2, seed=1)))
    before = h.state_dict()["target"].clone()
    k = gram(random_grads(2, seed=2))
    k[0, 0] = float("nan")
    h.weights(k)
    torch.testing.assert_close(h.state_dict()["target"], before)


def test_pcgrad_random_order_is_seeded_and_checkpointed() -> None:
    k = gram(
        random_grads(4, seed=9, conflict=False) * torch.tensor([[1.0], [-1.0], [1.0], [-1.0]], dtype=torch.float64)
    )
    first, second = PCGrad(seed=1), PCGrad(seed=1)
    assert torch.equal(first.coefficients(k), second.coefficients(k))
    state = first.state_dict()
    a_next = first.coefficients(k)
    restored = PCGrad(seed=99)
    restored.load_state_dict(state)
    assert torch.equal(restored.coefficients(k), a_next)


def brute_force_min_norm(k: torch.Tensor, steps: int) -> float:
    m = k.shape[0]
    best = math.inf
    grid = [i / steps for i in range(steps + 1)]
    for w in itertools.product(grid, repeat=m - 1):
        if sum(w) <= 1 + 1e-12:
            alpha = torch.tensor([*w, 1 - sum(w)], dtype=torch.float64)
            best = min(best, float(alpha @ k @ alpha))
    return best


@pytest.mark.parametrize(("m", "steps"), [(2, 2000), (3, 120)])
def test_mgda_equals_brute_force_min_norm(m, steps) -> None:
    for seed in range(5):
        k = gram(random_grads(m, seed=seed))
        alpha = MGDA().weights(k)
        assert alpha.sum().item() == pytest.approx(1.0) and (alpha >= -1e-12).all()
        assert float(alpha @ k @ alpha) <= brute_force_min_norm(k, steps) + 1e-6


def test_ghpp_rotation_pair_is_orthogonal_with_norms_preserved() -> None:
    for seed, lam in itertools.product(range(10), [0.0, 0.3, 0.5, 1.0]):
        g = random_grads(2, seed=seed)
        if g[0] @ g[1] >= 0:
            continue
        rotated = GHPPRotation(lam).coefficients(gram(g)) @ g
        assert abs(float(rotated[0] @ rotated[1])) < 1e-9 * float(g.norm(dim=1).prod())
        torch.testing.assert_close(rotated.norm(dim=1), g.norm(dim=1))
        # λ splits the rotation: λ = 0 leaves g1 in place, λ = 1 leaves g2 in place
        if lam == 0.0:
            torch.testing.assert_close(rotated[0], g[0])
        if lam == 1.0:
            torch.testing.assert_close(rotated[1], g[1])


def test_ghpp_rotation_falls_back_to_gh_when_antiparallel() -> None:
    g = torch.tensor([[1.0, 0.0], [-2.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(GHPPRotation().weights(gram(g)), GH().weights(gram(g)))


def test_published_ghpp_rescales_without_rotating() -> None:
    g = random_grads(2, seed=1)
    a = GHPP(0.5).coefficients(gram(g))
    assert torch.count_nonzero(a - torch.diag(torch.diagonal(a))) == 0


def test_prograd_projection_and_anchor() -> None:
    g = torch.tensor([[1.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    pure = ProGrad(lam=1.0, keep_anchor=False).weights(gram(g)) @ g
    torch.testing.assert_close(pure, torch.tensor([0.0, 1.0], dtype=torch.float64))  # g1 ⟂ anchor
    kept = ProGrad(lam=1.0).weights(gram(g)) @ g
    torch.testing.assert_close(kept, torch.tensor([-1.0, 1.0], dtype=torch.float64))
    assert float(kept @ g[1]) >= 0  # the anchor is never opposed
    assert ProGrad(lam=0.0).weights(gram(g)).tolist() == [1.0, 1.0]


def test_imtl_g_equal_projections_on_unit_gradients() -> None:
    for m in (2, 3, 4):
        g = random_grads(m, seed=m)
        d = IMTLG().weights(gram(g)) @ g
        proj = (g / g.norm(dim=1, keepdim=True)) @ d
        torch.testing.assert_close(proj, proj[0].expand(m))


def test_aligned_mtl_aligned_gradients_are_orthonormal_up_to_scale() -> None:
    g = random_grads(3, seed=2)
    k = gram(g)
    aligned = AlignedMTL().coefficients(k) @ g
    ak = aligned @ aligned.T
    lam_min = torch.linalg.eigvalsh(k).min()
    torch.testing.assert_close(ak, lam_min * torch.eye(3, dtype=torch.float64), rtol=1e-7, atol=1e-9)


def test_cagrad_zero_radius_is_the_mean_and_objective_is_minimized() -> None:
    g = random_grads(2, seed=3)
    k = gram(g)
    torch.testing.assert_close(CAGrad(c_a=0.0).weights(k), torch.tensor([0.5, 0.5], dtype=torch.float64))
    # the dual solution: the worst-case improvement min_i g_i·d is no worse than the mean gradient's
    d = CAGrad(c_a=0.5, rescale=False).weights(k) @ g
    d0 = g.mean(0)
    assert (g @ d).min() >= (g @ d0).min() - 1e-9


@pytest.mark.parametrize("cls", TWO_LOSS, ids=lambda c: c.name)
def test_two_loss_methods_refuse_other_sizes(cls) -> None:
    with pytest.raises(ValueError, match="exactly 2"):
        cls().weights(torch.eye(3))
