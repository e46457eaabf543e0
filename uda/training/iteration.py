"""One training iteration of a baseline in plain PyTorch: every stage (and its repeats) through :func:`run_stage`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

from torch import Tensor
from torch.optim import Optimizer

from uda.baselines.base import Baseline, StageOutput, UDABatch
from uda.harmonizers import Harmonizer
from uda.training.plan import StagePlan
from uda.training.step import StepHooks, StepStats, run_stage


@dataclass
class IterationResult:
    """What one iteration produced: ``train/...`` logs, the gradient geometry of every harmonized group at every
    step, and the optimizer steps a GradScaler skipped."""

    logs: dict[str, Tensor | float] = field(default_factory=dict)
    stats: list[StepStats] = field(default_factory=list)
    skipped_steps: int = 0


def run_iteration(
    baseline: Baseline,
    plans: Mapping[str, StagePlan],
    optimizers: Mapping[str, Optimizer],
    harmonizers: Mapping[str, Sequence[Harmonizer]],
    batch: UDABatch,
    iteration: int,
    hooks: StepHooks | None = None,
) -> IterationResult:
    """``begin_iteration``, each stage ``plan.repeat`` times with its optimizers and harmonizers, ``end_iteration``.

    A stage's current trade-offs (schedules such as a warm-up) replace the planned ones at every iteration.
    Losses are logged as ``train/<loss>_loss`` (multi-stage baselines: ``train/<stage>/<loss>_loss``).
    """
    hooks = hooks or StepHooks()
    multi_stage = len(baseline.stages) > 1
    result = IterationResult({f"train/{k}": v for k, v in baseline.begin_iteration(iteration).items()})
    outputs: dict[str, StageOutput] = {}
    for stage in baseline.stages:
        plan = plans[stage.name].with_trade_offs(stage.trade_offs)
        prefix = f"train/{stage.name}/" if multi_stage else "train/"
        opts = [optimizers[name] for name in plan.optimizers]
        for _ in range(plan.repeat):
            loss_fn = partial(stage.loss_fn, batch, iteration)
            step = run_stage(plan, loss_fn, opts, harmonizers[stage.name], iteration=iteration, hooks=hooks)
            outputs[stage.name] = step.output
            result.skipped_steps += step.skipped_steps
            result.stats.extend(step.stats)
            result.logs.update({f"{prefix}{n}_loss": v.detach() for n, v in step.losses.items()})
            result.logs.update({f"{prefix}{n}": v for n, v in step.metrics.items()})
    result.logs.update({f"train/{k}": v for k, v in baseline.end_iteration(iteration, batch, outputs).items()})
    return result
