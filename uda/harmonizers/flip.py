"""The sign-flip ablation of the GH paper (Sec. 5.7, Fig. 13): make a conflicting pair acute by negating one
gradient ("−g1 & g2" and "g1 & −g2") instead of harmonizing it."""

from __future__ import annotations

import torch
from torch import Tensor

from uda.errors import ConfigError
from uda.harmonizers.base import Harmonizer, pair_terms


class SignFlip(Harmonizer):
    r"""The GH paper's ablation (Fig. 13): on a conflict, negate one gradient (−g1 & g2, or g1 & −g2).

    When the two gradients conflict (c = g1·g2 < 0, strict, as in GH), g_k is replaced by −g_k
    (k = ``negate``) and the other one is kept; otherwise the update is the plain sum. As harmonized-
    gradient coefficients: A = diag(s1, s2) with s_k = −1 on a conflict and every other entry of the
    diagonal 1, so tau = A.sum(0) = (s1, s2) and the update is d = s1·g1 + s2·g2. The harmonized pair
    then meets at an acute angle (ĝ1·ĝ2 = −c > 0), which is all this ablation asks for, but d ascends
    loss k (d·g_k = −‖g_k‖² + c < 0): the flip makes the angle acute by sacrificing task k, and the
    paper finds accuracy drops sharply (Sec. 5.7).

    ``negate`` is the position of the flipped loss in its harmonized group (official order of the
    baseline). The paper writes L1 = alignment and L2 = classification; that is the official order of
    DANN, CDAN+E, GVB-GD and DWL, so there ``negate=1`` is "−g1 & g2" (``harmonizer=flip_align``) and
    ``negate=2`` is "g1 & −g2" (``harmonizer=flip_cls``). MCD and SSRT put classification first: add
    ``engine.first_loss=<alignment loss>`` (``neg_discrepancy`` for MCD, ``align`` for SSRT) so that the
    names hold. Logs name the instance after its config (``flip_align`` / ``flip_cls``).
    """

    name = "flip"
    num_losses = 2
    conflict_free = "no"  # the update ascends the negated loss
    symmetric = False  # which loss is negated is part of the method
    cost = "closed form"

    def __init__(self, negate: int = 1) -> None:
        if negate not in (1, 2) or isinstance(negate, bool):
            raise ConfigError(f"harmonizer.negate must be 1 or 2 (the loss whose gradient is flipped), got {negate!r}")
        self.negate = int(negate)
        # logs and summaries name the variant as its config does: flip_align (-g1 & g2), flip_cls (g1 & -g2)
        self.name = ("flip_align", "flip_cls")[self.negate - 1]

    def _coefficients(self, gram: Tensor) -> Tensor:
        _, _, c = pair_terms(gram)
        one = torch.ones_like(c)
        flipped = torch.where(c < 0, -one, one)
        signs = [flipped, one] if self.negate == 1 else [one, flipped]
        return torch.diag(torch.stack(signs))
