"""UDA baselines: each builds its heads and returns named losses per stage."""

from uda.baselines.base import GRAM_SCOPES, Baseline, Stage, StageOutput, UDABatch
from uda.baselines.cdan import CDAN
from uda.baselines.dann import DANN
from uda.baselines.mcd import MCD
from uda.baselines.source_only import SourceOnly

__all__ = ["CDAN", "DANN", "GRAM_SCOPES", "MCD", "Baseline", "SourceOnly", "Stage", "StageOutput", "UDABatch"]
