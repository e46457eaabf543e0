"""Two-process CPU DDP runs through Lightning's DDP strategy, recording what each rank saw and did.

Launched by ``test_ddp.py`` as ``python ddp_worker.py <out_dir> <grad_space> <harmonizer> [<harmonizer> ...]``;
Lightning starts the second rank by running the same command again. The harmonizers (names of
``conf/harmonizer/<name>.yaml``) are trained one after another in this one launch, each from the same
initial weights and data. For every iteration each rank saves its local batch, the parameters before the
step, the Gram matrix and tau of the harmonized pair; then its final parameters, in
``<out_dir>/<harmonizer>.rank<r>.pt``.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from uda.baselines import DANN
from uda.data import OfflineDigits
from uda.harmonizers import Harmonizer
from uda.models import LeNet, WarmStartSchedule
from uda.module import UDAModule
from uda.training import EngineOptions

ITERATIONS = 4
LR, MOMENTUM = 0.01, 0.9
HARMONIZER_CONF = Path(__file__).resolve().parents[2] / "conf" / "harmonizer"


def build_harmonizer(name: str) -> Harmonizer:
    """The harmonizer of ``conf/harmonizer/<name>.yaml``, as ``harmonizer=<name>`` builds it."""
    return instantiate(OmegaConf.load(HARMONIZER_CONF / f"{name}.yaml"))


def build_baseline() -> DANN:
    # no dropout: the single-process check must reproduce each rank's forward pass exactly; a GRL that
    # warms up within the run, so the alignment gradient is large enough to conflict with the classifier's
    return DANN(
        LeNet(dropout=0.0),
        num_classes=10,
        discriminator_hidden=64,
        discriminator_dropout=0.0,
        grl=WarmStartSchedule(max_iter=40),
    )


def record_path(out_dir: Path, harmonizer: str, rank: int) -> Path:
    return out_dir / f"{harmonizer}.rank{rank}.pt"


class Recorder(L.Callback):
    def __init__(self, out_dir: Path, harmonizer: str) -> None:
        self.out_dir = out_dir
        self.harmonizer = harmonizer
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
            record_path(self.out_dir, self.harmonizer, trainer.global_rank),
        )


def train(out_dir: Path, grad_space: str, harmonizer: str) -> None:
    L.seed_everything(0, verbose=False)
    datamodule = OfflineDigits("mnist", "uci", batch_size=16, eval_batch_size=500, iters_per_epoch=ITERATIONS)
    module = UDAModule(
        build_baseline(),
        build_harmonizer(harmonizer),
        optimizer=partial(torch.optim.SGD, lr=LR, momentum=MOMENTUM),
        engine=EngineOptions(grad_space=grad_space),
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        callbacks=[Recorder(out_dir, harmonizer)],
    )
    trainer.fit(module, datamodule=datamodule)


def main(out_dir: Path, grad_space: str, harmonizers: list[str]) -> None:
    # one process group for all of them: the second Trainer finds the ranks started and reuses them
    for harmonizer in harmonizers:
        train(out_dir, grad_space, harmonizer)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])
