"""Shared datamodule for image-folder benchmarks (Office-31, Office-Home, VisDA-2017, DomainNet).

A dataset subclass only states facts: its domains and their folders, image-list files, standard image
counts, canonical class list and download locations. This module turns them into strict loading:

* the root and the domain folders are checked when the datamodule is built (before any model), so a
  missing dataset fails at once with one sentence saying where to put it;
* image lists are read when present and otherwise generated from the class folders and written next to
  the data (atomically); lists that define an official split (DomainNet) cannot be generated;
* labels follow the canonical class order; per-domain image counts must match the standard dataset
  (``strict=False`` allows custom subsets); every listed file must exist;
* corrupt images fail with the file named, or are left out with a warning (``skip_corrupt=True``, which
  decodes every image once at start-up);
* ``download=True`` fetches what is missing (see :mod:`uda.data.download`) or says which files to place
  where.

Protocol. Datasets without an official split (Office-31, Office-Home, VisDA-2017) use every image of the
target domain twice, as in the papers: without labels for adaptation (train transform) and with labels
for the reported accuracy (test transform). The source test set is, by default, the source training
images under the test transform, so ``source/acc`` measures how well the labelled source data are fit,
not generalization; ``source_val_fraction > 0`` holds out a stratified fraction of the source domain
instead (left out of training), making ``source/acc`` a genuine held-out source accuracy usable for
model selection without target labels. With an official split (DomainNet) adaptation uses the train
split of the target and accuracy is measured on its test split; the source test set is the source's
test split (or the held-out fraction of its train split).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from uda.data.datamodule import DomainSplit, UDADataModule
from uda.data.download import Resource, download_resources, failure_summary
from uda.data.imagelist import (
    IMAGE_EXTENSIONS,
    Entries,
    ImageList,
    check_files_exist,
    find_unreadable,
    read_image_list,
    scan_class_folders,
    write_image_list,
)
from uda.data.splits import stratified_split
from uda.data.transforms import default_eval_transform, default_train_transform
from uda.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: the split key of datasets without an official train/test split
ALL = "all"


@dataclass(frozen=True)
class DomainSpec:
    """Where one domain lives under the dataset root, and what it should contain.

    Attributes:
        folder: the folder holding the class folders, relative to the root (``amazon/images``).
        lists: split → image-list file relative to the root; ``{"all": ...}`` without an official split,
            ``{"train": ..., "test": ...}`` with one.
        counts: split → number of images in the standard dataset (reference/baselines.md §3.1).
        resources: downloads that provide ``folder`` (mirrors in order).
    """

    folder: str
    lists: Mapping[str, str]
    counts: Mapping[str, int]
    resources: tuple[Resource, ...] = field(default=())


class ImageDataModule(UDADataModule):
    """UDA datamodule over a root directory of class folders and/or image lists (see the module docstring).

    Args:
        source, target: domain names or their short aliases (``A``, ``Ar``, ``c``, ...).
        root: the dataset root directory.
        train_transform, test_transform: callables on PIL RGB images; ``None`` = the recipe default
            (square resize 256, RandomResizedCrop 224 + flip / CenterCrop 224, ImageNet normalization).
        download: fetch missing parts from the known public locations first.
        strict: require the standard per-domain image counts and all canonical class folders.
        skip_corrupt: leave unreadable images out (with a warning and a count) instead of failing.
        source_val_fraction: hold out this stratified fraction of the source training images as the
            source test set (0 = the papers' protocol: no hold-out).
        batch_size ... seed: as :class:`~uda.data.datamodule.UDADataModule`.
    """

    title: ClassVar[str] = "dataset"
    homepage: ClassVar[str] = ""
    specs: ClassVar[dict[str, DomainSpec]] = {}
    #: downloads that provide the image lists (``image_list/``)
    list_resources: ClassVar[tuple[Resource, ...]] = ()

    @property
    def source_eval_split(self) -> str:
        if self.source_val_fraction > 0:
            return f"held-out {self.source_val_fraction:g} of the source images (left out of training)"
        return "source training images (not held out: source_val selection is optimistic)"

    def __init__(
        self,
        source: str,
        target: str,
        root: str | os.PathLike,
        batch_size: int = 36,
        eval_batch_size: int = 128,
        num_workers: int = 0,
        iters_per_epoch: int | None = None,
        pin_memory: bool | None = None,
        seed: int = 0,
        train_transform: Callable | None = None,
        test_transform: Callable | None = None,
        download: bool = False,
        strict: bool = True,
        skip_corrupt: bool = False,
        source_val_fraction: float = 0.0,
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
        if not 0.0 <= float(source_val_fraction) < 1.0:
            raise ConfigError(
                f"dataset.source_val_fraction={source_val_fraction!r} is invalid: it must be in [0, 1), "
                "e.g. 0.1 to hold out 10% of the source images (0 = no hold-out, the papers' protocol)"
            )
        self.root = Path(root).expanduser()
        self.train_transform = train_transform or default_train_transform()
        self.test_transform = test_transform or default_eval_transform()
        self.download, self.strict, self.skip_corrupt = bool(download), bool(strict), bool(skip_corrupt)
        self.source_val_fraction = float(source_val_fraction)
        self._prepared = False
        if not self.download:
            self.check_layout()

    # ----------------------------------------------------------------------------------------- layout
    @property
    def _used_domains(self) -> list[str]:
        return list(dict.fromkeys((self.source, self.target)))

    def layout(self) -> str:
        """The expected layout under the root, for messages."""
        return ", ".join(f"{spec.folder}/<class>/<image>" for spec in self.specs.values())

    def check_layout(self) -> None:
        """The root and the source/target domain folders exist; else one sentence on what to put where."""
        if not self.root.is_dir():
            raise DataError(
                f"the {self.title} root {self.root} does not exist; put the dataset there (layout: "
                f"{self.layout()}) or point dataset.root at it, or set dataset.download=true to fetch it"
            )
        for domain in self._used_domains:
            folder = self.root / self.specs[domain].folder
            if not folder.is_dir():
                raise DataError(
                    f"the {self.title} folder of domain {domain} is missing: {folder} ({self._found()}); "
                    f"put the {domain} images in {folder}/<class>/, or set dataset.download=true to fetch them"
                )

    def _found(self) -> str:
        found = [d for d, spec in self.specs.items() if (self.root / spec.folder).is_dir()]
        if found:
            return f"domains found in {self.root}: {', '.join(found)}"
        entries = sorted(e.name for e in os.scandir(self.root) if not e.name.startswith("."))[:6]
        return f"no domain folders found; {self.root} holds: {', '.join(entries) or 'nothing'}"

    # --------------------------------------------------------------------------------------- download
    def prepare_data(self) -> None:
        """Download what is missing when ``download=True`` (Lightning calls this on one process per node)."""
        self._prepared = True
        if not self.download:
            return
        domains = self._used_domains
        lists_missing = any(not (self.root / rel).is_file() for d in domains for rel in self.specs[d].lists.values())
        wanted = list(self.list_resources) if lists_missing else []
        wanted += [r for d in domains for r in self.specs[d].resources]
        failures = download_resources(self.root, wanted, verify=self._verify_download)
        needed = [f for f in failures if f.resource not in self.list_resources or self._lists_required()]
        if len(needed) < len(failures):
            log.warning("no image lists could be downloaded for %s; they are rebuilt from the folders", self.title)
        if needed:
            places = " and ".join(f"{self.root / self.specs[d].folder}/<class>/<image>" for d in domains)
            if self._lists_required():
                names = ", ".join(Path(rel).name for d in domains for rel in self.specs[d].lists.values())
                places += f" exist and {self.root}/image_list holds {names}"
            else:
                places += " exist"
            raise DataError(
                f"could not download {self.title} ({failure_summary(needed)}); get it from {self.homepage} "
                f"and place it so that {places}, then run again with dataset.download=false"
            )
        self.check_layout()

    def _lists_required(self) -> bool:
        return any(ALL not in spec.lists for spec in self.specs.values())

    def _verify_download(self, item: Path, resource: Resource) -> None:
        """Structure check after unpacking: a domain folder must hold its class folders and, when strict,
        at least the standard number of images (no checksums are published for these archives)."""
        for domain, spec in self.specs.items():
            if resource not in spec.resources:
                continue
            folder = item.parent / spec.folder
            if not folder.is_dir():
                raise DataError(f"{resource.filename} does not contain {spec.folder}/")
            count = sum(
                1 for _, _, files in os.walk(folder) for f in files if Path(f).suffix.lower() in IMAGE_EXTENSIONS
            )
            expected = sum(spec.counts.values())
            if self.strict and count < expected:
                raise DataError(f"{resource.filename} holds {count} images of {domain}, expected {expected}")

    # ---------------------------------------------------------------------------------------- loading
    def domain_entries(self, domain: str, split: str) -> Entries:
        """The checked entries of one domain split: read or generated list, counts, files, readability."""
        spec = self.specs[domain]
        list_file = self.root / spec.lists[split]
        if list_file.is_file():
            entries = read_image_list(list_file, self.root, spec.folder, self.class_names)
            where = f"image list {list_file}"
        elif split == ALL:
            entries = scan_class_folders(self.root, spec.folder, self.class_names, require_all=self.strict)
            write_image_list(list_file, entries)
            where = f"the image list generated from {self.root / spec.folder}"
        else:
            names = ", ".join(Path(p).name for p in spec.lists.values())
            raise DataError(
                f"the {self.title} image list {list_file} is missing; it defines the official {split} split, so "
                f"it cannot be rebuilt from the folders: place {names} in {list_file.parent} (from "
                f"{self.homepage} or tllib's image_list.zip), or set dataset.download=true"
            )
        expected = spec.counts.get(split)
        if self.strict and expected is not None and len(entries) != expected:
            raise DataError(
                f"{self.title} domain {domain} has {len(entries)} images in {where} but the standard dataset "
                f"has {expected}; complete the data (partial download or extraction?), or set "
                "dataset.strict=false to use a custom subset"
            )
        check_files_exist(self.root, entries, where)
        if self.skip_corrupt:
            entries = self._without_unreadable(entries, f"{self.title} {domain}")
        return entries

    def _without_unreadable(self, entries: Entries, what: str) -> Entries:
        bad = find_unreadable(self.root, entries, threads=max(4, self.num_workers))
        if not bad:
            return entries
        if len(bad) == len(entries):
            raise DataError(f"none of the {len(entries)} images of {what} can be read (first: {entries.paths[0]})")
        message = (
            f"skipped {len(bad)} unreadable image(s) of {what} (first: {self.root / entries.paths[bad[0]]}); "
            "set dataset.skip_corrupt=false to fail on them instead"
        )
        warnings.warn(message, stacklevel=2)
        log.warning(message)
        drop = set(bad)
        return entries.subset([i for i in range(len(entries)) if i not in drop])

    def _splits(self, domain: str) -> tuple[Entries, Entries]:
        spec = self.specs[domain]
        if ALL in spec.lists:
            entries = self.domain_entries(domain, ALL)
            return entries, entries
        return self.domain_entries(domain, "train"), self.domain_entries(domain, "test")

    def _dataset_pair(self, train: Entries, test: Entries) -> DomainSplit:
        return DomainSplit(
            ImageList(self.root, train, self.train_transform), ImageList(self.root, test, self.test_transform)
        )

    def load_domain(self, domain: str) -> DomainSplit:
        """Train (train transform) and test (test transform) sets of a domain, without source hold-out."""
        return self._dataset_pair(*self._splits(domain))

    def _hold_out(self, train: Entries) -> tuple[Entries, Entries]:
        try:
            keep, held = stratified_split(train.labels, self.source_val_fraction)
        except ValueError as err:
            raise ConfigError(
                f"dataset.source_val_fraction={self.source_val_fraction} cannot hold out a stratified part of "
                f"{self.source} ({len(train)} images): {err}; use a larger fraction or 0"
            ) from err
        return train.subset(keep), train.subset(held)

    def setup(self, stage: str | None = None) -> None:
        if self.source_data is not None:
            return
        if self.download and not self._prepared and getattr(self, "trainer", None) is None:
            self.prepare_data()  # plain use without a Trainer (which calls prepare_data itself)
        source_train, source_test = self._splits(self.source)
        if self.source_val_fraction > 0:
            source_train, source_test = self._hold_out(source_train)
        self.source_data = self._dataset_pair(source_train, source_test)
        self.target_data = self.load_domain(self.target)
