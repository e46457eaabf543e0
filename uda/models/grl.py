"""Gradient reversal with a coefficient computed from the iteration counter.

The coefficient is an explicit argument, computed by :class:`WarmStartSchedule` from the training
iteration. Unlike tllib's ``auto_step`` layer or the CDAN code (which count forward calls), extra
forward passes or gradient probes can never advance the schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


class _GradientReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, coeff: float) -> Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        return -ctx.coeff * grad_output, None


def grad_reverse(x: Tensor, coeff: float) -> Tensor:
    """Identity in the forward pass; multiplies the gradient by ``-coeff`` in the backward pass."""
    return _GradientReverse.apply(x, coeff)


@dataclass(frozen=True)
class WarmStartSchedule:
    """GRL coefficient λ(i) = 2(high − low)/(1 + exp(−α i / max_iter)) − (high − low) + low.

    Defaults (α = 10, max_iter = 10000, low 0, high 1) give the CDAN/DANN schedule
    λ(i) = 2/(1 + exp(−i/1000)) − 1; SSRT uses high = 0.1.
    """

    alpha: float = 10.0
    max_iter: float = 10000.0
    low: float = 0.0
    high: float = 1.0

    def __call__(self, iteration: int) -> float:
        span = self.high - self.low
        return 2.0 * span / (1.0 + math.exp(-self.alpha * iteration / self.max_iter)) - span + self.low
