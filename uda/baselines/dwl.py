"""DWL: dynamic weighted learning (Xiao & Zhang, CVPR 2021), as ported to GH by the official GH code.

Recipe: reference/baselines.md §2.4 (b) (``fuxianghuang1/GH:dwl/solver.py``, ``dwl/model.py``) and §1.1/§1.4
for the GH placement. The dynamic weight T lives in :mod:`uda.baselines.dwl_weight`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from uda.baselines.base import Baseline, Stage, StageOutput, UDABatch
from uda.baselines.dwl_weight import DynamicWeight, lda_discriminability, linear_mmd
from uda.baselines.mcd import classifier_discrepancy
from uda.errors import ConfigError

#: what is kept of each batch of the current epoch for the dynamic weight, in this order
PENDING_KEYS = ("source_features", "source_labels", "target_features", "target_pseudo_labels")


class DWLPredictor(nn.Sequential):
    """GH-DWL ``Predictor``: Linear(in, hidden)-BN-ReLU-Linear(hidden, K) on pooled features (PyTorch's
    default initialization, as in the port)."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 1024) -> None:
        super().__init__(
            nn.Linear(in_features, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )


class DWLDiscriminator(nn.Module):
    """GH-DWL ``AdversarialNetwork``: Linear(in, hidden)-ReLU-Dropout(.5)-Linear(hidden, 1)-Sigmoid, weights
    N(0, 0.01) and N(0, 0.3), zero biases.

    Returns the logit: the sigmoid is folded into :func:`soft_label_bce` (same loss, computed stably).
    """

    def __init__(self, in_features: int, hidden: int = 1024, dropout: float = 0.5) -> None:
        super().__init__()
        self.hidden = nn.Linear(in_features, hidden)
        self.out = nn.Linear(hidden, 1)
        self.dropout = nn.Dropout(dropout)
        nn.init.normal_(self.hidden.weight, 0.0, 0.01)
        nn.init.normal_(self.out.weight, 0.0, 0.3)
        nn.init.zeros_(self.hidden.bias)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.dropout(F.relu(self.hidden(x)))).squeeze(-1)


def soft_label_bce(source_logits: Tensor, target_logits: Tensor) -> Tensor:
    """DWL's domain loss ``BCE(D(f_s), D(f_t).detach())``: the target's discriminator outputs, detached, are
    the soft labels of the source outputs (official ``nn.BCELoss()(out_s, out_t.detach())``)."""
    return F.binary_cross_entropy_with_logits(source_logits, torch.sigmoid(target_logits).detach())


def discrepancy_sum(probs: Tensor, probs1: Tensor, probs2: Tensor) -> Tensor:
    """``disc(C1, C2) + disc(C, C1) + disc(C, C2)`` on class probabilities (official ``loss_5``)."""
    return (
        classifier_discrepancy(probs1, probs2)
        + classifier_discrepancy(probs, probs1)
        + classifier_discrepancy(probs, probs2)
    )


def pseudo_label_loss(logits: Tensor, weight: float = 2.0) -> tuple[Tensor, Tensor]:
    """Uncertainty-weighted self-training on target (official stage 4); returns (loss, μ).

    ``H = −mean(p log p)`` over samples *and* classes, ``μ = (exp(−H) − 1/K)/(1 − 1/K)``,
    ``loss = weight·(μ·CE(logits, argmax p) + (1 − μ)·H)``. H and μ carry no gradient: the official code
    wraps H in a new leaf variable, so only ``weight·μ·CE`` trains the model.
    """
    k = logits.shape[1]
    log_probs = F.log_softmax(logits, dim=1)
    entropy = -(log_probs.exp() * log_probs).mean().detach()
    mu = (torch.exp(-entropy) - 1.0 / k) / (1.0 - 1.0 / k)
    ce = F.cross_entropy(logits, logits.detach().argmax(dim=1))
    return weight * (mu * ce + (1.0 - mu) * entropy), mu


class DWL(Baseline):
    """Generator G (the backbone), discriminator D and classifiers C, C1, C2, trained in up to four stages
    per iteration (official GH-DWL loop):

    * ``source`` (``num_k1`` times): CE(C(G x_s)); steps G and C.
    * ``discriminator`` (``num_k2``): ``discriminator_weight``·BCE(D(G x_s), D(G x_t).detach()); steps D.
    * ``classifiers`` (``num_k2``): CE(C) + CE(C1) + CE(C2) on source and ``neg_discrepancy`` =
      −disc(C1, C2) on target; steps C, C1, C2.
    * ``generator`` (``num_k3``): ``adversarial`` = −``adversarial_weight``·BCE(D(G x_s), D(G x_t).detach())
      (official ``loss_4``, the 0.2 inside the loss as there) and ``discrepancy`` = the three classifier
      discrepancies on target (``loss_5``), with trade-offs (T, 1 − T); steps G only. This is the step the
      official GH code harmonizes: Gram over G, loss "1" = adversarial, tau computed from the unweighted
      losses and the trade-off T applied after it (``trade_off="after"``).
    * ``pseudo_label`` (``num_k4``, 0 = off): :func:`pseudo_label_loss` on target; steps G and C.

    Stages 2–3 take G's features without a graph: only the heads step there, exactly what the official
    code does with its extra backward into G that it never applies. As in the official code, source and
    target pass through G and the heads separately, so BatchNorm layers normalize each domain with its own
    batch statistics.

    The dynamic weight T (:class:`~uda.baselines.dwl_weight.DynamicWeight`) is recomputed every
    ``iters_per_epoch`` iterations (the GH port's epoch) in :meth:`end_iteration`, from features of one
    batch per iteration taken after all stages (detached, at most one epoch kept). Its state and the
    epoch's pending features are part of :meth:`state_dict`, so a resumed run continues with the same T.

    Optimizers ``g`` (G), ``d`` (D) and ``c`` (C, C1, C2; a stage that leaves C1, C2 without gradient
    does not move them: SGD skips parameters whose ``.grad`` is None). The GH port uses SGD with
    momentum 0.9 for all of them; ``generator_momentum`` overrides G's (0 in the official image code).
    """

    name = "dwl"
    official_scope = ("backbone",)
    shared_scope = ("backbone",)

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        num_k1: int = 8,
        num_k2: int = 1,
        num_k3: int = 8,
        num_k4: int = 1,
        iters_per_epoch: int = 100,
        hidden: int = 1024,
        discriminator_hidden: int = 1024,
        discriminator_dropout: float = 0.5,
        discriminator_weight: float = 0.1,
        adversarial_weight: float = 0.2,
        pseudo_label_weight: float = 2.0,
        generator_momentum: float | None = None,
    ) -> None:
        super().__init__(backbone, num_classes)
        if num_classes < 2:
            raise ConfigError(f"DWL needs at least 2 classes for its LDA criterion, got num_classes={num_classes}")
        repeats = {"num_k1": num_k1, "num_k2": num_k2, "num_k3": num_k3, "num_k4": num_k4}
        for key, value in repeats.items():
            if int(value) < 0:
                raise ConfigError(f"baseline.{key}={value} is invalid: it must be 0 or a positive integer")
        if int(iters_per_epoch) < 1:
            raise ConfigError(
                f"baseline.iters_per_epoch={iters_per_epoch} is invalid: it must be a positive integer "
                "(how often the dynamic weight T is recomputed, e.g. 100)"
            )
        feat = backbone.out_features
        self.classifier = DWLPredictor(feat, num_classes, hidden)
        self.classifier1 = DWLPredictor(feat, num_classes, hidden)
        self.classifier2 = DWLPredictor(feat, num_classes, hidden)
        self.discriminator = DWLDiscriminator(feat, discriminator_hidden, discriminator_dropout)
        self.num_k1, self.num_k2, self.num_k3, self.num_k4 = (int(v) for v in repeats.values())
        self.iters_per_epoch = int(iters_per_epoch)
        self.discriminator_weight = float(discriminator_weight)
        self.adversarial_weight = float(adversarial_weight)
        self.pseudo_label_weight = float(pseudo_label_weight)
        self.generator_momentum = None if generator_momentum is None else float(generator_momentum)
        self.weight = DynamicWeight()
        # features of the current epoch: (source features, source labels, target features, pseudo-labels)
        self._pending: list[tuple[Tensor, ...]] = []

    # ----------------------------------------------------------------- stages
    @property
    def stages(self) -> tuple[Stage, ...]:
        t = self.weight.t
        stages = [
            Stage(
                "source", trade_offs={"cls": 1.0}, loss_fn=self.source_losses, optimizer=("g", "c"), repeat=self.num_k1
            ),
            Stage(
                "discriminator",
                trade_offs={"domain": self.discriminator_weight},
                loss_fn=self.discriminator_losses,
                optimizer="d",
                repeat=self.num_k2,
            ),
            Stage(
                "classifiers",
                trade_offs={"cls": 1.0, "neg_discrepancy": 1.0},
                loss_fn=self.classifier_losses,
                optimizer="c",
                repeat=self.num_k2,
            ),
            Stage(
                "generator",
                trade_offs={"adversarial": t, "discrepancy": 1.0 - t},
                loss_fn=self.generator_losses,
                harmonize=(("adversarial", "discrepancy"),),
                trade_off="after",
                optimizer="g",
                repeat=self.num_k3,
            ),
        ]
        if self.num_k4 > 0:
            stages.append(
                Stage(
                    "pseudo_label",
                    trade_offs={"pseudo_label": 1.0},
                    loss_fn=self.pseudo_label_losses,
                    optimizer=("g", "c"),
                    repeat=self.num_k4,
                )
            )
        return tuple(stages)

    def optimizer_groups(self) -> dict[str, dict[str, list[nn.Parameter]]]:
        classifiers = [*self.classifier.parameters(), *self.classifier1.parameters(), *self.classifier2.parameters()]
        return {
            "g": {"backbone": list(self.backbone.parameters())},
            "d": {"heads": list(self.discriminator.parameters())},
            "c": {"heads": classifiers},
        }

    def optimizer_overrides(self) -> dict[str, dict[str, object]]:
        if self.generator_momentum is None:
            return {}
        override: dict[str, object] = {"momentum": self.generator_momentum}
        if self.generator_momentum == 0:
            override["nesterov"] = False  # SGD rejects Nesterov without momentum
        return {"g": override}

    # ----------------------------------------------------------------- losses
    def predict(self, x: Tensor) -> Tensor:
        """Log of the average of C, C1 and C2's class probabilities.

        The DWL papers report the best of five heads (C, C1, C2, C1+C2, C+C1+C2) chosen with target labels,
        an oracle; averaging the three probabilities is a fixed choice that needs no target labels.
        """
        f = self.backbone(x)
        probs = sum(F.softmax(head(f), dim=1) for head in (self.classifier, self.classifier1, self.classifier2))
        return torch.log(probs / 3)

    def _features(self, batch: UDABatch) -> tuple[Tensor, Tensor, Tensor]:
        """G's features of both domains, concatenated (source rows first) and as the two views of it.

        Each domain goes through G on its own (official code); the concatenation is the one tensor that
        all of the stage's losses depend on (``engine.grad_space=features``).
        """
        features = torch.cat([self.backbone(batch.x_source), self.backbone(batch.x_target)])
        ns = batch.x_source.shape[0]
        return features, features[:ns], features[ns:]

    def source_losses(self, batch: UDABatch, iteration: int) -> StageOutput:
        """Stage 1: ``cls`` = CE(C(G x_s))."""
        f_s = self.backbone(batch.x_source)
        return StageOutput({"cls": F.cross_entropy(self.classifier(f_s), batch.y_source)}, features=f_s)

    def discriminator_losses(self, batch: UDABatch, iteration: int) -> StageOutput:
        """Stage 2: ``domain`` = BCE(D(G x_s), D(G x_t).detach()) on G's features taken without a graph."""
        with torch.no_grad():  # only D steps here
            f_s, f_t = self.backbone(batch.x_source), self.backbone(batch.x_target)
        d_s, d_t = self.discriminator(f_s), self.discriminator(f_t)
        metrics = {"d_source": torch.sigmoid(d_s).mean().detach(), "d_target": torch.sigmoid(d_t).mean().detach()}
        return StageOutput({"domain": soft_label_bce(d_s, d_t)}, metrics)

    def classifier_losses(self, batch: UDABatch, iteration: int) -> StageOutput:
        """Stage 3: ``cls`` = CE of C, C1, C2 on source and ``neg_discrepancy`` = −disc(C1, C2) on target."""
        with torch.no_grad():  # only C, C1, C2 step here
            f_s, f_t = self.backbone(batch.x_source), self.backbone(batch.x_target)
        y = batch.y_source
        cls = sum(F.cross_entropy(head(f_s), y) for head in (self.classifier1, self.classifier2, self.classifier))
        # the official code also forwards C on the target batch here; the output is unused but C's
        # BatchNorm running statistics (used at evaluation) see that batch, so we keep the forward
        with torch.no_grad():
            self.classifier(f_t)
        p1, p2 = F.softmax(self.classifier1(f_t), dim=1), F.softmax(self.classifier2(f_t), dim=1)
        return StageOutput({"cls": cls, "neg_discrepancy": -classifier_discrepancy(p1, p2)})

    def generator_losses(self, batch: UDABatch, iteration: int) -> StageOutput:
        """Stage 4 (harmonized): ``adversarial`` (official ``loss_4``) and ``discrepancy`` (``loss_5``)."""
        features, f_s, f_t = self._features(batch)
        adversarial = -self.adversarial_weight * soft_label_bce(self.discriminator(f_s), self.discriminator(f_t))
        probs = [F.softmax(head(f_t), dim=1) for head in (self.classifier, self.classifier1, self.classifier2)]
        losses = {"adversarial": adversarial, "discrepancy": discrepancy_sum(*probs)}
        return StageOutput(losses, {"T": self.weight.t}, features=features)

    def pseudo_label_losses(self, batch: UDABatch, iteration: int) -> StageOutput:
        """Stage 5: ``pseudo_label`` (:func:`pseudo_label_loss` on target)."""
        f_t = self.backbone(batch.x_target)
        loss, mu = pseudo_label_loss(self.classifier(f_t), self.pseudo_label_weight)
        return StageOutput({"pseudo_label": loss}, {"mu": mu.detach()}, features=f_t)

    # --------------------------------------------------------- dynamic weight
    @property
    def pending_batches(self) -> int:
        """Batches of the current epoch whose features are kept for the next dynamic-weight update."""
        return len(self._pending)

    def end_iteration(
        self, iteration: int, batch: UDABatch, outputs: Mapping[str, StageOutput]
    ) -> dict[str, Tensor | float]:
        """Collect the features of this iteration's ``batch`` (when a stage ran on it); at the end of an epoch
        recompute A_norm, J_norm and T."""
        if outputs:
            self._collect(batch)
        metrics: dict[str, Tensor | float] = {}
        if (iteration + 1) % self.iters_per_epoch == 0 and self._pending:
            metrics.update(self._end_epoch())
        metrics.update({"dwl/T": self.weight.t, "dwl/a_norm": self.weight.a_norm, "dwl/j_norm": self.weight.j_norm})
        return metrics

    @torch.no_grad()
    def _collect(self, batch: UDABatch) -> None:
        # after all stages of the iteration, in training mode, like the official code's extra forward
        f_s, f_t = self.backbone(batch.x_source), self.backbone(batch.x_target)
        pseudo = self.classifier(f_t).argmax(dim=1)
        self._pending.append((f_s.detach(), batch.y_source.detach(), f_t.detach(), pseudo))

    def _pending_tensors(self) -> list[Tensor]:
        """The epoch's (source features, source labels, target features, pseudo-labels), concatenated on the
        device of the latest batch (a restored checkpoint's chunk may sit on the CPU)."""
        device = self._pending[-1][0].device
        return [torch.cat([chunk[i].to(device) for chunk in self._pending]) for i in range(len(PENDING_KEYS))]

    def _end_epoch(self) -> dict[str, float]:
        f_s, y_s, f_t, pseudo = self._pending_tensors()
        self._pending = []
        k = self.num_classes - 1
        measured = torch.tensor(
            [float(linear_mmd(f_s, f_t)), lda_discriminability(f_s, y_s, k), lda_discriminability(f_t, pseudo, k)],
            dtype=torch.float64,
            device=f_s.device,
        )
        if dist.is_available() and dist.is_initialized():
            # every rank must use the same T (else the replicas drift apart): rank 0's measurement wins
            dist.broadcast(measured, src=0)
        alignment, j_source, j_target = measured.tolist()
        self.weight.update(alignment, j_source, j_target)
        return {"dwl/alignment": alignment, "dwl/j_source": j_source, "dwl/j_target": j_target}

    # ------------------------------------------------------------- checkpoint
    def get_extra_state(self) -> dict[str, Any]:
        """T's running state and the current epoch's features (so that exact resume keeps T)."""
        state: dict[str, Any] = {"dynamic_weight": self.weight.as_dict()}
        if self._pending:
            state["pending"] = {k: t.cpu() for k, t in zip(PENDING_KEYS, self._pending_tensors(), strict=True)}
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.weight = DynamicWeight(**state["dynamic_weight"])
        pending = state.get("pending")
        self._pending = [] if pending is None else [(*(pending[k] for k in PENDING_KEYS),)]
