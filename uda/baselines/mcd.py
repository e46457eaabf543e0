"""MCD: maximum classifier discrepancy (Saito et al., CVPR 2018), tllib / official-GH variant."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uda.baselines.base import Baseline, Stage, StageOutput, UDABatch

ENTROPY_EPS = 1e-6


def classifier_discrepancy(p1: Tensor, p2: Tensor) -> Tensor:
    """mean |p1 − p2| over samples and classes, on class probabilities (MCD's discrepancy)."""
    return (p1 - p2).abs().mean()


def class_balance_entropy(probs: Tensor) -> Tensor:
    """−mean_k log(mean_i p_ik + 1e-6): small when the batch's average prediction is spread over the
    classes (tllib ``entropy``; the MCD VisDA code's class-balance term)."""
    return -torch.log(probs.mean(dim=0) + ENTROPY_EPS).mean()


class MCDHead(nn.Sequential):
    """tllib ``ImageClassifierHead``: Dropout-Linear-BN-ReLU-Dropout-Linear-BN-ReLU-Linear."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 1024, dropout: float = 0.5) -> None:
        super().__init__(
            nn.Dropout(dropout),
            nn.Linear(in_features, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )


class MCD(Baseline):
    """Generator G (the backbone) and two classifiers F1, F2, trained in three steps per iteration.

    * A (``source``): CE(F1) + CE(F2) on source + ``entropy_weight``·(class-balance entropy of F1 and F2
      on target); updates G, F1, F2.
    * B (``maximize``): the same ``cls`` loss and ``neg_discrepancy`` = −discrepancy on target with
      coefficient trade_off (the classifiers maximize the discrepancy); updates F1, F2 only. This is the
      step the official GH code harmonizes: Gram over G (which does not step here), L1 = the
      classification loss, L2 = −trade_off·discrepancy (``trade_off="before"`` harmonization), tau
      multiplying F1, F2.
    * C (``minimize``): ``num_k`` times, trade_off·discrepancy on target; updates G only.

    Optimizers ``g`` (G, without momentum as in tllib/official) and ``f`` (F1, F2). Prediction averages
    the two classifiers' probabilities (the papers report the better of F1 and F2, an oracle choice).
    """

    name = "mcd"
    official_scope = ("backbone",)
    shared_scope = ("backbone",)

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        trade_off: float = 1.0,
        entropy_weight: float = 0.01,
        num_k: int = 4,
        hidden: int = 1024,
        dropout: float = 0.5,
        generator_momentum: float = 0.0,
    ) -> None:
        super().__init__(backbone, num_classes)
        feat = backbone.out_features
        self.classifier1 = MCDHead(feat, num_classes, hidden, dropout)
        self.classifier2 = MCDHead(feat, num_classes, hidden, dropout)
        self.trade_off = float(trade_off)
        self.entropy_weight = float(entropy_weight)
        self.generator_momentum = float(generator_momentum)
        self._stages = (
            Stage("source", trade_offs={"cls": 1.0}, loss_fn=self.source_losses, optimizer=("g", "f")),
            Stage(
                "maximize",
                trade_offs={"cls": 1.0, "neg_discrepancy": self.trade_off},
                loss_fn=self.maximize_losses,
                harmonize=(("cls", "neg_discrepancy"),),
                trade_off="before",
                optimizer="f",
            ),
            Stage(
                "minimize",
                trade_offs={"discrepancy": self.trade_off},
                loss_fn=self.minimize_losses,
                optimizer="g",
                repeat=int(num_k),
            ),
        )

    @property
    def stages(self) -> tuple[Stage, ...]:
        return self._stages

    def optimizer_groups(self) -> dict[str, dict[str, list[nn.Parameter]]]:
        heads = [*self.classifier1.parameters(), *self.classifier2.parameters()]
        return {"g": {"backbone": list(self.backbone.parameters())}, "f": {"heads": heads}}

    def optimizer_overrides(self) -> dict[str, dict[str, object]]:
        override: dict[str, object] = {"momentum": self.generator_momentum}
        if self.generator_momentum == 0:
            override["nesterov"] = False  # SGD rejects Nesterov without momentum
        return {"g": override}

    def predict(self, x: Tensor) -> Tensor:
        f = self.backbone(x)
        probs = (F.softmax(self.classifier1(f), 1) + F.softmax(self.classifier2(f), 1)) / 2
        return torch.log(probs)

    def _classification(self, p1: Tensor, p2: Tensor, y1: Tensor, y2: Tensor, y_s: Tensor, ns: int) -> Tensor:
        ce = F.cross_entropy(y1[:ns], y_s) + F.cross_entropy(y2[:ns], y_s)
        balance = class_balance_entropy(p1[ns:]) + class_balance_entropy(p2[ns:])
        return ce + self.entropy_weight * balance

    def _forward(self, batch: UDABatch) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """G's features of source and target together (as tllib: the heads' BatchNorm sees both), F1 and F2's
        logits and probabilities."""
        features = self.backbone(torch.cat([batch.x_source, batch.x_target]))
        y1, y2 = self.classifier1(features), self.classifier2(features)
        return features, y1, y2, F.softmax(y1, 1), F.softmax(y2, 1)

    def source_losses(self, batch: UDABatch, iteration: int) -> StageOutput:
        """Step A: ``cls`` = CE of F1 and F2 on source + entropy_weight·class balance on target."""
        ns = batch.x_source.shape[0]
        features, y1, y2, p1, p2 = self._forward(batch)
        return StageOutput({"cls": self._classification(p1, p2, y1, y2, batch.y_source, ns)}, features=features)

    def maximize_losses(self, batch: UDABatch, iteration: int) -> StageOutput:
        """Step B: ``cls`` and ``neg_discrepancy`` (the classifiers maximize the discrepancy: minimize its
        negative)."""
        ns = batch.x_source.shape[0]
        features, y1, y2, p1, p2 = self._forward(batch)
        losses = {
            "cls": self._classification(p1, p2, y1, y2, batch.y_source, ns),
            "neg_discrepancy": -classifier_discrepancy(p1[ns:], p2[ns:]),
        }
        return StageOutput(losses, features=features)

    def minimize_losses(self, batch: UDABatch, iteration: int) -> StageOutput:
        """Step C: ``discrepancy`` of F1 and F2 on target (G minimizes it)."""
        ns = batch.x_source.shape[0]
        features, _, _, p1, p2 = self._forward(batch)
        return StageOutput({"discrepancy": classifier_discrepancy(p1[ns:], p2[ns:])}, features=features)
