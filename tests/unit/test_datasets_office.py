"""Office-style datasets (Office-31, Office-Home, VisDA-2017) through the real loaders and datamodules,
on small generated image trees in a temporary directory."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch._utils import ExceptionWrapper

from tests.unit.dataset_fakes import class_tree, write_image, write_list
from uda.data import ImageDataModule, Office31, OfficeHome, VisDA2017
from uda.data.imagelist import ImageFileError, read_image_list
from uda.data.transforms import image_transform
from uda.errors import ConfigError, DataError

SMALL = {
    "train_transform": image_transform(resize=36, crop="random_resized", size=32),
    "test_transform": image_transform(resize=36, crop="center", size=32, hflip=False),
}


def build(cls: type[ImageDataModule], root: Path, domains: tuple[str, str], classes=None, per_class: int = 2):
    """Class-folder trees for two domains; returns {domain: [(relative path, label), ...]}."""
    names = cls.class_names if classes is None else classes
    trees = {}
    for domain in domains:
        folder = cls.specs[domain].folder
        trees[domain] = [
            (rel, cls.class_names.index(Path(rel).parent.name))
            for rel, _ in class_tree(root, folder, names, per_class=per_class)
        ]
    return trees


@pytest.mark.parametrize(
    ("cls", "source", "target", "canonical"),
    [
        (Office31, "A", "W", {"back_pack": 0, "calculator": 5, "trash_can": 30}),
        (OfficeHome, "Ar", "Cl", {"Drill": 0, "Exit_Sign": 1, "Marker": 64}),
        (VisDA2017, "Synthetic", "Real", {"aeroplane": 0, "train": 10, "truck": 11}),
    ],
)
def test_class_folders_load_through_the_datamodule(tmp_path, cls, source, target, canonical) -> None:
    trees = build(cls, tmp_path, (cls.resolve_domain(source), cls.resolve_domain(target)))
    dm = cls(source, target, root=tmp_path, batch_size=4, eval_batch_size=8, iters_per_epoch=2, strict=False, **SMALL)
    assert (dm.source, dm.target) == (cls.resolve_domain(source), cls.resolve_domain(target))
    dm.setup()
    # image lists were generated, in the canonical class order, and written where they belong
    for domain in (dm.source, dm.target):
        list_file = tmp_path / cls.specs[domain].lists["all"]
        lines = [line.rsplit(" ", 1) for line in list_file.read_text().splitlines()]
        assert len(lines) == len(trees[domain]) == 2 * cls.num_classes
        for path, label in lines:
            assert cls.class_names[int(label)] == Path(path).parent.name
        assert not list(list_file.parent.glob(".*tmp"))  # no temporary file left behind
    for name, index in canonical.items():
        assert cls.class_names.index(name) == index
    batch = next(iter(dm.train_dataloader()))[0]
    (x_s, y_s), x_t = batch["source"], batch["target"]
    assert x_s.shape == (4, 3, 32, 32) and x_t.shape == (4, 3, 32, 32) and y_s.dtype == torch.int64
    assert int(y_s.min()) >= 0 and int(y_s.max()) < cls.num_classes
    target_loader, source_loader = dm.val_dataloader()
    # no official split: the target test set is the target domain itself (test transform)
    assert len(target_loader.dataset) == len(dm.target_data.train) == 2 * cls.num_classes
    x, y = next(iter(target_loader))
    assert x.shape == (8, 3, 32, 32) and int(y.max()) < cls.num_classes
    # a second datamodule reads the lists written by the first
    again = cls(source, target, root=tmp_path, strict=False, **SMALL)
    again.setup()
    assert np.array_equal(again.source_data.train.labels, dm.source_data.train.labels)


def test_default_transforms_are_the_recipe(tmp_path) -> None:
    build(Office31, tmp_path, ("amazon", "webcam"), classes=Office31.class_names[:2], per_class=2)
    dm = Office31("A", "W", root=tmp_path, batch_size=2, iters_per_epoch=1, strict=False)
    dm.setup()
    x, y = dm.source_data.train[0]
    assert x.shape == (3, 224, 224) and y == 0
    names = [type(t).__name__ for t in dm.train_transform.transforms]
    assert names == ["Resize", "RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert dm.train_transform.transforms[0].size == (256, 256)  # square resize, not aspect-preserving
    names = [type(t).__name__ for t in dm.test_transform.transforms]
    assert names == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    with pytest.raises(ConfigError, match="crop='corner' is unknown; choose one of: random_resized, random"):
        image_transform(crop="corner")


def test_image_list_formats_tllib_gh_and_domain_relative(tmp_path) -> None:
    trees = build(Office31, tmp_path, ("amazon", "webcam"), classes=("back_pack", "calculator"))
    reference = [(rel, label) for rel, label in trees["webcam"]]
    lists = tmp_path / "lists"
    # tllib: relative to the root; GH/SSRT: "./data/office31//webcam/images/..."; relative to the domain folder
    write_list(lists / "tllib.txt", reference)
    write_list(lists / "gh.txt", reference, prefix="./data/office31//")
    write_list(lists / "rel.txt", [(rel.removeprefix("webcam/images/"), y) for rel, y in reference])
    for name in ("tllib.txt", "gh.txt", "rel.txt"):
        entries = read_image_list(lists / name, tmp_path, "webcam/images", Office31.class_names)
        assert list(zip(entries.paths, entries.labels.tolist(), strict=True)) == reference, name
    # Office-Home GH lists carry "./data/office-home/images/<domain>/..."
    oh = build(OfficeHome, tmp_path / "oh", ("Art", "Clipart"), classes=("Drill", "Bottle"))
    write_list(tmp_path / "oh" / "image_list" / "Art.txt", oh["Art"], prefix="./data/office-home/images/")
    dm = OfficeHome("Ar", "Cl", root=tmp_path / "oh", strict=False, **SMALL)
    dm.setup()
    assert sorted(dm.source_data.train.labels.tolist()) == [0, 0, 2, 2]
    # a line that does not follow the prefix of the first line is rejected
    write_list(lists / "mixed.txt", [("./data/office31/" + reference[0][0], 0), ("other/" + reference[1][0], 0)])
    with pytest.raises(DataError, match="line 2 of .* does not start with data/office31/ like the first line"):
        read_image_list(lists / "mixed.txt", tmp_path, "webcam/images", Office31.class_names)


def test_a_list_in_another_class_order_is_rejected(tmp_path) -> None:
    trees = build(Office31, tmp_path, ("amazon", "webcam"), classes=("back_pack", "calculator"))
    alphabetical_elsewhere = [(rel, 1 if "calculator" in rel else 0) for rel, _ in trees["amazon"]]
    write_list(tmp_path / "image_list" / "amazon.txt", alphabetical_elsewhere)
    dm = Office31("A", "W", root=tmp_path, strict=False, **SMALL)
    with pytest.raises(DataError, match=r"as 1, but class 'calculator' is 5 in the canonical order"):
        dm.setup()


def test_image_counts_are_checked_and_the_check_can_be_switched_off(tmp_path) -> None:
    build(Office31, tmp_path, ("amazon", "dslr"))
    with pytest.raises(
        DataError,
        match=r"Office-31 domain amazon has 62 images in .* but the standard dataset has 2817; .*dataset.strict=false",
    ):
        Office31("A", "D", root=tmp_path, **SMALL).setup()
    dm = Office31("A", "D", root=tmp_path, strict=False, **SMALL)
    dm.setup()
    assert len(dm.source_data.train) == 62 and len(dm.target_data.test) == 62


def test_root_missing_is_one_sentence(tmp_path) -> None:
    with pytest.raises(DataError) as err:
        OfficeHome("Ar", "Cl", root=tmp_path / "nowhere")
    message = str(err.value)
    assert message.startswith(f"the Office-Home root {tmp_path / 'nowhere'} does not exist;")
    assert "Art/<class>/<image>" in message and "dataset.download=true" in message and "\n" not in message


def test_domain_folder_missing_lists_the_domains_found(tmp_path) -> None:
    build(Office31, tmp_path, ("amazon", "webcam"), classes=("bike",))
    with pytest.raises(
        DataError, match=r"folder of domain dslr is missing: .*dslr/images \(domains found in .*: amazon, webcam\)"
    ):
        Office31("A", "D", root=tmp_path)
    (tmp_path / "other").mkdir()
    with pytest.raises(DataError, match=r"no domain folders found; .* holds: amazon, other, webcam"):
        OfficeHome("Ar", "Cl", root=tmp_path)


def test_list_referencing_a_missing_file(tmp_path) -> None:
    trees = build(Office31, tmp_path, ("amazon", "webcam"), classes=("bike", "mug"))
    write_list(tmp_path / "image_list" / "webcam.txt", trees["webcam"] + [("webcam/images/mug/gone.jpg", 17)])
    with pytest.raises(
        DataError, match=r"image list .*webcam.txt refers to a missing file .*webcam/images/mug/gone.jpg"
    ):
        Office31("A", "W", root=tmp_path, strict=False, **SMALL).setup()


def test_class_folders_that_are_not_canonical(tmp_path) -> None:
    build(Office31, tmp_path, ("amazon", "webcam"), classes=("bike", "mug"))
    write_image(tmp_path / "amazon" / "images" / "Backpack" / "x.jpg", seed=0)
    with pytest.raises(
        DataError, match=r"class folders in .*amazon/images do not match the 31 canonical classes \(unexpected Backpack"
    ):
        Office31("A", "W", root=tmp_path, strict=False, **SMALL).setup()
    (tmp_path / "amazon" / "images" / "Backpack" / "x.jpg").unlink()
    (tmp_path / "amazon" / "images" / "Backpack").rmdir()
    with pytest.raises(DataError, match=r"\(missing back_pack, bike_helmet, .*\(\+24 more\)\).*dataset.strict=false"):
        Office31("A", "W", root=tmp_path, strict=True, **SMALL).setup()


def _corrupt(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])  # a truncated JPEG


def test_corrupt_image_names_the_file(tmp_path) -> None:
    build(Office31, tmp_path, ("amazon", "webcam"), classes=("bike",), per_class=1)
    _corrupt(tmp_path / "amazon" / "images" / "bike" / "img0.jpg")
    dm = Office31("A", "W", root=tmp_path, strict=False, batch_size=1, iters_per_epoch=1, **SMALL)
    dm.setup()
    with pytest.raises(
        ImageFileError, match=r"image file .*amazon/images/bike/img0.jpg cannot be read .*skip_corrupt=true"
    ):
        next(iter(dm.train_dataloader()))
    # raised in a DataLoader worker, PyTorch re-raises it in the main process through ExceptionWrapper with the
    # worker's traceback as message; the error keeps only its sentence (a real worker takes seconds to shut down
    # after an error, so the wrapper is exercised directly)
    try:
        dm.source_data.train[0]
    except ImageFileError:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(ImageFileError) as err:
        wrapper.reraise()
    assert str(err.value).startswith("image file ") and "\n" not in str(err.value) and "img0.jpg" in str(err.value)


def test_skip_corrupt_leaves_unreadable_images_out_with_a_warning(tmp_path) -> None:
    build(Office31, tmp_path, ("amazon", "webcam"), classes=("bike", "mug"), per_class=3)
    _corrupt(tmp_path / "amazon" / "images" / "mug" / "img1.jpg")
    (tmp_path / "amazon" / "images" / "bike" / "img2.jpg").write_bytes(b"not an image")
    dm = Office31("A", "W", root=tmp_path, strict=False, skip_corrupt=True, **SMALL)
    with pytest.warns(
        UserWarning, match=r"skipped 2 unreadable image\(s\) of Office-31 amazon \(first: .*bike/img2.jpg\)"
    ):
        dm.setup()
    assert len(dm.source_data.train) == 4 and len(dm.target_data.train) == 6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(len(dm.source_data.train)):
            dm.source_data.train[i]  # every remaining image decodes


def test_source_hold_out_is_stratified_and_off_by_default(tmp_path) -> None:
    build(Office31, tmp_path, ("amazon", "webcam"), classes=("bike", "mug", "pen"), per_class=8)
    paper = Office31("A", "W", root=tmp_path, strict=False, **SMALL)
    paper.setup()
    # off (the papers' protocol): the source test set is the source training images
    assert paper.source_data.test.paths.tolist() == paper.source_data.train.paths.tolist()
    held = Office31("A", "W", root=tmp_path, strict=False, source_val_fraction=0.25, **SMALL)
    held.setup()
    train, test = set(held.source_data.train.paths.tolist()), set(held.source_data.test.paths.tolist())
    assert len(train) == 18 and len(test) == 6 and not train & test
    labels, counts = np.unique(held.source_data.test.labels, return_counts=True)
    assert labels.tolist() == [1, 17, 19] and counts.tolist() == [2, 2, 2]  # bike, mug, pen: 2 each
    assert held.source_data.test.transform is held.test_transform
    assert len(held.target_data.train) == 24  # the target is untouched
    with pytest.raises(ConfigError, match=r"dataset.source_val_fraction=1.5 is invalid"):
        Office31("A", "W", root=tmp_path, source_val_fraction=1.5)
