"""No harmonization: the plain sum of the losses (tau = 1)."""

from __future__ import annotations

import torch
from torch import Tensor

from uda.harmonizers.base import Harmonizer


class NoHarmonizer(Harmonizer):
    """tau_i = 1 for every loss: the baseline's own objective, unchanged.

    The engine still measures gradient geometry with it when monitoring is on, so the conflict rate of
    an unharmonized run can be read next to a harmonized one.
    """

    name = "none"
    symmetric = True
    cost = "none"

    def _weights(self, gram: Tensor) -> Tensor:
        return torch.ones(gram.shape[0], dtype=gram.dtype, device=gram.device)
