"""RunSummary: what summary.json says about a run, read back the same way, and runs that differ in any resolved
setting never averaged together in the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from uda.record import SELECTIONS
from uda.report import aggregate, collect
from uda.report.table import markdown_table
from uda.summary import RunSummary, format_summary

PLAN = {
    "name": "main",
    "losses": ["align", "cls"],
    "trade_offs": {"align": 1.0, "cls": 1.0},
    "harmonized_groups": [["align", "cls"]],
    "trade_off": "after",
    "tau_applies_to": "gram_params",
    "gram_scope": "official",
    "gram_params": 431080,
    "grad_space": "params",
    "procedure": "backprop",
}


def summary(**changes) -> RunSummary:
    fields = {
        "dataset": "offline_digits",
        "task": "mnist→uci",
        "source": "mnist",
        "target": "uci",
        "baseline": "cdan",
        "seed": 0,
        "harmonizer_name": "ghpp",
        "harmonizer_params": {"lam": 0.5},
        "plan": (PLAN,),
        "engine": {"clip_grad_norm": None, "monitor_every": 10},
        "results": {"target_acc_last": 0.9, "target_acc_best": 0.93, "target_acc_best_iteration": 40},
    }
    fields.update(changes)
    return RunSummary(**fields)


def test_summary_json_reads_back_into_the_same_summary() -> None:
    original = summary(harmonizer_noop="", recipe="digits_cdan", note="not a result", provenance={"git_commit": "abc"})
    data = json.loads(json.dumps(original.to_dict()))
    assert data["harmonizer"] == "ghpp(lam=0.5)" and data["plan"][0]["tau_applies_to"] == "gram_params"
    assert data["target_acc_last"] == 0.9  # results stay at the top level, as every earlier run wrote them
    assert data["model_selection"] == {name: s.key for name, s in SELECTIONS.items()}
    assert RunSummary.from_dict(data) == original


def test_selections_and_metrics_read_the_keys_defined_once() -> None:
    s = summary(results={"target_acc_last": 0.9, "target_acc_best": 0.95, "sec_per_iter": True})
    assert s.selected("last") == 0.9 and s.selected("best_target") == 0.95 and s.selected("source_val") is None
    assert s.metric("sec_per_iter") is None  # a boolean is not a measurement
    with pytest.raises(KeyError):
        s.selected("oracle")


def test_an_older_summary_keeps_its_label_and_no_op_reason() -> None:
    old = {
        "dataset": "d",
        "task": "t",
        "baseline": "source_only",
        "harmonizer": "none (no-op: the baseline has one loss)",
    }
    s = RunSummary.from_dict({**old, "engine": {"scope": "official", "tau_scope": None}, "target_acc_last": 0.5})
    assert (s.harmonizer_name, s.harmonizer_noop) == ("none", "the baseline has one loss")
    assert s.results == {"target_acc_last": 0.5}
    # an older run has no plan: its engine options, as written, are its variant
    assert s.variant() == {"engine.scope": "official", "engine.tau_scope": None}


def test_the_variant_has_every_resolved_setting_but_not_the_monitoring_cadence() -> None:
    variant = summary().variant()
    assert variant["harmonizer: lam"] == 0.5 and variant["tau_applies_to"] == "gram_params"
    assert variant["trade_offs"] == json.dumps({"align": 1.0, "cls": 1.0})
    assert variant["engine.clip_grad_norm"] is None and "engine.monitor_every" not in variant
    two_stages = summary(plan=({**PLAN, "name": "a"}, {**PLAN, "name": "b", "trade_off": "before"})).variant()
    assert two_stages["stage a: trade_off"] == "after" and two_stages["stage b: trade_off"] == "before"
    assert summary(engine={"monitor_every": 1, "clip_grad_norm": None}).variant() == variant


def test_format_summary_names_the_oracle_and_the_no_op() -> None:
    text = format_summary(summary(harmonizer_name="none", harmonizer_params={}, harmonizer_noop="one loss"))
    assert " harmonizer   none (no-op: one loss)" in text
    assert "best 93.00% at iteration 40   [oracle: selected with target labels]" in text


def write(root: Path, name: str, s: RunSummary) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "summary.json").write_text(json.dumps(s.to_dict()))


def test_runs_differing_in_one_resolved_option_are_two_rows_that_say_so(tmp_path: Path) -> None:
    for seed, (all_acc, gram_acc) in enumerate(((0.90, 0.80), (0.92, 0.82))):
        results = {"target_acc_last": all_acc}
        write(tmp_path, f"all{seed}", summary(seed=seed, plan=({**PLAN, "tau_applies_to": "all"},), results=results))
        write(tmp_path, f"gram{seed}", summary(seed=seed, results={"target_acc_last": gram_acc}))
    table = aggregate(collect(tmp_path), "last")
    assert len(table) == 2  # never one cell averaging 0.85
    lines = markdown_table(table).splitlines()
    assert lines[0].startswith("| task | baseline | harmonizer | settings (where runs differ) | target acc (last) |")
    assert "| mnist→uci | cdan | ghpp(lam=0.5) | tau_applies_to=all | 91.0 ± 1.4 |" in lines[2] + lines[3]
    assert "| mnist→uci | cdan | ghpp(lam=0.5) | tau_applies_to=gram_params | 81.0 ± 1.4 |" in lines[2] + lines[3]


def test_runs_with_one_variant_need_no_settings_column(tmp_path: Path) -> None:
    for seed in (0, 1):
        write(tmp_path, f"run{seed}", summary(seed=seed))
    table = aggregate(collect(tmp_path), "last")
    assert len(table) == 1 and "settings" not in markdown_table(table).splitlines()[0]
