"""The training step in plain PyTorch: stage plans resolved once, :func:`run_stage`, update procedures."""

from uda.training.hooks import scaled_step_hooks
from uda.training.iteration import IterationResult, run_iteration
from uda.training.optimizers import build_optimizers, check_lr_mult
from uda.training.plan import EngineOptions, StagePlan, resolve_plans
from uda.training.procedures import PROCEDURES, StepInputs
from uda.training.step import StageResult, StepHooks, StepStats, check_finite, clip_gradients, plain_step, run_stage

__all__ = [
    "PROCEDURES",
    "EngineOptions",
    "IterationResult",
    "StageResult",
    "StagePlan",
    "StepHooks",
    "StepInputs",
    "StepStats",
    "build_optimizers",
    "check_finite",
    "check_lr_mult",
    "clip_gradients",
    "plain_step",
    "resolve_plans",
    "run_iteration",
    "run_stage",
    "scaled_step_hooks",
]
