"""Stage plans and run_stage with the engine options (plain PyTorch), and the module's summary values."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import pytest
import torch

from uda.baselines import CDAN, UDABatch
from uda.callbacks import RunRecord
from uda.errors import ConfigError, DivergenceError
from uda.harmonizers import GH, GHPP, NoHarmonizer
from uda.models import LeNet
from uda.module import UDAModule
from uda.training import EngineOptions, StagePlan, resolve_plans, run_stage


def cdan() -> CDAN:
    torch.manual_seed(0)
    return CDAN(LeNet(), num_classes=10, discriminator_hidden=32)


def batch() -> UDABatch:
    gen = torch.Generator().manual_seed(1)
    return UDABatch(
        torch.randn(8, 1, 28, 28, generator=gen),
        torch.randint(0, 10, (8,), generator=gen),
        torch.randn(8, 1, 28, 28, generator=gen),
    )


def one_step(harmonizer=None, plan_change=None, **engine):
    """One run_stage of CDAN's stage at iteration 3; returns the step's stats and the gradients it wrote."""
    baseline, harmonizer = cdan(), harmonizer or GH()
    plan = resolve_plans(baseline, harmonizer, EngineOptions(**engine))["main"]
    plan = plan_change(plan) if plan_change else plan
    optimizer = torch.optim.SGD(baseline.parameters(), lr=0.0)  # lr 0: .grad is what the test reads
    stage = baseline.stage("main")
    with torch.random.fork_rng():
        torch.manual_seed(2)
        result = run_stage(plan, partial(stage.loss_fn, batch(), 3), [optimizer], [harmonizer], iteration=3)
    return result.stats, {n: p.grad.clone() for n, p in baseline.named_parameters()}


def test_tau_applies_to_defaults_to_the_stage_and_can_be_overridden() -> None:
    stats, default = one_step()
    _, official = one_step(tau_applies_to="all")
    _, plain = one_step(NoHarmonizer())
    tau1 = stats[0].stats.tau[0]
    assert tau1 > 1
    for name in default:
        if name.startswith("discriminator"):
            torch.testing.assert_close(default[name], plain[name])  # CDAN default: discriminator untouched
            torch.testing.assert_close(official[name], tau1 * plain[name])  # official: scaled by tau1


def test_first_loss_makes_the_named_loss_play_one() -> None:
    stats, _ = one_step(GHPP(0.5))
    assert stats[0].names == ("align", "cls")
    tau = stats[0].stats.tau  # GH++ favours loss "1": the alignment loss in the official order
    assert tau[0] > 1 > tau[1]
    swapped, _ = one_step(GHPP(0.5), first_loss="cls")
    assert swapped[0].names == ("cls", "align")
    tau_by_name = dict(zip(("align", "cls"), swapped[0].stats.tau.tolist(), strict=True))
    assert tau_by_name["cls"] > 1 > tau_by_name["align"]


def test_first_loss_of_an_unknown_loss_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="engine.first_loss='domain' is not a harmonized loss of cdan; choose one of"):
        resolve_plans(cdan(), GH(), EngineOptions(first_loss="domain"))


def test_trade_off_placement_changes_what_the_harmonizer_sees() -> None:
    small_align = partial(replace, trade_offs=(0.1, 1.0))
    after, _ = one_step(plan_change=small_align)
    before, _ = one_step(plan_change=small_align, trade_off="before")
    assert not after[0].stats.trade_off_before and before[0].stats.trade_off_before
    assert not torch.allclose(after[0].stats.tau, before[0].stats.tau)


def test_the_plan_says_what_the_step_does() -> None:
    plan = resolve_plans(cdan(), GH(), EngineOptions())["main"]
    assert isinstance(plan, StagePlan) and plan.loss_names == ("align", "cls") and plan.groups == ((0, 1),)
    assert (plan.trade_off, plan.tau_applies_to, plan.procedure) == ("after", "gram_params", "backprop")
    assert plan.measure_every == 1  # a harmonizer that acts measures every step
    assert resolve_plans(cdan(), NoHarmonizer(), EngineOptions(monitor_every=4))["main"].measure_every == 4
    described = plan.describe()
    assert described["harmonized_groups"] == [["align", "cls"]] and described["trade_offs"] == {
        "align": 1.0,
        "cls": 1.0,
    }
    assert described["gram_params"] == sum(p.numel() for n, p in cdan().named_parameters() if "discriminator" not in n)


def test_a_diverged_loss_stops_the_stage_with_one_sentence() -> None:
    baseline = cdan()
    plan = resolve_plans(baseline, GH(), EngineOptions())["main"]
    nan_batch = batch()._replace(x_target=torch.full((8, 1, 28, 28), float("nan")))
    loss_fn = partial(baseline.stage("main").loss_fn, nan_batch, 5)
    optimizer = torch.optim.SGD(baseline.parameters(), lr=0.02)
    with pytest.raises(DivergenceError, match=r"the align loss became nan at iteration 5 \(stage 'main'\); lower"):
        run_stage(plan, loss_fn, [optimizer], [GH()], iteration=5)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("gram_scope", "everything", "engine.gram_scope='everything' is unknown"),
        ("tau_applies_to", "heads", "engine.tau_applies_to='heads' is unknown"),
        ("trade_off", "during", "engine.trade_off='during' is unknown"),
        ("grad_space", "logits", "engine.grad_space='logits' is unknown"),
        ("procedure", "sam", "engine.procedure='sam' is unknown; choose one of: backprop"),
        ("monitor_every", -1, "engine.monitor_every must be >= 0"),
        ("clip_grad_norm", 0.0, "engine.clip_grad_norm must be positive"),
    ],
)
def test_bad_engine_options_are_one_sentence(field, value, message) -> None:
    with pytest.raises(ConfigError, match=message):
        EngineOptions(**{field: value})


def module() -> UDAModule:
    return UDAModule(cdan(), GH(), optimizer=partial(torch.optim.SGD, lr=0.01))


def test_harmonizer_state_and_counters_survive_a_checkpoint() -> None:
    m = module()
    m.iteration = 7
    m.record.conflict_counts += torch.tensor([4.0, 2.0, 0.0, 1.0], dtype=torch.float64)
    m.record.history = [{"iteration": 7, "target/acc": 0.5}]
    ckpt: dict = {}
    m.on_save_checkpoint(ckpt)
    record_state = m.record.state_dict()
    restored = module()
    restored.on_load_checkpoint(ckpt)
    restored.record.load_state_dict(record_state)
    assert restored.iteration == 7 and restored.record.history == m.record.history
    assert restored.record.conflict_counts.tolist() == [4.0, 2.0, 0.0, 1.0]
    assert restored.results()["conflict_rate"] == 0.5


def test_results_report_the_selected_evaluations_and_the_counted_rates() -> None:
    m = module()
    assert isinstance(m.record, RunRecord) and m.configure_callbacks() == [m.record]
    m.record.history = [
        {"iteration": 2, "target/acc": 0.4, "source/acc": 0.9},
        {"iteration": 4, "target/acc": 0.7, "source/acc": 0.6},
        {"iteration": 6, "target/acc": 0.5, "source/acc": 0.8},
    ]
    m.record.conflict_counts += torch.tensor([4.0, 3.0, 1.0, 2.0], dtype=torch.float64)
    out = m.results()
    assert (out["target_acc_last"], out["source_acc_last"]) == (0.5, 0.8)
    assert (out["target_acc_best"], out["target_acc_best_iteration"]) == (0.7, 4)
    assert (out["target_acc_source_val"], out["source_val_iteration"], out["source_acc_best"]) == (0.4, 2, 0.9)
    assert out["monitored_steps"] == 4 and out["conflict_rate"] == 0.75
    assert out["conflict_rate_after"] == 0.25 and out["pair_conflict_rate_after"] == 0.5
    assert out["engine"]["gram_scope"] == "official" and "procedure" in out["engine"]
