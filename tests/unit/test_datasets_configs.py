"""The dataset presets through Hydra: composition, short domain names, the missing-data sentence; batches of a
generated Office-31 tree through a timm backbone and a baseline, and (slow) one short real training run."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import get_class, instantiate

from tests.conftest import QUICK
from tests.unit.dataset_fakes import class_tree
from uda.baselines import UDABatch
from uda.config import validate
from uda.data import Office31
from uda.errors import ConfigError
from uda.train import build_node, main, run

PRESETS = {
    # preset: (class, default source/target, batch size, a short-name task and its resolved names)
    "office31": ("uda.data.Office31", 36, ("D", "A"), ("dslr", "amazon")),
    "officehome": ("uda.data.OfficeHome", 36, ("Rw", "Pr"), ("Real_World", "Product")),
    "visda2017": ("uda.data.VisDA2017", 36, ("train", "validation"), ("Synthetic", "Real")),
    "domainnet": ("uda.data.DomainNet", 32, ("q", "i"), ("quickdraw", "infograph")),
    "digits": ("uda.data.Digits", 64, ("S", "M"), ("svhn", "mnist")),
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_compose_and_accept_short_names(train_cfg, tmp_path, preset) -> None:
    target, batch, short, resolved = PRESETS[preset]
    cfg = train_cfg(f"dataset={preset}", f"dataset.source={short[0]}", f"dataset.target={short[1]}")
    validate(cfg)
    assert cfg.dataset._target_ == target and cfg.dataset.batch_size == batch
    assert cfg.dataset.root == f"{cfg.paths.data_dir}/{preset}"
    assert cfg.dataset.download is False and cfg.dataset.strict is True
    cls = get_class(target)
    assert tuple(cls.resolve_domain(s) for s in short) == resolved
    if preset != "digits":
        assert cfg.dataset.train_transform.crop == "random_resized" and cfg.dataset.test_transform.crop == "center"
    with pytest.raises(ConfigError, match=rf"dataset.target='Zz' is not a domain of {preset}; choose one of: .* \("):
        build_node(train_cfg(f"dataset={preset}", "dataset.target=Zz").dataset, "dataset")


def test_missing_data_is_one_sentence_before_any_model_is_built(train_cfg, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("UDA_DATA_DIR", str(tmp_path / "data"))
    cfg = train_cfg("dataset=officehome", "dataset.source=Ar", "dataset.target=Cl", "backbone=resnet50", "logger=csv")
    with pytest.raises(SystemExit) as exit_info:
        main(cfg)  # what `python run.py dataset=officehome dataset.source=Ar dataset.target=Cl backbone=resnet50` runs
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: the Office-Home root {tmp_path / 'data' / 'officehome'} does not exist; put the")
    assert "\n" not in err and "Traceback" not in err


def test_office_batches_feed_a_baseline(train_cfg, tmp_path) -> None:
    root = tmp_path / "office31"
    for domain in ("amazon", "webcam"):
        class_tree(root, f"{domain}/images", Office31.class_names[:3], per_class=2)
    cfg = train_cfg(
        "dataset=office31",
        f"dataset.root={root}",
        "dataset.strict=false",
        "dataset.num_workers=0",
        "dataset.batch_size=4",
        "dataset.train_transform.resize=40",
        "dataset.train_transform.size=32",
        "backbone=timm",
        "backbone.name=test_resnet",  # a tiny ResNet (370k parameters) timm ships for tests
        "backbone.pretrained=false",
    )
    datamodule = instantiate(cfg.dataset, iters_per_epoch=1, seed=0)
    baseline = instantiate(cfg.baseline, backbone=instantiate(cfg.backbone), num_classes=datamodule.num_classes)
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))[0]
    (x_s, y_s), x_t = batch["source"], batch["target"]
    out = baseline.compute_losses(baseline.stages[0].name, UDABatch(x_s, y_s, x_t), iteration=0)
    assert set(out.losses) == set(baseline.stages[0].trade_offs)
    assert all(torch.isfinite(loss) for loss in out.losses.values())
    assert baseline.predict(x_t).shape == (4, 31)


@pytest.mark.slow  # about 10-20 s on 2 busy cores; test_office_batches_feed_a_baseline covers the wiring quickly
def test_short_training_run_on_a_generated_office31_tree(train_cfg, tmp_path) -> None:
    root = tmp_path / "office31"
    for domain in ("amazon", "webcam"):
        class_tree(root, f"{domain}/images", Office31.class_names[:4], per_class=3)
    cfg = train_cfg(
        "dataset=office31",
        f"dataset.root={root}",
        "dataset.strict=false",
        "dataset.num_workers=0",
        "dataset.batch_size=4",
        "dataset.train_transform.resize=40",
        "dataset.train_transform.size=32",
        "dataset.test_transform.resize=40",
        "dataset.test_transform.size=32",
        "backbone=timm",
        "backbone.name=test_resnet",  # a tiny ResNet (370k parameters) timm ships for tests
        "backbone.pretrained=false",
        "lr_mult.backbone=0.1",
        *QUICK,
    )
    summary = run(cfg).to_dict()
    assert summary["task"] == "amazon→webcam" and summary["iterations"] == 4
    assert 0.0 <= summary["target_acc_last"] <= 1.0
