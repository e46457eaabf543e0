"""Step hooks of a trainer with a custom backward, data-parallel ranks and an optional float16 GradScaler."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.optim import Optimizer

from uda.training.distributed import all_reduce_feature_gram, all_reduce_mean, world_size
from uda.training.step import StepHooks


def scaled_step_hooks(
    backward: Callable[..., None], scaler: torch.amp.GradScaler | None, device: torch.device
) -> StepHooks:
    """:class:`StepHooks` that back-propagate with ``backward`` (Lightning: ``manual_backward``), average over DDP
    ranks when there are several, and report a step the enabled ``scaler`` skipped (inf/NaN gradients).

    Clipping is left to the caller's optimizer-step hook: it must see the gradients after the scaler unscaled them.
    """
    scaler = scaler if scaler is not None and scaler.is_enabled() else None
    distributed = world_size() > 1

    def loss_scale() -> Tensor | None:
        # the engine differentiates the *scaled* losses (as manual_backward would) and unscales the Gram
        return None if scaler is None else scaler.scale(torch.ones((), device=device))

    def step(opt: Optimizer, clip_grad_norm: float | None) -> bool:
        scale_before = scaler.get_scale() if scaler is not None else None
        opt.step()
        # a lower scale afterwards: the scaler found inf/NaN in the gradients and skipped this step
        return scaler is None or scaler.get_scale() >= scale_before

    return StepHooks(
        backward=backward,
        reduce=all_reduce_mean if distributed else None,
        reduce_gram=all_reduce_feature_gram if distributed else None,
        loss_scale=loss_scale,
        step=step,
        # DDP's reducer waits for every wrapped parameter's gradient: a plain pass there fills them all
        only_stepped=not distributed,
    )
