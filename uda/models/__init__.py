"""Backbones, heads and gradient reversal."""

from uda.models.grl import WarmStartSchedule, grad_reverse
from uda.models.heads import Bottleneck, DomainDiscriminator, RandomizedMultilinearMap, multilinear_map
from uda.models.lenet import LeNet

__all__ = [
    "Bottleneck",
    "DomainDiscriminator",
    "LeNet",
    "RandomizedMultilinearMap",
    "WarmStartSchedule",
    "grad_reverse",
    "multilinear_map",
]
