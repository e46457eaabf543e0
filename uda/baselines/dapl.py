"""DAPL (Ge et al., "Domain Adaptation via Prompt Learning", IEEE TNNLS 2023): shared + domain-specific prompts."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uda.baselines.base import Stage, StageOutput, UDABatch
from uda.baselines.prompt_base import PromptBaseline
from uda.errors import ConfigError
from uda.models.clip import readable
from uda.models.prompt import DomainPrompt, ZeroShotHead, clip_logits

#: which prompts classify at evaluation: the target domain's (official DAPL), the source's, or both
#: (softmax average, PGA's evaluation)
PREDICT_WITH = ("target", "source", "ensemble")
SOURCE, TARGET = 0, 1


def confident_pseudo_labels(zeroshot_logits: Tensor, temperature: float, threshold: float) -> tuple[Tensor, Tensor]:
    """(labels, mask): argmax of softmax(logits / T) and whether its probability reaches ``threshold``
    (official ``dapl.py``: ``max_probs.ge(TAU)``)."""
    probs = torch.softmax(zeroshot_logits.float() / temperature, dim=-1)
    confidence, labels = probs.max(dim=-1)
    return labels, confidence >= threshold


def masked_cross_entropy(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Mean cross-entropy over the samples in ``mask``; 0 (with a graph) when none is.

    The official code divides by ``mask.sum()`` and gets NaN on a batch without a confident sample.
    """
    per_sample = F.cross_entropy(logits, labels, reduction="none")
    weight = mask.to(per_sample.dtype)
    return (per_sample * weight).sum() / weight.sum().clamp(min=1.0)


class DAPL(PromptBaseline):
    """Prompts ``[SOS] shared ctx · domain ctx {class}, a {domain} image. [EOS]`` per domain; one stage with
    two losses:

    * ``source``: cross-entropy of source images against the source-domain prompts and their labels;
    * ``target``: cross-entropy of target images against the target-domain prompts and pseudo-labels from
      zero-shot CLIP ("a photo of a {class}."), softmax with temperature ``temperature``, kept where the
      top probability reaches ``threshold``; weighted by ``trade_off`` (DAPL's U).

    Official DAPrompt ``trainers/dapl.py`` (one backward of source + U·target): 16 shared + 16 domain
    tokens, T = 1, τ = 0.5, U = 1; SGD 3e-3 cosine; evaluation with the target-domain prompts.

    Harmonization: the two losses form a harmonized group over the shared prompt (the Gram scope: the only
    parameters both reach; each domain context gets one loss only). Loss "1" is ``target``, the adaptation
    loss, as the alignment loss is for CDAN+E (``engine.first_loss=source`` swaps them). tau multiplies the
    shared prompt only (``tau_applies_to="gram_params"``): a domain prompt keeps its own loss's gradient. With
    ``harmonizer=none`` the update is the official one.
    """

    name = "dapl"
    official_scope = ("prompt.shared",)

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        trade_off: float = 1.0,
        temperature: float = 1.0,
        threshold: float = 0.5,
        n_ctx: int = 16,
        n_domain_ctx: int = 16,
        class_specific: bool = False,
        template: str = "a photo of a {}.",
        predict_with: str = "target",
        domain_names: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
        dataset_class_names: Sequence[str] | None = None,
        dataset_domains: Sequence[str] | None = None,
        cache_image_features: bool = False,
        cache_max_entries: int | None = None,
    ) -> None:
        super().__init__(
            backbone, num_classes, class_names, dataset_class_names, cache_image_features, cache_max_entries
        )
        if predict_with not in PREDICT_WITH:
            raise ConfigError(
                f"baseline.predict_with={predict_with!r} is unknown; choose one of: {', '.join(PREDICT_WITH)}"
            )
        if temperature <= 0:
            raise ConfigError(f"baseline.temperature={temperature} is invalid: it must be positive (DAPL: 1.0)")
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"baseline.threshold={threshold} is outside [0, 1] (DAPL: 0.5)")
        domains = list(domain_names) if domain_names is not None else list(dataset_domains or [])
        if len(domains) != 2:
            raise ConfigError(
                f"{self.name} needs the source and target domain names for its prompts (got {domains}); set "
                "baseline.domain_names=[<source>, <target>] or leave it null to take them from the dataset"
            )
        self.domain_names = tuple(readable(d) for d in domains)
        self.trade_off = float(trade_off)
        self.temperature = float(temperature)
        self.threshold = float(threshold)
        self.predict_with = predict_with
        self.prompt = DomainPrompt(
            self.backbone, self.class_names, self.domain_names, n_ctx, n_domain_ctx, class_specific
        )
        self.zeroshot = ZeroShotHead(self.backbone, self.class_names, template)
        main = Stage(
            "main",
            trade_offs={"target": self.trade_off, "source": 1.0},
            loss_fn=self.prompt_losses,
            harmonize=(("target", "source"),),
            tau_applies_to="gram_params",
        )
        self._stages = (main,)

    @property
    def stages(self) -> tuple[Stage, ...]:
        return self._stages

    def domain_logits(self, image_features: Tensor, domain: int) -> Tensor:
        return clip_logits(image_features, self.prompt(self.backbone, domain), self.backbone.logit_scale)

    def predict(self, x: Tensor) -> Tensor:
        features = self.image_features(x)
        if self.predict_with == "target":
            return self.domain_logits(features, TARGET)
        if self.predict_with == "source":
            return self.domain_logits(features, SOURCE)
        # the class probabilities averaged over the two prompts (PGA's evaluation); argmax is what counts
        probs = [self.domain_logits(features, d).float().softmax(dim=-1) for d in (SOURCE, TARGET)]
        return (probs[0] + probs[1]) / 2

    def prompt_losses(self, batch: UDABatch, iteration: int) -> StageOutput:
        """``target`` (confident zero-shot pseudo-labels through the target prompt) and ``source`` (CE)."""
        source_features = self.image_features(batch.x_source)
        target_features = self.image_features(batch.x_target)
        with torch.no_grad():
            zeroshot = self.zeroshot(target_features, self.backbone.logit_scale)
        pseudo, confident = confident_pseudo_labels(zeroshot, self.temperature, self.threshold)
        source = F.cross_entropy(self.domain_logits(source_features, SOURCE), batch.y_source)
        target = masked_cross_entropy(self.domain_logits(target_features, TARGET), pseudo, confident)
        metrics = {"pseudo_label_rate": confident.float().mean(), **self.cache_metrics()}
        return StageOutput({"target": target, "source": source}, metrics)
