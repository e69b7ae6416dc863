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


KINDS = ("layer", "rms", "add_layer", "add_rms")


def reference(kind, x, r, w, b, eps, dy, dz, n):
    """float64 norm over rows of ``n`` and the gradients of ``sum(y * dy) + sum(z * dz)``.

    ``x``, ``r`` hold the inputs' values; ``z`` is the sum as the kernels round it (in the input
    dtype), with gradients passed straight through the rounding.
    """
    x = np.asarray(x, np.float64).reshape(-1, n)
    dy = np.asarray(dy, np.float64).reshape(-1, n)
    z = x if r is None else np.asarray(r, np.float64).reshape(-1, n)
    rms = kind.endswith("rms")
    mean = 0.0 if rms else z.mean(axis=1, keepdims=True)
    rstd = 1.0 / np.sqrt(((z - mean) ** 2).mean(axis=1, keepdims=True) + eps)
    xhat = (z - mean) * rstd
    y = xhat * w + (0.0 if b is None else b)
    wdy = dy * w
    dx = wdy - xhat * (wdy * xhat).mean(axis=1, keepdims=True)
    if not rms:
        dx -= wdy.mean(axis=1, keepdims=True)
    dx = dx * rstd
    if kind.startswith("add"):
        dx = dx + np.asarray(dz, np.float64).reshape(-1, n)
    db = None if b is None else dy.sum(axis=0)
    return y, (z if kind.startswith("add") else None), dx, (dy * xhat).sum(axis=0), db


@functools.cache
def _forward_and_vjp(ln, kind, axes, max_block):
    """One jitted function per configuration, so that repeated shapes reuse their compilation."""
    import jax

    kw = {"interpret": _interpret(), "max_block": max_block}

    def f(x, r, w, b):
        if kind == "layer":
            return ln.layer_norm(x, w, b, axes, 1e-5, **kw), None
        if kind == "rms":
            return ln.rms_norm(x, w, axes, 1e-5, **kw), None
        if kind == "add_layer":
            return ln.add_layer_norm(x, r, w, b, axes, 1e-5, **kw)
        return ln.add_rms_norm(x, r, w, axes, 1e-5, **kw)

    def run(x, r, w, b, dy, dz):
        out, vjp = jax.vjp(f, x, r, w, b)
        return (*out, *vjp((dy, None if r is None else dz)))

    return jax.jit(run)


def inputs(kind, shape, n_axes, dtype, mean, seed):
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    pshape = shape[len(shape) - n_axes :]

    def normal(loc=0.0, scale=1.0, size=shape):
        return jnp.asarray(rng.normal(loc, scale, size).astype("float32")).astype(dtype)

    x, dy, dz = normal(mean, 2.0), normal(), normal()
    r = normal() if kind.startswith("add") else None
    w = jnp.asarray(rng.normal(1.0, 0.5, pshape).astype("float32"))
    b = (
        None
        if kind.endswith("rms")
        else jnp.asarray(rng.normal(0.0, 0.5, pshape).astype("float32"))
    )
    return x, r, w, b, dy, dz


def check(ln, kind, shape, n_axes=1, dtype="float32", max_block=0, mean=1.0, tol=2e-5, seed=0):
    x, r, w, b, dy, dz = inputs(kind, shape, n_axes, dtype, mean, seed)
    axes = tuple(range(len(shape) - n_axes, len(shape)))
    got = _forward_and_vjp(ln, kind, axes, max_block)(x, r, w, b, dy, dz)
    n = int(np.prod(w.shape))

    def f32(t):
        return None if t is None else np.asarray(t.astype("float32"))

    z = None if r is None else f32(x + r)  # rounded to the input dtype, as the kernels write it
    b64 = None if b is None else f32(b).reshape(n)
    want = reference(kind, f32(x), z, f32(w).reshape(n), b64, 1e-5, f32(dy), f32(dz), n)
    y, zgot, dx, dr, dw, db = got
    assert y.dtype == x.dtype and y.shape == x.shape and dx.dtype == x.dtype
    assert dw.shape == w.shape and (db is None) == (b is None) and (dr is None) == (r is None)
    if r is not None:
        np.testing.assert_array_equal(f32(dr), f32(dx))
    rows = max(1, int(np.prod(shape)) // n)
    for name, g, ref in zip(("y", "z", "dx", "dgamma", "dbeta"), (y, zgot, dx, dw, db), want):
        if ref is None:
            continue
        g = np.asarray(g.astype("float32"), np.float64).reshape(ref.shape)
        scale = 1.0 if name in ("y", "z", "dx") else rows**0.5
        np.testing.assert_allclose(g, ref, rtol=tol, atol=tol * scale, err_msg=name)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "shape, n_axes, max_block",
    [
        ((5, 1), 1, 0),
        ((1, 3, 7), 1, 0),  # 3-D
        ((1, 1000), 1, 0),  # one row
        ((2, 4097), 1, 0),
        ((3, 5000), 1, 1024),  # looped row with a partial last block; 20 column tiles
        ((70, 7), 1, 0),  # several row chunks and a partial one in dgamma/dbeta
        ((2, 3, 4, 5), 2, 8),  # 4-D over two axes, looped
    ],
)
def test_float32_matches_float64(ln, kind, shape, n_axes, max_block):
    check(ln, kind, shape, n_axes, max_block=max_block)


@pytest.mark.parametrize("kind", ["layer", "add_layer"])
def test_large_mean(ln, kind):
    # Two-pass statistics keep float32 accuracy (~ulp(1e4) = 1e-3) where E[x^2]-E[x]^2 fails.
    check(ln, kind, (1, 3, 7), mean=1e4, tol=1e-2)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype, tol", [("float16", 2e-3), ("bfloat16", 2e-2)])
def test_half_precision(ln, kind, dtype, tol):
    check(ln, kind, (3, 300), dtype=dtype, tol=tol)


@pytest.mark.parametrize("kind", KINDS)
def test_parameter_gradients_are_deterministic(ln, kind):
    # No atomics: the per-chunk partial sums are reduced in a fixed order.
    x, r, w, b, dy, dz = inputs(kind, (70, 7), 1, "float32", 1.0, 3)
    f = _forward_and_vjp(ln, kind, (1,), 0)
    first, second = f(x, r, w, b, dy, dz), f(x, r, w, b, dy, dz)
    for a, c in zip(first, second):
        assert (a is None) == (c is None)
        if a is not None:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(c))


@pytest.mark.parametrize("kind", ["layer", "add_rms"])
def test_configurations_removed_for_the_gpu_target_compute_the_same(ln, kind):
    # On sm_90 the one-block dx kernel of 32768 half-precision values spills, so the chooser
    # (kzoo.backends.common.norm_configs) gives rows of 16385-32768 the looped dx kernel there.
    import jax

    from kzoo.backends.common import norm_configs

    n = 20000
    assert norm_configs.pallas_dx(n, 2, target=90) == norm_configs.Config("dx_looped", 4096, 16)
    assert norm_configs.pallas_dx(n, 2).kernel == "dx"
    rms, residual = kind.endswith("rms"), kind.startswith("add")
    x, r, w, b, dy, dz = inputs(kind, (2, n), 1, "bfloat16", 1.0, 5)

    def f(x, r, w, b):
        return ln.norm_2d(x, r, w, b, 1e-5, rms, interpret=_interpret(), target=90)

    (y, z), vjp = jax.vjp(f, x, r, w, b)
    dx, dr, dw, db = vjp((dy, dz if residual else None))

    def f32(t):
        return None if t is None else np.asarray(t.astype("float32"))

    zsum = None if r is None else f32(x + r)
    want = reference(kind, f32(x), zsum, f32(w), f32(b), 1e-5, f32(dy), f32(dz), n)
    for name, g, ref in zip(("y", "z", "dx", "dgamma", "dbeta"), (y, z, dx, dw, db), want):
        if ref is not None:
            g = np.asarray(g.astype("float32"), np.float64).reshape(ref.shape)
            np.testing.assert_allclose(g, ref, rtol=2e-2, atol=2e-2 * 1.5, err_msg=name)


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
    (y, z), vjp = jax.vjp(
        lambda x, r: ln.add_rms_norm(x, r, None, (2,), 1e-5, interpret=_interpret()), x, x
    )
    assert y.shape == z.shape == (0, 3, 7)
    x = np.random.default_rng(1).normal(size=(3, 7)).astype("float32")
    for kind in ("layer", "rms"):
        y = ln.norm_2d(x, None, None, None, 1e-5, kind == "rms", interpret=_interpret())[0]
        want = reference(kind, x, None, 1.0, None if kind == "rms" else 0.0, 1e-5, x, None, 7)
        np.testing.assert_allclose(np.asarray(y), want[0], atol=2e-5)


@pytest.mark.parametrize(
    "shape, dtype, max_block, kind",
    [
        ((8, 4096), "bfloat16", 0, "layer"),
        ((64, 5000), "float32", 1024, "layer"),
        ((8, 4096), "bfloat16", 0, "add_rms"),
        ((64, 5000), "float16", 1024, "add_layer"),
    ],
)
def test_kernels_lower_to_triton_for_cuda(ln, shape, dtype, max_block, kind):
    # Lowering for CUDA needs no GPU: it runs Pallas's Triton lowering of all three kernels,
    # which rejects what the interpreter accepts (e.g. unsupported primitives or block shapes).
    import jax
    import jax.numpy as jnp
    from jax import export

    rms, residual = kind.endswith("rms"), kind.startswith("add")

    def f(x, r, w, b, dy):
        def norm(x, r, w, b):
            return ln.norm_2d(x, r, w, b, 1e-5, rms, interpret=False, max_block=max_block)

        out, vjp = jax.vjp(norm, x, r, w, b)
        return out, vjp((dy, dy if residual else None))

    n = shape[1]
    row = jax.ShapeDtypeStruct(shape, dtype)
    param = jax.ShapeDtypeStruct((n,), jnp.float32)
    args = (row, row if residual else None, param, None if rms else param, row)
    target = "__gpu$xla.gpu.triton"
    exported = export.export(
        jax.jit(f),
        platforms=["cuda"],
        disabled_checks=[export.DisabledSafetyCheck.custom_call(target)],
    )(*args)
    text = exported.mlir_module()
    assert text.count(f"@{target}") == 3  # forward, dx, dgamma/dbeta
    prefix = "kzoo_rms_norm" if rms else "kzoo_layer_norm"
    for name in ("fwd", "dx", "dwdb"):
        assert f"{prefix}_{name}" in text
    assert "atomic" not in text


def test_bad_input(ln):
    import jax.numpy as jnp

    with pytest.raises(ValueError, match="float16/bfloat16/float32"):
        ln.layer_norm_2d(jnp.ones((2, 3), jnp.int32), interpret=_interpret())
    with pytest.raises(ValueError, match="trailing axes"):
        ln.layer_norm(jnp.ones((2, 3, 4)), None, None, (1,), 1e-5, interpret=_interpret())
    with pytest.raises(ValueError, match="`beta` has 4 elements"):
        ln.layer_norm_2d(jnp.ones((2, 3)), None, jnp.ones(4), interpret=_interpret())
    with pytest.raises(ValueError, match="`residual` must match"):
        ln.norm_2d(jnp.ones((2, 3)), jnp.ones((2, 3), jnp.bfloat16), interpret=_interpret())
    with pytest.raises(ValueError, match="RMS norm takes no `beta`"):
        ln.norm_2d(jnp.ones((2, 3)), None, None, jnp.ones(3), rms=True, interpret=_interpret())


@pytest.mark.parametrize("kind", KINDS)
def test_an_all_zero_row_at_the_smallest_epsilon_gives_beta(ln, kind):
    # Issue #24, item 11: the ops refuse epsilon below the smallest normal float32 (2**-126);
    # at that bound the kernel normalises an all-zero row (of the sum, for the add kinds) to 0.
    from kzoo.ops.layer_norm import MIN_EPSILON

    x, r, w, b, dy, dz = inputs(kind, (3, 7), 1, "float32", 1.0, 0)
    if r is None:
        x = x.at[1].set(0.0)
    else:
        r = r.at[1].set(-x[1])
    kw = {"interpret": _interpret()}
    if kind == "layer":
        y = ln.layer_norm(x, w, b, (1,), MIN_EPSILON, **kw)
    elif kind == "rms":
        y = ln.rms_norm(x, w, (1,), MIN_EPSILON, **kw)
    elif kind == "add_layer":
        y = ln.add_layer_norm(x, r, w, b, (1,), MIN_EPSILON, **kw)[0]
    else:
        y = ln.add_rms_norm(x, r, w, (1,), MIN_EPSILON, **kw)[0]
    y = np.asarray(y)
    z = np.asarray(x if r is None else x + r)
    bias = None if b is None else np.asarray(b)
    plain = kind.replace("add_", "")  # the norm of the sum z
    want = reference(plain, z, None, np.asarray(w), bias, MIN_EPSILON, z, None, 7)[0]
    np.testing.assert_array_equal(y[1], np.zeros(7) if b is None else bias)
    np.testing.assert_allclose(y, want, rtol=2e-5, atol=2e-5)
