"""Downloads: verified installs, failures that say what to place where, nothing half-written. No network:
the fetch function is replaced, or pointed at a local port where nothing listens."""

from __future__ import annotations

import gzip
import hashlib
import logging
import urllib.error
import zipfile
from pathlib import Path

import pytest

from tests.unit.dataset_fakes import class_tree, tar_folder, write_mnist
from uda.data import Digits, Office31
from uda.data import download as dl
from uda.data.download import Resource, download_resources, fetch_url
from uda.data.transforms import image_transform
from uda.errors import DataError

SMALL = {"train_transform": image_transform(resize=36, size=32), "test_transform": image_transform(36, "center", 32)}


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def serve(archives: dict[str, Path], calls: list[str]):
    """A fetch function that 'downloads' local files by file name and fails for anything else."""

    def fetch(url: str, destination: Path) -> None:
        calls.append(url)
        for name, source in archives.items():
            if name in url:
                destination.write_bytes(source.read_bytes())
                return
        raise urllib.error.URLError("offline")

    return fetch


def test_failure_says_which_files_to_place_where_and_leaves_nothing(tmp_path, monkeypatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(dl, "fetch_url", serve({}, calls))
    root = tmp_path / "office31"
    dm = Office31("A", "W", root=root, download=True)  # no layout check before the download
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert message.startswith("could not download Office-31 (amazon.tgz and 1 more file(s) failed (https://cloud")
    assert "<urlopen error offline>" in message and "https://faculty.cc.gatech.edu/~judy/domainadapt/" in message
    assert f"{root}/amazon/images/<class>/<image> and {root}/webcam/images/<class>/<image> exist" in message
    assert message.endswith("then run again with dataset.download=false") and "\n" not in message
    assert len(calls) == 3  # image lists, amazon, webcam: each mirror tried once; dslr is not needed
    assert leftovers(root) == []  # no temporary folder, no partial domain


def test_unreachable_url_is_a_failure_not_a_crash(tmp_path) -> None:
    resource = Resource("x.tgz", ("http://127.0.0.1:9/x.tgz",), provides="x")
    failures = download_resources(tmp_path, [resource])  # the real fetch_url, to a port where nothing listens
    assert len(failures) == 1 and failures[0].resource is resource
    assert failures[0].errors[0].startswith("http://127.0.0.1:9/x.tgz: ")
    assert leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="refusing to fetch a non-HTTP URL"):
        fetch_url("file:///etc/passwd", tmp_path / "p")


def test_download_installs_verified_archives(tmp_path, monkeypatch, caplog) -> None:
    staging = tmp_path / "staging"
    for domain in ("amazon", "webcam"):
        class_tree(staging, f"{domain}/images", ("bike", "mug"), per_class=2)
        tar_folder(staging / f"{domain}.tgz", staging, domain)
    calls: list[str] = []
    archives = {"ec12dfcddade43ab8101": staging / "amazon.tgz", "8a41009a166e4131adcd": staging / "webcam.tgz"}
    monkeypatch.setattr(dl, "fetch_url", serve(archives, calls))
    root = tmp_path / "office31"
    dm = Office31("A", "W", root=root, download=True, strict=False, **SMALL)
    with caplog.at_level(logging.WARNING):
        dm.setup()  # without a Trainer, setup runs prepare_data itself
    assert "they are rebuilt from the folders" in caplog.text  # the image lists could not be fetched: optional
    assert leftovers(root) == ["amazon", "image_list", "webcam"]
    assert len(dm.source_data.train) == 4 and sorted(set(dm.target_data.test.labels.tolist())) == [1, 17]
    # a second run finds everything in place and fetches nothing
    calls.clear()
    Office31("A", "W", root=root, download=True, strict=False).prepare_data()
    assert calls == []


def test_archive_with_the_wrong_content_is_not_installed(tmp_path, monkeypatch) -> None:
    staging = tmp_path / "staging"
    class_tree(staging, "amazon_v2/images", ("bike",), per_class=1)  # wrong top-level folder
    tar_folder(staging / "amazon.tgz", staging, "amazon_v2")
    class_tree(staging, "webcam/images", ("bike",), per_class=1)  # right folder, far too few images
    tar_folder(staging / "webcam.tgz", staging, "webcam")
    archives = {"ec12dfcddade43ab8101": staging / "amazon.tgz", "8a41009a166e4131adcd": staging / "webcam.tgz"}
    monkeypatch.setattr(dl, "fetch_url", serve(archives, []))
    root = tmp_path / "office31"
    with pytest.raises(
        DataError, match=r"amazon.tgz and 1 more file\(s\) failed \(.*amazon.tgz does not contain amazon"
    ):
        Office31("A", "W", root=root, download=True).prepare_data()
    assert leftovers(root) == []
    with pytest.raises(
        DataError, match=r"webcam.tgz and 1 more file\(s\) failed \(.*webcam.tgz holds 1 images of webcam, "
    ):
        Office31("W", "A", root=root, download=True).prepare_data()
    assert leftovers(root) == []


def test_checksum_mismatch_is_refused_and_a_match_is_installed(tmp_path) -> None:
    payload = gzip.compress(b"digits")
    good = Resource("f.gz", ("https://example.invalid/f.gz",), "MNIST/raw/f", hashlib.md5(payload).hexdigest(), "gzip")
    bad = Resource("g.gz", ("https://example.invalid/g.gz",), "MNIST/raw/g", "0" * 32, "gzip")
    failures = download_resources(tmp_path, [good, bad], fetch=lambda url, dest: dest.write_bytes(payload))
    assert [f.resource for f in failures] == [bad] and "checksum mismatch" in failures[0].errors[0]
    assert (tmp_path / "MNIST/raw/f").read_bytes() == b"digits" and not (tmp_path / "MNIST/raw/g").exists()
    assert sorted(p.name for p in (tmp_path / "MNIST" / "raw").iterdir()) == ["f"]


def test_digits_download_failure_names_the_files_and_places(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(dl, "fetch_url", lambda url, dest: dest.write_bytes(b"an error page"))
    root = tmp_path / "digits"
    dm = Digits("M", "U", root=root, download=True)
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert message.startswith("could not download the digits files (train-images-idx3-ubyte.gz and 5 more file(s)")
    assert "checksum mismatch" in message and "f68b3c2dcbeaaa9fbdd348bbdeb94873" in message  # torchvision's md5
    assert (
        "mnist: MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (gunzipped)" in message
        and "usps: usps.bz2 and usps.t.bz2" in message
    )
    assert leftovers(root) == []
    # files already in place are not fetched again
    write_mnist(root)
    calls: list[str] = []
    monkeypatch.setattr(dl, "fetch_url", lambda url, dest: calls.append(url) or dest.write_bytes(b"x"))
    with pytest.raises(DataError):
        Digits("M", "U", root=root, download=True).prepare_data()
    assert calls and not any("mnist" in url for url in calls)


def test_zip_members_outside_the_folder_are_refused(tmp_path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("image_list/a.txt", "a 0\n")
        zf.writestr("../escaped.txt", "x")
    resource = Resource("image_list.zip", ("https://example.invalid/z",), provides="image_list")
    root = tmp_path / "root"
    failures = download_resources(root, [resource], fetch=lambda url, dest: dest.write_bytes(archive.read_bytes()))
    assert "has a member outside its folder: ../escaped.txt" in failures[0].errors[0]
    assert not (tmp_path / "escaped.txt").exists() and leftovers(root) == []
