"""Engine options and the plan of each stage, resolved and validated once before training.

:class:`EngineOptions` is what the user chose (config node ``engine``; ``None`` = the baseline's official
choice). :func:`resolve_plans` combines it with the baseline's :class:`~uda.baselines.Stage` declarations
into one :class:`StagePlan` per stage: the loss names and trade-offs, the harmonized groups in order (the
``first_loss`` option applied), where the trade-offs go, what tau multiplies, the Gram parameters, the
gradient space and the update procedure. Nothing downstream re-reads or re-checks the options.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from uda.baselines.base import GRAM_SCOPES, TRADE_OFF_PLACEMENTS, Baseline, Stage
from uda.errors import ConfigError
from uda.harmonizers import Harmonizer, NoHarmonizer
from uda.harmonizers.engine import TAU_APPLIES_TO
from uda.procedures.pga import check_pga_settings
from uda.training.procedures import PROCEDURES

#: PGA's official Office-Home values (LA/ runs), used where neither the baseline nor the engine sets them
PGA_DEFAULTS = {"radius": 3e-4, "align": 1.0}

GRAD_SPACES = ("params", "features")


def _choose(key: str, value: object, choices: tuple[object, ...]) -> None:
    if value not in choices:
        shown = ", ".join("null" if c is None else str(c) for c in choices)
        raise ConfigError(f"engine.{key}={value!r} is unknown; choose one of: {shown}")


@dataclass(frozen=True)
class EngineOptions:
    """How the gradient engine applies the harmonizer (config node ``engine``).

    Attributes:
        gram_scope: parameters forming the Gram matrix: ``official`` (the official GH code's choice for the
            baseline and stage), ``backbone``, or ``shared`` (the feature extractor all losses share).
        tau_applies_to: ``all`` (official: tau multiplies every parameter's gradient) or ``gram_params``
            (only the Gram scope; heads outside it, e.g. the discriminator, keep their plain gradients);
            ``None`` keeps the default declared by the baseline's stage.
        trade_off: apply the trade-offs ``before`` harmonization (the harmonizer sees trade_off_i·g_i, which
            keeps GH's non-conflict guarantee) or ``after`` it; ``None`` keeps the stage's official placement.
        first_loss: name of the loss that plays "1" in every harmonized group (GH++ favours loss 1;
            ProGrad projects loss 1); ``None`` keeps the official order of the baseline.
        grad_space: ``params`` (the paper: gradients over parameters) or ``features`` (gradients w.r.t.
            the shared batch features: a cheap approximation, one ordinary backward per step).
        batched_grads: take the per-loss parameter gradients in one vmapped backward pass.
        monitor_every: with ``harmonizer=none`` the per-loss gradients are only needed for diagnostics,
            so they are measured every ``monitor_every`` iterations (0 = never) and the other steps take
            a single plain backward pass. Harmonized steps always measure (the Gram matrix is needed).
        clip_grad_norm: clip the total gradient norm of each optimizer step (``None`` = off).
        procedure: the update procedure (:data:`uda.training.procedures.PROCEDURES`): ``backprop`` = the
            gradient engine, ``pga`` = PGA's perturbed re-evaluation (any stage with two or more losses);
            ``None`` keeps the stage's own (``pga`` for ``baseline=pga``, else ``backprop``).
        pga_radius, pga_align: PGA's ρ and a; ``None`` keeps the baseline's values (``baseline=pga``), else
            PGA's official Office-Home values (ρ = 3e-4, a = 1).
    """

    gram_scope: str = "official"
    tau_applies_to: str | None = None
    trade_off: str | None = None
    first_loss: str | None = None
    grad_space: str = "params"
    batched_grads: bool = False
    monitor_every: int = 10
    clip_grad_norm: float | None = None
    procedure: str | None = None
    pga_radius: float | None = None
    pga_align: float | None = None

    def __post_init__(self) -> None:
        _choose("gram_scope", self.gram_scope, GRAM_SCOPES)
        _choose("tau_applies_to", self.tau_applies_to, (*TAU_APPLIES_TO, None))
        _choose("trade_off", self.trade_off, (*TRADE_OFF_PLACEMENTS, None))
        _choose("grad_space", self.grad_space, GRAD_SPACES)
        _choose("procedure", self.procedure, (*PROCEDURES, None))
        if self.pga_radius is not None or self.pga_align is not None:
            check_pga_settings(
                PGA_DEFAULTS["radius"] if self.pga_radius is None else self.pga_radius,
                PGA_DEFAULTS["align"] if self.pga_align is None else self.pga_align,
            )
        if self.monitor_every < 0:
            raise ConfigError(f"engine.monitor_every must be >= 0 (got {self.monitor_every})")
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            raise ConfigError(f"engine.clip_grad_norm must be positive or null (got {self.clip_grad_norm})")


@dataclass(frozen=True)
class StagePlan:
    """What one stage step does, fully resolved (see the module docstring).

    Attributes:
        baseline: the baseline's name (for messages).
        name: the stage's name.
        loss_names: the losses the stage minimizes, in the order of every per-loss tensor.
        trade_offs: their trade-offs, in ``loss_names`` order.
        groups: harmonized groups as indices into ``loss_names``, loss "1" first (``first_loss`` applied).
        trade_off: ``before`` or ``after`` harmonization.
        tau_applies_to: ``all`` or ``gram_params``.
        gram_scope: the Gram scope's name (``official``, ``backbone``, ``shared``).
        gram_params: the parameters of that scope for this stage.
        grad_space: ``params`` or ``features``.
        batched_grads: vmapped per-loss gradients.
        procedure: the update procedure's name.
        procedure_options: the procedure's settings (PGA: ``radius``, ``align``); empty for ``backprop``.
        private_params: each loss's own parameters, for a closure procedure (PGA); empty = all shared.
        model: the module whose batch-norm statistics a closure procedure keeps fixed while it re-evaluates.
        measure_every: measure the gradient geometry every n iterations (1 = always, 0 = never).
        clip_grad_norm: total-norm clipping of each optimizer step, or None.
        optimizers: the optimizer names the stage steps.
        repeat: how many times the stage runs per iteration.
    """

    baseline: str
    name: str
    loss_names: tuple[str, ...]
    trade_offs: tuple[float, ...]
    groups: tuple[tuple[int, ...], ...]
    trade_off: str
    tau_applies_to: str
    gram_scope: str
    gram_params: tuple[nn.Parameter, ...] = field(repr=False, compare=False)
    grad_space: str = "params"
    batched_grads: bool = False
    procedure: str = "backprop"
    procedure_options: Mapping[str, float] = field(default_factory=dict)
    private_params: Mapping[str, tuple[nn.Parameter, ...]] = field(default_factory=dict, repr=False, compare=False)
    model: nn.Module | None = field(default=None, repr=False, compare=False)
    measure_every: int = 1
    clip_grad_norm: float | None = None
    optimizers: tuple[str, ...] = ("main",)
    repeat: int = 1

    @property
    def group_names(self) -> tuple[tuple[str, ...], ...]:
        """The harmonized groups by loss name."""
        return tuple(tuple(self.loss_names[i] for i in group) for group in self.groups)

    def measures(self, iteration: int) -> bool:
        """Whether the step at ``iteration`` measures the per-loss gradients (else: one plain backward)."""
        return self.measure_every > 0 and iteration % self.measure_every == 0

    def with_trade_offs(self, trade_offs: Mapping[str, float]) -> StagePlan:
        """This plan with the stage's current trade-offs (DWL's T changes during training); same losses."""
        values = tuple(float(trade_offs[n]) for n in self.loss_names)
        return self if values == self.trade_offs else replace(self, trade_offs=values)

    def describe(self) -> dict[str, Any]:
        """The resolved plan as plain values (for the run's summary)."""
        return {
            "losses": list(self.loss_names),
            "trade_offs": dict(zip(self.loss_names, self.trade_offs, strict=True)),
            "harmonized_groups": [list(g) for g in self.group_names],
            "trade_off": self.trade_off,
            "tau_applies_to": self.tau_applies_to,
            "gram_scope": self.gram_scope,
            "gram_params": sum(p.numel() for p in self.gram_params),
            "grad_space": self.grad_space,
            "procedure": self.procedure,
            **{f"{self.procedure}_{k}": v for k, v in self.procedure_options.items()},
            "optimizers": list(self.optimizers),
            "repeat": self.repeat,
        }


def resolve_plans(baseline: Baseline, harmonizer: Harmonizer, engine: EngineOptions) -> dict[str, StagePlan]:
    """One :class:`StagePlan` per stage of ``baseline``, by stage name; every cross-option check happens here.

    Raises :class:`ConfigError` when ``engine.first_loss`` names no harmonized loss, or when with
    ``tau_applies_to=gram_params`` a harmonized stage steps no parameter tau reaches (a silent no-op).
    """
    stages = baseline.stages
    harmonized = sorted({n for s in stages for g in s.harmonize for n in g})
    if engine.first_loss is not None and engine.first_loss not in harmonized:
        raise ConfigError(
            f"engine.first_loss={engine.first_loss!r} is not a harmonized loss of {baseline.name}; "
            f"choose one of: {', '.join(harmonized)}"
        )
    acts = not isinstance(harmonizer, NoHarmonizer)
    plans = {}
    for stage in stages:
        plan = _plan(baseline, stage, engine, acts)
        if acts and plan.groups:
            _check_tau_reaches(baseline, stage, plan, harmonizer)
        plans[stage.name] = plan
    return plans


def _plan(baseline: Baseline, stage: Stage, engine: EngineOptions, acts: bool) -> StagePlan:
    names = tuple(stage.trade_offs)
    first = engine.first_loss
    ordered = [(first, *[n for n in g if n != first]) if first in g else g for g in stage.harmonize]
    procedure = engine.procedure or stage.procedure
    if procedure == "pga" and len(names) < 2:
        raise ConfigError(
            f"engine.procedure=pga needs a stage with two or more losses; {baseline.name} stage {stage.name!r} has "
            f"{', '.join(names)}: use engine.procedure=backprop"
        )
    if not stage.harmonize:
        measure_every = 0
    elif acts:
        measure_every = 1
    else:
        measure_every = engine.monitor_every
    return StagePlan(
        baseline=baseline.name,
        name=stage.name,
        loss_names=names,
        trade_offs=tuple(float(stage.trade_offs[n]) for n in names),
        groups=tuple(tuple(names.index(n) for n in g) for g in ordered),
        trade_off=engine.trade_off or stage.trade_off,
        tau_applies_to=engine.tau_applies_to or stage.tau_applies_to,
        gram_scope=engine.gram_scope,
        gram_params=tuple(baseline.scope_parameters(engine.gram_scope, stage.name)),
        grad_space=engine.grad_space,
        batched_grads=engine.batched_grads,
        procedure=procedure,
        procedure_options=_procedure_options(baseline, stage, engine, procedure),
        private_params={k: tuple(v) for k, v in baseline.private_parameters(stage.name).items()},
        model=baseline,
        measure_every=measure_every,
        clip_grad_norm=engine.clip_grad_norm,
        optimizers=stage.optimizers,
        repeat=stage.repeat,
    )


def _procedure_options(baseline: Baseline, stage: Stage, engine: EngineOptions, procedure: str) -> dict[str, float]:
    """The procedure's settings: the engine's where given, else the baseline's, else PGA's official values."""
    if procedure != "pga":
        return {}
    own = baseline.procedure_options(stage.name)
    chosen = {"radius": engine.pga_radius, "align": engine.pga_align}
    options = {k: float(v if v is not None else own.get(k, PGA_DEFAULTS[k])) for k, v in chosen.items()}
    check_pga_settings(options["radius"], options["align"])
    return options


def _check_tau_reaches(baseline: Baseline, stage: Stage, plan: StagePlan, harmonizer: Harmonizer) -> None:
    """Refuse a setting in which tau multiplies no parameter a harmonized stage steps (a silent no-op).

    With ``tau_applies_to=gram_params`` tau reaches only the Gram scope (params space) or the parameters
    below the shared features (feature space); a stage that steps none of those (MCD's step B steps the
    classifiers while the Gram is over the generator) would report a harmonizer that did nothing.
    """
    if plan.tau_applies_to != "gram_params":
        return
    groups = baseline.optimizer_groups()
    stepped = {id(p) for name in stage.optimizers for ps in groups[name].values() for p in ps}
    scope = "shared" if plan.grad_space == "features" else plan.gram_scope
    reached = {id(p) for p in baseline.scope_parameters(scope, stage.name)}
    if not stepped & reached:
        where = "below the shared features" if scope == "shared" else f"in its Gram scope ({scope})"
        raise ConfigError(
            f"with engine.tau_applies_to=gram_params, {baseline.name} stage {stage.name!r} steps no parameter "
            f"{where}, so {harmonizer.name} would change nothing in that stage; use "
            "engine.tau_applies_to=all (the official placement) or engine.grad_space=params"
        )
