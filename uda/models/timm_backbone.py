"""Any timm model as a feature extractor, with ImageNet weights from the hub or from a local file.

``TimmBackbone("resnet50.tv_in1k", pretrained=True)`` builds the model without its classifier
(``num_classes=0``: pooled features, e.g. 2048-d for ResNet-50, the CLS token after the final norm for
ViT) and reads the feature dimension from the model (``out_features``), so configs never type it.

Weights:

* ``pretrained=True`` asks timm for the hub weights of the model's pretrained tag (Hugging Face hub or
  the tag's URL; cached under ``~/.cache``). Offline this fails with one sentence saying how to get the
  weights onto the machine.
* ``checkpoint=/path`` loads a local file: ``.safetensors`` with safetensors, ``.pth``/``.pt``/``.bin``
  with ``torch.load(weights_only=True)`` (tensors only: no arbitrary pickled code runs). The file may
  hold a plain state dict or wrap it under ``state_dict``/``model``; a ``module.`` prefix (DDP) is removed
  and the ImageNet classifier's weights are ignored. Any other missing or unexpected key, or a shape
  mismatch, fails with the first few keys named. A checkpoint overrides ``pretrained``.
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

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
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


class TimmBackbone(nn.Module):
    """A timm model without classifier: ``forward(x)`` returns ``(batch, out_features)`` features.

    Args:
        name: any timm model name, optionally with a pretrained tag (``resnet50.tv_in1k``).
        pretrained: load the hub weights of that tag through timm.
        checkpoint: path of local weights (``.safetensors``/``.pth``); overrides ``pretrained``.
        **kwargs: passed to ``timm.create_model`` (e.g. ``img_size``, ``drop_path_rate``).
    """

    def __init__(
        self, name: str, pretrained: bool = False, checkpoint: str | os.PathLike | None = None, **kwargs: Any
    ) -> None:
        import timm  # imported here: it takes about a second, and most runs of the digits recipes never need it

        super().__init__()
        self.name = str(name)
        if not timm.is_model(self.name.split(".")[0]):
            raise _unknown_model(self.name)
        use_hub = bool(pretrained) and checkpoint is None
        try:
            self.model = timm.create_model(self.name, pretrained=use_hub, num_classes=0, **kwargs)
        except Exception as err:
            if "Unknown model" in str(err) or "Invalid pretrained tag" in str(err):
                raise _unknown_model(self.name) from err
            if not use_hub:
                raise
            # the same model without weights builds: the weights could not be fetched (offline, no cache)
            timm.create_model(self.name, pretrained=False, num_classes=0, **kwargs)
            raise self._offline(err) from err
        #: feature dimension (timm models with a pre-logits layer report it as ``head_hidden_size``)
        self.out_features = int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)

    def _offline(self, err: BaseException) -> DataError:
        return DataError(
            f"could not get the pretrained weights of {self.name} ({_short(err)}); on a machine with network run "
            f"`python -c \"import timm; timm.create_model('{self.name}', pretrained=True)\"` and copy "
            "~/.cache/huggingface (and ~/.cache/torch) here, or save the weights to a file and pass "
            "backbone.checkpoint=/path/to/weights.safetensors"
        )

    def _classifier_prefixes(self) -> tuple[str, ...]:
        names = self.model.pretrained_cfg.get("classifier") or ()
        names = (names,) if isinstance(names, str) else tuple(names)
        return tuple(f"{n}." for n in names)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Load local weights strictly (classifier weights aside); mismatches name the keys."""
        state = read_state_dict(path)
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
