"""Two-process CPU DDP run through Lightning's DDP strategy, recording what each rank saw and did.

Launched by ``test_ddp.py`` as ``python ddp_worker.py <out_dir> <grad_space>``; Lightning starts the
second rank by running the same command again. Each rank saves, for every iteration, its local batch,
the parameters before the step and the harmonizer's tau, plus its final parameters.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import lightning as L
import torch

from uda.baselines import DANN
from uda.data import OfflineDigits
from uda.harmonizers import GH
from uda.models import LeNet
from uda.module import EngineOptions, UDAModule

ITERATIONS = 4


class Recorder(L.Callback):
    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.records: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        (x_s, y_s), x_t = batch["source"], batch["target"]
        self.current = {
            "iteration": pl_module.iteration,
            "batch": (x_s.clone(), y_s.clone(), x_t.clone()),
            "params_before": {k: v.detach().clone() for k, v in pl_module.baseline.state_dict().items()},
        }

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.current["tau"] = pl_module.step_stats[0].stats.tau.clone()
        self.current["gram"] = pl_module.step_stats[0].stats.gram.clone()
        self.records.append(self.current)

    def on_train_end(self, trainer, pl_module) -> None:
        final = {k: v.detach().clone() for k, v in pl_module.baseline.state_dict().items()}
        torch.save(
            {"records": self.records, "final": final, "world_size": trainer.world_size},
            self.out_dir / f"rank{trainer.global_rank}.pt",
        )


def build_baseline() -> DANN:
    # no dropout: the single-process check must reproduce each rank's forward pass exactly
    return DANN(LeNet(dropout=0.0), num_classes=10, discriminator_hidden=64, discriminator_dropout=0.0)


def main(out_dir: Path, grad_space: str) -> None:
    L.seed_everything(0, verbose=False)
    datamodule = OfflineDigits("mnist", "uci", batch_size=16, eval_batch_size=500, iters_per_epoch=ITERATIONS)
    module = UDAModule(
        build_baseline(),
        GH(),
        optimizer=partial(torch.optim.SGD, lr=0.01, momentum=0.9),
        engine=EngineOptions(grad_space=grad_space),
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        callbacks=[Recorder(out_dir)],
    )
    trainer.fit(module, datamodule=datamodule)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
