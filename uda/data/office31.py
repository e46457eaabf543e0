"""Office-31 (Saenko et al., 2010): 31 office object classes in three domains.

Domains (short names): amazon (A, 2,817 images), dslr (D, 498), webcam (W, 795). Layout under the root
(tllib's): ``<domain>/images/<class>/*.jpg`` plus optional ``image_list/<domain>.txt``. No official
train/test split: the target domain is used unlabelled for adaptation and labelled for the reported
accuracy (see :mod:`uda.data.image_datamodule`). Tasks of the papers: A→W, D→W, W→D, A→D, D→A, W→A.
"""

from __future__ import annotations

from uda.data.download import Resource
from uda.data.image_datamodule import ALL, DomainSpec, ImageDataModule

#: tllib's label order (``tllib/vision/datasets/office31.py``), also used by the GH/SSRT/CDAN list files
CLASSES = (
    "back_pack", "bike", "bike_helmet", "bookcase", "bottle", "calculator", "desk_chair", "desk_lamp",
    "desktop_computer", "file_cabinet", "headphones", "keyboard", "laptop_computer", "letter_tray",
    "mobile_phone", "monitor", "mouse", "mug", "paper_notebook", "pen", "phone", "printer", "projector",
    "punchers", "ring_binder", "ruler", "scissors", "speaker", "stapler", "tape_dispenser", "trash_can",
)  # fmt: skip

_MIRROR = "https://cloud.tsinghua.edu.cn/f/{}/?dl=1"  # tllib's mirror (links have been replaced over time)
COUNTS = {"amazon": 2817, "dslr": 498, "webcam": 795}
ARCHIVES = {"amazon": "ec12dfcddade43ab8101", "dslr": "a41d818ae2f34da7bb32", "webcam": "8a41009a166e4131adcd"}


class Office31(ImageDataModule):
    """Office-31 with domains amazon/dslr/webcam (A/D/W), 31 classes in tllib's order."""

    name = "office31"
    title = "Office-31"
    homepage = "https://faculty.cc.gatech.edu/~judy/domainadapt/"
    domains = ("amazon", "dslr", "webcam")
    aliases = {"A": "amazon", "D": "dslr", "W": "webcam"}
    num_classes = 31
    class_names = CLASSES
    specs = {
        domain: DomainSpec(
            folder=f"{domain}/images",
            lists={ALL: f"image_list/{domain}.txt"},
            counts={ALL: COUNTS[domain]},
            resources=(Resource(f"{domain}.tgz", (_MIRROR.format(ARCHIVES[domain]),), provides=domain),),
        )
        for domain in ("amazon", "dslr", "webcam")
    }
    list_resources = (Resource("image_list.zip", (_MIRROR.format("2c1dd9fbcaa9455aa4ad"),), provides="image_list"),)
