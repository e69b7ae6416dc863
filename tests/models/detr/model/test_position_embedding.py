"""DETR's sine position embedding against a float64 numpy transcription of the formula."""

import math

import numpy as np
import pytest

from kzoo.models.detr.model.position_embedding import SinePositionEmbedding
from tests.models.detr.compiled_call import run


def reference(mask, num_features, temperature=10000.0, scale=2 * math.pi, eps=1e-6):
    """Per position: y/x counted from 1 over valid cells, over the extent, times scale."""
    mask = mask.astype(np.float64)
    b, h, w = mask.shape
    out = np.zeros((b, h, w, 2 * num_features))
    for n in range(b):
        y = np.cumsum(mask[n], axis=0)
        x = np.cumsum(mask[n], axis=1)
        y = y / (y[-1:, :] + eps) * scale
        x = x / (x[:, -1:] + eps) * scale
        for i in range(num_features):
            freq = temperature ** (2 * (i // 2) / num_features)
            fn = np.sin if i % 2 == 0 else np.cos
            out[n, :, :, i] = fn(y / freq)
            out[n, :, :, num_features + i] = fn(x / freq)
    return out


def test_matches_float64_reference_with_padding():
    mask = np.ones((3, 5, 7), "float32")
    mask[1, 3:, :] = 0
    mask[1, :, 4:] = 0
    mask[2, :, 6:] = 0
    layer = SinePositionEmbedding(16)
    out = run(layer, mask)
    assert out.shape == (3, 5, 7, 32)
    np.testing.assert_allclose(out, reference(mask, 16), atol=2e-6)


def test_detr_width_and_padding_invariance_of_valid_region():
    # An image's positions depend only on its own extent, not on the canvas around it.
    alone = np.ones((1, 4, 6), "float32")
    canvas = np.zeros((1, 9, 11), "float32")
    canvas[0, :4, :6] = 1
    layer = SinePositionEmbedding(128)
    a = run(layer, alone)
    c = run(layer, canvas)
    assert a.shape[-1] == 256
    np.testing.assert_allclose(c[0, :4, :6], a[0], atol=1e-6)
    np.testing.assert_allclose(a, reference(alone, 128), atol=2e-6)


def test_config_round_trip_and_validation():
    layer = SinePositionEmbedding(8, temperature=20.0, scale=1.5)
    restored = SinePositionEmbedding.from_config(layer.get_config())
    mask = np.ones((1, 3, 3), "float32")
    np.testing.assert_array_equal(run(restored, mask), run(layer, mask))
    np.testing.assert_allclose(run(layer, mask), reference(mask, 8, 20.0, 1.5), atol=2e-6)
    with pytest.raises(ValueError, match="num_features"):
        SinePositionEmbedding(7)
    with pytest.raises(ValueError, match="temperature"):
        SinePositionEmbedding(8, temperature=0)
