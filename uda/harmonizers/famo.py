"""FAMO: fast adaptive multitask optimization (Liu et al., NeurIPS 2023; official ``famo.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from uda.errors import ConfigError
from uda.harmonizers.base import Harmonizer


def lower_bounds(min_losses: float | tuple[float, ...], losses: Tensor, method: str) -> Tensor:
    """The losses' lower bounds as a tensor like ``losses`` (one number, or one per loss of the group)."""
    bounds = torch.as_tensor(min_losses, dtype=losses.dtype, device=losses.device)
    if bounds.dim() == 1 and bounds.shape != losses.shape:
        raise ConfigError(
            f"harmonizer.min_losses has {bounds.shape[0]} values for a group of {losses.shape[0]} losses: "
            f"give {method} one lower bound per loss, or one number"
        )
    return bounds


class FAMO(Harmonizer):
    r"""Balance the losses' rates of decrease with O(m) work per step, from the loss values alone.

    Weights (official ``get_weighted_loss``): z = softmax(ξ), D_i = L_i − min_i + ε, and the update is
    the gradient of Σ_i z_i log D_i / c with c = Σ_i z_i / D_i, i.e. tau_i = z_i / (c D_i) (they sum to 1;
    mean-gradient scale). The Gram matrix is not used, so tau is scale-invariant and symmetric.

    Logits (official ``update``): with δ_i = log D_i(before) − log D_i(after), ξ takes one Adam step
    (lr, weight decay γ, as ``torch.optim.Adam``) along Jᵀδ, J = diag(z) − z zᵀ the softmax Jacobian,
    which raises the weight of the losses that decreased least. The official code re-evaluates the losses
    after the parameter step (an extra forward pass); here δ compares the losses of consecutive steps,
    on consecutive batches, so the logit step for step t − 1 is taken at step t, before its weights.

    The losses must stay above ``min_losses`` (default 0; a number or one per loss): a step where one
    does not (e.g. MCD's negative ``neg_discrepancy``: use ``harmonizer.min_losses=[0,-1]`` there), or
    where a loss or the Gram matrix is not finite, falls back to the plain sum and leaves the state alone.
    The state (logits, Adam moments and step, previous log-losses) is checkpointed.
    """

    name = "famo"
    num_losses = None
    stateful = True
    symmetric = True
    needs_losses = True
    cost = "O(m), from the loss values (the Gram matrix is not used)"

    def __init__(
        self,
        lr: float = 0.025,
        gamma: float = 0.01,
        min_losses: float | Sequence[float] = 0.0,
        eps: float = 1e-8,
        betas: Sequence[float] = (0.9, 0.999),
        adam_eps: float = 1e-8,
    ) -> None:
        if not lr > 0.0:
            raise ConfigError(f"harmonizer.lr={lr} is invalid: FAMO's logit learning rate must be > 0 (paper: 0.025)")
        if not gamma >= 0.0:
            raise ConfigError(f"harmonizer.gamma={gamma} is invalid: FAMO's logit decay must be >= 0 (paper: 0.01)")
        if not eps > 0.0:
            raise ConfigError(f"harmonizer.eps={eps} is invalid: FAMO's offset inside the log must be > 0 (1e-8)")
        betas = tuple(float(b) for b in betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ConfigError(f"harmonizer.betas={list(betas)} is invalid: give Adam's two rates in [0, 1)")
        self.lr, self.gamma, self.eps, self.betas, self.adam_eps = float(lr), float(gamma), float(eps), betas, adam_eps
        self.min_losses = (
            float(min_losses) if isinstance(min_losses, (int, float)) else tuple(float(v) for v in min_losses)
        )
        self.state: dict[str, Tensor] | None = None
        self._pending: dict[str, Tensor] | None = None

    def _fresh_state(self, m: int, like: Tensor) -> dict[str, Tensor]:
        zeros = torch.zeros(m, dtype=like.dtype, device=like.device)
        scalar = torch.zeros((), dtype=like.dtype, device=like.device)
        return {
            "logits": zeros,
            "exp_avg": zeros,
            "exp_avg_sq": zeros,
            "adam_steps": scalar,
            "prev_log_losses": zeros,
            "has_prev": torch.zeros((), dtype=torch.bool, device=like.device),
        }

    def _coefficients_with_losses(self, gram: Tensor, losses: Tensor) -> Tensor:
        m = losses.shape[0]
        if self.state is None or self.state["logits"].shape != (m,):
            self.state = self._fresh_state(m, gram)
        state = {k: v.to(gram.device) if v.dtype == torch.bool else v.to(gram) for k, v in self.state.items()}
        shifted = losses - lower_bounds(self.min_losses, losses, "FAMO") + self.eps
        valid = torch.isfinite(losses).all() & (shifted > 0).all()
        log_losses = torch.log(torch.where(valid, shifted, torch.ones_like(shifted)))

        # the logit step for the previous update: Adam on ξ with the gradient Jᵀδ + γ ξ
        logits = state["logits"]
        z = torch.softmax(logits, dim=0)
        delta = state["prev_log_losses"] - log_losses
        grad = z * delta - z * (z @ delta) + self.gamma * logits
        beta1, beta2 = self.betas
        steps = state["adam_steps"] + 1
        exp_avg = beta1 * state["exp_avg"] + (1.0 - beta1) * grad
        exp_avg_sq = beta2 * state["exp_avg_sq"] + (1.0 - beta2) * grad * grad
        correction1 = 1.0 - torch.pow(torch.full_like(steps, beta1), steps)
        correction2 = 1.0 - torch.pow(torch.full_like(steps, beta2), steps)
        denom = torch.sqrt(exp_avg_sq) / torch.sqrt(correction2) + self.adam_eps
        stepped = logits - (self.lr / correction1) * exp_avg / denom
        take = valid & state["has_prev"]
        new_logits = torch.where(take, stepped, logits)
        self._pending = {
            "logits": new_logits,
            "exp_avg": torch.where(take, exp_avg, state["exp_avg"]),
            "exp_avg_sq": torch.where(take, exp_avg_sq, state["exp_avg_sq"]),
            "adam_steps": torch.where(take, steps, state["adam_steps"]),
            "prev_log_losses": log_losses,
            "has_prev": torch.ones_like(state["has_prev"]),
        }

        # the weights of this step, from the updated logits
        z = torch.softmax(new_logits, dim=0)
        inverse = z / torch.where(valid, shifted, torch.ones_like(shifted))
        tau = inverse / inverse.sum()
        return torch.diag(torch.where(valid, tau, torch.full_like(tau, float("nan"))))

    def _commit(self, usable: Tensor) -> None:
        if self._pending is None:
            return
        pending, self._pending = self._pending, None
        self.state = {k: torch.where(usable, v, self.state[k].to(v.device)) for k, v in pending.items()}

    def state_dict(self) -> dict[str, Any]:
        return {} if self.state is None else {k: v.cpu() for k, v in self.state.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.state = {k: v.clone() for k, v in state.items()}

    def hyperparameters(self) -> dict[str, Any]:
        return {"lr": self.lr, "gamma": self.gamma, "min_losses": self.min_losses}
