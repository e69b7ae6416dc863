"""The stem's 3x3 stride-2 max pooling: both implementations against a numpy reference."""

import keras
import numpy as np
import pytest

from kzoo.backends import dispatch
from kzoo.backends.jax.detr_backbone import max_pool_by_slices
from kzoo.models.detr.model import stem_pool


def _reference(x):
    """3x3, stride-2, unpadded max pooling of an NHWC array, by loops."""
    n, h, w, c = x.shape
    out_h, out_w = (h - 3) // 2 + 1, (w - 3) // 2 + 1
    out = np.empty((n, out_h, out_w, c), x.dtype)
    for i in range(out_h):
        for j in range(out_w):
            out[:, i, j] = x[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max(axis=(1, 2))
    return out


@pytest.mark.parametrize("shape", [(1, 9, 11, 3), (2, 10, 8, 4), (1, 3, 3, 2), (1, 4, 7, 1)])
@pytest.mark.parametrize(
    "fn", [max_pool_by_slices, stem_pool.max_pool_portable], ids=["slices", "portable"]
)
def test_matches_reference(shape, fn):
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(fn(x, "channels_last")), _reference(x))


def test_channels_first_takes_the_pooling_op():
    x = np.random.default_rng(1).normal(size=(1, 2, 9, 7)).astype("float32")
    out = max_pool_by_slices(x, "channels_first")
    expected = _reference(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out), expected)


def test_dispatch_sends_jax_to_the_slices():
    expected = "slices" if keras.backend.backend() == "jax" else "portable"
    assert dispatch.select("detr_stem_pool").name == expected
