"""The run's record: conflict counters over the measured steps and the model selections over the evaluations.

Both are pure bookkeeping, kept apart from the LightningModule so they are tested on hand-built inputs:

- :class:`ConflictCounter` adds up, over the measured steps of the first harmonized group, how often the
  two loss gradients met at an obtuse angle (*conflict before*), how often the applied update opposed a
  harmonized loss's gradient (*conflict after*, the README tables' column), and how often the harmonized
  pair ĝ_1, ĝ_2 still met at an obtuse angle (the GH paper's Fig. 12 quantity). It accumulates on the
  device, so a training step never waits for the host.
- :func:`select` picks the evaluation that each model selection reports: the last one, the one with the
  best target accuracy (an oracle: it uses target labels) and the one with the best source accuracy
  (``source_val``, label-free on the target).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from uda.harmonizers.engine import GradStats

#: the counters, in the order of :attr:`ConflictCounter.counts`
COUNTS = ("steps", "conflict", "conflict_after", "pair_conflict_after")
#: the rate each counter becomes in the summary (``steps`` is reported as a count)
RATE_KEYS = {
    "conflict": "conflict_rate",
    "conflict_after": "conflict_rate_after",
    "pair_conflict_after": "pair_conflict_rate_after",
}

Record = Mapping[str, Any]


@dataclass(frozen=True)
class Selection:
    """A named model-selection rule and the summary keys it is reported under.

    Attributes:
        name: the rule's name, as :func:`select` returns it and ``--select`` takes it.
        key: the summary key of the target accuracy of the selected evaluation.
        iteration_key: the summary key of the iteration at which that evaluation happened.
        meaning: one line for table captions and help texts.
    """

    name: str
    key: str
    iteration_key: str
    meaning: str


#: DomainBed's lesson: model selection is part of the result, so every summary and table names it.
#: Defined once; the summary, the sweeper's return value and the report all read these keys.
SELECTIONS: dict[str, Selection] = {
    s.name: s
    for s in (
        Selection("last", "target_acc_last", "iterations", "the model at the end of training"),
        Selection(
            "best_target",
            "target_acc_best",
            "target_acc_best_iteration",
            "oracle: the evaluation with the best target-test accuracy, as the papers report",
        ),
        Selection(
            "source_val",
            "target_acc_source_val",
            "source_val_iteration",
            "the evaluation with the best accuracy on held-out source data (no target labels used)",
        ),
    )
}


class ConflictCounter:
    """Counts, over measured steps, conflicts before and after harmonization (see the module docstring).

    ``counts`` is a float64 tensor of length 4 (:data:`COUNTS`); pass an existing tensor (e.g. a module
    buffer, so it follows the module's device) and the counter adds into it in place.
    """

    def __init__(self, counts: Tensor | None = None) -> None:
        if counts is None:
            counts = torch.zeros(len(COUNTS), dtype=torch.float64)
        if counts.shape != (len(COUNTS),):
            raise ValueError(f"the conflict counts must have shape ({len(COUNTS)},), got {tuple(counts.shape)}")
        self.counts = counts

    def add(self, stats: GradStats, group: int = 0) -> None:
        """Count one measured step of harmonized group ``group`` (its first two losses are the pair)."""
        i, j = stats.groups[group][:2]
        flags = torch.stack(
            [
                torch.ones_like(stats.gram[0, 0]),
                stats.conflict(i, j),
                stats.conflict_after(),
                stats.pair_conflict_after(i, j),
            ]
        )
        self.counts += flags.to(self.counts)

    def rates(self) -> dict[str, int | float | None]:
        """``monitored_steps`` and the three rates (None when no step was measured); reads the host once."""
        steps, *counts = self.counts.tolist()
        out: dict[str, int | float | None] = {"monitored_steps": int(steps)}
        for name, count in zip(COUNTS[1:], counts, strict=True):
            out[RATE_KEYS[name]] = count / steps if steps else None
        return out


def select(history: Sequence[Record]) -> dict[str, Record | None]:
    """The evaluation each model selection reports, from the records ``{"iteration", "target/acc", ...}``.

    - ``last``: the latest evaluation;
    - ``best_target`` (oracle): the highest ``target/acc``, the earliest one on ties (the first time the
      best accuracy was reached);
    - ``source_val``: the highest ``source/acc`` among the records that have it, the latest one on ties
      (the most trained model among equals); None when no record has a source accuracy.

    All three are None for an empty history.
    """
    if not history:
        return {"last": None, "best_target": None, "source_val": None}
    best_target = max(history, key=lambda r: r["target/acc"])  # max keeps the first of equal keys
    scored = [r for r in history if r.get("source/acc") is not None]
    source_val = max(reversed(scored), key=lambda r: r["source/acc"]) if scored else None
    return {"last": history[-1], "best_target": best_target, "source_val": source_val}
