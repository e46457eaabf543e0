"""One stage step in plain PyTorch: losses -> finite check -> update procedure -> clip -> optimizer step.

:func:`run_stage` needs no Lightning: a training loop calls it with a :class:`~uda.training.plan.StagePlan`,
the stage's loss function, its optimizers and harmonizers. What a trainer does differently (Lightning's
``manual_backward``, DDP reductions, a float16 GradScaler) comes in through :class:`StepHooks`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.optim import Optimizer

from uda.baselines.base import StageOutput
from uda.errors import DivergenceError
from uda.harmonizers import GradStats, Harmonizer
from uda.training.plan import StagePlan
from uda.training.procedures import PROCEDURES, StepInputs


def clip_gradients(optimizer: Optimizer, max_norm: float | None) -> None:
    """Clip the total gradient norm of the parameters ``optimizer`` steps (no-op for ``max_norm=None``)."""
    if max_norm is None:
        return
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    torch.nn.utils.clip_grad_norm_(params, max_norm)


def plain_step(optimizer: Optimizer, clip_grad_norm: float | None) -> bool:
    """Clip, then step; returns True (the step was applied)."""
    clip_gradients(optimizer, clip_grad_norm)
    optimizer.step()
    return True


def _no_loss_scale() -> Tensor | None:
    return None


@dataclass(frozen=True)
class StepHooks:
    """How the surrounding trainer takes part in a step (plain PyTorch by default).

    Attributes:
        backward: runs an ordinary backward pass of a scalar (Lightning: ``manual_backward``); called with
            ``inputs=`` (the stepped parameters) when ``only_stepped``.
        reduce: averages a tensor over data-parallel ranks in place (per-loss gradients, loss values), or None.
        reduce_gram: combines per-rank feature-space Gram matrices, or None.
        loss_scale: the float16 GradScaler's current scale as a tensor, or None without one.
        step: ``step(optimizer, clip_grad_norm) -> applied``: clips and steps one optimizer, returning
            False when the step was skipped (a GradScaler that found inf/NaN gradients).
        only_stepped: whether a plain backward pass may differentiate only the parameters the stage steps
            (``backward(total, inputs=params)``). The gradients it fills are bitwise those of a full pass; it
            skips the rest (MCD's step B needs no generator gradient, its step C no classifier weight
            gradient). Off under DDP, whose reducer expects a gradient of every parameter it wraps.
    """

    backward: Callable[..., None] = Tensor.backward
    reduce: Callable[[Tensor], Tensor] | None = None
    reduce_gram: Callable[[Tensor], Tensor] | None = None
    loss_scale: Callable[[], Tensor | None] = _no_loss_scale
    step: Callable[[Optimizer, float | None], bool] = plain_step
    only_stepped: bool = True


@dataclass(frozen=True)
class StepStats:
    """Gradient geometry of one harmonized group at one step, as kept for callbacks."""

    stage: str
    group: int
    names: tuple[str, ...]
    stats: GradStats


@dataclass
class StageResult:
    """What one stage step produced.

    Attributes:
        output: the loss function's output (all named losses, metrics, shared features).
        stats: the gradient geometry per harmonized group (empty when the step did not measure).
        skipped_steps: optimizer steps the trainer skipped (float16 overflow).
    """

    output: StageOutput
    stats: list[StepStats] = field(default_factory=list)
    skipped_steps: int = 0

    @property
    def losses(self) -> dict[str, Tensor]:
        return self.output.losses

    @property
    def metrics(self) -> dict[str, Tensor | float]:
        return self.output.metrics


def check_finite(plan: StagePlan, losses: Mapping[str, Tensor], iteration: int, lr: float) -> None:
    """Raise :class:`DivergenceError` (one sentence) when a loss is NaN or infinite; one host read."""
    values = torch.stack([v.detach().float() for v in losses.values()])
    if bool(torch.isfinite(values).all()):
        return
    bad = [(n, v) for n, v in zip(losses, values.tolist(), strict=True) if not math.isfinite(v)]
    name, value = bad[0]
    raise DivergenceError(
        f"training diverged: the {name} loss became {value} at iteration {iteration} "
        f"(stage {plan.name!r}); lower optimizer.lr (now {lr}) or the "
        "trade-off, or check the input data — no results were written for this run"
    )


def run_stage(
    plan: StagePlan,
    loss_fn: Callable[[], StageOutput],
    optimizers: Sequence[Optimizer],
    harmonizers: Sequence[Harmonizer],
    *,
    iteration: int = 0,
    hooks: StepHooks | None = None,
) -> StageResult:
    """Run one step of a stage and return its losses, metrics, gradient geometry and skipped steps.

    Args:
        plan: the stage's resolved plan.
        loss_fn: the stage's forward pass for this step (e.g. ``partial(stage.loss_fn, batch, iteration)``);
            a closure procedure may call it again.
        optimizers: the optimizers the stage steps (their parameters receive the update).
        harmonizers: one harmonizer per harmonized group of the plan (their state is theirs to keep).
        iteration: the training iteration (when to measure with ``monitor_every``; messages).
        hooks: trainer hooks (plain PyTorch when None).
    """
    hooks = hooks or StepHooks()
    output = loss_fn()
    missing = [n for n in plan.loss_names if n not in output.losses]
    if missing:
        raise RuntimeError(f"{plan.baseline} stage {plan.name!r} did not return losses {missing}")
    losses = [output.losses[n] for n in plan.loss_names]
    check_finite(plan, dict(zip(plan.loss_names, losses, strict=True)), iteration, optimizers[0].defaults["lr"])
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    params = [p for opt in optimizers for group in opt.param_groups for p in group["params"] if p.requires_grad]
    inputs = StepInputs(
        plan=plan,
        losses=losses,
        features=output.features,
        closure=lambda: loss_fn().losses,
        params=params,
        harmonizers=harmonizers,
        hooks=hooks,
        measure=plan.measures(iteration),
    )
    stats = PROCEDURES[plan.procedure](inputs)  # the one dispatch point of the update procedures
    skipped = sum(not hooks.step(opt, plan.clip_grad_norm) for opt in optimizers)
    step_stats = []
    if stats is not None:
        step_stats = [
            StepStats(plan.name, k, tuple(plan.loss_names[i] for i in g), stats) for k, g in enumerate(stats.groups)
        ]
    return StageResult(output, step_stats, skipped)
