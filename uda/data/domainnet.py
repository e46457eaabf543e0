"""DomainNet (Peng et al., 2019, "cleaned" version): 345 classes in six domains, official train/test splits.

Domains (short names, train/test images): clipart (c, 33,525/14,604), infograph (i, 36,023/15,582),
painting (p, 50,416/21,850), quickdraw (q, 120,750/51,750), real (r, 120,906/52,041), sketch
(s, 48,212/20,916). Layout under the root (tllib's): ``<domain>/<class>/*.jpg`` plus the official split
lists ``image_list/<domain>_{train,test}.txt``, which are required (the split cannot be rebuilt from the
folders). Adaptation uses the target train split without labels; accuracy is measured on the target test
split (SSRT/GH; tllib selects on the target train split and reports the test split).
"""

from __future__ import annotations

from uda.data.download import Resource
from uda.data.image_datamodule import DomainSpec, ImageDataModule

#: tllib's label order (``tllib/vision/datasets/domainnet.py``) = the official lists' order
CLASSES = (
    "aircraft_carrier", "airplane", "alarm_clock", "ambulance", "angel", "animal_migration", "ant", "anvil",
    "apple", "arm", "asparagus", "axe", "backpack", "banana", "bandage", "barn", "baseball", "baseball_bat",
    "basket", "basketball", "bat", "bathtub", "beach", "bear", "beard", "bed", "bee", "belt", "bench",
    "bicycle", "binoculars", "bird", "birthday_cake", "blackberry", "blueberry", "book", "boomerang",
    "bottlecap", "bowtie", "bracelet", "brain", "bread", "bridge", "broccoli", "broom", "bucket",
    "bulldozer", "bus", "bush", "butterfly", "cactus", "cake", "calculator", "calendar", "camel", "camera",
    "camouflage", "campfire", "candle", "cannon", "canoe", "car", "carrot", "castle", "cat", "ceiling_fan",
    "cello", "cell_phone", "chair", "chandelier", "church", "circle", "clarinet", "clock", "cloud",
    "coffee_cup", "compass", "computer", "cookie", "cooler", "couch", "cow", "crab", "crayon", "crocodile",
    "crown", "cruise_ship", "cup", "diamond", "dishwasher", "diving_board", "dog", "dolphin", "donut",
    "door", "dragon", "dresser", "drill", "drums", "duck", "dumbbell", "ear", "elbow", "elephant",
    "envelope", "eraser", "eye", "eyeglasses", "face", "fan", "feather", "fence", "finger", "fire_hydrant",
    "fireplace", "firetruck", "fish", "flamingo", "flashlight", "flip_flops", "floor_lamp", "flower",
    "flying_saucer", "foot", "fork", "frog", "frying_pan", "garden", "garden_hose", "giraffe", "goatee",
    "golf_club", "grapes", "grass", "guitar", "hamburger", "hammer", "hand", "harp", "hat", "headphones",
    "hedgehog", "helicopter", "helmet", "hexagon", "hockey_puck", "hockey_stick", "horse", "hospital",
    "hot_air_balloon", "hot_dog", "hot_tub", "hourglass", "house", "house_plant", "hurricane", "ice_cream",
    "jacket", "jail", "kangaroo", "key", "keyboard", "knee", "knife", "ladder", "lantern", "laptop", "leaf",
    "leg", "light_bulb", "lighter", "lighthouse", "lightning", "line", "lion", "lipstick", "lobster",
    "lollipop", "mailbox", "map", "marker", "matches", "megaphone", "mermaid", "microphone", "microwave",
    "monkey", "moon", "mosquito", "motorbike", "mountain", "mouse", "moustache", "mouth", "mug", "mushroom",
    "nail", "necklace", "nose", "ocean", "octagon", "octopus", "onion", "oven", "owl", "paintbrush",
    "paint_can", "palm_tree", "panda", "pants", "paper_clip", "parachute", "parrot", "passport", "peanut",
    "pear", "peas", "pencil", "penguin", "piano", "pickup_truck", "picture_frame", "pig", "pillow",
    "pineapple", "pizza", "pliers", "police_car", "pond", "pool", "popsicle", "postcard", "potato",
    "power_outlet", "purse", "rabbit", "raccoon", "radio", "rain", "rainbow", "rake", "remote_control",
    "rhinoceros", "rifle", "river", "roller_coaster", "rollerskates", "sailboat", "sandwich", "saw",
    "saxophone", "school_bus", "scissors", "scorpion", "screwdriver", "sea_turtle", "see_saw", "shark",
    "sheep", "shoe", "shorts", "shovel", "sink", "skateboard", "skull", "skyscraper", "sleeping_bag",
    "smiley_face", "snail", "snake", "snorkel", "snowflake", "snowman", "soccer_ball", "sock", "speedboat",
    "spider", "spoon", "spreadsheet", "square", "squiggle", "squirrel", "stairs", "star", "steak", "stereo",
    "stethoscope", "stitches", "stop_sign", "stove", "strawberry", "streetlight", "string_bean", "submarine",
    "suitcase", "sun", "swan", "sweater", "swing_set", "sword", "syringe", "table", "teapot", "teddy-bear",
    "telephone", "television", "tennis_racquet", "tent", "The_Eiffel_Tower", "The_Great_Wall_of_China",
    "The_Mona_Lisa", "tiger", "toaster", "toe", "toilet", "tooth", "toothbrush", "toothpaste", "tornado",
    "tractor", "traffic_light", "train", "tree", "triangle", "trombone", "truck", "trumpet", "t-shirt",
    "umbrella", "underwear", "van", "vase", "violin", "washing_machine", "watermelon", "waterslide",
    "whale", "wheel", "windmill", "wine_bottle", "wine_glass", "wristwatch", "yoga", "zebra", "zigzag",
)  # fmt: skip

_MIRROR = "https://cloud.tsinghua.edu.cn/f/{}/?dl=1"  # tllib's mirror (links have been replaced over time)
_OFFICIAL = "http://csr.bu.edu/ftp/visda/2019/multi-source/"  # the authors' server (as listed by tllib)
#: domain → (train images, test images, tllib mirror id, path on the authors' server)
DOMAINS = {
    "clipart": (33_525, 14_604, "f0515164a4864220b98b", "groundtruth/clipart.zip"),
    "infograph": (36_023, 15_582, "98b19d5fc9884109a9cb", "infograph.zip"),
    "painting": (50_416, 21_850, "11285ce9fbd34bb7b28c", "groundtruth/painting.zip"),
    "quickdraw": (120_750, 51_750, "6faa9efb498b494abf66", "quickdraw.zip"),
    "real": (120_906, 52_041, "17a101842c564959b525", "real.zip"),
    "sketch": (48_212, 20_916, "b305add26e9d47349495", "sketch.zip"),
}


def _spec(domain: str) -> DomainSpec:
    train, test, mirror_id, official = DOMAINS[domain]
    urls = (_OFFICIAL + official, _MIRROR.format(mirror_id))
    return DomainSpec(
        folder=domain,
        lists={"train": f"image_list/{domain}_train.txt", "test": f"image_list/{domain}_test.txt"},
        counts={"train": train, "test": test},
        resources=(Resource(f"{domain}.zip", urls, provides=domain),),
    )


class DomainNet(ImageDataModule):
    """DomainNet with domains clipart/infograph/painting/quickdraw/real/sketch (c/i/p/q/r/s), 345 classes."""

    name = "domainnet"
    title = "DomainNet"
    homepage = "https://ai.bu.edu/M3SDA/"
    domains = tuple(DOMAINS)
    aliases = {domain[0]: domain for domain in DOMAINS}
    num_classes = 345
    class_names = CLASSES
    specs = {domain: _spec(domain) for domain in DOMAINS}
    list_resources = (Resource("image_list.zip", (_MIRROR.format("bf0fe327e4b046eb89ba"),), provides="image_list"),)
