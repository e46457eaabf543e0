"""Fail before training, in one sentence, when a backbone cannot take the dataset's images."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from uda.errors import ConfigError


def check_backbone_takes(backbone: nn.Module, image: Tensor, backbone_name: str = "the backbone") -> None:
    """Run ``backbone`` once on a batch of two copies of ``image`` (C, H, W), in eval mode without gradients.

    A mismatch (channels, a size a ViT's patch grid cannot take, too small for the pooling) becomes a
    :class:`ConfigError` naming both shapes. Eval mode and ``no_grad`` draw no random numbers (no dropout),
    and the module's train/eval flags are restored, so training is unchanged.
    """
    was_training = backbone.training
    batch = image.unsqueeze(0).expand(2, *image.shape).contiguous()
    try:
        backbone.eval()
        with torch.no_grad():
            backbone(batch)
    except (RuntimeError, ValueError, AssertionError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        shape = "x".join(str(s) for s in image.shape)
        raise ConfigError(
            f"{backbone_name} cannot take this dataset's {shape} images ({reason}); choose a backbone made for "
            "them (leave `backbone` unset to get the dataset's recipe backbone, e.g. LeNet for 1x28x28 digits, "
            "DTN for 3x32x32, ResNet-50 for 224-px Office images)"
        ) from None
    finally:
        backbone.train(was_training)
