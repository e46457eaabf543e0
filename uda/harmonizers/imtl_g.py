"""IMTL-G: impartial gradient weighting (Liu et al., ICLR 2021), for any number of losses."""

from __future__ import annotations

import torch
from torch import Tensor

from uda.harmonizers.base import Harmonizer


class IMTLG(Harmonizer):
    r"""Weights α (sum 1) such that d = Σ α_i g_i has equal projections on every unit gradient u_i.

    With D = [g_1 − g_i]_{i≥2} and U = [u_1 − u_i]_{i≥2}: α_{2..m} = g_1 Uᵀ (D Uᵀ)^{-1},
    α_1 = 1 − Σ α_{2..m}; all inner products come from the Gram matrix (g_a·u_b = K_ab / ‖g_b‖).
    For two losses this is α ∝ (1/‖g1‖, 1/‖g2‖): the bisector of the unit gradients, which never
    conflicts with either gradient. Scale-invariant; the update is on the mean-gradient scale.
    """

    name = "imtl_g"
    num_losses = None
    conflict_free = "for 2 losses"
    symmetric = True
    cost = "closed form for 2; one (m − 1)² pseudo-inverse"

    def _weights(self, gram: Tensor) -> Tensor:
        m = gram.shape[0]
        norms = torch.sqrt(torch.clamp(torch.diagonal(gram), min=0.0))
        if m == 1:
            return torch.ones(1, dtype=gram.dtype, device=gram.device)
        if m == 2:
            inv = 1.0 / norms
            return inv / inv.sum()
        g_dot_u = torch.nan_to_num(gram / torch.clamp(norms, min=torch.finfo(gram.dtype).tiny).unsqueeze(0))
        # (g_1 - g_a)·(u_1 - u_b) for a, b in 2..m
        d_ut = g_dot_u[0, 0] - g_dot_u[0, 1:].unsqueeze(0) - g_dot_u[1:, 0].unsqueeze(1) + g_dot_u[1:, 1:]
        g1_ut = g_dot_u[0, 0] - g_dot_u[0, 1:]
        # row vector g_1 Uᵀ times (D Uᵀ)^{-1}; the pseudo-inverse copes with parallel gradients
        rest = g1_ut @ torch.linalg.pinv(d_ut)
        return torch.cat([(1 - rest.sum()).unsqueeze(0), rest])
