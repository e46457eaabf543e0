"""``python -m uda.report.figures RUN [RUN ...] --out DIR``: the GH paper's analysis figures (Sec. 5) from
finished runs.

Each RUN is a run directory (with ``summary.json``) or a directory searched recursively for them. Runs that
differ only by seed (same dataset, task, baseline, harmonizer, iterations and engine options) form one
group: curves show the group's mean ± sample std over seeds, confusion counts are summed over its seeds.
One panel per dataset / task / baseline compares its harmonizers (the paper compares baseline vs +GH).

- ``convergence.png`` (Fig. 9): target test error (%) at each evaluation, read from ``csv/metrics.csv``
  (the CSV logger's record of every run; the iteration of evaluation k is (k + 1) · eval_every);
- ``balance.png`` (Fig. 11): linear MMD between source and target features, LDA max J(W) of the source
  features (labels) and of the target features (pseudo-labels), from ``analysis/curves.json``;
- ``confusion.png`` (Fig. 10): row-normalized target confusion matrices side by side, from
  ``analysis/confusion.json``;
- ``tsne.png`` (Fig. 8): t-SNE (scikit-learn, fixed seed) of the source and target features of the group's
  first seed, coloured by domain (source red, target blue, as in the paper) and by class, from
  ``analysis/features.npz``.

The ``analysis/`` files are written by :class:`uda.callbacks.FeatureAnalysis` (on by default). A figure
without data in any run is skipped with a one-line note; no finished run ends in one sentence and exit 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from uda.analysis import stratified_indices
from uda.report.runs import NoFinishedRunsError, run_record
from uda.report.table import BASELINE_ORDER, HARMONIZER_ORDER

CONVERGENCE_PLOT = "convergence.png"
BALANCE_PLOT = "balance.png"
CONFUSION_PLOT = "confusion.png"
TSNE_PLOT = "tsne.png"
#: curves.json key -> (panel title, y label)
BALANCE_PANELS = {
    "mmd": ("domain alignment: linear MMD (smaller = aligned)", "MMD"),
    "j_source": ("source discriminability: max J(W), labels", "J(W)"),
    "j_target": ("target discriminability: max J(W), pseudo-labels", "J(W)"),
}
SOURCE_COLOR, TARGET_COLOR = "tab:red", "tab:blue"
DPI = 120
#: scatter plots of a thousand points per run make large PNGs; a lower resolution keeps them small
TSNE_DPI = 100


@dataclass
class RunData:
    """What the figures read from one run.

    Attributes:
        path: the run directory.
        panel: the comparison it belongs to (``"<dataset> <task> <baseline>"``).
        label: its name inside the panel (the harmonizer, e.g. ``"ghpp(lam=0.5)"``).
        baseline: the baseline's name (orders the panels as the paper does).
        settings: whatever else must match for runs to be averaged (iterations, engine options,
            experiment preset); runs with equal panel, label and settings differ only by seed.
        seed: the run's seed.
        accuracy: ``(iteration, target accuracy in [0, 1])`` at each evaluation.
        balance: ``analysis/curves.json`` (``iteration``, ``mmd``, ``j_source``, ``j_target``, ...) or empty.
        confusion: target confusion counts (rows true, columns predicted) or None.
        class_names: names of the classes, or None.
        features: the arrays of ``analysis/features.npz`` when already in memory.
        features_path: where to load them from otherwise.
    """

    path: str
    panel: str
    label: str
    baseline: str
    settings: dict[str, Any]
    seed: int | None
    accuracy: list[tuple[int, float]]
    balance: dict[str, list[float]] = field(default_factory=dict)
    confusion: np.ndarray | None = None
    class_names: list[str] | None = None
    features: dict[str, np.ndarray] | None = None
    features_path: Path | None = None

    @property
    def key(self) -> tuple:
        """Runs with equal keys differ only by seed."""
        return (self.panel, self.label, *sorted((k, str(v)) for k, v in self.settings.items()))

    def load_features(self) -> dict[str, np.ndarray] | None:
        """The saved feature subsample (``source_features``, ``target_labels``, ...) or None."""
        if self.features is None and self.features_path is not None and self.features_path.is_file():
            with np.load(self.features_path) as data:
                self.features = {k: data[k] for k in data.files}
        return self.features


@dataclass
class RunGroup:
    """Runs that differ only by seed, drawn as one line / one matrix / one embedding."""

    panel: str
    label: str
    runs: list[RunData]

    @property
    def seeds(self) -> list[int]:
        return sorted(r.seed for r in self.runs if r.seed is not None)

    def legend(self, runs: list[RunData] | None = None) -> str:
        """The label with how many runs (of ``runs``, default all) a figure averages: "gh (3 seeds)"."""
        runs = self.runs if runs is None else runs
        if len(runs) < 2:
            return self.label
        seeds = {r.seed for r in runs}
        return f"{self.label} ({len(runs)} {'seeds' if len(seeds) == len(runs) else 'runs'})"


# ------------------------------------------------------------------ reading
def _eval_every(run_dir: Path, summary: dict[str, Any], evaluations: int) -> int | None:
    config = run_dir / ".hydra" / "config.yaml"
    if config.is_file():
        from omegaconf import OmegaConf

        value = OmegaConf.load(config).get("eval_every")
        if isinstance(value, int) and value > 0:
            return value
    iterations = summary.get("iterations")
    if isinstance(iterations, int) and evaluations and iterations % evaluations == 0:
        return iterations // evaluations
    return None


def read_accuracy(run_dir: str | Path, summary: dict[str, Any] | None = None) -> list[tuple[int, float]]:
    """``(iteration, target accuracy)`` of every evaluation in the run's CSV log (``csv/metrics.csv``, and
    the first attempt's ``metrics.before_resume_*.csv`` of a resumed run; the later file wins per epoch)."""
    run_dir = Path(run_dir)
    if summary is None:
        summary = _read_json(run_dir / "summary.json") or {}
    files = sorted((run_dir / "csv").glob("metrics.before_resume_*.csv")) + [run_dir / "csv" / "metrics.csv"]
    by_epoch: dict[int, float] = {}
    for path in files:
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("target/acc") and row.get("epoch"):
                    by_epoch[int(float(row["epoch"]))] = float(row["target/acc"])
    every = _eval_every(run_dir, summary, len(by_epoch))
    if every is None:
        return []
    return [((epoch + 1) * every, acc) for epoch, acc in sorted(by_epoch.items())]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def load_run(run_dir: str | Path) -> RunData:
    """One finished run (``summary.json``) with whatever analysis files it has."""
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    record = run_record(summary, str(run_dir))
    analysis = run_dir / "analysis"
    curves = _read_json(analysis / "curves.json") or {}
    confusion = _read_json(analysis / "confusion.json")
    settings = {
        "iterations": summary.get("iterations"),
        "engine": json.dumps(summary.get("engine"), sort_keys=True),
        "experiment": summary.get("experiment"),
    }
    return RunData(
        path=str(run_dir),
        panel=f"{record['dataset']} {record['task']} {record['baseline']}",
        label=record["harmonizer"],
        baseline=record["baseline"],
        settings=settings,
        seed=record["seed"],
        accuracy=read_accuracy(run_dir, summary),
        balance={k: v for k, v in curves.items() if isinstance(v, list)},
        confusion=None if confusion is None else np.asarray(confusion["counts"], dtype=np.int64),
        class_names=None if confusion is None else confusion.get("class_names"),
        features_path=analysis / "features.npz",
    )


def find_runs(paths: Iterable[str | Path]) -> list[RunData]:
    """Every finished run under ``paths`` (each a run directory or a directory of runs), in path order."""
    found: dict[Path, None] = {}
    for root in map(Path, paths):
        if not root.is_dir():
            raise NoFinishedRunsError(f"{root} is not a directory: give run directories or directories of runs")
        for summary in sorted(root.rglob("summary.json")):
            found.setdefault(summary.parent.resolve())
    if not found:
        raise NoFinishedRunsError(
            f"no finished run (summary.json) under {', '.join(map(str, paths))}: give directories of finished runs"
        )
    return [load_run(path) for path in found]


def _rank(value: str, order: tuple[str, ...]) -> tuple[int, str]:
    name = value.split("(")[0].split(" ")[0]
    return (order.index(name), value) if name in order else (len(order), value)


def group_runs(runs: Iterable[RunData]) -> list[RunGroup]:
    """Runs with equal keys (differing only by seed) as groups, ordered by panel then harmonizer; labels that
    would collide inside a panel get the settings that tell them apart (iterations, engine, experiment)."""
    by_key: dict[tuple, list[RunData]] = {}
    for run in runs:
        by_key.setdefault(run.key, []).append(run)
    groups = [RunGroup(rs[0].panel, rs[0].label, sorted(rs, key=_seed_order)) for rs in by_key.values()]
    labels = []
    for group in groups:
        twins = [g for g in groups if g.panel == group.panel and g.label == group.label]
        settings = group.runs[0].settings
        differ = [f"{k}={v}" for k, v in settings.items() if len({str(t.runs[0].settings.get(k)) for t in twins}) > 1]
        labels.append(f"{group.label} [{', '.join(differ)}]" if differ else group.label)
    for group, label in zip(groups, labels, strict=True):  # renamed after all comparisons are made
        group.label = label
    return sorted(
        groups,
        key=lambda g: (_rank(g.runs[0].baseline, BASELINE_ORDER), g.panel, _rank(g.label, HARMONIZER_ORDER)),
    )


def _seed_order(run: RunData) -> tuple[bool, int]:
    return (run.seed is None, run.seed or 0)


# ------------------------------------------------------------------ numbers
def mean_std(curves: list[list[tuple[int, float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and sample std (0 for a single curve) over ``curves`` of ``(x, y)`` points, at the x values
    present in every curve."""
    common = sorted(set.intersection(*(set(x for x, _ in c) for c in curves))) if curves else []
    values = np.array([[dict(c)[x] for x in common] for c in curves], dtype=np.float64).reshape(len(curves), -1)
    std = values.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(len(common))
    return np.asarray(common, dtype=np.float64), values.mean(axis=0), std


def error_curve(run: RunData) -> list[tuple[int, float]]:
    """Target test error in % at each evaluation of ``run``."""
    return [(it, 100.0 * (1.0 - acc)) for it, acc in run.accuracy]


def balance_curve(run: RunData, name: str) -> list[tuple[int, float]]:
    """``(iteration, value)`` of the balance measure ``name`` (non-finite values left out)."""
    its, values = run.balance.get("iteration", []), run.balance.get(name, [])
    return [(int(i), float(v)) for i, v in zip(its, values, strict=False) if v is not None and math.isfinite(v)]


def summed_confusion(group: RunGroup) -> np.ndarray | None:
    """The group's target confusion counts summed over its seeds (None when no run has them)."""
    matrices = [r.confusion for r in group.runs if r.confusion is not None]
    return np.sum(matrices, axis=0) if matrices else None


def row_percent(counts: np.ndarray) -> np.ndarray:
    """Each row (true class) as % of its images; a class without images stays 0."""
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(100.0 * counts, totals, out=np.zeros(counts.shape, dtype=np.float64), where=totals > 0)


def tsne_embedding(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of ``features`` (scikit-learn, ``random_state=seed``, PCA initialization), after a PCA to
    50 dimensions when there are more (the usual speed-up; t-SNE only sees neighbourhoods)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float64)
    if x.shape[1] > 50 and x.shape[0] > 50:
        x = PCA(50, random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, max(1.0, (x.shape[0] - 1) / 3)))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


# ------------------------------------------------------------------ figures
def _panels(groups: list[RunGroup]) -> dict[str, list[RunGroup]]:
    panels: dict[str, list[RunGroup]] = {}
    for group in groups:
        panels.setdefault(group.panel, []).append(group)
    return panels


def _band(ax: Any, x: np.ndarray, mean: np.ndarray, std: np.ndarray, color: str, label: str) -> None:
    ax.plot(x, mean, "o-", color=color, markersize=3, label=label)
    if std.any():
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)


def plot_convergence(groups: list[RunGroup], path: str | Path) -> str | None:
    """Target error (%) over iterations, one panel per dataset/task/baseline (see the module docstring)."""
    panels = {p: [g for g in gs if any(r.accuracy for r in g.runs)] for p, gs in _panels(groups).items()}
    panels = {p: gs for p, gs in panels.items() if gs}
    if not panels:
        return "no evaluations (no run has target/acc in csv/metrics.csv)"
    fig = Figure(figsize=(6.5, 3.6 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (panel, panel_groups) in zip(axes, panels.items(), strict=True):
        for index, group in enumerate(panel_groups):
            runs = [r for r in group.runs if r.accuracy]
            x, mean, std = mean_std([error_curve(r) for r in runs])
            _band(ax, x, mean, std, f"C{index % 10}", group.legend(runs))
        ax.set_xlabel("iteration")
        ax.set_ylabel("target test error (%)")
        ax.set_title(f"{panel}: convergence (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=DPI)
    return None


def plot_balance(groups: list[RunGroup], path: str | Path) -> str | None:
    """MMD and J(W) over iterations, a row per dataset/task/baseline (see the module docstring)."""
    panels = {
        p: [g for g in gs if any(r.balance.get("iteration") for r in g.runs)] for p, gs in _panels(groups).items()
    }
    panels = {p: gs for p, gs in panels.items() if gs}
    if not panels:
        return "no MMD / J(W) curves (no run has analysis/curves.json)"
    fig = Figure(figsize=(15, 3.8 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), len(BALANCE_PANELS), squeeze=False)
    for row, (panel, panel_groups) in zip(axes, panels.items(), strict=True):
        for ax, (name, (title, ylabel)) in zip(row, BALANCE_PANELS.items(), strict=True):
            for index, group in enumerate(panel_groups):
                runs = [r for r in group.runs if balance_curve(r, name)]
                if runs:
                    curves = [balance_curve(r, name) for r in runs]
                    _band(ax, *mean_std(curves), f"C{index % 10}", group.legend(runs))
            ax.set_xlabel("iteration")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{panel}\n{title}", fontsize="medium")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
    fig.savefig(path, dpi=DPI)
    return None


def plot_confusion(groups: list[RunGroup], path: str | Path) -> str | None:
    """Row-normalized target confusion matrices, a row per panel, harmonizers side by side."""
    panels = {p: [g for g in gs if summed_confusion(g) is not None] for p, gs in _panels(groups).items()}
    panels = {p: gs for p, gs in panels.items() if gs}
    if not panels:
        return "no confusion matrices (no run has analysis/confusion.json)"
    columns = max(len(gs) for gs in panels.values())
    fig = Figure(figsize=(4.6 * columns + 0.8, 4.5 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), columns, squeeze=False)
    image = None
    for row, (panel, panel_groups) in zip(axes, panels.items(), strict=True):
        for ax in row[len(panel_groups) :]:
            ax.set_axis_off()
        for ax, group in zip(row, panel_groups, strict=False):
            counts = summed_confusion(group)
            percent = row_percent(counts)
            k = counts.shape[0]
            image = ax.imshow(percent, cmap="Blues", vmin=0.0, vmax=100.0)
            if k <= 12:
                for i in range(k):
                    for j in range(k):
                        color = "white" if percent[i, j] > 60 else "black"
                        ax.text(j, i, f"{percent[i, j]:.0f}", ha="center", va="center", fontsize=7, color=color)
            names = next((r.class_names for r in group.runs if r.class_names), None)
            if names and k <= 20:
                ax.set_xticks(range(k), names, fontsize="small", rotation=90 if max(map(len, names)) > 2 else 0)
                ax.set_yticks(range(k), names, fontsize="small")
            accuracy = 100.0 * np.trace(counts) / max(int(counts.sum()), 1)
            runs = [r for r in group.runs if r.confusion is not None]
            ax.set_title(f"{panel}\n{group.legend(runs)}: target acc {accuracy:.1f}%", fontsize="medium")
            ax.set_xlabel("predicted class")
            ax.set_ylabel("true class")
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="% of the true class")
    fig.savefig(path, dpi=DPI)
    return None


def _subsample(labels: np.ndarray, points: int, seed: int) -> np.ndarray:
    return stratified_indices(torch.as_tensor(labels), points, torch.Generator().manual_seed(seed)).numpy()


def plot_tsne(groups: list[RunGroup], path: str | Path, points: int = 500, seed: int = 0) -> str | None:
    """t-SNE of each group's first-seed features: by domain (left) and by class (right)."""
    chosen = []
    for group in groups:
        run = next((r for r in group.runs if r.load_features() is not None), None)
        if run is not None:
            chosen.append((group, run))
    if not chosen:
        return "no features (no run has analysis/features.npz)"
    fig = Figure(figsize=(11, 4.8 * len(chosen)), layout="constrained")
    axes = fig.subplots(len(chosen), 2, squeeze=False)
    for (ax_domain, ax_class), (group, run) in zip(axes, chosen, strict=True):
        data = run.load_features()
        parts = []
        for domain in ("source", "target"):
            keep = _subsample(data[f"{domain}_labels"], points, seed)
            parts.append((domain, data[f"{domain}_features"][keep], data[f"{domain}_labels"][keep]))
        embedded = tsne_embedding(np.concatenate([f for _, f, _ in parts]), seed=seed)
        n_source = len(parts[0][1])
        spans = {"source": slice(0, n_source), "target": slice(n_source, None)}
        labels = np.concatenate([y for _, _, y in parts])
        num_classes = int(labels.max()) + 1 if labels.size else 0
        cmap = "tab10" if num_classes <= 10 else "tab20"
        for domain, color, marker in (("source", SOURCE_COLOR, "o"), ("target", TARGET_COLOR, "x")):
            xy = embedded[spans[domain]]
            ax_domain.scatter(xy[:, 0], xy[:, 1], s=6, c=color, marker=marker, alpha=0.6, linewidths=0.6, label=domain)
            ax_class.scatter(
                xy[:, 0],
                xy[:, 1],
                s=6,
                c=labels[spans[domain]],
                cmap=cmap,
                vmin=-0.5,
                vmax=max(num_classes, 10) - 0.5,
                marker=marker,
                alpha=0.7,
                linewidths=0.6,
            )
        seed_note = f", seed {run.seed}" if run.seed is not None else ""
        ax_domain.set_title(
            f"{group.panel}: {group.label}{seed_note}\nsource (red ●) vs target (blue ×)", fontsize="medium"
        )
        ax_class.set_title(
            f"same embedding, coloured by true class\n(● source, × target; {len(labels)} images)", fontsize="medium"
        )
        ax_domain.legend(fontsize="small", markerscale=2)
        if num_classes <= 10:
            names = run.class_names or [str(c) for c in range(num_classes)]
            handles = [
                Line2D([], [], linestyle="", marker="o", markersize=5, color=colormaps[cmap](c), label=names[c])
                for c in range(num_classes)
            ]
            ax_class.legend(
                handles=handles, fontsize="small", ncol=2, title="class", title_fontsize="small", loc="best"
            )
        for ax in (ax_domain, ax_class):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.savefig(path, dpi=TSNE_DPI)
    return None


def write_figures(
    groups: list[RunGroup], out_dir: str | Path, tsne_points: int = 500, seed: int = 0
) -> tuple[list[Path], list[str]]:
    """Write every figure that has data into ``out_dir``; return the written paths and one note per skip."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written, notes = [], []
    for filename, title, draw in (
        (CONVERGENCE_PLOT, "convergence", plot_convergence),
        (BALANCE_PLOT, "MMD / J(W)", plot_balance),
        (CONFUSION_PLOT, "confusion", plot_confusion),
        (TSNE_PLOT, "t-SNE", lambda g, p: plot_tsne(g, p, points=tsne_points, seed=seed)),
    ):
        skipped = draw(groups, out / filename)
        if skipped is None:
            written.append(out / filename)
        else:
            (out / filename).unlink(missing_ok=True)  # never leave a stale figure from an earlier call
            notes.append(f"skipped the {title} figure: {skipped}")
    return written, notes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m uda.report.figures", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", help="run directories, or directories searched recursively for runs")
    parser.add_argument("--out", required=True, help="directory for the PNG figures")
    parser.add_argument("--tsne-points", type=int, default=500, help="images per domain in each t-SNE (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the t-SNE and its subsample (default 0)")
    args = parser.parse_args(argv)
    if args.tsne_points < 2:
        parser.error("--tsne-points must be at least 2")
    try:
        runs = find_runs(args.runs)
    except NoFinishedRunsError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    groups = group_runs(runs)
    written, notes = write_figures(groups, args.out, tsne_points=args.tsne_points, seed=args.seed)
    print(f"{len(runs)} runs in {len(groups)} groups", file=sys.stderr)
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    for note in notes:
        print(note, file=sys.stderr)


if __name__ == "__main__":
    main()
