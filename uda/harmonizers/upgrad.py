"""UPGrad: unconflicting projection of gradients (Quinton & Rey 2024, TorchJD ``UPGrad``)."""

from __future__ import annotations

import torch
from torch import Tensor

from uda.errors import ConfigError
from uda.harmonizers.base import Harmonizer
from uda.harmonizers.dual_cone import MAX_EXACT_LOSSES, dual_cone_weights, normalized_gram


class UPGrad(Harmonizer):
    r"""Project every gradient onto the dual cone of all of them, then average the projections.

    For each i, v^(i) = argmin_{v >= e_i} vᵀ K v (the projection of g_i onto {x : g_j·x >= 0 ∀j},
    see :mod:`uda.harmonizers.dual_cone`), and tau = (1/m) Σ_i v^(i) (TorchJD's default preference
    vector, the mean). The update never conflicts with any loss gradient, weights follow a permutation
    of the losses, and tau is invariant to a common gradient scale; the update is on the mean-gradient
    scale. For two losses: no conflict gives (½, ½), a conflict gives GH's weights / 2.

    ``reg_eps`` adds TorchJD's ridge to the trace-normalized Gram matrix (TorchJD: 1e-4, which its QP
    solver needs); the exact solvers here do not need it, and 0 keeps the guarantee exact.
    """

    name = "upgrad"
    num_losses = None
    max_losses = MAX_EXACT_LOSSES
    conflict_free = "yes"
    symmetric = True
    cost = "closed form for 2; m·2^m small solves, batched, on the CPU (m ≤ 10)"

    def __init__(self, reg_eps: float = 0.0) -> None:
        if not reg_eps >= 0.0:
            raise ConfigError(f"harmonizer.reg_eps={reg_eps} is invalid: UPGrad's ridge must be >= 0 (TorchJD: 1e-4)")
        self.reg_eps = float(reg_eps)

    def _weights(self, gram: Tensor) -> Tensor:
        m = gram.shape[0]
        rows = torch.eye(m, dtype=gram.dtype, device=gram.device)
        return dual_cone_weights(normalized_gram(gram, self.reg_eps), rows).mean(dim=0)

    def hyperparameters(self) -> dict[str, float]:
        return {"reg_eps": self.reg_eps}
