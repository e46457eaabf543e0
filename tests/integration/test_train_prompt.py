"""The CLIP prompt baselines through real Hydra composition and the real Lightning Trainer on the offline digits,
with the tiny random CLIP (every number is "not a result"): a few iterations each, harmonizers and bf16."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.conftest import QUICK
from uda.train import run

#: small batches keep each run to a few seconds (the tiny CLIP runs on 1x28x28 digits as 3x28x28)
FAST = (*QUICK, "backbone=clip_tiny", "dataset=offline_digits", "dataset.batch_size=8")
#: the analysis and gradient-diagnostics callbacks triple a run's CPU time; one run keeps them (prograd default)
LEAN = ("~callbacks.analysis", "~callbacks.gradient_diagnostics")


def metrics(output_dir: Path) -> list[dict[str, str]]:
    with open(output_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


#: the rest of the none / gh / ghpp x fp32 / bf16 table runs with `make test-slow` (a few CPU seconds each)
SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    ("baseline", "harmonizer", "precision"),
    [
        ("coop", "none", "bf16-mixed"),
        pytest.param("coop", "ghpp", "32-true", marks=SLOW),
        pytest.param("dapl", "none", "32-true", marks=SLOW),
        ("dapl", "gh", "32-true"),
        ("dapl", "ghpp", "bf16-mixed"),
        ("prograd", None, "32-true"),  # the baseline's default: prograd_paper (Eq. 4)
        pytest.param("prograd", "none", "32-true", marks=SLOW),
        pytest.param("prograd", "gh", "bf16-mixed", marks=SLOW),
        pytest.param("prograd", "ghpp", "32-true", marks=SLOW),
    ],
)
def test_prompt_baselines_train_with_every_harmonizer(train_cfg, tmp_path, baseline, harmonizer, precision) -> None:
    chosen = [f"harmonizer={harmonizer}"] if harmonizer else []
    callbacks = LEAN if harmonizer is not None else ()
    # bf16 autocast is emulated on CPU (slow): those runs stop after one evaluation period
    iterations = 2 if precision == "bf16-mixed" else 4
    cfg = train_cfg(
        f"baseline={baseline}", *chosen, f"trainer.precision={precision}", *FAST, *callbacks, f"iterations={iterations}"
    )
    summary = run(cfg).to_dict()
    assert summary["iterations"] == iterations and summary["baseline"] == baseline
    assert summary["note"].startswith("not a result: CLIP tiny is randomly initialized")
    assert 0.0 <= summary["target_acc_last"] <= 1.0
    rows = metrics(tmp_path)
    # one prediction only: no target/acc_<variant> besides the mean-class accuracy and the running best
    assert {k for k in rows[0] if k.startswith("target/acc_")} == {"target/acc_mean_class", "target/acc_best"}
    losses = {"coop": ["cls"], "dapl": ["target", "source"], "prograd": ["cls", "kl"]}[baseline]
    train_rows = [r for r in rows if r.get(f"train/{losses[0]}_loss")]
    assert len(train_rows) == iterations and all(r[f"train/{n}_loss"] for r in train_rows for n in losses)
    if baseline == "coop":
        assert "no-op" in summary["harmonizer"] and summary["monitored_steps"] == 0
    else:
        expected = {None: "prograd_paper", "none": "none", "gh": "gh", "ghpp": "ghpp"}[harmonizer]
        assert summary["harmonizer_name"] == expected
        # measured every step when harmonized, every engine.monitor_every=10 iterations (iteration 0) with none
        assert summary["monitored_steps"] == (1 if harmonizer == "none" else iterations)
    if baseline == "prograd" and harmonizer is None:
        assert summary["harmonizer"] == "prograd_paper(lam=1.0, keep_anchor=False)"  # the config name and its settings
        assert summary["pair_conflict_rate_after"] is not None
        # the default callbacks ran: the analysis hooked the per-image features of the prompt baseline
        assert any((tmp_path / "analysis").iterdir()) and any((tmp_path / "diagnostics").iterdir())


def test_zeroshot_clip_is_evaluated_once_without_training(train_cfg, tmp_path) -> None:
    summary = run(train_cfg("baseline=zeroshot_clip", *FAST, *LEAN)).to_dict()
    assert summary["iterations"] == 0 and summary["sec_per_iter"] is None
    assert summary["target_acc_last"] == summary["target_acc_best"] and summary["target_acc_best_iteration"] == 0
    assert summary["note"].startswith("not a result")
    assert [r for r in metrics(tmp_path) if r.get("target/acc")] and not any(
        k.startswith("train/") for r in metrics(tmp_path) for k, v in r.items() if v
    )


def test_prompt_baselines_refuse_a_backbone_without_text_tower(train_cfg) -> None:
    from uda.errors import ConfigError

    with pytest.raises(ConfigError, match=r"baseline=dapl prompts CLIP's text tower, but the backbone is LeNet"):
        run(train_cfg("baseline=dapl", "backbone=lenet", *QUICK))


def test_pga_trains_with_its_own_procedure_and_settings(train_cfg, tmp_path) -> None:
    summary = run(train_cfg("baseline=pga", "baseline.radius=0.01", "baseline.align=0.5", *FAST, *LEAN)).to_dict()
    (plan,) = summary["plan"]
    assert (plan["procedure"], plan["pga_radius"], plan["pga_align"]) == ("pga", 0.01, 0.5)
    assert summary["harmonizer_name"] == "none" and summary["monitored_steps"] == 4
    assert summary["note"].startswith("not a result")
    # the three official evaluations are logged at every evaluation; target/acc is the configured one (ensemble)
    evaluations = [r for r in metrics(tmp_path) if r.get("target/acc")]
    assert len(evaluations) == 2
    for row in evaluations:
        assert row["target/acc"] == row["target/acc_ensemble"]
        assert all(0.0 <= float(row[f"target/acc_{v}"]) <= 1.0 for v in ("ensemble", "source", "target"))


def test_pga_procedure_on_cdan_says_the_default_harmonizer_does_nothing(train_cfg) -> None:
    summary = run(train_cfg("baseline=cdan", "engine.procedure=pga", *QUICK, *LEAN)).to_dict()
    (plan,) = summary["plan"]
    assert (plan["procedure"], plan["pga_radius"], plan["pga_align"]) == ("pga", 3e-4, 1.0)
    assert summary["harmonizer_noop"] == "engine.procedure=pga shapes the update itself"
    assert summary["harmonizer"] == "ghpp(lam=0.5) (no-op: engine.procedure=pga shapes the update itself)"


def test_pga_stage_is_harmonizable_with_the_gradient_engine_under_bf16(train_cfg) -> None:
    overrides = ("engine.procedure=backprop", "harmonizer=ghpp", "trainer.precision=bf16-mixed", "iterations=2")
    summary = run(train_cfg("baseline=pga", *FAST, *LEAN, *overrides)).to_dict()
    assert summary["plan"][0]["procedure"] == "backprop" and "pga_radius" not in summary["plan"][0]
    assert summary["harmonizer_noop"] == "" and summary["monitored_steps"] == 2
