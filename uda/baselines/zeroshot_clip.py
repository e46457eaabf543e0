"""Zero-shot CLIP (Radford et al., 2021): classify with the text features of a hand-written prompt."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from uda.baselines.base import Stage
from uda.baselines.prompt_base import PromptBaseline
from uda.models.prompt import ZeroShotHead


class ZeroShotCLIP(PromptBaseline):
    """Evaluation only: logits = logit_scale · cos(image, text("a photo of a {class}.")), nothing is trained.

    It declares no training stage and has no trainable parameter: every number it reports is CLIP's
    zero-shot accuracy, the reference the prompt methods start from (CoOp, ProGrad and DAPL use the same
    template for generic objects).
    """

    name = "zeroshot_clip"
    official_scope = ()

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        template: str = "a photo of a {}.",
        class_names: Sequence[str] | None = None,
        dataset_class_names: Sequence[str] | None = None,
        cache_image_features: bool = False,
        cache_max_entries: int | None = None,
    ) -> None:
        super().__init__(
            backbone, num_classes, class_names, dataset_class_names, cache_image_features, cache_max_entries
        )
        self.zeroshot = ZeroShotHead(self.backbone, self.class_names, template)

    @property
    def stages(self) -> tuple[Stage, ...]:
        return ()

    def predict(self, x: Tensor) -> Tensor:
        return self.zeroshot(self.image_features(x), self.backbone.logit_scale)
