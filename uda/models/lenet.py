"""LeNet feature extractor for 28x28 grayscale digits (CDAN / tllib digits recipe)."""

from __future__ import annotations

from torch import Tensor, nn


class LeNet(nn.Module):
    """LeNet as used by CDAN and tllib for MNIST/USPS (reference/baselines.md §2.6).

    Conv(1,20,5) → MaxPool2 → ReLU → Conv(20,50,5) → Dropout2d(.5) → MaxPool2 → ReLU → Flatten(800)
    → Linear(800,500) → ReLU → Dropout(.5). Output: 500-d features (``out_features``); the classifier
    head belongs to the baseline.
    """

    def __init__(self, in_channels: int = 1, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 20, kernel_size=5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(20, 50, kernel_size=5),
            nn.Dropout2d(p=dropout),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Flatten(start_dim=1),
            nn.Linear(50 * 4 * 4, 500),
            nn.ReLU(),
            nn.Dropout(p=dropout),
        )
        self.out_features = 500

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)
