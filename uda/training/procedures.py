"""Update procedures: how one stage's named losses become ``.grad`` (one registry, dispatched by name).

A procedure receives a :class:`StepInputs` and fills ``.grad`` of the stage's parameters, returning the
gradient geometry it measured (or None). ``backprop`` is the gradient engine of :mod:`uda.harmonizers.engine`:
harmonized per-loss gradients over parameters or shared features, or one plain backward pass on the steps
nothing is measured. A closure procedure (re-evaluating the losses at perturbed parameters, e.g. PGA) reads
``inputs.closure``: calling it runs the stage's forward pass again and returns the named losses.

To add one: write ``def my_procedure(inputs: StepInputs) -> GradStats | None`` and register it in
:data:`PROCEDURES`; ``engine.procedure=my_procedure`` then selects it (validated by ``EngineOptions``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor, nn

from uda.errors import ConfigError
from uda.harmonizers import GradStats, Harmonizer, feature_space_backward, harmonized_backward
from uda.procedures.pga import pga_backward, running_stats_frozen

if TYPE_CHECKING:
    from uda.training.plan import StagePlan
    from uda.training.step import StepHooks


@dataclass(frozen=True)
class StepInputs:
    """Everything a procedure may use for one stage step.

    Attributes:
        plan: the stage's resolved plan (loss names, trade-offs, groups, placement, Gram parameters, ...).
        losses: the stage's losses, in ``plan.loss_names`` order (finite, already checked).
        features: the batch features shared by the losses (``grad_space=features``), or None.
        closure: re-runs the stage's forward pass and returns its named losses (for closure procedures).
        params: the parameters the stage's optimizers step (their ``.grad`` receives the update).
        harmonizers: one harmonizer per harmonized group of the plan.
        hooks: backward / reduce / loss-scale hooks of the surrounding trainer.
        measure: whether this step measures the gradient geometry (False: plain backward is enough).
    """

    plan: StagePlan
    losses: Sequence[Tensor]
    features: Tensor | None
    closure: Callable[[], dict[str, Tensor]]
    params: Sequence[nn.Parameter]
    harmonizers: Sequence[Harmonizer]
    hooks: StepHooks
    measure: bool


def backprop(inputs: StepInputs) -> GradStats | None:
    """The paper's procedure: Σ_i trade_off_i tau_i g_i written into ``.grad`` by the gradient engine."""
    plan, hooks = inputs.plan, inputs.hooks
    if not inputs.measure:
        total = sum(c * loss for c, loss in zip(plan.trade_offs, inputs.losses, strict=True))
        if hooks.only_stepped:  # the same .grad of the stepped parameters, without the others' gradients
            hooks.backward(total, inputs=list(inputs.params))
        else:
            hooks.backward(total)
        return None
    if plan.grad_space == "features":
        if inputs.features is None:
            raise ConfigError(
                f"{plan.baseline} stage {plan.name!r} exposes no shared features; use engine.grad_space=params"
            )
        return feature_space_backward(
            list(inputs.losses),
            inputs.features,
            inputs.harmonizers,
            trade_offs=list(plan.trade_offs),
            groups=plan.groups,
            trade_off_before=plan.trade_off == "before",
            tau_applies_to=plan.tau_applies_to,
            reduce_gram=hooks.reduce_gram,
            reduce_losses=hooks.reduce,
            backward=hooks.backward,
            loss_scale=hooks.loss_scale(),
        )
    return harmonized_backward(
        list(inputs.losses),
        inputs.params,
        inputs.harmonizers,
        trade_offs=list(plan.trade_offs),
        groups=plan.groups,
        gram_params=plan.gram_params,
        trade_off_before=plan.trade_off == "before",
        tau_applies_to=plan.tau_applies_to,
        reduce=hooks.reduce,
        batched=plan.batched_grads,
        loss_scale=hooks.loss_scale(),
    )


def pga(inputs: StepInputs) -> GradStats:
    """PGA's closure procedure (:func:`uda.procedures.pga_backward`) on the stage's losses.

    The shared group is every stepped parameter that is no loss's private parameter (for CDAN+E: all of them);
    each perturbed point re-runs the stage's forward pass (``inputs.closure``) with the batch-norm statistics
    held (official ``disable_running_stats``). No harmonizer acts: the procedure shapes the update itself.
    """
    plan, hooks = inputs.plan, inputs.hooks
    private = {n: list(ps) for n, ps in plan.private_params.items()}
    private_ids = {id(p) for ps in private.values() for p in ps}
    shared = [p for p in inputs.params if id(p) not in private_ids]

    def closure(name: str) -> Tensor:
        if plan.model is None:
            return inputs.closure()[name]
        with running_stats_frozen(plan.model):
            return inputs.closure()[name]

    return pga_backward(
        closure,
        dict(zip(plan.loss_names, inputs.losses, strict=True)),
        shared,
        private,
        dict(zip(plan.loss_names, plan.trade_offs, strict=True)),
        plan.procedure_options["radius"],
        plan.procedure_options["align"],
        reduce=hooks.reduce,
        loss_scale=hooks.loss_scale(),
    )


#: the update procedures by name (``engine.procedure``); the single dispatch point of :func:`run_stage`
PROCEDURES: dict[str, Callable[[StepInputs], GradStats | None]] = {"backprop": backprop, "pga": pga}
