"""A harmonizer with fixed weights, shared by the baseline tests that check where tau lands."""

from __future__ import annotations

import torch

from uda.harmonizers import Harmonizer


class FixedTau(Harmonizer):
    """Records each Gram matrix it is given and returns fixed weights, to check where tau lands."""

    def __init__(self, tau: tuple[float, float]) -> None:
        self.tau = tau
        self.seen: list[torch.Tensor] = []

    def __deepcopy__(self, memo: dict) -> FixedTau:
        # the module keeps one harmonizer per harmonized group (deep copies): the copies share one record,
        # so a test reads every group's Gram matrix, in call order, from the instance it passed in
        twin = FixedTau(self.tau)
        twin.seen = self.seen
        return twin

    def _weights(self, gram: torch.Tensor) -> torch.Tensor:
        self.seen.append(gram.clone())
        return torch.tensor(self.tau, dtype=gram.dtype)
