"""The run's record as a Lightning callback: evaluation history and model selection, conflict counts, timing.

:class:`RunRecord` keeps its state in the checkpoint (``state_dict``), so a resumed run reports what an
uninterrupted one would. The counting and the selections themselves are the pure functions of
:mod:`uda.record`; this callback only feeds them from the training loop.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch

from uda.record import COUNTS, ConflictCounter, select

#: what each model selection is reported as in the summary, from :func:`uda.record.select`
SELECTION_KEYS = (
    "target_acc_last",
    "target_acc_mean_class_last",
    "source_acc_last",
    "target_acc_best",
    "target_acc_best_iteration",
    "target_acc_source_val",
    "source_val_iteration",
    "source_acc_best",
)


class RunRecord(L.Callback):
    """Evaluation history (``{"iteration", "target/acc", "source/acc", ...}`` per evaluation), the conflict
    counts over the first harmonized group, and the training time per iteration.

    The module it watches exposes ``eval_metrics`` (torchmetrics by ``<set>_acc[_mean_class]``),
    ``iteration``, ``step_stats`` (the latest iteration's :class:`~uda.training.StepStats`) and
    ``first_harmonized_group`` (``(stage, group)`` or None).
    """

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []
        # [measured steps, conflicting before, update opposing a loss after, harmonized pair still obtuse after]
        self.conflict_counts = torch.zeros(len(COUNTS), dtype=torch.float64)
        self.train_seconds = 0.0
        self.iterations_timed = 0
        self._t0: float | None = None

    # ---------------------------------------------------------------- training
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.count_conflicts(pl_module.step_stats, pl_module.first_harmonized_group, pl_module.device)
        if self._t0 is not None:
            self.train_seconds += time.perf_counter() - self._t0
            self.iterations_timed += 1
            self._t0 = None

    def count_conflicts(self, step_stats: list[Any], group: tuple[str, int] | None, device: torch.device) -> None:
        """Add the measured steps of ``group`` among ``step_stats`` to the counts (on the device, no host sync)."""
        if self.conflict_counts.device != device:
            self.conflict_counts = self.conflict_counts.to(device)
        counter = ConflictCounter(self.conflict_counts)
        for item in step_stats:
            if (item.stage, item.group) == group:
                counter.add(item.stats, item.group)

    # -------------------------------------------------------------- evaluation
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        results = {}
        for key, metric in pl_module.eval_metrics.items():
            if metric.update_called:
                name, _, what = key.partition("_")
                results[f"{name}/{what}"] = float(metric.compute())
            metric.reset()
        if trainer.sanity_checking or "target/acc" not in results:
            return
        self.history.append({"iteration": pl_module.iteration, **results})
        results["target/acc_best"] = max(r["target/acc"] for r in self.history)
        # the torchmetrics values are already global (synced over ranks): sync_dist averages equal numbers
        # and keeps Lightning from warning about unsynced epoch-level metrics under DDP
        pl_module.log_dict(results, on_step=False, on_epoch=True, sync_dist=True)

    # ------------------------------------------------------------------ results
    def selections(self) -> dict[str, Any]:
        """The model selections of :func:`uda.record.select` as summary values (:data:`SELECTION_KEYS`)."""
        chosen = select(self.history)
        last, best, source_val = chosen["last"], chosen["best_target"], chosen["source_val"]
        out: dict[str, Any] = {}
        if last is not None:
            out.update(
                {
                    "target_acc_last": last["target/acc"],
                    "target_acc_mean_class_last": last.get("target/acc_mean_class"),
                    "source_acc_last": last.get("source/acc"),
                    "target_acc_best": best["target/acc"],
                    "target_acc_best_iteration": best["iteration"],
                }
            )
            if source_val is not None:
                # model selection without target labels (uda.record.select)
                out["target_acc_source_val"] = source_val["target/acc"]
                out["source_val_iteration"] = source_val["iteration"]
                out["source_acc_best"] = source_val["source/acc"]
        return out

    def conflict_rates(self) -> dict[str, int | float | None]:
        """``monitored_steps`` and the conflict rates (:meth:`uda.record.ConflictCounter.rates`)."""
        return ConflictCounter(self.conflict_counts).rates()

    def sec_per_iter(self) -> float | None:
        """Mean wall-clock seconds of a training iteration (None before the first one)."""
        return self.train_seconds / self.iterations_timed if self.iterations_timed else None

    # -------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "history": list(self.history),
            "conflict_counts": self.conflict_counts.cpu(),
            "train_seconds": self.train_seconds,
            "iterations_timed": self.iterations_timed,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        if "conflict_counts" in state_dict:
            self.conflict_counts = state_dict["conflict_counts"].to(self.conflict_counts)
        self.train_seconds = float(state_dict.get("train_seconds", 0.0))
        self.iterations_timed = int(state_dict.get("iterations_timed", 0))
