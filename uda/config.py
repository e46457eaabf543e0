"""Early config checks of values no single constructor owns, each failing with one sentence before anything is built.

Here: the run's length and cadence (iterations, eval_every), the seed, the sweeper's metric, the torch optimizer's
rates (a ``_partial_`` node, built only at the first step), the lr_mult of every baseline parameter group and the
baseline.trade_off key the alignment baselines share. Values a class owns are checked by its constructor, in the
same one-sentence form (the dataset's domains and batch sizes: ``UDADataModule``; each harmonizer's settings).
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any

from omegaconf import DictConfig

from uda.errors import ConfigError

#: summary values a sweeper may optimize; the target_acc_* ones use target labels (an explicit oracle choice)
OPTIMIZABLE = ("source_acc_best", "source_acc_last", "target_acc_last", "target_acc_source_val", "target_acc_best")


def _number(cfg: DictConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node.get(part) if isinstance(node, DictConfig) else None
    return node


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _positive_int(cfg: DictConfig, key: str, hint: str) -> int:
    value = _number(cfg, key)
    _require(
        isinstance(value, Integral) and not isinstance(value, bool) and value > 0,
        f"{key}={value!r} is invalid: it must be a positive integer ({hint})",
    )
    return int(value)


def validate(cfg: DictConfig) -> None:
    """Check the composed config; raise :class:`ConfigError` naming the key, the value and the fix."""
    iterations = _positive_int(cfg, "iterations", "the number of training iterations, e.g. iterations=2500")
    eval_every = _positive_int(cfg, "eval_every", "evaluate every n iterations, e.g. eval_every=250")
    _require(
        iterations % eval_every == 0,
        f"iterations={iterations} is not a multiple of eval_every={eval_every}; "
        f"pick e.g. iterations={max(1, round(iterations / eval_every)) * eval_every}",
    )
    metric = cfg.get("optimized_metric", "target_acc_last")
    _require(
        metric in OPTIMIZABLE,
        f"optimized_metric={metric!r} is unknown; choose one of: {', '.join(OPTIMIZABLE)}",
    )
    seed = cfg.get("seed")
    _require(
        isinstance(seed, Integral) and not isinstance(seed, bool),
        f"seed={seed!r} is invalid: it must be an integer, e.g. seed=0",
    )

    lr = _number(cfg, "optimizer.lr")
    _require(
        isinstance(lr, Real) and not isinstance(lr, bool) and lr > 0,
        f"optimizer.lr={lr!r} is invalid: the learning rate must be a positive number, e.g. optimizer.lr=0.01",
    )
    for key in ("optimizer.weight_decay", "optimizer.momentum"):
        value = _number(cfg, key)
        _require(
            value is None or (isinstance(value, Real) and value >= 0),
            f"{key}={value!r} is invalid: it must be a non-negative number",
        )
    for group, mult in (cfg.get("lr_mult") or {}).items():
        _require(
            isinstance(mult, Real) and mult >= 0,
            f"lr_mult.{group}={mult!r} is invalid: learning-rate multipliers must be non-negative numbers",
        )

    trade_off = _number(cfg, "baseline.trade_off")
    if trade_off is not None:
        _require(
            isinstance(trade_off, Real) and trade_off >= 0,
            f"baseline.trade_off={trade_off!r} is invalid: the alignment weight must be a non-negative number",
        )


#: datasets whose recipe is the baseline's own defaults (conf/baseline/*.yaml are digits-scale)
DEFAULTS_ARE_THE_RECIPE = ("offline_digits",)


def recipe_notice(cfg: DictConfig, choices: dict[str, str]) -> str | None:
    """One sentence when no paper recipe exists for the chosen (dataset, baseline), else None.

    ``conf/recipe/<dataset>_<baseline>.yaml`` sets ``applied_recipe`` when Hydra found it (train.yaml selects
    it by interpolating the two choices); without one, the baseline trains with its digits-scale defaults.
    """
    dataset, baseline = choices.get("dataset"), choices.get("baseline")
    if cfg.get("applied_recipe") or dataset is None or baseline is None or dataset in DEFAULTS_ARE_THE_RECIPE:
        return None
    return (
        f"no paper recipe for baseline={baseline} on dataset={dataset} (no conf/recipe/{dataset}_{baseline}.yaml): "
        "it trains with the baseline's digits-scale defaults (optimizer, lengths, heads), so set them explicitly"
    )
