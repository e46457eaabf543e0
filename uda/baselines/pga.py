"""PGA (Phan et al., "Enhancing Domain Adaptation through Prompt Gradient Alignment", NeurIPS 2024).

Model (official ``LA/model.py``): a class-specific shared context ``ctx_cls`` ``[C, 16, d]`` and one generic context
per domain ``[1, 16, d]``; the prompt of class c for domain k is ``[SOS] ctx_cls[c] · ctx_k {class}. [EOS]``
(:class:`~uda.models.prompt.DomainPrompt` with a class-specific shared part and the suffix ``"{class}."``).

Losses of the one stage, in the official order: ``target`` (cross-entropy of target images against the target-domain
prompts, on confident pseudo-labels) and ``source`` (cross-entropy of labelled source images against the source-domain
prompts); trade-offs {target: 1, source: λ}. The update is PGA's closure procedure
(:func:`uda.procedures.pga_backward`, radius ρ and align a from this baseline): the stage declares ``procedure =
"pga"`` and exposes :meth:`PGA.private_parameters` and :meth:`PGA.loss_closure` for it. With the plain backward
procedure the same stage is DAPL with PGA's prompts (PGA at ρ = a = 0), and every harmonizer applies to the pair.

Pseudo-labels, the two official variants:

* ``fixed`` (``LA/dataloader.py``): zero-shot CLIP "A photo of a {class}", plain softmax, kept where the top
  probability is > 0.4, computed once per target image and never refreshed. The official code labels the whole
  target set before training; here each target image is labelled the first time it is seen and the label is memoized
  under the image's content fingerprint (:class:`FixedPseudoLabels`). Zero-shot CLIP is deterministic on an image, so
  without target augmentation (the official setting: the target images are preprocessed once) the labels are the
  official ones, with no pass over the data before training and no access to the data loaders.
* ``online`` (``DAPrompt/trainers/lapa.py``): every batch, the frozen naive prompt "a photo of a {class}.",
  softmax with temperature T, kept where the top probability is >= 0.6.

Evaluation (official ``test``): the softmax average of the source- and target-prompt predictions (``ensemble``);
:meth:`PGA.prediction_variants` gives all three (ensemble, source, target); ``predict`` uses ``predict_with``. The
number the official code reports is the maximum target accuracy over all evaluations: an oracle selection (in the
summary: ``target_acc_best``), not a model choice available without target labels (``target_acc_last``).

The official LA code also has an entropy term on the unconfident target samples (``entropy_tradeoff``); every logged
official run sets it to 0, so it is left out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uda.baselines.base import Stage, StageOutput, UDABatch
from uda.baselines.dapl import PREDICT_WITH, SOURCE, TARGET, confident_pseudo_labels, masked_cross_entropy
from uda.baselines.prompt_base import PromptBaseline
from uda.errors import ConfigError
from uda.models.clip import readable
from uda.models.feature_cache import ImageFeatureCache
from uda.models.prompt import DomainPrompt, ZeroShotHead, clip_logits
from uda.procedures.pga import check_pga_settings

#: the two official pseudo-labelling variants and their default thresholds
PSEUDO_LABELS = {"fixed": 0.4, "online": 0.6}
#: the official LA code's zero-shot text for the fixed pseudo-labels
FIXED_TEMPLATE = "A photo of a {}"


class FixedPseudoLabels:
    """Pseudo-labels computed once per target image and never refreshed (official ``LA/dataloader.py``).

    ``__call__(x, zeroshot_logits)`` returns (labels, confident) for the batch: images seen before keep their first
    label; new ones get argmax softmax(logits) and ``confident = max prob > threshold`` (strict, as official).
    Images are keyed by the content fingerprint of :mod:`uda.models.feature_cache`.
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = float(threshold)
        self._keys = ImageFeatureCache()
        self._labels: dict[tuple[int, ...], tuple[int, bool]] = {}

    def __len__(self) -> int:
        return len(self._labels)

    def __call__(self, x: Tensor, zeroshot_logits: Callable[[], Tensor]) -> tuple[Tensor, Tensor]:
        keys = self._keys.keys(x)
        if any(k not in self._labels for k in keys):
            probs = torch.softmax(zeroshot_logits().float(), dim=-1)
            confidence, labels = probs.max(dim=-1)
            confident = confidence > self.threshold
            for k, label, ok in zip(keys, labels.tolist(), confident.tolist(), strict=True):
                self._labels.setdefault(k, (int(label), bool(ok)))
        pairs = [self._labels[k] for k in keys]
        labels = torch.tensor([p[0] for p in pairs], dtype=torch.long, device=x.device)
        confident = torch.tensor([p[1] for p in pairs], dtype=torch.bool, device=x.device)
        return labels, confident


class PGAPasses:
    """The losses of one batch as a closure: ``passes(name)`` evaluates ``target`` or ``source`` at the prompts'
    current values. Image features and pseudo-labels depend only on the frozen towers, so they are computed on the
    first call and reused by the perturbed re-evaluations of :func:`~uda.procedures.pga_backward`."""

    def __init__(self, model: PGA, batch: UDABatch) -> None:
        self.model, self.batch = model, batch
        self._features: dict[str, Tensor] = {}
        self._pseudo: tuple[Tensor, Tensor] | None = None

    def features(self, domain: str) -> Tensor:
        if domain not in self._features:
            x = self.batch.x_source if domain == "source" else self.batch.x_target
            self._features[domain] = self.model.image_features(x)
        return self._features[domain]

    def pseudo_labels(self) -> tuple[Tensor, Tensor]:
        if self._pseudo is None:
            self._pseudo = self.model.pseudo_labels(self.batch.x_target, self.features("target"))
        return self._pseudo

    def __call__(self, name: str) -> Tensor:
        if name == "source":
            logits = self.model.domain_logits(self.features("source"), SOURCE)
            return F.cross_entropy(logits, self.batch.y_source)
        if name == "target":
            labels, confident = self.pseudo_labels()
            return masked_cross_entropy(self.model.domain_logits(self.features("target"), TARGET), labels, confident)
        raise KeyError(f"PGA has the losses 'target' and 'source', not {name!r}")

    @property
    def metrics(self) -> dict[str, Tensor | float]:
        _, confident = self.pseudo_labels()
        return {"pseudo_label_rate": confident.float().mean(), **self.model.cache_metrics()}


class LazyLosses(Mapping[str, Tensor]):
    """Named losses evaluated on first access (``losses[name]`` calls ``closure(name)`` once)."""

    def __init__(self, closure: Callable[[str], Tensor], names: Sequence[str]) -> None:
        self._closure, self._names, self._values = closure, tuple(names), {}

    def __getitem__(self, name: str) -> Tensor:
        if name not in self._names:
            raise KeyError(name)
        if name not in self._values:
            self._values[name] = self._closure(name)
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class PGA(PromptBaseline):
    """PGA's prompts, losses, pseudo-labels and evaluation (see the module docstring).

    Official defaults (``LA/main.py``, Office-Home RN50): 16 + 16 context tokens, class-specific shared context,
    ρ = 3e-4, a = 1, λ = 0.3, fixed pseudo-labels at 0.4; AdamW 3e-3, batch 30, 1000 iterations, cosine schedule
    stepped every iterations/20 (``conf/recipe/officehome_pga.yaml``).
    """

    name = "pga"
    official_scope = ("prompt.shared",)

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        trade_off: float = 0.3,
        radius: float = 3e-4,
        align: float = 1.0,
        pseudo_labels: str = "fixed",
        threshold: float | None = None,
        temperature: float = 1.0,
        n_ctx: int = 16,
        n_domain_ctx: int = 16,
        class_specific: bool = True,
        suffix: str = "{class_name}.",
        online_template: str = "a photo of a {}.",
        predict_with: str = "ensemble",
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
        check_pga_settings(radius, align)
        if not trade_off >= 0:
            raise ConfigError(f"baseline.trade_off={trade_off} is invalid: PGA's lambda must be >= 0 (official 0.3)")
        if pseudo_labels not in PSEUDO_LABELS:
            raise ConfigError(
                f"baseline.pseudo_labels={pseudo_labels!r} is unknown; choose fixed (zero-shot once, official LA) or "
                "online (every batch, official Dassl trainer)"
            )
        threshold = PSEUDO_LABELS[pseudo_labels] if threshold is None else float(threshold)
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"baseline.threshold={threshold} is outside [0, 1] (PGA: 0.4 fixed, 0.6 online)")
        if temperature <= 0:
            raise ConfigError(f"baseline.temperature={temperature} is invalid: it must be positive (PGA: 1.0)")
        if predict_with not in PREDICT_WITH:
            raise ConfigError(
                f"baseline.predict_with={predict_with!r} is unknown; choose one of: {', '.join(PREDICT_WITH)}"
            )
        domains = list(domain_names) if domain_names is not None else list(dataset_domains or [])
        if len(domains) != 2:
            raise ConfigError(
                f"pga needs the source and target domain names (got {domains}); set baseline.domain_names=[<source>, "
                "<target>] or leave it null to take them from the dataset"
            )
        self.domain_names = tuple(readable(d) for d in domains)
        self.trade_off, self.radius, self.align = float(trade_off), float(radius), float(align)
        self.pseudo_label_mode, self.threshold, self.temperature = pseudo_labels, threshold, float(temperature)
        self.predict_with = predict_with
        self.prompt = DomainPrompt(
            self.backbone, self.class_names, self.domain_names, n_ctx, n_domain_ctx, class_specific, suffix
        )
        template = FIXED_TEMPLATE if pseudo_labels == "fixed" else online_template
        self.zeroshot = ZeroShotHead(self.backbone, self.class_names, template)
        self.fixed_labels = FixedPseudoLabels(threshold) if pseudo_labels == "fixed" else None
        main = Stage(
            "main",
            trade_offs={"target": 1.0, "source": self.trade_off},
            loss_fn=self.stage_losses,
            harmonize=(("target", "source"),),
            tau_applies_to="gram_params",
            procedure="pga",  # engine.procedure=backprop trains the same stage with the gradient engine
        )
        self._last: tuple[UDABatch, PGAPasses] | None = None
        self._stages = (main,)

    @property
    def stages(self) -> tuple[Stage, ...]:
        return self._stages

    # ------------------------------------------------------------------------------- the procedure
    def procedure_options(self, stage: str) -> dict[str, float]:
        """Keyword arguments of the stage's procedure: ``radius`` ρ and ``align`` a of ``pga_backward``."""
        return {"radius": self.radius, "align": self.align}

    def private_parameters(self, stage: str) -> dict[str, list[nn.Parameter]]:
        """Each loss's own parameters: the target-domain context for ``target``, the source's for ``source``."""
        return {
            "target": list(self.prompt.domains[TARGET].parameters()),
            "source": list(self.prompt.domains[SOURCE].parameters()),
        }

    def loss_closure(self, batch: UDABatch) -> PGAPasses:
        """The stage's losses on ``batch`` as a closure ``name -> loss`` at the current prompt values; the same
        object for repeated calls on the same batch (the frozen features and pseudo-labels are computed once)."""
        if self._last is None or self._last[0] is not batch:
            self._last = (batch, PGAPasses(self, batch))  # holding the batch keeps the identity check sound
        return self._last[1]

    def stage_losses(self, batch: UDABatch, iteration: int) -> StageOutput:
        """``target`` and ``source``, each computed when first read: a closure procedure that re-runs the stage
        to re-evaluate one loss at a perturbed point pays for that loss only, and reuses the batch's features."""
        passes = self.loss_closure(batch)
        return StageOutput(LazyLosses(passes, ("target", "source")), passes.metrics)  # type: ignore[arg-type]

    # ------------------------------------------------------------------------------- pseudo-labels
    def pseudo_labels(self, x_target: Tensor, target_features: Tensor) -> tuple[Tensor, Tensor]:
        """(labels, confident) of a target batch, by the configured variant (see the module docstring)."""
        with torch.no_grad():
            if self.fixed_labels is not None:
                return self.fixed_labels(
                    x_target, lambda: self.zeroshot(target_features.float(), self.backbone.logit_scale)
                )
            zeroshot = self.zeroshot(target_features, self.backbone.logit_scale)
        return confident_pseudo_labels(zeroshot, self.temperature, self.threshold)

    # ---------------------------------------------------------------------------------- evaluation
    def domain_logits(self, image_features: Tensor, domain: int) -> Tensor:
        return clip_logits(image_features, self.prompt(self.backbone, domain), self.backbone.logit_scale)

    def prediction_variants(self, x: Tensor) -> dict[str, Tensor]:
        """Class scores of the three official evaluations: ``ensemble`` (softmax average of the two prompts),
        ``source`` and ``target`` (each prompt's logits)."""
        features = self.image_features(x)
        source = self.domain_logits(features, SOURCE)
        target = self.domain_logits(features, TARGET)
        ensemble = (source.float().softmax(dim=-1) + target.float().softmax(dim=-1)) / 2
        return {"ensemble": ensemble, "source": source, "target": target}

    def predict(self, x: Tensor) -> Tensor:
        features = self.image_features(x)
        if self.predict_with == "target":
            return self.domain_logits(features, TARGET)
        if self.predict_with == "source":
            return self.domain_logits(features, SOURCE)
        probs = [self.domain_logits(features, d).float().softmax(dim=-1) for d in (SOURCE, TARGET)]
        return (probs[0] + probs[1]) / 2
