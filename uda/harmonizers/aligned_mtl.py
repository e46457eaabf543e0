"""Aligned-MTL (Senushkin et al., CVPR 2023): align the gradients to an orthogonal, equal-norm system."""

from __future__ import annotations

import torch
from torch import Tensor

from uda.harmonizers.base import Harmonizer


class AlignedMTL(Harmonizer):
    r"""Condition-number-one alignment of the gradient system.

    With K = V Λ Vᵀ, the aligned gradients Ĝ = B G with B = sqrt(λ_min) V Λ^{-1/2} Vᵀ are orthogonal
    and all have norm sqrt(λ_min); the update is their sum, tau = B·1. Rank-deficient K (parallel or
    zero gradients) uses only the eigen-directions above ``λ_max · m · eps`` (as the official code).
    Scale-invariant; defined for any number of losses.
    """

    name = "aligned_mtl"
    num_losses = None
    symmetric = True
    cost = "one m×m eigendecomposition"

    def _coefficients(self, gram: Tensor) -> Tensor:
        m = gram.shape[0]
        lam, vec = torch.linalg.eigh(gram)
        tol = lam.max() * m * torch.finfo(gram.dtype).eps
        keep = lam > tol
        lam_min = torch.where(keep, lam, torch.full_like(lam, float("inf"))).min()
        inv_sqrt = torch.where(keep, 1.0 / torch.sqrt(torch.clamp(lam, min=torch.finfo(lam.dtype).tiny)), 0.0)
        return torch.sqrt(lam_min) * (vec * inv_sqrt) @ vec.T
