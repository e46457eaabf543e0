"""Gradient-conflict diagnostics: per-step scalars, and histograms/traces as PNG (paper Fig. 2 and 12)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

#: per-step scalars logged for every harmonized group (prefix ``harmonizer/``)
SCALARS = (
    "tau1",
    "tau2",
    "cos",
    "dot",
    "conflict",
    "conflict_after",
    "pair_dot",
    "pair_conflict_after",
    "g1_norm",
    "g2_norm",
    "update_norm",
    "update_cos1",
    "update_cos2",
)


class GradientDiagnostics(Callback):
    """Logs the gradient geometry of every harmonized step and plots it.

    Per step and harmonized group (``harmonizer/...``): tau1, tau2; cos(g1, g2) and the inner product
    g1·g2 ("dot") with the conflict flag; ‖g1‖, ‖g2‖; the update d = Σ coef_i tau_i g_i: ‖d‖ and
    cos(d, g_i), and ``conflict_after`` (d opposes some g_i); the harmonized pair ĝ1·ĝ2 ("pair_dot",
    the paper's Fig. 12 quantity) and ``pair_conflict_after``. Values go straight to the loggers (one
    host transfer per step), because measurements can be intermittent (``harmonizer=none``).

    At the end of every ``plot_every_n_epochs``-th epoch and of the run, a figure with inner-product and
    cosine histograms before/after harmonization, the tau trace and the running conflict rates is saved
    as PNG under ``dirpath`` and logged to W&B. The recorded history is part of the checkpoint.
    """

    def __init__(self, dirpath: str | Path = "diagnostics", plot_every_n_epochs: int = 1, window: int = 100) -> None:
        self.dirpath = Path(dirpath)
        self.plot_every_n_epochs = int(plot_every_n_epochs)
        self.window = int(window)
        self.history: dict[str, list[float]] = defaultdict(list)
        self.title = ""

    # ------------------------------------------------------------- per step
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        items = getattr(pl_module, "step_stats", [])
        if not items:
            return
        multi = len({(item.stage, item.group) for item in items}) > 1 or len(pl_module.baseline.stages) > 1
        keys, values = [], []
        for item in items:
            s = item.stats
            i, j = s.groups[item.group][:2]
            prefix = f"harmonizer/{item.stage}/{'_'.join(item.names)}/" if multi else "harmonizer/"
            update_cos = s.update_cos()
            vals = [
                s.tau[i],
                s.tau[j],
                s.cos(i, j),
                s.gram[i, j],
                s.conflict(i, j),
                s.conflict_after(),
                s.pair_gram[i, j],
                s.pair_conflict_after(i, j),
                s.norms[i],
                s.norms[j],
                s.update_norm,
                update_cos[i],
                update_cos[j],
            ]
            keys += [prefix + name for name in SCALARS]
            values += vals
        row = dict(zip(keys, torch.stack([v.detach().float() for v in values]).tolist(), strict=True))
        step = pl_module.iteration - 1
        for logger in trainer.loggers:
            logger.log_metrics(row, step=step)
        first = items[0]
        prefix = keys[0][: -len("tau1")]
        self.history["step"].append(float(step))
        for name in SCALARS:
            self.history[name].append(row[prefix + name])
        if not self.title:
            self.title = (
                f"{pl_module.baseline.name} + {pl_module.harmonizer!r}: {first.stage} ({', '.join(first.names)})"
            )

    # ---------------------------------------------------------------- plots
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        last_epoch = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        if self.plot_every_n_epochs > 0 and (epoch + 1) % self.plot_every_n_epochs == 0 and not last_epoch:
            self._save(trainer, f"epoch_{epoch:03d}.png")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer, "final.png")

    def _save(self, trainer: L.Trainer, name: str) -> Path | None:
        if not trainer.is_global_zero or not self.history.get("step"):
            return None
        path = self.dirpath / name
        plot_diagnostics(self.history, path, title=self.title, window=self.window)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key="harmonizer/diagnostics", images=[str(path)], caption=[name])
        return path

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"history": dict(self.history), "title": self.title}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = defaultdict(list, {k: list(v) for k, v in state_dict.get("history", {}).items()})
        self.title = state_dict.get("title", "")


def _running_mean(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for k, v in enumerate(values):
        total += v
        if k >= window:
            total -= values[k - window]
        out.append(total / min(k + 1, window))
    return out


def plot_diagnostics(history: dict[str, list[float]], path: Path, title: str = "", window: int = 100) -> None:
    """Four panels: inner products before/after (symlog), cosines before/after, tau trace, conflict rates."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    steps = history["step"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    ax = axes[0, 0]
    dots, pair = torch.tensor(history["dot"]), torch.tensor(history["pair_dot"])
    span = float(torch.cat([dots.abs(), pair.abs()]).max()) or 1.0
    thresh = max(span * 1e-4, 1e-12)
    bins = torch.linspace(-span, span, 81).numpy()
    ax.hist(dots.numpy(), bins=bins, alpha=0.6, label=f"before: g1·g2 ({100 * (dots < 0).float().mean():.1f}% < 0)")
    ax.hist(pair.numpy(), bins=bins, alpha=0.6, label=f"after: ĝ1·ĝ2 ({100 * (pair < 0).float().mean():.1f}% < 0)")
    ax.set_xscale("symlog", linthresh=thresh)
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_title("inner product of the two gradients (paper Fig. 2 / 12)")
    ax.set_xlabel("inner product")
    ax.set_ylabel("steps")
    ax.legend(fontsize=8)

    ax = axes[0, 1]
    cos_bins = torch.linspace(-1, 1, 41).numpy()
    ax.hist(history["cos"], bins=cos_bins, alpha=0.6, label="cos(g1, g2)")
    ax.hist(history["update_cos1"], bins=cos_bins, alpha=0.5, label="cos(d, g1)")
    ax.hist(history["update_cos2"], bins=cos_bins, alpha=0.5, label="cos(d, g2)")
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_title("cosines: gradients, and update d vs each gradient")
    ax.set_xlabel("cosine")
    ax.legend(fontsize=8)

    ax = axes[1, 0]
    ax.plot(steps, history["tau1"], lw=0.7, label="tau1")
    ax.plot(steps, history["tau2"], lw=0.7, label="tau2")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_title("loss weights")
    ax.set_xlabel("iteration")
    ax.legend(fontsize=8)

    ax = axes[1, 1]
    for key, label in (
        ("conflict", "g1·g2 < 0 (before)"),
        ("conflict_after", "d opposes a gradient (after)"),
        ("pair_conflict_after", "ĝ1·ĝ2 < 0 (after)"),
    ):
        ax.plot(steps, _running_mean(history[key], window), lw=1.0, label=label)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"conflict rate (running mean over {window} measured steps)")
    ax.set_xlabel("iteration")
    ax.legend(fontsize=8)

    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
