"""Learning curves: target-test accuracy over training iterations, read from each run's CSV log.

A run logged with the CSV logger (``logger=csv``, also under ``logger=wandb``) has ``csv/metrics.csv``:
evaluation rows carry ``target/acc`` and training rows ``train/iteration``, both at Lightning's ``step``.
The iteration of an evaluation is the last ``train/iteration`` logged at or before its step. A resumed
run also has ``csv/metrics.before_resume_<n>.csv`` (the interrupted attempt); all files are read and an
iteration evaluated twice keeps its latest value.

:func:`plot_learning_curves` draws one seed per baseline (the lowest seed that has a curve, the
``none`` harmonizer when there is one) so that a reader can see whether training had flattened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from uda.report.runs import Runs

CURVES_PLOT = "learning_curves.png"
ACC, ITERATION = "target/acc", "train/iteration"


def read_curve(run_dir: str | Path) -> pd.DataFrame | None:
    """``iteration`` and ``target_acc`` (fraction) of every evaluation of a run, or None without a CSV log."""
    frames = []
    for path in sorted((Path(run_dir) / "csv").glob("metrics*.csv")):
        try:
            log = pd.read_csv(path)
        except (OSError, ValueError):
            continue  # an unreadable or empty log contributes nothing
        if not {ACC, ITERATION, "step"} <= set(log.columns):
            continue
        evals = log.loc[log[ACC].notna(), ["step", ACC]].sort_values("step")
        steps = log.loc[log[ITERATION].notna(), ["step", ITERATION]].sort_values("step")
        if evals.empty or steps.empty:
            continue
        joined = pd.merge_asof(evals, steps, on="step", direction="backward").dropna()
        frames.append(joined.rename(columns={ITERATION: "iteration", ACC: "target_acc"}))
    if not frames:
        return None
    curve = pd.concat(frames).drop_duplicates("iteration", keep="last").sort_values("iteration")
    curve["iteration"] = curve["iteration"].astype(int)
    return curve[["iteration", "target_acc"]].reset_index(drop=True)


def _seed_key(record: dict[str, Any]) -> tuple:
    return (record["harmonizer_name"] != "none", str(record["seed"]), record["run_dir"])


def plot_learning_curves(runs: Runs, runs_dir: str | Path, path: str | Path) -> str | None:
    """One panel per dataset/task, one line per baseline (see the module docstring); None when written,
    else a one-line reason."""
    chosen: dict[tuple[str, str], dict[str, tuple[dict[str, Any], pd.DataFrame]]] = {}
    for record in sorted(runs.finished, key=_seed_key):
        panel = chosen.setdefault((record["dataset"], record["task"]), {})
        if record["baseline"] in panel:
            continue
        curve = read_curve(Path(runs_dir) / record["run_dir"])
        if curve is not None and len(curve):
            panel[record["baseline"]] = (record, curve)
    panels = [(key, lines) for key, lines in chosen.items() if lines]
    if not panels:
        return "no learning curves (no run has a CSV log with target/acc: run with logger=csv)"
    # one colour per baseline in every panel, so that a reader comparing tasks matches lines by colour
    colour = {baseline: f"C{i}" for i, baseline in enumerate(sorted({b for _, lines in panels for b in lines}))}
    fig = Figure(figsize=(8, 3.6 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, ((dataset, task), lines) in zip(axes, panels, strict=True):
        for baseline, (record, curve) in sorted(lines.items()):
            label = f"{baseline} + {record['harmonizer_name']}, seed {record['seed']}"
            ax.plot(
                curve["iteration"], 100.0 * curve["target_acc"], "o-", markersize=3, label=label, color=colour[baseline]
            )
        ax.set_xlabel("training iteration")
        ax.set_ylabel("target test accuracy (%)")
        ax.set_title(f"{dataset} {task}: target accuracy during training (one seed per baseline)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="lower right")
    fig.savefig(path, dpi=120)
    return None
