"""PCGrad: projecting conflicting gradients (Yu et al., NeurIPS 2020), for any number of losses."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from uda.harmonizers.base import Harmonizer, projection_coefficients


class PCGrad(Harmonizer):
    r"""Gradient surgery: each g_i is projected off every g_j it conflicts with, in a random order.

    For each i, ĝ_i starts at g_i and for j ≠ i in a random order: if ĝ_i·g_j < 0,
    ĝ_i ← ĝ_i − (ĝ_i·g_j / ‖g_j‖²) g_j; the update is Σ_i ĝ_i. Everything is computed on the Gram
    matrix (ĝ_i is tracked as coefficients on the original gradients). For two losses the order is
    irrelevant and PCGrad equals :class:`~uda.harmonizers.GH`. The random order comes from a seeded
    generator whose state is checkpointed, so every rank and every resumed run draws the same orders.
    """

    name = "pcgrad"
    num_losses = None
    conflict_free = "for 2 losses"
    stateful = True  # the seeded random order
    cost = "m(m − 1) sequential projections (a host loop over the losses)"

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self._generator = torch.Generator().manual_seed(self.seed)

    def _orders(self, m: int) -> list[list[int]]:
        orders = []
        for i in range(m):
            others = [j for j in range(m) if j != i]
            perm = torch.randperm(len(others), generator=self._generator).tolist() if m > 2 else range(len(others))
            orders.append([others[p] for p in perm])
        return orders

    def _coefficients(self, gram: Tensor) -> Tensor:
        return projection_coefficients(gram, self._orders(gram.shape[0]))

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            self._generator.set_state(state["generator"])

    def hyperparameters(self) -> dict[str, Any]:
        return {"seed": self.seed}
