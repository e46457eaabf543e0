"""ImageCLEF-DA through the real loaders and datamodule, on generated trees in the official layout
(``c/<Caltech category>/*.jpg``, flat ``i/`` and ``p/``, ``list/{c,i,p}List.txt``) and in class folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.dataset_fakes import class_tree, write_image, write_list
from uda.data.imageclef import CLASSES, ImageCLEF
from uda.data.transforms import image_transform
from uda.errors import ConfigError, DataError

SMALL = {
    "train_transform": image_transform(36, "random_resized", 32),
    "test_transform": image_transform(36, "center", 32),
}
#: a Caltech-256 category folder per class, as in the official cList.txt (bike has two)
CALTECH = {0: "251.airplanes-101", 1: "224.touring-bike", 2: "113.hummingbird", 7: "056.dog"}


def official_rel(domain: str, label: int, i: int) -> str:
    """A path in the official layout: Caltech category folders for c, flat files for i and p."""
    if domain == "c":
        folder = CALTECH.get(label, f"{100 + label:03d}.category-{label}")
        return f"c/{folder}/{folder[:3]}_{i:04d}.jpg"
    if domain == "i":
        return f"i/n0{label:07d}_{i}.JPEG"
    return f"p/2008_{label:02d}{i:04d}.jpg"


def official_tree(
    root: Path, domain: str, per_class: dict[int, int] | int, images: bool = False
) -> list[tuple[str, int]]:
    """The domain's files (empty placeholders unless ``images``) and its list/<d>List.txt; returns the lines."""
    counts = per_class if isinstance(per_class, dict) else dict.fromkeys(range(12), per_class)
    lines = [(official_rel(domain, label, i), label) for label, n in counts.items() for i in range(n)]
    for k, (rel, _) in enumerate(lines):
        if images:
            write_image(root / rel, seed=k)
        else:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).touch()
    write_list(root / "list" / f"{domain}List.txt", lines)
    return lines


def test_official_layout_passes_the_strict_checks(tmp_path) -> None:
    c_lines = official_tree(tmp_path, "c", 50)
    i_lines = official_tree(tmp_path, "i", 50)
    dm = ImageCLEF("c", "i", root=tmp_path, **SMALL)
    assert (dm.source, dm.target) == ("caltech", "imagenet") and dm.num_classes == 12
    dm.setup()
    assert dm.source_data.train.paths.astype(str).tolist() == [p for p, _ in c_lines]
    assert dm.target_data.test.labels.tolist() == [y for _, y in i_lines]
    assert len(dm.source_data.train) == len(dm.target_data.train) == 600
    assert CLASSES.index("people") == 11 and CLASSES[:3] == ("aeroplane", "bike", "bird")


def test_per_class_and_per_domain_counts_are_checked(tmp_path) -> None:
    counts = dict.fromkeys(range(12), 50) | {2: 49, 3: 51}  # 600 images, but bird 49 and boat 51
    official_tree(tmp_path, "p", counts)
    official_tree(tmp_path, "c", dict.fromkeys(range(12), 50) | {5: 48})  # 598 images
    with pytest.raises(
        DataError,
        match=r"ImageCLEF-DA domain pascal should have 50 images per class but has bird 49, boat 51 "
        r"\(in .*pList.txt\); fix the list or the images, or set dataset.strict=false",
    ):
        ImageCLEF("p", "c", root=tmp_path, **SMALL).setup()
    with pytest.raises(DataError, match=r"domain caltech has 598 images in image list .* standard dataset has 600"):
        ImageCLEF("c", "p", root=tmp_path, **SMALL).setup()
    relaxed = ImageCLEF("c", "p", root=tmp_path, strict=False, **SMALL)
    relaxed.setup()
    assert len(relaxed.source_data.train) == 598 and len(relaxed.target_data.train) == 600


def test_flat_images_without_their_list_say_where_the_list_goes(tmp_path) -> None:
    official_tree(tmp_path, "c", 50)
    official_tree(tmp_path, "i", 1)
    (tmp_path / "list" / "iList.txt").unlink()
    with pytest.raises(DataError) as err:
        ImageCLEF("c", "i", root=tmp_path, **SMALL).setup()
    message = str(err.value)
    assert message.startswith(f"the ImageCLEF-DA image list {tmp_path / 'list' / 'iList.txt'} is missing")
    assert "place the official iList.txt from image_CLEF.zip in" in message and "i/<class>/<image>" in message
    assert "\n" not in message


def test_class_folder_copies_load_and_get_a_generated_list(tmp_path) -> None:
    class_tree(tmp_path, "p", CLASSES, per_class=1)
    official_tree(tmp_path, "c", 1, images=True)
    dm = ImageCLEF("c", "p", root=tmp_path, strict=False, batch_size=4, eval_batch_size=12, iters_per_epoch=1, **SMALL)
    dm.setup()
    generated = [line.rsplit(" ", 1) for line in (tmp_path / "list" / "pList.txt").read_text().splitlines()]
    assert [(p, int(y)) for p, y in generated] == [(f"p/{name}/img0.jpg", k) for k, name in enumerate(CLASSES)]
    (x_s, y_s), x_t = next(iter(dm.train_dataloader()))[0]["source"], next(iter(dm.train_dataloader()))[0]["target"]
    assert x_s.shape == (4, 3, 32, 32) and x_t.shape == (4, 3, 32, 32) and int(y_s.max()) < 12
    x, y = next(iter(dm.val_dataloader()[0]))
    assert x.shape == (12, 3, 32, 32) and sorted(y.tolist()) == list(range(12))


def test_download_and_missing_data_are_one_sentence(tmp_path) -> None:
    with pytest.raises(
        ConfigError, match=r"dataset.download=true is not available for ImageCLEF-DA \(no public mirror\)"
    ):
        ImageCLEF("c", "i", root=tmp_path, download=True)
    with pytest.raises(DataError, match=r"the ImageCLEF-DA root .*nowhere does not exist; unpack image_CLEF.zip there"):
        ImageCLEF("c", "i", root=tmp_path / "nowhere")
    (tmp_path / "c").mkdir()
    with pytest.raises(
        DataError, match=r"folder of domain pascal is missing: .*/p \(domains found in .*: caltech\); put the pascal"
    ):
        ImageCLEF("c", "p", root=tmp_path)
    with pytest.raises(
        ConfigError, match=r"dataset.source='b' is not a domain of imageclef; choose one of: caltech \(c\)"
    ):
        ImageCLEF("b", "p", root=tmp_path)


def test_config_composes_with_the_papers_domains(train_cfg, tmp_path) -> None:
    from uda.config import validate
    from uda.train import build_node

    cfg = train_cfg("dataset=imageclef", "dataset.source=p", "dataset.target=c", f"dataset.root={tmp_path}")
    validate(cfg)
    assert cfg.dataset._target_ == "uda.data.imageclef.ImageCLEF" and cfg.dataset.strict is True
    with pytest.raises(ConfigError, match=r"dataset.target='b' is not a domain of imageclef"):
        build_node(train_cfg("dataset=imageclef", "dataset.target=b").dataset, "dataset")
