"""What every baseline provides: heads, named losses per stage, parameter scopes. Nothing about harmonization.

A baseline declares its training *stages*. Each stage carries the function that computes its named losses,
their trade-offs, the optimizer it steps, and which losses are harmonized together (in the official order:
the first loss of a group is GH++'s loss "1"). :func:`uda.training.run_stage` runs a stage; the gradient
engine turns the losses into ``.grad``; the baseline never sees tau.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

from torch import Tensor, nn

from uda.harmonizers.engine import TAU_APPLIES_TO

#: names of the Gram scopes a user can choose with ``engine.gram_scope``
GRAM_SCOPES = ("official", "backbone", "shared")
#: where a stage applies its trade-offs: ``before`` harmonization (the harmonizer sees trade_off_i·g_i) or ``after``
TRADE_OFF_PLACEMENTS = ("before", "after")


class UDABatch(NamedTuple):
    """One training batch: labelled source images and labels, unlabelled target images."""

    x_source: Tensor
    y_source: Tensor
    x_target: Tensor


@dataclass(frozen=True)
class Stage:
    """One optimization stage of a training iteration.

    Attributes:
        name: stage name (used in log keys when a baseline has several stages).
        trade_offs: the losses this stage minimizes, mapped to their (non-negative) trade-offs.
        loss_fn: ``loss_fn(batch, iteration) -> StageOutput``: the forward pass computing the named losses.
        harmonize: groups of loss names harmonized together, official order first (loss "1" first).
        trade_off: official placement of the trade-offs: ``before`` = they multiply the losses before
            harmonization (MCD, SSRT), ``after`` (CDAN, GVB, DWL). ``engine.trade_off`` overrides it.
        tau_applies_to: which gradients tau multiplies by default: ``all`` (official) or ``gram_params``
            (only the Gram scope; parameters outside it keep Σ trade_off_i g_i). ``engine.tau_applies_to``
            overrides it.
        optimizer: name(s) of the optimizer(s) this stage steps (see :meth:`Baseline.optimizer_groups`).
        repeat: how many times the stage runs per iteration (e.g. MCD's num_k generator steps).
        procedure: the update procedure the stage is trained with by default (``backprop``: the gradient
            engine; ``pga``: PGA's perturbed re-evaluation). ``engine.procedure`` overrides it.
    """

    name: str
    trade_offs: Mapping[str, float]
    loss_fn: Callable[[UDABatch, int], StageOutput] = field(compare=False)
    harmonize: tuple[tuple[str, ...], ...] = ()
    trade_off: str = "after"
    tau_applies_to: str = "all"
    optimizer: str | tuple[str, ...] = "main"
    repeat: int = 1
    procedure: str = "backprop"

    @property
    def optimizers(self) -> tuple[str, ...]:
        """The optimizer names this stage steps, as a tuple."""
        return (self.optimizer,) if isinstance(self.optimizer, str) else tuple(self.optimizer)

    def __post_init__(self) -> None:
        negative = [name for name, c in self.trade_offs.items() if c < 0]
        if negative:
            # a loss is something to minimize: put the sign into the loss, so every harmonizer sees the
            # gradient of what is actually minimized whether or not the trade-off is applied before it
            raise ValueError(f"stage {self.name!r}: trade-offs must be >= 0, got negative ones for {negative}")
        for group in self.harmonize:
            missing = [name for name in group if name not in self.trade_offs]
            if missing:
                raise ValueError(f"stage {self.name!r} harmonizes unknown losses {missing}")
        if self.trade_off not in TRADE_OFF_PLACEMENTS:
            raise ValueError(f"stage {self.name!r}: trade_off must be one of {TRADE_OFF_PLACEMENTS}")
        if self.tau_applies_to not in TAU_APPLIES_TO:
            raise ValueError(f"stage {self.name!r}: tau_applies_to must be one of {TAU_APPLIES_TO}")


@dataclass
class StageOutput:
    """What one stage computed.

    Attributes:
        losses: named losses (keys match ``Stage.trade_offs``).
        metrics: extra values to log (``train/<name>``).
        features: the batch features shared by the stage's losses (the output of the feature extractor),
            used by ``engine.grad_space=features``; ``None`` when the stage has no single shared tensor.
    """

    losses: dict[str, Tensor]
    metrics: dict[str, Tensor | float] = field(default_factory=dict)
    features: Tensor | None = None


class Baseline(nn.Module, ABC):
    """A UDA method: backbone + heads + losses.

    Subclasses set ``name``, build their heads, define :attr:`stages` (each with its loss function) and
    implement :meth:`predict`. Parameter scopes are given by module attribute names:
    ``official_scope`` (the parameters the official GH code puts in the Gram matrix) and ``shared_scope``
    (the feature extractor shared by all losses).
    """

    name: ClassVar[str] = "baseline"
    official_scope: ClassVar[tuple[str, ...]] = ("backbone",)
    shared_scope: ClassVar[tuple[str, ...]] = ("backbone",)

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        if not hasattr(backbone, "out_features"):
            raise TypeError("a backbone must expose `out_features` (the feature dimension)")
        self.backbone = backbone
        self.num_classes = int(num_classes)

    @property
    @abstractmethod
    def stages(self) -> tuple[Stage, ...]:
        """The stages of one training iteration, in order."""

    def compute_losses(self, stage: str, batch: UDABatch, iteration: int) -> StageOutput:
        """Forward pass of the stage named ``stage`` (its ``loss_fn``); ``iteration`` drives schedules such as
        the GRL coefficient."""
        return self.stage(stage).loss_fn(batch, iteration)

    @abstractmethod
    def predict(self, x: Tensor) -> Tensor:
        """Class logits used for evaluation."""

    def prediction_variants(self, x: Tensor) -> dict[str, Tensor]:
        """Further class scores evaluated beside :meth:`predict`, by name (validation logs ``target/acc_<name>``);
        none by default. PGA reports its ensemble and each domain prompt, as its official code does."""
        return {}

    def optimizer_groups(self) -> dict[str, dict[str, list[nn.Parameter]]]:
        """Parameters per optimizer, split into learning-rate groups ("backbone", "heads")."""
        backbone = list(self.backbone.parameters())
        ids = {id(p) for p in backbone}
        heads = [p for p in self.parameters() if id(p) not in ids]
        return {"main": {"backbone": backbone, "heads": heads}}

    def optimizer_overrides(self) -> dict[str, dict[str, object]]:
        """Per-optimizer keyword overrides of the configured optimizer (e.g. MCD's generator without
        momentum); empty by default."""
        return {}

    def begin_iteration(self, iteration: int) -> dict[str, Tensor | float]:
        """Hook before the stages of an iteration (e.g. SSRT's safe-training restore); returns metrics."""
        return {}

    def end_iteration(
        self, iteration: int, batch: UDABatch, outputs: Mapping[str, StageOutput]
    ) -> dict[str, Tensor | float]:
        """Hook after the stages of an iteration (e.g. DWL's periodic dynamic weight); returns metrics.

        ``batch`` is the iteration's batch and ``outputs`` the latest output of each stage that ran, by name.
        """
        return {}

    def private_parameters(self, stage: str) -> dict[str, list[nn.Parameter]]:
        """Each loss's own parameters in ``stage``, for a closure procedure (PGA perturbs a loss's private group
        along that loss's gradient only); empty by default: every parameter is shared."""
        return {}

    def procedure_options(self, stage: str) -> dict[str, float]:
        """The baseline's own settings of its stage's procedure (PGA: ``radius``, ``align``); empty by default."""
        return {}

    def official_scope_for(self, stage: str | None) -> tuple[str, ...]:
        """Module names of the official GH Gram scope for ``stage`` (override when stages differ)."""
        return self.official_scope

    def scope_parameters(self, scope: str, stage: str | None = None) -> list[nn.Parameter]:
        """Parameters forming the Gram matrix for ``scope`` ∈ :data:`GRAM_SCOPES` (and ``stage``)."""
        if scope == "official":
            names = self.official_scope_for(stage)
        elif scope == "shared":
            names = self.shared_scope
        elif scope == "backbone":
            names = ("backbone",)
        else:
            raise ValueError(f"unknown Gram scope {scope!r}; choose one of {', '.join(GRAM_SCOPES)}")
        return [p for name in names for p in getattr(self, name).parameters()]

    def stage(self, name: str) -> Stage:
        """The stage called ``name``."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)
