"""Digits (MNIST / USPS / SVHN in torchvision's files) through torchvision's readers and the datamodule."""

from __future__ import annotations

import pytest
import torch

from tests.unit.dataset_fakes import write_mnist, write_svhn, write_usps
from uda.data import Digits
from uda.errors import ConfigError, DataError


@pytest.fixture
def digits_root(tmp_path):
    write_mnist(tmp_path, n_train=30, n_test=20)
    write_usps(tmp_path, n_train=40, n_test=10)
    write_svhn(tmp_path, n_train=30, n_test=20)
    return tmp_path


def test_mnist_to_usps_is_28x28_grayscale(digits_root) -> None:
    dm = Digits("M", "U", root=digits_root, batch_size=8, eval_batch_size=16, iters_per_epoch=3, strict=False)
    assert (dm.source, dm.target, dm.image_size, dm.channels) == ("mnist", "usps", 28, 1)
    dm.setup()
    batches = list(dm.train_dataloader())
    assert len(batches) == 3
    (x_s, y_s), x_t = batches[0][0]["source"], batches[0][0]["target"]
    assert x_s.shape == (8, 1, 28, 28) and x_t.shape == (8, 1, 28, 28) and y_s.dtype == torch.int64
    assert float(x_s.min()) >= -1.0 and float(x_s.max()) <= 1.0 and float(x_s.min()) < -0.5  # Normalize(0.5, 0.5)
    target_loader, source_loader = dm.val_dataloader()
    # the target test set is the target's own test split (USPS 16x16 upsampled to 28x28)
    assert len(target_loader.dataset) == 10 and len(source_loader.dataset) == 20 and len(dm.target_data.train) == 40
    x, y = next(iter(target_loader))
    assert x.shape == (10, 1, 28, 28) and set(y.tolist()) <= set(range(10))


def test_svhn_to_mnist_is_32x32_rgb(digits_root) -> None:
    dm = Digits("S", "M", root=digits_root, batch_size=6, iters_per_epoch=1, strict=False)
    assert (dm.image_size, dm.channels) == (32, 3)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))[0]
    (x_s, y_s), x_t = batch["source"], batch["target"]
    assert x_s.shape == (6, 3, 32, 32) and x_t.shape == (6, 3, 32, 32) and int(y_s.max()) <= 9
    # MNIST converted to RGB repeats the gray value; SVHN's label 10 is the digit 0
    assert torch.equal(x_t[:, 0], x_t[:, 1]) and torch.equal(x_t[:, 1], x_t[:, 2])
    assert dm.source_data.train.labels[:10].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    x, _ = next(iter(dm.val_dataloader()[0]))
    assert x.shape[1:] == (3, 32, 32)


def test_standard_sizes_are_checked(digits_root) -> None:
    with pytest.raises(DataError, match=r"the usps train split in .* has 40 images but the standard dataset has 7291"):
        Digits("U", "M", root=digits_root).setup()
    Digits("U", "M", root=digits_root, strict=False).setup()


def test_missing_files_and_root_are_one_sentence(tmp_path) -> None:
    with pytest.raises(
        DataError, match=r"^the digits root .*nowhere does not exist; create it and set dataset.download"
    ):
        Digits("M", "U", root=tmp_path / "nowhere")
    write_mnist(tmp_path)
    with pytest.raises(
        DataError,
        match=r"^the usps files are missing from .* \(usps.bz2, usps.t.bz2\); set dataset.download=true .*, or place "
        r"usps.bz2 and usps.t.bz2, from https://www.csie.ntu.edu.tw/",
    ):
        Digits("M", "U", root=tmp_path)
    with pytest.raises(ConfigError, match=r"dataset.target='K' is not a domain of digits; choose one of: mnist \(M\)"):
        Digits("M", "K", root=tmp_path)


def test_unreadable_files_are_one_sentence(digits_root) -> None:
    (digits_root / "usps.bz2").write_bytes(b"not bzip2")
    with pytest.raises(DataError, match=r"^the usps train files in .* cannot be read \(OSError: .*\); delete usps.bz2"):
        Digits("M", "U", root=digits_root, strict=False).setup()
