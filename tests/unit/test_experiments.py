"""Every experiment preset composes with each harmonizer and passes the config checks (no data needed)."""

from __future__ import annotations

import pytest

from tests.conftest import CONF, compose_train
from uda.config import validate

PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def test_there_are_presets_for_the_paper_baselines() -> None:
    baselines = {name.split("_", 1)[1] for name in PRESETS}
    assert {"cdan", "mcd"} <= baselines


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_and_validates(preset: str, tmp_path) -> None:
    dataset, baseline = preset.split("_", 1)
    for harmonizer in ("none", "ghpp"):
        cfg = compose_train([f"experiment={preset}", f"harmonizer={harmonizer}"], tmp_path)
        validate(cfg)
        assert cfg.hydra.runtime.choices.dataset == dataset
        assert cfg.hydra.runtime.choices.baseline == baseline
        assert cfg.iterations % cfg.eval_every == 0
        # benchmark presets start from pretrained weights, never the digits LeNet
        assert cfg.backbone._target_ == "uda.models.TimmBackbone" and cfg.backbone.pretrained
