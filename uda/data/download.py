"""Download helpers: fetch to a temporary name, verify, then move into place (never a half-written dataset).

Every resource is fetched into a private temporary folder inside the dataset root (same file system, so
the final move is an atomic rename), checked, unpacked there, checked again, and only then renamed to
its final path. An interrupted or failed download leaves nothing behind but the temporary folder, which
is removed on the way out.

What "checked" means depends on what is known about the file:

* a published MD5 (torchvision's MNIST, USPS and SVHN files) is compared with the downloaded bytes;
* for the tllib mirror archives (Office-31, Office-Home, VisDA-2017, DomainNet) no checksum is published,
  so only the unpacked structure is checked: the expected folder must be there and, for image folders,
  hold at least the expected number of images (the caller's ``verify`` hook). The exact per-domain counts
  are checked again each time the dataset is loaded.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from uda.errors import DataError

log = logging.getLogger(__name__)

#: ``fetch(url, destination)`` writes the bytes at ``url`` to the file ``destination`` or raises
Fetch = Callable[[str, Path], None]
#: ``verify(path, resource)`` raises :class:`DataError` if the unpacked ``path`` is not what was expected
Verify = Callable[[Path, "Resource"], None]

UNPACK_KINDS = ("archive", "gzip", "none")


@dataclass(frozen=True)
class Resource:
    """One downloadable file.

    Attributes:
        filename: the file's name (used for the temporary copy and in messages).
        urls: mirrors, tried in order until one works.
        provides: the path, relative to the dataset root, that exists once the resource is in place
            (an archive's top-level folder, or the file itself); a resource whose path exists is skipped.
        md5: checksum of the downloaded file where one is published, else ``None``.
        unpack: ``archive`` (tar or zip, detected from the content), ``gzip`` (one compressed file) or
            ``none`` (kept as downloaded).
    """

    filename: str
    urls: tuple[str, ...]
    provides: str
    md5: str | None = None
    unpack: str = "archive"

    def __post_init__(self) -> None:
        if self.unpack not in UNPACK_KINDS:
            raise ValueError(f"unknown unpack kind {self.unpack!r}; choose one of {UNPACK_KINDS}")


@dataclass(frozen=True)
class Failure:
    """A resource that could not be installed, with the reason for each mirror tried."""

    resource: Resource
    errors: tuple[str, ...]


def fetch_url(url: str, destination: Path, timeout: float = 60.0) -> None:
    """Stream ``url`` (http or https) into ``destination``."""
    if urllib.parse.urlparse(url).scheme not in ("http", "https"):
        raise ValueError(f"refusing to fetch a non-HTTP URL: {url}")
    request = urllib.request.Request(url, headers={"User-Agent": "uda-dataset-downloader/1"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(destination, "wb") as out:  # noqa: S310
        shutil.copyfileobj(response, out, length=1 << 20)


def md5sum(path: Path) -> str:
    """Hex MD5 of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def extract_archive(archive: Path, destination: Path) -> None:
    """Unpack a tar (any compression) or zip archive into ``destination``, refusing members that escape it."""
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tar:
            tar.extractall(destination, filter="data")
        return
    if zipfile.is_zipfile(archive):
        base = destination.resolve()
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if not (base / member).resolve().is_relative_to(base):
                    raise DataError(f"archive {archive.name} has a member outside its folder: {member}")
            zf.extractall(destination)
        return
    raise DataError(f"{archive.name} is neither a tar nor a zip archive")


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    reason = text[0] if text else type(err).__name__
    return reason if len(reason) <= 160 else reason[:157] + "..."


def install(root: Path, resource: Resource, url: str, fetch: Fetch, verify: Verify | None = None) -> None:
    """Fetch ``resource`` from ``url`` into ``root``: temporary folder → checksum → unpack → verify → rename."""
    staging = Path(tempfile.mkdtemp(prefix=".uda-download-", dir=root))
    try:
        downloaded = staging / resource.filename
        log.info("downloading %s from %s", resource.filename, url)
        fetch(url, downloaded)
        if resource.md5 is not None:
            got = md5sum(downloaded)
            if got != resource.md5:
                raise DataError(f"checksum mismatch (md5 {got}, expected {resource.md5})")
        unpacked = staging / "unpacked"
        unpacked.mkdir()
        item = unpacked / resource.provides
        item.parent.mkdir(parents=True, exist_ok=True)
        if resource.unpack == "archive":
            extract_archive(downloaded, unpacked)
        elif resource.unpack == "gzip":
            with gzip.open(downloaded, "rb") as src, open(item, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
        else:
            os.replace(downloaded, item)
        if not item.exists():
            raise DataError(f"{resource.filename} does not contain {resource.provides}")
        if verify is not None:
            verify(item, resource)
        target = root / resource.provides
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(item, target)
        except OSError:
            if not target.exists():  # another process may have put the same item in place meanwhile
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download_resources(
    root: Path, resources: Sequence[Resource], fetch: Fetch | None = None, verify: Verify | None = None
) -> list[Failure]:
    """Install every resource whose ``provides`` path is missing under ``root``; return those that failed.

    Each resource is tried from each of its mirrors in turn. Nothing is left half-written: a resource is
    either fully in place or absent. ``fetch`` defaults to :func:`fetch_url` (looked up at call time, so
    tests can replace it).
    """
    fetch = fetch or fetch_url
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return [Failure(r, (f"cannot create {root}: {_reason(err)}",)) for r in resources]
    failures = []
    for resource in resources:
        if (root / resource.provides).exists():
            continue
        errors = []
        for url in resource.urls:
            try:
                install(root, resource, url, fetch, verify)
                break
            except (OSError, EOFError, ValueError, tarfile.TarError, zipfile.BadZipFile, DataError) as err:
                log.warning("download of %s from %s failed: %s", resource.filename, url, _reason(err))
                errors.append(f"{url}: {_reason(err)}")
        else:
            failures.append(Failure(resource, tuple(errors)))
    return failures


def failure_summary(failures: Sequence[Failure]) -> str:
    """A short clause for messages: the first failed file, its first mirror and the reason."""
    first = failures[0]
    reason = first.errors[0] if first.errors else "no download location is known"
    more = f" and {len(failures) - 1} more file(s)" if len(failures) > 1 else ""
    return f"{first.resource.filename}{more} failed ({reason})"
