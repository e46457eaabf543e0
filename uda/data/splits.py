"""Fixed, stratified, seed-independent train/test splits."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

#: The split seed is a property of the dataset, not of the run: every run seed sees the same split.
SPLIT_SEED = 20240917


def stratified_split(labels: np.ndarray, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) with class proportions preserved; identical on every call."""
    idx = np.arange(len(labels))
    train, test = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=SPLIT_SEED)
    return np.sort(train), np.sort(test)
