"""GVB-GD: gradually vanishing bridges on the generator and the discriminator (Cui et al., CVPR 2020).

Recipe: ``reference/baselines.md`` §2.3 (official ``cuishuhao/GVB:GVB-GD``, reused by ``fuxianghuang1/GH:gvb``)
and §1.1/§1.4 for where GH is applied. The generator bridge ``gvbg`` is subtracted from the classifier
output, y = fc(f) − gvbg(f), so the classifier ``fc`` need not absorb the domain-specific part of the
prediction; a penalty mean|gvbg(f)| makes the bridge vanish gradually. The discriminator sees the softmax
output only (DANN on predictions, not CDAN's multilinear map) and carries a bridge of its own, ``gvbd``,
penalized the same way: domain logit = ad_layer(h) − gvbd(h).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uda.baselines.base import Baseline, Stage, StageOutput, UDABatch
from uda.baselines.cdan import prediction_entropy
from uda.baselines.dann import discriminator_accuracy, domain_labels
from uda.errors import ConfigError
from uda.models.grl import WarmStartSchedule, grad_reverse

#: the official ``Myloss`` adds this to the probabilities inside the logarithms of its BCE
DOMAIN_BCE_EPS = 1e-8
#: GH's tau multiplies only the Gram scope by default (see :class:`GVB`)
DEFAULT_TAU_APPLIES_TO = "gram_params"


def kaiming_linear(in_features: int, out_features: int) -> nn.Linear:
    """``nn.Linear`` with kaiming-normal weights and zero bias (the official GVB ``init_weights``)."""
    layer = nn.Linear(in_features, out_features)
    nn.init.kaiming_normal_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def gvb_entropy_weights(probs: Tensor, coeff: float, num_source: int) -> Tensor:
    """GVB-GD sample weights: w = exp(−H(p)), normalized to sum 1 within source and within target.

    Unlike CDAN+E there is no "1 +". A GRL with the discriminator's coefficient sits on H (official
    ``entropy.register_hook(grl_hook(coeff))``), so the weight back-propagates into the classifier
    reversed and scaled by ``coeff``; the per-domain normalizers are constants (``.item()`` officially).
    """
    w = torch.exp(-grad_reverse(prediction_entropy(probs), coeff))
    ws, wt = w[:num_source], w[num_source:]
    return torch.cat([ws / ws.sum().detach(), wt / wt.sum().detach()])


def weighted_domain_bce(domain_probs: Tensor, labels: Tensor, weights: Tensor, eps: float = DOMAIN_BCE_EPS) -> Tensor:
    """The official ``Myloss``: Σ_i w_i·[−y_i log(p_i + ε) − (1 − y_i) log(1 − p_i + ε)] / 2.

    ``domain_probs`` are sigmoid outputs (the official code takes the BCE of probabilities, with ε = 1e-8
    inside both logarithms, which also caps a saturated sample's loss at −log ε ≈ 18.4). The weights sum
    to 1 per domain, so dividing by 2 (the number of domains) makes this a weighted mean.
    """
    bce = -(labels * torch.log(domain_probs + eps) + (1.0 - labels) * torch.log(1.0 - domain_probs + eps))
    return (weights * bce).sum() / 2.0


def bridge_loss(bridge_output: Tensor) -> Tensor:
    """mean |bridge output| over samples and outputs: the penalty that makes a bridge vanish gradually."""
    return bridge_output.abs().mean()


class BridgedDomainDiscriminator(nn.Module):
    """Official GVB ``AdversarialNetwork``: Linear(in, h)-ReLU-Dropout-Linear(h, h)-ReLU-Dropout (``body``)
    followed by two heads ``ad_layer`` (Linear(h, 1), official ``ad_layer3``) and the bridge ``gvbd``
    (Linear(h, 1); absent with ``bridge=False``). Every Linear is kaiming-normal with zero bias.

    Returns (domain logit, bridge output or ``None``); the domain logit is ad_layer(h) − gvbd(h) with
    the bridge (official GVBD == 1), ad_layer(h) without. Source = 1, target = 0. No GRL inside: the
    caller reverses the input, so that the coefficient comes from the iteration counter.
    """

    def __init__(self, in_features: int, hidden: int = 1024, dropout: float = 0.5, bridge: bool = True) -> None:
        super().__init__()
        self.body = nn.Sequential(
            kaiming_linear(in_features, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            kaiming_linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
        )
        self.ad_layer = kaiming_linear(hidden, 1)
        self.gvbd = kaiming_linear(hidden, 1) if bridge else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        h = self.body(x)
        ad = self.ad_layer(h).squeeze(-1)
        if self.gvbd is None:
            return ad, None
        bridge = self.gvbd(h).squeeze(-1)
        return ad - bridge, bridge


class GVB(Baseline):
    """GVB-GD: classifier ``fc`` with generator bridge ``gvbg``, discriminator on the softmax output with
    bridge ``gvbd`` (``reference/baselines.md`` §2.3).

    Losses (one stage ``main``): ``transfer`` (entropy-weighted domain BCE, the discriminator behind a
    GRL with the CDAN schedule λ(i)), ``cls`` (source CE on the bridged logits), ``gvbg`` =
    mean|gvbg(f)| and ``gvbd`` = mean|gvbd(h)|; update = trade_off·transfer + cls + gvbg_weight·gvbg +
    gvbd_weight·gvbd. As in the official GH code two pairs are harmonized independently, (transfer, cls)
    and (gvbg, gvbd), each with its first loss as loss "1"; the Gram matrix is taken over the base network
    = backbone + ``fc`` + ``gvbg`` (discriminator excluded, ``official_scope``), and the trade-offs
    multiply after harmonization (``trade_off="after"``). ``gvbg_weight=0`` (``gvbd_weight=0``) removes
    that bridge, its loss and the (gvbg, gvbd) pair; the official code instead keeps computing the bridge
    and adds it with weight 0, and subtracts a bridge only when its weight is exactly 1 (here: whenever
    it is > 0).

    tau scope, a deliberate deviation: like CDAN and DANN here, tau multiplies only the Gram scope by
    default (``tau_applies_to="gram_params"``); the discriminator, including its ``gvbd`` head, keeps Σ trade_off_i g_i.
    Both losses that reach the base network only through the GRL (transfer; gvbd entirely) have
    gradients there of size ~λ(i), while their gradients in the discriminator are not scaled by λ. GH's
    tau for such a loss, 1 − g1·g2/‖g‖², grows like 1/λ(i), and the official ``all`` multiplies the
    discriminator's gradient by it. Measured on the offline digits (GH, seed 0, lr 0.01, 300 iterations):
    at iteration 1 tau1(transfer) = 928 and tau2(gvbd) = 977 (tau2(gvbd) stays ~30 median afterwards).
    With ``all`` that one step wrecks the discriminator: from iteration 2 it outputs a saturated constant
    (domain accuracy 0.5, transfer loss 9.21 = −log(1e-8)/2: one domain wholly wrong at the ``Myloss``
    ε cap) and mean|gvbd| jumps from 0.17 to 62; over iterations 25-49 the transfer and gvbd losses still
    average 2.9 and 2.5 (0.66 and 0.13 with ``gram_params``), and at iteration 300 the transfer loss is 0.80 vs
    0.62 and the target accuracy 81.1% vs 82.2%. No NaN, thanks to the ε cap. With ``gram_params`` nothing of
    the kind happens. ``engine.tau_applies_to=all`` restores the official behaviour.
    """

    name = "gvb"
    official_scope = ("backbone", "fc", "gvbg")
    shared_scope = ("backbone",)

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        trade_off: float = 1.0,
        gvbg_weight: float = 1.0,
        gvbd_weight: float = 1.0,
        discriminator_hidden: int = 1024,
        discriminator_dropout: float = 0.5,
        grl: WarmStartSchedule | None = None,
    ) -> None:
        super().__init__(backbone, num_classes)
        for key, value in (("trade_off", trade_off), ("gvbg_weight", gvbg_weight), ("gvbd_weight", gvbd_weight)):
            if value < 0:
                raise ConfigError(f"baseline.{key}={value} is invalid: it must be >= 0 (0 turns the term off)")
        feat = backbone.out_features
        self.fc = kaiming_linear(feat, num_classes)
        self.gvbg = kaiming_linear(feat, num_classes) if gvbg_weight > 0 else None
        self.discriminator = BridgedDomainDiscriminator(
            num_classes, discriminator_hidden, discriminator_dropout, bridge=gvbd_weight > 0
        )
        self.grl = grl or WarmStartSchedule()
        self.trade_off = float(trade_off)
        self.gvbg_weight = float(gvbg_weight)
        self.gvbd_weight = float(gvbd_weight)

        trade_offs = {"transfer": self.trade_off, "cls": 1.0}
        if self.gvbg is not None:
            trade_offs["gvbg"] = self.gvbg_weight
        if self.discriminator.gvbd is not None:
            trade_offs["gvbd"] = self.gvbd_weight
        # official GH pairs, loss "1" first; the bridge pair only exists with both bridges on
        harmonize: tuple[tuple[str, ...], ...] = (("transfer", "cls"),)
        if "gvbg" in trade_offs and "gvbd" in trade_offs:
            harmonize += (("gvbg", "gvbd"),)
        main = Stage(
            "main",
            trade_offs=trade_offs,
            loss_fn=self.adaptation_losses,
            harmonize=harmonize,
            trade_off="after",
            tau_applies_to=DEFAULT_TAU_APPLIES_TO,
        )
        self._stages = (main,)

    @property
    def stages(self) -> tuple[Stage, ...]:
        return self._stages

    def official_scope_for(self, stage: str | None) -> tuple[str, ...]:
        """Base network of the official code: backbone + fc + gvbg (without gvbg when that bridge is off)."""
        return tuple(name for name in self.official_scope if getattr(self, name) is not None)

    def classify(self, features: Tensor) -> tuple[Tensor, Tensor | None]:
        """Bridged logits fc(f) − gvbg(f) and the bridge output gvbg(f) (``None`` without the bridge)."""
        logits = self.fc(features)
        if self.gvbg is None:
            return logits, None
        bridge = self.gvbg(features)
        return logits - bridge, bridge

    def predict(self, x: Tensor) -> Tensor:
        # the official test also subtracts the bridge (``image_classification_test(..., gvbg=GVBG)``)
        return self.classify(self.backbone(x))[0]

    def adaptation_losses(self, batch: UDABatch, iteration: int) -> StageOutput:
        """``transfer``, ``cls`` and the bridge losses ``gvbg``, ``gvbd`` (those whose bridge is on)."""
        ns = batch.x_source.shape[0]
        features = self.backbone(torch.cat([batch.x_source, batch.x_target]))
        logits, g_bridge = self.classify(features)
        probs = F.softmax(logits, dim=1)
        coeff = self.grl(iteration)
        # not detached (unlike CDAN's conditioning): the reversed gradient reaches fc, gvbg and backbone
        d_logits, d_bridge = self.discriminator(grad_reverse(probs, coeff))
        labels = domain_labels(ns, features.shape[0] - ns, d_logits)
        weights = gvb_entropy_weights(probs, coeff, ns)
        losses = {
            "transfer": weighted_domain_bce(torch.sigmoid(d_logits), labels, weights),
            "cls": F.cross_entropy(logits[:ns], batch.y_source),
        }
        if g_bridge is not None:
            losses["gvbg"] = bridge_loss(g_bridge)
        if d_bridge is not None:
            losses["gvbd"] = bridge_loss(d_bridge)
        metrics = {
            "grl_coeff": coeff,
            "domain_acc": discriminator_accuracy(d_logits, labels),
            # the official log's "mean entropy": the mean of exp(−H), i.e. a confidence
            "entropy_weight_mean": torch.exp(-prediction_entropy(probs)).mean().detach(),
        }
        return StageOutput(losses, metrics, features)
