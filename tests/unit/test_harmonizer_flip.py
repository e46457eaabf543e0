"""The sign-flip ablation (GH paper Fig. 13) against hand-derived expectations, on hand-built gradients."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate

from uda.errors import ConfigError
from uda.harmonizers import SignFlip


def pair(theta: float, r1: float = 1.0, r2: float = 1.0) -> torch.Tensor:
    """Two gradients in the plane at angle ``theta``, with norms r1 and r2 (rows)."""
    return torch.tensor([[r1, 0.0], [r2 * math.cos(theta), r2 * math.sin(theta)]], dtype=torch.float64)


def random_pair(seed: int, conflict: bool, dim: int = 7) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(2, dim, generator=gen, dtype=torch.float64)
    if (g[0] @ g[1] < 0) != conflict:
        g[1] = -g[1]
    return g


@pytest.mark.parametrize("negate", [1, 2])
def test_flip_happens_exactly_when_the_angle_is_obtuse(negate: int) -> None:
    flip = SignFlip(negate=negate)
    for degrees in range(0, 181, 5):
        g = pair(math.radians(degrees), r1=2.0, r2=0.5)
        tau = flip.weights(g @ g.T)
        obtuse = g[0] @ g[1] < 0  # strict: at exactly 90 degrees the pair does not conflict
        expected = torch.ones(2, dtype=torch.float64)
        if obtuse:
            expected[negate - 1] = -1.0
        assert torch.equal(tau, expected), degrees
    # the strict inequality at 90 degrees, exactly orthogonal gradients
    g = torch.tensor([[3.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    assert torch.equal(flip.coefficients(g @ g.T), torch.eye(2, dtype=torch.float64))


@pytest.mark.parametrize("negate", [1, 2])
def test_conflicting_pair_becomes_acute_and_the_update_is_the_flipped_sum(negate: int) -> None:
    flip = SignFlip(negate=negate)
    for seed in range(10):
        g = random_pair(seed, conflict=True)
        k = g @ g.T
        a = flip.coefficients(k)
        harmonized = a @ g
        # hand derivation: ĝ_k = −g_k, the other unchanged
        expected = g.clone()
        expected[negate - 1] = -g[negate - 1]
        assert torch.allclose(harmonized, expected, atol=0, rtol=0)
        assert harmonized[0] @ harmonized[1] > 0  # acute after the flip
        assert torch.isclose(harmonized[0] @ harmonized[1], -(g[0] @ g[1]))
        # tau is the column sum of A; the update it makes is −g_k + g_other
        tau = flip.weights(k)
        assert torch.equal(tau, a.sum(dim=0))
        assert torch.allclose(tau @ g, expected.sum(dim=0))
        # ... which ascends the negated loss: d·g_k = −‖g_k‖² + g1·g2 < 0
        d = tau @ g
        assert d @ g[negate - 1] < 0
        assert torch.isclose(d @ g[negate - 1], -(g[negate - 1] @ g[negate - 1]) + g[0] @ g[1])


def test_acute_pairs_are_left_alone_and_tau_is_scale_invariant() -> None:
    for negate in (1, 2):
        flip = SignFlip(negate=negate)
        for seed in range(10):
            g = random_pair(seed, conflict=False)
            assert torch.equal(flip.coefficients(g @ g.T), torch.eye(2, dtype=torch.float64))
            conflicting = random_pair(seed, conflict=True)
            scaled = conflicting * torch.tensor([[1e-4], [30.0]], dtype=torch.float64)
            assert torch.equal(flip.weights(scaled @ scaled.T), flip.weights(conflicting @ conflicting.T))


def test_negating_loss_two_mirrors_negating_loss_one() -> None:
    swap = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    for seed in range(5):
        g = random_pair(seed, conflict=True)
        k = g @ g.T
        mirrored = swap @ SignFlip(negate=1).coefficients(swap @ k @ swap) @ swap
        assert torch.equal(SignFlip(negate=2).coefficients(k), mirrored)


def test_zero_gradient_and_bad_settings() -> None:
    g = torch.tensor([[0.0, 0.0], [1.0, -1.0]], dtype=torch.float64)
    assert torch.equal(SignFlip().weights(g @ g.T), torch.ones(2, dtype=torch.float64))
    for bad in (0, 3, True):
        with pytest.raises(ConfigError, match="must be 1 or 2"):
            SignFlip(negate=bad)
    with pytest.raises(ValueError, match="exactly 2 losses"):
        SignFlip().weights(torch.eye(3, dtype=torch.float64))
    assert (repr(SignFlip(negate=1)), repr(SignFlip(negate=2))) == ("flip_align", "flip_cls")


@pytest.mark.parametrize(("choice", "negate"), [("flip_align", 1), ("flip_cls", 2)])
def test_configs_build_the_flip_of_their_name(train_cfg, choice: str, negate: int) -> None:
    cfg = train_cfg(f"harmonizer={choice}")
    harmonizer = instantiate(cfg.harmonizer)
    assert isinstance(harmonizer, SignFlip) and harmonizer.negate == negate
