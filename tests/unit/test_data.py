"""The offline digits pair and the UDA datamodule, through the real loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uda.data import OfflineDigits, Unlabeled
from uda.data.offline_digits import center_by_mass, load_mnist5k, load_uci_digits
from uda.data.splits import stratified_split
from uda.errors import ConfigError


def test_domains_are_real_digits_in_one_format() -> None:
    mnist, mnist_y = load_mnist5k()
    uci, uci_y = load_uci_digits()
    assert mnist.shape == (5000, 28, 28) and uci.shape == (1797, 28, 28)
    for images, labels in ((mnist, mnist_y), (uci, uci_y)):
        assert images.dtype == np.float32 and images.min() >= 0 and images.max() <= 1
        assert set(np.unique(labels)) == set(range(10))
    # both domains follow MNIST's convention: each digit's centre of mass at the canvas centre
    coords = np.arange(28)
    for images in (mnist, uci):
        mass = images.sum(axis=(1, 2))
        cy = (images.sum(axis=2) * coords).sum(axis=1) / mass
        cx = (images.sum(axis=1) * coords).sum(axis=1) / mass
        assert abs(np.median(cy) - 13.5) < 0.75 and abs(np.median(cx) - 13.5) < 0.75


def test_center_by_mass_puts_mass_at_the_centre() -> None:
    box = np.zeros((1, 20, 20), dtype=np.float32)
    box[0, 0:4, 0:4] = 1.0  # a blob in the top-left corner of the box
    canvas = center_by_mass(box)[0]
    ys, xs = np.nonzero(canvas)
    # the shift is clipped so the box stays inside the canvas: the blob moves as far as allowed
    assert ys.min() == 8 and xs.min() == 8
    centred = np.zeros((1, 20, 20), dtype=np.float32)
    centred[0, 8:12, 8:12] = 1.0
    ys, xs = np.nonzero(center_by_mass(centred)[0])
    assert (ys.mean(), xs.mean()) == (13.5, 13.5)


def test_split_is_stratified_disjoint_and_seed_independent() -> None:
    _, labels = load_uci_digits()
    torch.manual_seed(123)
    np.random.seed(123)
    train1, test1 = stratified_split(labels, 0.2)
    torch.manual_seed(7)
    np.random.seed(7)
    train2, test2 = stratified_split(labels, 0.2)
    assert np.array_equal(train1, train2) and np.array_equal(test1, test2)
    assert not set(train1) & set(test1) and len(train1) + len(test1) == len(labels)
    overall = np.bincount(labels) / len(labels)
    assert np.abs(np.bincount(labels[test1], minlength=10) / len(test1) - overall).max() < 0.01


def test_datamodule_batches_and_sizes() -> None:
    dm = OfflineDigits("mnist", "uci", batch_size=16, iters_per_epoch=7)
    dm.setup()
    assert (len(dm.source_data.train), len(dm.source_data.test)) == (4000, 1000)
    assert (len(dm.target_data.train), len(dm.target_data.test)) == (1437, 360)
    loader = dm.train_dataloader()
    batches = list(iter(loader))
    assert len(batches) == 7
    batch = batches[0][0]
    (x_s, y_s), x_t = batch["source"], batch["target"]
    assert x_s.shape == (16, 1, 28, 28) and y_s.shape == (16,) and y_s.dtype == torch.int64
    assert isinstance(x_t, torch.Tensor) and x_t.shape == (16, 1, 28, 28)  # images only, no labels
    assert float(x_s.min()) >= -1.0 and float(x_s.max()) <= 1.0
    target_loader, source_loader = dm.val_dataloader()
    assert len(target_loader.dataset) == 360 and len(source_loader.dataset) == 1000


def test_training_batches_walk_through_the_whole_domain() -> None:
    dm = OfflineDigits("uci", "mnist", batch_size=479, iters_per_epoch=6)  # 1437 = 3 x 479: two passes
    dm.setup()
    labels = [y for (_, y) in (b[0]["source"] for b in dm.train_dataloader())]
    first, second = torch.cat(labels[:3]), torch.cat(labels[3:])
    # each pass is a full permutation of the domain: same label multiset, different order
    assert sorted(first.tolist()) == sorted(dm.source_data.train.tensors[1].tolist())
    assert sorted(first.tolist()) == sorted(second.tolist()) and not torch.equal(first, second)


def test_unlabeled_hides_labels() -> None:
    ds = Unlabeled(torch.utils.data.TensorDataset(torch.zeros(3, 2), torch.tensor([1, 2, 3])))
    assert len(ds) == 3 and torch.equal(ds[1], torch.zeros(2))


def test_unknown_domain_is_one_clear_sentence() -> None:
    with pytest.raises(
        ConfigError,
        match=r"dataset.target='usps' is not a domain of offline_digits; "
        r"choose one of: mnist, uci",
    ):
        OfflineDigits("mnist", "usps")
