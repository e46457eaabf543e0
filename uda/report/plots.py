"""Figures drawn from the aggregated table (PNG through matplotlib's Agg canvas, no display needed).

- :func:`plot_lambda_sensitivity`: target accuracy of the selected model against GH++'s λ, mean ± std band
  over seeds, one line per dataset/task/baseline, with that baseline's ``none`` and ``gh`` results as
  horizontal reference lines (the paper's Fig. 14 sweeps λ ∈ {0, .1, .3, .5, .7, .9, 1}).
- :func:`plot_conflict_rates`: share of steps with conflicting gradients before and after harmonization
  per method, grouped bars with ± std over seeds, one panel per dataset/task.

Each returns None when it wrote its file, or a one-line reason when the table holds no data for it.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

LAMBDA_PLOT = "lambda_sensitivity.png"
CONFLICT_PLOT = "conflict_rates.png"


def _std(value: float) -> float:
    # a single seed has no spread; draw it as a line without a band
    return 0.0 if math.isnan(value) else value


def plot_lambda_sensitivity(table: pd.DataFrame, path: str | Path) -> str | None:
    """Accuracy vs GH++ λ (see the module docstring); needs two or more λ values for some task/baseline."""
    rows = table[(table["kind"] == "task") & table["acc_mean"].notna()]
    ghpp = rows[(rows["harmonizer_name"] == "ghpp") & rows["lam"].notna()]
    sweeps = [
        (key, group.sort_values("lam"))
        for key, group in ghpp.groupby(["dataset", "task", "baseline"], sort=False)
        if group["lam"].nunique() > 1
    ]
    if not sweeps:
        return "no GH++ λ sweep (no dataset/task/baseline has results at two or more λ values)"
    selection = table["selection"].iloc[0]
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for index, ((dataset, task, baseline), group) in enumerate(sweeps):
        color = f"C{index % 10}"
        lam, mean = group["lam"].astype(float), group["acc_mean"]
        std = group["acc_std"].map(_std)
        ax.plot(lam, mean, "o-", color=color, label=f"{dataset} {task} {baseline} + GH++")
        ax.fill_between(lam, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
        same = rows[(rows["dataset"] == dataset) & (rows["task"] == task) & (rows["baseline"] == baseline)]
        for name, style in (("none", "--"), ("gh", ":")):
            reference = same[same["harmonizer_name"] == name]
            if len(reference):
                label = f"{dataset} {task} {baseline} + {'GH' if name == 'gh' else 'no harmonizer'}"
                ax.axhline(reference["acc_mean"].iloc[0], color=color, linestyle=style, label=label)
    ax.set_xlabel("GH++ trade-off λ")
    ax.set_ylabel(f"target accuracy (%), model selection: {selection}")
    ax.set_title("GH++ λ sensitivity (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: lines stay visible
    fig.savefig(path, dpi=120)
    return None


def plot_conflict_rates(table: pd.DataFrame, path: str | Path) -> str | None:
    """Conflict rate before / after harmonization per method (see the module docstring)."""
    rows = table[(table["kind"] == "task") & table["conflict_before_mean"].notna()]
    if rows.empty:
        return "no conflict rates (no run monitored gradient conflicts)"
    panels = list(rows.groupby(["dataset", "task"], sort=False))
    widest = max(len(group) for _, group in panels)
    fig = Figure(figsize=(max(5.0, 1.1 * widest + 1.5), 3.2 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, ((dataset, task), group) in zip(axes, panels, strict=True):
        x = range(len(group))
        for offset, metric, label in (
            (-0.2, "conflict_before", "before: loss gradients at an obtuse angle"),
            (0.2, "conflict_after", "after: the update opposes a loss gradient"),
        ):
            heights = group[f"{metric}_mean"].fillna(0.0)
            errors = group[f"{metric}_std"].map(_std)
            ax.bar([i + offset for i in x], heights, width=0.4, yerr=errors, capsize=3, label=label)
        # "ghpp(lam=0.25)" -> "ghpp\nlam=0.25": parameters on their own line keep neighbouring labels apart
        harmonizers = [h.replace("(", "\n").removesuffix(")") for h in group["harmonizer"]]
        labels = [f"{b}\n{h}" for b, h in zip(group["baseline"], harmonizers, strict=True)]
        ax.set_xticks(list(x), labels, fontsize="small")
        ax.set_ylabel("conflicting steps (%)")
        ax.set_title(f"{dataset} {task}: gradient conflicts (mean ± std over seeds)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)
    return None
