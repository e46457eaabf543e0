"""DualProj: the mean gradient projected onto the dual cone of the gradients (TorchJD ``DualProj``)."""

from __future__ import annotations

import torch
from torch import Tensor

from uda.errors import ConfigError
from uda.harmonizers.base import Harmonizer
from uda.harmonizers.dual_cone import MAX_EXACT_LOSSES, dual_cone_weights, normalized_gram


class DualProj(Harmonizer):
    r"""The closest direction to the mean gradient that conflicts with no loss gradient.

    tau = argmin_{v >= 1/m} vᵀ K v: the projection of (1/m) Σ_i g_i onto {x : g_j·x >= 0 ∀j} (GEM's
    Eq. 11, Lopez-Paz & Ranzato 2017, as TorchJD's DualProj; see :mod:`uda.harmonizers.dual_cone`).
    When the mean gradient conflicts with no loss it is kept (tau = 1/m); for two losses a conflict of
    the mean with g_2 gives tau = (½, −K_12 / (2 K_22)), i.e. half of g_1 projected off g_2. Never
    conflicts, symmetric, scale-invariant; mean-gradient scale. ``reg_eps``: TorchJD's ridge (see UPGrad).
    """

    name = "dualproj"
    num_losses = None
    max_losses = MAX_EXACT_LOSSES
    conflict_free = "yes"
    symmetric = True
    cost = "closed form for 2; 2^m small solves, batched, on the CPU (m ≤ 10)"

    def __init__(self, reg_eps: float = 0.0) -> None:
        if not reg_eps >= 0.0:
            raise ConfigError(f"harmonizer.reg_eps={reg_eps} is invalid: DualProj's ridge must be >= 0 (TorchJD: 1e-4)")
        self.reg_eps = float(reg_eps)

    def _weights(self, gram: Tensor) -> Tensor:
        m = gram.shape[0]
        mean = torch.full((1, m), 1.0 / m, dtype=gram.dtype, device=gram.device)
        return dual_cone_weights(normalized_gram(gram, self.reg_eps), mean)[0]

    def hyperparameters(self) -> dict[str, float]:
        return {"reg_eps": self.reg_eps}
