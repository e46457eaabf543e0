"""Backbones, heads and gradient reversal."""

from uda.models.digits_backbone import digits_backbone
from uda.models.dtn import DTN
from uda.models.grl import WarmStartSchedule, grad_reverse
from uda.models.heads import Bottleneck, DomainDiscriminator, RandomizedMultilinearMap, multilinear_map
from uda.models.lenet import LeNet
from uda.models.timm_backbone import TimmBackbone

__all__ = [
    "DTN",
    "Bottleneck",
    "DomainDiscriminator",
    "LeNet",
    "RandomizedMultilinearMap",
    "TimmBackbone",
    "WarmStartSchedule",
    "digits_backbone",
    "grad_reverse",
    "multilinear_map",
]
