"""The classifier trunk the single-stage baselines share: backbone -> bottleneck -> linear classifier."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from uda.baselines.base import Baseline
from uda.models.heads import Bottleneck


class ClassifierTrunk(Baseline):
    """Backbone, optional bottleneck (identity without ``bottleneck_dim``) and linear classifier.

    Source-only, DANN and CDAN build on it (tllib's ``ImageClassifier``: backbone -> bottleneck -> head);
    the official GH Gram scope of those baselines is the whole trunk, the shared features its bottleneck
    output. Subclasses add their heads after calling ``super().__init__`` (the parameter creation order,
    hence the initial weights at a seed, is trunk first).
    """

    official_scope: ClassVar[tuple[str, ...]] = ("backbone", "bottleneck", "classifier")
    shared_scope: ClassVar[tuple[str, ...]] = ("backbone", "bottleneck")

    def __init__(
        self, backbone: nn.Module, num_classes: int, bottleneck_dim: int | None = None, bottleneck_kind: str = "linear"
    ) -> None:
        super().__init__(backbone, num_classes)
        feat = backbone.out_features
        self.bottleneck = Bottleneck(feat, bottleneck_dim, bottleneck_kind) if bottleneck_dim else nn.Identity()
        #: dimension of the features the classifier (and any discriminator) sees
        self.feature_dim = bottleneck_dim or feat
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Bottleneck features of images ``x``."""
        return self.bottleneck(self.backbone(x))

    def predict(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
