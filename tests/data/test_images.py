"""kzoo.data.images against PIL, transformers' DETR image processor and hand-built arrays."""

import importlib.util
import os
import sys

import numpy as np
import pytest
from PIL import Image

from kzoo.data import images

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _rand(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_rgb_array_passes_through_and_bgr_is_reversed():
    rgb = _rand((7, 9, 3))
    np.testing.assert_array_equal(images.load_image(rgb), rgb)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    np.testing.assert_array_equal(images.load_image(bgr, channel_order="bgr"), rgb)
    np.testing.assert_array_equal(images.load_image(bgr, channel_order="BGR"), rgb)


def test_strided_views_like_an_opencv_roi():
    big = _rand((60, 80, 3), seed=1)
    roi = big[10:50:2, 5:70:3]  # non-contiguous in both spatial axes
    assert not roi.flags["C_CONTIGUOUS"]
    out = images.load_image(roi, channel_order="bgr")
    assert out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(out, np.ascontiguousarray(roi)[..., ::-1])
    # A negative-stride view (already channel-reversed) read as RGB.
    np.testing.assert_array_equal(images.load_image(big[::-1, :, ::-1]), big[::-1, :, ::-1])
    batch = images.preprocess_images(roi, channel_order="bgr", resize=False)
    expected = images.normalize_image(np.ascontiguousarray(roi[..., ::-1]))
    np.testing.assert_allclose(batch.images[0], expected, rtol=0, atol=0)


def test_grayscale_and_alpha_are_converted():
    gray = _rand((5, 6), seed=2)
    np.testing.assert_array_equal(images.load_image(gray), np.stack([gray] * 3, -1))
    np.testing.assert_array_equal(images.load_image(gray[:, :, None]), np.stack([gray] * 3, -1))
    rgba = _rand((5, 6, 4), seed=3)
    np.testing.assert_array_equal(images.load_image(rgba), rgba[..., :3])
    # OpenCV's four-channel images are BGRA.
    np.testing.assert_array_equal(images.load_image(rgba, channel_order="bgr"), rgba[..., 2::-1])


# 16-bit and float modes are not PIL's conversion (which clips them to 0..255): see
# tests/robustness/test_data_loss_and_garbage.py.
@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "RGB"])
def test_pil_images_of_any_mode_match_pil_conversion(mode):
    pil = Image.fromarray(_rand((8, 10, 3), seed=4)).convert(mode)
    out = images.load_image(pil, channel_order="bgr")  # channel order is ignored for PIL
    np.testing.assert_array_equal(out, np.asarray(pil.convert("RGB")))
    assert out.dtype == np.uint8 and out.shape == (8, 10, 3)


def test_file_paths(tmp_path):
    arr = _rand((12, 14, 3), seed=5)
    Image.fromarray(arr).save(tmp_path / "a.png")
    Image.fromarray(arr[..., 0]).save(tmp_path / "gray.png")
    np.testing.assert_array_equal(images.load_image(str(tmp_path / "a.png")), arr)
    np.testing.assert_array_equal(images.load_image(tmp_path / "a.png"), arr)
    np.testing.assert_array_equal(images.load_image(tmp_path / "gray.png")[..., 1], arr[..., 0])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        images.load_image(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="not an image"):
        images.load_image(tmp_path / "junk.png")


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((4, 4, 3), np.float32), "dtype uint8; got float32.*255"),
        (np.zeros((4, 4, 3), np.uint16), "dtype uint8; got uint16"),
        (np.zeros((2, 4, 4, 3), np.uint8), "rank 4"),
        (np.zeros((4,), np.uint8), "rank 1"),
        (np.zeros((4, 4, 2), np.uint8), "1 \\(gray\\), 3 .* or 4"),
        (np.zeros((3, 16, 16), np.uint8), "channels-first"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
        ([[1, 2], [3, 4]], "numpy array .* PIL image or a file path; got list"),
    ],
)
def test_bad_inputs_raise_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        images.load_image(bad)


def test_bad_arguments():
    im = _rand((4, 4, 3))
    with pytest.raises(ValueError, match="channel_order"):
        images.load_image(im, channel_order="rbg")
    with pytest.raises(ValueError, match="shortest_edge"):
        images.preprocess_images(im, shortest_edge=0)
    with pytest.raises(ValueError, match="longest_edge"):
        images.preprocess_images(im, shortest_edge=800, longest_edge=500)
    with pytest.raises(ValueError, match="empty"):
        images.preprocess_images([])
    with pytest.raises(ValueError, match="mean and std"):
        images.preprocess_images(im, std=(1.0, 0.0, 1.0))


@pytest.fixture(scope="module")
def hf_ref(tmp_path_factory):
    """transformers' DETR image processor outputs, computed in a separate process (see
    tests/models/detr/detr_checkpoints.py for why)."""
    path = os.path.join(ROOT, "tests", "models", "detr", "detr_checkpoints.py")
    spec = importlib.util.spec_from_file_location("detr_checkpoints", path)
    module = sys.modules.get("detr_checkpoints") or importlib.util.module_from_spec(spec)
    if "detr_checkpoints" not in sys.modules:
        spec.loader.exec_module(module)
        sys.modules["detr_checkpoints"] = module
    return module.load_npz(module.reference(tmp_path_factory, "images") / "ref.npz")


def test_resize_shape_properties_and_transformers_agreement(hf_ref):
    for (h, w), hf in zip(hf_ref["sizes"], hf_ref["hf_sizes"]):
        oh, ow = images.detr_resize_shape(h, w)
        short, long = min(oh, ow), max(oh, ow)
        hf = tuple(int(v) for v in hf)
        ratio = max(h, w) / min(h, w)
        if 1333 / ratio < 0.5:
            # Thinner than 1:2666: the cap cannot be met with a short side of one pixel.
            assert short == 1
            continue
        # DETR rounds the capped short side to the nearest pixel, which can push the long side
        # past the cap by up to half a pixel times the aspect ratio.
        assert long <= 1333 + 0.5 * ratio
        assert (oh >= ow) == (h >= w) or h == w
        if max(h, w) / min(h, w) * 800 <= 1333:
            # The cap does not bind: the short side is 800, exactly as transformers does it.
            assert short == 800 and (oh, ow) == hf
        else:
            # DETR scales the long side from the rounded short side, transformers from the
            # unrounded one: half a pixel of rounding times the aspect ratio, plus truncation.
            # DETR's rule is the one the released weights were evaluated with.
            assert short == hf[0 if h <= w else 1] and abs(long - max(hf)) <= 0.5 * ratio + 1
    assert images.detr_resize_shape(800, 1000) == (800, 1000)  # already the right size
    assert images.detr_resize_shape(90, 40, 64, 100) == (99, 44)  # DETR's own rounding
    assert images.detr_resize_shape(100, 50, 64, None) == (128, 64)


def test_batch_matches_transformers_detr_image_processor(hf_ref):
    ims = [hf_ref["image0"], hf_ref["image1"]]
    batch = images.preprocess_images(ims, shortest_edge=64, longest_edge=100)
    assert batch.images.shape == (2, 96, 89, 3)
    np.testing.assert_allclose(
        batch.images, hf_ref["pixel_values"].transpose(0, 2, 3, 1), rtol=0, atol=1e-5
    )
    np.testing.assert_array_equal(batch.pixel_mask, hf_ref["pixel_mask"])
    np.testing.assert_array_equal(batch.original_sizes, [[50, 70], [90, 60]])
    np.testing.assert_array_equal(batch.image_sizes, [[64, 89], [96, 64]])
    assert len(batch) == 2
    inputs = batch.model_inputs()
    assert set(inputs) == {"images", "pixel_mask"} and inputs["images"].dtype == np.float32


def test_padding_is_zero_and_masked_and_4d_arrays_are_batches():
    stacked = _rand((3, 10, 12, 3), seed=9)
    batch = images.preprocess_images(stacked, resize=False)
    assert batch.images.shape == (3, 10, 12, 3) and batch.pixel_mask.all()
    mixed = images.preprocess_images([_rand((10, 12, 3)), _rand((6, 20))], resize=False)
    assert mixed.images.shape == (2, 10, 20, 3)
    assert mixed.pixel_mask[0, :, 12:].sum() == 0 and mixed.pixel_mask[1, 6:].sum() == 0
    assert np.all(mixed.images[0, :, 12:] == 0) and np.all(mixed.images[1, 6:] == 0)
    assert mixed.pixel_mask[0, :10, :12].all() and mixed.pixel_mask[1, :6, :20].all()
    x = _rand((2, 2, 3))
    expected = (x / 255.0 - np.array(images.IMAGENET_MEAN)) / np.array(images.IMAGENET_STD)
    np.testing.assert_allclose(images.normalize_image(x), expected, rtol=1e-6, atol=1e-6)
