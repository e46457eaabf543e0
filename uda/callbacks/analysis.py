"""What the GH paper's analysis figures need, recorded during training (Sec. 5: Figs. 8, 10 and 11).

Files written under ``dirpath`` (default ``<run dir>/analysis``), read by ``python -m uda.report.figures``:

- ``curves.json``: the alignment / discriminability balance (Fig. 11) every ``balance_every`` iterations
  (and at iteration 0 and at the end): linear MMD between source and target features, LDA max J(W) of
  the source features (labels) and of the target features (pseudo-labels; and true labels, analysis only);
- ``features.npz``: at the end of the run, the features, labels and predictions of a class-stratified
  subsample of ``num_samples`` images per domain (t-SNE, Fig. 8);
- ``confusion.json``: the target confusion matrix of the final model on the whole target test split
  (torchmetrics; Fig. 10);
- with ``save_every_eval=true`` also ``features_iter<N>.npz`` and ``confusion_iter<N>.json`` at every
  evaluation.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Dataset, Subset
from torchmetrics.classification import MulticlassConfusionMatrix

from uda.analysis import balance_measures, collect_features, dataset_labels, evaluation, stratified_indices
from uda.checkpoint import rng_state, set_rng_state
from uda.errors import ConfigError

SPLITS = ("train", "test")
PLOTS = (True, False, "auto")
DOMAINS = ("source", "target")
#: features are stored as float16 below this magnitude (float16 max is 65504)
HALF_MAX = 6.0e4


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Every global generator (Python, NumPy, torch CPU and CUDA) is back where it was afterwards, so
    whatever a measurement draws (a data transform, a loader's base seed) cannot shift training."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


class FeatureAnalysis(Callback):
    """Records features, predictions, the target confusion matrix and the MMD / J(W) balance of a run.

    The features are the output of the baseline's feature extractor (the last module of its
    ``shared_scope``: ``bottleneck`` for DANN/CDAN/source-only, ``backbone`` otherwise), caught by a
    forward hook while ``baseline.predict`` runs under ``torch.no_grad`` in eval mode; every module's
    mode is restored afterwards. The subsamples are drawn once, class-proportionally, with a private
    generator seeded by ``seed`` (the same images for every run of a dataset, whatever the run's seed),
    and every global RNG is restored after each measurement: with or without this callback, training
    ends with identical weights (tested). Only rank 0 measures.

    Args:
        dirpath: where the files go.
        num_samples: images per domain in the feature subsample (MMD, J(W), t-SNE). J(W) is ill-
            conditioned when this is not larger than the feature dimension (500 for LeNet).
        split: ``train`` (the images the model adapts on, as DWL measures its balance) or ``test``.
        balance_every: measure MMD and J(W) every this many iterations (0 = only at the start and end).
        save_every_eval: also save features and the confusion matrix at every evaluation.
        seed: seed of the private generator choosing the subsamples.
        batch_size: forward batch size of the measurements (default: the dataset's eval batch size).
        plots: draw this run's figures at the end and log them as images to loggers that take images
            (W&B): ``auto`` = only when such a logger is on, ``true`` = always (PNG under ``dirpath``).
        tsne_points: images per domain in the end-of-run t-SNE figure.
    """

    def __init__(
        self,
        dirpath: str | Path = "analysis",
        num_samples: int = 1000,
        split: str = "train",
        balance_every: int = 100,
        save_every_eval: bool = False,
        seed: int = 0,
        batch_size: int | None = None,
        plots: bool | str = "auto",
        tsne_points: int = 200,
    ) -> None:
        if int(num_samples) < 2:
            raise ConfigError(f"callbacks.analysis.num_samples must be >= 2 images per domain, got {num_samples}")
        if split not in SPLITS:
            raise ConfigError(f"callbacks.analysis.split={split!r} is unknown; choose one of: {', '.join(SPLITS)}")
        if int(balance_every) < 0:
            raise ConfigError(
                f"callbacks.analysis.balance_every must be >= 0 (0 = start and end only), got {balance_every}"
            )
        if batch_size is not None and int(batch_size) < 1:
            raise ConfigError(f"callbacks.analysis.batch_size must be positive or null, got {batch_size}")
        if plots not in PLOTS:
            raise ConfigError(f"callbacks.analysis.plots={plots!r} is unknown; choose one of: true, false, auto")
        if int(tsne_points) < 2:
            raise ConfigError(f"callbacks.analysis.tsne_points must be >= 2, got {tsne_points}")
        self.dirpath = Path(dirpath)
        self.num_samples = int(num_samples)
        self.split = split
        self.balance_every = int(balance_every)
        self.save_every_eval = bool(save_every_eval)
        self.seed = int(seed)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.plots = plots
        self.tsne_points = int(tsne_points)
        self.curves: dict[str, list[float]] = defaultdict(list)
        self._subsets: dict[str, Subset] | None = None
        self._last_confusion: torch.Tensor | None = None

    # ---------------------------------------------------------------- data
    def _datamodule(self, trainer: L.Trainer) -> Any:
        dm = trainer.datamodule
        if dm is None or not all(hasattr(dm, f"{d}_data") for d in DOMAINS):
            raise ConfigError(
                "the analysis callback needs a uda datamodule (source_data / target_data); "
                "drop it with ~callbacks.analysis"
            )
        return dm

    def subsets(self, trainer: L.Trainer) -> dict[str, Subset]:
        """The class-stratified subsample of each domain's ``split`` (drawn once per run)."""
        if self._subsets is None:
            dm = self._datamodule(trainer)
            generator = torch.Generator().manual_seed(self.seed)
            self._subsets = {}
            for domain in DOMAINS:
                dataset = getattr(getattr(dm, f"{domain}_data"), self.split)
                indices = stratified_indices(dataset_labels(dataset), self.num_samples, generator)
                self._subsets[domain] = Subset(dataset, indices.tolist())
        return self._subsets

    def _loader(self, trainer: L.Trainer, dataset: Dataset) -> DataLoader:
        dm = self._datamodule(trainer)
        # a private generator: a loader otherwise draws its base seed from the global one
        return DataLoader(
            dataset,
            batch_size=self.batch_size or getattr(dm, "eval_batch_size", 256),
            shuffle=False,
            num_workers=getattr(dm, "num_workers", 0),
            generator=torch.Generator().manual_seed(self.seed),
        )

    # ---------------------------------------------------------- measurements
    def features(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, dict[str, torch.Tensor]]:
        """Features, labels and predictions of both subsamples under the current weights."""
        baseline = pl_module.baseline
        feature_module = getattr(baseline, baseline.shared_scope[-1])
        out = {}
        with preserved_rng(), evaluation(pl_module):
            for domain, subset in self.subsets(trainer).items():
                batches = self._loader(trainer, subset)
                try:
                    out[domain] = collect_features(baseline.predict, feature_module, batches, pl_module.device)
                except ValueError as err:
                    raise ConfigError(
                        f"callbacks.analysis cannot read the features of {baseline.name}: {err}; "
                        "drop the callback with ~callbacks.analysis"
                    ) from err
                out[domain]["indices"] = torch.tensor(subset.indices)
        return out

    def confusion(self, trainer: L.Trainer, pl_module: L.LightningModule) -> torch.Tensor:
        """Target confusion counts (rows: true class, columns: predicted) on the whole target test split."""
        baseline = pl_module.baseline
        # rank 0 alone reads the whole split here: a sync on compute would wait for ranks that never call it
        metric = MulticlassConfusionMatrix(baseline.num_classes, sync_on_compute=False).to(pl_module.device)
        with preserved_rng(), evaluation(pl_module):
            for x, y in self._loader(trainer, self._datamodule(trainer).target_data.test):
                metric.update(baseline.predict(x.to(pl_module.device)), y.to(pl_module.device))
        return metric.compute().cpu()

    def measure_balance(
        self, trainer: L.Trainer, pl_module: L.LightningModule, feats: dict[str, dict[str, torch.Tensor]] | None = None
    ) -> None:
        """Append MMD and J(W) at the current iteration to :attr:`curves` (once per iteration)."""
        iteration = int(pl_module.iteration)
        if not trainer.is_global_zero or (self.curves["iteration"] and self.curves["iteration"][-1] == iteration):
            return
        feats = feats or self.features(trainer, pl_module)
        s, t = feats["source"], feats["target"]
        values = balance_measures(
            s["features"], s["labels"], t["features"], t["predictions"], pl_module.baseline.num_classes, t["labels"]
        )
        self.curves["iteration"].append(iteration)
        for name, value in values.items():
            self.curves[name].append(value)

    # ---------------------------------------------------------------- hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._datamodule(trainer)  # a wrong datamodule fails before training, in one sentence

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # measured before the module starts its step timer (callbacks run first), so the time spent here
        # never counts into the summary's s/iteration; the weights are those after `iteration` iterations
        iteration = pl_module.iteration
        if iteration == 0 or (self.balance_every and iteration % self.balance_every == 0):
            self.measure_balance(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.save_every_eval and not trainer.sanity_checking and trainer.is_global_zero:
            self._save_snapshot(trainer, pl_module, f"_iter{pl_module.iteration:06d}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        feats = self._save_snapshot(trainer, pl_module, "")
        self.measure_balance(trainer, pl_module, feats)
        self._write_curves()
        loggers = [lg for lg in trainer.loggers if hasattr(lg, "log_image")]
        if self.plots is True or (self.plots == "auto" and loggers):
            self._plot_and_log(trainer, pl_module, feats, loggers)

    # ---------------------------------------------------------------- files
    def _save_snapshot(self, trainer: L.Trainer, pl_module: L.LightningModule, suffix: str) -> dict[str, Any]:
        feats = self.features(trainer, pl_module)
        counts = self.confusion(trainer, pl_module)
        self.dirpath.mkdir(parents=True, exist_ok=True)
        arrays = {f"{d}_{k}": v.numpy() for d, parts in feats.items() for k, v in parts.items()}
        for domain in DOMAINS:  # half precision where it is exact enough and cannot overflow: half the file
            values = arrays[f"{domain}_features"]
            if values.size and np.isfinite(values).all() and np.abs(values).max() < HALF_MAX:
                arrays[f"{domain}_features"] = values.astype(np.float16)
        np.savez_compressed(
            self.dirpath / f"features{suffix}.npz",
            iteration=np.array(pl_module.iteration),
            split=np.array(self.split),
            **arrays,
        )
        dm = self._datamodule(trainer)
        confusion = {
            "iteration": int(pl_module.iteration),
            "split": "target test",
            "class_names": list(getattr(dm, "class_names", ()) or map(str, range(counts.shape[0]))),
            "counts": counts.tolist(),
        }
        (self.dirpath / f"confusion{suffix}.json").write_text(json.dumps(confusion))
        self._last_confusion = counts
        return feats

    def _write_curves(self) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        record = {"split": self.split, "num_samples": self.num_samples, **{k: list(v) for k, v in self.curves.items()}}
        (self.dirpath / "curves.json").write_text(json.dumps(record, indent=1))

    def _plot_and_log(
        self, trainer: L.Trainer, pl_module: L.LightningModule, feats: dict[str, Any], loggers: list[Any]
    ) -> None:
        from uda.report.figures import RunData, group_runs, write_figures

        dm = self._datamodule(trainer)
        run = RunData(
            path=str(self.dirpath.parent),
            panel=f"{getattr(dm, 'task', '')} {pl_module.baseline.name}".strip(),
            label=repr(pl_module.harmonizer),
            baseline=pl_module.baseline.name,
            settings={},
            seed=None,
            accuracy=[(int(r["iteration"]), float(r["target/acc"])) for r in pl_module.record.history],
            balance={k: list(v) for k, v in self.curves.items()},
            confusion=self._last_confusion.numpy(),
            class_names=list(getattr(dm, "class_names", ()) or []) or None,
            features={f"{d}_{k}": v.numpy() for d, parts in feats.items() for k, v in parts.items()},
        )
        written, _ = write_figures(group_runs([run]), self.dirpath, tsne_points=self.tsne_points, seed=self.seed)
        for path in written:
            for logger in loggers:
                logger.log_image(key=f"analysis/{path.stem}", images=[str(path)], caption=[path.stem])

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"curves": {k: list(v) for k, v in self.curves.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.curves = defaultdict(list, {k: list(v) for k, v in state_dict.get("curves", {}).items()})
