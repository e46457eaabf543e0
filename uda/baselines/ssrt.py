"""SSRT: Safe Self-Refinement for Transformer-based domain adaptation (Sun et al., CVPR 2022).

Official code tsun/SSRT ``model/SSRT.py``; GH placement from fuxianghuang1/GH ``ssrt/model/SSRT.py``
(reference/baselines.md §1.1, §1.4, §2.5). A ViT backbone, a bottleneck, a classifier and a domain
discriminator behind a GRL. Self-refinement: at the input of a randomly chosen transformer block the
target tokens are mixed with those of another target sample, and the predictions on the perturbed
tokens are pulled towards the clean ones (and vice versa) by a confidence-masked KL divergence.
Safe training (:mod:`uda.baselines.safe_training`) ramps the perturbation up and restores a snapshot
when the target predictions collapse.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from uda.baselines.base import Baseline, Stage, StageOutput, UDABatch
from uda.baselines.dann import discriminator_accuracy, domain_labels
from uda.baselines.safe_training import SafeTraining
from uda.errors import ConfigError
from uda.models.grl import WarmStartSchedule, grad_reverse

#: denominator guard of the masked KL average (official value)
MASK_EPS = 1e-6
#: ``sr_layers`` entry meaning "perturb the raw input images" instead of a block's input tokens
RAW_INPUT = -1


# ------------------------------------------------------------------ self-refinement
def masked_kl(p_logits: Tensor, q_logits: Tensor, epsilon: float) -> Tensor:
    """KL(p ‖ q) per sample, averaged over the samples whose max p exceeds ``epsilon``.

    The average divides by (number of such samples + 1e-6), so it is 0 when no sample passes.
    No stop-gradient on either side (official code).
    """
    log_p = F.log_softmax(p_logits, dim=1)
    log_q = F.log_softmax(q_logits, dim=1)
    p = log_p.exp()
    mask = (p.max(dim=1).values > epsilon).to(p.dtype)
    kl = (p * (log_p - log_q)).sum(dim=1)
    return (kl * mask).sum() / (mask.sum() + MASK_EPS)


def self_refinement_loss(clean_logits: Tensor, perturbed_logits: Tensor, epsilon: float, clean_first: bool) -> Tensor:
    """SSRT's SR loss: KL(p_clean ‖ p_perturbed) masked by the clean confidence when ``clean_first``,
    else KL(p_perturbed ‖ p_clean) masked by the perturbed confidence."""
    if clean_first:
        return masked_kl(clean_logits, perturbed_logits, epsilon)
    return masked_kl(perturbed_logits, clean_logits, epsilon)


def append_perturbed_targets(rows: Tensor, num_source: int, alpha: float) -> Tensor:
    """Append y_t + α·(y_t[reversed] − y_t).detach() to ``rows`` (source rows first, then target rows).

    Each target sample is moved towards the target sample at the mirrored batch position; the
    difference is detached, so the perturbed rows back-propagate like the clean target rows.
    """
    target = rows[num_source:]
    perturbed = target + (target.flip(0) - target).detach() * alpha
    return torch.cat([rows, perturbed])


def vision_transformer(backbone: nn.Module) -> nn.Module:
    """The timm ``VisionTransformer`` inside ``backbone``; one sentence if there is none."""
    from timm.models.vision_transformer import VisionTransformer

    model = getattr(backbone, "model", None)
    if not isinstance(model, VisionTransformer):
        found = type(model if model is not None else backbone).__name__
        raise ConfigError(
            f"SSRT perturbs the tokens of a timm VisionTransformer but the backbone is a {found}; "
            "choose a ViT backbone, e.g. backbone=vit_base_patch16_224 or backbone=vit_digits"
        )
    return model


def vit_features(
    vit: nn.Module, x: Tensor, num_source: int = 0, layer: int | None = None, alpha: float = 0.0
) -> Tensor:
    """timm ``VisionTransformer.forward_features`` + ``forward_head(pre_logits=True)``, with perturbed
    target rows appended at the input of block ``layer`` (−1: the raw images; ``None``: no perturbation).

    Returns the pooled features (the CLS token after the final norm for ViT-B/16), one row per input
    row plus one per target row when perturbing.
    """
    if layer == RAW_INPUT:
        x = append_perturbed_targets(x, num_source, alpha)
    tokens = vit.patch_embed(x)
    tokens = vit._pos_embed(tokens)
    tokens = vit.patch_drop(tokens)
    tokens = vit.norm_pre(tokens)
    for index, block in enumerate(vit.blocks):
        if index == layer:
            tokens = append_perturbed_targets(tokens, num_source, alpha)
        tokens = block(tokens)
    tokens = vit.norm(tokens)
    return vit.forward_head(tokens, pre_logits=True)


# --------------------------------------------------------------------------- heads
def _init_linear(layer: nn.Linear, std: float, bias: float) -> nn.Linear:
    nn.init.normal_(layer.weight, 0.0, std)
    nn.init.constant_(layer.bias, bias)
    return layer


def ssrt_bottleneck(in_features: int, out_features: int, dropout: float = 0.5) -> nn.Sequential:
    """Linear-BN-ReLU-Dropout, Linear initialised N(0, 0.005) with bias 0.1 (official)."""
    return nn.Sequential(
        _init_linear(nn.Linear(in_features, out_features), 0.005, 0.1),
        nn.BatchNorm1d(out_features),
        nn.ReLU(),
        nn.Dropout(dropout),
    )


def ssrt_mlp(in_features: int, hidden: int, out_features: int, dropout: float = 0.5) -> nn.Sequential:
    """Linear-ReLU-Dropout-Linear, both Linear layers N(0, 0.01) with zero bias (official classifier
    and discriminator)."""
    return nn.Sequential(
        _init_linear(nn.Linear(in_features, hidden), 0.01, 0.0),
        nn.ReLU(),
        nn.Dropout(dropout),
        _init_linear(nn.Linear(hidden, out_features), 0.01, 0.0),
    )


# -------------------------------------------------------------------------- method
class SSRT(Baseline):
    """SSRT with the official GH placement.

    Losses: ``cls`` = source CE (loss "1") and ``align`` = domain_weight·domain + sr_weight·r(i)·SR
    (loss "2"), where domain = 2·BCE of the discriminator on the 2B clean rows and SR the masked KL
    between clean and perturbed target predictions. As in the official GH code the weights sit inside
    the losses before harmonization (``Stage.trade_off="before"``; the cls trade-off is
    ``cls_weight``), the Gram matrix is over the ViT only (``official_scope=("backbone",)``) and tau
    multiplies every gradient (``tau_applies_to="all"``). The parts of ``align`` are logged as
    ``train/domain_loss`` and ``train/sr_loss``. Caveat of the official ``tau_applies_to="all"``, as for CDAN:
    GH's tau2 = 1 − c/‖g2‖² grows like 1/λ(i) while the GRL coefficient is small (tau2 = 415 at
    iteration 2 on the offline digits) and multiplies the discriminator's gradient, which λ does not
    scale; ``engine.tau_applies_to=gram_params`` leaves the heads outside the Gram scope with their plain gradients.

    Training forwards source and target together; the perturbed target rows are appended at the input
    of a block drawn uniformly from ``sr_layers`` (−1 = raw images), so the heads see 3B rows (the
    bottleneck's BatchNorm included, as in the official code). The layer choice and the KL direction
    come from a generator seeded at construction (from the global torch seed unless ``rng_seed`` is
    given), saved with the model, so runs and resumed runs are reproducible.

    Deviations from the official code (each on purpose): r(i) scales both the perturbation and the SR
    weight of the same iteration (the official perturbation uses the previous iteration's r, and the
    full ``sr_alpha`` at iteration 0); the GRL coefficient follows the iteration counter (the official
    layer also counts evaluation forwards); the discriminator sees only the 2B clean rows its loss uses
    (the official one also runs on the perturbed rows and discards their outputs); safe training
    restores a real copy of the weights (see :class:`~uda.baselines.safe_training.SafeTraining`); under
    DDP the restore decision uses the diversity averaged over ranks so that every rank decides alike.
    """

    name = "ssrt"
    official_scope = ("backbone",)
    shared_scope = ("backbone",)

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        bottleneck_dim: int = 1024,
        hidden_dim: int | None = None,
        dropout: float = 0.5,
        cls_weight: float = 1.0,
        domain_weight: float = 1.0,
        sr_alpha: float = 0.3,
        sr_layers: Sequence[int] = (0, 4, 8),
        sr_loss_weight: float = 0.2,
        sr_epsilon: float = 0.4,
        sr_loss_p: float = 0.5,
        safe_training: bool = True,
        safe_period: int = 1000,
        safe_levels: int = 4,
        safe_append_last_subintervals: bool = True,
        grl: WarmStartSchedule | None = None,
        rng_seed: int | None = None,
    ) -> None:
        super().__init__(backbone, num_classes)
        self._vit = [vision_transformer(backbone)]  # in a list: registered once, under `backbone`
        depth = len(self.vit.blocks)
        self.sr_layers = tuple(int(layer) for layer in sr_layers)
        if not self.sr_layers or any(not RAW_INPUT <= layer < depth for layer in self.sr_layers):
            raise ConfigError(
                f"baseline.sr_layers={list(self.sr_layers)} must be a non-empty list of block indices in "
                f"[-1, {depth - 1}] for this {depth}-block ViT (-1 = raw input), "
                f"e.g. [0, {depth // 3}, {2 * depth // 3}]"
            )
        for key, value in (("sr_loss_p", sr_loss_p), ("sr_epsilon", sr_epsilon)):
            if not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"baseline.{key}={value} must lie in [0, 1]")
        for key, value in (("cls_weight", cls_weight), ("domain_weight", domain_weight)):
            if float(value) < 0:
                raise ConfigError(f"baseline.{key}={value} must be a non-negative number")
        hidden = int(hidden_dim or bottleneck_dim)
        self.bottleneck = ssrt_bottleneck(backbone.out_features, int(bottleneck_dim), dropout)
        self.classifier = ssrt_mlp(int(bottleneck_dim), hidden, num_classes, dropout)
        self.discriminator = ssrt_mlp(int(bottleneck_dim), hidden, 1, dropout)
        self.grl = grl or WarmStartSchedule(alpha=1.0, max_iter=1000.0, high=0.1)
        self.cls_weight = float(cls_weight)
        self.domain_weight = float(domain_weight)
        self.sr_alpha = float(sr_alpha)
        self.sr_loss_weight = float(sr_loss_weight)
        self.sr_epsilon = float(sr_epsilon)
        self.sr_loss_p = float(sr_loss_p)
        # official: snapshots and restores only happen when self-refinement is on
        use_safe = bool(safe_training) and self.sr_loss_weight > 0
        self.safe = SafeTraining(safe_period, safe_levels, safe_append_last_subintervals) if use_safe else None
        seed = int(torch.randint(2**62, ()).item()) if rng_seed is None else int(rng_seed)
        self.rng = torch.Generator().manual_seed(seed)
        self._stages = (
            Stage(
                "main",
                trade_offs={"cls": self.cls_weight, "align": 1.0},
                loss_fn=self.adaptation_losses,
                harmonize=(("cls", "align"),),
                trade_off="before",
            ),
        )

    @property
    def vit(self) -> nn.Module:
        return self._vit[0]

    @property
    def stages(self) -> tuple[Stage, ...]:
        return self._stages

    # ------------------------------------------------------------------ helpers
    def ramp(self, iteration: int) -> float:
        """r(i) of safe training; 1 without it (official: full magnitude and weight)."""
        return self.safe.ramp(iteration) if self.safe is not None else 1.0

    def draw_layer(self) -> int:
        """The block whose input is perturbed in this forward pass, uniform over ``sr_layers``."""
        return self.sr_layers[int(torch.randint(len(self.sr_layers), (), generator=self.rng))]

    def draw_clean_first(self) -> bool:
        """Direction of the SR loss: KL(clean ‖ perturbed) with probability ``sr_loss_p``."""
        return bool(torch.rand((), generator=self.rng) < self.sr_loss_p)

    def predict(self, x: Tensor) -> Tensor:
        return self.classifier(self.bottleneck(self.backbone(x)))

    # ---------------------------------------------------------------- training
    def adaptation_losses(self, batch: UDABatch, iteration: int) -> StageOutput:
        """``cls`` (source CE) and ``align`` (domain loss + ramped self-refinement loss); the metric ``diversity``
        (distinct classes predicted on the clean target rows) feeds safe training in :meth:`end_iteration`."""
        ns = batch.x_source.shape[0]
        x = torch.cat([batch.x_source, batch.x_target])
        n = x.shape[0]
        r = self.ramp(iteration)
        refine = self.sr_loss_weight > 0
        layer = self.draw_layer() if refine else None
        features = vit_features(self.vit, x, ns, layer, self.sr_alpha * r)
        bottleneck = self.bottleneck(features)
        logits = self.classifier(bottleneck)
        coeff = self.grl(iteration)
        # official: the domain loss is 2·BCE on the 2B clean rows (the perturbed rows do not enter it)
        d_logits = self.discriminator(grad_reverse(bottleneck[:n], coeff)).squeeze(-1)
        labels = domain_labels(ns, n - ns, d_logits)
        domain = 2.0 * F.binary_cross_entropy_with_logits(d_logits, labels)
        cls = F.cross_entropy(logits[:ns], batch.y_source)
        target_logits = logits[ns:n]
        if refine:
            sr = self_refinement_loss(target_logits, logits[n:], self.sr_epsilon, self.draw_clean_first())
        else:
            sr = logits.new_zeros(())
        sr_weight = self.sr_loss_weight * r
        align = self.domain_weight * domain + sr_weight * sr
        # number of distinct classes predicted on the clean target rows, kept as a tensor (no host sync)
        predicted = F.one_hot(target_logits.detach().argmax(1), self.num_classes)
        diversity = (predicted.sum(0) > 0).sum().float()
        metrics: dict[str, Tensor | float] = {
            "domain_loss": domain.detach(),
            "sr_loss": sr.detach(),
            "sr_ramp": r,
            "sr_alpha": self.sr_alpha * r,
            "sr_weight": sr_weight,
            "diversity": diversity,
            "grl_coeff": coeff,
            "domain_acc": discriminator_accuracy(d_logits, labels),
        }
        if layer is not None:
            metrics["sr_layer"] = float(layer)
        return StageOutput({"cls": cls, "align": align}, metrics, features)

    def begin_iteration(self, iteration: int) -> dict[str, Tensor | float]:
        if self.safe is None:
            return {}
        return {"safe_restored": float(self.safe.begin(iteration, self))}

    def end_iteration(
        self, iteration: int, batch: UDABatch, outputs: Mapping[str, StageOutput]
    ) -> dict[str, Tensor | float]:
        """Record the iteration's prediction diversity (``outputs["main"]``); at a check iteration decide on a
        restore."""
        if self.safe is None or "main" not in outputs:
            return {}
        self.safe.record(outputs["main"].metrics["diversity"])
        if not self.safe.is_check_iteration(iteration):
            return {}
        scheduled = self.safe.check(iteration, reduce=_mean_over_ranks)
        return {"safe_restore_scheduled": float(scheduled), "safe_r_period": float(self.safe.r_period)}

    # ------------------------------------------------------------------- state
    def get_extra_state(self) -> dict[str, Any]:
        return {"rng": self.rng.get_state(), "safe": self.safe.state_dict() if self.safe is not None else None}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.rng.set_state(state["rng"])
        if self.safe is not None and state.get("safe") is not None:
            self.safe.load_state_dict(state["safe"])


def _mean_over_ranks(values: Tensor) -> Tensor:
    """Average the diversity log over DDP ranks (identity in a single process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / dist.get_world_size()
