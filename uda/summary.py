"""The end-of-run summary: printed, written as summary.json, and attached to the W&B run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def format_summary(s: dict[str, Any]) -> str:
    """A short human-readable block; says which accuracy is last and which is the oracle best."""
    spi = s.get("sec_per_iter")
    measured = s.get("monitored_steps", 0)
    if measured:
        conflict = (
            f"{100 * s['conflict_rate']:.1f}% of {measured} measured steps before harmonization, "
            f"{100 * s['conflict_rate_after']:.1f}% after"
        )
    else:
        conflict = "not measured (nothing to harmonize, or engine.monitor_every=0)"
    lines = [
        "─" * 64,
        f" dataset      {s['dataset']}  task {s['task']}",
        f" baseline     {s['baseline']}",
        f" harmonizer   {s['harmonizer']}",
        f" seed         {s['seed']}   iterations {s['iterations']}",
        f" target acc   last {_pct(s.get('target_acc_last'))}"
        f"   (mean per class {_pct(s.get('target_acc_mean_class_last'))})",
        f"              best {_pct(s.get('target_acc_best'))} at iteration {s.get('target_acc_best_iteration')}"
        "   [oracle: selected with target labels]",
        f"              source_val {_pct(s.get('target_acc_source_val'))} at iteration {s.get('source_val_iteration')}"
        "   [selected by best source accuracy]",
        f" source acc   last {_pct(s.get('source_acc_last'))}",
        f" conflict     {conflict}",
        f" speed        {'n/a' if spi is None else f'{spi:.4f}'} s/iteration (training step only)",
        f" run dir      {s.get('output_dir')}",
        "─" * 64,
    ]
    if s.get("note"):  # e.g. a randomly initialized CLIP: the numbers above are not results
        lines.insert(-1, f" NOTE         {s['note']}")
    return "\n".join(lines)


def write_summary(summary: dict[str, Any], output_dir: str | Path) -> Path:
    path = Path(output_dir) / "summary.json"
    path.write_text(json.dumps(summary, indent=2, default=str))
    return path
