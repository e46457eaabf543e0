"""Optimizer parameter groups and learning-rate schedules (stepped once per iteration)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def inv_lr(optimizer: Optimizer, gamma: float = 0.001, power: float = 0.75) -> LambdaLR:
    """The "inv" schedule of CDAN/GVB/tllib: lr_i = lr_0 · (1 + gamma·i)^(−power), i = iteration."""
    return LambdaLR(optimizer, lambda i: (1.0 + gamma * i) ** (-power))


def stepped_cosine_lr(optimizer: Optimizer, total_iterations: int, updates: int = 20) -> LambdaLR:
    """PGA's schedule (official ``LA/main.py``): ``CosineAnnealingLR(T_max=total_iterations)`` stepped only every
    ``total_iterations / updates`` iterations, so after iteration i the lr is lr_0 · (1 + cos(π k / T)) / 2 with
    k = floor(i / (T / updates)) (at most 20 of the T cosine steps are taken)."""
    if total_iterations < 1 or updates < 1:
        raise ValueError(f"stepped_cosine_lr needs total_iterations, updates >= 1, got {total_iterations}, {updates}")
    every = total_iterations / updates
    return LambdaLR(optimizer, lambda i: 0.5 * (1.0 + math.cos(math.pi * math.floor(i / every) / total_iterations)))


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
