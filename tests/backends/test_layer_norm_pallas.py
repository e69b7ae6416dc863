"""The Pallas layer norm, run by Pallas's interpreter on CPU, against a float64 numpy reference.

Each new shape costs a few seconds of interpretation set-up, so the cases are chosen to cover
the paths (one block, looped blocks, tiled dgamma/dbeta with several row chunks) in few shapes.
"""

import functools
import os

import numpy as np
import pytest

pytestmark = pytest.mark.backends("jax")


def _interpret():
    """Interpret on CPU; ``KZOO_TEST_GPU=1`` on a GPU machine runs the compiled kernels."""
    import jax

    return not (os.environ.get("KZOO_TEST_GPU") == "1" and jax.default_backend() == "gpu")


@pytest.fixture(scope="module")
def ln():
    from kzoo.backends.jax import layer_norm_pallas

    return layer_norm_pallas


def reference(x, w, b, eps, dy, n=None):
    """float64 layer norm over the last ``n`` elements and the gradients of ``sum(y * dy)``."""
    n = n or x.shape[-1]
    x = np.asarray(x, np.float64).reshape(-1, n)
    dy = np.asarray(dy, np.float64).reshape(-1, n)
    mean = x.mean(axis=1, keepdims=True)
    rstd = 1.0 / np.sqrt(((x - mean) ** 2).mean(axis=1, keepdims=True) + eps)
    xhat = (x - mean) * rstd
    y = xhat * w + b
    dxhat = dy * w
    dx = rstd * (
        dxhat
        - dxhat.mean(axis=1, keepdims=True)
        - xhat * (dxhat * xhat).mean(axis=1, keepdims=True)
    )
    return y, dx, (dy * xhat).sum(axis=0), dy.sum(axis=0)


@functools.cache
def _forward_and_vjp(ln, axes, max_block):
    """One jitted function per configuration, so that repeated shapes reuse their compilation."""
    import jax

    def f(x, w, b):
        return ln.layer_norm(x, w, b, axes, 1e-5, interpret=_interpret(), max_block=max_block)

    def run(x, w, b, dy):
        y, vjp = jax.vjp(f, x, w, b)
        return (y, *vjp(dy))

    return jax.jit(run)


def check(ln, shape, n_axes=1, dtype="float32", max_block=0, mean=1.0, tol=2e-5, seed=0):
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    pshape = shape[len(shape) - n_axes :]
    x = jnp.asarray(rng.normal(mean, 2.0, shape).astype("float32")).astype(dtype)
    dy = jnp.asarray(rng.normal(size=shape).astype("float32")).astype(dtype)
    w = rng.normal(1.0, 0.5, pshape).astype("float32")
    b = rng.normal(0.0, 0.5, pshape).astype("float32")
    axes = tuple(range(len(shape) - n_axes, len(shape)))
    got = _forward_and_vjp(ln, axes, max_block)(x, jnp.asarray(w), jnp.asarray(b), dy)
    y = got[0]
    n = int(np.prod(pshape))
    want = reference(
        np.asarray(x.astype("float32")),
        w.reshape(n),
        b.reshape(n),
        1e-5,
        np.asarray(dy.astype("float32")),
        n,
    )
    assert y.dtype == x.dtype and y.shape == x.shape
    assert got[1].dtype == x.dtype and got[2].shape == w.shape
    rows = max(1, int(np.prod(shape)) // n)
    for name, g, r in zip(("y", "dx", "dgamma", "dbeta"), got, want):
        g = np.asarray(g.astype("float32"), np.float64).reshape(r.shape)
        scale = 1.0 if name in ("y", "dx") else rows**0.5
        np.testing.assert_allclose(g, r, rtol=tol, atol=tol * scale, err_msg=name)


@pytest.mark.parametrize(
    "shape, n_axes, max_block",
    [
        ((5, 1), 1, 0),
        ((1, 3, 7), 1, 0),  # 3-D
        ((1, 1000), 1, 0),  # one row
        ((2, 4096), 1, 0),
        ((3, 5000), 1, 1024),  # looped row with a partial last block; 20 column tiles
        ((70, 7), 1, 0),  # several row chunks and a partial one in dgamma/dbeta
        ((2, 3, 4, 5), 2, 8),  # 4-D over two axes, looped
    ],
)
def test_float32_matches_float64(ln, shape, n_axes, max_block):
    check(ln, shape, n_axes, max_block=max_block)


def test_large_mean(ln):
    # Two-pass statistics keep float32 accuracy (~ulp(1e4) = 1e-3) where E[x^2]-E[x]^2 fails.
    check(ln, (1, 3, 7), mean=1e4, tol=1e-2)


@pytest.mark.parametrize("dtype, tol", [("float16", 2e-3), ("bfloat16", 2e-2)])
def test_half_precision(ln, dtype, tol):
    check(ln, (3, 300), dtype=dtype, tol=tol)


def test_zero_rows_and_no_parameters(ln):
    import jax
    import jax.numpy as jnp

    x = jnp.zeros((0, 3, 7), jnp.float32)
    w = jnp.ones((7,), jnp.float32)
    y, vjp = jax.vjp(
        lambda x, w: ln.layer_norm(x, w, None, (2,), 1e-5, interpret=_interpret()), x, w
    )
    assert y.shape == (0, 3, 7)
    dx, dw = vjp(y)
    assert dx.shape == (0, 3, 7) and dw.shape == (7,) and not np.any(np.asarray(dw))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 7)).astype("float32"))
    y = ln.layer_norm_2d(x, None, None, 1e-5, interpret=_interpret())
    np.testing.assert_allclose(
        np.asarray(y), reference(np.asarray(x), 1.0, 0.0, 1e-5, x)[0], atol=2e-5
    )


@pytest.mark.parametrize(
    "shape, dtype, max_block", [((8, 4096), "bfloat16", 0), ((64, 5000), "float32", 1024)]
)
def test_kernels_lower_to_triton_for_cuda(ln, shape, dtype, max_block):
    # Lowering for CUDA needs no GPU: it runs Pallas's Triton lowering of all three kernels,
    # which rejects what the interpreter accepts (e.g. unsupported primitives or block shapes).
    import jax
    import jax.numpy as jnp
    from jax import export

    def f(x, w, b, dy):
        def norm(x, w, b):
            return ln.layer_norm_2d(x, w, b, 1e-5, interpret=False, max_block=max_block)

        y, vjp = jax.vjp(norm, x, w, b)
        return y, vjp(dy)

    n = shape[1]
    args = (
        jax.ShapeDtypeStruct(shape, dtype),
        jax.ShapeDtypeStruct((n,), jnp.float32),
        jax.ShapeDtypeStruct((n,), jnp.float32),
        jax.ShapeDtypeStruct(shape, dtype),
    )
    target = "__gpu$xla.gpu.triton"
    exported = export.export(
        jax.jit(f),
        platforms=["cuda"],
        disabled_checks=[export.DisabledSafetyCheck.custom_call(target)],
    )(*args)
    text = exported.mlir_module()
    assert text.count(f"@{target}") == 3  # forward, dx, dgamma/dbeta
    for name in ("kzoo_layer_norm_fwd", "kzoo_layer_norm_dx", "kzoo_layer_norm_dwdb"):
        assert name in text
    assert "atomic" not in text


def test_bad_input(ln):
    import jax.numpy as jnp

    with pytest.raises(ValueError, match="float16/bfloat16/float32"):
        ln.layer_norm_2d(jnp.ones((2, 3), jnp.int32), interpret=_interpret())
    with pytest.raises(ValueError, match="trailing axes"):
        ln.layer_norm(jnp.ones((2, 3, 4)), None, None, (1,), 1e-5, interpret=_interpret())
    with pytest.raises(ValueError, match="`beta` has 4 elements"):
        ln.layer_norm_2d(jnp.ones((2, 3)), None, jnp.ones(4), interpret=_interpret())
