"""Pretrained-weight downloads that fail fast without network (timm, open_clip, any Hugging Face hub file).

Without network, ``huggingface_hub`` and ``torch.hub`` retry their requests for about a minute before they
give up. Before a download starts, :func:`require_download` asks the cheap question first: is there a
cached copy (then the caller loads it under :func:`hf_hub_offline`, no request at all), has the user said
``HF_HUB_OFFLINE=1``, and does a TCP connection to the download host (or the proxy that serves it) open
within :data:`PROBE_TIMEOUT_S` seconds. If not, one sentence says what to do instead (a local file).

Typical use (``uda.models.timm_backbone``; the CLIP backbone does the same with its own files)::

    cached = hf_cached_file(repo_id, ["model.safetensors", "pytorch_model.bin"])
    if cached is None:
        require_download(f"the pretrained weights of {name}", hf_endpoint(), fix="...", hf=True)
    with hf_hub_offline(cached is not None):
        ...  # the library's own download call: served from the cache, or downloaded
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from uda.errors import DataError

#: seconds a TCP connect (DNS included) to the download host may take before we call the machine offline
PROBE_TIMEOUT_S = 3.0
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"https://{url}")
    return parts.hostname or "", parts.port or _DEFAULT_PORTS.get(parts.scheme, 443)


def _route(url: str) -> str:
    """The URL a request for ``url`` really connects to: the proxy from the environment, if one applies."""
    scheme = urlsplit(url).scheme or "https"
    host, _ = _host_port(url)
    proxies = urllib.request.getproxies()  # HTTPS_PROXY, https_proxy, ALL_PROXY, ... as requests/httpx read them
    proxy = proxies.get(scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        return proxy
    return url


def network_reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the host of ``url`` (or its proxy) opens within ``timeout`` seconds.

    Name resolution is part of the budget: ``getaddrinfo`` has no timeout of its own and can hang for
    tens of seconds without a DNS server, so the whole probe runs in a daemon thread that is waited on
    for ``timeout`` seconds and then abandoned.
    """
    host, port = _host_port(_route(url))
    if not host:
        return False
    result: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    probe = threading.Thread(target=connect, name="uda-network-probe", daemon=True)
    probe.start()
    probe.join(timeout)
    return bool(result and result[0])


def hf_endpoint() -> str:
    """The Hugging Face hub URL downloads go to (``HF_ENDPOINT``, e.g. a mirror; else https://huggingface.co)."""
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def hf_offline_requested() -> bool:
    """Whether the user set ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``): no hub request may be made."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hf_cached_file(repo_id: str, filenames: Iterable[str], revision: str | None = None) -> str | None:
    """Path of the first of ``filenames`` of hub repo ``repo_id`` found in the local hub cache, else None."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        path = try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(path, str) and os.path.isfile(path):
            return path
    return None


def torch_hub_cached_file(url: str) -> str | None:
    """Path of ``url``'s file in torch.hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints``), else None."""
    import torch.hub

    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlsplit(url).path).name
    return str(path) if path.is_file() else None


@contextmanager
def hf_hub_offline(enabled: bool = True) -> Iterator[None]:
    """Within the block, ``huggingface_hub`` makes no request and serves files from its cache only.

    Used when the file is known to be cached: without network the hub would otherwise retry its metadata
    request before falling back to the cache. ``enabled=False`` leaves the hub as configured.
    """
    if not enabled:
        yield
        return
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def require_download(what: str, url: str, fix: str, *, hf: bool = False, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise a one-sentence :class:`DataError` unless a download of ``what`` from ``url`` can start.

    Call it only when no cached copy exists. ``hf=True``: ``url`` is on the Hugging Face hub, so
    ``HF_HUB_OFFLINE=1`` refuses at once. Otherwise the host (or proxy) must accept a TCP connection within
    ``timeout`` seconds. ``fix`` is the clause that says what to do instead (e.g. pass a local file); the
    message reads ``could not get <what> (<reason>); <fix>``.
    """
    if hf and hf_offline_requested():
        reason = "HF_HUB_OFFLINE=1 is set and no copy is in the hub cache"
    elif not network_reachable(url, timeout):
        host, port = _host_port(_route(url))
        reason = f"no network: {host}:{port} did not answer within {timeout:g} s and no copy is cached"
    else:
        return
    raise DataError(f"could not get {what} ({reason}); {fix}")
