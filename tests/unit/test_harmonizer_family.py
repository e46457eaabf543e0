"""Property tests shared by the whole harmonizer family (torchjd style), on hand-built Gram matrices.

Every exported harmonizer runs the generic checks (shape, finiteness, degenerate Gram matrices, scale);
the properties a class claims in its attributes (``conflict_free``, ``symmetric``, ``stateful``) are tested
for it, and the two-loss reductions and solvers are compared with independent derivations.
"""

from __future__ import annotations

import io
import itertools
import math

import pytest
import torch

from uda.errors import ConfigError
from uda.harmonizers import (
    DBMTL,
    FAMO,
    GH,
    GHPP,
    IMTLG,
    MGDA,
    AlignedMTL,
    CAGrad,
    ConFIG,
    ConFIGMomentum,
    DualProj,
    FairGrad,
    GHPPRotation,
    GradVac,
    Harmonizer,
    NashMTL,
    PCGrad,
    ProGrad,
    UPGrad,
)
from uda.harmonizers.host_sync import host_reads_recorded
from uda.harmonizers.mgda import min_norm_exact
from uda.harmonizers.table import harmonizer_classes

#: every exported harmonizer, so a new one runs the generic checks without being listed here
FAMILY = harmonizer_classes()
TWO_LOSS = [c for c in FAMILY if c.num_losses == 2]
SCALE_INVARIANT_TAU = [c for c in FAMILY if c not in (NashMTL, FairGrad)]  # both scale like a power of K
STATEFUL = [c for c in FAMILY if c.stateful]
CLAIMS = ("yes", "for 2 losses", "no")


def random_grads(m: int, dim: int = 12, seed: int = 0, conflict: bool = True) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(m, dim, generator=gen, dtype=torch.float64) * torch.rand(m, 1, generator=gen, dtype=torch.float64)
    if conflict:
        g[1] = -0.9 * g[0] * (g[1].norm() / g[0].norm()) + 0.2 * g[1]
    return g


def gram(g: torch.Tensor) -> torch.Tensor:
    return g @ g.T


def sizes(cls: type[Harmonizer]) -> list[int]:
    return [2] if cls.num_losses == 2 else [2, 3, 5]


def cases() -> list[tuple[type[Harmonizer], int]]:
    return [(cls, m) for cls in FAMILY for m in sizes(cls)]


def loss_values(m: int, seed: int = 0) -> torch.Tensor:
    """Positive loss values for the methods that weight by them (FAMO, DB-MTL)."""
    return 0.2 + 2.0 * torch.rand(m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def tau(h: Harmonizer, k: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
    """h.weights(K), with loss values for the harmonizers that need them."""
    if not h.needs_losses:
        return h.weights(k)
    return h.weights(k, loss_values(k.shape[0]) if losses is None else losses)


def coefficients(h: Harmonizer, k: torch.Tensor) -> torch.Tensor:
    return h.coefficients(k, loss_values(k.shape[0])) if h.needs_losses else h.coefficients(k)


def claimed_conflict_free() -> list[tuple[type[Harmonizer], int]]:
    """(class, m) wherever the class claims d·g_i >= 0 for every loss (its ``conflict_free`` attribute)."""
    return [
        (cls, m) for cls, m in cases() if cls.conflict_free == "yes" or (cls.conflict_free == "for 2 losses" and m == 2)
    ]


@pytest.mark.parametrize(("cls", "m"), cases(), ids=lambda v: getattr(v, "name", v))
def test_finite_detached_and_shaped(cls, m) -> None:
    for seed in range(5):
        k = gram(random_grads(m, seed=seed)).float().requires_grad_(True)
        h = cls()
        weights, a = tau(h, k), coefficients(cls(), k)
        assert weights.shape == (m,) and a.shape == (m, m)
        assert not weights.requires_grad and not a.requires_grad
        assert torch.isfinite(weights).all() and torch.isfinite(a).all()
        assert weights.dtype == torch.float32


@pytest.mark.parametrize(("cls", "m"), cases(), ids=lambda v: getattr(v, "name", v))
def test_degenerate_gram_matrices_never_give_nan(cls, m) -> None:
    base = random_grads(m)
    antiparallel = base.clone()
    antiparallel[1] = -3.0 * antiparallel[0]
    zero = base.clone()
    zero[0] = 0.0
    parallel = base.clone()
    parallel[1] = 2.0 * parallel[0]
    for g in (antiparallel, zero, parallel, base * 1e-20, base * 1e20, torch.zeros_like(base)):
        assert torch.isfinite(tau(cls(), gram(g))).all(), g
    for bad in (float("nan"), float("inf"), -float("inf")):
        for i, j in ((0, 0), (0, 1), (1, 1)):  # a norm or the inner product
            k = gram(base)
            k[i, j] = k[j, i] = bad
            assert tau(cls(), k).tolist() == [1.0] * m


@pytest.mark.parametrize(("cls", "m"), cases(), ids=lambda v: getattr(v, "name", v))
def test_zero_gradient_means_plain_sum(cls, m) -> None:
    g = random_grads(m)
    g[-1] = 0.0
    assert tau(cls(), gram(g)).tolist() == [1.0] * m


@pytest.mark.parametrize(
    ("cls", "m"), [c for c in cases() if c[0] in SCALE_INVARIANT_TAU], ids=lambda v: getattr(v, "name", v)
)
@pytest.mark.parametrize("scale", [1e-4, 3.0, 1e5])
def test_invariant_to_a_common_gradient_scale(cls, m, scale) -> None:
    g = random_grads(m, seed=3)
    torch.testing.assert_close(tau(cls(), gram(g * scale)), tau(cls(), gram(g)), rtol=1e-6, atol=1e-9)


def test_nash_mtl_update_is_scale_invariant_and_solves_its_fixed_point() -> None:
    g = random_grads(2, seed=4)
    k = gram(g)
    tau = NashMTL().weights(k)
    torch.testing.assert_close(k @ tau, 1.0 / tau)  # Gram · α = 1/α
    d = tau @ g
    d_scaled = NashMTL().weights(gram(7.0 * g)) @ (7.0 * g)
    torch.testing.assert_close(d_scaled, d)


@pytest.mark.parametrize(("cls", "m"), claimed_conflict_free(), ids=lambda v: getattr(v, "name", v))
def test_update_never_conflicts_where_claimed(cls, m) -> None:
    for seed in range(50):
        g = random_grads(m, seed=seed)
        d = tau(cls(), gram(g)) @ g
        assert (g @ d >= -1e-9 * d.norm() * g.norm(dim=1)).all(), (seed, g @ d)


def test_plain_sum_does_conflict_on_these_cases() -> None:
    """The non-conflict test above is not vacuous: the unharmonized sum conflicts on most of them."""
    conflicts = sum(bool((g @ g.sum(0) < 0).any()) for g in (random_grads(2, seed=s) for s in range(50)))
    assert conflicts > 10


def projected_pair(g: torch.Tensor) -> torch.Tensor:
    """PCGrad's surgery (Yu et al. 2020, Algorithm 1) done on the two gradient vectors themselves: when they
    conflict, each is projected onto the normal plane of the other (GH paper Eq. 4 and its mirror)."""
    g1, g2 = g
    c = g1 @ g2
    if c >= 0:
        return g.clone()
    return torch.stack([g1 - c / (g2 @ g2) * g2, g2 - c / (g1 @ g1) * g1])


def test_gh_and_pcgrad_equal_the_projection_of_the_vectors_for_two_losses() -> None:
    conflicting = 0
    for seed in range(20):
        g = random_grads(2, seed=seed, conflict=seed % 2 == 0)
        expected = projected_pair(g)
        conflicting += int(g[0] @ g[1] < 0)
        for harmonizer in (GH(), PCGrad(seed=seed)):
            torch.testing.assert_close(harmonizer.coefficients(gram(g)) @ g, expected)  # ĝ1, ĝ2
            torch.testing.assert_close(harmonizer.weights(gram(g)) @ g, expected.sum(0))  # the update
    assert 0 < conflicting < 20  # both branches were exercised


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


def test_mgda_exact_solver_takes_up_to_ten_losses_and_names_its_limit() -> None:
    """Ten losses (the documented limit) still get the min-norm point, checked against scipy's SLSQP on
    min αᵀKα over the simplex (an independent solver); eleven are refused with a message naming the limit."""
    optimize = pytest.importorskip("scipy.optimize")
    k = gram(random_grads(10, dim=16, seed=1))
    alpha = MGDA().weights(k)
    a = k.numpy()
    slsqp = optimize.minimize(
        lambda x: x @ a @ x,
        torch.full((10,), 0.1, dtype=torch.float64).numpy(),
        jac=lambda x: 2 * a @ x,
        method="SLSQP",
        bounds=[(0.0, None)] * 10,
        constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1.0}],
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    assert slsqp.success
    assert (alpha >= 0).all() and float(alpha.sum()) == pytest.approx(1.0, abs=1e-12)
    assert float(alpha @ k @ alpha) <= slsqp.fun + 1e-12
    with pytest.raises(ValueError, match=r"^MGDA's exact solver handles up to 10 losses, got 11$"):
        MGDA().weights(gram(random_grads(11, seed=0)))


@pytest.mark.parametrize("m", [3, 5])
def test_mgda_weights_sum_to_one_to_rounding(m) -> None:
    """The weights are convex (the update is on the mean-gradient scale): their sum is 1 up to the rounding of m
    divisions and m − 1 additions, i.e. within m·eps, not merely approximately."""
    eps = torch.finfo(torch.float64).eps
    for seed in range(5):
        alpha = MGDA().weights(gram(random_grads(m, seed=seed)))
        assert abs(float(alpha.sum()) - 1.0) <= m * eps, seed


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mgda_exact_solver_returns_the_callers_dtype(dtype) -> None:
    """Orthogonal gradients with ‖g_i‖² = (1, 2, 4): the min-norm point of their hull has α_i ∝ 1/‖g_i‖²,
    i.e. (4, 2, 1)/7. ``min_norm_exact`` works in float64 whatever it is given and answers in the input dtype."""
    alpha = min_norm_exact(torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=dtype)))
    assert alpha.dtype == dtype
    torch.testing.assert_close(alpha, torch.tensor([4.0, 2.0, 1.0], dtype=dtype) / 7)


def test_mgda_keeps_the_exact_vertex_when_another_candidate_is_within_rounding() -> None:
    """g1 = (1, 0, 0) is the min-norm point of the hull: g1·g_j = 1 + 2⁻⁵² > ‖g1‖² for g2, g3 = (1 + 2⁻⁵², ±1, ·),
    the KKT condition of the vertex, and the three are affinely independent, so α = e_1 is the unique answer.
    The centroid of g2, g3 (and of all three) is only ~1e-15 longer, so a solver that let a later, rounding-level
    tie replace its best candidate would return weights near (0, ½, ½) or (⅓, ⅓, ⅓) instead."""
    c = 2.0**-52
    g = torch.tensor([[1.0, 0.0, 0.0], [1.0 + c, 1.0, 0.0], [1.0 + c, -1.0, 5e-8]], dtype=torch.float64)
    torch.testing.assert_close(MGDA().weights(gram(g)), torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))


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
    with pytest.raises(ValueError, match="square"):
        cls().weights(torch.ones(2, 3))


@pytest.mark.parametrize("cls", FAMILY, ids=lambda c: c.name)
def test_two_loss_weights_never_read_device_values_on_the_host(cls) -> None:
    """No .item(), bool(tensor), host copy, ... in a two-loss call: on a GPU the step never waits for it."""
    h = cls()
    tau(h, gram(random_grads(2, seed=0)).float())  # the first call may allocate state
    with host_reads_recorded() as reads:
        for seed in range(1, 4):
            tau(h, gram(random_grads(2, seed=seed)).float(), loss_values(2, seed).float())
    assert reads == []


@pytest.mark.parametrize("cls", FAMILY, ids=lambda c: c.name)
def test_weights_stay_on_the_gram_device_also_after_restoring_a_cpu_checkpoint(cls) -> None:
    """Resuming on a GPU: the state comes back from the checkpoint on the CPU and the Gram matrix is on the device.
    The meta device stands in for CUDA (shapes and dtypes, no data): a tensor left on the CPU (the restored
    state, or a constant built without the Gram's device) raises when mixed with it, as it would on CUDA, and a
    device-to-host copy (a flag read on the CPU every step) raises too, since meta tensors have no data. One and
    two losses (the host-sync-free paths)."""
    for m in [2] if cls.num_losses == 2 else [1, 2]:
        restored = cls()
        trained = cls()
        for seed in range(2):
            tau(trained, gram(random_grads(m, seed=seed, conflict=m > 1)), loss_values(m, seed))
        restored.load_state_dict(trained.state_dict())
        k = gram(random_grads(m, seed=2, conflict=m > 1)).float().to("meta")
        for _ in range(2):  # the second call reads the state the first one committed
            weights = tau(restored, k, loss_values(m).float().to("meta"))
            assert (weights.device.type, weights.dtype, weights.shape) == ("meta", torch.float32, (m,))


def test_the_host_read_inspection_sees_the_usual_culprits_and_restores_torch() -> None:
    t = torch.tensor([1.0, -2.0])
    with host_reads_recorded() as reads:
        t[0].item(), bool(t[0] > 0), t[t > 0], t[torch.argmax(t)], t.tolist(), t.to("cpu"), torch.nonzero(t)
    assert len(reads) == 7
    assert torch.equal(torch.tensor([3.0 * t[0] - t[1]]), torch.tensor([5.0]))  # a list of 0-d tensors still works


# ------------------------------------------------------------------------------------------------------
# Claims stated in the class attributes (the README table is generated from them)
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", FAMILY, ids=lambda c: c.name)
def test_claims_use_the_table_vocabulary(cls) -> None:
    assert cls.conflict_free in CLAIMS
    assert isinstance(cls.symmetric, bool) and isinstance(cls.stateful, bool) and isinstance(cls.needs_losses, bool)
    assert cls.max_losses is None or cls.max_losses >= 2


@pytest.mark.parametrize(("cls", "m"), [c for c in cases() if c[0].symmetric], ids=lambda v: getattr(v, "name", v))
def test_symmetric_methods_permute_with_the_losses(cls, m) -> None:
    for seed in range(3):
        k = gram(random_grads(m, seed=seed))
        losses = loss_values(m, seed)
        perm = torch.randperm(m, generator=torch.Generator().manual_seed(seed + 1))
        while m > 1 and torch.equal(perm, torch.arange(m)):
            perm = torch.roll(perm, 1)
        permuted = tau(cls(), k[perm][:, perm], losses[perm])
        torch.testing.assert_close(permuted, tau(cls(), k, losses)[perm], rtol=1e-6, atol=1e-9)


#: the rotation splits its correction symmetrically at its default lam = 0.5
ORDERED_INSTANCE = {GHPPRotation: {"lam": 0.3}}


@pytest.mark.parametrize("cls", [c for c in FAMILY if not c.symmetric], ids=lambda c: c.name)
def test_ordered_methods_do_depend_on_the_order(cls) -> None:
    m = sizes(cls)[-1]

    def make() -> Harmonizer:
        return cls(**ORDERED_INSTANCE.get(cls, {}))

    differs = False
    for seed in range(5):
        k = gram(random_grads(m, seed=seed))
        swap = torch.arange(m).roll(1)
        differs |= not torch.allclose(tau(make(), k[swap][:, swap]), tau(make(), k)[swap], rtol=1e-6, atol=1e-9)
    assert differs


@pytest.mark.parametrize("cls", FAMILY, ids=lambda c: c.name)
def test_stateful_claim_matches_the_checkpointed_state(cls) -> None:
    h = cls()
    for seed in range(3):
        tau(h, gram(random_grads(3 if cls.num_losses is None else 2, seed=seed)))
    assert bool(h.state_dict()) == cls.stateful


def run_steps(h: Harmonizer, m: int, seeds: range) -> list[torch.Tensor]:
    return [tau(h, gram(random_grads(m, seed=s)), loss_values(m, s)) for s in seeds]


@pytest.mark.parametrize("cls", STATEFUL, ids=lambda c: c.name)
def test_state_restore_reproduces_the_next_outputs_bit_for_bit(cls) -> None:
    m = 3 if cls.num_losses is None else 2
    h = cls()
    run_steps(h, m, range(4))
    buffer = io.BytesIO()
    torch.save(h.state_dict(), buffer)  # as a checkpoint does
    buffer.seek(0)
    restored = cls()
    restored.load_state_dict(torch.load(buffer, weights_only=False))
    expected, got = run_steps(h, m, range(4, 8)), run_steps(restored, m, range(4, 8))
    assert all(torch.equal(e, g) for e, g in zip(expected, got, strict=True))
    # not vacuous: a fresh instance (no state) gives different weights on the same steps
    fresh = run_steps(cls(), m, range(4, 8))
    assert any(not torch.equal(e, f) for e, f in zip(expected, fresh, strict=True))


@pytest.mark.parametrize("cls", [ConFIGMomentum, FAMO, DBMTL], ids=lambda c: c.name)
def test_a_rejected_step_leaves_the_state_alone(cls) -> None:
    """Promised by the methods that commit their state through Harmonizer._commit (PCGrad and GradVac
    draw their random order whatever the step)."""
    h = cls()
    run_steps(h, 3 if cls.num_losses is None else 2, range(3))
    before = h.state_dict()
    k = gram(random_grads(3 if cls.num_losses is None else 2, seed=9))
    k[0, 0] = float("nan")
    tau(h, k)
    after = h.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value) if isinstance(value, torch.Tensor) else after[key] == value


# ------------------------------------------------------------------------------------------------------
# UPGrad and DualProj: projections onto the dual cone of the gradients
# ------------------------------------------------------------------------------------------------------
def test_upgrad_is_half_of_gh_for_two_losses() -> None:
    """The reference's two-loss reduction: no conflict gives (1/2, 1/2), a conflict GH's tau / 2."""
    for seed in range(30):
        g = random_grads(2, seed=seed, conflict=seed % 2 == 0)
        n1, n2, c = float(g[0] @ g[0]), float(g[1] @ g[1]), float(g[0] @ g[1])
        gh_tau = [1 - c / n1, 1 - c / n2] if c < 0 else [1.0, 1.0]  # GH paper Eq. 42, by hand
        assert UPGrad().weights(gram(g)).tolist() == pytest.approx([t / 2 for t in gh_tau], rel=1e-12)


def test_dualproj_two_losses_is_the_mean_projected_off_the_opposed_gradient() -> None:
    for seed in range(30):
        g = random_grads(2, seed=seed, conflict=seed % 2 == 0)
        x = g.mean(dim=0)
        for j in range(2):  # at most one g_j can oppose the mean of two gradients
            if x @ g[j] < 0:
                x = x - (x @ g[j]) / (g[j] @ g[j]) * g[j]
        torch.testing.assert_close(DualProj().weights(gram(g)) @ g, x)


def test_upgrad_and_dualproj_reproduce_torchjd_documented_examples() -> None:
    """TorchJD's docstrings (with its ridge reg_eps = 1e-4): J = [[-4, 1, 1], [6, 1, 1]]."""
    j = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(
        UPGrad(reg_eps=1e-4).weights(gram(j)) @ j, torch.tensor([0.2929, 1.9004, 1.9004]).double(), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        DualProj(reg_eps=1e-4).weights(gram(j)) @ j, torch.tensor([0.5563, 1.1109, 1.1109]).double(), atol=1e-4, rtol=0
    )


def primal_projection(g: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """argmin ‖x − y‖² s.t. G x >= 0, solved in gradient space by scipy's SLSQP."""
    optimize = pytest.importorskip("scipy.optimize")
    gn, yn = g.numpy(), y.numpy()
    result = optimize.minimize(
        lambda x: 0.5 * ((x - yn) ** 2).sum(),
        yn,
        jac=lambda x: x - yn,
        constraints={"type": "ineq", "fun": lambda x: gn @ x, "jac": lambda x: gn},
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    return torch.as_tensor(result.x)


@pytest.mark.parametrize("m", [3, 4, 6])
def test_upgrad_and_dualproj_equal_a_primal_projection_solver(m) -> None:
    for seed in range(3):
        g = random_grads(m, dim=8, seed=seed)
        k = gram(g)
        upgrad = torch.stack([primal_projection(g, g[i]) for i in range(m)]).mean(dim=0)
        torch.testing.assert_close(UPGrad().weights(k) @ g, upgrad, atol=1e-7, rtol=1e-6)
        torch.testing.assert_close(DualProj().weights(k) @ g, primal_projection(g, g.mean(dim=0)), atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("zero", [0, 1])
def test_two_loss_dual_cone_weights_keep_their_bounds_when_one_gradient_is_zero(zero) -> None:
    """argmin_{v >= u} vᵀ K v with K = 4·e_i e_iᵀ (the other gradient zero): vᵀKv = 4 v_i² does not depend on the
    zero gradient's weight, so v = u is optimal; the zero gradient, (K u) = 0 there, releases no bound."""
    from uda.harmonizers.dual_cone import dual_cone_weights

    live = 1 - zero
    k = torch.zeros(2, 2, dtype=torch.float64)
    k[live, live] = 4.0
    lower = torch.tensor([[1.0, 1.0], [0.5, 2.0], [2.0, 0.25]], dtype=torch.float64)
    v = dual_cone_weights(k, lower)
    assert (v >= lower).all()  # feasible
    torch.testing.assert_close(torch.einsum("ri,ij,rj->r", v, k, v), 4.0 * lower[:, live] ** 2)  # the minimum


def test_dual_cone_solvers_refuse_too_many_losses_and_bad_ridges() -> None:
    with pytest.raises(ValueError, match="up to 10 losses"):
        UPGrad().weights(torch.eye(11, dtype=torch.float64))
    for cls, name in ((UPGrad, "UPGrad"), (DualProj, "DualProj")):
        with pytest.raises(ConfigError, match=rf"harmonizer.reg_eps=-1.0 is invalid: {name}'s ridge must be >= 0"):
            cls(reg_eps=-1.0)
        assert cls(reg_eps=0.0).reg_eps == 0.0  # the edge is allowed (no ridge)


def test_exact_dual_cone_solver_works_in_float64_and_returns_the_callers_dtype() -> None:
    """The enumeration is done in float64 whatever the input (its docstring): float32 inputs give exactly the
    float64 answer of the same (float32-representable) numbers, rounded once at the end, in float32."""
    from uda.harmonizers.dual_cone import dual_cone_weights_exact

    k32 = gram(random_grads(4, seed=3, conflict=True)).float()
    lower32 = torch.tensor([[0.25] * 4, [1.0, 0.5, 0.125, 2.0]], dtype=torch.float32)
    v32 = dual_cone_weights_exact(k32, lower32)
    v64 = dual_cone_weights_exact(k32.double(), lower32.double())
    assert v32.dtype == torch.float32 and v64.dtype == torch.float64
    assert torch.equal(v32, v64.float())


def test_exact_dual_cone_solver_takes_exactly_up_to_ten_losses() -> None:
    """m = 10 is the largest accepted size; its answer is the projection's optimum: v >= u, the projected
    direction opposes no gradient (K v >= 0) and a released bound has a zero inner product (KKT)."""
    from uda.harmonizers.dual_cone import dual_cone_weights_exact

    k = gram(random_grads(10, seed=0, conflict=True))
    lower = torch.full((1, 10), 0.1, dtype=torch.float64)
    v = dual_cone_weights_exact(k, lower)[0]
    kv = k @ v
    assert (v >= lower[0]).all()
    assert (kv >= -1e-9 * k.abs().max()).all()
    released = v > lower[0] + 1e-12
    assert released.any()  # the random conflicting gradients put y = mean outside the dual cone
    torch.testing.assert_close(kv[released], torch.zeros_like(kv[released]), rtol=0, atol=1e-9 * k.abs().max().item())
    with pytest.raises(ValueError, match="up to 10 losses"):
        dual_cone_weights_exact(gram(random_grads(11, seed=0)), torch.full((1, 11), 0.1, dtype=torch.float64))


# ------------------------------------------------------------------------------------------------------
# FairGrad: K w = w^(-1/alpha)
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("m", "dim"), [(4, 2), (5, 3), (8, 4)])
def test_fairgrad_with_more_losses_than_gradient_dimensions_solves_exactly_when_a_common_descent_exists(m, dim) -> None:
    """A singular K (m gradients in fewer dimensions). K w = w^(−1/α) with w > 0 gives d = Gᵀw with G d > 0, so a
    solution needs a direction that decreases every loss; whether one exists is decided independently by a
    linear program (G d >= 1). Where it exists the weights solve the equations; where it does not, the step
    falls back to the plain sum (tau = 1) instead of raising from a singular Newton system."""
    from scipy.optimize import linprog

    outcomes = set()
    for seed in range(12):
        g = torch.randn(m, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        k = g @ g.T
        exists = (
            linprog([0.0] * dim, A_ub=-g.numpy(), b_ub=-torch.ones(m).numpy(), bounds=[(None, None)] * dim).status == 0
        )
        for alpha in (0.5, 2.0):
            w = FairGrad(alpha).weights(k)
            if exists:
                torch.testing.assert_close(k @ w, w ** (-1.0 / alpha), rtol=1e-6, atol=0)
            else:
                assert w.tolist() == [1.0] * m
        outcomes.add(exists)
    assert outcomes == {True, False}  # both cases occur among the seeds


def test_fairgrad_with_alpha_one_is_nash_mtl() -> None:
    for seed in range(30):
        k = gram(random_grads(2, seed=seed, conflict=seed % 2 == 0))
        torch.testing.assert_close(FairGrad(alpha=1.0).weights(k), NashMTL().weights(k), rtol=1e-9, atol=0)


@pytest.mark.parametrize("m", [2, 3, 5])
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
def test_fairgrad_solves_its_fairness_equations(m, alpha) -> None:
    for seed in range(5):
        k = gram(random_grads(m, seed=seed))
        w = FairGrad(alpha).weights(k)
        assert (w > 0).all()
        torch.testing.assert_close(k @ w, w ** (-1.0 / alpha), rtol=1e-9, atol=0)


def test_fairgrad_solves_an_ill_conditioned_six_loss_problem() -> None:
    """Six losses, two of them nearly opposite (the Gram matrix's smallest eigenvalue is ~1e-6 of its largest):
    the Newton solver still meets K w = w^(−1/α) to rounding. (At α = 7 it stops at its iteration cap near
    1e-6 and at α = 20 it falls back to the plain sum: not asserted, the solver's known limit.)"""
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(6, 8, generator=gen, dtype=torch.float64) * 5 * torch.rand(6, 1, generator=gen, dtype=torch.float64)
    g[1] = -0.9 * g[0] + 0.1 * g[1]
    k = gram(g)
    w = FairGrad(2.0).weights(k)
    torch.testing.assert_close(k @ w, w ** (-1.0 / 2.0), rtol=1e-10, atol=0)


@pytest.mark.parametrize(
    ("m", "eps", "seed", "alpha"),
    [(9, 0.1, 1174, 2.0), (3, 0.01, 2, 5.0), (9, 0.01, 1, 2.0), (9, 0.1, 1390, 0.1)],
    ids=str,
)
def test_fairgrad_solves_problems_with_a_nearly_opposite_pair_to_rounding(m, eps, seed, alpha) -> None:
    """g_2 = −(1 − ε) g_1 + ε·(random), the typical conflict of an adversarial pair, among m random gradients in
    12 dimensions (a common descent direction exists): the weights meet the defining equations K w = w^(−1/α)
    to rounding (the solver's own acceptance threshold is a loose 1e-4), i.e. Newton converged all the way."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(m, 12, generator=gen, dtype=torch.float64)
    g = g * torch.rand(m, 1, generator=gen, dtype=torch.float64) ** 2
    g[1] = -(1 - eps) * g[0] + eps * g[1]
    k = gram(g)
    w = FairGrad(alpha).weights(k)
    torch.testing.assert_close(k @ w, w ** (-1.0 / alpha), rtol=1e-11, atol=0)


@pytest.mark.parametrize("m", [3, 10])
def test_fairgrad_newton_solver_at_a_small_alpha_meets_the_closed_form_for_orthogonal_gradients(m) -> None:
    """Orthogonal gradients with ‖g_i‖² = 10^(−i): K = diag(d) and K w = w^(−1/α) gives w_i = d_i^(−α/(α+1)).
    At α = 0.01 the barrier w^(−100) is steep, so the Newton solver needs its start on the right scale
    (a start far below the solution grows only by a factor 1 + α per damped step)."""
    alpha = 0.01
    d = torch.tensor([10.0**-i for i in range(m)], dtype=torch.float64)
    w = FairGrad(alpha).weights(torch.diag(d))
    torch.testing.assert_close(w, d ** (-alpha / (alpha + 1)), rtol=1e-9, atol=0)


def test_fairgrad_matches_the_official_least_squares_solver() -> None:
    optimize = pytest.importorskip("scipy.optimize")
    import numpy as np

    for m, alpha in [(3, 2.0), (4, 0.5), (5, 5.0)]:
        k = gram(random_grads(m, seed=m))
        a = k.numpy()

        def residual(x: np.ndarray, a: np.ndarray = a, alpha: float = alpha) -> np.ndarray:
            return a @ x - np.power(1 / x, 1 / alpha)  # the official objfn

        official = optimize.least_squares(residual, np.ones(m) / m, bounds=(0, np.inf), xtol=1e-15, ftol=1e-15).x
        torch.testing.assert_close(FairGrad(alpha).weights(k), torch.as_tensor(official), rtol=1e-7, atol=0)


@pytest.mark.parametrize("alpha", [0.5, 2.0, 5.0])
def test_fairgrad_weights_scale_like_a_power_of_the_gram_matrix(alpha) -> None:
    """If K w = w^(−1/α) then (λK)(μw) = (μw)^(−1/α) for μ = λ^(−α/(α+1))."""
    for m in (2, 4):
        k = gram(random_grads(m, seed=5))
        for lam in (1e-3, 7.0):
            torch.testing.assert_close(
                FairGrad(alpha).weights(lam * k), lam ** (-alpha / (alpha + 1)) * FairGrad(alpha).weights(k)
            )


def test_fairgrad_rejects_a_non_positive_alpha() -> None:
    with pytest.raises(ConfigError, match="alpha"):
        FairGrad(alpha=0.0)


# ------------------------------------------------------------------------------------------------------
# ConFIG and its momentum variant
# ------------------------------------------------------------------------------------------------------
def test_config_direction_bisects_the_unit_gradients_for_two_losses() -> None:
    for seed in range(20):
        g = random_grads(2, seed=seed, conflict=seed % 2 == 0)
        d = ConFIG().weights(gram(g)) @ g
        u = g / g.norm(dim=1, keepdim=True)
        bisector = (u[0] + u[1]) / (u[0] + u[1]).norm()
        torch.testing.assert_close(d / d.norm(), bisector)
        torch.testing.assert_close(d.norm(), (g @ bisector).sum())  # ConFIG's projection length


@pytest.mark.parametrize("m", [3, 5])
def test_config_equals_the_official_least_squares_update(m) -> None:
    """conflictfree's ConFIG_update in gradient space: v = lstsq(U, 1), d = (Σ_i g_i·v̂) v̂."""
    for seed in range(3):
        g = random_grads(m, dim=12, seed=seed)
        units = g / g.norm(dim=1, keepdim=True)
        v = torch.linalg.lstsq(units, torch.ones(m, 1, dtype=torch.float64), driver="gelsd").solution[:, 0]
        v_hat = v / v.norm()
        torch.testing.assert_close(ConFIG().weights(gram(g)) @ g, (g @ v_hat).sum() * v_hat)
        proj = units @ (ConFIG().weights(gram(g)) @ g)
        torch.testing.assert_close(proj, proj[0].expand(m))  # equal projections on every unit gradient


def test_config_momentum_is_config_on_the_bias_corrected_running_gram() -> None:
    beta = 0.7
    h, plain = ConFIGMomentum(momentum=beta), ConFIGMomentum(momentum=0.0)
    running = torch.zeros(3, 3, dtype=torch.float64)
    for step in range(1, 6):
        k = gram(random_grads(3, seed=step))
        running = beta * running + (1 - beta) * k
        torch.testing.assert_close(h.weights(k), ConFIG().weights(running / (1 - beta**step)))
        torch.testing.assert_close(plain.weights(k), ConFIG().weights(k))
    with pytest.raises(ConfigError, match="momentum"):
        ConFIGMomentum(momentum=1.0)


# ------------------------------------------------------------------------------------------------------
# FAMO and DB-MTL: weights from the loss values
# ------------------------------------------------------------------------------------------------------
def test_famo_starts_from_inverse_loss_weights() -> None:
    losses = torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64)
    inverse = 1.0 / losses
    torch.testing.assert_close(FAMO().weights(gram(random_grads(3)), losses), inverse / inverse.sum())


def test_famo_logits_take_the_official_adam_step() -> None:
    """The official update: Adam(lr, weight_decay=γ) on the logits, gradient = softmax's VJP with δ."""
    lr, gamma = 0.1, 0.01
    h = FAMO(lr=lr, gamma=gamma)
    logits = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    adam = torch.optim.Adam([logits], lr=lr, weight_decay=gamma)
    previous = None
    for step in range(6):
        losses = loss_values(3, seed=step)
        got = h.weights(gram(random_grads(3, seed=step)), losses)
        if previous is not None:
            delta = torch.log(previous + 1e-8) - torch.log(losses + 1e-8)
            (grad,) = torch.autograd.grad(torch.softmax(logits, -1), logits, grad_outputs=delta)
            adam.zero_grad()
            logits.grad = grad
            adam.step()
        z = torch.softmax(logits.detach(), -1) / (losses + 1e-8)
        torch.testing.assert_close(got, z / z.sum())
        previous = losses


def test_famo_raises_the_weight_of_the_loss_that_decreases_least() -> None:
    h = FAMO(lr=0.1)
    k = gram(random_grads(2))
    for step in range(30):  # loss 1 halves every 10 steps, loss 2 stays
        h.weights(k, torch.tensor([2.0 ** (-step / 10), 1.0], dtype=torch.float64))
    logits = h.state_dict()["logits"]
    assert logits[1] > logits[0]


def test_famo_and_dbmtl_need_losses_above_their_bounds() -> None:
    k = gram(random_grads(2))
    negative = torch.tensor([2.3, -0.05], dtype=torch.float64)  # MCD's (cls, neg_discrepancy)
    for cls in (FAMO, DBMTL):
        h = cls()
        h.weights(k, loss_values(2))
        before = h.state_dict()
        assert h.weights(k, negative).tolist() == [1.0, 1.0]  # falls back to the plain sum
        assert all(torch.equal(before[key], value) for key, value in h.state_dict().items())
        bounded = cls(min_losses=[0.0, -1.0]).weights(k, negative)
        assert bounded.tolist() != [1.0, 1.0] and torch.isfinite(bounded).all()
        with pytest.raises(ValueError, match="losses"):
            cls().weights(k)
        with pytest.raises(ConfigError, match="min_losses"):
            cls(min_losses=[0.0, 1.0, 2.0]).weights(k, negative)


def test_dbmtl_without_averaging_is_libmtl_update() -> None:
    """LibMTL's DB_MTL with beta = 0: d = max_j ‖ĝ_j‖ Σ_i ĝ_i/‖ĝ_i‖ with ĝ_i the gradient of log(L_i + ε)."""
    for m in (2, 3, 5):
        g, losses = random_grads(m, seed=m), loss_values(m, seed=m)
        log_grads = g / (losses + 1e-8).unsqueeze(1)
        norms = log_grads.norm(dim=1)
        expected = norms.max() * (log_grads / norms.unsqueeze(1)).sum(dim=0)
        torch.testing.assert_close(DBMTL(beta=0.0).weights(gram(g), losses) @ g, expected)


def test_dbmtl_running_average_equals_libmtl_buffer_for_steady_gradients() -> None:
    """LibMTL: b ← ĝ + β_t (b − ĝ), β_t = β / t^σ, d = Σ_i (max_j ‖b_j‖ / ‖b_i‖) b_i; gradients held fixed."""
    g, losses = random_grads(3, seed=2), loss_values(3, seed=2)
    log_grads = g / (losses + 1e-8).unsqueeze(1)
    h, buffer = DBMTL(beta=0.9, beta_sigma=0.5), torch.zeros_like(g)
    for step in range(1, 6):
        buffer = log_grads + (0.9 / step**0.5) * (buffer - log_grads)
        norms = buffer.norm(dim=1)
        expected = ((norms.max() / norms).unsqueeze(1) * buffer).sum(dim=0)
        torch.testing.assert_close(h.weights(gram(g), losses) @ g, expected)
