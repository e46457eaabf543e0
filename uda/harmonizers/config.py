"""ConFIG: conflict-free inverse gradients (Liu et al., ICLR 2025; PyPI ``conflictfree``), and a momentum variant."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from uda.errors import ConfigError
from uda.harmonizers.base import Harmonizer, safe_div


def config_weights(gram: Tensor) -> Tensor:
    r"""ConFIG's update as weights of the gradients, from the Gram matrix alone.

    The official ``ConFIG_update``: unit gradients u_i = g_i/‖g_i‖, direction v = U⁺·1 (the least-norm x
    with u_i·x = 1 for every i, ``torch.linalg.lstsq``), update (Σ_i g_i·v̂) v̂ (``ProjectionLength``).
    With D = diag(‖g_i‖): v = Gᵀ α, α = D⁻¹ (D⁻¹ K D⁻¹)⁺ 1 (since A⁺ = Aᵀ(AAᵀ)⁺), ‖v‖² = αᵀKα and
    Σ_i g_i·v = 1ᵀKα, so tau = α (1ᵀKα)/(αᵀKα).

    Two losses (``ConFIG_update_double``): v bisects u_1 and u_2 and the cosine cancels out:
    tau_i = (‖g_1‖ + ‖g_2‖) / (2 ‖g_i‖), i.e. d = ½(‖g_1‖ + ‖g_2‖)(u_1 + u_2); no host sync.
    """
    m = gram.shape[0]
    norms = torch.sqrt(torch.clamp(torch.diagonal(gram), min=0.0))
    if m == 1:
        return torch.ones(1, dtype=gram.dtype, device=gram.device)
    if m == 2:
        return safe_div(norms.sum() / 2.0, norms)
    inv = safe_div(torch.ones_like(norms), norms)
    unit_gram = gram * inv.unsqueeze(0) * inv.unsqueeze(1)
    alpha = inv * (torch.linalg.pinv(unit_gram, hermitian=True) @ torch.ones_like(norms))
    k_alpha = gram @ alpha
    return alpha * safe_div(k_alpha.sum(), alpha @ k_alpha)


class ConFIG(Harmonizer):
    r"""The direction with equal projections on every unit gradient, scaled to the gradients' projections.

    u_i·v̂ is the same for every loss, so when the gradients are linearly independent the update never
    conflicts with any of them (u_i·v = 1 > 0); dependent gradients get the least-squares direction,
    which carries no such guarantee (hence "for 2 losses" in the table: there, v bisects u_1 and u_2,
    and d = 0 only for exactly opposite gradients). Symmetric; tau is scale-invariant; the update's length
    is Σ_i g_i·v̂ (the sum scale). See :func:`config_weights` for the Gram form.
    """

    name = "config"
    num_losses = None
    conflict_free = "for 2 losses"
    symmetric = True
    cost = "closed form for 2; one m×m pseudo-inverse on the device"

    def _weights(self, gram: Tensor) -> Tensor:
        return config_weights(gram)


class ConFIGMomentum(ConFIG):
    r"""ConFIG with momentum on the gradient geometry (our Gram-space adaptation of the paper's M-ConFIG).

    The paper's M-ConFIG (``PseudoMomentumOperator``) keeps a first-moment *vector* per gradient (and a
    second moment of the result) and applies ConFIG to the momenta, computing one loss's gradient per
    step. A harmonizer sees only the Gram matrix, and the engine computes every gradient anyway, so here
    the momentum is on K: K̄_t = β K̄_{t−1} + (1 − β) K_t, bias-corrected K̂ = K̄_t / (1 − β^t) (Adam's
    β_1 = 0.9 by default), and ConFIG's weights are computed from K̂ and applied to the current
    gradients. For two losses tau_i = (n̂_1 + n̂_2) / (2 n̂_i) with the smoothed norms n̂_i = sqrt(K̂_ii):
    the current gradients are normalized by smoothed norms, so the bisector (and the non-conflict
    guarantee) is only kept where the norms are steady. With β = 0 this is ConFIG; the first step always is.
    The running K̄ and the step count are checkpointed (:meth:`state_dict`); a step that falls back to the
    plain sum (non-finite or zero gradient) leaves them alone.
    """

    name = "config_momentum"
    conflict_free = "no"
    stateful = True
    cost = "as ConFIG, plus an m×m running average"

    def __init__(self, momentum: float = 0.9) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(
                f"harmonizer.momentum={momentum} is outside [0, 1): it is M-ConFIG's moving-average rate (paper: 0.9)"
            )
        self.momentum = float(momentum)
        self.running_gram: Tensor | None = None  # K̄, in the work dtype
        self.steps: Tensor | None = None  # number of steps averaged, a 0-d tensor (no host sync to count)
        self._pending: tuple[Tensor, Tensor] | None = None

    def _weights(self, gram: Tensor) -> Tensor:
        m = gram.shape[0]
        if self.running_gram is None or self.running_gram.shape != (m, m):
            self.running_gram = torch.zeros_like(gram)
            self.steps = torch.zeros((), dtype=gram.dtype, device=gram.device)
        running = self.running_gram.to(gram)
        steps = self.steps.to(gram) + 1
        running = self.momentum * running + (1.0 - self.momentum) * gram
        self._pending = (running, steps)
        corrected = running / (1.0 - torch.pow(torch.full_like(steps, self.momentum), steps))
        return config_weights(corrected)

    def _commit(self, usable: Tensor) -> None:
        if self._pending is None:
            return
        running, steps = self._pending
        self._pending = None
        self.running_gram = torch.where(usable, running, self.running_gram.to(running))
        self.steps = torch.where(usable, steps, self.steps.to(steps))

    def state_dict(self) -> dict[str, Any]:
        if self.running_gram is None:
            return {}
        return {"running_gram": self.running_gram.cpu(), "steps": self.steps.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("running_gram") is not None:
            self.running_gram = state["running_gram"].clone()
            self.steps = state["steps"].clone()

    def hyperparameters(self) -> dict[str, float]:
        return {"momentum": self.momentum}
