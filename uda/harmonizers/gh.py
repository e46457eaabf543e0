"""GH: gradient harmonization by mutual projection (GH paper, Lemma 1 / Theorem 1, Eq. 42)."""

from __future__ import annotations

from torch import Tensor

from uda.harmonizers.base import Harmonizer, projection_coefficients


class GH(Harmonizer):
    r"""Gradient Harmonization for two losses.

    When the gradients conflict (c = g1·g2 < 0, strict), each is projected onto the normal plane of the
    other: ĝ1 = g1 − (c/‖g2‖²) g2 and ĝ2 = g2 − (c/‖g1‖²) g1 (Eq. 4 and its mirror). Their sum is
    tau1·g1 + tau2·g2 with (Eq. 42)

        tau1 = 1 − δ c / ‖g1‖²,   tau2 = 1 − δ c / ‖g2‖²,   δ = [c < 0],

    (note the crossed norms: tau1 divides by ‖g1‖²). Both weights are ≥ 1, the combined direction never
    conflicts with either gradient (d·g_i = ‖g_i‖² sin²θ ≥ 0), the harmonized pair meets at π − θ, and
    the weights are invariant to a common scale of both gradients. For two losses GH is PCGrad.
    """

    name = "gh"
    num_losses = 2
    conflict_free = "yes"
    symmetric = True
    cost = "closed form"

    def _coefficients(self, gram: Tensor) -> Tensor:
        return projection_coefficients(gram)
