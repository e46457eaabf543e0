"""Image lists ("relative/path label" per line) and class-folder trees: read, generate, check, load.

The list format is tllib's (``tllib/vision/datasets/imagelist.py``): the last token of a line is the
integer label, everything before it is the image path relative to the dataset root. Lists of other
projects are accepted when they differ only by a path prefix, e.g. the GH/SSRT lists
(``./data/office31/amazon/images/calculator/frame_0001.jpg 5``) or lists written relative to the domain
folder (``aeroplane/x.png``). The prefix rule is chosen once per file, on its first line (the
interpretation under which that image exists), and then applied to every line; a line that does not
follow it is an error. Every resolved path stays under the dataset root and must exist.

Labels index a fixed canonical class list (never the file system's order). When the parent folder of an
image is a class name, its label must be that class's index: a list written with another class order
is rejected instead of silently mislabelling the data.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from uda.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif"})


@dataclass(frozen=True)
class Entries:
    """Images of one domain split: paths relative to the dataset root (POSIX separators) and labels."""

    paths: tuple[str, ...]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int] | np.ndarray) -> Entries:
        idx = np.asarray(indices, dtype=np.int64)
        return Entries(tuple(self.paths[i] for i in idx), self.labels[idx])


class ImageFileError(DataError):
    """An image file is missing or cannot be decoded.

    Raised inside a DataLoader worker, PyTorch re-raises the exception in the main process with the
    worker's traceback as its message; the constructor keeps only the original sentence, so the entry
    point still prints one line.
    """

    def __init__(self, message: str) -> None:
        if "Original Traceback" in message:
            lines = [line for line in message.strip().splitlines() if line.strip()]
            last = lines[-1] if lines else message
            head, sep, tail = last.partition(": ")
            message = tail if sep and head.endswith("Error") else last
        super().__init__(message)


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image file as RGB; a missing or unreadable file raises :class:`ImageFileError` naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError as err:
        raise ImageFileError(f"image file {path} is missing; restore it, or regenerate the image list") from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageFileError(
            f"image file {path} cannot be read ({str(err).strip() or type(err).__name__}); replace it, "
            "or set dataset.skip_corrupt=true to leave unreadable images out"
        ) from err


class ImageList(Dataset):
    """``(transform(image), label)`` for images listed by path; paths are kept in one numpy byte array
    (no per-item Python objects, so forked DataLoader workers do not copy the list as they touch it)."""

    def __init__(self, root: str | Path, entries: Entries, transform: Callable | None = None) -> None:
        self.root = str(root)
        self.paths = np.array([p.encode("utf-8") for p in entries.paths], dtype=np.bytes_)
        self.labels = np.asarray(entries.labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = os.path.join(self.root, self.paths[index].decode("utf-8"))
        image = load_rgb(path)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


def _parts(path: str) -> list[str]:
    return [part for part in path.replace("\\", "/").split("/") if part not in ("", ".")]


def _path_rule(first: list[str], root: Path, folder: list[str]) -> tuple[str, list[str]]:
    """How a list's paths map to root-relative paths: ``("root", [])``, ``("strip", prefix)`` or
    ``("folder", folder)``; the first rule under which the first line's image exists wins."""
    top = folder[0]
    candidates: list[tuple[str, list[str]]] = []
    if first[0] == top:
        candidates.append(("root", []))
    if top in first[1:]:
        candidates.append(("strip", first[: first.index(top)]))
    candidates.append(("folder", folder))
    for rule in candidates:
        if (root / "/".join(_apply(rule, first))).is_file():
            return rule
    return candidates[0]


def _apply(rule: tuple[str, list[str]], parts: list[str]) -> list[str]:
    kind, prefix = rule
    if kind == "strip":
        return parts[len(prefix) :]
    if kind == "folder":
        return prefix + parts
    return parts


def read_image_list(list_file: Path, root: Path, folder: str, class_names: Sequence[str]) -> Entries:
    """Parse an image list into root-relative paths and labels, checking labels against ``class_names``.

    ``folder`` is where the domain's class folders live, relative to the root (e.g. ``amazon/images``);
    it anchors lists whose paths carry another prefix (see the module docstring).
    """
    index = {name: i for i, name in enumerate(class_names)}
    folder_parts = _parts(folder)
    paths: list[str] = []
    labels: list[int] = []
    rule: tuple[str, list[str]] | None = None
    with open(list_file, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line:
                continue
            where = f"line {number} of {list_file}"
            fields = line.rsplit(maxsplit=1)
            if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
                raise DataError(f"{where} is not 'relative/path label': {line!r}; fix or delete the list")
            parts, label = _parts(fields[0]), int(fields[1])
            if not parts or ".." in parts:
                raise DataError(f"{where} has an invalid image path {fields[0]!r}; fix or delete the list")
            if not 0 <= label < len(class_names):
                raise DataError(f"{where} has label {label}, outside 0..{len(class_names) - 1}; fix or delete the list")
            if rule is None:
                rule = _path_rule(parts, root, folder_parts)
            elif rule[0] == "strip" and parts[: len(rule[1])] != rule[1]:
                raise DataError(
                    f"{where} does not start with {'/'.join(rule[1])}/ like the first line; "
                    "use one path prefix throughout the list"
                )
            rel = _apply(rule, parts)
            parent = rel[-2] if len(rel) > 1 else None
            if parent in index and index[parent] != label:
                raise DataError(
                    f"{where} labels {'/'.join(rel)} as {label}, but class {parent!r} is {index[parent]} in "
                    "the canonical order; the list uses another class order: delete it to rebuild it from "
                    "the class folders, or fix its labels"
                )
            paths.append("/".join(rel))
            labels.append(label)
    if not paths:
        raise DataError(f"image list {list_file} is empty; delete it to rebuild it from the class folders")
    return Entries(tuple(paths), np.asarray(labels, dtype=np.int64))


def _image_files(directory: Path) -> list[str]:
    return sorted(
        entry.name
        for entry in os.scandir(directory)
        if entry.is_file() and not entry.name.startswith(".") and Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS
    )


def scan_class_folders(root: Path, folder: str, class_names: Sequence[str], require_all: bool = True) -> Entries:
    """Entries for ``root/folder/<class>/<image>``, classes in canonical order, files sorted by name.

    Folders that are not canonical class names are an error (their images could not be labelled); so
    are missing classes when ``require_all`` (a custom subset passes ``require_all=False``).
    """
    base = root / folder
    found = sorted(e.name for e in os.scandir(base) if e.is_dir() and not e.name.startswith("."))
    known = set(class_names)
    unexpected = [name for name in found if name not in known]
    missing = [name for name in class_names if name not in set(found)]
    if unexpected or (missing and require_all):
        problems = []
        if unexpected:
            problems.append(f"unexpected {_few(unexpected)}")
        if missing and require_all:
            problems.append(f"missing {_few(missing)}")
        raise DataError(
            f"class folders in {base} do not match the {len(class_names)} canonical classes "
            f"({'; '.join(problems)}); rename them to the canonical names (e.g. {', '.join(class_names[:3])}, ...)"
            + ("" if unexpected else ", or set dataset.strict=false to use a subset of the classes")
        )
    paths, labels = [], []
    for label, name in enumerate(class_names):
        if name not in found:
            continue
        for file in _image_files(base / name):
            paths.append(f"{folder.strip('/')}/{name}/{file}")
            labels.append(label)
    if not paths:
        raise DataError(f"no images found in the class folders of {base}; put the images in {base}/<class>/")
    return Entries(tuple(paths), np.asarray(labels, dtype=np.int64))


def _few(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def write_image_list(list_file: Path, entries: Entries) -> bool:
    """Write ``entries`` as an image list atomically (temporary file + rename); ``False`` if not writable."""
    temporary = list_file.with_name(f".{list_file.name}.{os.getpid()}.tmp")
    try:
        list_file.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.writelines(
                f"{path} {label}\n" for path, label in zip(entries.paths, entries.labels.tolist(), strict=True)
            )
        os.replace(temporary, list_file)
    except OSError as err:
        temporary.unlink(missing_ok=True)
        warnings.warn(f"could not write the image list {list_file} ({err}); using it from memory", stacklevel=2)
        return False
    log.info("wrote %s (%d images)", list_file, len(entries))
    return True


def check_files_exist(root: Path, entries: Entries, source: str) -> None:
    """Every listed image must exist; each folder is listed once (cheap even for DomainNet's 600k images)."""
    listing: dict[str, frozenset[str]] = {}
    missing: list[str] = []
    for path in entries.paths:
        directory, _, name = path.rpartition("/")
        if directory not in listing:
            try:
                listing[directory] = frozenset(os.listdir(root / directory))
            except OSError:
                listing[directory] = frozenset()
        if name not in listing[directory]:
            missing.append(path)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(
            f"{source} refers to a missing file {root / missing[0]}{more}; restore the images, "
            "or delete the list so it is rebuilt from the class folders"
        )


def _readable(path: str) -> bool:
    try:
        with Image.open(path) as image:
            image.draft("RGB", (64, 64))  # JPEG: decode at reduced scale; still reads all the data
            image.load()
        return True
    except Exception:  # noqa: BLE001 - anything PIL raises means "cannot be used"
        return False


def find_unreadable(root: Path, entries: Entries, threads: int = 8) -> list[int]:
    """Indices of entries whose image cannot be decoded (a full pass over the files, in threads)."""
    files = [str(root / path) for path in entries.paths]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        ok = list(pool.map(_readable, files, chunksize=64))
    return [i for i, good in enumerate(ok) if not good]
