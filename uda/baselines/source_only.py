"""Source-only training: cross-entropy on the labelled source domain, no adaptation."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from uda.baselines.base import Stage, StageOutput, UDABatch
from uda.baselines.trunk import ClassifierTrunk


class SourceOnly(ClassifierTrunk):
    """Backbone (+ optional bottleneck) + linear classifier trained on source labels only.

    The lower bound every UDA table starts from. It has a single loss, so any harmonizer is a no-op.
    """

    name = "source_only"

    def __init__(
        self, backbone: nn.Module, num_classes: int, bottleneck_dim: int | None = None, bottleneck_kind: str = "linear"
    ) -> None:
        super().__init__(backbone, num_classes, bottleneck_dim, bottleneck_kind)
        self._stages = (Stage("main", trade_offs={"cls": 1.0}, loss_fn=self.source_losses),)

    @property
    def stages(self) -> tuple[Stage, ...]:
        return self._stages

    def source_losses(self, batch: UDABatch, iteration: int) -> StageOutput:
        """Source cross-entropy ``cls``."""
        features = self.features(batch.x_source)
        logits = self.classifier(features)
        return StageOutput({"cls": F.cross_entropy(logits, batch.y_source)}, features=features)
