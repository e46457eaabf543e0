"""Nash-MTL (Navon et al., ICML 2022), closed form for two losses."""

from __future__ import annotations

import torch
from torch import Tensor

from uda.harmonizers.base import Harmonizer, pair_terms


class NashMTL(Harmonizer):
    r"""Nash bargaining solution, which satisfies KᵀK α = 1/α elementwise (KᵀK = Gram).

    For two losses it has the closed form tau_i = 1 / (‖g_i‖ · sqrt(1 + cos θ)): the same bisector
    direction as IMTL-G with a length that grows as the gradients oppose. Singular at θ = π: 1 + cos θ
    is clamped at ``eps``. The weights scale like 1/‖g‖, so d (not tau) is invariant to a common
    gradient scale. More losses need the paper's iterative solver (not implemented).
    """

    name = "nash_mtl"
    num_losses = 2
    conflict_free = "yes"
    symmetric = True
    cost = "closed form"

    def __init__(self, eps: float = 1e-8) -> None:
        self.eps = float(eps)

    def _weights(self, gram: Tensor) -> Tensor:
        n1_sq, n2_sq, c = pair_terms(gram)
        n1, n2 = torch.sqrt(n1_sq), torch.sqrt(n2_sq)
        one_plus_cos = torch.clamp(1.0 + c / (n1 * n2), min=self.eps)
        root = torch.sqrt(one_plus_cos)
        return torch.stack([1.0 / (n1 * root), 1.0 / (n2 * root)])
