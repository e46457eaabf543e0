"""Projection onto the dual cone of the gradients, in weight space (the core of UPGrad and DualProj).

The dual cone of g_1..g_m is C = {x : g_j·x >= 0 for every j}: the directions that oppose no gradient.
Projecting y = Σ_i u_i g_i onto C, min ‖x − y‖² s.t. G x >= 0, has the Lagrange dual

    v* = argmin_{v >= u} vᵀ K v,   x* = Σ_i v*_i g_i,

(stationarity gives x = Gᵀ(u + λ) with multipliers λ >= 0, and v = u + λ), so only the Gram matrix K is
needed (Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization", Sec. 3; TorchJD's
``project_weights``). The solvers here are exact: a closed form for two losses, which stays on the device,
and an enumeration of the active sets for a few losses.
"""

from __future__ import annotations

import torch
from torch import Tensor

from uda.harmonizers.base import safe_div

#: the exact solver enumerates the 2^m active sets
MAX_EXACT_LOSSES = 10


def normalized_gram(gram: Tensor, reg_eps: float = 0.0) -> Tensor:
    """K / trace(K) + reg_eps·I, as TorchJD: the projection does not depend on a common scale of K, but
    a ridge is only meaningful relative to it. The caller guarantees a positive diagonal."""
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return safe_div(gram, torch.diagonal(gram).sum()) + reg_eps * eye


def dual_cone_weights_two(gram: Tensor, lower: Tensor) -> Tensor:
    """Exact v* = argmin_{v >= u} vᵀ K v for a 2x2 Gram matrix, for each row u >= 0 of ``lower`` (r, 2).

    KKT: if K u >= 0 the bound is optimal (v* = u: y already lies in the dual cone). If (K u)_2 < 0,
    the second bound is released and (K v)_2 = 0: v* = (u_1, −K_12 u_1 / K_22), so y is projected onto
    the plane g_2·x = 0, which keeps g_1·x = u_1 (K_11 − K_12²/K_22) >= 0. Symmetrically for (K u)_1 < 0.
    Both cannot be negative since uᵀ K u >= 0. Branch-free: no host synchronisation.
    """
    k11, k22, k12 = gram[0, 0], gram[1, 1], gram[0, 1]
    ku = lower @ gram
    u1, u2 = lower[:, 0], lower[:, 1]
    release_second = torch.stack([u1, -safe_div(k12 * u1, k22)], dim=-1)
    release_first = torch.stack([-safe_div(k12 * u2, k11), u2], dim=-1)
    return torch.where(
        (ku[:, 1] < 0).unsqueeze(-1),
        release_second,
        torch.where((ku[:, 0] < 0).unsqueeze(-1), release_first, lower),
    )


def dual_cone_weights_exact(gram: Tensor, lower: Tensor) -> Tensor:
    """Exact v* = argmin_{v >= u} vᵀ K v for each row u of ``lower`` (r, m), m <= 10, on the CPU in float64.

    With v = u + s, s >= 0, this is a non-negative least-squares problem in s; it has an optimal s whose
    support S has a non-singular K_SS (independent active gradients), where K_SS s_S = −(K u)_S. Every
    support is tried at once (a batched pseudo-inverse of the 2^m masked systems, shared by all rows),
    and the feasible candidate (s >= 0) of least objective is kept. One host transfer; deterministic, so
    every rank of a distributed run computes the same weights.
    """
    m = gram.shape[0]
    if m > MAX_EXACT_LOSSES:
        raise ValueError(f"the exact dual-cone solver handles up to {MAX_EXACT_LOSSES} losses, got {m}")
    k = gram.detach().to("cpu", torch.float64)
    u = lower.detach().to("cpu", torch.float64)
    bits = torch.arange(2**m).unsqueeze(1) >> torch.arange(m)
    support = (bits & 1).to(torch.float64)  # (S, m): 1 where the bound is released
    # block-diagonal system: K_SS on the support, the identity elsewhere (so s = 0 off the support)
    system = k * (support.unsqueeze(2) * support.unsqueeze(1)) + torch.diag_embed(1.0 - support)
    inverse = torch.linalg.pinv(system, hermitian=True)  # (S, m, m)
    rhs = -(u @ k).unsqueeze(0) * support.unsqueeze(1)  # (S, r, m)
    lift = rhs @ inverse.transpose(1, 2)  # (S, r, m): s for every support and row
    v = u.unsqueeze(0) + lift
    value = torch.einsum("sri,ij,srj->sr", v, k, v)
    feasible = (lift >= -1e-10 * (1.0 + lift.abs())).all(dim=-1)
    value = torch.where(feasible, value, torch.full_like(value, float("inf")))
    best = torch.argmin(value, dim=0)  # the empty support (s = 0) is always feasible
    chosen = v[best, torch.arange(u.shape[0])]
    return torch.maximum(chosen, u).to(gram.device, gram.dtype)


def dual_cone_weights(gram: Tensor, lower: Tensor) -> Tensor:
    """argmin_{v >= u} vᵀ K v for each row of ``lower``: closed form for 2 losses, exact enumeration above."""
    if gram.shape[0] == 1:
        return lower.clone()
    if gram.shape[0] == 2:
        return dual_cone_weights_two(gram, lower)
    return dual_cone_weights_exact(gram, lower)
