"""Lightning callbacks."""

from uda.callbacks.analysis import FeatureAnalysis
from uda.callbacks.diagnostics import GradientDiagnostics
from uda.callbacks.record import RunRecord

__all__ = ["FeatureAnalysis", "GradientDiagnostics", "RunRecord"]
