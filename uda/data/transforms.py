"""Image transforms of the UDA recipes (reference/baselines.md §2.1, §2.5, §5.6).

Office-style datasets (Office-31, Office-Home, VisDA-2017, DomainNet): every reference implementation
first resizes to a *square* 256x256 (not the aspect-preserving ``Resize(256)``), then crops 224x224:

* ``random_resized`` — RandomResizedCrop(224): thuml CDAN, tllib (default), SSRT, GH-DWL;
* ``random`` — RandomCrop(224): GVB and GH-CDAN (amazon, Office-Home, VisDA);
* ``center`` — CenterCrop(224): test time everywhere, and training for tllib VisDA (``cen.crop``);
* ``none`` — no crop (the image stays ``resize`` x ``resize``).

followed by a horizontal flip (training) and ImageNet normalization. Digits (tllib/CDAN): resize to
28x28 grayscale (MNIST <-> USPS, LeNet) or 32x32 RGB (SVHN -> MNIST, DTN), no augmentation,
Normalize(0.5, 0.5) per channel.

The builders return plain torchvision transforms so a config may also name any other callable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PIL import Image
from torchvision import transforms as T

from uda.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DIGITS_MEAN = 0.5
DIGITS_STD = 0.5

#: crop presets of :func:`image_transform`
CROPS = ("random_resized", "random", "center", "none")


def image_transform(
    resize: int = 256,
    crop: str = "random_resized",
    size: int = 224,
    hflip: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Callable:
    """Square resize to ``resize`` x ``resize``, crop ``size`` by preset, optional flip, ToTensor, normalize.

    Input: a PIL image (RGB). ``crop`` is one of :data:`CROPS`. The recipes' train transform is
    ``image_transform()`` (or ``crop="random"``); their test transform is
    ``image_transform(crop="center", hflip=False)``.
    """
    if crop not in CROPS:
        raise ConfigError(f"transform crop={crop!r} is unknown; choose one of: {', '.join(CROPS)}")
    if int(size) > int(resize) and crop != "none":
        raise ConfigError(f"transform size={size} is larger than resize={resize}; the crop must fit in the image")
    steps: list[Callable] = [T.Resize((int(resize), int(resize)))]
    if crop == "random_resized":
        steps.append(T.RandomResizedCrop(int(size)))
    elif crop == "random":
        steps.append(T.RandomCrop(int(size)))
    elif crop == "center":
        steps.append(T.CenterCrop(int(size)))
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(tuple(mean), tuple(std))]
    return T.Compose(steps)


def default_train_transform(crop: str = "random_resized") -> Callable:
    """The Office-style training transform of the recipes (square 256, ``crop`` 224, flip, ImageNet norm)."""
    return image_transform(crop=crop, hflip=True)


def default_eval_transform() -> Callable:
    """The Office-style test transform of the recipes: square 256, center crop 224, ImageNet norm."""
    return image_transform(crop="center", hflip=False)


def digits_transform(size: int = 28, channels: int = 1, mean: float = DIGITS_MEAN, std: float = DIGITS_STD) -> Callable:
    """Resize to ``size`` x ``size``, convert to 1 (grayscale) or 3 (RGB) channels, ToTensor, Normalize(mean, std).

    Input: a PIL image of any mode (MNIST/USPS are "L", SVHN is "RGB"). Grayscale digits converted to RGB
    repeat the gray value in the three channels (tllib's MNISTRGB/USPSRGB).
    """
    if channels not in (1, 3):
        raise ConfigError(f"digits channels={channels!r} is invalid; use 1 (grayscale) or 3 (RGB)")
    mode = "L" if channels == 1 else "RGB"
    return T.Compose(
        [
            _ToMode(mode),
            T.Resize((int(size), int(size))),
            T.ToTensor(),
            T.Normalize((mean,) * channels, (std,) * channels),
        ]
    )


class _ToMode:
    """Picklable ``PIL.Image.convert(mode)`` (DataLoader workers may need to pickle the transform)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == self.mode else image.convert(self.mode)

    def __repr__(self) -> str:
        return f"ToMode({self.mode!r})"
