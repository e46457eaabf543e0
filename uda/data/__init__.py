"""Datasets and the UDA datamodule."""

from uda.data.datamodule import EVAL_SETS, DomainSplit, UDADataModule, Unlabeled
from uda.data.digits import Digits
from uda.data.domainnet import DomainNet
from uda.data.image_datamodule import DomainSpec, ImageDataModule
from uda.data.office31 import Office31
from uda.data.officehome import OfficeHome
from uda.data.offline_digits import OfflineDigits
from uda.data.visda2017 import VisDA2017

__all__ = [
    "EVAL_SETS",
    "Digits",
    "DomainNet",
    "DomainSplit",
    "DomainSpec",
    "ImageDataModule",
    "Office31",
    "OfficeHome",
    "OfflineDigits",
    "UDADataModule",
    "Unlabeled",
    "VisDA2017",
]
