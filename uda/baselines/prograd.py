"""ProGrad (Zhu et al., "Prompt-aligned Gradient for Prompt Tuning", ICCV 2023) as a harmonized CoOp stage."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uda.baselines.base import Stage, StageOutput, UDABatch
from uda.baselines.coop import CoOp
from uda.errors import ConfigError
from uda.models.prompt import ZeroShotHead


def soft_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """ProGrad's ``kl_loss``: −Σ softmax(teacher/T) · log_softmax(student/T) · T², averaged over the batch.

    Equal to KL(teacher ‖ student) at temperature T (paper Eq. 3) up to the teacher's entropy, a constant:
    the gradients are the same (official ``ProGradLoss``).
    """
    teacher = torch.softmax(teacher_logits.float() / temperature, dim=-1)
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return -(teacher * log_student).sum(dim=-1).mean() * temperature**2


class ProGradCoOp(CoOp):
    """CoOp with zero-shot CLIP as the teacher; the source cross-entropy gradient yields to the KL gradient.

    Losses, one stage, harmonized as the group (``cls``, ``kl``) over the prompt:

    * ``cls`` = CE(student logits, y) (G_d, the domain-specific direction);
    * ``kl`` = :func:`soft_cross_entropy` of the student against zero-shot CLIP "a photo of a {class}."
      (G_g, the general direction), computed under no_grad for the teacher.

    ProGrad's update (paper Eq. 4; official ``prograd_backward_and_update``) is G_d if G_d·G_g ≥ 0, else
    G_d − λ (G_d·G_g / ‖G_g‖²) G_g; the KL gradient itself is never applied. That is the ``prograd``
    harmonizer with ``keep_anchor=false`` on this group, with coefficients (1, 1) applied after it:
    tau = (1, −λ·min(0, G_d·G_g)/‖G_g‖²) — ``conf/baseline/prograd.yaml`` selects ``harmonizer=prograd_paper``
    by default (λ = ``harmonizer.lam``, paper 1; 0.8 for 16 shots). The official rule projects per parameter
    tensor; the prompt context is the only trainable tensor, so per tensor = global (tested).

    Other harmonizers give other updates on the same two losses: ``harmonizer=none`` is CoOp + KD with
    weight 1 (the paper's LwF comparison), ``gh`` projects both gradients.

    Official defaults (``configs/trainers/ProGrad/rn50*.yaml``): 16 context tokens initialized with
    "a photo of a" (12 zero vectors, then the template's 4), T = 1, SGD 0.002 with a cosine schedule, RN50.
    """

    name = "prograd"

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        temperature: float = 1.0,
        template: str = "a photo of a {}.",
        n_ctx: int | None = 16,
        init: str | None = "a photo of a",
        class_specific: bool = False,
        class_names: Sequence[str] | None = None,
        dataset_class_names: Sequence[str] | None = None,
        cache_image_features: bool = False,
        cache_max_entries: int | None = None,
    ) -> None:
        super().__init__(
            backbone,
            num_classes,
            n_ctx,
            init,
            class_specific,
            class_names,
            dataset_class_names,
            cache_image_features,
            cache_max_entries,
        )
        if temperature <= 0:
            raise ConfigError(f"baseline.temperature={temperature} is invalid: it must be positive (ProGrad: 1.0)")
        self.temperature = float(temperature)
        self.teacher = ZeroShotHead(self.backbone, self.class_names, template)
        # loss "1" = cls (projected), loss "2" = kl (the anchor): the prograd harmonizer's roles
        self._stages = (
            Stage("main", trade_offs={"cls": 1.0, "kl": 1.0}, loss_fn=self.prompt_losses, harmonize=(("cls", "kl"),)),
        )

    def prompt_losses(self, batch: UDABatch, iteration: int) -> StageOutput:
        """``cls`` (source CE) and ``kl`` (distillation from the zero-shot teacher)."""
        features = self.image_features(batch.x_source)
        student = self.logits(features)
        with torch.no_grad():
            teacher = self.teacher(features, self.backbone.logit_scale)
        losses = {
            "cls": F.cross_entropy(student, batch.y_source),
            "kl": soft_cross_entropy(student, teacher, self.temperature),
        }
        return StageOutput(losses, self.cache_metrics())
