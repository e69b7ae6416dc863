"""Issue #17, items 6 and 8 (the image part): deep images keep their brightness, and paths that
are not image files get one clear ``ValueError``."""

import os

import numpy as np
import pytest
from PIL import Image

from kzoo.data import images


def test_16_bit_png_keeps_its_brightness(tmp_path):
    # A ramp over the whole 16-bit range: its mean is mid-gray, not white.
    ramp = (np.arange(64 * 64, dtype=np.float64).reshape(64, 64) / (64 * 64 - 1) * 65535).round()
    Image.fromarray(ramp.astype(np.uint16)).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")  # a real 16-bit file
    rgb = images.load_image(tmp_path / "g16.png")
    expected = np.round(ramp * 255 / 65535).astype(np.uint8)
    assert rgb.dtype == np.uint8 and rgb.shape == (64, 64, 3)
    np.testing.assert_array_equal(rgb, np.repeat(expected[:, :, None], 3, axis=2))
    assert abs(rgb.mean() - 127.5) < 1


def test_32_bit_float_tiff_keeps_its_values(tmp_path):
    values = np.random.default_rng(0).uniform(0, 1, size=(16, 24)).astype(np.float32)
    Image.fromarray(values).save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    rgb = images.load_image(tmp_path / "f.tif")
    np.testing.assert_array_equal(rgb[..., 0], np.round(values.astype(np.float64) * 255))
    assert rgb.mean() > 100  # not black


def test_32_bit_integer_images_hold_16_bit_values(tmp_path):
    values = np.arange(16 * 16, dtype=np.int32).reshape(16, 16) * 256
    Image.fromarray(values).save(tmp_path / "i.tif")
    rgb = images.load_image(tmp_path / "i.tif")
    np.testing.assert_array_equal(rgb[..., 1], np.round(values * 255 / 65535).astype(np.uint8))


@pytest.mark.parametrize(
    "values, message",
    [
        (np.array([[0.0, 2.0]], np.float32), r"values in \[0, 1\]; this one spans \[0, 2\]"),
        (np.array([[0.0, np.nan]], np.float32), "NaN or infinite"),
    ],
)
def test_float_images_out_of_range_are_refused_not_clipped(tmp_path, values, message):
    Image.fromarray(values).save(tmp_path / "f.tif")
    with pytest.raises(ValueError, match=message):
        images.load_image(tmp_path / "f.tif")


def test_a_directory_is_not_reported_as_missing(tmp_path):
    with pytest.raises(ValueError, match="is a directory, not an image file"):
        images.load_image(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        images.load_image(tmp_path / "absent.png")


def test_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")  # opening it for reading would wait for a writer forever
    with pytest.raises(ValueError, match="not a regular file"):
        images.load_image(tmp_path / "pipe.png")


def test_decompression_bomb_is_a_value_error(tmp_path):
    # Twice PIL's pixel limit: PIL itself raises DecompressionBombError, not an OSError.
    side = int(np.sqrt(2 * Image.MAX_IMAGE_PIXELS)) + 16
    Image.new("1", (side, side)).save(tmp_path / "bomb.png")
    with pytest.raises(ValueError, match="too large to decode safely"):
        images.load_image(tmp_path / "bomb.png")
