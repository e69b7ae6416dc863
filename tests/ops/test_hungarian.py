"""kzoo.ops.linear_sum_assignment against scipy, eagerly and inside each backend's compiler."""

import keras
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment as scipy_lsa

from kzoo.ops import linear_sum_assignment

SHAPES = [(5, 0), (1, 1), (4, 4), (7, 3), (10, 10), (20, 6)]


def _problem(q, t, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(q, t)).astype(np.float32)


def _check(cost, rows, cols):
    ref_rows, ref_cols = scipy_lsa(cost)
    rows, cols = np.asarray(rows), np.asarray(cols)
    assert rows.dtype == np.int32 and cols.dtype == np.int32
    assert rows.shape == cols.shape == (cost.shape[1],)
    # Random float costs have a unique optimum, so the assignment itself must match.
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_array_equal(cols, ref_cols)


@pytest.mark.parametrize("q,t", SHAPES)
def test_eager_matches_scipy(q, t):
    for seed in range(3):
        cost = _problem(q, t, seed)
        rows, cols = linear_sum_assignment(keras.ops.convert_to_tensor(cost))
        _check(cost, keras.ops.convert_to_numpy(rows), keras.ops.convert_to_numpy(cols))


def test_batched_matches_scipy_per_matrix():
    costs = np.stack([_problem(6, 4, s) for s in range(5)])
    rows, cols = linear_sum_assignment(costs)
    rows, cols = keras.ops.convert_to_numpy(rows), keras.ops.convert_to_numpy(cols)
    assert rows.shape == (5, 4)
    for c, r, k in zip(costs, rows, cols):
        _check(c, r, k)


def test_optimal_cost_on_integer_costs_with_ties():
    # With ties the assignment is not unique, but its total cost is.
    rng = np.random.default_rng(0)
    cost = rng.integers(0, 3, size=(8, 5)).astype(np.float32)
    rows, cols = linear_sum_assignment(cost)
    rows, cols = keras.ops.convert_to_numpy(rows), keras.ops.convert_to_numpy(cols)
    r, c = scipy_lsa(cost)
    assert cost[rows, cols].sum() == cost[r, c].sum()
    assert len(set(rows.tolist())) == 5 and sorted(cols.tolist()) == list(range(5))


def test_bad_input_raises():
    with pytest.raises(ValueError, match="T <= Q"):
        linear_sum_assignment(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(Q, T\)"):
        linear_sum_assignment(np.zeros((3,), np.float32))
    cost = np.zeros((3, 2), np.float32)
    cost[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        linear_sum_assignment(cost)


@pytest.mark.backends("jax")
@pytest.mark.parametrize("q,t", [(5, 0), (6, 6), (9, 4)])
def test_inside_jax_jit(q, t):
    import jax

    cost = _problem(q, t, 1)
    calls = []

    @jax.jit
    def f(c):
        calls.append(1)
        rows, cols = linear_sum_assignment(c * 2.0)
        return rows, cols, rows.sum()

    rows, cols, _ = f(cost)
    _check(cost, rows, cols)
    rows, cols, _ = f(cost + 0.0)
    assert len(calls) == 1  # traced once, the callback runs on every call
    _check(cost, rows, cols)


@pytest.mark.backends("jax")
def test_jax_jit_nan_reports_the_value_error():
    import jax

    cost = _problem(4, 2, 0)
    cost[0, 0] = np.nan
    with pytest.raises(Exception, match="NaN or infinite"):
        jax.jit(lambda c: linear_sum_assignment(c))(cost)


@pytest.mark.backends("jax")
def test_jax_gradient_passes_around_it():
    import jax
    import jax.numpy as jnp

    cost = _problem(5, 3, 2)

    def loss(c):
        rows, cols = linear_sum_assignment(c)
        return c[rows, cols].sum()

    grad = jax.jit(jax.grad(loss))(jnp.asarray(cost))
    r, c = scipy_lsa(cost)
    expected = np.zeros_like(cost)
    expected[r, c] = 1.0
    np.testing.assert_array_equal(np.asarray(grad), expected)


@pytest.mark.backends("tensorflow")
@pytest.mark.parametrize("q,t", [(5, 0), (6, 6), (9, 4)])
def test_inside_tf_function(q, t):
    import tensorflow as tf

    cost = _problem(q, t, 1)

    @tf.function
    def f(c):
        rows, cols = linear_sum_assignment(c)
        assert rows.shape == (t,)  # static shape survives the numpy_function
        return rows, cols

    rows, cols = f(tf.constant(cost))
    _check(cost, rows.numpy(), cols.numpy())


@pytest.mark.backends("tensorflow")
def test_tf_function_unknown_batch_dimension():
    import tensorflow as tf

    costs = np.stack([_problem(6, 3, s) for s in range(4)])

    @tf.function(input_signature=[tf.TensorSpec([None, 6, 3], tf.float32)])
    def f(c):
        return linear_sum_assignment(c)

    rows, cols = f(tf.constant(costs))
    for c, r, k in zip(costs, rows.numpy(), cols.numpy()):
        _check(c, r, k)


@pytest.mark.backends("torch")
@pytest.mark.parametrize("q,t", [(5, 0), (6, 6), (9, 4)])
def test_torch_tensor_with_grad(q, t):
    import torch

    cost = _problem(q, t, 1)
    c = torch.tensor(cost, requires_grad=True)
    rows, cols = linear_sum_assignment(c)
    assert isinstance(rows, torch.Tensor) and rows.device == c.device
    _check(cost, rows.numpy(), cols.numpy())
    total = c[rows.long(), cols.long()].sum()
    total.backward()
    assert c.grad.sum().item() == t


@pytest.mark.backends("tensorflow")
def test_tf_function_nan_reports_the_value_error():
    import tensorflow as tf

    cost = _problem(4, 2, 0)
    cost[0, 0] = np.inf
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or infinite"):
        tf.function(linear_sum_assignment)(tf.constant(cost))
