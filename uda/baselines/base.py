"""What every baseline provides: heads, named losses per stage, parameter scopes. Nothing about harmonization.

A baseline declares its training *stages*. Each stage names the losses it computes, their trade-off
coefficients, the optimizer it steps, and which losses are harmonized together (in the official order:
the first loss of a group is GH++'s loss "1"). The training module runs the stages; the gradient engine
turns the losses into ``.grad``; the baseline never sees tau.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

from torch import Tensor, nn

#: names of the Gram scopes a user can choose with ``engine.scope``
GRAM_SCOPES = ("official", "backbone", "shared")


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
        coefs: the losses this stage minimizes, mapped to their (non-negative) trade-off coefficients.
        harmonize: groups of loss names harmonized together, official order first (loss "1" first).
        weighted: official placement of the trade-off: True = coefficients multiply the losses before
            harmonization (MCD, SSRT), False = after (CDAN, GVB, DWL). ``engine.weighted`` overrides it.
        tau_scope: which gradients tau multiplies by default: ``all`` (official) or ``gram`` (only the
            Gram scope; parameters outside it keep Σ coef_i g_i). ``engine.tau_scope`` overrides it.
        optimizer: name(s) of the optimizer(s) this stage steps (see :meth:`Baseline.optimizer_groups`).
        repeat: how many times the stage runs per iteration (e.g. MCD's num_k generator steps).
    """

    name: str
    coefs: Mapping[str, float]
    harmonize: tuple[tuple[str, ...], ...] = ()
    weighted: bool = False
    tau_scope: str = "all"
    optimizer: str | tuple[str, ...] = "main"
    repeat: int = 1

    @property
    def optimizers(self) -> tuple[str, ...]:
        """The optimizer names this stage steps, as a tuple."""
        return (self.optimizer,) if isinstance(self.optimizer, str) else tuple(self.optimizer)

    def __post_init__(self) -> None:
        negative = [name for name, c in self.coefs.items() if c < 0]
        if negative:
            # a loss is something to minimize: put the sign into the loss, so every harmonizer sees the
            # gradient of what is actually minimized whether or not the trade-off is applied before it
            raise ValueError(f"stage {self.name!r}: coefficients must be >= 0, got negative ones for {negative}")
        for group in self.harmonize:
            missing = [name for name in group if name not in self.coefs]
            if missing:
                raise ValueError(f"stage {self.name!r} harmonizes unknown losses {missing}")


@dataclass
class StageOutput:
    """What one stage computed.

    Attributes:
        losses: named losses (keys match ``Stage.coefs``).
        metrics: extra values to log (``train/<name>``).
        features: the batch features shared by the stage's losses (the output of the feature extractor),
            used by ``engine.grad_space=features``; ``None`` when the stage has no single shared tensor.
    """

    losses: dict[str, Tensor]
    metrics: dict[str, Tensor | float] = field(default_factory=dict)
    features: Tensor | None = None


class Baseline(nn.Module, ABC):
    """A UDA method: backbone + heads + losses.

    Subclasses set ``name``, build their heads, define :attr:`stages`, and implement
    :meth:`compute_losses` and :meth:`predict`. Parameter scopes are given by module attribute names:
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

    @abstractmethod
    def compute_losses(self, stage: str, batch: UDABatch, iteration: int) -> StageOutput:
        """Forward pass for ``stage``; ``iteration`` drives schedules such as the GRL coefficient."""

    @abstractmethod
    def predict(self, x: Tensor) -> Tensor:
        """Class logits used for evaluation."""

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

    def end_iteration(self, iteration: int) -> dict[str, Tensor | float]:
        """Hook after the stages of an iteration (e.g. DWL's periodic dynamic weight); returns metrics."""
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
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)
