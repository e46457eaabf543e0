"""DANN: domain-adversarial training with a gradient reversal layer (Ganin et al., 2016)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uda.baselines.base import Stage, StageOutput, UDABatch
from uda.baselines.trunk import ClassifierTrunk
from uda.models.grl import WarmStartSchedule, grad_reverse
from uda.models.heads import DomainDiscriminator


def domain_labels(num_source: int, num_target: int, like: Tensor) -> Tensor:
    """1 for source rows, 0 for target rows (the CDAN/DANN convention)."""
    return torch.cat([like.new_ones(num_source), like.new_zeros(num_target)])


def discriminator_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of samples whose domain the discriminator gets right (0.5 = fully confused)."""
    return ((logits > 0).to(labels.dtype) == labels).float().mean().detach()


class DANN(ClassifierTrunk):
    """Features → GRL(λ(i)) → domain discriminator; alignment loss = domain BCE.

    Losses: ``align`` (domain BCE, loss "1") and ``cls`` (source CE); the update minimizes
    trade_off·align + cls, the GRL making the feature extractor maximize the domain loss.
    The official GH code has no DANN; we follow its CDAN convention (Gram over backbone + bottleneck +
    classifier, trade-off applied after harmonization) and, like our CDAN, leave the discriminator's
    gradient unweighted by tau (stage ``tau_applies_to="gram_params"``, see :class:`~uda.baselines.CDAN`).
    """

    name = "dann"

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        trade_off: float = 1.0,
        bottleneck_dim: int | None = None,
        bottleneck_kind: str = "linear",
        discriminator_hidden: int = 1024,
        discriminator_dropout: float = 0.5,
        grl: WarmStartSchedule | None = None,
    ) -> None:
        super().__init__(backbone, num_classes, bottleneck_dim, bottleneck_kind)
        self.discriminator = DomainDiscriminator(self.feature_dim, discriminator_hidden, discriminator_dropout)
        self.grl = grl or WarmStartSchedule()
        self.trade_off = float(trade_off)
        # loss "1" = alignment (official order); tau leaves the discriminator alone (see class docs)
        main = Stage(
            "main",
            trade_offs={"align": self.trade_off, "cls": 1.0},
            loss_fn=self.adaptation_losses,
            harmonize=(("align", "cls"),),
            tau_applies_to="gram_params",
        )
        self._stages = (main,)

    @property
    def stages(self) -> tuple[Stage, ...]:
        return self._stages

    def adaptation_losses(self, batch: UDABatch, iteration: int) -> StageOutput:
        """``align`` (domain BCE behind the GRL) and ``cls`` (source CE)."""
        ns = batch.x_source.shape[0]
        features = self.features(torch.cat([batch.x_source, batch.x_target]))
        logits = self.classifier(features[:ns])
        coeff = self.grl(iteration)
        d_logits = self.discriminator(grad_reverse(features, coeff))
        labels = domain_labels(ns, features.shape[0] - ns, d_logits)
        align = F.binary_cross_entropy_with_logits(d_logits, labels)
        return StageOutput(
            {"align": align, "cls": F.cross_entropy(logits, batch.y_source)},
            {"grl_coeff": coeff, "domain_acc": discriminator_accuracy(d_logits, labels)},
            features,
        )
