"""CLIP's image and text towers through ``open_clip``, frozen, for prompt learning (CoOp, DAPL, ProGrad, PGA).

``ClipBackbone(model="RN50", pretrained="openai")`` builds an open_clip model and freezes both towers (no
parameter requires a gradient, and they stay in eval mode: batch-norm statistics of the ResNet image tower
never move, as in the official CoOp/DAPL/PGA code, where only the prompt learner is put in train mode).

Weights:

* ``pretrained=<tag>`` (``openai``, ...): open_clip's hub weights of that tag. A copy in the local hub cache
  is loaded without any request; otherwise the hub must answer a 3-second probe
  (:func:`uda.models.hub.require_download`), so without network the run fails at once, in one sentence that
  names the file to download and where to pass it, instead of after a minute of retries. The ``openai``
  weights use QuickGELU; the tag's setting is applied.
* ``checkpoint=/path`` (``.safetensors`` or a ``.pth``/``.bin`` state dict, read without executing pickled
  code) overrides ``pretrained``. Keys must be open_clip's (the hub files ``open_clip_model.safetensors`` are);
  OpenAI's extra entries ``input_resolution``/``context_length``/``vocab_size`` are ignored. A file of another
  model fails with the first missing/unexpected keys named. ``quick_gelu`` must match the weights (OpenAI: true).
* ``model="tiny"``: a tiny randomly initialized CLIP built in code (:data:`TINY_CONFIG`: a 2-layer ViT of width 64
  on 28x28 inputs with 7x7 patches, a 2-layer text transformer of width 64, context 77, the real BPE tokenizer).
  It builds in a fraction of a second and exists for tests and the offline smoke run: every number from it is
  *not a result*, and :attr:`ClipBackbone.note` says so (it reaches the run summary).

Input adaptation (``adapt_input=True``): a batch whose shape differs from what the image tower takes is
converted here, on the tensor: one channel is repeated to three (tllib's MNISTRGB does the same) and a spatial
size other than the tower's is resized bilinearly. This is what lets the 1x28x28 offline digits (already
normalized tensors with no transform hook) reach a 3-channel CLIP. Image datasets should instead resize and
normalize in their transform, with CLIP's statistics (:data:`CLIP_MEAN`, :data:`CLIP_STD`, bicubic 224): the
adaptation is then a no-op.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uda.errors import ConfigError, DataError
from uda.models.hub import hf_cached_file, hf_endpoint, hf_hub_offline, require_download
from uda.models.timm_backbone import read_state_dict

log = logging.getLogger(__name__)

#: name of the tiny test model
TINY = "tiny"
#: open_clip.CLIP arguments of the tiny test model (random init; 3.3M of its 3.5M parameters are the token table)
TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 28, "patch_size": 7, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
#: the tokenizer the tiny model uses (the real CLIP BPE vocabulary of 49,408 tokens)
TINY_TOKENIZER = "ViT-B-32"
#: CLIP's image normalization (OpenAI; CoOp/DAPL/PGA configs: PIXEL_MEAN / PIXEL_STD)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: entries of OpenAI's state dicts that are hyper-parameters, not tensors of the model
_OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")
#: open_clip's file names in a hub repo, in the order it tries them
_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_SHOWN = 5
NOT_A_RESULT = "not a result"


def readable(name: str) -> str:
    """A class or domain name as words for a prompt: ``"Alarm_Clock"`` -> ``"alarm clock"``.

    Underscores become spaces (CoOp/DAPL do the same) and the result is lower case (CLIP's tokenizer lowers
    text anyway, so prompts are unchanged; it makes the logged prompts read naturally).
    """
    return " ".join(str(name).replace("_", " ").split()).lower()


def _few(keys: Sequence[str]) -> str:
    return ", ".join(keys[:_SHOWN]) + (f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")


@lru_cache(maxsize=4)
def _tokenizer(name: str) -> Any:
    import open_clip

    return open_clip.get_tokenizer(name)


def _unknown_model(name: str) -> ConfigError:
    import open_clip

    names = [*open_clip.list_models(), TINY]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return ConfigError(
        f"backbone.model={name!r} is not an open_clip model; {hint}e.g. RN50, RN101, ViT-B-16, ViT-B-32, or tiny"
    )


class ClipBackbone(nn.Module):
    """Frozen CLIP towers: ``forward(x)`` gives image features ``(batch, out_features)``; the text side is used
    by the prompt learners (:meth:`tokenize`, :meth:`embed_tokens`, :meth:`encode_prompts`, :meth:`encode_text`).

    Args:
        model: an open_clip model name (``RN50``, ``RN101``, ``ViT-B-16``, ...) or ``tiny``.
        pretrained: an open_clip weights tag (``openai``), or ``None`` for random init.
        checkpoint: a local weights file; overrides ``pretrained``.
        quick_gelu: the activation of the weights in ``checkpoint`` (OpenAI's: QuickGELU); tags set their own.
        adapt_input: convert batches of another channel count or size for the image tower (module docs).
    """

    def __init__(
        self,
        model: str = "RN50",
        pretrained: str | None = "openai",
        checkpoint: str | os.PathLike | None = None,
        quick_gelu: bool = True,
        adapt_input: bool = True,
    ) -> None:
        import open_clip

        super().__init__()
        self.name = str(model)
        self.adapt_input = bool(adapt_input)
        if self.name != TINY and self.name not in open_clip.list_models():
            raise _unknown_model(self.name)
        if self.name == TINY and pretrained and checkpoint is None:
            raise ConfigError(
                f"backbone.pretrained={pretrained!r}: the tiny CLIP has no pretrained weights; use "
                "backbone.pretrained=null (random init) or a real model, e.g. backbone=clip backbone.model=RN50"
            )
        if checkpoint is not None:
            self.model = self._build(quick_gelu)
            self.load_checkpoint(checkpoint)
            self.weights = f"checkpoint {checkpoint}"
        elif pretrained:
            self.model = self._pretrained(str(pretrained))
            self.weights = f"{pretrained} (open_clip tag)"
        else:
            self.model = self._build(quick_gelu)
            self.weights = "random init"
        #: a remark every summary of a run with this backbone carries (None for real weights)
        self.note: str | None = None
        if self.weights == "random init":
            self.note = (
                f"{NOT_A_RESULT}: CLIP {self.name} is randomly initialized (a test/smoke model), so every number "
                "of this run is not a result"
            )
            log.warning(self.note)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()
        #: dimension of the joint image-text embedding
        self.out_features = int(self.model.text_projection.shape[-1] if self._proj_is_param() else self._proj_out())
        size = self.model.visual.image_size
        self.image_size: tuple[int, int] = (size, size) if isinstance(size, int) else tuple(size)  # type: ignore[assignment]
        self.context_length = int(self.model.context_length)
        self.text_width = int(self.model.token_embedding.weight.shape[1])

    # ------------------------------------------------------------------------------------------- building
    def _build(self, quick_gelu: bool) -> nn.Module:
        import open_clip

        if self.name == TINY:
            return open_clip.CLIP(**TINY_CONFIG, quick_gelu=bool(quick_gelu))
        # random init on purpose (weights follow from a file, or none): open_clip's warning would mislead
        quiet = logging.getLogger()
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            return open_clip.create_model(self.name, pretrained=None, force_quick_gelu=bool(quick_gelu))
        finally:
            quiet.setLevel(level)

    def _hub_source(self, tag: str) -> tuple[str | None, str]:
        """(hub repo or None, URL of the file to download) of a weights tag."""
        import open_clip

        cfg = open_clip.get_pretrained_cfg(self.name, tag)
        hub = (cfg.get("hf_hub") or "").strip("/")
        if hub:
            repo, _, filename = hub.rpartition("/") if hub.count("/") > 1 else (hub, "", "")
            file = filename or _HUB_FILES[0]
            return repo, f"{hf_endpoint()}/{repo}/resolve/main/{file}"
        return None, str(cfg.get("url") or "")

    def _pretrained(self, tag: str) -> nn.Module:
        import open_clip

        tags = open_clip.list_pretrained_tags_by_model(self.name)
        if tag not in tags:
            raise ConfigError(
                f"backbone.pretrained={tag!r} is not a weights tag of CLIP {self.name}; choose one of: "
                f"{', '.join(tags) or 'none (use backbone.pretrained=null)'}, or pass backbone.checkpoint=/path"
            )
        cfg = open_clip.get_pretrained_cfg(self.name, tag)
        repo, source = self._hub_source(tag)
        what = f"the {tag} weights of CLIP {self.name}"
        local = f"weights/clip-{self.name}-{tag}.safetensors"
        fix = (
            f"download {source} on a machine with network, copy it to this machine (e.g. to {local}) and pass "
            f"backbone.checkpoint={local}"
        )
        cached = False
        if repo is not None:
            cached = hf_cached_file(repo, _HUB_FILES) is not None
            if not cached:
                require_download(what, f"{hf_endpoint()}/{repo}", fix, hf=True)
        else:
            target = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(source))
            if not os.path.isfile(target):
                require_download(what, source, fix)
        try:
            with hf_hub_offline(cached):
                return open_clip.create_model(
                    self.name, pretrained=tag, force_quick_gelu=bool(cfg.get("quick_gelu", False))
                )
        except Exception as err:  # noqa: BLE001 - any download/load failure: one sentence with the fix
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            raise DataError(f"could not get {what} ({first}); {fix}") from err

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Load open_clip-named weights strictly; a file of another model names its mismatched keys."""
        state = {k: v for k, v in read_state_dict(path).items() if k not in _OPENAI_EXTRAS}
        own = self.model.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if missing or unexpected:
            parts = ([f"missing keys: {_few(missing)}"] if missing else []) + (
                [f"unexpected keys: {_few(unexpected)}"] if unexpected else []
            )
            raise DataError(
                f"backbone.checkpoint={path} does not fit CLIP {self.name} ({'; '.join(parts)}); use weights of "
                f"the same model in open_clip's naming (the hub's open_clip_model.safetensors)"
            )
        wrong = [
            f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape
        ]
        if wrong:
            raise DataError(
                f"backbone.checkpoint={path} does not fit CLIP {self.name} (shape mismatch, checkpoint vs model: "
                f"{_few(wrong)}); use weights of the same model"
            )
        self.model.load_state_dict({k: state[k] for k in own}, strict=True)

    def _proj_is_param(self) -> bool:
        return isinstance(self.model.text_projection, Tensor)

    def _proj_out(self) -> int:
        return int(self.model.text_projection.out_features)

    # ---------------------------------------------------------------------------------------- frozen state
    def train(self, mode: bool = True) -> ClipBackbone:
        """The towers are frozen: they stay in eval mode whatever the caller asks (batch norm, dropout)."""
        super().train(mode)
        self.model.eval()
        return self

    # ---------------------------------------------------------------------------------------------- images
    def adapt(self, x: Tensor) -> Tensor:
        """A batch in the tower's input format: 1 channel repeated to 3, other sizes resized bilinearly."""
        if not self.adapt_input:
            return x
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """Image features (not normalized) of a batch; no graph is kept (the tower is frozen)."""
        with torch.no_grad():
            return self.model.encode_image(self.adapt(x))

    # ------------------------------------------------------------------------------------------------ text
    def tokenize(self, texts: Sequence[str], context_length: int | None = None) -> Tensor:
        """Token ids ``(n, context_length)``: start token, BPE tokens, end token, zero padding (longer texts
        are cut, their last token replaced by the end token; pass a longer ``context_length`` to count)."""
        tokenizer = _tokenizer(TINY_TOKENIZER if self.name == TINY else self.name)
        return tokenizer(list(texts), context_length=context_length or self.context_length)

    def embed_tokens(self, token_ids: Tensor) -> Tensor:
        """The (frozen) token embeddings ``(n, context_length, width)`` of ``token_ids``."""
        with torch.no_grad():
            return self.model.token_embedding(token_ids.to(self.model.token_embedding.weight.device))

    def encode_prompts(self, embeddings: Tensor, token_ids: Tensor) -> Tensor:
        """Text features ``(n, out_features)`` of prompts given as token embeddings (CoOp's text encoder).

        The same computation as open_clip's ``encode_text`` after its embedding lookup: positional embedding,
        the causal transformer, the final norm, pooling at the end token (the largest id of each row of
        ``token_ids``), projection. Gradients flow to ``embeddings`` (the learnable context).

        The prompts may be cut after their last end token (``n`` positions, ``n <= context_length``; see
        :attr:`truncatable`): the attention is causal, so no position up to the end token sees the padding
        after it, and the pooled features are those of the full sequence (tested against ``encode_text``).
        """
        from open_clip.transformer import text_global_pool

        m = self.model
        n = embeddings.shape[1]
        if n != self.context_length and not self.truncatable:
            raise ValueError(f"CLIP {self.name} pools with {m.text_pool_type!r}: prompts must keep all positions")
        cast = m.transformer.get_cast_dtype()
        x = embeddings.to(cast) + m.positional_embedding[:n].to(cast)
        batch_first = getattr(m.transformer, "batch_first", True)
        if not batch_first:
            x = x.permute(1, 0, 2)
        x = m.transformer(x, attn_mask=m.attn_mask[:n, :n])
        if not batch_first:
            x = x.permute(1, 0, 2)
        x = m.ln_final(x)
        x = text_global_pool(x, token_ids.to(x.device), m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
        if isinstance(m.text_projection, nn.Linear):
            return m.text_projection(x)
        return x @ m.text_projection

    @property
    def truncatable(self) -> bool:
        """Whether prompts may drop the padding after their end token: a causal text transformer that pools at
        the end token (CLIP's ``argmax``/``eos`` pooling), so the pooled output never sees later positions."""
        return self.model.attn_mask is not None and self.model.text_pool_type in ("argmax", "eos")

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Text features of plain sentences (zero-shot prompts), without a graph."""
        with torch.no_grad():
            return self.model.encode_text(self.tokenize(texts).to(self.model.token_embedding.weight.device))

    @property
    def logit_scale(self) -> Tensor:
        """CLIP's learned temperature, exp(logit_scale) (100 for the OpenAI weights), detached."""
        return self.model.logit_scale.detach().exp()
