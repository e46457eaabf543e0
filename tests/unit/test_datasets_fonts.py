"""The rendered-digits domain (``fonts``): determinism, balance, MNIST's format and centring, the fonts used."""

from __future__ import annotations

import numpy as np
import pytest

from uda.data import OfflineDigits
from uda.data.fonts import (
    BOX,
    FONT_FILES,
    Variation,
    fit_and_centre,
    font_dir,
    render_digit,
    render_digits,
    renders_digits,
)

# one image per (digit, font): 10 x 22
ONE_EACH = 10 * len(FONT_FILES)


@pytest.fixture(scope="module")
def rendered():
    return render_digits(ONE_EACH, seed=5)


def _mass_centre(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    coords = np.arange(images.shape[1], dtype=np.float64)
    mass = images.sum(axis=(1, 2))
    return (images.sum(axis=2) * coords).sum(axis=1) / mass, (images.sum(axis=1) * coords).sum(axis=1) / mass


def test_same_seed_same_images_other_seed_other_images(rendered) -> None:
    again = render_digits(ONE_EACH, seed=5)
    assert np.array_equal(again.images, rendered.images)
    assert np.array_equal(again.labels, rendered.labels) and np.array_equal(again.fonts, rendered.fonts)
    other = render_digits(ONE_EACH, seed=6)
    assert not np.array_equal(other.labels, rendered.labels)  # another shuffle
    # and other variation: the same (digit, font) pair is drawn differently
    first = {(int(d), int(f)): i for i, (d, f) in enumerate(zip(rendered.labels, rendered.fonts, strict=True))}
    for i, pair in enumerate(zip(other.labels.tolist(), other.fonts.tolist(), strict=True)):
        assert not np.array_equal(other.images[i], rendered.images[first[pair]])


def test_classes_and_fonts_are_balanced(rendered) -> None:
    assert np.array_equal(np.bincount(rendered.labels, minlength=10), np.full(10, len(FONT_FILES)))
    pairs = set(zip(rendered.labels.tolist(), rendered.fonts.tolist(), strict=True))
    assert len(pairs) == ONE_EACH  # every digit in every font exactly once
    uneven = render_digits(103, seed=0)
    assert np.array_equal(np.bincount(uneven.labels, minlength=10), [11, 11, 11, 10, 10, 10, 10, 10, 10, 10])


def test_value_range_and_dtype_match_the_mnist_domain(rendered) -> None:
    # the mnist domain's format (load_mnist5k): (N, 28, 28) float32 in [0, 1], int64 labels
    assert rendered.images.dtype == np.float32 and rendered.images.shape[1:] == (28, 28)
    assert rendered.labels.dtype == np.int64
    assert float(rendered.images.min()) == 0.0  # black background, like MNIST
    assert np.allclose(rendered.images.max(axis=(1, 2)), 1.0)  # full-intensity ink in every image


def test_digits_fit_a_20_pixel_box_centred_by_mass(rendered) -> None:
    cy, cx = _mass_centre(rendered.images)
    assert np.abs(cy - 13.5).max() <= 0.5 + 1e-6 and np.abs(cx - 13.5).max() <= 0.5 + 1e-6
    ink = rendered.images > 0
    heights = np.array([np.ptp(np.flatnonzero(m.any(axis=1))) + 1 for m in ink])
    widths = np.array([np.ptp(np.flatnonzero(m.any(axis=0))) + 1 for m in ink])
    assert heights.max() <= BOX and widths.max() <= BOX
    assert np.mean(np.maximum(heights, widths) == BOX) > 0.9  # the longer side fills the box


def test_fit_and_centre_of_a_rectangle_by_hand() -> None:
    glyph = np.zeros((60, 30), dtype=np.float32)
    glyph[5:45, 7:17] = 1.0  # a 40 x 10 bar -> scaled by 1/2 to 20 x 5
    # mass centre of the 20 x 5 patch is (9.5, 2); shifts round(13.5 - 9.5) = 4 and round(13.5 - 2) = 12
    expected = np.zeros((28, 28), dtype=np.float32)
    expected[4:24, 12:17] = 1.0
    assert np.allclose(fit_and_centre(glyph), expected, atol=1e-5)


def test_every_font_is_used_and_draws_ten_distinct_digits(rendered) -> None:
    assert set(rendered.fonts.tolist()) == set(range(len(FONT_FILES)))
    for name in FONT_FILES:
        assert renders_digits(font_dir() / name), name
    # fonts without digit glyphs are recognised (they draw nothing or the missing-glyph box)
    for name in ("DejaVuSansDisplay.ttf", "STIXSizOneSymReg.ttf", "LastResortHE-Regular.ttf"):
        assert not renders_digits(font_dir() / name), name
    # with the same random draws, every font draws a given digit differently
    images = [render_digit(str(font_dir() / name), 4, np.random.default_rng(0)) for name in FONT_FILES]
    assert len({image.tobytes() for image in images}) == len(FONT_FILES)


def test_variation_comes_from_the_documented_ranges() -> None:
    path = str(font_dir() / "DejaVuSans.ttf")
    fixed = Variation(font_size=(40, 40), x_scale=(1, 1), rotation=(0, 0), stroke_width=(0, 0), blur_sigma=(0, 0),
                      pen_offset=(0, 0))  # fmt: skip
    assert np.array_equal(
        render_digit(path, 7, np.random.default_rng(0), fixed), render_digit(path, 7, np.random.default_rng(1), fixed)
    )
    assert not np.array_equal(
        render_digit(path, 7, np.random.default_rng(0)), render_digit(path, 7, np.random.default_rng(1))
    )


@pytest.mark.slow
def test_fonts_domain_in_the_datamodule() -> None:
    """The whole domain (5,000 renders: seconds, more on a loaded machine): sizes and a stratified split."""
    dm = OfflineDigits("fonts", "mnist", batch_size=8, iters_per_epoch=1)
    dm.setup()
    assert (len(dm.source_data.train), len(dm.source_data.test)) == (4000, 1000)
    x, y = dm.source_data.test.tensors
    assert np.array_equal(np.bincount(y.numpy(), minlength=10), np.full(10, 100))
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0  # Normalize(0.5, 0.5), as the mnist domain
