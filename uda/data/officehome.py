"""Office-Home (Venkateswara et al., 2017): 65 everyday object classes in four domains.

Domains (short names): Art (Ar, 2,427 images), Clipart (Cl, 4,365), Product (Pr, 4,439), Real_World
(Rw, 4,357). Layout under the root (tllib's): ``<domain>/<class>/*.jpg`` plus optional
``image_list/<domain>.txt`` (the original archive names the last domain "Real World": rename the folder
to ``Real_World``). No official train/test split (see :mod:`uda.data.image_datamodule`); the papers
report the 12 ordered pairs.
"""

from __future__ import annotations

from uda.data.download import Resource
from uda.data.image_datamodule import ALL, DomainSpec, ImageDataModule

#: tllib's label order (``tllib/vision/datasets/officehome.py``), also used by the GH/SSRT list files
CLASSES = (
    "Drill", "Exit_Sign", "Bottle", "Glasses", "Computer", "File_Cabinet", "Shelf", "Toys", "Sink",
    "Laptop", "Kettle", "Folder", "Keyboard", "Flipflops", "Pencil", "Bed", "Hammer", "ToothBrush", "Couch",
    "Bike", "Postit_Notes", "Mug", "Webcam", "Desk_Lamp", "Telephone", "Helmet", "Mouse", "Pen", "Monitor",
    "Mop", "Sneakers", "Notebook", "Backpack", "Alarm_Clock", "Push_Pin", "Paper_Clip", "Batteries", "Radio",
    "Fan", "Ruler", "Pan", "Screwdriver", "Trash_Can", "Printer", "Speaker", "Eraser", "Bucket", "Chair",
    "Calendar", "Calculator", "Flowers", "Lamp_Shade", "Spoon", "Candles", "Clipboards", "Scissors", "TV",
    "Curtains", "Fork", "Soda", "Table", "Knives", "Oven", "Refrigerator", "Marker",
)  # fmt: skip

_MIRROR = "https://cloud.tsinghua.edu.cn/f/{}/?dl=1"  # tllib's mirror (links have been replaced over time)
COUNTS = {"Art": 2427, "Clipart": 4365, "Product": 4439, "Real_World": 4357}
ARCHIVES = {
    "Art": "6a006656b9a14567ade2",
    "Clipart": "ae88aa31d2d7411dad79",
    "Product": "f219b0ff35e142b3ab48",
    "Real_World": "6c19f3f15bb24ed3951a",
}


class OfficeHome(ImageDataModule):
    """Office-Home with domains Art/Clipart/Product/Real_World (Ar/Cl/Pr/Rw), 65 classes in tllib's order."""

    name = "officehome"
    title = "Office-Home"
    homepage = "https://www.hemanthdv.org/officeHomeDataset.html"
    domains = ("Art", "Clipart", "Product", "Real_World")
    aliases = {"Ar": "Art", "Cl": "Clipart", "Pr": "Product", "Rw": "Real_World"}
    num_classes = 65
    class_names = CLASSES
    specs = {
        domain: DomainSpec(
            folder=domain,
            lists={ALL: f"image_list/{domain}.txt"},
            counts={ALL: COUNTS[domain]},
            resources=(Resource(f"{domain}.tgz", (_MIRROR.format(ARCHIVES[domain]),), provides=domain),),
        )
        for domain in ("Art", "Clipart", "Product", "Real_World")
    }
    list_resources = (Resource("image_list.zip", (_MIRROR.format("1b0171a188944313b1f5"),), provides="image_list"),)
