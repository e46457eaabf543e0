"""GH++: the published angle-based reweighting (GH paper, Theorem 2, Eq. 43)."""

from __future__ import annotations

import torch
from torch import Tensor

from uda.harmonizers.base import HALF_PI, Harmonizer, pair_angle, pair_terms


class GHPP(Harmonizer):
    r"""GH++ as published and as in the official code (flag ``GH_new``).

    With θ the angle between g1 and g2, φ = θ − π/2 and δ = [g1·g2 < 0] (Eq. 43):

        tau1 = 1 + 2δ sin(λφ/2),   tau2 = 1 − 2δ sin((1 − λ)φ/2).

    ``lam`` (λ ∈ [0, 1], paper default 0.5) splits the angular correction between the two losses. The
    weights depend on θ only, so they are scale-invariant; they rescale g1 and g2 but do not rotate them,
    and tau1 ≥ 1 ≥ tau2 always favours the loss placed first (the one called "1"). tau2 < 0 is possible
    for λ < 1/3 at large θ. For a norm-preserving rotation to orthogonal see the ``ghpp_rot`` extension.
    """

    name = "ghpp"
    num_losses = 2

    def __init__(self, lam: float = 0.5) -> None:
        lam = float(lam)
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"GH++ trade-off lam must be in [0, 1], got {lam}")
        self.lam = lam

    def _weights(self, gram: Tensor) -> Tensor:
        n1_sq, n2_sq, c = pair_terms(gram)
        conflict = c < 0
        phi = pair_angle(n1_sq, n2_sq, c) - HALF_PI
        zero = torch.zeros_like(c)
        tau1 = 1.0 + 2.0 * torch.where(conflict, torch.sin(self.lam * phi / 2.0), zero)
        tau2 = 1.0 - 2.0 * torch.where(conflict, torch.sin((1.0 - self.lam) * phi / 2.0), zero)
        return torch.stack([tau1, tau2])

    def _params(self) -> dict[str, float]:
        return {"lam": self.lam}
