"""Rendered digits: the ten digits drawn with the TrueType fonts that matplotlib ships, in MNIST's format.

A synthetic domain (the kind SynDigits and VisDA's synthetic split are) that needs no download: the font
files come from matplotlib's data directory. Each image is one digit in one font with random variation,
then brought to MNIST's convention (LeCun et al.: the digit's bounding box is scaled, aspect ratio kept,
to fit a 20x20 box with anti-aliasing, and placed in a 28x28 field so that its centre of mass lies at the
centre).

Fonts (:data:`FONT_FILES`, 22 files): DejaVu Sans, Sans Mono and Serif, each regular, bold, oblique/italic
and bold oblique/italic; STIX General regular, bold, italic and bold italic; Computer Modern roman (cmr10),
bold (cmb10), sans (cmss10), text italic (cmti10), typewriter (cmtt10) and math italic (cmmi10, whose
digits are old-style figures). Left out: DejaVu Sans/Serif Display, the STIX NonUnicode and size-variant
fonts and LastResort (no digit glyphs: :func:`renders_digits` rejects them), and cmsy10 / cmex10 (math
symbol fonts whose code points 0-9 hold symbols such as ∞, ∈ and brackets, not digits; checked by eye).

Random variation, drawn per image from one ``numpy.random.Generator`` (:class:`Variation` holds the ranges):

- size: font size uniform in [28, 56] px at render resolution, and a horizontal scale in [0.8, 1.2]
  (narrow and wide hands); the fit to 20x20 keeps the height, so size changes the stroke detail and
  anti-aliasing that survive the downscale rather than the final height;
- rotation: uniform in [-12, 12] degrees (bicubic);
- stroke width: 0-3 px of outline added at render resolution (PIL's ``stroke_width``), i.e. bolder strokes;
- blur: Gaussian blur with σ uniform in [0, 1.5] px at render resolution, applied before the fit so the
  digit stays inside its 20x20 box;
- position: a sub-pixel pen offset uniform in [0, 1) px at render resolution, which shifts the
  anti-aliasing phase. Gross position does not vary: as in MNIST, every digit is centred by mass.

Deterministic for a seed; 5,000 images render in a few seconds on one core.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

CANVAS, BOX = 28, 20
DIGITS = "0123456789"

#: the fonts used (file names in matplotlib's ``mpl-data/fonts/ttf``); see the module docstring
FONT_FILES: tuple[str, ...] = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmb10.ttf",
    "cmss10.ttf",
    "cmti10.ttf",
    "cmtt10.ttf",
    "cmmi10.ttf",
)

# a code point in a Private Use plane that none of the fonts maps: it draws the font's "missing glyph"
_MISSING = "\U000f0000"
# render-resolution pixels below this fraction of the maximum are background when cropping the blurred digit
_INK_THRESHOLD = 0.02


@dataclass(frozen=True)
class Variation:
    """Ranges of the random variation per image (units: pixels at render resolution, degrees)."""

    font_size: tuple[int, int] = (28, 56)
    x_scale: tuple[float, float] = (0.8, 1.2)
    rotation: tuple[float, float] = (-12.0, 12.0)
    stroke_width: tuple[int, int] = (0, 3)  # inclusive
    blur_sigma: tuple[float, float] = (0.0, 1.5)
    pen_offset: tuple[float, float] = (0.0, 1.0)


@dataclass(frozen=True)
class RenderedDigits:
    """Images (N, 28, 28) float32 in [0, 1] (maximum 1 per image, as MNIST), labels int64 and the index
    into :data:`FONT_FILES` of the font each image was drawn with."""

    images: np.ndarray
    labels: np.ndarray
    fonts: np.ndarray


def font_dir() -> Path:
    """matplotlib's TrueType font directory."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@cache
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def _draw(font: ImageFont.FreeTypeFont, text: str, stroke: int = 0, offset: tuple[float, float] = (0.0, 0.0)):
    """``text`` drawn white on black with a margin wide enough for the stroke; a float array in [0, 1]."""
    left, top, right, bottom = font.getbbox(text, stroke_width=stroke)
    margin = 4 + stroke
    width, height = int(right - left) + 2 * margin, int(bottom - top) + 2 * margin
    image = Image.new("L", (max(width, 1), max(height, 1)), 0)
    xy = (margin - left + offset[0], margin - top + offset[1])
    ImageDraw.Draw(image).text(xy, text, font=font, fill=255, stroke_width=stroke, stroke_fill=255)
    return image


def renders_digits(path: str | os.PathLike) -> bool:
    """Whether a font file has ten distinct digit glyphs: each of 0-9 leaves ink, no two are the same
    image, and none is the font's missing-glyph box. (A symbol font that maps other symbols to 0-9 passes;
    those are excluded by name, see the module docstring.)"""
    font = _font(str(path), 40)
    images = [np.asarray(_draw(font, ch)) for ch in DIGITS]
    missing = np.asarray(_draw(font, _MISSING))
    if any(int(image.max()) == 0 for image in images):
        return False
    if len({(image.shape, image.tobytes()) for image in images}) < len(DIGITS):
        return False
    return not any(image.shape == missing.shape and np.array_equal(image, missing) for image in images)


def fit_and_centre(glyph: np.ndarray) -> np.ndarray:
    """MNIST's normalization of one grey digit (H, W) in [0, 1]: crop to its ink, scale (aspect kept,
    anti-aliased) so the longer side is 20 px, put it in a 28x28 field shifted by whole pixels so that its
    centre of mass is within half a pixel of the field's centre ((27/2, 27/2) in pixel-index coordinates)."""
    rows = np.flatnonzero(glyph.max(axis=1) > _INK_THRESHOLD)
    cols = np.flatnonzero(glyph.max(axis=0) > _INK_THRESHOLD)
    crop = glyph[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = crop.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # PIL: (width, height)
    patch = np.asarray(Image.fromarray(crop.astype(np.float32)).resize(size, Image.Resampling.LANCZOS))
    patch = np.clip(patch, 0.0, None)
    patch = patch / patch.max()
    mass = patch.sum()
    cy = (patch.sum(axis=1) * np.arange(patch.shape[0])).sum() / mass
    cx = (patch.sum(axis=0) * np.arange(patch.shape[1])).sum() / mass
    centre = (CANVAS - 1) / 2.0
    oy = int(np.clip(np.rint(centre - cy), 0, CANVAS - patch.shape[0]))
    ox = int(np.clip(np.rint(centre - cx), 0, CANVAS - patch.shape[1]))
    out = np.zeros((CANVAS, CANVAS), dtype=np.float32)
    out[oy : oy + patch.shape[0], ox : ox + patch.shape[1]] = patch
    return out


def render_digit(path: str, digit: int, rng: np.random.Generator, variation: Variation = Variation()) -> np.ndarray:
    """One digit in one font with random variation (module docstring), as a 28x28 float32 array in [0, 1]."""
    size = int(rng.integers(variation.font_size[0], variation.font_size[1] + 1))
    x_scale = float(rng.uniform(*variation.x_scale))
    angle = float(rng.uniform(*variation.rotation))
    stroke = int(rng.integers(variation.stroke_width[0], variation.stroke_width[1] + 1))
    sigma = float(rng.uniform(*variation.blur_sigma))
    offset = (float(rng.uniform(*variation.pen_offset)), float(rng.uniform(*variation.pen_offset)))
    image = _draw(_font(path, size), DIGITS[digit], stroke, offset)
    image = image.resize((max(1, round(image.width * x_scale)), image.height), Image.Resampling.BICUBIC)
    image = image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=0)
    if sigma > 0:
        image = image.filter(ImageFilter.GaussianBlur(sigma))
    return fit_and_centre(np.asarray(image, dtype=np.float32) / 255.0)


def render_digits(count: int, seed: int, variation: Variation = Variation()) -> RenderedDigits:
    """``count`` rendered digits, class-balanced (labels cycle through 0-9, so classes differ in size by at
    most one) and font-balanced (fonts cycle per class), shuffled; the same seed gives the same images."""
    directory = font_dir()
    paths = [str(directory / name) for name in FONT_FILES]
    rng = np.random.default_rng(seed)
    index = np.arange(count)
    labels = (index % 10).astype(np.int64)
    fonts = ((index // 10) % len(FONT_FILES)).astype(np.int64)
    order = rng.permutation(count)
    labels, fonts = labels[order], fonts[order]
    images = np.stack([render_digit(paths[f], int(d), rng, variation) for d, f in zip(labels, fonts, strict=True)])
    return RenderedDigits(images.astype(np.float32), labels, fonts)
