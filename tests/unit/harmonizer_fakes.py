"""A harmonizer with fixed weights, shared by the baseline tests that check where tau lands."""

from __future__ import annotations

import torch

from uda.harmonizers import Harmonizer


class FixedTau(Harmonizer):
    """Records each Gram matrix it is given and returns fixed weights, to check where tau lands."""

    def __init__(self, tau: tuple[float, float]) -> None:
        self.tau = tau
        self.seen: list[torch.Tensor] = []

    def _weights(self, gram: torch.Tensor) -> torch.Tensor:
        self.seen.append(gram.clone())
        return torch.tensor(self.tau, dtype=gram.dtype)
