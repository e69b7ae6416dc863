"""kzoo.ops.rms_norm, add_layer_norm, add_rms_norm: float64 and keras references, the cached path.

The three ops live in ``kzoo/ops/layer_norm.py`` next to ``layer_norm`` (tested in
``test_layer_norm.py``) and share its validation, dispatch and per-call cache.
"""

import importlib

import keras
import numpy as np
import pytest

from kzoo.backends import dispatch
from kzoo.ops import add_layer_norm, add_rms_norm, layer_norm, rms_norm

# ``kzoo.ops.layer_norm`` the attribute is the function; the module is in sys.modules.
norms = importlib.import_module("kzoo.ops.layer_norm")


def reference(kind, x, r, gamma, beta, axes, epsilon, dy, dz):
    """float64 outputs and the gradients of ``sum(y * dy) + sum(z * dz)``, ``z = x + r``."""
    x = np.asarray(x, np.float64)
    axes = tuple(sorted(a % x.ndim for a in axes))
    other = tuple(a for a in range(x.ndim) if a not in axes)
    shape = [x.shape[a] if a in axes else 1 for a in range(x.ndim)]
    g = np.ones(shape) if gamma is None else np.asarray(gamma, np.float64).reshape(shape)
    z = x if r is None else x + np.asarray(r, np.float64)
    rms = kind.endswith("rms")
    mean = 0.0 if rms else z.mean(axis=axes, keepdims=True)
    rstd = 1.0 / np.sqrt(((z - mean) ** 2).mean(axis=axes, keepdims=True) + epsilon)
    xhat = (z - mean) * rstd
    y = xhat * g + (0.0 if beta is None else np.asarray(beta, np.float64).reshape(shape))
    dy = np.asarray(dy, np.float64)
    gdy = dy * g
    dx = gdy - xhat * (gdy * xhat).mean(axis=axes, keepdims=True)
    if not rms:
        dx -= gdy.mean(axis=axes, keepdims=True)
    dx = dx * rstd + (0.0 if r is None else np.asarray(dz, np.float64))
    pshape = tuple(x.shape[a] for a in axes)
    dgamma = (dy * xhat).sum(axis=other).reshape(pshape)
    dbeta = None if beta is None else dy.sum(axis=other).reshape(pshape)
    return y, (None if r is None else z), dx, dgamma, dbeta


def call(kind, x, r, gamma, beta, axis, epsilon):
    if kind == "rms":
        return rms_norm(x, gamma, axis, epsilon), None
    if kind == "add_layer":
        return add_layer_norm(x, r, gamma, beta, axis, epsilon)
    return add_rms_norm(x, r, gamma, axis, epsilon)


def outputs_and_grads(kind, x, r, gamma, beta, axis, epsilon, dy, dz):
    """kzoo's outputs and gradients (x, residual, gamma, beta) through each backend's autodiff."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        def run(x, r, gamma, beta, dy, dz):
            out, vjp = jax.vjp(lambda *a: call(kind, *a, axis, epsilon), x, r, gamma, beta)
            return out, vjp((dy, None if r is None else dz))

        out, grads = jax.jit(run)(x, r, gamma, beta, dy, dz)
    elif backend == "tensorflow":
        import tensorflow as tf

        leaves = [None if v is None else tf.constant(v) for v in (x, r, gamma, beta)]
        watched = [t for t in leaves if t is not None]
        with tf.GradientTape() as tape:
            tape.watch(watched)
            out = call(kind, *leaves, axis, epsilon)
            loss = tf.reduce_sum(out[0] * dy)
            if r is not None:
                loss += tf.reduce_sum(out[1] * dz)
        found = iter(tape.gradient(loss, watched))
        grads = [None if t is None else next(found) for t in leaves]
    else:
        import torch

        leaves = [None if v is None else torch.tensor(v, requires_grad=True) for v in (x, r)]
        leaves += [
            None if v is None else torch.tensor(v, requires_grad=True) for v in (gamma, beta)
        ]
        out = call(kind, *leaves, axis, epsilon)
        loss = (out[0] * torch.tensor(dy)).sum()
        if r is not None:
            loss = loss + (out[1] * torch.tensor(dz)).sum()
        loss.backward()
        grads = [None if t is None else t.grad for t in leaves]

    def numpy(t):
        return None if t is None else keras.ops.convert_to_numpy(t).astype(np.float64)

    return [numpy(t) for t in (*out, *grads)]


CASES = [
    ((6, 1), [-1]),
    ((3, 7), [-1]),
    ((2, 1000), [-1]),
    ((2, 3, 4, 5), [2, 3]),
    ((2, 4, 3, 5), [1]),  # channels-first
    ((3, 4, 5), [0, 2]),
]


@pytest.mark.parametrize("kind", ["rms", "add_layer", "add_rms"])
@pytest.mark.parametrize("shape, axes", CASES)
def test_outputs_and_gradients_match_float64(kind, shape, axes):
    rng = np.random.default_rng(0)
    x = rng.normal(1.5, 2.0, shape).astype("float32")
    r = rng.normal(size=shape).astype("float32") if kind.startswith("add") else None
    pshape = tuple(shape[a] for a in axes)
    gamma = rng.normal(1.0, 0.5, pshape).astype("float32")
    beta = None if kind.endswith("rms") else rng.normal(0.0, 0.5, pshape).astype("float32")
    dy = rng.normal(size=shape).astype("float32")
    dz = rng.normal(size=shape).astype("float32")
    got = outputs_and_grads(kind, x, r, gamma, beta, axes, 1e-5, dy, dz)
    y, z, dx, dr, dgamma, dbeta = got
    want = reference(kind, x, r, gamma, beta, axes, 1e-5, dy, dz)
    for name, g, w in zip(("y", "z", "dx", "dgamma", "dbeta"), (y, z, dx, dgamma, dbeta), want):
        assert (g is None) == (w is None), name
        if w is not None:
            assert g.shape == w.shape, name
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, err_msg=name)
    if r is not None:
        np.testing.assert_allclose(dr, want[2], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape, axis", [((4, 16), -1), ((2, 3, 8), [1, 2]), ((2, 5, 6), -1)])
def test_rms_norm_matches_keras(shape, axis):
    rng = np.random.default_rng(1)
    x = rng.normal(0.3, 2.0, shape).astype("float32")
    axes = [axis] if isinstance(axis, int) else axis
    gamma = rng.normal(1.0, 0.5, tuple(shape[a] for a in axes)).astype("float32")
    ours = keras.ops.convert_to_numpy(rms_norm(x, gamma, axis, 1e-6))
    theirs = keras.ops.convert_to_numpy(keras.ops.rms_normalization(x, gamma, axis, 1e-6))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["add_layer", "add_rms"])
def test_fused_ops_match_the_unfused_ones(kind):
    rng = np.random.default_rng(2)
    x, r = (rng.normal(size=(3, 5, 32)).astype("float32") for _ in range(2))
    gamma = rng.normal(size=32).astype("float32")
    beta = rng.normal(size=32).astype("float32") if kind == "add_layer" else None
    y, z = call(kind, x, r, gamma, beta, -1, 1e-5)
    total = keras.ops.add(x, r)
    if kind == "add_layer":
        want = layer_norm(total, gamma, beta, -1, 1e-5)
    else:
        want = rms_norm(total, gamma, -1, 1e-5)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(z), keras.ops.convert_to_numpy(total))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(y), keras.ops.convert_to_numpy(want), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize(
    "kind, dtype, atol",
    [("rms", "bfloat16", 6e-2), ("add_rms", "float16", 1e-2), ("add_layer", "bfloat16", 6e-2)],
)
def test_half_precision_keeps_dtype(kind, dtype, atol):
    rng = np.random.default_rng(3)
    x = keras.ops.cast(rng.normal(2.0, 3.0, (4, 300)), dtype)
    r = keras.ops.cast(rng.normal(size=(4, 300)), dtype) if kind != "rms" else None
    gamma = np.full(300, 2.0, "float32")
    beta = np.full(300, 0.5, "float32") if kind == "add_layer" else None
    y, z = call(kind, x, r, gamma, beta, -1, 1e-5)
    assert keras.backend.standardize_dtype(y.dtype) == dtype
    # The float64 reference normalises the input as rounded to the half dtype (the sum, too).
    total = x if r is None else keras.ops.add(x, r)
    if z is not None:
        assert keras.backend.standardize_dtype(z.dtype) == dtype
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(keras.ops.cast(z, "float32")),
            keras.ops.convert_to_numpy(keras.ops.cast(total, "float32")),
        )
    rounded = keras.ops.convert_to_numpy(keras.ops.cast(total, "float32"))
    plain = "rms" if kind.endswith("rms") else "layer"
    want = reference(plain, rounded, None, gamma, beta, [-1], 1e-5, rounded, None)[0]
    got = keras.ops.convert_to_numpy(keras.ops.cast(y, "float32"))
    np.testing.assert_allclose(got, want, atol=atol)


def test_symbolic_inputs_build_a_functional_model():
    x_in, r_in = keras.Input((3, 8)), keras.Input((3, 8))
    normed, total = add_rms_norm(x_in, r_in, axis=[1, 2])
    assert isinstance(normed, keras.KerasTensor) and tuple(total.shape) == (None, 3, 8)
    model = keras.Model([x_in, r_in], [normed, total, rms_norm(x_in)])
    rng = np.random.default_rng(4)
    x, r = (rng.normal(size=(2, 3, 8)).astype("float32") for _ in range(2))
    y, z, plain = (keras.ops.convert_to_numpy(t) for t in model([x, r]))
    want = reference("add_rms", x, r, None, None, [1, 2], 1e-6, x, x)
    np.testing.assert_allclose(y, want[0], atol=1e-5)
    np.testing.assert_allclose(z, x + r, atol=1e-6)
    np.testing.assert_allclose(
        plain, reference("rms", x, None, None, None, [-1], 1e-6, x, x)[0], atol=1e-5
    )


@pytest.mark.parametrize(
    "kind, kwargs, match",
    [
        ("rms", {"axis": 2}, "out of range"),
        ("rms", {"gamma": np.ones(4, "float32")}, "`gamma` has shape"),
        ("rms", {"epsilon": -1.0}, "`epsilon`"),
        ("add_layer", {"residual": np.ones((2, 4), "float32")}, "`residual` has shape"),
        ("add_rms", {"residual": np.ones((3,), "float32")}, "`residual` has shape"),
        ("add_layer", {"beta": np.ones((3, 2), "float32")}, "`beta` has shape"),
    ],
)
def test_bad_input_is_a_clear_error(kind, kwargs, match):
    x = np.ones((2, 3), "float32")
    fn = {"rms": rms_norm, "add_layer": add_layer_norm, "add_rms": add_rms_norm}[kind]
    if kind != "rms":
        kwargs.setdefault("residual", x)
    with pytest.raises(ValueError, match=match):
        fn(x, **kwargs)


def test_validation_and_dispatch_run_once_per_call_signature(monkeypatch):
    # Per call: one key and one dictionary lookup; the checks and the dispatch depend only on
    # shapes, dtypes and arguments, so they run on the first call of each signature.
    made = []
    real = norms._make_plan
    monkeypatch.setattr(norms, "_make_plan", lambda *a: made.append(a) or real(*a))
    norms._PLANS.clear()
    x = keras.ops.ones((4, 8))
    gamma = keras.ops.ones((8,))
    for _ in range(3):
        rms_norm(x, gamma)
        add_rms_norm(x, x, gamma)
    assert len(made) == 2
    rms_norm(keras.ops.ones((5, 8)), gamma)  # a new shape is a new signature
    monkeypatch.setenv("KZOO_KERNELS", "off")  # ... and so is a change of the switch
    rms_norm(x, gamma)
    assert len(made) == 4
    # A registration empties the cache: a new implementation is never shadowed.
    here = "kzoo.ops.layer_norm:rms_norm_portable"
    try:
        dispatch.register(
            "rms_norm", dispatch.Implementation("test-only", here, priority=100, optional=False)
        )
        assert not norms._PLANS
        rms_norm(x, gamma)
        assert len(made) == 5
        assert made[-1][0] == "rms_norm"
    finally:
        dispatch._REGISTRY["rms_norm"] = [
            i for i in dispatch._REGISTRY["rms_norm"] if i.name != "test-only"
        ]
        for cache in dispatch._CACHES:
            cache.clear()
