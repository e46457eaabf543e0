"""VisDA-2017 classification (Peng et al., 2017): synthetic renderings → real photos, 12 classes.

Domains (short names): Synthetic (``train`` folder, 152,397 images), Real (``validation`` folder,
55,388 images). Layout under the root (tllib's): ``train/<class>/*.png``, ``validation/<class>/*.jpg``
plus optional ``image_list/{train,validation}.txt``. The task of the papers is Synthetic→Real with the
mean per-class accuracy as the headline number (logged as ``target/acc_mean_class``); the target
(validation) images are used unlabelled for adaptation and labelled for evaluation.
"""

from __future__ import annotations

from uda.data.download import Resource
from uda.data.image_datamodule import ALL, DomainSpec, ImageDataModule

#: tllib's label order (``tllib/vision/datasets/visda2017.py``), also used by the GH/SSRT list files
CLASSES = (
    "aeroplane", "bicycle", "bus", "car", "horse", "knife",
    "motorcycle", "person", "plant", "skateboard", "train", "truck",
)  # fmt: skip

_MIRROR = "https://cloud.tsinghua.edu.cn/f/{}/?dl=1"  # tllib's mirror (links have been replaced over time)


def _spec(folder: str, count: int, archive: str) -> DomainSpec:
    return DomainSpec(
        folder=folder,
        lists={ALL: f"image_list/{folder}.txt"},
        counts={ALL: count},
        resources=(Resource(f"{folder}.tar", (_MIRROR.format(archive),), provides=folder),),
    )


class VisDA2017(ImageDataModule):
    """VisDA-2017 with domains Synthetic (train folder) and Real (validation folder), 12 classes."""

    name = "visda2017"
    title = "VisDA-2017"
    homepage = "https://ai.bu.edu/visda-2017/"
    domains = ("Synthetic", "Real")
    aliases = {"S": "Synthetic", "R": "Real", "train": "Synthetic", "validation": "Real"}
    num_classes = 12
    class_names = CLASSES
    specs = {
        "Synthetic": _spec("train", 152_397, "c5f3ce59139144ec8221"),
        "Real": _spec("validation", 55_388, "da70e4b1cf514ecea562"),
    }
    list_resources = (Resource("image_list.zip", (_MIRROR.format("c107de37b8094c5398dc"),), provides="image_list"),)
