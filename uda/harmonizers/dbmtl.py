"""DB-MTL: dual-balancing multi-task learning (Lin et al., 2023; LibMTL ``DB_MTL``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from uda.errors import ConfigError
from uda.harmonizers.base import Harmonizer
from uda.harmonizers.famo import lower_bounds


class DBMTL(Harmonizer):
    r"""Balance the loss scales (log losses) and the gradient magnitudes (scale every gradient to the largest).

    LibMTL's ``DB_MTL.backward``: the gradients of log(L_i + ε), ĝ_i = g_i / (L_i + ε), are averaged over
    steps, b_i ← ĝ_i + β_t (b_i − ĝ_i) with β_t = β / t^σ, and the update is Σ_i (max_j ‖b_j‖ / ‖b_i‖) b_i:
    every averaged log-gradient scaled to the largest norm.

    A harmonizer sees the Gram matrix, not the gradient vectors, so the average is kept on the norms
    n_i = ‖g_i‖ / (L_i + ε) (n̄_i ← n_i + β_t (n̄_i − n_i)) and the directions are the current ones:
    d = max_j n̄_j Σ_i u_i with u_i = g_i / ‖g_i‖, i.e. tau_i = max_j n̄_j / ‖g_i‖. This equals LibMTL
    exactly when the gradients do not change between steps (and for β = 0 always). The direction is the
    sum of unit gradients, which for two losses is their bisector: the update never conflicts with either.
    Symmetric; tau is scale-invariant. The log needs losses above ``min_losses`` (default 0, LibMTL's
    log(L + ε); our addition, as FAMO's: log(L − min + ε)): a step where one is not (MCD's negative
    ``neg_discrepancy``: use ``harmonizer.min_losses=[0,-1]``), or a non-finite step, falls back to the plain
    sum and leaves the state alone. The running norms and the step count are checkpointed.
    """

    name = "dbmtl"
    num_losses = None
    conflict_free = "for 2 losses"
    symmetric = True
    stateful = True
    needs_losses = True
    cost = "O(m), from the Gram diagonal and the loss values"

    def __init__(
        self, beta: float = 0.9, beta_sigma: float = 0.0, min_losses: float | Sequence[float] = 0.0, eps: float = 1e-8
    ) -> None:
        if not 0.0 <= beta < 1.0:
            raise ConfigError(f"harmonizer.beta={beta} is outside [0, 1): it is DB-MTL's moving-average rate (0.9)")
        if not beta_sigma >= 0.0:
            raise ConfigError(f"harmonizer.beta_sigma={beta_sigma} is invalid: DB-MTL's decay power must be >= 0 (0)")
        if not eps > 0.0:
            raise ConfigError(f"harmonizer.eps={eps} is invalid: DB-MTL's offset inside the log must be > 0 (1e-8)")
        self.beta, self.beta_sigma, self.eps = float(beta), float(beta_sigma), float(eps)
        self.min_losses = (
            float(min_losses) if isinstance(min_losses, (int, float)) else tuple(float(v) for v in min_losses)
        )
        self.running_norms: Tensor | None = None  # n̄, the averaged norms of the log-loss gradients
        self.steps: Tensor | None = None  # a 0-d tensor, so counting needs no host sync
        self._pending: tuple[Tensor, Tensor] | None = None

    def _coefficients_with_losses(self, gram: Tensor, losses: Tensor) -> Tensor:
        m = losses.shape[0]
        if self.running_norms is None or self.running_norms.shape != (m,):
            self.running_norms = torch.zeros(m, dtype=gram.dtype, device=gram.device)
            self.steps = torch.zeros((), dtype=gram.dtype, device=gram.device)
        norms = torch.sqrt(torch.clamp(torch.diagonal(gram), min=0.0))
        shifted = losses - lower_bounds(self.min_losses, losses, "DB-MTL") + self.eps
        valid = torch.isfinite(losses).all() & (shifted > 0).all()
        log_grad_norms = norms / torch.where(valid, shifted, torch.ones_like(shifted))
        steps = self.steps.to(gram) + 1
        rate = self.beta / torch.pow(steps, self.beta_sigma)
        running = log_grad_norms + rate * (self.running_norms.to(gram) - log_grad_norms)
        self._pending = (running, steps)
        tau = running.max() / norms
        return torch.diag(torch.where(valid, tau, torch.full_like(tau, float("nan"))))

    def _commit(self, usable: Tensor) -> None:
        if self._pending is None:
            return
        (running, steps), self._pending = self._pending, None
        self.running_norms = torch.where(usable, running, self.running_norms.to(running))
        self.steps = torch.where(usable, steps, self.steps.to(steps))

    def state_dict(self) -> dict[str, Any]:
        if self.running_norms is None:
            return {}
        return {"running_norms": self.running_norms.cpu(), "steps": self.steps.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("running_norms") is not None:
            self.running_norms = state["running_norms"].clone()
            self.steps = state["steps"].clone()

    def hyperparameters(self) -> dict[str, float]:
        return {"beta": self.beta, "beta_sigma": self.beta_sigma, "min_losses": self.min_losses}
