"""Pretrained weights without network: refused at once in one sentence, or served from the cache (uda.models.hub)."""

from __future__ import annotations

import socket
import threading

import pytest
import timm
import timm.models._builder as timm_builder
import timm.models._hub as timm_hub
import torch
from safetensors.torch import save_file

from uda.errors import DataError
from uda.models import TimmBackbone
from uda.models import hub as uda_hub
from uda.models.hub import network_reachable, require_download


def _closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released): a connect is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """Empty hub and torch caches, the hub endpoint on a closed local port, and timm's downloaders recorded."""
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hf, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    calls: list[str] = []

    def recorder(name):
        def download(*args, **kwargs):
            calls.append(name)
            raise OSError("network down")

        return download

    monkeypatch.setattr(timm_builder, "load_state_dict_from_hf", recorder("load_state_dict_from_hf"))
    monkeypatch.setattr(timm_builder, "load_state_dict_from_url", recorder("load_state_dict_from_url"))
    monkeypatch.setattr(timm_hub, "hf_hub_download", recorder("hf_hub_download"))
    return calls


def test_probe_tells_a_listening_port_from_a_closed_one() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        assert network_reachable(f"http://127.0.0.1:{server.getsockname()[1]}/", timeout=3.0)
    assert not network_reachable(f"http://127.0.0.1:{_closed_port()}/", timeout=3.0)


def test_probe_gives_up_on_a_connect_that_hangs(monkeypatch) -> None:
    release = threading.Event()

    def hanging_connect(*args, **kwargs):  # a DNS lookup or SYN that never answers
        release.wait()
        raise OSError("released")

    monkeypatch.setattr(socket, "create_connection", hanging_connect)
    try:
        assert not network_reachable("https://huggingface.co", timeout=0.2)
        with pytest.raises(DataError, match=r"^could not get W \(no network: huggingface.co:443 did not answer"):
            require_download("W", "https://huggingface.co/timm/x", fix="pass a file", timeout=0.2)
    finally:
        release.set()


def test_pretrained_without_network_fails_before_any_download(offline_hub) -> None:
    with pytest.raises(DataError) as err:
        TimmBackbone("resnet18.a1_in1k", pretrained=True)
    message = str(err.value)
    assert offline_hub == []  # timm's downloaders (and their minute of retries) never ran
    assert message.startswith("could not get the pretrained weights of resnet18.a1_in1k (no network: 127.0.0.1:")
    assert "did not answer within 3 s and no copy is cached); on a machine with network run" in message
    assert "/timm/resnet18.a1_in1k/resolve/main/model.safetensors and pass" in message
    assert message.endswith("pass backbone.checkpoint=/path/to/weights.safetensors") and "\n" not in message


def test_hf_hub_offline_refuses_without_probing(offline_hub, monkeypatch) -> None:
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(uda_hub, "network_reachable", lambda *a, **k: pytest.fail("probed although HF_HUB_OFFLINE=1"))
    with pytest.raises(DataError, match=r"\(HF_HUB_OFFLINE=1 is set and no copy is in the hub cache\); on a machine"):
        TimmBackbone("resnet18.a1_in1k", pretrained=True)
    assert offline_hub == []


def test_a_cached_copy_loads_without_network(tmp_path, monkeypatch) -> None:
    import huggingface_hub.constants as hf

    cache = tmp_path / "hub"
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(cache))
    endpoint = socket.socket()  # a hub that records connections and never answers
    endpoint.bind(("127.0.0.1", 0))
    endpoint.listen(4)
    endpoint.setblocking(False)
    monkeypatch.setattr(hf, "ENDPOINT", f"http://127.0.0.1:{endpoint.getsockname()[1]}")
    monkeypatch.setattr(uda_hub, "network_reachable", lambda *a, **k: pytest.fail("probed although cached"))
    torch.manual_seed(0)
    weights = timm.create_model("resnet18", num_classes=1000).state_dict()
    # the hub cache layout: models--<org>--<name>/refs/main holds the commit; snapshots/<commit>/<file>
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--timm--resnet18.a1_in1k"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(repo / "snapshots" / commit / "model.safetensors"))
    torch.manual_seed(1)
    backbone = TimmBackbone("resnet18.a1_in1k", pretrained=True)
    loaded = backbone.model.state_dict()
    assert loaded.keys() == {k for k in weights if not k.startswith("fc.")}
    assert all(torch.equal(loaded[k], weights[k]) for k in loaded)
    with pytest.raises(BlockingIOError), endpoint:
        endpoint.accept()  # no request was sent to the hub
