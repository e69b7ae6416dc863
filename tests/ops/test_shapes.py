"""kzoo.ops.shapes: ranges and ceil division that stay right when a size is symbolic."""

import keras
import numpy as np
import pytest

from kzoo.ops import shapes


def test_arange_and_positions_for_concrete_sizes():
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(shapes.arange(5)), np.arange(5))
    x = np.zeros((2, 7, 3), "float32")
    positions = keras.ops.convert_to_numpy(shapes.positions_along(x, 1))
    np.testing.assert_array_equal(positions, np.arange(7))
    assert positions.dtype == np.int32


def test_ceil_divide_matches_integer_arithmetic():
    x = np.arange(0, 2000, 7, dtype="int32").reshape(-1, 2)
    for divisor in (1, 2, 4, 32):
        got = keras.ops.convert_to_numpy(shapes.ceil_divide(x, divisor))
        np.testing.assert_array_equal(got, -(-x // divisor))
        assert got.dtype == np.int32


@pytest.mark.backends("jax")
def test_symbolic_sizes_give_the_same_integers_after_export():
    import jax
    from jax import export as jax_export

    def fn(x):
        return shapes.positions_along(x, 1)[None, :] + shapes.arange(x.shape[0])[:, None]

    (b, t) = jax_export.symbolic_shape("b, t")
    exported = jax_export.export(jax.jit(fn))(jax.ShapeDtypeStruct((b, t), np.float32))
    got = np.asarray(exported.call(np.zeros((3, 5), "float32")))
    np.testing.assert_array_equal(got, np.arange(5)[None, :] + np.arange(3)[:, None])
