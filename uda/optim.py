"""Optimizer parameter groups and learning-rate schedules (stepped once per iteration)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def inv_lr(optimizer: Optimizer, gamma: float = 0.001, power: float = 0.75) -> LambdaLR:
    """The "inv" schedule of CDAN/GVB/tllib: lr_i = lr_0 · (1 + gamma·i)^(−power), i = iteration."""
    return LambdaLR(optimizer, lambda i: (1.0 + gamma * i) ** (-power))


def constant_lr(optimizer: Optimizer) -> LambdaLR:
    """A fixed learning rate (MCD, DWL)."""
    return LambdaLR(optimizer, lambda i: 1.0)


def param_groups(
    groups: Mapping[str, list[nn.Parameter]], lr: float, lr_mult: Mapping[str, float], prefix: str = ""
) -> list[dict]:
    """One optimizer param group per named group, with lr = lr · lr_mult[name] (default multiplier 1)."""
    return [
        {"params": params, "lr": lr * float(lr_mult.get(name, 1.0)), "name": f"{prefix}{name}"}
        for name, params in groups.items()
        if params
    ]


def base_lr(optimizer_factory: Callable[..., Optimizer]) -> float:
    """The ``lr`` of a partially applied optimizer (``_partial_: true`` in the config)."""
    keywords = getattr(optimizer_factory, "keywords", {}) or {}
    if "lr" not in keywords:
        raise ValueError("the optimizer config must set `lr`")
    return float(keywords["lr"])
