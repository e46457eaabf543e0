"""The headline command on a small Office-Home-shaped tree: each baseline's recipe trains end to end.

`python run.py baseline=B harmonizer=ghpp dataset=officehome` with the recipe backbone (ResNet-50 for CDAN+E and
MCD, ViT-B/16 for SSRT) built without downloading weights (`backbone.pretrained=false`), on one image per
class and domain, 64-px crops, batch 2 + 2 and 2 iterations: the shapes, heads, optimizer groups and
stages of the paper configuration all run through the real Trainer.
"""

from __future__ import annotations

import pytest

from tests.conftest import QUICK
from tests.unit.dataset_fakes import class_tree
from uda.data import OfficeHome
from uda.train import run

SMALL = (
    "dataset.train_transform.resize=72",
    "dataset.train_transform.size=64",
    "dataset.test_transform.resize=72",
    "dataset.test_transform.size=64",
)


@pytest.fixture(scope="module")
def officehome_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for domain in ("Art", "Clipart"):
        class_tree(root / "officehome", domain, OfficeHome.class_names, per_class=1)
    return root


@pytest.mark.parametrize(
    ("baseline", "extra"),
    [
        ("cdan", ()),
        # minutes on a 2-core CPU (three ResNet-50 stages; an 86M-parameter ViT): `make test-slow`
        pytest.param("mcd", ("baseline.num_k=1",), marks=pytest.mark.slow),
        pytest.param("ssrt", ("+backbone.img_size=64",), marks=pytest.mark.slow),
    ],
)
def test_headline_command_trains_the_recipe_on_an_office_shaped_tree(
    train_cfg, officehome_root, baseline: str, extra: tuple[str, ...]
) -> None:
    overrides = [o for o in QUICK if o not in ("iterations=4", "eval_every=2", "dataset.eval_batch_size=1000")]
    cfg = train_cfg(
        f"baseline={baseline}",
        "harmonizer=ghpp",
        "dataset=officehome",
        f"paths.data_dir={officehome_root}",
        "dataset.strict=false",
        "dataset.batch_size=2",
        "dataset.eval_batch_size=65",
        "dataset.num_workers=0",
        "backbone.pretrained=false",
        "iterations=2",
        "eval_every=2",
        *SMALL,
        *overrides,
        *extra,
    )
    assert cfg.applied_recipe == f"officehome_{baseline}"
    summary = run(cfg).to_dict()
    assert summary["dataset"] == "officehome" and summary["task"] == "Art→Clipart"
    assert summary["iterations"] == 2 and summary["monitored_steps"] >= 1
    assert 0.0 <= summary["target_acc_last"] <= 1.0
