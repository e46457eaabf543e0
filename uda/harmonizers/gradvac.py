"""GradVac: gradient vaccine with an EMA similarity target (Wang et al., ICLR 2021)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from uda.errors import ConfigError
from uda.harmonizers.base import Harmonizer, safe_div


class GradVac(Harmonizer):
    r"""Raise each pair's cosine similarity to an adaptive target instead of only removing conflicts.

    For each i and j ≠ i (random order): with φ = cos(ĝ_i, g_j) and target φ_T (EMA of past φ), if
    φ < φ_T: ĝ_i ← ĝ_i + w g_j,  w = ‖ĝ_i‖ (φ_T sqrt(1 − φ²) − φ sqrt(1 − φ_T²)) / (‖g_j‖ sqrt(1 − φ_T²)),
    then φ_T ← (1 − β) φ_T + β φ. With φ_T fixed at 0 (``beta = 0``) this is PCGrad. Here the whole
    Gram scope is one block (the paper also uses per-layer blocks). The EMA targets and the random
    order generator are checkpointed (:meth:`state_dict`).
    """

    name = "gradvac"
    num_losses = None
    stateful = True  # the EMA targets and the seeded random order
    cost = "m(m − 1) sequential projections (a host loop over the losses)"

    def __init__(self, beta: float = 0.01, seed: int = 0) -> None:
        if not 0.0 <= beta <= 1.0:
            raise ConfigError(f"harmonizer.beta={beta} is outside [0, 1]: it is GradVac's EMA rate (paper: 0.01)")
        self.beta = float(beta)
        self.seed = int(seed)
        self._generator = torch.Generator().manual_seed(self.seed)
        self.target: Tensor | None = None  # (m, m) EMA of cosine similarities, φ_T

    def _coefficients(self, gram: Tensor) -> Tensor:
        m = gram.shape[0]
        if self.target is None or self.target.shape != (m, m):
            self.target = torch.zeros(m, m, dtype=gram.dtype, device=gram.device)
        target = self.target.to(gram)
        a = torch.eye(m, dtype=gram.dtype, device=gram.device)
        new_target = target.clone()
        rows = []
        for i in range(m):
            row = a[i]
            others = [j for j in range(m) if j != i]
            perm = torch.randperm(len(others), generator=self._generator).tolist() if m > 2 else range(len(others))
            for j in (others[p] for p in perm):
                ni = torch.sqrt(torch.clamp(row @ gram @ row, min=0.0))
                nj = torch.sqrt(gram[j, j])
                phi = safe_div(row @ gram[:, j], ni * nj)
                phi_t = target[i, j]
                root_t = torch.sqrt(torch.clamp(1 - phi_t**2, min=0.0))
                lift = phi_t * torch.sqrt(torch.clamp(1 - phi**2, min=0.0)) - phi * root_t
                w = safe_div(ni * lift, nj * root_t)
                row = row + torch.where(phi < phi_t, w, torch.zeros_like(w)) * a[j]
                new_target[i, j] = (1 - self.beta) * phi_t + self.beta * phi
            rows.append(row)
        self.target = new_target.detach()
        return torch.stack(rows)

    def coefficients(self, gram: Tensor) -> Tensor:
        # a target restored from a checkpoint is on the CPU: bring it to the Gram matrix's device once, so the
        # step's flag is never copied to the host (which would synchronise every step of a resumed GPU run)
        previous = None if self.target is None else self.target.to(gram.device)
        self.target = previous
        a = super().coefficients(gram)
        if previous is not None:
            # a step the base class rejects (non-finite Gram matrix, zero gradient) leaves the targets alone
            usable = torch.isfinite(gram).all() & (torch.diagonal(gram) > 0).all()
            self.target = torch.where(usable, self.target.to(previous), previous)
        return a

    def state_dict(self) -> dict[str, Any]:
        return {"target": None if self.target is None else self.target.cpu(), "generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("target") is not None:
            self.target = state["target"].clone()
        if "generator" in state:
            self._generator.set_state(state["generator"])

    def hyperparameters(self) -> dict[str, object]:
        return {"beta": self.beta}
