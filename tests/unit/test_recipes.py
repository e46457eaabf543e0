"""`python run.py baseline=B dataset=D` composes to the paper recipe of B on D; explicit values win."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import CONF, compose_train
from uda.config import recipe_notice, validate
from uda.errors import ConfigError
from uda.models import DTN, LeNet
from uda.models.input_check import check_backbone_takes

DATASETS = sorted(p.stem for p in (CONF / "dataset").glob("*.yaml"))
CLASSIC_BASELINES = ("source_only", "dann", "cdan", "mcd", "gvb", "dwl", "ssrt")
RECIPES = sorted(p.stem for p in (CONF / "recipe").glob("*.yaml"))


def leaves(node, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in node.items():
        path = f"{prefix}{key}"
        out.update(leaves(value, path + ".") if isinstance(value, dict) else {path: value})
    return out


def recipe_values(name: str) -> dict[str, object]:
    return leaves(OmegaConf.to_container(OmegaConf.load(CONF / "recipe" / f"{name}.yaml")))


def backbone_recipe(name: str) -> str:
    """The backbone option a conf/backbone/<name>.yaml selects through its defaults list."""
    return OmegaConf.load(CONF / "backbone" / f"{name}.yaml").defaults[0]


def test_every_dataset_names_its_recipe_backbones() -> None:
    for dataset in DATASETS:
        assert (CONF / "backbone" / f"for_{dataset}.yaml").is_file(), dataset
        assert (CONF / "backbone" / f"vit_for_{dataset}.yaml").is_file(), dataset


def test_every_recipe_is_a_dataset_baseline_pair_that_exists() -> None:
    baselines = {p.stem for p in (CONF / "baseline").glob("*.yaml")}
    for name in RECIPES:
        assert any(name == f"{d}_{b}" for d in DATASETS for b in baselines), name
        assert recipe_values(name)["applied_recipe"] == name


@pytest.mark.parametrize("dataset", DATASETS)
def test_each_dataset_and_baseline_composes_to_its_recipe(dataset: str, tmp_path) -> None:
    for baseline in CLASSIC_BASELINES:
        name = f"{dataset}_{baseline}"
        cfg = compose_train([f"dataset={dataset}", f"baseline={baseline}"], tmp_path)
        validate(cfg)
        composed = leaves(OmegaConf.to_container(cfg, resolve=False))
        if name in RECIPES:
            for key, value in recipe_values(name).items():
                assert composed[key] == value, f"{name}: {key}"
            assert recipe_notice(cfg, {"dataset": dataset, "baseline": baseline}) is None
        elif dataset != "offline_digits":
            notice = recipe_notice(cfg, {"dataset": dataset, "baseline": baseline})
            assert notice.startswith(f"no paper recipe for baseline={baseline} on dataset={dataset}")
        family = "vit_for" if baseline == "ssrt" else "for"
        expected = OmegaConf.load(CONF / "backbone" / f"{backbone_recipe(f'{family}_{dataset}')}.yaml")
        assert cfg.backbone._target_ == expected._target_, name
        if "name" in expected:
            assert cfg.backbone.name == expected.name, name


def test_office_recipes_train_pretrained_imagenet_backbones(tmp_path) -> None:
    cfg = compose_train(["dataset=officehome", "baseline=cdan", "harmonizer=ghpp"], tmp_path)
    assert cfg.backbone.name == "resnet50.tv_in1k" and cfg.backbone.pretrained
    assert cfg.iterations == 8000 and cfg.dataset.batch_size == 36 and cfg.lr_mult.backbone == 0.1
    assert cfg.baseline.randomized and cfg.baseline.bottleneck_dim == 256
    cfg = compose_train(["dataset=visda2017", "baseline=mcd"], tmp_path)
    assert cfg.backbone.name.startswith("resnet101") and cfg.scheduler is None  # MCD: constant lr
    cfg = compose_train(["dataset=officehome", "baseline=ssrt"], tmp_path)
    assert cfg.backbone.name.startswith("vit_base_patch16_224") and cfg.baseline.bottleneck_dim == 2048


def test_explicit_values_and_choices_win_over_the_recipe(tmp_path) -> None:
    overrides = ["dataset=officehome", "baseline=cdan", "backbone=lenet", "optimizer.lr=0.5", "iterations=10"]
    cfg = compose_train([*overrides, "eval_every=5", "dataset.batch_size=3"], tmp_path)
    assert cfg.backbone._target_ == "uda.models.LeNet"
    assert (cfg.optimizer.lr, cfg.iterations, cfg.eval_every, cfg.dataset.batch_size) == (0.5, 10, 5, 3)
    assert cfg.lr_mult.backbone == 0.1  # what was not overridden still comes from the recipe
    cfg = compose_train(["dataset=officehome", "baseline=ssrt", "backbone=resnet50"], tmp_path)
    assert cfg.backbone.name == "resnet50.tv_in1k"


def test_a_named_preset_is_the_same_as_choosing_dataset_and_baseline(tmp_path) -> None:
    preset = compose_train(["experiment=officehome_cdan"], tmp_path)
    plain = compose_train(["dataset=officehome", "baseline=cdan"], tmp_path)
    preset, plain = (OmegaConf.to_container(cfg) for cfg in (preset, plain))
    for cfg in (preset, plain):
        del cfg["hydra"]
    assert preset == plain


def test_digits_recipe_backbone_follows_the_task(tmp_path) -> None:
    from hydra.utils import instantiate

    cfg = compose_train(["dataset=digits", "dataset.source=S", "dataset.target=M"], tmp_path)
    assert isinstance(instantiate(cfg.backbone), DTN)
    cfg = compose_train(["dataset=digits", "dataset.source=U", "dataset.target=M"], tmp_path)
    assert isinstance(instantiate(cfg.backbone), LeNet)


def test_the_default_digits_run_needs_no_recipe_notice(tmp_path) -> None:
    cfg = compose_train([], tmp_path)
    assert recipe_notice(cfg, {"dataset": "offline_digits", "baseline": "cdan"}) is None


@pytest.mark.parametrize(
    ("backbone", "image", "shape"),
    [(LeNet(), torch.zeros(3, 224, 224), "3x224x224"), (DTN(in_channels=3), torch.zeros(1, 28, 28), "1x28x28")],
)
def test_a_backbone_that_cannot_take_the_images_fails_in_one_sentence(backbone, image, shape: str) -> None:
    with pytest.raises(ConfigError, match=rf"backbone=x cannot take this dataset's {shape} images") as err:
        check_backbone_takes(backbone, image, "backbone=x")
    assert "\n" not in str(err.value)
    assert backbone.training  # the check restores the training flag


def test_a_backbone_that_takes_the_images_passes_without_drawing_random_numbers() -> None:
    backbone = LeNet()  # dropout layers: a train-mode forward would draw from the generator
    state = torch.get_rng_state()
    check_backbone_takes(backbone, torch.zeros(1, 28, 28))
    assert torch.equal(state, torch.get_rng_state())
