"""MGDA: the minimum-norm point of the convex hull of the gradients (Désidéri 2012; Sener & Koltun 2018)."""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from uda.harmonizers.base import Harmonizer, safe_div

#: the exact solver enumerates supports: 2^m - 1 tiny linear solves
MAX_EXACT_LOSSES = 10


def min_norm_two(gram: Tensor) -> Tensor:
    """Closed form for two gradients: α = clip((‖g2‖² − g1·g2) / ‖g1 − g2‖², 0, 1), weights (α, 1 − α)."""
    n1_sq, n2_sq, c = gram[0, 0], gram[1, 1], gram[0, 1]
    diff = n1_sq + n2_sq - 2 * c
    alpha = torch.where(diff > 0, torch.clamp(safe_div(n2_sq - c, diff), 0.0, 1.0), torch.full_like(c, 0.5))
    return torch.stack([alpha, 1 - alpha])


def min_norm_exact(gram: Tensor) -> Tensor:
    """Exact min_α αᵀKα over the simplex for small m, on the CPU in float64.

    The optimum is the equality-constrained minimizer on its support S (α_S ∝ solution of the KKT system
    [2K_S 1; 1ᵀ 0]), so every support is tried and the best feasible candidate kept: 2^m − 1 tiny solves,
    exact up to rounding (Frank–Wolfe would only converge at rate O(1/t)). One host transfer.
    """
    k = gram.detach().to("cpu", torch.float64)
    k = k / torch.clamp(k.abs().max(), min=torch.finfo(torch.float64).tiny)  # scale-free problem
    m = k.shape[0]
    best, best_value = torch.full((m,), 1.0 / m, dtype=torch.float64), math.inf
    for size in range(1, m + 1):
        for support in itertools.combinations(range(m), size):
            idx = list(support)
            kkt = torch.zeros(size + 1, size + 1, dtype=torch.float64)
            kkt[:size, :size] = 2 * k[idx][:, idx]
            kkt[:size, size] = 1.0
            kkt[size, :size] = 1.0
            rhs = torch.zeros(size + 1, dtype=torch.float64)
            rhs[size] = 1.0
            sol = torch.linalg.pinv(kkt) @ rhs
            alpha = torch.zeros(m, dtype=torch.float64)
            alpha[idx] = sol[:size]
            if (alpha < -1e-12).any() or abs(float(alpha.sum()) - 1.0) > 1e-9:
                continue
            value = float(alpha @ k @ alpha)
            if value < best_value - 1e-15:
                best, best_value = alpha.clamp(min=0.0), value
    return (best / best.sum()).to(gram.device, gram.dtype)


class MGDA(Harmonizer):
    r"""Multiple-gradient descent: d = argmin_{d ∈ conv(g_1..g_m)} ‖d‖.

    tau are convex weights (sum 1), so d is on the mean-gradient scale rather than the sum scale of GH.
    If d ≠ 0 it is a common descent direction: d·g_i ≥ ‖d‖² > 0 for every i (never conflicts).
    Two losses use the closed form (no host sync); up to 10 losses an exact small solver on the CPU.

    Scale matters: the min-norm point sits next to the smallest gradient. With a GRL warm-up (DANN, CDAN)
    the alignment gradient starts near zero, so d ≈ 0 and the classifier never trains: CDAN+E + MGDA on
    fonts → MNIST (seed 0) ended at 10 % source and target accuracy, tau ≈ (1, 0) throughout
    (benchmarks/results/fonts_study/README.md).
    """

    name = "mgda"
    num_losses = None
    max_losses = MAX_EXACT_LOSSES
    conflict_free = "yes"
    symmetric = True
    cost = "closed form for 2; 2^m − 1 small solves on the CPU (m ≤ 10)"

    def _weights(self, gram: Tensor) -> Tensor:
        if gram.shape[0] == 1:
            return torch.ones(1, dtype=gram.dtype, device=gram.device)
        if gram.shape[0] == 2:
            return min_norm_two(gram)
        if gram.shape[0] > MAX_EXACT_LOSSES:
            raise ValueError(f"MGDA's exact solver handles up to {MAX_EXACT_LOSSES} losses, got {gram.shape[0]}")
        return min_norm_exact(gram)
