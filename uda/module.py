"""The LightningModule: manual optimization that runs a baseline's stages through the gradient engine."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics.classification import MulticlassAccuracy

from uda.baselines.base import GRAM_SCOPES, Baseline, Stage, UDABatch
from uda.checkpoint import rng_state, set_rng_state
from uda.data.datamodule import EVAL_SETS
from uda.errors import ConfigError, DivergenceError
from uda.harmonizers import GradStats, Harmonizer, NoHarmonizer, feature_space_backward, harmonized_backward
from uda.optim import base_lr, param_groups
from uda.record import ConflictCounter, select

GRAD_SPACES = ("params", "features")


@dataclass(frozen=True)
class EngineOptions:
    """How the gradient engine applies the harmonizer (config node ``engine``).

    Attributes:
        scope: parameters forming the Gram matrix: ``official`` (the official GH code's choice for the
            baseline and stage), ``backbone``, or ``shared`` (the feature extractor all losses share).
        tau_scope: ``all`` (official: tau multiplies every parameter's gradient) or ``gram`` (only the
            Gram scope; heads outside it, e.g. the discriminator, keep their plain gradients); ``None``
            keeps the default declared by the baseline's stage.
        weighted: apply the trade-off before harmonization (True, keeps GH's non-conflict guarantee) or
            after (False); ``None`` keeps the official placement declared by the baseline's stage.
        upweight: name of the loss that plays "1" in every harmonized group (GH++ favours loss 1;
            ProGrad projects loss 1); ``None`` keeps the official order of the baseline.
        grad_space: ``params`` (the paper: gradients over parameters) or ``features`` (gradients w.r.t.
            the shared batch features: a cheap approximation, one ordinary backward per step).
        batched_grads: take the per-loss parameter gradients in one vmapped backward pass.
        monitor_every: with ``harmonizer=none`` the per-loss gradients are only needed for diagnostics,
            so they are measured every ``monitor_every`` iterations (0 = never) and the other steps take
            a single plain backward pass. Harmonized steps always measure (the Gram matrix is needed).
        clip_grad_norm: clip the total gradient norm of each optimizer step (``None`` = off).
    """

    scope: str = "official"
    tau_scope: str | None = None
    weighted: bool | None = None
    upweight: str | None = None
    grad_space: str = "params"
    batched_grads: bool = False
    monitor_every: int = 10
    clip_grad_norm: float | None = None

    def __post_init__(self) -> None:
        if self.scope not in GRAM_SCOPES:
            raise ConfigError(f"engine.scope={self.scope!r} is unknown; choose one of: {', '.join(GRAM_SCOPES)}")
        if self.tau_scope not in (None, "all", "gram"):
            raise ConfigError(f"engine.tau_scope={self.tau_scope!r} is unknown; choose one of: all, gram, null")
        if self.grad_space not in GRAD_SPACES:
            raise ConfigError(
                f"engine.grad_space={self.grad_space!r} is unknown; choose one of: {', '.join(GRAD_SPACES)}"
            )
        if self.monitor_every < 0:
            raise ConfigError(f"engine.monitor_every must be >= 0 (got {self.monitor_every})")
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            raise ConfigError(f"engine.clip_grad_norm must be positive or null (got {self.clip_grad_norm})")


@dataclass(frozen=True)
class StepStats:
    """Gradient geometry of one harmonized group at one step, as kept for callbacks."""

    stage: str
    group: int
    names: tuple[str, ...]
    stats: GradStats


class UDAModule(L.LightningModule):
    """Trains a :class:`~uda.baselines.Baseline` with a :class:`~uda.harmonizers.Harmonizer`.

    Each training iteration runs the baseline's stages in order; a stage computes its named losses, the
    gradient engine writes Σ coef_i tau_i g_i into ``.grad`` (or a plain backward when nothing is
    harmonized), and the stage's optimizer steps. The module counts iterations itself (Lightning's
    ``global_step`` counts optimizer steps, several per iteration for multi-stage baselines) and steps
    the learning-rate schedules once per iteration. Under DDP the per-loss gradients are averaged over
    ranks (one fused all-reduce) before the Gram matrix, so every rank computes the same tau: the tau
    of a single process on the global batch. Evaluation tracks the last and the best (oracle) target
    accuracy. ``step_stats`` holds the gradient geometry of the latest iteration for callbacks.
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
        self.baseline = baseline
        self.harmonizer = harmonizer
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.lr_mult = dict(lr_mult or {})
        self.engine = engine or EngineOptions()
        self._check_lr_mult()
        self._check_harmonizer_acts()
        self._groups = {stage.name: self._ordered_groups(stage) for stage in baseline.stages}

        self.iteration = 0
        metrics = {}
        for name in EVAL_SETS:
            metrics[f"{name}_acc"] = MulticlassAccuracy(baseline.num_classes, average="micro")
            metrics[f"{name}_acc_mean_class"] = MulticlassAccuracy(baseline.num_classes, average="macro")
        self.eval_metrics = nn.ModuleDict(metrics)
        self.history: list[dict[str, float]] = []
        # over the first harmonized group: [measured steps, conflicting before, update opposing a loss
        # after, harmonized pair still obtuse after]
        self.register_buffer("conflict_counts", torch.zeros(4, dtype=torch.float64), persistent=False)
        self.step_stats: list[StepStats] = []
        self.train_seconds = 0.0
        self._train_iters_timed = 0
        self._t0: float | None = None
        self._harmonized = [(s.name, k) for s in baseline.stages for k in range(len(s.harmonize))]
        # One harmonizer instance per harmonized group: stateful methods (GradVac's EMA target, momentum
        # variants) must not mix the statistics of different pairs (e.g. GVB's two pairs). Checkpointed.
        self.group_harmonizers: dict[str, list[Harmonizer]] = {
            s.name: [copy.deepcopy(harmonizer) for _ in s.harmonize] for s in baseline.stages
        }
        #: optimizer steps skipped by the float16 GradScaler because a gradient overflowed
        self.skipped_steps = 0

    # ------------------------------------------------------------------ setup
    @property
    def harmonizes(self) -> bool:
        """Whether any stage of the baseline has losses to harmonize."""
        return bool(self._harmonized)

    def _check_lr_mult(self) -> None:
        names = {g for groups in self.baseline.optimizer_groups().values() for g in groups}
        unknown = sorted(set(self.lr_mult) - names)
        if unknown:
            raise ConfigError(
                f"lr_mult names unknown parameter groups {unknown}; {self.baseline.name} has: "
                f"{', '.join(sorted(names))}"
            )

    def _check_harmonizer_acts(self) -> None:
        """Refuse a setting in which tau multiplies no parameter a harmonized stage steps (a silent no-op).

        With ``tau_scope=gram`` tau reaches only the Gram scope (params space) or the parameters below
        the shared features (feature space); a stage that steps none of those (MCD's step B steps the
        classifiers while the Gram is over the generator) would report a harmonizer that did nothing.
        """
        if isinstance(self.harmonizer, NoHarmonizer):
            return
        groups = self.baseline.optimizer_groups()
        for stage in self.baseline.stages:
            if not stage.harmonize or (self.engine.tau_scope or stage.tau_scope) != "gram":
                continue
            stepped = {id(p) for name in stage.optimizers for ps in groups[name].values() for p in ps}
            scope = "shared" if self.engine.grad_space == "features" else self.engine.scope
            reached = {id(p) for p in self.baseline.scope_parameters(scope, stage.name)}
            if not stepped & reached:
                where = "below the shared features" if scope == "shared" else f"in its Gram scope ({scope})"
                raise ConfigError(
                    f"with engine.tau_scope=gram, {self.baseline.name} stage {stage.name!r} steps no parameter "
                    f"{where}, so {self.harmonizer.name} would change nothing in that stage; use "
                    "engine.tau_scope=all (the official placement) or engine.grad_space=params"
                )

    def _ordered_groups(self, stage: Stage) -> tuple[tuple[str, ...], ...]:
        """The stage's harmonized groups, with ``engine.upweight`` moved to the front where present."""
        target = self.engine.upweight
        if target is None:
            return stage.harmonize
        all_names = {n for s in self.baseline.stages for g in s.harmonize for n in g}
        if target not in all_names:
            raise ConfigError(
                f"engine.upweight={target!r} is not a harmonized loss of {self.baseline.name}; "
                f"choose one of: {', '.join(sorted(all_names))}"
            )
        return tuple((target, *[n for n in g if n != target]) if target in g else g for g in stage.harmonize)

    def configure_optimizers(self) -> Any:
        lr = base_lr(self.optimizer_factory)
        overrides = self.baseline.optimizer_overrides()
        self._opt_names: list[str] = []
        self._opt_params: dict[str, list[nn.Parameter]] = {}
        optimizers, schedulers = [], []
        for name, groups in self.baseline.optimizer_groups().items():
            groups_lr = param_groups(groups, lr, self.lr_mult, prefix=f"{name}/")
            opt = self.optimizer_factory(groups_lr, **overrides.get(name, {}))
            self._opt_names.append(name)
            self._opt_params[name] = [p for ps in groups.values() for p in ps if p.requires_grad]
            optimizers.append(opt)
            if self.scheduler_factory is not None:
                schedulers.append(self.scheduler_factory(opt))
        return optimizers, schedulers

    def _stage_params(self, stage: Stage) -> list[nn.Parameter]:
        return [p for name in stage.optimizers for p in self._opt_params[name]]

    # ------------------------------------------------------------ distributed
    @property
    def _world_size(self) -> int:
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def _all_reduce_mean(self, flat: Tensor) -> Tensor:
        """Average the (m, P) per-loss gradients over ranks in one fused call (gloo has no AVG op)."""
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        return flat.div_(self._world_size)

    def _all_reduce_feature_gram(self, gram: Tensor) -> Tensor:
        """Feature-space Gram of the global batch: ranks hold disjoint samples, so local Grams add up;
        the losses are per-rank means, hence the 1/world² of the global mean."""
        dist.all_reduce(gram, op=dist.ReduceOp.SUM)
        return gram.div_(self._world_size**2)

    # --------------------------------------------------------------- training
    def _should_measure(self, stage: Stage) -> bool:
        if not stage.harmonize:
            return False
        if not isinstance(self.harmonizer, NoHarmonizer):
            return True
        every = self.engine.monitor_every
        return every > 0 and self.iteration % every == 0

    def _check_finite(self, stage: Stage, losses: Mapping[str, Tensor]) -> None:
        values = torch.stack([v.detach().float() for v in losses.values()])
        if bool(torch.isfinite(values).all()):
            return
        bad = [(n, v) for n, v in zip(losses, values.tolist(), strict=True) if not math.isfinite(v)]
        name, value = bad[0]
        raise DivergenceError(
            f"training diverged: the {name} loss became {value} at iteration {self.iteration} "
            f"(stage {stage.name!r}); lower optimizer.lr (now {base_lr(self.optimizer_factory)}) or the "
            "trade-off, or check the input data — no results were written for this run"
        )

    def _backward(self, stage: Stage, losses: dict[str, Tensor], features: Tensor | None) -> list[StepStats]:
        """Fill ``.grad`` for one stage; returns the gradient geometry when it was measured."""
        names = list(stage.coefs)
        coefs = [float(stage.coefs[n]) for n in names]
        if not self._should_measure(stage):
            self.manual_backward(sum(c * losses[n] for c, n in zip(coefs, names, strict=True)))
            return []
        groups = [[names.index(n) for n in group] for group in self._groups[stage.name]]
        weighted = stage.weighted if self.engine.weighted is None else self.engine.weighted
        distributed = self._world_size > 1
        if self.engine.grad_space == "features":
            if features is None:
                raise ConfigError(
                    f"{self.baseline.name} stage {stage.name!r} exposes no shared features; "
                    "use engine.grad_space=params"
                )
            stats = feature_space_backward(
                [losses[n] for n in names],
                features,
                self.group_harmonizers[stage.name],
                coefs=coefs,
                groups=groups,
                weighted=weighted,
                tau_scope=self.engine.tau_scope or stage.tau_scope,
                reduce_gram=self._all_reduce_feature_gram if distributed else None,
                reduce_losses=self._all_reduce_mean if distributed else None,
                backward=self.manual_backward,
                loss_scale=self._loss_scale(),
            )
        else:
            stats = harmonized_backward(
                [losses[n] for n in names],
                self._stage_params(stage),
                self.group_harmonizers[stage.name],
                coefs=coefs,
                groups=groups,
                gram_params=self.baseline.scope_parameters(self.engine.scope, stage.name),
                weighted=weighted,
                tau_scope=self.engine.tau_scope or stage.tau_scope,
                reduce=self._all_reduce_mean if distributed else None,
                batched=self.engine.batched_grads,
                loss_scale=self._loss_scale(),
            )
        return [StepStats(stage.name, k, tuple(names[i] for i in g), stats) for k, g in enumerate(stats.groups)]

    def _run_stage(self, stage: Stage, batch: UDABatch, opts: list[Any]) -> tuple[dict[str, Tensor], dict, list]:
        out = self.baseline.compute_losses(stage.name, batch, self.iteration)
        missing = [n for n in stage.coefs if n not in out.losses]
        if missing:
            raise RuntimeError(f"{self.baseline.name} stage {stage.name!r} did not return losses {missing}")
        self._check_finite(stage, {n: out.losses[n] for n in stage.coefs})
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        step_stats = self._backward(stage, out.losses, out.features)
        scaler = self._scaler()
        for opt in opts:
            scale_before = scaler.get_scale() if scaler is not None else None
            # clipping happens in on_before_optimizer_step, after the GradScaler has unscaled the gradients
            opt.step()
            if scaler is not None and scaler.get_scale() < scale_before:
                # the scaler found inf/NaN in the gradients: it skipped this step and lowered the scale
                self.skipped_steps += 1
        return out.losses, out.metrics, step_stats

    def _scaler(self) -> Any:
        """The float16 GradScaler of the precision plugin (``16-mixed``), else None."""
        trainer = self._trainer
        return getattr(trainer.precision_plugin, "scaler", None) if trainer is not None else None

    def _loss_scale(self) -> Tensor | None:
        """The GradScaler's current scale as a device tensor (no host sync), or None without a scaler.

        The engine takes per-loss gradients of the *scaled* losses (as ``manual_backward`` would, so
        float16 gradients do not underflow and ``.grad`` is on the scale the scaler unscales), and forms
        the Gram matrix from the unscaled gradients.
        """
        scaler = self._scaler()
        if scaler is None or not scaler.is_enabled():
            return None
        return scaler.scale(torch.ones((), device=self.device))

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        """Clip the total gradient norm of this optimizer's step; called after the GradScaler's unscale_."""
        if self.engine.clip_grad_norm is None:
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, self.engine.clip_grad_norm)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        x_s, y_s = batch["source"]
        uda_batch = UDABatch(x_s, y_s, batch["target"])
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        by_name = dict(zip(self._opt_names, optimizers, strict=True))
        multi_stage = len(self.baseline.stages) > 1
        logs: dict[str, Tensor | float] = {}
        self.step_stats = []
        logs.update({f"train/{k}": v for k, v in self.baseline.begin_iteration(self.iteration).items()})
        for stage in self.baseline.stages:
            prefix = f"train/{stage.name}/" if multi_stage else "train/"
            opts = [by_name[name] for name in stage.optimizers]
            for _ in range(stage.repeat):
                losses, metrics, step_stats = self._run_stage(stage, uda_batch, opts)
                logs.update({f"{prefix}{n}_loss": v.detach() for n, v in losses.items()})
                logs.update({f"{prefix}{n}": v for n, v in metrics.items()})
                self.step_stats.extend(step_stats)
        logs.update({f"train/{k}": v for k, v in self.baseline.end_iteration(self.iteration).items()})
        self._count_conflicts()
        self.iteration += 1
        schedulers = self.lr_schedulers()
        for sched in schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []:
            sched.step()
        logs["train/lr"] = optimizers[0].param_groups[-1]["lr"]
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=x_s.shape[0])
        self.log("train/iteration", float(self.iteration), on_step=True, on_epoch=False, batch_size=x_s.shape[0])

    def _count_conflicts(self) -> None:
        """Accumulate the summary's conflict rates over the first harmonized group (no host sync)."""
        counter = ConflictCounter(self.conflict_counts)
        for item in self.step_stats:
            if (item.stage, item.group) == self._harmonized[0]:
                counter.add(item.stats, item.group)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._t0 is not None:
            self.train_seconds += time.perf_counter() - self._t0
            self._train_iters_timed += 1
            self._t0 = None

    # ------------------------------------------------------------- evaluation
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        logits = self.baseline.predict(x)
        name = EVAL_SETS[dataloader_idx]
        self.eval_metrics[f"{name}_acc"].update(logits, y)
        self.eval_metrics[f"{name}_acc_mean_class"].update(logits, y)

    def on_validation_epoch_end(self) -> None:
        results = {}
        for key, metric in self.eval_metrics.items():
            if metric.update_called:
                name, _, what = key.partition("_")
                results[f"{name}/{what}"] = float(metric.compute())
            metric.reset()
        if self.trainer.sanity_checking or "target/acc" not in results:
            return
        record = {"iteration": self.iteration, **results}
        self.history.append(record)
        best = max(self.history, key=lambda r: r["target/acc"])
        results["target/acc_best"] = best["target/acc"]
        # the torchmetrics values are already global (synced over ranks): sync_dist averages equal numbers
        # and keeps Lightning from warning about unsynced epoch-level metrics under DDP
        self.log_dict(results, on_step=False, on_epoch=True, sync_dist=True)

    # ----------------------------------------------------------------- state
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["uda"] = {
            "iteration": self.iteration,
            "history": self.history,
            "conflict_counts": self.conflict_counts.cpu(),
            "harmonizers": {
                stage: [h.state_dict() for h in harmonizers] for stage, harmonizers in self.group_harmonizers.items()
            },
            "skipped_steps": self.skipped_steps,
            "train_seconds": self.train_seconds,
            "train_iters_timed": self._train_iters_timed,
            # exact resume: the generators dropout, augmentation and the loaders' base seeds draw from
            "rng": rng_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("uda", {})
        self.iteration = int(state.get("iteration", 0))
        self.history = list(state.get("history", []))
        if "conflict_counts" in state:
            self.conflict_counts = state["conflict_counts"].to(self.conflict_counts)
        for stage, states in state.get("harmonizers", {}).items():
            for harmonizer, group_state in zip(self.group_harmonizers[stage], states, strict=True):
                harmonizer.load_state_dict(group_state)
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self._train_iters_timed = int(state.get("train_iters_timed", 0))
        if "rng" in state:
            set_rng_state(state["rng"])

    # --------------------------------------------------------------- results
    def results(self) -> dict[str, Any]:
        """Last and best (oracle) target accuracy, conflict rates and speed, as plain Python values."""
        out: dict[str, Any] = {"iterations": self.iteration}
        chosen = select(self.history)
        last, best, source_val = chosen["last"], chosen["best_target"], chosen["source_val"]
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
        out.update(ConflictCounter(self.conflict_counts).rates())
        timed = self._train_iters_timed
        out["sec_per_iter"] = self.train_seconds / timed if timed else None
        out["skipped_steps"] = self.skipped_steps  # float16 overflow steps the GradScaler did not apply
        out["engine"] = asdict(self.engine)
        return out
