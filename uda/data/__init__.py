"""Datasets and the UDA datamodule."""

from uda.data.datamodule import EVAL_SETS, DomainSplit, UDADataModule, Unlabeled
from uda.data.offline_digits import OfflineDigits

__all__ = ["EVAL_SETS", "DomainSplit", "OfflineDigits", "UDADataModule", "Unlabeled"]
