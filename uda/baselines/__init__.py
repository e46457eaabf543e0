"""UDA baselines: each builds its heads and returns named losses per stage."""

from uda.baselines.base import GRAM_SCOPES, Baseline, Stage, StageOutput, UDABatch
from uda.baselines.cdan import CDAN
from uda.baselines.dann import DANN
from uda.baselines.dwl import DWL
from uda.baselines.gvb import GVB
from uda.baselines.mcd import MCD
from uda.baselines.pga import PGA
from uda.baselines.source_only import SourceOnly
from uda.baselines.ssrt import SSRT

__all__ = [
    "CDAN",
    "DANN",
    "DWL",
    "GRAM_SCOPES",
    "GVB",
    "MCD",
    "PGA",
    "SSRT",
    "Baseline",
    "SourceOnly",
    "Stage",
    "StageOutput",
    "UDABatch",
]
