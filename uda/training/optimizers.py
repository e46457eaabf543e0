"""A baseline's optimizers and schedules, built from its named optimizer and parameter groups (plain PyTorch)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch.optim import Optimizer

from uda.baselines.base import Baseline
from uda.errors import ConfigError
from uda.optim import base_lr, param_groups


def check_lr_mult(baseline: Baseline, lr_mult: Mapping[str, float]) -> None:
    """Refuse an ``lr_mult`` key that names no parameter group of ``baseline`` (a typo would silently do nothing)."""
    names = {g for groups in baseline.optimizer_groups().values() for g in groups}
    unknown = sorted(set(lr_mult) - names)
    if unknown:
        raise ConfigError(
            f"lr_mult names unknown parameter groups {unknown}; {baseline.name} has: {', '.join(sorted(names))}"
        )


def build_optimizers(
    baseline: Baseline,
    optimizer: Callable[..., Optimizer],
    scheduler: Callable[[Optimizer], Any] | None = None,
    lr_mult: Mapping[str, float] | None = None,
) -> tuple[dict[str, Optimizer], list[Any]]:
    """One optimizer per entry of ``baseline.optimizer_groups()`` (in its order), and its schedule if any.

    Each named parameter group gets lr = ``optimizer.lr`` · ``lr_mult[group]`` (param group name
    ``"<optimizer>/<group>"``); ``baseline.optimizer_overrides()`` adds per-optimizer keywords (e.g. MCD's
    heads without weight decay).
    """
    lr, overrides, mult = base_lr(optimizer), baseline.optimizer_overrides(), dict(lr_mult or {})
    optimizers: dict[str, Optimizer] = {}
    for name, groups in baseline.optimizer_groups().items():
        optimizers[name] = optimizer(param_groups(groups, lr, mult, f"{name}/"), **overrides.get(name, {}))
    schedulers = [scheduler(opt) for opt in optimizers.values()] if scheduler is not None else []
    return optimizers, schedulers
