"""ImageCLEF-DA (ImageCLEF 2014 domain adaptation challenge): 12 classes shared by three image collections.

Domains (short names): Caltech-256 (c), ImageNet ILSVRC 2012 (i), Pascal VOC 2012 (p); 600 images each, 50
per class. Tasks of the papers (DAN/JAN/CDAN, PGA): the six ordered pairs among c, i, p. The challenge's
fourth domain, Bing (b), is not part of the benchmark and is not offered.

Layout under the root, as in the official distribution (``image_CLEF.zip`` of the thuml DAN/JAN/CDAN
releases): ``c/``, ``i/``, ``p/`` with the images, and ``list/cList.txt``, ``list/iList.txt``,
``list/pList.txt`` ("c/113.hummingbird/113_0114.jpg 2": Caltech images sit in Caltech-256 category folders,
ImageNet and Pascal images lie flat in their domain folder). The images are not in folders named after the
12 classes, so the lists are required, unless the images are re-arranged as ``<domain>/<class>/<image>``
(the layout of the Dassl/PGA copies), from which a list is generated. Labels follow the lists' order
(alphabetical): aeroplane, bike, bird, boat, bottle, bus, car, dog, horse, monitor, motorbike, people.

Strict checks (``dataset.strict=true``): 600 images per domain and 50 per class. No official train/test split:
the target images are used unlabelled for adaptation and labelled for ``target/acc`` (see
:mod:`uda.data.image_datamodule`). There is no download mirror: ``dataset.download=true`` is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from uda.data.image_datamodule import ALL, DomainSpec, ImageDataModule
from uda.data.imagelist import Entries
from uda.errors import ConfigError, DataError

#: label order of the official lists
CLASSES = (
    "aeroplane", "bike", "bird", "boat", "bottle", "bus", "car", "dog", "horse", "monitor", "motorbike", "people",
)  # fmt: skip
#: images per domain and per class in the standard dataset
PER_DOMAIN, PER_CLASS = 600, 50
#: domain -> its folder (and list prefix) in the official distribution
FOLDERS = {"caltech": "c", "imagenet": "i", "pascal": "p"}


class ImageCLEF(ImageDataModule):
    """ImageCLEF-DA with domains caltech/imagenet/pascal (c/i/p), 12 classes, 600 images per domain."""

    name = "imageclef"
    title = "ImageCLEF-DA"
    homepage = "https://www.imageclef.org/2014/adaptation"
    domains = tuple(FOLDERS)
    aliases = {short: domain for domain, short in FOLDERS.items()}
    num_classes = 12
    class_names = CLASSES
    specs = {
        domain: DomainSpec(folder=folder, lists={ALL: f"list/{folder}List.txt"}, counts={ALL: PER_DOMAIN})
        for domain, folder in FOLDERS.items()
    }

    def __init__(self, source: str, target: str, root: str | os.PathLike, download: bool = False, **kwargs) -> None:
        if download:
            raise ConfigError(
                "dataset.download=true is not available for ImageCLEF-DA (no public mirror); get image_CLEF.zip "
                f"(see {self.homepage}), unpack it into dataset.root so that c/, i/, p/ and list/ are there, and "
                "set dataset.download=false"
            )
        super().__init__(source, target, root, download=False, **kwargs)

    def layout(self) -> str:
        return "c/, i/, p/ with the images and list/cList.txt, list/iList.txt, list/pList.txt"

    def check_layout(self) -> None:
        """The root and the used domains' folders exist; else one sentence on what to put where."""
        if not self.root.is_dir():
            raise DataError(
                f"the {self.title} root {self.root} does not exist; unpack image_CLEF.zip there ({self.layout()}) "
                "or point dataset.root at it"
            )
        for domain in self._used_domains:
            folder = self.root / self.specs[domain].folder
            if not folder.is_dir():
                raise DataError(
                    f"the {self.title} folder of domain {domain} is missing: {folder} ({self._found()}); put the "
                    f"{domain} images there and its list in {self.root / self.specs[domain].lists[ALL]}"
                )

    def _has_class_folders(self, domain: str) -> bool:
        folder = self.root / self.specs[domain].folder
        found = {e.name for e in os.scandir(folder) if e.is_dir()}
        return bool(found) and found <= set(CLASSES)

    def domain_entries(self, domain: str, split: str) -> Entries:
        """The checked entries of a domain: its list (or one generated from class folders), 600 images, 50 per class."""
        list_file = self.root / self.specs[domain].lists[split]
        if not list_file.is_file() and not self._has_class_folders(domain):
            raise DataError(
                f"the {self.title} image list {list_file} is missing and the images in "
                f"{self.root / self.specs[domain].folder} are not in class folders; place the official "
                f"{Path(list_file).name} from image_CLEF.zip in {list_file.parent}, or arrange the images as "
                f"{self.specs[domain].folder}/<class>/<image> to have it generated"
            )
        entries = super().domain_entries(domain, split)
        if self.strict and not self.skip_corrupt:
            counts = np.bincount(entries.labels, minlength=self.num_classes)
            off = [f"{CLASSES[k]} {int(n)}" for k, n in enumerate(counts) if n != PER_CLASS]
            if off:
                raise DataError(
                    f"{self.title} domain {domain} should have {PER_CLASS} images per class but has {', '.join(off)} "
                    f"(in {list_file}); fix the list or the images, or set dataset.strict=false to use them as they are"
                )
        return entries
