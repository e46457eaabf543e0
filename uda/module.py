"""The LightningModule: glue that runs a baseline's stages with :func:`uda.training.run_stage`.

Everything a step does is plain PyTorch in :mod:`uda.training` (plans resolved once, losses -> finite check
-> update procedure -> clip -> step); the run's record (evaluation history, model selection, conflict counts,
timing) is the :class:`~uda.callbacks.RunRecord` callback. This module hands Lightning the optimizers of
:func:`~uda.training.build_optimizers`, runs each iteration with :func:`~uda.training.run_iteration`, steps the
schedules once per iteration, logs, evaluates, and checkpoints the iteration counter, the harmonizers' state and
the RNG.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

import lightning as L
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics.classification import MulticlassAccuracy

from uda.baselines.base import Baseline, UDABatch
from uda.callbacks.record import RunRecord
from uda.checkpoint import rng_state, set_rng_state
from uda.data.datamodule import EVAL_SETS
from uda.harmonizers import Harmonizer
from uda.training import (
    EngineOptions,
    StepHooks,
    StepStats,
    build_optimizers,
    check_lr_mult,
    clip_gradients,
    resolve_plans,
    run_iteration,
    scaled_step_hooks,
)


class UDAModule(L.LightningModule):
    """Trains a :class:`~uda.baselines.Baseline` with a :class:`~uda.harmonizers.Harmonizer`.

    The module counts iterations itself (Lightning's ``global_step`` counts optimizer steps, several per
    iteration for multi-stage baselines). Under DDP the per-loss gradients are averaged over ranks before
    the Gram matrix, so every rank computes the tau of a single process on the global batch. Each
    harmonized group has its own harmonizer instance (stateful methods must not mix the statistics of
    different pairs); they are checkpointed. ``step_stats`` holds the latest iteration's gradient geometry.
    """

    def __init__(
        self,
        baseline: Baseline,
        harmonizer: Harmonizer,
        optimizer: Callable[..., Optimizer],
        scheduler: Callable[[Optimizer], Any] | None = None,
        lr_mult: Mapping[str, float] | None = None,
        engine: EngineOptions | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.baseline, self.harmonizer = baseline, harmonizer
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.lr_mult = dict(lr_mult or {})
        self.engine = engine or EngineOptions()
        check_lr_mult(baseline, self.lr_mult)
        #: the resolved plan of every stage (validated here, once)
        self.plans = resolve_plans(baseline, harmonizer, self.engine)
        self.group_harmonizers = {s.name: [copy.deepcopy(harmonizer) for _ in s.harmonize] for s in baseline.stages}
        harmonized = [(s.name, k) for s in baseline.stages for k in range(len(s.harmonize))]
        #: the (stage, group) whose conflicts the summary counts (the first harmonized group), or None
        self.first_harmonized_group = harmonized[0] if harmonized else None
        self.eval_metrics = nn.ModuleDict(
            {
                f"{name}_{what}": MulticlassAccuracy(baseline.num_classes, average=average)
                for name in EVAL_SETS
                for what, average in (("acc", "micro"), ("acc_mean_class", "macro"))
            }
        )
        self.record = RunRecord()
        self.iteration = 0
        self.step_stats: list[StepStats] = []
        #: optimizer steps skipped by the float16 GradScaler because a gradient overflowed
        self.skipped_steps = 0

    @property
    def harmonizes(self) -> bool:
        """Whether any stage of the baseline has losses to harmonize."""
        return self.first_harmonized_group is not None

    def configure_callbacks(self) -> list[L.Callback]:
        return [self.record]

    def configure_optimizers(self) -> Any:
        optimizers, schedulers = build_optimizers(
            self.baseline, self.optimizer_factory, self.scheduler_factory, self.lr_mult
        )
        self._opt_names = list(optimizers)
        return list(optimizers.values()), schedulers

    # --------------------------------------------------------------- training
    def step_hooks(self) -> StepHooks:
        """Lightning's part in a step: ``manual_backward``, DDP reductions, the float16 GradScaler."""
        scaler = getattr(self._trainer.precision_plugin, "scaler", None) if self._trainer is not None else None
        return scaled_step_hooks(self.manual_backward, scaler, self.device)

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        clip_gradients(optimizer, self.engine.clip_grad_norm)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        x_s, y_s = batch["source"]
        uda_batch = UDABatch(x_s, y_s, batch["target"])
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        by_name = dict(zip(self._opt_names, optimizers, strict=True))
        result = run_iteration(
            self.baseline, self.plans, by_name, self.group_harmonizers, uda_batch, self.iteration, self.step_hooks()
        )
        self.step_stats, logs = result.stats, result.logs
        self.skipped_steps += result.skipped_steps
        self.iteration += 1
        schedulers = self.lr_schedulers()
        for sched in schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []:
            sched.step()
        logs["train/lr"] = optimizers[0].param_groups[-1]["lr"]
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=x_s.shape[0])
        self.log("train/iteration", float(self.iteration), on_step=True, on_epoch=False, batch_size=x_s.shape[0])

    # ------------------------------------------------------------- evaluation
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        logits = self.baseline.predict(x)
        name = EVAL_SETS[dataloader_idx]
        self.eval_metrics[f"{name}_acc"].update(logits, y)
        self.eval_metrics[f"{name}_acc_mean_class"].update(logits, y)
        for variant, scores in (self.baseline.prediction_variants(x) if name == "target" else {}).items():
            # made at the first evaluation (the names come from the baseline); logged by RunRecord as target/acc_<name>
            if f"target_acc_{variant}" not in self.eval_metrics:
                metric = MulticlassAccuracy(self.baseline.num_classes, average="micro").to(self.device)
                self.eval_metrics[f"target_acc_{variant}"] = metric
            self.eval_metrics[f"target_acc_{variant}"].update(scores, y)

    # ----------------------------------------------------------------- state
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["uda"] = {
            "iteration": self.iteration,
            "harmonizers": {stage: [h.state_dict() for h in hs] for stage, hs in self.group_harmonizers.items()},
            "skipped_steps": self.skipped_steps,
            # exact resume: the generators dropout, augmentation and the loaders' base seeds draw from
            "rng": rng_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("uda", {})
        self.iteration = int(state.get("iteration", 0))
        for stage, states in state.get("harmonizers", {}).items():
            for harmonizer, group_state in zip(self.group_harmonizers[stage], states, strict=True):
                harmonizer.load_state_dict(group_state)
        self.skipped_steps = int(state.get("skipped_steps", 0))
        if "rng" in state:
            set_rng_state(state["rng"])

    # --------------------------------------------------------------- results
    def results(self) -> dict[str, Any]:
        """Selected accuracies, conflict rates and speed, as plain Python values (summary.json's keys)."""
        return {
            "iterations": self.iteration,
            **self.record.selections(),
            **self.record.conflict_rates(),
            "sec_per_iter": self.record.sec_per_iter(),
            "skipped_steps": self.skipped_steps,  # float16 overflow steps the GradScaler did not apply
            "engine": asdict(self.engine),
        }
