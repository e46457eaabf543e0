"""Lightning callbacks."""

from uda.callbacks.analysis import FeatureAnalysis
from uda.callbacks.diagnostics import GradientDiagnostics

__all__ = ["FeatureAnalysis", "GradientDiagnostics"]
