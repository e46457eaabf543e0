"""Backbones: timm models without network (random init), local checkpoints, offline hub weights, DTN, configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from hydra.utils import instantiate
from safetensors.torch import save_file

from uda.errors import ConfigError, DataError
from uda.models import DTN, LeNet, TimmBackbone
from uda.models.timm_backbone import read_state_dict


@pytest.mark.parametrize(
    ("name", "kwargs", "size", "dim"),
    [
        ("resnet18", {}, 64, 512),
        ("vit_tiny_patch16_224", {"img_size": 32}, 32, 192),  # CLS token after the final norm
        ("mobilenetv3_small_050", {}, 64, 1024),  # pre-logits layer: timm's head_hidden_size
    ],
)
def test_feature_dimension_is_read_from_the_model(name, kwargs, size, dim) -> None:
    backbone = TimmBackbone(name, **kwargs).eval()
    assert backbone.out_features == dim
    assert backbone(torch.randn(2, 3, size, size)).shape == (2, dim)


def test_unknown_names_are_one_sentence() -> None:
    with pytest.raises(ConfigError, match=r"backbone.name='resnet5O' is not a timm model; did you mean resnet50"):
        TimmBackbone("resnet5O")
    with pytest.raises(
        ConfigError, match=r"timm has no pretrained tag 'imagenet' for resnet18; choose one of: resnet18\."
    ):
        TimmBackbone("resnet18.imagenet")


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_checkpoint_round_trips(tmp_path, suffix) -> None:
    torch.manual_seed(0)
    source = timm.create_model("resnet18", num_classes=1000)  # an ImageNet-style model: its classifier is ignored
    state = source.state_dict()
    path = tmp_path / f"w{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)  # DDP-style, wrapped
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    torch.manual_seed(1)
    backbone = TimmBackbone("resnet18", checkpoint=str(path))
    loaded = _params(backbone.model)
    assert loaded.keys() == {k for k in state if not k.startswith("fc.")}
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)
    assert not torch.equal(TimmBackbone("resnet18").model.conv1.weight, state["conv1.weight"])  # really loaded


def test_mismatched_checkpoints_name_the_keys(tmp_path) -> None:
    path = tmp_path / "r18.pth"
    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), path)
    with pytest.raises(
        DataError, match=r"does not fit resnet34 \(missing keys: layer1.2.conv1.weight, .*\(\+\d+ more\)\)"
    ):
        TimmBackbone("resnet34", checkpoint=path)
    state = torch.load(path, weights_only=True)
    state["stem.weight"] = state.pop("conv1.weight")
    torch.save(state, path)
    with pytest.raises(DataError, match=r"missing keys: conv1.weight; unexpected keys: stem.weight\)"):
        TimmBackbone("resnet18", checkpoint=path)
    vit = tmp_path / "vit.safetensors"
    save_file(timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32).state_dict(), str(vit))
    with pytest.raises(
        DataError, match=r"shape mismatch, checkpoint vs model: pos_embed \(1, 5, 192\) vs \(1, 17, 192\)"
    ):
        TimmBackbone("vit_tiny_patch16_224", img_size=64, checkpoint=vit)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))  # would create a file if the pickle were executed


def test_checkpoints_never_execute_pickled_code(tmp_path) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": _Payload(marker)}, path)
    with pytest.raises(DataError, match=r"evil.pth cannot be loaded as plain tensors \(UnpicklingError"):
        read_state_dict(path)
    assert not marker.exists()
    with pytest.raises(ConfigError, match=r"has an unsupported suffix; use one of .safetensors, .pth"):
        (tmp_path / "w.ckpt").write_bytes(b"")
        read_state_dict(tmp_path / "w.ckpt")
    with pytest.raises(DataError, match=r"backbone.checkpoint=.*missing.pth does not exist"):
        read_state_dict(tmp_path / "missing.pth")


def test_pretrained_weights_offline_say_how_to_get_them(tmp_path, monkeypatch) -> None:
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)  # no network request is made
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))  # and nothing is cached
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(DataError) as err:
        TimmBackbone("resnet18.a1_in1k", pretrained=True)
    message = str(err.value)
    assert message.startswith("could not get the pretrained weights of resnet18.a1_in1k (")
    assert "timm.create_model('resnet18.a1_in1k', pretrained=True)" in message
    assert message.endswith("backbone.checkpoint=/path/to/weights.safetensors") and "\n" not in message


def test_dtn_and_lenet_shapes() -> None:
    dtn = DTN().eval()
    assert dtn.out_features == 512 and dtn(torch.randn(3, 3, 32, 32)).shape == (3, 512)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in dtn.modules()) == 3
    assert LeNet()(torch.randn(3, 1, 28, 28)).shape == (3, 500)


@pytest.mark.parametrize(
    ("choice", "name"),
    [
        ("resnet50", "resnet50.tv_in1k"),
        ("resnet101", "resnet101.tv_in1k"),
        ("vit_base_patch16_224", "vit_base_patch16_224.augreg_in21k_ft_in1k"),
    ],
)
def test_backbone_configs_name_the_recipes_weights(train_cfg, choice, name) -> None:
    cfg = train_cfg(f"backbone={choice}")
    assert cfg.backbone._target_ == "uda.models.TimmBackbone" and cfg.backbone.name == name
    assert cfg.backbone.pretrained is True and cfg.backbone.checkpoint is None
    assert name in timm.list_pretrained(name)


def test_generic_timm_config_builds_any_model_under_a_baseline(train_cfg) -> None:
    cfg = train_cfg("backbone=timm", "backbone.name=resnet18", "backbone.pretrained=false")
    backbone = instantiate(cfg.backbone)
    assert isinstance(backbone, TimmBackbone) and backbone.out_features == 512
    baseline = instantiate(cfg.baseline, backbone=backbone, num_classes=31).eval()
    assert baseline.predict(torch.randn(2, 3, 64, 64)).shape == (2, 31)
    dtn = instantiate(train_cfg("backbone=dtn").backbone)
    assert isinstance(dtn, DTN) and dtn.out_features == 512
