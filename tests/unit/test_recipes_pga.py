"""`python run.py baseline=pga dataset=D` composes to the official PGA recipe (LA/main.py) of D."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import compose_train
from uda.config import validate

#: (dataset, CLIP model, iterations, radius, align, trade-off) of the official LA runs (args_update + logged runs)
OFFICIAL = [
    ("officehome", "RN50", 1000, 3e-4, 1.0, 0.3),
    ("imageclef", "RN50", 400, 3e-4, 10.0, 0.5),
    ("domainnet", "RN101", 4000, 1e-3, 10.0, 0.5),
]


@pytest.mark.parametrize(("dataset", "model", "iterations", "radius", "align", "trade_off"), OFFICIAL)
def test_pga_composes_to_the_official_recipe(tmp_path, dataset, model, iterations, radius, align, trade_off) -> None:
    cfg = compose_train([f"dataset={dataset}", "baseline=pga"], tmp_path)
    validate(cfg)
    assert cfg.applied_recipe == f"{dataset}_pga"
    assert cfg.backbone._target_ == "uda.models.clip.ClipBackbone"
    assert (cfg.backbone.model, cfg.backbone.pretrained) == (model, "openai")
    assert cfg.iterations == iterations and iterations % cfg.eval_every == 0
    assert cfg.optimizer._target_ == "torch.optim.AdamW" and cfg.optimizer.lr == 0.003
    assert cfg.dataset.batch_size == 30
    b = cfg.baseline
    assert (b.radius, b.align, b.trade_off, b.pseudo_labels, b.threshold) == (radius, align, trade_off, "fixed", 0.4)
    assert (b.n_ctx, b.n_domain_ctx, b.class_specific, b.predict_with) == (16, 16, True, "ensemble")
    assert cfg.harmonizer._target_ == "uda.harmonizers.NoHarmonizer"
    # no augmentation (official: CLIP's preprocessing), so the frozen features are cached
    assert not cfg.dataset.train_transform.hflip and cfg.dataset.train_transform.crop == "none"
    assert b.cache_image_features


def test_the_schedule_is_a_cosine_stepped_every_twentieth_of_the_run(tmp_path) -> None:
    cfg = compose_train(["dataset=officehome", "baseline=pga"], tmp_path)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = instantiate(cfg.optimizer)([param])
    scheduler = instantiate(cfg.scheduler)(optimizer)
    lrs = []
    for _ in range(1000):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # official LA/main.py: CosineAnnealingLR(T_max=1000).step() after steps 50, 100, ...: k steps taken by then
    expected = [0.003 * (1 + math.cos(math.pi * (i // 50) / 1000)) / 2 for i in range(1000)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert len(set(lrs)) == 20


def test_explicit_values_win_over_the_pga_recipe(tmp_path) -> None:
    overrides = ["dataset=officehome", "baseline=pga", "baseline.radius=0.01", "iterations=8", "eval_every=4"]
    cfg = compose_train([*overrides, "backbone=clip_tiny", "optimizer=sgd", "scheduler=constant"], tmp_path)
    assert (cfg.baseline.radius, cfg.iterations, cfg.backbone.model) == (0.01, 8, "tiny")
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.baseline.align == 1.0
