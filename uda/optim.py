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


#: when Dassl's trainers step the scheduler: after every iteration (DAPL's ``forward_backward`` calls ``update_lr()``
#: on every batch) or after the last batch of each epoch (CoOp, ProGrad: ``batch_idx + 1 == num_batches``)
DASSL_STEPPED_EVERY = ("iteration", "epoch")
#: Dassl's ``WARMUP_TYPE``: linear from ``WARMUP_MIN_LR`` (DAPL) or constant ``WARMUP_CONS_LR`` (CoOp, ProGrad)
DASSL_WARMUPS = ("linear", "constant")


def dassl_cosine_lr(
    optimizer: Optimizer,
    max_epoch: int,
    total_iterations: int,
    stepped_every: str = "iteration",
    warmup_epochs: int = 1,
    warmup: str = "linear",
    warmup_lr: float = 1e-5,
) -> LambdaLR:
    """Dassl's ``LR_SCHEDULER: cosine`` with warm-up (``dassl/optim/lr_scheduler.py``, ``WARMUP_RECOUNT: True``).

    ``CosineAnnealingLR(T_max=max_epoch)`` wrapped in a warm-up scheduler. After s scheduler steps the lr is
    ``warmup_lr`` for s = 0, then (linear) ``lr_0 · s / warmup_epochs`` or (constant) ``warmup_lr`` while
    s < ``warmup_epochs``, then ``lr_0 · (1 + cos(π (s − warmup_epochs) / max_epoch)) / 2`` (the cosine restarts its
    count after the warm-up; past ``max_epoch`` it rises again, as torch's closed form does). s counts iterations
    (``stepped_every="iteration"``, DAPL's trainer) or whole epochs of ``total_iterations / max_epoch`` iterations
    (``"epoch"``, CoOp/ProGrad). ``warmup_lr`` is absolute (the same in every parameter group), as in Dassl.
    """
    if stepped_every not in DASSL_STEPPED_EVERY:
        raise ValueError(f"stepped_every={stepped_every!r} is unknown; choose one of: {', '.join(DASSL_STEPPED_EVERY)}")
    if warmup not in DASSL_WARMUPS:
        raise ValueError(f"warmup={warmup!r} is unknown; choose one of: {', '.join(DASSL_WARMUPS)}")
    if max_epoch < 1 or total_iterations < 1 or warmup_epochs < 0:
        raise ValueError(
            f"dassl_cosine_lr needs max_epoch, total_iterations >= 1 and warmup_epochs >= 0, got {max_epoch}, "
            f"{total_iterations}, {warmup_epochs}"
        )
    iterations_per_step = 1.0 if stepped_every == "iteration" else total_iterations / max_epoch

    def factor(i: int, base_lr: float) -> float:
        step = math.floor(i / iterations_per_step)
        if step < warmup_epochs:
            if warmup == "constant" or step == 0:
                return warmup_lr / base_lr
            return step / warmup_epochs
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup_epochs) / max_epoch))

    lambdas = [lambda i, base=group["lr"]: factor(i, base) for group in optimizer.param_groups]
    return LambdaLR(optimizer, lambdas)


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
