"""`python run.py baseline=B dataset=D` composes to the official DAPL values (LeapLabTHU/DAPrompt) for dapl, and to
DAPL's data/optimizer settings with each method's own prompt settings for coop and prograd (no official UDA config)."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import compose_train
from uda.config import validate
from uda.optim import dassl_cosine_lr

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]

#: dataset -> (images of the default source domain, CLIP model, DAPL's class-specific context); an official epoch is
#: floor(images / 32) iterations (Dassl: TRAIN.COUNT_ITER train_x, drop_last) and a run is 25 epochs
CELLS = {
    "officehome": (2427, "RN50", False),  # Art
    "imageclef": (600, "RN50", False),  # Caltech
    "domainnet": (33525, "RN50", False),  # clipart, train split
    "visda2017": (152397, "RN101", True),  # Synthetic; DAPL's ep25-32-csc.yaml
    "office31": (2817, "RN50", False),  # amazon
}
PROMPT_CELLS = [("dapl", d) for d in CELLS] + [
    (b, d) for b in ("coop", "prograd") for d in ("officehome", "imageclef", "domainnet")
]


@pytest.mark.parametrize(("baseline", "dataset"), PROMPT_CELLS)
def test_prompt_recipe_composes_to_dapl_data_and_optimizer(tmp_path, baseline, dataset) -> None:
    images, model, _ = CELLS[dataset]
    cfg = compose_train([f"dataset={dataset}", f"baseline={baseline}"], tmp_path)
    validate(cfg)
    assert cfg.applied_recipe == f"{dataset}_{baseline}"
    assert (cfg.backbone._target_, cfg.backbone.model, cfg.backbone.pretrained) == (
        "uda.models.clip.ClipBackbone",
        model,
        "openai",
    )
    epoch = images // 32
    assert (cfg.iterations, cfg.eval_every) == (25 * epoch, epoch)
    opt = cfg.optimizer
    assert (opt._target_, opt.lr, opt.momentum, opt.weight_decay, opt.nesterov) == (
        "torch.optim.SGD",
        0.003,
        0.9,
        0.0005,
        False,
    )
    s = cfg.scheduler
    assert (s._target_, s.max_epoch, s.total_iterations, s.stepped_every) == (
        "uda.optim.dassl_cosine_lr",
        25,
        25 * epoch,
        "iteration",
    )
    assert (s.warmup_epochs, s.warmup, s.warmup_lr) == (1, "linear", 1e-5)
    assert cfg.dataset.batch_size == 32
    train, test = cfg.dataset.train_transform, cfg.dataset.test_transform
    assert (train.crop, train.size, train.hflip, list(train.mean)) == ("random_resized", 224, True, CLIP_MEAN)
    assert (test.crop, test.resize, test.hflip, list(test.mean)) == ("none", 224, False, CLIP_MEAN)
    assert cfg.baseline.n_ctx == 16 and not cfg.baseline.cache_image_features


@pytest.mark.parametrize("dataset", list(CELLS))
def test_dapl_recipe_has_the_official_prompt_settings(tmp_path, dataset) -> None:
    cfg = compose_train([f"dataset={dataset}", "baseline=dapl"], tmp_path)
    b = cfg.baseline
    assert (b.n_ctx, b.n_domain_ctx, b.class_specific) == (16, 16, CELLS[dataset][2])
    assert (b.temperature, b.threshold, b.trade_off, b.predict_with) == (1.0, 0.5, 1.0, "target")


@pytest.mark.parametrize("dataset", ["officehome", "imageclef", "domainnet"])
def test_coop_and_prograd_recipes_keep_their_own_prompt_settings(tmp_path, dataset) -> None:
    coop = compose_train([f"dataset={dataset}", "baseline=coop"], tmp_path).baseline
    assert (coop.init, coop.class_specific) == (None, False)
    cfg = compose_train([f"dataset={dataset}", "baseline=prograd"], tmp_path)
    assert (cfg.baseline.init, cfg.baseline.class_specific, cfg.baseline.temperature) == ("a photo of a", False, 1.0)
    assert (cfg.harmonizer._target_, cfg.harmonizer.lam, cfg.harmonizer.keep_anchor) == (
        "uda.harmonizers.ProGrad",
        1.0,
        False,
    )


def dassl_lrs(base_lr: float, max_epoch: int, iterations: int, per_step: int) -> list[float]:
    """The lr of each iteration under a transcription of Dassl's ``build_lr_scheduler`` (cosine, WARMUP_EPOCH 1,
    WARMUP_RECOUNT): torch's ``CosineAnnealingLR(T_max=max_epoch)`` as the successor of ``LinearWarmupScheduler``
    (min lr 1e-5 at step 0; at ``last_epoch >= 1`` it returns the successor's lr and steps the successor from then
    on), stepped after every ``per_step`` iterations (DAPL's trainer: 1; once per epoch: the epoch's length)."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=base_lr)
    successor = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(max_epoch))
    warmup_last_epoch, lrs = 0, []
    for i in range(iterations):
        lrs.append(1e-5 if warmup_last_epoch == 0 else successor.get_last_lr()[0])
        if (i + 1) % per_step == 0:
            if warmup_last_epoch >= 1:
                optimizer.step()  # (no gradient: only keeps torch's step-order check quiet)
                successor.step()
            warmup_last_epoch += 1
    return lrs


@pytest.mark.parametrize(("stepped_every", "per_step"), [("iteration", 1), ("epoch", 6)])
def test_dassl_cosine_matches_torch_cosine_inside_dassl_warmup(tmp_path, stepped_every, per_step) -> None:
    overrides = ["dataset=officehome", "baseline=dapl", "iterations=150", "eval_every=6"]
    cfg = compose_train([*overrides, f"scheduler.stepped_every={stepped_every}"], tmp_path)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = instantiate(cfg.optimizer)([param])
    scheduler = instantiate(cfg.scheduler)(optimizer)
    lrs = []
    for _ in range(150):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = dassl_lrs(0.003, 25, 150, per_step)
    assert lrs == pytest.approx(expected, rel=1e-9, abs=1e-12)
    if stepped_every == "iteration":  # DAPL's trainer: a cosine of period 2 x 25 iterations after one warm-up step
        assert lrs[0] == 1e-5 and lrs[1] == pytest.approx(0.003) and lrs[26] == pytest.approx(0.0, abs=1e-12)
        assert lrs[51] == pytest.approx(0.003)
    else:
        assert lrs[:6] == [1e-5] * 6 and lrs[6] == pytest.approx(0.003)
        assert lrs[12] == pytest.approx(0.003 * (1 + math.cos(math.pi / 25)) / 2)


def test_dassl_cosine_warmup_lr_is_absolute_in_every_group() -> None:
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [a], "lr": 0.01}, {"params": [b], "lr": 0.001}], lr=0.01)
    scheduler = dassl_cosine_lr(optimizer, max_epoch=4, total_iterations=8, stepped_every="epoch", warmup="constant")
    seen = []
    for _ in range(8):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert seen[0] == pytest.approx([1e-5, 1e-5]) and seen[1] == pytest.approx([1e-5, 1e-5])
    after_one_step = (1 + math.cos(math.pi / 4)) / 2
    assert seen[2] == pytest.approx([0.01, 0.001]) and seen[4] == pytest.approx(
        [0.01 * after_one_step, 0.001 * after_one_step]
    )
