"""UDAModule's use of the engine options, on one stage, without a Trainer."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from uda.baselines import CDAN, UDABatch
from uda.errors import ConfigError
from uda.harmonizers import GH, GHPP, NoHarmonizer
from uda.models import LeNet
from uda.module import EngineOptions, UDAModule


def module(harmonizer=None, **engine) -> UDAModule:
    torch.manual_seed(0)
    baseline = CDAN(LeNet(), num_classes=10, discriminator_hidden=32)
    m = UDAModule(
        baseline, harmonizer or GH(), optimizer=partial(torch.optim.SGD, lr=0.01), engine=EngineOptions(**engine)
    )
    m.manual_backward = lambda loss: loss.backward()  # no Trainer attached
    m.configure_optimizers()
    return m


def one_step(m: UDAModule):
    gen = torch.Generator().manual_seed(1)
    batch = UDABatch(
        torch.randn(8, 1, 28, 28, generator=gen),
        torch.randint(0, 10, (8,), generator=gen),
        torch.randn(8, 1, 28, 28, generator=gen),
    )
    m.iteration = 3
    stage = m.baseline.stages[0]
    with torch.random.fork_rng():
        torch.manual_seed(2)
        out = m.baseline.compute_losses("main", batch, m.iteration)
    stats = m._backward(stage, out.losses, out.features)
    grads = {n: p.grad.clone() for n, p in m.baseline.named_parameters()}
    return stats, grads


def test_tau_scope_defaults_to_the_stage_and_can_be_overridden() -> None:
    stats, default = one_step(module())
    _, official = one_step(module(tau_scope="all"))
    _, plain = one_step(module(NoHarmonizer()))
    tau1 = stats[0].stats.tau[0]
    assert tau1 > 1
    for name in default:
        if name.startswith("discriminator"):
            torch.testing.assert_close(default[name], plain[name])  # CDAN default: discriminator untouched
            torch.testing.assert_close(official[name], tau1 * plain[name])  # official: scaled by tau1


def test_upweight_makes_the_named_loss_play_one() -> None:
    stats, _ = one_step(module(GHPP(0.5)))
    assert stats[0].names == ("align", "cls")
    tau = stats[0].stats.tau  # GH++ favours loss "1": the alignment loss in the official order
    assert tau[0] > 1 > tau[1]
    swapped, _ = one_step(module(GHPP(0.5), upweight="cls"))
    assert swapped[0].names == ("cls", "align")
    names = ("align", "cls")
    tau_by_name = dict(zip(names, swapped[0].stats.tau.tolist(), strict=True))
    assert tau_by_name["cls"] > 1 > tau_by_name["align"]


def test_upweight_of_an_unknown_loss_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="engine.upweight='domain' is not a harmonized loss of cdan; choose one of"):
        module(upweight="domain")


def test_weighted_override_changes_what_the_harmonizer_sees() -> None:
    m = module()
    m.baseline._stages = (
        m.baseline.stages[0].__class__(
            "main", coefs={"align": 0.1, "cls": 1.0}, harmonize=(("align", "cls"),), tau_scope="gram"
        ),
    )
    official, _ = one_step(m)
    m2 = module(weighted=True)
    m2.baseline._stages = m.baseline._stages
    weighted, _ = one_step(m2)
    assert not official[0].stats.weighted and weighted[0].stats.weighted
    assert not torch.allclose(official[0].stats.tau, weighted[0].stats.tau)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("scope", "everything", "engine.scope='everything' is unknown"),
        ("tau_scope", "heads", "engine.tau_scope='heads' is unknown"),
        ("grad_space", "logits", "engine.grad_space='logits' is unknown"),
        ("monitor_every", -1, "engine.monitor_every must be >= 0"),
        ("clip_grad_norm", 0.0, "engine.clip_grad_norm must be positive"),
    ],
)
def test_bad_engine_options_are_one_sentence(field, value, message) -> None:
    with pytest.raises(ConfigError, match=message):
        EngineOptions(**{field: value})


def test_harmonizer_state_and_counters_survive_a_checkpoint() -> None:
    m = module()
    m.iteration = 7
    m.conflict_counts += torch.tensor([4.0, 2.0, 0.0, 1.0], dtype=torch.float64)
    m.history = [{"iteration": 7, "target/acc": 0.5}]
    ckpt: dict = {}
    m.on_save_checkpoint(ckpt)
    restored = module()
    restored.on_load_checkpoint(ckpt)
    assert restored.iteration == 7 and restored.history == m.history
    assert restored.conflict_counts.tolist() == [4.0, 2.0, 0.0, 1.0]
    assert restored.results()["conflict_rate"] == 0.5


def test_results_report_the_selected_evaluations_and_the_counted_rates() -> None:
    m = module()
    m.history = [
        {"iteration": 2, "target/acc": 0.4, "source/acc": 0.9},
        {"iteration": 4, "target/acc": 0.7, "source/acc": 0.6},
        {"iteration": 6, "target/acc": 0.5, "source/acc": 0.8},
    ]
    m.conflict_counts += torch.tensor([4.0, 3.0, 1.0, 2.0], dtype=torch.float64)
    out = m.results()
    assert (out["target_acc_last"], out["source_acc_last"]) == (0.5, 0.8)
    assert (out["target_acc_best"], out["target_acc_best_iteration"]) == (0.7, 4)
    assert (out["target_acc_source_val"], out["source_val_iteration"], out["source_acc_best"]) == (0.4, 2, 0.9)
    assert out["monitored_steps"] == 4 and out["conflict_rate"] == 0.75
    assert out["conflict_rate_after"] == 0.25 and out["pair_conflict_rate_after"] == 0.5
