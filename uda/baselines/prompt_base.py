"""What the CLIP prompt baselines (zeroshot_clip, coop, dapl, prograd) share.

* The backbone is a frozen :class:`~uda.models.clip.ClipBackbone`; the prompt vectors are the only trainable
  tensors and the only ones given to the optimizer (the towers are in no optimizer). They form the ``heads``
  learning-rate group, so the usual ``lr_mult`` keys apply; the ``backbone`` group is empty.
* Class names come from the dataset (``uda.train`` passes ``dataset_class_names`` and ``dataset_domains``
  to baselines that ask for them), made readable (``Alarm_Clock`` -> ``alarm clock``); ``class_names`` in the
  config replaces them, one per class in label order.
* Scopes. ``official_scope`` names the shared prompt by module path (``prompt.shared``): the Gram scope of
  ``engine.gram_scope=official`` and of ``engine.gram_scope=shared`` (the trainable parameters every loss reaches; the
  frozen features have none). ``shared_scope`` is the module whose output every loss reads, the per-image
  features ``image_encoder`` (what feature analyses hook). ``engine.gram_scope=backbone`` is refused: the towers
  are frozen, so their Gram matrix would be empty.
* ``cache_image_features=true`` keeps the frozen tower's features per image
  (:class:`~uda.models.feature_cache.ImageFeatureCache`); it pays off without augmentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from torch import Tensor, nn

from uda.baselines.base import GRAM_SCOPES, Baseline
from uda.errors import ConfigError
from uda.models.clip import ClipBackbone, readable
from uda.models.feature_cache import FrozenImageFeatures, ImageFeatureCache


def resolve_class_names(
    num_classes: int, dataset_class_names: Sequence[str] | None, class_names: Sequence[str] | None
) -> tuple[str, ...]:
    """Readable class names for the prompts: ``class_names`` if given, else the dataset's; checked against the
    dataset's number of classes."""
    given = class_names is not None
    names = list(class_names) if given else list(dataset_class_names or [])
    where = "baseline.class_names" if given else "the dataset's class names"
    if not names:
        raise ConfigError(
            "the dataset gives no class names for the prompts; pass baseline.class_names=[...] with one name per "
            "class in label order"
        )
    if len(names) != num_classes:
        raise ConfigError(
            f"{where} has {len(names)} names but the dataset has {num_classes} classes; give one name per class "
            "in the dataset's label order, or baseline.class_names=null to use the dataset's"
        )
    words = [readable(n) for n in names]
    empty = [str(n) for n, w in zip(names, words, strict=True) if not w]
    repeated = sorted({w for w in words if words.count(w) > 1})
    if empty or repeated:
        problem = f"empty names {empty}" if empty else f"repeated names {repeated}"
        raise ConfigError(f"{where} has {problem}; every class needs its own name for its prompt")
    return tuple(words)


class PromptBaseline(Baseline):
    """A baseline on a frozen CLIP whose trainable parameters are prompt vectors (see the module docstring).

    Subclasses set ``official_scope`` to the module paths of their shared prompt.
    """

    official_scope: ClassVar[tuple[str, ...]] = ("prompt",)
    shared_scope: ClassVar[tuple[str, ...]] = ("image_encoder",)

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        dataset_class_names: Sequence[str] | None = None,
        cache_image_features: bool = False,
        cache_max_entries: int | None = None,
    ) -> None:
        if not isinstance(backbone, ClipBackbone):
            raise ConfigError(
                f"baseline={self.name} prompts CLIP's text tower, but the backbone is {type(backbone).__name__}; "
                "use backbone=clip (backbone.model=RN50, ViT-B-16, ...) or backbone=clip_tiny"
            )
        super().__init__(backbone, num_classes)
        self.backbone: ClipBackbone = backbone
        self.class_names = resolve_class_names(self.num_classes, dataset_class_names, class_names)
        cache = ImageFeatureCache(cache_max_entries) if cache_image_features else None
        self.image_encoder = FrozenImageFeatures(cache)

    # ----------------------------------------------------------------------------------------- features
    def image_features(self, x: Tensor) -> Tensor:
        """Frozen image features of a batch, from the cache when it is on."""
        return self.image_encoder(self.backbone, x)

    def cache_metrics(self) -> dict[str, float]:
        """``feature_cache_hit_rate`` when the cache is on (logged as ``train/feature_cache_hit_rate``)."""
        cache = self.image_encoder.cache
        return {} if cache is None else {"feature_cache_hit_rate": cache.hit_rate}

    # ------------------------------------------------------------------------------------- parameters
    def optimizer_groups(self) -> dict[str, dict[str, list[nn.Parameter]]]:
        """Only the prompt vectors, as the ``heads`` group; the frozen towers are in no optimizer."""
        trainable = [p for p in self.parameters() if p.requires_grad]
        return {"main": {"backbone": [], "heads": trainable}}

    def scope_parameters(self, scope: str, stage: str | None = None) -> list[nn.Parameter]:
        if scope == "backbone":
            raise ConfigError(
                f"engine.gram_scope=backbone is empty for {self.name}: the CLIP towers are frozen; use "
                "engine.gram_scope=official (the shared prompt) or shared"
            )
        if scope not in GRAM_SCOPES:
            raise ValueError(f"unknown Gram scope {scope!r}; choose one of {', '.join(GRAM_SCOPES)}")
        # official and shared: the shared prompt (the features every loss reads are frozen)
        return [p for name in self.official_scope_for(stage) for p in self.get_submodule(name).parameters()]
