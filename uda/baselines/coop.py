"""CoOp (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022) trained on the source domain."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from uda.baselines.base import Stage, StageOutput, UDABatch
from uda.baselines.prompt_base import PromptBaseline
from uda.models.prompt import CoOpPrompt, clip_logits


class CoOp(PromptBaseline):
    """Learnable context ``[SOS] ctx_1..ctx_M {class}. [EOS]`` on a frozen CLIP; loss = source cross-entropy.

    Official ``trainers/coop.py``: M = 16 random N(0, 0.02) vectors (or a template's embeddings,
    ``init="a photo of a"``), generic or class-specific (``class_specific``, CSC), class token at the end; SGD
    0.002 with a cosine schedule. One loss, so every harmonizer is a no-op; the target domain is unused (the
    source-only lower bound of the prompt family).
    """

    name = "coop"
    official_scope = ("prompt",)

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        n_ctx: int | None = 16,
        init: str | None = None,
        class_specific: bool = False,
        class_names: Sequence[str] | None = None,
        dataset_class_names: Sequence[str] | None = None,
        cache_image_features: bool = False,
        cache_max_entries: int | None = None,
    ) -> None:
        super().__init__(
            backbone, num_classes, class_names, dataset_class_names, cache_image_features, cache_max_entries
        )
        self.prompt = CoOpPrompt(self.backbone, self.class_names, n_ctx, init, class_specific)
        self._stages = (Stage("main", trade_offs={"cls": 1.0}, loss_fn=self.prompt_losses),)

    @property
    def stages(self) -> tuple[Stage, ...]:
        return self._stages

    def logits(self, image_features: Tensor) -> Tensor:
        return clip_logits(image_features, self.prompt(self.backbone), self.backbone.logit_scale)

    def predict(self, x: Tensor) -> Tensor:
        return self.logits(self.image_features(x))

    def prompt_losses(self, batch: UDABatch, iteration: int) -> StageOutput:
        """``cls``: source CE through the learned prompt."""
        logits = self.logits(self.image_features(batch.x_source))
        return StageOutput({"cls": F.cross_entropy(logits, batch.y_source)}, self.cache_metrics())
