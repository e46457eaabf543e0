"""CDAN+E: conditional adversarial domain adaptation with entropy conditioning (Long et al., 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uda.baselines.base import Stage, StageOutput, UDABatch
from uda.baselines.dann import discriminator_accuracy, domain_labels
from uda.baselines.trunk import ClassifierTrunk
from uda.models.grl import WarmStartSchedule, grad_reverse
from uda.models.heads import DomainDiscriminator, RandomizedMultilinearMap, multilinear_map

ENTROPY_EPS = 1e-5  # thuml CDAN: H(p) = -Σ p log(p + 1e-5)


def prediction_entropy(probs: Tensor) -> Tensor:
    """Per-sample entropy H(p) = −Σ_k p_k log(p_k + 1e-5) (thuml CDAN ``Entropy``)."""
    return -(probs * torch.log(probs + ENTROPY_EPS)).sum(dim=1)


def entropy_weights(entropy: Tensor, num_source: int) -> Tensor:
    """CDAN+E sample weights: w = 1 + exp(−H), normalized to sum 1 within source and within target.

    The normalizers are detached (as in the official code), so the weights sum to 2 over the batch.
    """
    w = 1.0 + torch.exp(-entropy)
    ws, wt = w[:num_source], w[num_source:]
    return torch.cat([ws / ws.sum().detach(), wt / wt.sum().detach()])


def cdan_loss(
    features: Tensor,
    logits: Tensor,
    discriminator: nn.Module,
    coeff: float,
    num_source: int,
    *,
    entropy_conditioning: bool = True,
    random_map: RandomizedMultilinearMap | None = None,
) -> tuple[Tensor, Tensor]:
    """CDAN(+E) adversarial loss on a batch whose first ``num_source`` rows are source samples.

    The discriminator sees the multilinear map of features and *detached* class probabilities
    (or its randomized version), behind a GRL with coefficient ``coeff``. With entropy conditioning
    (CDAN+E) each sample's BCE is weighted by the entropy weights; as in the official code a GRL with
    the same coefficient sits on the entropy, so the weight back-propagates reversed into the
    classifier. Returns (loss, discriminator accuracy).
    """
    probs = F.softmax(logits, dim=1)
    cond = probs.detach()
    mapped = random_map(features, cond) if random_map is not None else multilinear_map(features, cond)
    d_logits = discriminator(grad_reverse(mapped, coeff))
    labels = domain_labels(num_source, features.shape[0] - num_source, d_logits)
    acc = discriminator_accuracy(d_logits, labels)
    if not entropy_conditioning:
        return F.binary_cross_entropy_with_logits(d_logits, labels), acc
    bce = F.binary_cross_entropy_with_logits(d_logits, labels, reduction="none")
    weight = entropy_weights(grad_reverse(prediction_entropy(probs), coeff), num_source)
    return (weight * bce).sum() / weight.sum().detach(), acc


class CDAN(ClassifierTrunk):
    """CDAN+E (``entropy=True``, default) or plain CDAN.

    Losses: ``align`` (conditional adversarial loss, loss "1" as in the official GH code) and ``cls``
    (source CE); update = trade_off·align + cls. Official GH defaults: Gram over backbone + bottleneck +
    classifier (discriminator excluded), trade-off applied after harmonization.
    ``randomized=True`` uses the randomized multilinear map (official GH-CDAN default on Office).

    One deviation from the official code, on purpose: tau does not multiply the discriminator's
    gradient by default (stage ``tau_applies_to="gram_params"``). GH's tau1 = 1 − c/‖g1‖² grows like 1/λ(i) while
    the GRL coefficient λ(i) is still small (tau1 reached ~500 in the first iterations on the offline
    digits), and the discriminator's own gradient is not scaled by λ, so the official ``tau_applies_to=all``
    inflates it by that factor: CDAN+E + GH diverged (NaN at iteration 21, lr 0.01, seed 0).
    ``engine.tau_applies_to=all`` restores the official behaviour.
    """

    name = "cdan"

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        trade_off: float = 1.0,
        entropy: bool = True,
        randomized: bool = False,
        randomized_dim: int = 1024,
        bottleneck_dim: int | None = None,
        bottleneck_kind: str = "linear",
        discriminator_hidden: int = 1024,
        discriminator_dropout: float = 0.5,
        grl: WarmStartSchedule | None = None,
    ) -> None:
        super().__init__(backbone, num_classes, bottleneck_dim, bottleneck_kind)
        dim = self.feature_dim
        self.random_map = RandomizedMultilinearMap(dim, num_classes, randomized_dim) if randomized else None
        self.discriminator = DomainDiscriminator(
            randomized_dim if randomized else dim * num_classes, discriminator_hidden, discriminator_dropout
        )
        self.grl = grl or WarmStartSchedule()
        self.entropy = bool(entropy)
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
        """``align`` (the CDAN(+E) loss behind the GRL) and ``cls`` (source CE)."""
        ns = batch.x_source.shape[0]
        features = self.features(torch.cat([batch.x_source, batch.x_target]))
        logits = self.classifier(features)
        coeff = self.grl(iteration)
        align, domain_acc = cdan_loss(
            features,
            logits,
            self.discriminator,
            coeff,
            ns,
            entropy_conditioning=self.entropy,
            random_map=self.random_map,
        )
        cls = F.cross_entropy(logits[:ns], batch.y_source)
        return StageOutput({"align": align, "cls": cls}, {"grl_coeff": coeff, "domain_acc": domain_acc}, features)
