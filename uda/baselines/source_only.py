"""Source-only training: cross-entropy on the labelled source domain, no adaptation."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from uda.baselines.base import Baseline, Stage, StageOutput, UDABatch
from uda.models.heads import Bottleneck


class SourceOnly(Baseline):
    """Backbone (+ optional bottleneck) + linear classifier trained on source labels only.

    The lower bound every UDA table starts from. It has a single loss, so any harmonizer is a no-op.
    """

    name = "source_only"
    official_scope = ("backbone", "bottleneck", "classifier")
    shared_scope = ("backbone", "bottleneck")

    def __init__(
        self, backbone: nn.Module, num_classes: int, bottleneck_dim: int | None = None, bottleneck_kind: str = "linear"
    ) -> None:
        super().__init__(backbone, num_classes)
        feat = backbone.out_features
        self.bottleneck = Bottleneck(feat, bottleneck_dim, bottleneck_kind) if bottleneck_dim else nn.Identity()
        self.classifier = nn.Linear(bottleneck_dim or feat, num_classes)
        self._stages = (Stage("main", coefs={"cls": 1.0}),)

    @property
    def stages(self) -> tuple[Stage, ...]:
        return self._stages

    def predict(self, x: Tensor) -> Tensor:
        return self.classifier(self.bottleneck(self.backbone(x)))

    def compute_losses(self, stage: str, batch: UDABatch, iteration: int) -> StageOutput:
        features = self.bottleneck(self.backbone(batch.x_source))
        logits = self.classifier(features)
        return StageOutput({"cls": F.cross_entropy(logits, batch.y_source)}, features=features)
