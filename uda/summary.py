"""The run's summary: one :class:`RunSummary` says what ran and what came out.

It is written as ``summary.json``, printed at the end of a run, attached to the W&B run, and read back by the
sweeper's return value and by the report (:mod:`uda.report.runs`). What ran is recorded *resolved*: the
harmonizer's name, hyper-parameters and whether it could act at all, and per stage the plan the training step
followed (losses and trade-offs, trade-off before/after harmonization, what tau multiplies, the Gram scope and
its size, the update procedure). Two runs whose resolved settings differ in anything are different variants,
and the report never averages them together (:meth:`RunSummary.variant`).

``summary.json`` stays a flat object (results at the top level, as earlier runs wrote them), so the report
reads runs of every age; keys an older run lacks become ``None``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uda.record import SELECTIONS

#: the identity of a run: what was trained on what (everything else in summary.json is a result or provenance)
IDENTITY = ("dataset", "task", "source", "target", "baseline", "seed", "experiment", "recipe", "note", "output_dir")
#: keys written by :meth:`RunSummary.to_dict` that are neither identity nor results
DESCRIPTION = ("harmonizer", "harmonizer_name", "harmonizer_params", "harmonizer_noop", "plan", "engine")
PROVENANCE = ("git_commit", "versions")
#: the engine options that change the update without appearing in a stage plan
UPDATE_OPTIONS = ("clip_grad_norm",)


def _plain(value: Any) -> Any:
    """A JSON-friendly value: numbers, strings, booleans and None as they are, anything else as its str."""
    return value if isinstance(value, int | float | str | bool) or value is None else str(value)


@dataclass(frozen=True)
class RunSummary:
    """What ran (resolved) and what came out of one training run.

    Attributes:
        dataset, task, source, target, baseline, seed: what was trained on what.
        harmonizer_name: the harmonizer's config name (``harmonizer=``), e.g. ``ghpp``.
        harmonizer_params: its hyper-parameters (:meth:`uda.harmonizers.Harmonizer.hyperparameters`).
        harmonizer_noop: why the harmonizer changed nothing in this run, or "" when it acted.
        plan: the resolved plan of every stage (:meth:`uda.training.StagePlan.describe`), in stage order.
        engine: the engine options no stage plan carries (``clip_grad_norm``, ``monitor_every``,
            ``batched_grads``); the others are recorded resolved, per stage, in ``plan``.
        results: accuracies under each model selection (:data:`uda.record.SELECTIONS`), conflict rates,
            seconds per iteration, skipped steps, the iteration count.
        experiment, recipe: the experiment preset and the recipe applied (None when none was).
        note: a caveat printed with the numbers (e.g. a randomly initialized CLIP: "not a result").
        provenance: git commit and library versions.
        output_dir: the run directory.
    """

    dataset: str
    task: str
    source: str
    target: str
    baseline: str
    seed: int | None
    harmonizer_name: str
    harmonizer_params: Mapping[str, Any] = field(default_factory=dict)
    harmonizer_noop: str = ""
    plan: tuple[Mapping[str, Any], ...] = ()
    engine: Mapping[str, Any] = field(default_factory=dict)
    results: Mapping[str, Any] = field(default_factory=dict)
    experiment: str | None = None
    recipe: str | None = None
    note: str | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)
    output_dir: str | None = None

    # ---------------------------------------------------------------- reading
    @property
    def harmonizer_label(self) -> str:
        """``name(k=v, ...)``: the harmonizer and its hyper-parameters, e.g. ``ghpp(lam=0.5)``."""
        params = ", ".join(f"{k}={_plain(v)}" for k, v in self.harmonizer_params.items())
        return f"{self.harmonizer_name}({params})" if params else self.harmonizer_name

    def metric(self, key: str) -> float | None:
        """A numeric result by summary key (e.g. ``target_acc_last``), None when absent or not a number."""
        value = self.results.get(key)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    def selected(self, selection: str) -> float | None:
        """The target accuracy that model selection ``selection`` (``last``, ``best_target``, ...) reports."""
        return self.metric(SELECTIONS[selection].key)

    def variant(self) -> dict[str, Any]:
        """Every resolved setting that changes what is computed, as ``setting -> value`` (flat, sorted).

        Runs of the same dataset/task/baseline/harmonizer with different variants are different methods:
        e.g. ``stage main: tau_applies_to`` = ``all`` vs ``gram_params``, or another trade-off. Settings that
        only change how often diagnostics are measured (``monitor_every``) are not part of it.
        """
        out: dict[str, Any] = {}
        for k, v in self.harmonizer_params.items():
            out[f"harmonizer: {k}"] = _plain(v)
        many = len(self.plan) > 1
        for stage in self.plan:
            prefix = f"stage {stage.get('name', '?')}: " if many else ""
            for k, v in stage.items():
                if k == "name":
                    continue
                out[f"{prefix}{k}"] = json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else _plain(v)
        keys = UPDATE_OPTIONS if self.plan else tuple(self.engine)  # older runs: their unresolved options
        for k in keys:
            if k in self.engine:
                out[f"engine.{k}"] = _plain(self.engine[k])
        return dict(sorted(out.items()))

    # ---------------------------------------------------------------- writing
    def to_dict(self) -> dict[str, Any]:
        """The flat ``summary.json`` object (identity, harmonizer, plan, results at the top level, provenance)."""
        noop = f" (no-op: {self.harmonizer_noop})" if self.harmonizer_noop else ""
        out: dict[str, Any] = {
            "dataset": self.dataset,
            "task": self.task,
            "source": self.source,
            "target": self.target,
            "baseline": self.baseline,
            "harmonizer": self.harmonizer_label + noop,
            "harmonizer_name": self.harmonizer_name,
            "harmonizer_params": {k: _plain(v) for k, v in self.harmonizer_params.items()},
            "harmonizer_noop": self.harmonizer_noop,
            "experiment": self.experiment,
            "recipe": self.recipe,
            "note": self.note,
            "seed": self.seed,
            "plan": [dict(stage) for stage in self.plan],
            "engine": dict(self.engine),
            **self.results,
            "model_selection": {name: s.key for name, s in SELECTIONS.items()},
            **self.provenance,
            "output_dir": self.output_dir,
        }
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSummary:
        """Read a ``summary.json`` object, of this version or an older one (missing keys become defaults).

        Older runs wrote the harmonizer as one string such as ``"none (no-op: the baseline has one loss)"``
        and no plan; their name is ``harmonizer_name`` when present, else that string without the no-op
        note, and their engine options are taken as written.
        """
        text = str(data.get("harmonizer", "?"))
        # older runs: one string "label (no-op: why)"; without harmonizer_name the label is the name, kept
        # whole (it may carry the hyper-parameters, e.g. "ghpp(lam=0.5)"), so it is never merged with another
        label, sep, why = text.partition(" (no-op:")
        name = data.get("harmonizer_name") or label.strip() or "?"
        noop = data.get("harmonizer_noop")
        if noop is None:
            noop = why.strip().removesuffix(")").strip() if sep else ""
        params = data.get("harmonizer_params")
        known = set(IDENTITY) | set(DESCRIPTION) | set(PROVENANCE) | {"model_selection"}
        return cls(
            dataset=str(data.get("dataset", "?")),
            task=str(data.get("task", "?")),
            source=str(data.get("source", "?")),
            target=str(data.get("target", "?")),
            baseline=str(data.get("baseline", "?")),
            seed=data.get("seed"),
            harmonizer_name=str(name),
            harmonizer_params=dict(params) if isinstance(params, Mapping) else {},
            harmonizer_noop=str(noop),
            plan=tuple(dict(stage) for stage in data.get("plan") or ()),
            engine=dict(data.get("engine") or {}),
            results={k: v for k, v in data.items() if k not in known},
            experiment=data.get("experiment"),
            recipe=data.get("recipe"),
            note=data.get("note"),
            provenance={k: data[k] for k in PROVENANCE if k in data},
            output_dir=data.get("output_dir"),
        )

    def write(self, output_dir: str | Path) -> Path:
        """Write ``<output_dir>/summary.json``; returns its path."""
        path = Path(output_dir) / "summary.json"
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str))
        return path

    def wandb_config(self) -> dict[str, Any]:
        """What W&B's run config gets: the resolved description (harmonizer and per-stage plan)."""
        return {
            "resolved/harmonizer": self.harmonizer_label,
            "resolved/harmonizer_noop": self.harmonizer_noop,
            "resolved/plan": [dict(stage) for stage in self.plan],
            "resolved/recipe": self.recipe,
        }

    def wandb_summary(self) -> dict[str, Any]:
        """What W&B's run summary gets: the scalar results."""
        return {k: v for k, v in self.results.items() if not isinstance(v, dict | list)}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def format_summary(summary: RunSummary) -> str:
    """A short human-readable block; says which accuracy is last and which is the oracle best."""
    r = summary.results
    spi = r.get("sec_per_iter")
    measured = r.get("monitored_steps", 0)
    if measured:
        conflict = (
            f"{100 * r['conflict_rate']:.1f}% of {measured} measured steps before harmonization, "
            f"{100 * r['conflict_rate_after']:.1f}% after"
        )
    else:
        conflict = "not measured (nothing to harmonize, or engine.monitor_every=0)"
    best, source_val = SELECTIONS["best_target"], SELECTIONS["source_val"]
    noop = f" (no-op: {summary.harmonizer_noop})" if summary.harmonizer_noop else ""
    lines = [
        "─" * 64,
        f" dataset      {summary.dataset}  task {summary.task}",
        f" baseline     {summary.baseline}",
        f" harmonizer   {summary.harmonizer_label}{noop}",
        f" seed         {summary.seed}   iterations {r.get('iterations')}",
        f" target acc   last {_pct(summary.selected('last'))}"
        f"   (mean per class {_pct(r.get('target_acc_mean_class_last'))})",
        f"              best {_pct(summary.selected('best_target'))} at iteration {r.get(best.iteration_key)}"
        "   [oracle: selected with target labels]",
        f"              source_val {_pct(summary.selected('source_val'))} at iteration "
        f"{r.get(source_val.iteration_key)}   [selected by best source accuracy]",
        f" source acc   last {_pct(r.get('source_acc_last'))}",
        f" conflict     {conflict}",
        f" speed        {'n/a' if spi is None else f'{spi:.4f}'} s/iteration (training step only)",
        f" run dir      {summary.output_dir}",
        "─" * 64,
    ]
    if summary.note:  # e.g. a randomly initialized CLIP: the numbers above are not results
        lines.insert(-1, f" NOTE         {summary.note}")
    return "\n".join(lines)
