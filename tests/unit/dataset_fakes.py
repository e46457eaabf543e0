"""Small fake dataset trees for the loader tests: generated JPEG/PNG images in the standard layouts."""

from __future__ import annotations

import bz2
import io
import struct
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, seed: int, size: tuple[int, int] = (20, 16)) -> None:
    """A small random RGB image; the format follows the suffix (.jpg / .png)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def class_tree(
    root: Path, folder: str, classes: Sequence[str], per_class: int = 2, suffix: str = ".jpg"
) -> list[tuple[str, int]]:
    """``root/folder/<class>/img<i><suffix>`` for each class; returns (root-relative path, canonical label)."""
    entries = []
    for label, name in enumerate(classes):
        for i in range(per_class):
            rel = f"{folder}/{name}/img{i}{suffix}"
            write_image(root / rel, seed=label * 100 + i)
            entries.append((rel, label))
    return entries


def write_list(path: Path, lines: Sequence[tuple[str, int]], prefix: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{prefix}{rel} {label}\n" for rel, label in lines))


def tar_folder(archive: Path, base: Path, member: str) -> None:
    """A .tgz of ``base/member`` with ``member`` as its top-level folder."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(base / member, arcname=member)


def write_mnist(root: Path, n_train: int = 30, n_test: int = 20) -> None:
    """MNIST's four idx files (gunzipped) in ``root/MNIST/raw``."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x0803, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x0801, n) + labels.tobytes())


def write_usps(root: Path, n_train: int = 30, n_test: int = 20) -> None:
    """USPS's libsvm-format bz2 files (labels 1..10, pixels in [-1, 1]) in ``root``."""
    rng = np.random.default_rng(1)
    for name, n in (("usps.bz2", n_train), ("usps.t.bz2", n_test)):
        lines = []
        for i in range(n):
            values = rng.uniform(-1, 1, 256)
            lines.append(f"{i % 10 + 1} " + " ".join(f"{j + 1}:{v:.4f}" for j, v in enumerate(values)))
        (root / name).write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))


def write_svhn(root: Path, n_train: int = 30, n_test: int = 20) -> None:
    """SVHN's .mat files (X: 32x32x3xN uint8, y: Nx1 with 10 for the digit 0) in ``root``."""
    from scipy.io import savemat

    rng = np.random.default_rng(2)
    for name, n in (("train_32x32.mat", n_train), ("test_32x32.mat", n_test)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(-1, 1)
        buffer = io.BytesIO()
        savemat(buffer, {"X": x, "y": y})
        (root / name).write_bytes(buffer.getvalue())
