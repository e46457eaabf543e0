"""DTN feature extractor for 32x32 RGB digits (SVHN → MNIST; CDAN / tllib recipe)."""

from __future__ import annotations

from torch import Tensor, nn


def _conv_block(in_channels: int, out_channels: int, dropout: float) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=5, stride=2, padding=2),
        nn.BatchNorm2d(out_channels),
        nn.Dropout2d(p=dropout),
        nn.ReLU(),
    ]


class DTN(nn.Module):
    """DTN as used by CDAN and tllib for SVHN→MNIST (reference/baselines.md §2.6).

    Three blocks Conv(5x5, stride 2, padding 2)-BN-Dropout2d-ReLU with 64/128/256 channels and dropout
    .1/.3/.5 (32x32 → 16 → 8 → 4), Flatten(4096) → Linear(4096, 512) → BN1d → ReLU → Dropout(.5).
    Output: 512-d features (``out_features``); the classifier head belongs to the baseline.
    """

    def __init__(self, in_channels: int = 3, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_block(in_channels, 64, 0.1),
            *_conv_block(64, 128, 0.3),
            *_conv_block(128, 256, 0.5),
            nn.Flatten(start_dim=1),
            nn.Linear(256 * 4 * 4, 512),
            nn.BatchNorm1d(512),
            nn.ReLU(),
            nn.Dropout(p=dropout),
        )
        self.out_features = 512

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)
