"""A stateful harmonizer keeps one state per harmonized group, and a harmonizer never acts as a silent no-op."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch

from uda.baselines import GVB, MCD
from uda.data import OfflineDigits
from uda.errors import ConfigError
from uda.harmonizers import GHPP, GradVac
from uda.models import LeNet
from uda.module import UDAModule
from uda.training import EngineOptions

BETA = 0.5


class CosineRecorder(L.Callback):
    """cos(g1, g2) of every harmonized group at every step, as the engine measured it."""

    def __init__(self) -> None:
        self.cosines: dict[tuple[str, int], list[float]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for item in pl_module.step_stats:
            i, j = item.stats.groups[item.group][:2]
            usable = bool((torch.diagonal(item.stats.gram) > 0).all())
            if usable:
                self.cosines.setdefault((item.stage, item.group), []).append(float(item.stats.cos(i, j)))


def train_gvb(iterations: int) -> tuple[UDAModule, CosineRecorder]:
    L.seed_everything(0, verbose=False)
    torch.manual_seed(0)
    baseline = GVB(LeNet(), num_classes=10, discriminator_hidden=32)
    module = UDAModule(baseline, GradVac(beta=BETA), optimizer=partial(torch.optim.SGD, lr=0.01))
    recorder = CosineRecorder()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
    )
    datamodule = OfflineDigits(source="mnist", target="uci", batch_size=16, iters_per_epoch=iterations, seed=0)
    trainer.fit(module, datamodule=datamodule)
    return module, recorder


def test_gradvac_keeps_one_ema_target_per_harmonized_pair_of_gvb() -> None:
    module, recorder = train_gvb(iterations=3)
    harmonizers = module.group_harmonizers["main"]
    assert len(harmonizers) == 2 and harmonizers[0] is not harmonizers[1]
    for group, harmonizer in enumerate(harmonizers):
        cosines = recorder.cosines[("main", group)]
        assert len(cosines) >= 2  # steps with a zero gradient (GRL coefficient 0 at first) leave the state
        # GradVac with two losses: φ_T(0, 1) is the EMA of this pair's own cos(g1, g2), from φ_T = 0
        expected = 0.0
        for phi in cosines:
            expected = (1 - BETA) * expected + BETA * phi
        assert harmonizer.target[0, 1].item() == pytest.approx(expected, rel=1e-6, abs=1e-9)
    # the two pairs measured different geometry, so a shared state would have matched neither
    assert recorder.cosines[("main", 0)] != recorder.cosines[("main", 1)]

    # and each group's state travels through the checkpoint
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    fresh = UDAModule(GVB(LeNet(), 10, discriminator_hidden=32), GradVac(beta=BETA), optimizer=torch.optim.SGD)
    fresh.on_load_checkpoint(checkpoint)
    for restored, original in zip(fresh.group_harmonizers["main"], harmonizers, strict=True):
        assert torch.equal(restored.target, original.target)


@pytest.mark.parametrize(
    "engine",
    [{"tau_applies_to": "gram_params"}, {"tau_applies_to": "gram_params", "grad_space": "features"}],
    ids=["gram-scope", "features-gram"],
)
def test_a_harmonizer_that_would_act_on_nothing_is_refused(engine: dict) -> None:
    """MCD's step B steps the classifiers while the Gram matrix is over the generator: with tau applied
    to the Gram scope only, GH++ would multiply nothing that step updates."""
    baseline = MCD(LeNet(), num_classes=10, hidden=32)
    with pytest.raises(ConfigError, match=r"stage 'maximize' steps no parameter .* so ghpp would change nothing"):
        UDAModule(baseline, GHPP(0.5), optimizer=torch.optim.SGD, engine=EngineOptions(**engine))
    # the official placement (tau on every gradient of the stage) is accepted
    UDAModule(baseline, GHPP(0.5), optimizer=torch.optim.SGD, engine=EngineOptions(tau_applies_to="all"))
