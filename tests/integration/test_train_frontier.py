"""The 2023-2026 frontier harmonizers train through the real Trainer on the offline digits (a few iterations)."""

from __future__ import annotations

from typing import Any, ClassVar

import lightning as L
import pytest
import torch
import yaml
from hydra.utils import get_class

from tests.conftest import CONF, QUICK
from uda.train import run

NEW = ["upgrad", "dualproj", "fairgrad", "config", "config_momentum", "famo", "dbmtl"]
#: QUICK without callbacks (the plots and analysis dominate so short a run), two iterations, one evaluation
FAST = [o for o in QUICK if not o.startswith(("~callbacks", "iterations=", "eval_every="))] + [
    "iterations=2",
    "eval_every=2",
    "callbacks=none",
    "+callbacks.probe._target_=tests.integration.test_train_frontier.WeightProbe",
]


class WeightProbe(L.Callback):
    """Keeps the weights of every harmonized step and the per-group harmonizer states at the end."""

    steps: ClassVar[list[Any]] = []
    states: ClassVar[dict[str, list[dict[str, Any]]]] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        WeightProbe.steps, WeightProbe.states = [], {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        WeightProbe.steps.extend(item for item in pl_module.step_stats)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        WeightProbe.states = {s: [h.state_dict() for h in hs] for s, hs in pl_module.group_harmonizers.items()}


def harmonizer_class(name: str) -> type:
    return get_class(yaml.safe_load((CONF / "harmonizer" / f"{name}.yaml").read_text())["_target_"])


@pytest.mark.parametrize("harmonizer", NEW)
def test_frontier_harmonizer_trains_cdan(train_cfg, harmonizer: str) -> None:
    """CDAN+E (one harmonized pair); MCD's runs are the slowest, its checks are `run.py baseline=mcd ...`."""
    cls = harmonizer_class(harmonizer)
    summary = run(train_cfg("baseline=cdan", f"harmonizer={harmonizer}", *FAST)).to_dict()

    assert summary["iterations"] == 2 and summary["harmonizer_name"] == cls.name
    assert 0.0 <= summary["target_acc_last"] <= 1.0
    steps = [item for item in WeightProbe.steps if item.names == ("align", "cls")]
    assert len(steps) == 2 and summary["monitored_steps"] == 2
    taus = [item.stats.tau for item in steps]
    assert all(torch.isfinite(t).all() for t in taus)
    # the weights are the method's own, not the plain-sum fallback, once both gradients are non-zero
    # (CDAN's GRL coefficient is 0 at iteration 0, so the alignment gradient over the backbone is 0 there)
    assert any(not torch.equal(t, torch.ones_like(t)) for t in taus[1:])
    if cls.conflict_free != "no":  # every group here is a pair
        assert summary["conflict_rate_after"] == 0.0
    assert all(bool(state) == cls.stateful for states in WeightProbe.states.values() for state in states)
