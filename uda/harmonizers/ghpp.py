"""GH++: the published angle-based reweighting (GH paper, Theorem 2, Eq. 43), and its rotation variant."""

from __future__ import annotations

import torch
from torch import Tensor

from uda.errors import ConfigError
from uda.harmonizers.base import HALF_PI, Harmonizer, pair_angle, pair_terms, safe_div
from uda.harmonizers.gh import GH


def _check_lam(lam: float, name: str) -> float:
    lam = float(lam)
    if not 0.0 <= lam <= 1.0:
        raise ConfigError(
            f"harmonizer.lam={lam} is outside [0, 1]: for {name} it splits the angular correction between the two "
            "gradients (the paper uses 0.5)"
        )
    return lam


class GHPP(Harmonizer):
    r"""GH++ as published and as in the official code (flag ``GH_new``).

    With θ the angle between g1 and g2, φ = θ − π/2 and δ = [g1·g2 < 0] (Eq. 43):

        tau1 = 1 + 2δ sin(λφ/2),   tau2 = 1 − 2δ sin((1 − λ)φ/2).

    ``lam`` (λ ∈ [0, 1], paper default 0.5) splits the angular correction between the two losses. The
    weights depend on θ only, so they are scale-invariant; they rescale g1 and g2 but do not rotate them,
    and tau1 ≥ 1 ≥ tau2 always favours the loss placed first (the one called "1"). tau2 < 0 is possible
    for λ < 1/3 at large θ. For a norm-preserving rotation to orthogonal see :class:`GHPPRotation`.
    """

    name = "ghpp"
    num_losses = 2
    cost = "closed form"

    def __init__(self, lam: float = 0.5) -> None:
        self.lam = _check_lam(lam, "GH++")

    def _weights(self, gram: Tensor) -> Tensor:
        n1_sq, n2_sq, c = pair_terms(gram)
        conflict = c < 0
        phi = pair_angle(n1_sq, n2_sq, c) - HALF_PI
        zero = torch.zeros_like(c)
        tau1 = 1.0 + 2.0 * torch.where(conflict, torch.sin(self.lam * phi / 2.0), zero)
        tau2 = 1.0 - 2.0 * torch.where(conflict, torch.sin((1.0 - self.lam) * phi / 2.0), zero)
        return torch.stack([tau1, tau2])

    def hyperparameters(self) -> dict[str, float]:
        return {"lam": self.lam}


class GHPPRotation(Harmonizer):
    r"""GH++ as a true rotation (our extension, not in the paper or the official code).

    The paper's Fig. 7(b) describes rotating g1 toward g2 by β = λφ and g2 toward g1 by γ = (1 − λ)φ
    inside span(g1, g2), keeping both norms, so that the harmonized pair is orthogonal; the published
    closed form (:class:`GHPP`) only rescales the gradients. Here the rotation is done exactly. With
    s = sin θ, n_i = ‖g_i‖:

        ĝ1 = sin(θ − β)/s · g1 + (n1/n2) sin β/s · g2,   ĝ2 = (n2/n1) sin γ/s · g1 + sin(θ − γ)/s · g2.

    Singular as θ → π (the plane is undefined): falls back to GH when s < 1e-6. The sum may still
    conflict with an original gradient when the norms differ a lot.
    """

    name = "ghpp_rot"
    num_losses = 2
    cost = "closed form"

    def __init__(self, lam: float = 0.5, eps: float = 1e-6) -> None:
        self.lam = _check_lam(lam, "GH++ rotation")
        self.eps = float(eps)

    def _coefficients(self, gram: Tensor) -> Tensor:
        n1_sq, n2_sq, c = pair_terms(gram)
        theta = pair_angle(n1_sq, n2_sq, c)
        s = torch.sin(theta)
        phi = theta - HALF_PI
        beta, gamma = self.lam * phi, (1.0 - self.lam) * phi
        n1, n2 = torch.sqrt(n1_sq), torch.sqrt(n2_sq)
        rot = torch.stack(
            [
                torch.stack([safe_div(torch.sin(theta - beta), s), safe_div(n1 * torch.sin(beta), n2 * s)]),
                torch.stack([safe_div(n2 * torch.sin(gamma), n1 * s), safe_div(torch.sin(theta - gamma), s)]),
            ]
        )
        eye = torch.eye(2, dtype=gram.dtype, device=gram.device)
        rotated = torch.where(c < 0, rot, eye)
        return torch.where((c < 0) & (s < self.eps), GH()._coefficients(gram), rotated)

    def hyperparameters(self) -> dict[str, float]:
        return {"lam": self.lam}
