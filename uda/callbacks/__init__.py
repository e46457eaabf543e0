"""Lightning callbacks."""

from uda.callbacks.diagnostics import GradientDiagnostics

__all__ = ["GradientDiagnostics"]
