"""Two-process CPU DDP runs of the prompt baselines on the tiny random CLIP, recording what each rank saw and did.

Launched by ``test_ddp_prompt.py`` as ``python ddp_prompt_worker.py <out_dir>``; Lightning starts the second rank by
running the same command again. Two runs share the launch: DAPL with GH (the gradient engine, tau on the shared
prompt) and PGA with its own procedure (``pga_backward``, every flat gradient through the DDP ``reduce`` hook). Each
rank saves, per iteration, its local batch and the prompt before the step, then the final prompt, in
``<out_dir>/<run>.rank<r>.pt``.
"""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path

import lightning as L
import torch

from uda.baselines.dapl import DAPL
from uda.baselines.pga import PGA
from uda.data import OfflineDigits
from uda.harmonizers import GH, NoHarmonizer
from uda.models.clip import ClipBackbone
from uda.module import UDAModule

ITERATIONS = 3
LR = 0.5  # large: the tiny random CLIP's prompt gradients are small, and the steps must move the prompt visibly
DIGITS = tuple(str(d) for d in range(10))
DOMAINS = ("mnist", "uci")
#: run name -> harmonizer; PGA's radius and align are large for the same reason as LR
RUNS = {"dapl_gh": GH, "pga": NoHarmonizer}
PGA_RADIUS, PGA_ALIGN = 0.05, 0.5


def build_baseline(run: str) -> DAPL | PGA:
    """The same model on every rank and in the replay: seeded CLIP, threshold 0 (the random CLIP is never confident,
    and with every target sample kept, the mean of the ranks' losses is the global batch's loss)."""
    torch.manual_seed(0)
    clip = ClipBackbone("tiny", pretrained=None)
    common = {"dataset_class_names": DIGITS, "dataset_domains": DOMAINS, "n_ctx": 4, "n_domain_ctx": 2}
    if run == "dapl_gh":
        return DAPL(clip, 10, threshold=0.0, **common)
    return PGA(clip, 10, threshold=0.0, pseudo_labels="online", radius=PGA_RADIUS, align=PGA_ALIGN, **common)


def record_path(out_dir: Path, run: str, rank: int) -> Path:
    return out_dir / f"{run}.rank{rank}.pt"


def prompt_state(module: UDAModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.baseline.prompt.state_dict().items()}


class Recorder(L.Callback):
    def __init__(self, out_dir: Path, run: str) -> None:
        self.out_dir, self.run, self.records = out_dir, run, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        (x_s, y_s), x_t = batch["source"], batch["target"]
        self.records.append({"batch": (x_s.clone(), y_s.clone(), x_t.clone()), "before": prompt_state(pl_module)})

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save(
            {"records": self.records, "final": prompt_state(pl_module), "world_size": trainer.world_size},
            record_path(self.out_dir, self.run, trainer.global_rank),
        )


def train(out_dir: Path, run: str) -> None:
    L.seed_everything(0, verbose=False)
    datamodule = OfflineDigits("mnist", "uci", batch_size=4, eval_batch_size=500, iters_per_epoch=ITERATIONS)
    module = UDAModule(build_baseline(run), RUNS[run](), optimizer=partial(torch.optim.SGD, lr=LR))
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
        callbacks=[Recorder(out_dir, run)],
    )
    trainer.fit(module, datamodule=datamodule)


if __name__ == "__main__":
    if os.environ.get("UDA_TEST_DROP_ALLREDUCE") == "1":  # a hand check that the test fails without the all-reduce
        import uda.module

        uda.module.all_reduce_mean = lambda flat: flat
    for name in RUNS:  # one process group: the second Trainer reuses the started ranks
        train(Path(sys.argv[1]), name)
