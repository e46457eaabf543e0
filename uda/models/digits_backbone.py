"""The digits recipes' backbone, chosen by task: LeNet for MNIST <-> USPS, DTN when SVHN is involved."""

from __future__ import annotations

from torch import nn

from uda.models.dtn import DTN
from uda.models.lenet import LeNet

#: names of the SVHN domain (the Digits dataset's short and long names)
SVHN_NAMES = frozenset({"S", "svhn"})


def digits_backbone(source: str, target: str) -> nn.Module:
    """LeNet (28x28 grayscale) for M <-> U, DTN (32x32 RGB) for tasks with SVHN, as thuml CDAN and tllib do.

    The Digits datamodule picks the image format by the same rule (``image_size``/``channels`` = None).
    """
    if {str(source), str(target)} & SVHN_NAMES:
        return DTN(in_channels=3)
    return LeNet(in_channels=1)
