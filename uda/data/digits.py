"""Digits: MNIST, USPS and SVHN in torchvision's file layout; tasks M→U, U→M (LeNet) and S→M (DTN).

Files under the root (torchvision's names; ``download=True`` fetches them from torchvision's URLs and
checks torchvision's MD5s before anything is moved into place)::

    MNIST/raw/train-images-idx3-ubyte  MNIST/raw/train-labels-idx1-ubyte   (gunzipped)
    MNIST/raw/t10k-images-idx3-ubyte   MNIST/raw/t10k-labels-idx1-ubyte
    usps.bz2  usps.t.bz2                                                   (as downloaded)
    train_32x32.mat  test_32x32.mat                                        (SVHN)

Protocol (reference/baselines.md §2.1, tllib/CDAN digits recipes): the source trains on its train split;
the target's train split is used unlabelled for adaptation and accuracy is measured on the target's test
split; the source test set is the source's test split. Standard sizes: MNIST 60,000/10,000, USPS
7,291/2,007, SVHN 73,257/26,032 (the full SVHN train split: tllib and CDAN use a class-balanced list,
``svhn_balanced.txt``, whose size the reference could not verify).

Image format by task (``image_size``/``channels`` = ``None``): 28x28 grayscale when only MNIST and USPS
are involved (USPS is upsampled from 16x16), 32x32 RGB when SVHN is (MNIST/USPS are upsampled and their
gray value repeated in the three channels); no augmentation; Normalize(0.5, 0.5) per channel.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import MNIST, SVHN, USPS

from uda.data.datamodule import DomainSplit, UDADataModule
from uda.data.download import Resource, download_resources, failure_summary
from uda.data.transforms import digits_transform
from uda.errors import DataError

SPLITS = ("train", "test")
#: standard number of images per (domain, split)
COUNTS = {
    ("mnist", "train"): 60_000,
    ("mnist", "test"): 10_000,
    ("usps", "train"): 7_291,
    ("usps", "test"): 2_007,
    ("svhn", "train"): 73_257,
    ("svhn", "test"): 26_032,
}
MNIST_RAW = "MNIST/raw"


def _resources() -> dict[str, tuple[Resource, ...]]:
    """torchvision's download locations and MD5s, in the file layout its readers expect."""
    mnist = tuple(
        Resource(name, tuple(m + name for m in MNIST.mirrors), f"{MNIST_RAW}/{name[:-3]}", md5=md5, unpack="gzip")
        for name, md5 in MNIST.resources
    )
    usps = tuple(Resource(name, (url,), name, md5=md5, unpack="none") for url, name, md5 in USPS.split_list.values())
    svhn = tuple(
        Resource(SVHN.split_list[s][1], (SVHN.split_list[s][0],), SVHN.split_list[s][1], md5=SVHN.split_list[s][2],
                 unpack="none")
        for s in SPLITS
    )  # fmt: skip
    return {"mnist": mnist, "usps": usps, "svhn": svhn}


RESOURCES = _resources()
#: where each domain's files come from, for the manual-placement message
ORIGINS = {
    "mnist": f"{MNIST_RAW}/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte (gunzipped), from {MNIST.mirrors[0]}",
    "usps": "usps.bz2 and usps.t.bz2, from https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass.html",
    "svhn": "train_32x32.mat and test_32x32.mat, from http://ufldl.stanford.edu/housenumbers/",
}


class ArrayImages(Dataset):
    """``(transform(PIL image), label)`` from a uint8 array of shape (N, H, W) or (N, H, W, 3)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable | None = None) -> None:
        self.images, self.labels, self.transform = images, np.asarray(labels, dtype=np.int64), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.images[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


def read_domain(root: Path, domain: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8, (N, H, W) or (N, H, W, 3)) and labels 0..9 of one digits split, via torchvision's readers."""
    try:
        if domain == "mnist":
            data = MNIST(str(root), train=split == "train", download=False)
            return data.data.numpy(), data.targets.numpy().astype(np.int64)
        if domain == "usps":
            data = USPS(str(root), train=split == "train", download=False)
            return np.asarray(data.data), np.asarray(data.targets, dtype=np.int64)
        from scipy.io import loadmat

        mat = loadmat(str(root / SVHN.split_list[split][1]))
        labels = mat["y"].astype(np.int64).reshape(-1)
        labels[labels == 10] = 0  # SVHN labels the digit 0 as 10
        return np.ascontiguousarray(np.transpose(mat["X"], (3, 0, 1, 2))), labels
    except Exception as err:  # noqa: BLE001 - any reader failure means unreadable files
        files = ", ".join(r.provides for r in RESOURCES[domain])
        raise DataError(
            f"the {domain} {split} files in {root} cannot be read ({type(err).__name__}: {err}); delete {files} "
            "and set dataset.download=true, or replace them"
        ) from err


class Digits(UDADataModule):
    """MNIST / USPS / SVHN (short names M / U / S), 10 classes; tasks M→U, U→M, S→M (see the module docstring).

    Args:
        root: folder holding the files in torchvision's layout.
        image_size, channels: input format; ``None`` = by task (28 / 1 without SVHN, 32 / 3 with it).
        train_transform, test_transform: callables on PIL images; ``None`` = the recipe's
            resize + channel conversion + Normalize(0.5, 0.5).
        download: fetch missing files (torchvision's URLs, MD5-checked) before loading.
        strict: require the standard split sizes.
    """

    name = "digits"
    domains = ("mnist", "usps", "svhn")
    aliases = {"M": "mnist", "U": "usps", "S": "svhn"}
    num_classes = 10
    class_names = tuple(str(d) for d in range(10))

    def __init__(
        self,
        source: str,
        target: str,
        root: str | os.PathLike,
        batch_size: int = 64,
        eval_batch_size: int = 500,
        num_workers: int = 0,
        iters_per_epoch: int | None = None,
        pin_memory: bool | None = None,
        seed: int = 0,
        image_size: int | None = None,
        channels: int | None = None,
        train_transform: Callable | None = None,
        test_transform: Callable | None = None,
        download: bool = False,
        strict: bool = True,
    ) -> None:
        super().__init__(
            source,
            target,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            iters_per_epoch=iters_per_epoch,
            pin_memory=pin_memory,
            seed=seed,
        )
        with_svhn = "svhn" in (self.source, self.target)
        self.image_size = int(image_size or (32 if with_svhn else 28))
        self.channels = int(channels or (3 if with_svhn else 1))
        self.train_transform = train_transform or digits_transform(self.image_size, self.channels)
        self.test_transform = test_transform or digits_transform(self.image_size, self.channels)
        self.root = Path(root).expanduser()
        self.download, self.strict = bool(download), bool(strict)
        self._prepared = False
        if not self.download:
            self.check_files()

    @property
    def _used_domains(self) -> list[str]:
        return list(dict.fromkeys((self.source, self.target)))

    def check_files(self) -> None:
        """The root and every file of the source and target domains exist; else say what to place where."""
        if not self.root.is_dir():
            raise DataError(
                f"the digits root {self.root} does not exist; create it and set dataset.download=true, or point "
                "dataset.root at a folder holding MNIST/raw/, usps.bz2, usps.t.bz2, train_32x32.mat, test_32x32.mat"
            )
        for domain in self._used_domains:
            missing = [r.provides for r in RESOURCES[domain] if not (self.root / r.provides).is_file()]
            if missing:
                raise DataError(
                    f"the {domain} files are missing from {self.root} ({', '.join(missing)}); set "
                    f"dataset.download=true (torchvision's URLs, MD5-checked), or place {ORIGINS[domain]}"
                )

    def prepare_data(self) -> None:
        """Download the missing files of the source and target domains when ``download=True``."""
        self._prepared = True
        if not self.download:
            return
        failures = download_resources(self.root, [r for d in self._used_domains for r in RESOURCES[d]])
        if failures:
            domains = [d for d in self._used_domains if any(f.resource in RESOURCES[d] for f in failures)]
            places = "; ".join(f"{d}: {ORIGINS[d]}" for d in domains)
            raise DataError(
                f"could not download the digits files ({failure_summary(failures)}); place them in {self.root} "
                f"({places}), then run again with dataset.download=false"
            )
        self.check_files()

    def _split(self, domain: str, split: str, transform: Callable) -> ArrayImages:
        images, labels = read_domain(self.root, domain, split)
        expected = COUNTS[(domain, split)]
        if self.strict and len(labels) != expected:
            raise DataError(
                f"the {domain} {split} split in {self.root} has {len(labels)} images but the standard dataset has "
                f"{expected}; replace the files (or set dataset.strict=false to use a custom subset)"
            )
        return ArrayImages(images, labels, transform)

    def load_domain(self, domain: str) -> DomainSplit:
        """Train split (train transform) and test split (test transform) of one domain."""
        return DomainSplit(
            self._split(domain, "train", self.train_transform), self._split(domain, "test", self.test_transform)
        )

    def setup(self, stage: str | None = None) -> None:
        if self.source_data is None and self.download and not self._prepared and getattr(self, "trainer", None) is None:
            self.prepare_data()  # plain use without a Trainer (which calls prepare_data itself)
        super().setup(stage)
