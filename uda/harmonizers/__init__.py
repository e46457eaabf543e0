"""Gradient harmonizers (Gram matrix -> loss weights) and the gradient engine. Plain PyTorch.

Example, in any training loop::

    from uda.harmonizers import GHPP, harmonized_backward

    optimizer.zero_grad()
    stats = harmonized_backward([align_loss, cls_loss], model.parameters(), GHPP(lam=0.5))
    optimizer.step()
"""

from uda.harmonizers.base import Harmonizer
from uda.harmonizers.engine import GradStats, harmonized_backward, loss_gradients, three_pass_backward
from uda.harmonizers.gh import GH
from uda.harmonizers.ghpp import GHPP
from uda.harmonizers.none import NoHarmonizer

__all__ = [
    "GH",
    "GHPP",
    "GradStats",
    "Harmonizer",
    "NoHarmonizer",
    "harmonized_backward",
    "loss_gradients",
    "three_pass_backward",
]
