"""Heads shared by the baselines: bottleneck, domain discriminator, randomized multilinear map."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class Bottleneck(nn.Sequential):
    """Feature bottleneck. ``kind='linear'``: Linear only (thuml CDAN / official GH-CDAN);
    ``kind='bn_relu'``: Linear-BatchNorm-ReLU (tllib)."""

    def __init__(self, in_features: int, out_features: int, kind: str = "linear") -> None:
        layers: list[nn.Module] = [nn.Linear(in_features, out_features)]
        if kind == "bn_relu":
            layers += [nn.BatchNorm1d(out_features), nn.ReLU()]
        elif kind != "linear":
            raise ValueError(f"bottleneck kind must be 'linear' or 'bn_relu', got {kind!r}")
        super().__init__(*layers)
        self.out_features = out_features


class DomainDiscriminator(nn.Module):
    """MLP domain classifier returning one logit per sample (source = 1, target = 0).

    thuml's ``AdversarialNetwork``: Linear(in, h)-ReLU-Dropout(.5)-Linear(h, h)-ReLU-Dropout(.5)-Linear(h, 1).
    The original ends in a sigmoid followed by ``BCELoss``; returning the logit and using
    ``binary_cross_entropy_with_logits`` is the same loss, computed stably.
    """

    def __init__(self, in_features: int, hidden: int = 1024, dropout: float = 0.5) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


class RandomizedMultilinearMap(nn.Module):
    """CDAN's randomized multilinear map T(f, g) = (f R_f) ⊙ (g R_g) / sqrt(d) with fixed Gaussian R.

    Replaces the (feature_dim · num_classes)-d outer product when that is too large. R_f and R_g are
    buffers: saved with the model, never trained.
    """

    def __init__(self, feature_dim: int, num_classes: int, output_dim: int = 1024) -> None:
        super().__init__()
        self.output_dim = output_dim
        self.register_buffer("r_feature", torch.randn(feature_dim, output_dim))
        self.register_buffer("r_class", torch.randn(num_classes, output_dim))

    def forward(self, features: Tensor, probs: Tensor) -> Tensor:
        return (features @ self.r_feature) * (probs @ self.r_class) / math.sqrt(self.output_dim)


def multilinear_map(features: Tensor, probs: Tensor) -> Tensor:
    """Outer product g ⊗ f flattened per sample: shape (N, num_classes · feature_dim)."""
    return torch.bmm(probs.unsqueeze(2), features.unsqueeze(1)).flatten(1)
