"""Shared fixtures: Hydra composition of the real configs, with outputs in a temporary directory."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# W&B never talks to a server from the tests, whatever the machine's credentials.
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")


def compose_train(overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose conf/train.yaml exactly as `python run.py <overrides>` would, writing into output_dir."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def train_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Factory: ``train_cfg("baseline=dann", ...)`` → composed config writing under tmp_path."""

    def make(*overrides: str) -> DictConfig:
        return compose_train(list(overrides), tmp_path)

    yield make
    GlobalHydra.instance().clear()


#: overrides that make a real training run take a couple of seconds
QUICK = (
    "iterations=4",
    "eval_every=2",
    "logger=csv",
    "~callbacks.model_checkpoint",
    "trainer.enable_checkpointing=false",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "dataset.eval_batch_size=1000",
)
