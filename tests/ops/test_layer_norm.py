"""kzoo.ops.layer_norm: values and gradients against float64, dispatch, bad input."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from kzoo.backends import dispatch
from kzoo.ops import layer_norm


def reference(x, gamma, beta, axes, epsilon, dy=None):
    """float64 forward and (with ``dy``) the gradients of ``sum(y * dy)`` in x, gamma, beta."""
    x = np.asarray(x, np.float64)
    axes = tuple(sorted(a % x.ndim for a in axes))
    other = tuple(a for a in range(x.ndim) if a not in axes)
    shape = [x.shape[a] if a in axes else 1 for a in range(x.ndim)]
    g = np.ones(shape) if gamma is None else np.asarray(gamma, np.float64).reshape(shape)
    b = np.zeros(shape) if beta is None else np.asarray(beta, np.float64).reshape(shape)
    mean = x.mean(axis=axes, keepdims=True)
    rstd = 1.0 / np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + epsilon)
    xhat = (x - mean) * rstd
    y = xhat * g + b
    if dy is None:
        return y
    dy = np.asarray(dy, np.float64)
    dxhat = dy * g
    dx = rstd * (
        dxhat
        - dxhat.mean(axis=axes, keepdims=True)
        - xhat * (dxhat * xhat).mean(axis=axes, keepdims=True)
    )
    param_shape = tuple(x.shape[a] for a in axes)
    dgamma = (dy * xhat).sum(axis=other).reshape(param_shape)
    dbeta = dy.sum(axis=other).reshape(param_shape)
    return y, dx, dgamma, dbeta


def forward_and_grads(x, gamma, beta, axis, epsilon, dy):
    """kzoo's output and the gradients of ``sum(y * dy)``, through each backend's autodiff."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        def run(x, gamma, beta, dy):
            y, vjp = jax.vjp(lambda a, g, b: layer_norm(a, g, b, axis, epsilon), x, gamma, beta)
            return y, vjp(dy.astype(y.dtype))

        # One compiled program per case is much faster than JAX's op-by-op eager mode.
        y, grads = jax.jit(run)(x, gamma, beta, dy)
    elif backend == "tensorflow":
        import tensorflow as tf

        tx, tg, tb = (tf.constant(v) for v in (x, gamma, beta))
        with tf.GradientTape() as tape:
            tape.watch([tx, tg, tb])
            y = layer_norm(tx, tg, tb, axis, epsilon)
        grads = tape.gradient(y, [tx, tg, tb], output_gradients=tf.constant(dy, y.dtype))
    else:
        import torch

        tx, tg, tb = (torch.tensor(v, requires_grad=True) for v in (x, gamma, beta))
        y = layer_norm(tx, tg, tb, axis, epsilon)
        y.backward(torch.tensor(dy, dtype=y.dtype))
        grads = (tx.grad, tg.grad, tb.grad)
    return [keras.ops.convert_to_numpy(t).astype(np.float64) for t in (y, *grads)]


CASES = [
    ((6, 1), [-1]),
    ((3, 7), [-1]),
    ((2, 1000), [-1]),
    ((1, 7), [-1]),
    ((2, 3, 7), [-1]),
    ((2, 3, 4, 5), [2, 3]),
    ((2, 4, 3, 5), [1]),  # channels-first
    ((3, 4, 5), [0, 2]),
]


@pytest.mark.parametrize("shape, axes", CASES)
def test_forward_and_gradients_match_float64(shape, axes):
    rng = np.random.default_rng(0)
    x = rng.normal(1.5, 2.0, shape).astype("float32")
    pshape = tuple(shape[a] for a in axes)
    gamma = rng.normal(1.0, 0.5, pshape).astype("float32")
    beta = rng.normal(0.0, 0.5, pshape).astype("float32")
    dy = rng.normal(size=shape).astype("float32")
    got = forward_and_grads(x, gamma, beta, axes, 1e-5, dy)
    want = reference(x, gamma, beta, axes, 1e-5, dy)
    for name, g, w in zip(("y", "dx", "dgamma", "dbeta"), got, want):
        assert g.shape == w.shape, name
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, err_msg=name)


def test_zero_rows():
    x = np.zeros((0, 3, 7), "float32")
    y = layer_norm(x, np.ones(7, "float32"), np.zeros(7, "float32"))
    assert tuple(y.shape) == (0, 3, 7)


def test_large_mean_two_pass_statistics():
    x = (1e4 + np.random.default_rng(1).normal(0, 1, (4, 256))).astype("float32")
    y = keras.ops.convert_to_numpy(layer_norm(x, epsilon=1e-12))
    np.testing.assert_allclose(y, reference(x, None, None, [-1], 1e-12), atol=1e-2)


@pytest.mark.parametrize("dtype, atol", [("float16", 1e-2), ("bfloat16", 6e-2)])
def test_half_precision_keeps_dtype_with_float32_statistics(dtype, atol):
    x64 = np.random.default_rng(2).normal(20.0, 3.0, (4, 300))
    x = keras.ops.cast(x64, dtype)
    y = layer_norm(x, np.full(300, 2.0, "float32"), np.full(300, 0.5, "float32"))
    assert keras.backend.standardize_dtype(y.dtype) == dtype
    x_rounded = keras.ops.convert_to_numpy(keras.ops.cast(x, "float32"))
    want = reference(x_rounded, np.full(300, 2.0), np.full(300, 0.5), [-1], 1e-3)
    got = keras.ops.convert_to_numpy(keras.ops.cast(y, "float32"))
    np.testing.assert_allclose(got, want, atol=atol)


def test_symbolic_inputs_build_a_functional_model():
    inputs = keras.Input((3, 5))
    out = layer_norm(inputs, axis=1)
    assert isinstance(out, keras.KerasTensor) and tuple(out.shape) == (None, 3, 5)
    model = keras.Model(inputs, out)
    x = np.random.default_rng(3).normal(size=(2, 3, 5)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(x)), reference(x, None, None, [1], 1e-3), atol=1e-5
    )


@pytest.mark.parametrize(
    "shape, kwargs, match",
    [
        ((2, 3), {"axis": 2}, "out of range"),
        ((2, 3), {"axis": [0, -2]}, "more than once"),
        ((2, 3), {"axis": "last"}, "`axis`"),
        ((2, 0), {}, "normalised size is 0"),
        ((2, 3), {"gamma": np.ones(4, "float32")}, "`gamma` has shape"),
        ((2, 3), {"beta": np.ones((3, 2), "float32")}, "`beta` has shape"),
        ((2, 3), {"epsilon": -1e-5}, "`epsilon`"),
    ],
)
def test_bad_input_is_a_clear_error(shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        layer_norm(np.ones(shape, "float32"), **kwargs)


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm"])
def test_dispatch_picks_kernels_only_where_they_apply(monkeypatch, op):
    monkeypatch.delenv("KZOO_KERNELS", raising=False)

    def pick(backend, platform, dtype="float32", shape=(8, 64), axes=(1,), **kw):
        return dispatch.select(
            op,
            backend=backend,
            platform=platform,
            dtype=dtype,
            shape=shape,
            axes=axes,
            **kw,
        ).name

    assert pick("torch", "gpu") == "triton"
    assert pick("torch", "gpu", dtype="bfloat16") == "triton"
    assert pick("jax", "gpu", dtype="float16") == "pallas"
    # TensorFlow's layer norm takes keras's gamma-folded arithmetic (same program as keras's).
    folded = "tensorflow-folded" if op == "layer_norm" else "portable"
    assert pick("tensorflow", "gpu") == folded
    assert pick("tensorflow", "cpu", rms_scaling=True) == "portable"
    # torch on the CPU, trailing axes with matching params: F.layer_norm / F.rms_norm.
    assert pick("torch", "cpu", params_match=True) == "torch-native"
    assert pick("torch", "cpu", params_match=False) == "portable"
    # JAX without a GPU: the same composition, jitted (one call when eager).
    assert pick("jax", "cpu") == "xla-jit"
    # Outside the kernels' coverage the call falls back instead of failing.
    assert pick("torch", "gpu", dtype="float64", params_match=True) == "torch-native"
    assert pick("torch", "gpu", shape=(2, 4, 3, 3), axes=(1,)) == "portable"
    assert pick("jax", "gpu", rms_scaling=True) == "xla-jit"
    assert pick("jax", "gpu", distributed=True) == "xla-jit"
    # A residual of another dtype than x: no kernel (they read both in x's dtype).
    assert pick("torch", "gpu", residual_match=False, params_match=True) == "torch-native"
    assert pick("jax", "gpu", residual_match=False) == "xla-jit"
    monkeypatch.setenv("KZOO_KERNELS", "off")
    # The GPU kernels are optional; torch's own F.layer_norm is not a kzoo kernel.
    assert pick("torch", "gpu", params_match=True) == "torch-native"
    assert pick("torch", "gpu") == "portable"
    assert pick("jax", "gpu") == "portable"
    assert pick("jax", "cpu") == "portable"
    assert pick("tensorflow", "cpu") == folded


@pytest.mark.backends("jax")
def test_an_active_distribution_keeps_kernels_out():
    import importlib

    # ``kzoo.ops.layer_norm`` the attribute is the function; the module is in sys.modules.
    module = importlib.import_module("kzoo.ops.layer_norm")

    assert not module._distributed()
    keras.distribution.set_distribution(keras.distribution.DataParallel())
    try:
        assert module._distributed()
        x = np.random.default_rng(4).normal(size=(8, 6)).astype("float32")
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(layer_norm(x)),
            reference(x, None, None, [-1], 1e-3),
            atol=1e-5,
        )
    finally:
        keras.distribution.set_distribution(None)


def test_kzoo_info_lists_the_norm_ops(capsys):
    from kzoo.cli.main import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out.splitlines()
    backend = keras.backend.backend()
    for op in ("layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm"):
        lines = [line for line in out if line[3:].startswith(f"{op} ")]
        assert any(line.startswith(" *") and backend in line for line in lines), lines
        assert {b for b in ("jax", "tensorflow", "torch") if any(b in line for line in lines)} == {
            "jax",
            "tensorflow",
            "torch",
        }
        if not os.path.exists("/dev/nvidia0"):
            expected = {"jax": "xla-jit", "tensorflow": "portable", "torch": "torch-native"}
            if op == "layer_norm":
                expected["tensorflow"] = "tensorflow-folded"
            for line in lines:
                name = next(b for b in expected if f" {b} " in line)
                assert f"-> {expected[name]}:" in line, line


@pytest.mark.backends("torch")
def test_import_kzoo_imports_no_kernel_framework():
    # keras itself imports triton (torch) or Pallas (JAX), so compare with what keras loaded.
    code = (
        "import sys, keras; before = set(sys.modules); "
        "import kzoo, kzoo.ops.layer_norm; "
        "new = [m for m in set(sys.modules) - before if 'triton' in m or 'pallas' in m]; "
        "assert not new, new; "
        "from kzoo.backends import dispatch; print(dispatch.select('layer_norm').name)"
    )
    env = dict(os.environ, KERAS_BACKEND="torch")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "torch-native"


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm"])
def test_epsilon_rule_every_op_refuses_zero_and_keeps_zero_rows_finite(op):
    # Issue #24, item 11: epsilon=0 made an all-zero row NaN. Every op refuses an epsilon below
    # the smallest normal float32 (a ValueError naming it; a TypeError too for a non-number), and
    # at that bound an all-zero row normalises to 0 (plus beta) and the others match float64.
    from kzoo import ops as kops
    from kzoo.ops.layer_norm import MIN_EPSILON

    fn = getattr(kops, op)
    add = op.startswith("add")
    x = np.random.default_rng(5).normal(size=(3, 7)).astype("float32")
    r = np.random.default_rng(6).normal(size=(3, 7)).astype("float32")
    r[1] = -x[1]  # the sum's row 1 is zero
    if not add:
        x[1] = 0.0
    args = (x, r) if add else (x,)
    for bad in (0, 1e-40, float("nan")):
        with pytest.raises(ValueError, match="`epsilon` must be a finite float of at least"):
            fn(*args, epsilon=bad)
    with pytest.raises(TypeError, match="`epsilon` must be a positive float"):
        fn(*args, epsilon="1e-3")
    gamma = np.linspace(0.5, 2.0, 7).astype("float32")
    beta = np.linspace(-1.0, 1.0, 7).astype("float32")
    params = {"gamma": gamma} if "rms" in op else {"gamma": gamma, "beta": beta}
    out = fn(*args, epsilon=MIN_EPSILON, **params)
    y = keras.ops.convert_to_numpy(out[0] if add else out)
    z = (x + r) if add else x
    np.testing.assert_array_equal(y[1], beta if "beta" in params else 0.0)
    if "rms" in op:
        z64 = z.astype(np.float64)
        want = z64 / np.sqrt((z64**2).mean(-1, keepdims=True) + MIN_EPSILON) * gamma
    else:
        want = reference(z, gamma, beta, [-1], MIN_EPSILON)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
