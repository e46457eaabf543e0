"""ProGrad-style one-sided projection (Zhu et al., ICCV 2023), as a two-loss weighting."""

from __future__ import annotations

import torch
from torch import Tensor

from uda.errors import ConfigError
from uda.harmonizers.base import Harmonizer, pair_terms, safe_div


class ProGrad(Harmonizer):
    r"""Project loss 1's gradient off loss 2's ("the anchor") when they conflict; never the reverse.

    ProGrad (Eq. 4 of the paper): G = g1 if g1·g2 ≥ 0, else g1 − λ (g1·g2/‖g2‖²) g2. ``lam = 1`` makes
    the projected g1 orthogonal to the anchor; ``lam = 0`` disables the projection.

    ``keep_anchor`` decides whether the anchor loss is also optimized:

    * ``False`` — ProGrad exactly: d = G, the anchor only guards (tau = (1, −λδc/‖g2‖²)). In UDA this
      trains nothing on loss 2 alone, e.g. the classifier head when loss 2 is the classification loss.
    * ``True`` (default, our UDA adaptation) — d = G + g2 (tau = (1, 1 − λδc/‖g2‖²)): both losses are
      optimized and only loss 1 yields, a one-sided GH.

    With the official loss order of CDAN/GVB/DWL (alignment first) the alignment gradient yields to the
    classification gradient; ``engine.first_loss`` can swap the roles.
    """

    name = "prograd"
    num_losses = 2
    cost = "closed form"

    def __init__(self, lam: float = 1.0, keep_anchor: bool = True) -> None:
        lam = float(lam)
        if not 0.0 <= lam <= 1.0:
            raise ConfigError(
                f"harmonizer.lam={lam} is outside [0, 1]: for ProGrad it is the projection strength (paper: 1)"
            )
        self.lam = lam
        self.keep_anchor = bool(keep_anchor)

    def _coefficients(self, gram: Tensor) -> Tensor:
        _, n2_sq, c = pair_terms(gram)
        proj = torch.where(c < 0, self.lam * safe_div(c, n2_sq), torch.zeros_like(c))
        one, zero = torch.ones_like(c), torch.zeros_like(c)
        anchor = one if self.keep_anchor else zero
        return torch.stack([torch.stack([one, -proj]), torch.stack([zero, anchor])])

    def hyperparameters(self) -> dict[str, object]:
        return {"lam": self.lam, "keep_anchor": self.keep_anchor}
