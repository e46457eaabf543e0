"""CoOp-style prompt learning on a frozen CLIP: learnable context vectors, class prompts, zero-shot heads.

A prompt is a sequence of token embeddings fed to CLIP's text transformer in place of looked-up words
(CoOp, Zhou et al., IJCV 2022; official ``trainers/coop.py``)::

    [SOS] [ctx_1] ... [ctx_M] <words after the context, e.g. "alarm clock."> [EOS] <padding>

Only the context vectors are learned. The start token (prefix) and everything after the context (suffix:
the class name, the period, the end token, padding) are looked up once from the text ``"X X ... X <suffix>"``
and kept as buffers; the forward pass concatenates prefix, context and suffix. Because CLIP's BPE tokenizer
splits text word by word, the suffix tokens are exactly those of the same words after any other context, so a
context filled with the embeddings of a template's own tokens reproduces ``encode_text(template + class)``
exactly (tested).

* :class:`PromptContext`: the learnable vectors, generic ``[M, d]`` or class-specific ``[C, M, d]`` (CoOp's
  CSC), initialized N(0, 0.02) (CoOp) or from a template's token embeddings; with more vectors than template
  tokens the template fills the last ones and the rest start at zero (ProGrad's ``PromptLearner``).
* :class:`PromptTokens`: the frozen prefix/suffix embeddings and token ids of C prompts.
* :class:`CoOpPrompt`: one context + one set of class prompts.
* :class:`DomainPrompt`: DAPL's shared context followed by one domain-specific context per domain
  (official DAPrompt ``trainers/dapl.py``: "[SOS] ctx dmx {class}, a {domain} image. [EOS]").
* :class:`ZeroShotHead`: frozen text features of a hand-written template ("a photo of a {}."): zero-shot CLIP,
  ProGrad's teacher, DAPL's pseudo-labeller.
* :func:`clip_logits`: logit_scale · cos(image, text), CLIP's classifier.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uda.errors import ConfigError
from uda.models.clip import ClipBackbone

#: the placeholder word whose token positions the context vectors take
PLACEHOLDER = "X"
#: CoOp's initialization scale of random context vectors
CONTEXT_STD = 0.02


def clip_logits(image_features: Tensor, text_features: Tensor, logit_scale: Tensor | float) -> Tensor:
    """CLIP's class logits ``(batch, classes)``: logit_scale · normalize(image) · normalize(text)ᵀ."""
    return logit_scale * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T


def token_count(clip: ClipBackbone, text: str) -> int:
    """Number of BPE tokens of ``text`` (without the start and end tokens)."""
    ids = clip.tokenize([text], context_length=clip.context_length + 256)[0]
    return int(ids.argmax()) - 1


def template_embeddings(clip: ClipBackbone, text: str) -> Tensor:
    """Token embeddings ``(k, width)`` of the words of ``text`` (start and end tokens excluded)."""
    k = token_count(clip, text)
    if k < 1:
        raise ConfigError(f"the prompt initialization {text!r} has no words; give e.g. 'a photo of a' or null")
    return clip.embed_tokens(clip.tokenize([text]))[0, 1 : 1 + k].clone()


class PromptContext(nn.Module):
    """Learnable context vectors ``vectors``: ``(n_ctx, width)``, or ``(num_classes, n_ctx, width)`` when
    class-specific.

    Args:
        n_ctx: number of context tokens; ``None`` = as many as ``init`` has tokens.
        width: the text transformer's width.
        num_classes: class-specific context (CoOp's CSC) for that many classes; ``None`` = generic.
        init: token embeddings ``(k, width)`` of a template (``template_embeddings``) or ``None`` for
            N(0, 0.02); with ``n_ctx > k`` the template fills the last k vectors and the others are zero.
    """

    def __init__(self, n_ctx: int | None, width: int, num_classes: int | None = None, init: Tensor | None = None):
        super().__init__()
        if init is None and n_ctx is None:
            raise ConfigError("the number of context tokens is not set; give n_ctx (CoOp: 16) or an init template")
        n = int(init.shape[0]) if n_ctx is None and init is not None else int(n_ctx)  # type: ignore[arg-type]
        if n < 1:
            raise ConfigError(f"n_ctx={n} is invalid: a prompt needs at least one context token (CoOp: 16)")
        if init is not None and init.shape[0] > n:
            raise ConfigError(
                f"n_ctx={n} is shorter than the {init.shape[0]} tokens of the init template; use n_ctx >= "
                f"{init.shape[0]} or n_ctx=null"
            )
        shape = (n, width) if num_classes is None else (int(num_classes), n, width)
        if init is None:
            vectors = torch.empty(shape)
            nn.init.normal_(vectors, std=CONTEXT_STD)
        else:
            vectors = torch.zeros(shape)
            vectors[..., n - init.shape[0] :, :] = init.to(vectors.dtype)
        self.vectors = nn.Parameter(vectors)
        self.n_ctx = n
        self.class_specific = num_classes is not None

    def per_class(self, num_classes: int) -> Tensor:
        """The context of each class, ``(num_classes, n_ctx, width)`` (a view for a generic context)."""
        v = self.vectors
        return v if self.class_specific else v.unsqueeze(0).expand(num_classes, -1, -1)


class PromptTokens(nn.Module):
    """The frozen parts of C prompts ``[SOS] <n_ctx context slots> <words_i> [EOS] <pad>``.

    Buffers (not saved in checkpoints: they follow from the class names, as in CoOp's ``load_model``):
    ``prefix`` ``(C, 1, width)``, ``suffix`` ``(C, L - 1 - n_ctx, width)``, ``token_ids`` ``(C, L)`` (for
    pooling at the end token). L is CLIP's context length (77), or, when the text tower allows it
    (:attr:`ClipBackbone.truncatable`), the position after the last end token of the C prompts: the padding
    changes nothing in a causal transformer pooled at the end token, and a 16-token CoOp prompt is about 22
    positions instead of 77, about 3.5x less text-tower work per step with identical features.
    """

    def __init__(self, clip: ClipBackbone, words: Sequence[str], n_ctx: int, truncate: bool = True) -> None:
        super().__init__()
        slots = " ".join([PLACEHOLDER] * n_ctx)
        texts = [f"{slots} {w}" if n_ctx else w for w in words]
        for text, w in zip(texts, words, strict=True):
            n = token_count(clip, text) + 2
            if n > clip.context_length:
                raise ConfigError(
                    f"the prompt for {w!r} is {n} tokens with {n_ctx} context tokens, longer than CLIP's context "
                    f"of {clip.context_length}; use fewer context tokens or a shorter class name"
                )
        ids = clip.tokenize(texts)
        if truncate and clip.truncatable:
            ids = ids[:, : int(ids.argmax(dim=1).max()) + 1]  # up to the last end token (the largest id)
        placeholder = int(clip.tokenize([PLACEHOLDER])[0, 1])
        if n_ctx and not bool((ids[:, 1 : 1 + n_ctx] == placeholder).all()):
            raise RuntimeError("the context placeholders did not tokenize to one token each")  # tokenizer change
        embeddings = clip.embed_tokens(ids).float()
        self.register_buffer("prefix", embeddings[:, :1].clone(), persistent=False)
        self.register_buffer("suffix", embeddings[:, 1 + n_ctx :].clone(), persistent=False)
        self.register_buffer("token_ids", ids, persistent=False)
        self.n_ctx = n_ctx
        self.texts = tuple(texts)

    def __len__(self) -> int:
        return int(self.token_ids.shape[0])

    def assemble(self, context: Tensor) -> Tensor:
        """Prompt embeddings ``(C, L, width)`` from the context ``(C, n_ctx, width)``."""
        return torch.cat([self.prefix.to(context.dtype), context, self.suffix.to(context.dtype)], dim=1)


class CoOpPrompt(nn.Module):
    """CoOp's prompt learner: ``[SOS] ctx_1..ctx_M {class}. [EOS]`` for every class; ``forward(clip)`` gives
    the text features ``(C, D)``.

    Args:
        clip: the frozen CLIP (its tokenizer and token table build the buffers; it is not stored).
        class_names: readable class names, in label order.
        n_ctx: context length (CoOp: 16); ``None`` with ``init`` = the template's length.
        init: ``None`` (random, CoOp's default) or a template such as ``"a photo of a"``.
        class_specific: one context per class (CoOp's CSC) instead of a shared one.
        suffix: the words after the context, ``{}`` = the class name (CoOp: ``"{}."``).
        truncate: drop the padding after the last end token (same features, less work; :class:`PromptTokens`).
    """

    def __init__(
        self,
        clip: ClipBackbone,
        class_names: Sequence[str],
        n_ctx: int | None = 16,
        init: str | None = None,
        class_specific: bool = False,
        suffix: str = "{}.",
        truncate: bool = True,
    ) -> None:
        super().__init__()
        init_vectors = template_embeddings(clip, init) if init else None
        self.context = PromptContext(n_ctx, clip.text_width, len(class_names) if class_specific else None, init_vectors)
        self.tokens = PromptTokens(clip, [suffix.format(name) for name in class_names], self.context.n_ctx, truncate)
        self.init = init

    def embeddings(self) -> Tensor:
        """The prompts as token embeddings ``(C, L, width)``."""
        return self.tokens.assemble(self.context.per_class(len(self.tokens)))

    def forward(self, clip: ClipBackbone) -> Tensor:
        return clip.encode_prompts(self.embeddings(), self.tokens.token_ids)


class DomainPrompt(nn.Module):
    """DAPL's prompts: ``[SOS] shared ctx (M) · domain ctx (M_d) {class}, a {domain} image. [EOS]``.

    One shared context (generic, or class-specific as in DAPL's CSC config and PGA's ``ctx_cls``) and one
    generic context per domain; ``forward(clip, d)`` gives the text features ``(C, D)`` of domain ``d``.
    Official DAPrompt ``trainers/dapl.py``: M = M_d = 16, N(0, 0.02) init. The official text is built as
    ``"X ... X {class} , a {domain} image.."`` (a doubled period); here the suffix is ``"{class}, a {domain}
    image."`` (CLIP's tokenizer splits the comma either way).
    """

    def __init__(
        self,
        clip: ClipBackbone,
        class_names: Sequence[str],
        domain_names: Sequence[str],
        n_ctx: int = 16,
        n_domain_ctx: int = 16,
        class_specific: bool = False,
        suffix: str = "{class_name}, a {domain} image.",
        truncate: bool = True,
    ) -> None:
        super().__init__()
        if len(domain_names) < 1:
            raise ConfigError("DAPL prompts need at least one domain name")
        width = clip.text_width
        self.shared = PromptContext(n_ctx, width, len(class_names) if class_specific else None)
        self.domains = nn.ModuleList([PromptContext(n_domain_ctx, width) for _ in domain_names])
        n_total = self.shared.n_ctx + int(n_domain_ctx)
        self.tokens = nn.ModuleList(
            [
                PromptTokens(clip, [suffix.format(class_name=c, domain=d) for c in class_names], n_total, truncate)
                for d in domain_names
            ]
        )
        self.domain_names = tuple(domain_names)
        self.num_classes = len(class_names)

    def embeddings(self, domain: int) -> Tensor:
        """The prompts of ``domain`` as token embeddings ``(C, L, width)``."""
        shared = self.shared.per_class(self.num_classes)
        own = self.domains[domain].per_class(self.num_classes)
        return self.tokens[domain].assemble(torch.cat([shared, own], dim=1))

    def forward(self, clip: ClipBackbone, domain: int) -> Tensor:
        return clip.encode_prompts(self.embeddings(domain), self.tokens[domain].token_ids)


class ZeroShotHead(nn.Module):
    """Zero-shot CLIP: the normalized text features of ``template.format(class)`` for every class, computed
    once (frozen buffers, not saved in checkpoints); ``forward(image_features, logit_scale)`` gives logits.

    CoOp/ProGrad/DAPL all use ``"a photo of a {}."`` for generic objects (ProGrad's ``CUSTOM_TEMPLATES``,
    DAPL's naive prompt).
    """

    def __init__(self, clip: ClipBackbone, class_names: Sequence[str], template: str = "a photo of a {}.") -> None:
        super().__init__()
        if "{}" not in template:
            raise ConfigError(f"the zero-shot template {template!r} has no {{}} for the class name")
        self.prompts = tuple(template.format(name) for name in class_names)
        features = clip.encode_text(self.prompts).float()
        self.register_buffer("text_features", F.normalize(features, dim=-1), persistent=False)

    def forward(self, image_features: Tensor, logit_scale: Tensor | float) -> Tensor:
        return clip_logits(image_features, self.text_features.to(image_features.dtype), logit_scale)
