"""The LightningModule: manual optimization that runs a baseline's stages through the gradient engine."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics.classification import MulticlassAccuracy

from uda.baselines.base import GRAM_SCOPES, Baseline, Stage, UDABatch
from uda.data.datamodule import EVAL_SETS
from uda.errors import ConfigError, DivergenceError
from uda.harmonizers import GradStats, Harmonizer, NoHarmonizer, harmonized_backward
from uda.optim import base_lr, param_groups


@dataclass(frozen=True)
class EngineOptions:
    """How the gradient engine applies the harmonizer (config node ``engine``).

    Attributes:
        scope: parameters forming the Gram matrix: ``official`` (the official GH code's choice for the
            baseline), ``backbone``, or ``shared`` (the feature extractor all losses share).
        tau_scope: ``all`` (official: tau multiplies every parameter's gradient) or ``gram`` (only the
            Gram scope; heads outside it, e.g. the discriminator, keep their plain gradients).
        weighted: apply the trade-off before harmonization (True) or after (False); ``None`` keeps the
            official placement declared by the baseline's stage.
        monitor_every: with ``harmonizer=none`` the per-loss gradients are only needed for diagnostics,
            so they are measured every ``monitor_every`` iterations (0 = never) and the other steps take
            a single plain backward pass. Harmonized steps always measure (the Gram matrix is needed).
        clip_grad_norm: clip the total gradient norm of each optimizer step (``None`` = off).
    """

    scope: str = "official"
    tau_scope: str = "all"
    weighted: bool | None = None
    monitor_every: int = 10
    clip_grad_norm: float | None = None

    def __post_init__(self) -> None:
        if self.scope not in GRAM_SCOPES:
            raise ConfigError(f"engine.scope={self.scope!r} is unknown; choose one of: {', '.join(GRAM_SCOPES)}")
        if self.tau_scope not in ("all", "gram"):
            raise ConfigError(f"engine.tau_scope={self.tau_scope!r} is unknown; choose one of: all, gram")
        if self.monitor_every < 0:
            raise ConfigError(f"engine.monitor_every must be >= 0 (got {self.monitor_every})")


class UDAModule(L.LightningModule):
    """Trains a :class:`~uda.baselines.Baseline` with a :class:`~uda.harmonizers.Harmonizer`.

    Each training iteration runs the baseline's stages in order; a stage computes its named losses, the
    gradient engine writes Σ coef_i tau_i g_i into ``.grad`` (or a plain backward when nothing is
    harmonized), and the stage's optimizer steps. The module counts iterations itself (Lightning's
    ``global_step`` counts optimizer steps, several per iteration for multi-stage baselines) and steps
    the learning-rate schedules once per iteration. Evaluation tracks the last and the best (oracle)
    target accuracy.
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

        self.iteration = 0
        metrics = {}
        for name in EVAL_SETS:
            metrics[f"{name}_acc"] = MulticlassAccuracy(baseline.num_classes, average="micro")
            metrics[f"{name}_acc_mean_class"] = MulticlassAccuracy(baseline.num_classes, average="macro")
        self.eval_metrics = nn.ModuleDict(metrics)
        self.history: list[dict[str, float]] = []
        # [monitored steps, conflicting before, conflicting after] over the first harmonized group
        self.register_buffer("conflict_counts", torch.zeros(3, dtype=torch.float64), persistent=False)
        self.train_seconds = 0.0
        self._train_iters_timed = 0
        self._t0: float | None = None
        # (stage name, group index) of every harmonized group; the first one feeds the summary's rates
        self._harmonized = [(s.name, k) for s in baseline.stages for k in range(len(s.harmonize))]

    @property
    def harmonizes(self) -> bool:
        """Whether any stage of the baseline has losses to harmonize."""
        return bool(self._harmonized)

    # ------------------------------------------------------------------ setup
    def _check_lr_mult(self) -> None:
        names = {g for groups in self.baseline.optimizer_groups().values() for g in groups}
        unknown = sorted(set(self.lr_mult) - names)
        if unknown:
            raise ConfigError(
                f"lr_mult names unknown parameter groups {unknown}; {self.baseline.name} has: "
                f"{', '.join(sorted(names))}"
            )

    def configure_optimizers(self) -> Any:
        lr = base_lr(self.optimizer_factory)
        self._opt_names: list[str] = []
        self._opt_params: dict[str, list[nn.Parameter]] = {}
        optimizers, schedulers = [], []
        for name, groups in self.baseline.optimizer_groups().items():
            opt = self.optimizer_factory(param_groups(groups, lr, self.lr_mult, prefix=f"{name}/"))
            self._opt_names.append(name)
            self._opt_params[name] = [p for ps in groups.values() for p in ps if p.requires_grad]
            optimizers.append(opt)
            if self.scheduler_factory is not None:
                schedulers.append(self.scheduler_factory(opt))
        return optimizers, schedulers

    # --------------------------------------------------------------- training
    def _gram_params(self) -> list[nn.Parameter]:
        return self.baseline.scope_parameters(self.engine.scope)

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

    def _run_stage(self, stage: Stage, batch: UDABatch, opt: Any) -> tuple[dict[str, Tensor], dict, GradStats | None]:
        out = self.baseline.compute_losses(stage.name, batch, self.iteration)
        names = list(stage.coefs)
        missing = [n for n in names if n not in out.losses]
        if missing:
            raise RuntimeError(f"{self.baseline.name} stage {stage.name!r} did not return losses {missing}")
        self._check_finite(stage, {n: out.losses[n] for n in names})
        opt.zero_grad(set_to_none=True)
        coefs = [float(stage.coefs[n]) for n in names]
        stats = None
        if self._should_measure(stage):
            weighted = stage.weighted if self.engine.weighted is None else self.engine.weighted
            stats = harmonized_backward(
                [out.losses[n] for n in names],
                self._opt_params[stage.optimizer],
                self.harmonizer,
                coefs=coefs,
                groups=[[names.index(n) for n in group] for group in stage.harmonize],
                gram_params=self._gram_params(),
                weighted=weighted,
                tau_scope=self.engine.tau_scope,
            )
        else:
            self.manual_backward(sum(c * out.losses[n] for c, n in zip(coefs, names, strict=True)))
        if self.engine.clip_grad_norm is not None:
            self.clip_gradients(opt, gradient_clip_val=self.engine.clip_grad_norm, gradient_clip_algorithm="norm")
        opt.step()
        return out.losses, out.metrics, stats

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        x_s, y_s = batch["source"]
        uda_batch = UDABatch(x_s, y_s, batch["target"])
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        by_name = dict(zip(self._opt_names, optimizers, strict=True))
        multi_stage = len(self.baseline.stages) > 1
        logs: dict[str, Tensor | float] = {}
        grad_logs: dict[str, Tensor] = {}
        for stage in self.baseline.stages:
            prefix = f"train/{stage.name}/" if multi_stage else "train/"
            for _ in range(stage.repeat):
                losses, metrics, stats = self._run_stage(stage, uda_batch, by_name[stage.optimizer])
                logs.update({f"{prefix}{n}_loss": v.detach() for n, v in losses.items()})
                logs.update({f"{prefix}{n}": v for n, v in metrics.items()})
                if stats is not None:
                    grad_logs.update(self._harmonizer_logs(stage, stats))
        step = self.iteration
        self.iteration += 1
        schedulers = self.lr_schedulers()
        for sched in schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []:
            sched.step()
        logs["train/lr"] = optimizers[0].param_groups[-1]["lr"]
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=x_s.shape[0])
        self.log("train/iteration", float(self.iteration), on_step=True, on_epoch=False, batch_size=x_s.shape[0])
        self._log_to_loggers(grad_logs, step)

    def _log_to_loggers(self, metrics: Mapping[str, Tensor], step: int) -> None:
        """Log straight to the loggers, for values measured on some steps only.

        ``self.log`` keeps re-sending a step metric's last value at every later step of the epoch, which
        would make intermittent measurements (``harmonizer=none`` with ``monitor_every``) look continuous.
        One host transfer for the whole dict.
        """
        if not metrics or not self.loggers:
            return
        values = torch.stack([v.detach().to(torch.float32) for v in metrics.values()]).tolist()
        row = dict(zip(metrics, values, strict=True))
        for logger in self.loggers:
            logger.log_metrics(row, step=step)

    def _harmonizer_logs(self, stage: Stage, stats: GradStats) -> dict[str, Tensor]:
        logs = {}
        for k, group in enumerate(stats.groups):
            key = "harmonizer/"
            if len(self._harmonized) > 1:
                key += f"{stage.name}{k if len(stage.harmonize) > 1 else ''}/"
            i, j = group[0], group[1]
            conflict, conflict_after = stats.conflict(i, j), stats.conflict_after()
            logs.update(
                {
                    f"{key}tau1": stats.tau[i],
                    f"{key}tau2": stats.tau[j],
                    f"{key}cos": stats.cos(i, j),
                    f"{key}conflict": conflict,
                    f"{key}conflict_after": conflict_after,
                    f"{key}g1_norm": stats.norms[i],
                    f"{key}g2_norm": stats.norms[j],
                    f"{key}update_norm": stats.update_norm,
                }
            )
            if (stage.name, k) == self._harmonized[0]:
                self.conflict_counts += torch.stack([torch.ones_like(conflict), conflict, conflict_after]).to(
                    self.conflict_counts
                )
        return logs

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
        self.log_dict(results, on_step=False, on_epoch=True)

    # ----------------------------------------------------------------- state
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["uda"] = {
            "iteration": self.iteration,
            "history": self.history,
            "conflict_counts": self.conflict_counts.cpu(),
            "harmonizer": self.harmonizer.state_dict(),
            "train_seconds": self.train_seconds,
            "train_iters_timed": self._train_iters_timed,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("uda", {})
        self.iteration = int(state.get("iteration", 0))
        self.history = list(state.get("history", []))
        if "conflict_counts" in state:
            self.conflict_counts = state["conflict_counts"].to(self.conflict_counts)
        self.harmonizer.load_state_dict(state.get("harmonizer", {}))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self._train_iters_timed = int(state.get("train_iters_timed", 0))

    # --------------------------------------------------------------- results
    def results(self) -> dict[str, Any]:
        """Last and best (oracle) target accuracy, conflict rates and speed, as plain Python values."""
        out: dict[str, Any] = {"iterations": self.iteration}
        if self.history:
            last = self.history[-1]
            best = max(self.history, key=lambda r: r["target/acc"])
            out.update(
                {
                    "target_acc_last": last["target/acc"],
                    "target_acc_mean_class_last": last.get("target/acc_mean_class"),
                    "source_acc_last": last.get("source/acc"),
                    "target_acc_best": best["target/acc"],
                    "target_acc_best_iteration": best["iteration"],
                }
            )
        n, before, after = self.conflict_counts.tolist()
        out["monitored_steps"] = int(n)
        out["conflict_rate"] = before / n if n else None
        out["conflict_rate_after"] = after / n if n else None
        out["sec_per_iter"] = self.train_seconds / self._train_iters_timed if self._train_iters_timed else None
        out["engine"] = asdict(self.engine)
        return out
