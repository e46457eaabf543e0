"""The training step in plain PyTorch: stage plans resolved once, :func:`run_stage`, update procedures."""

from uda.training.plan import EngineOptions, StagePlan, resolve_plans
from uda.training.procedures import PROCEDURES, StepInputs
from uda.training.step import StageResult, StepHooks, StepStats, check_finite, clip_gradients, plain_step, run_stage

__all__ = [
    "PROCEDURES",
    "EngineOptions",
    "StageResult",
    "StagePlan",
    "StepHooks",
    "StepInputs",
    "StepStats",
    "check_finite",
    "clip_gradients",
    "plain_step",
    "resolve_plans",
    "run_stage",
]
