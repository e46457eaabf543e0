"""DomainNet: official train/test split lists, required, through the real loaders and datamodule."""

from __future__ import annotations

import pytest

from tests.unit.dataset_fakes import class_tree, write_list
from uda.data import DomainNet
from uda.data.transforms import image_transform
from uda.errors import DataError

SMALL = {"train_transform": image_transform(resize=36, size=32), "test_transform": image_transform(36, "center", 32)}
CLASSES = ("aircraft_carrier", "cello", "cell_phone", "The_Eiffel_Tower", "zigzag")


def split_tree(root, domain, prefix=""):
    """3 images per class: the first two in the train list, the last in the test list."""
    entries = [(rel, DomainNet.class_names.index(rel.split("/")[1])) for rel, _ in class_tree(root, domain, CLASSES, 3)]
    train = [e for e in entries if not e[0].endswith("img2.jpg")]
    test = [e for e in entries if e[0].endswith("img2.jpg")]
    write_list(root / "image_list" / f"{domain}_train.txt", train, prefix)
    write_list(root / "image_list" / f"{domain}_test.txt", test, prefix)
    return train, test


def test_official_splits_drive_adaptation_and_evaluation(tmp_path) -> None:
    c_train, c_test = split_tree(tmp_path, "clipart")
    s_train, s_test = split_tree(tmp_path, "sketch", prefix="./data/DomainNet/")  # GH/SSRT-style lists
    dm = DomainNet("c", "s", root=tmp_path, strict=False, batch_size=4, eval_batch_size=5, iters_per_epoch=2, **SMALL)
    dm.setup()
    assert dm.target_data.train.paths.astype(str).tolist() == [p for p, _ in s_train]
    assert dm.target_data.test.paths.astype(str).tolist() == [p for p, _ in s_test]
    assert dm.source_data.test.labels.tolist() == [y for _, y in c_test]  # source test = its test split
    assert [DomainNet.class_names.index(c) for c in CLASSES] == [0, 66, 67, 308, 344]
    batch = next(iter(dm.train_dataloader()))[0]
    (x_s, y_s), x_t = batch["source"], batch["target"]
    assert x_s.shape == (4, 3, 32, 32) and x_t.shape == (4, 3, 32, 32) and int(y_s.max()) < 345
    target_loader, source_loader = dm.val_dataloader()
    assert len(target_loader.dataset) == 5 and len(source_loader.dataset) == 5
    x, y = next(iter(target_loader))
    assert x.shape == (5, 3, 32, 32) and sorted(y.tolist()) == [0, 66, 67, 308, 344]


def test_split_lists_are_required_and_counted(tmp_path) -> None:
    split_tree(tmp_path, "clipart")
    class_tree(tmp_path, "real", CLASSES, 1)
    dm = DomainNet("c", "r", root=tmp_path, strict=False, **SMALL)
    with pytest.raises(
        DataError,
        match=r"the DomainNet image list .*real_train.txt is missing; it defines the official train split, so it "
        r"cannot be rebuilt from the folders: place real_train.txt, real_test.txt in .*image_list",
    ):
        dm.setup()
    with pytest.raises(DataError, match=r"DomainNet domain clipart has 10 images in .* standard dataset has 33525"):
        DomainNet("c", "r", root=tmp_path, **SMALL).setup()
