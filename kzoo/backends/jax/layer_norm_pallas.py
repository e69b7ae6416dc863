"""Layer norm for JAX on GPU as Pallas kernels (forward and backward under ``jax.custom_vjp``).

The input is viewed as ``(rows, N)`` with the normalised (trailing) axes flattened into ``N``.
Rows are independent programs (``grid=(rows,)``); inside a program a row is read in blocks of a
power-of-two width with masked loads, so any ``N`` works: one block when the row fits (up to
64 KiB of input), a loop over blocks otherwise. Statistics are float32 and two-pass (mean, then
the mean of squared deviations), which keeps inputs with a large mean accurate.

Backward: a per-row kernel writes ``dx = rstd * (w*dy - mean(w*dy) - xhat * mean(w*dy*xhat))``;
a second kernel tiles ``(row chunk, column block)`` and writes each chunk's float32 partial sums
of ``dy * xhat`` and ``dy`` to its own row of a buffer, which is summed in a fixed order. No
atomics, so ``dgamma``/``dbeta`` are reproducible.

The kernels use the GPU (Triton) Pallas primitives; ``interpret=True`` runs them on any platform
through Pallas's interpreter, which is how the tests run them on CPU. This module imports
``jax.experimental.pallas`` and is imported only by the dispatch on first use.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

_MAX_FUSED_BYTES = 65536
# Rows and columns of one tile of the dgamma/dbeta kernel.
_TILE_ROWS = 32
_TILE_COLS = 256
# Upper bound on row chunks (programs along the rows) of the dgamma/dbeta kernel.
_MAX_CHUNKS = 512


def _block(n, itemsize, max_block):
    limit = _MAX_FUSED_BYTES // itemsize if not max_block else max_block
    limit = 1 << (max(int(limit), 1).bit_length() - 1)
    return min(pl.next_power_of_2(n), limit)


def _num_warps(block, itemsize):
    return max(1, min(16, block * itemsize // 256))


def _cols(i, block):
    return i * block + jnp.arange(block)


def _load_row(ref, cols, n):
    return plgpu.load(ref.at[cols], mask=cols < n, other=0.0).astype(jnp.float32)


def _fold(n, block, body, init):
    """``body(cols, carry)`` over the column blocks of a row of ``n``: unrolled if one block."""
    steps = pl.cdiv(n, block)
    if steps == 1:
        return body(_cols(0, block), init)
    return lax.fori_loop(0, steps, lambda i, c: body(_cols(i, block), c), init)


def _fwd_kernel(x_ref, w_ref, b_ref, y_ref, mean_ref, rstd_ref, *, n, eps, block):
    zeros = jnp.zeros((block,), jnp.float32)
    if pl.cdiv(n, block) == 1:
        # The whole row fits one block: read it once and centre it in registers.
        cols = _cols(0, block)
        mask = cols < n
        x = _load_row(x_ref, cols, n)
        mean = jnp.sum(x) / n
        xc = jnp.where(mask, x - mean, 0.0)
        rstd = 1.0 / jnp.sqrt(jnp.sum(xc * xc) / n + eps)
        y = xc * rstd * _load_row(w_ref, cols, n) + _load_row(b_ref, cols, n)
        plgpu.store(y_ref.at[cols], y.astype(y_ref.dtype), mask=mask)
    else:
        mean = jnp.sum(_fold(n, block, lambda c, acc: acc + _load_row(x_ref, c, n), zeros)) / n

        def sq(c, acc):
            d = jnp.where(c < n, _load_row(x_ref, c, n) - mean, 0.0)
            return acc + d * d

        rstd = 1.0 / jnp.sqrt(jnp.sum(_fold(n, block, sq, zeros)) / n + eps)

        def write(c, carry):
            y = (_load_row(x_ref, c, n) - mean) * rstd
            y = y * _load_row(w_ref, c, n) + _load_row(b_ref, c, n)
            plgpu.store(y_ref.at[c], y.astype(y_ref.dtype), mask=c < n)
            return carry

        _fold(n, block, write, 0)
    mean_ref[...] = mean
    rstd_ref[...] = rstd


def _dx_kernel(x_ref, dy_ref, w_ref, mean_ref, rstd_ref, dx_ref, *, n, block):
    mean = mean_ref[...]
    rstd = rstd_ref[...]

    def terms(c):
        xhat = jnp.where(c < n, (_load_row(x_ref, c, n) - mean) * rstd, 0.0)
        wdy = _load_row(dy_ref, c, n) * _load_row(w_ref, c, n)
        return xhat, wdy

    if pl.cdiv(n, block) == 1:
        # One block: load x and dy once and keep them in registers for both passes.
        cols = _cols(0, block)
        xhat, wdy = terms(cols)
        c1 = jnp.sum(xhat * wdy) / n
        c2 = jnp.sum(wdy) / n
        dx = (wdy - (xhat * c1 + c2)) * rstd
        plgpu.store(dx_ref.at[cols], dx.astype(dx_ref.dtype), mask=cols < n)
        return

    def sums(c, acc):
        xhat, wdy = terms(c)
        return acc[0] + xhat * wdy, acc[1] + wdy

    zeros = jnp.zeros((block,), jnp.float32)
    a1, a2 = _fold(n, block, sums, (zeros, zeros))
    c1 = jnp.sum(a1) / n
    c2 = jnp.sum(a2) / n

    def write(c, carry):
        xhat, wdy = terms(c)
        dx = (wdy - (xhat * c1 + c2)) * rstd
        plgpu.store(dx_ref.at[c], dx.astype(dx_ref.dtype), mask=c < n)
        return carry

    _fold(n, block, write, 0)


def _dwdb_kernel(x_ref, dy_ref, mean_ref, rstd_ref, dw_ref, db_ref, *, m, n, chunk):
    g = pl.program_id(0)
    cols = _cols(pl.program_id(1), _TILE_COLS)
    col_mask = cols < n

    def body(i, acc):
        rows = g * chunk + i * _TILE_ROWS + jnp.arange(_TILE_ROWS)
        row_mask = rows < m
        mask = row_mask[:, None] & col_mask[None, :]
        idx = (rows[:, None], cols[None, :])
        x = plgpu.load(x_ref.at[idx], mask=mask, other=0.0).astype(jnp.float32)
        dy = plgpu.load(dy_ref.at[idx], mask=mask, other=0.0).astype(jnp.float32)
        mean = plgpu.load(mean_ref.at[rows], mask=row_mask, other=0.0)
        rstd = plgpu.load(rstd_ref.at[rows], mask=row_mask, other=0.0)
        xhat = jnp.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        return acc[0] + dy * xhat, acc[1] + dy

    zeros = jnp.zeros((_TILE_ROWS, _TILE_COLS), jnp.float32)
    dw, db = lax.fori_loop(0, chunk // _TILE_ROWS, body, (zeros, zeros))
    dw_ref[...] = jnp.sum(dw, axis=0)
    db_ref[...] = jnp.sum(db, axis=0)


def _row_spec(n):
    return pl.BlockSpec((None, n), lambda i: (i, 0))


def _scalar_spec():
    return pl.BlockSpec((None,), lambda i: (i,))


def _whole_spec(shape):
    return pl.BlockSpec(shape, lambda *_: (0,) * len(shape))


def _forward(x, w, b, eps, interpret, max_block):
    m, n = x.shape
    if m == 0:
        empty = jnp.zeros((0,), jnp.float32)
        return jnp.zeros_like(x), empty, empty
    block = _block(n, x.dtype.itemsize, max_block)
    return pl.pallas_call(
        functools.partial(_fwd_kernel, n=n, eps=eps, block=block),
        grid=(m,),
        in_specs=[_row_spec(n), _whole_spec((n,)), _whole_spec((n,))],
        out_specs=[_row_spec(n), _scalar_spec(), _scalar_spec()],
        out_shape=[
            jax.ShapeDtypeStruct((m, n), x.dtype),
            jax.ShapeDtypeStruct((m,), jnp.float32),
            jax.ShapeDtypeStruct((m,), jnp.float32),
        ],
        compiler_params=plgpu.CompilerParams(num_warps=_num_warps(block, x.dtype.itemsize)),
        interpret=interpret,
        name="kzoo_layer_norm_fwd",
    )(x, w, b)


def _backward(x, w, mean, rstd, dy, interpret, max_block):
    m, n = x.shape
    if m == 0:
        return jnp.zeros_like(x), jnp.zeros((n,), jnp.float32), jnp.zeros((n,), jnp.float32)
    block = _block(n, x.dtype.itemsize, max_block)
    dx = pl.pallas_call(
        functools.partial(_dx_kernel, n=n, block=block),
        grid=(m,),
        in_specs=[_row_spec(n), _row_spec(n), _whole_spec((n,)), _scalar_spec(), _scalar_spec()],
        out_specs=_row_spec(n),
        out_shape=jax.ShapeDtypeStruct((m, n), x.dtype),
        compiler_params=plgpu.CompilerParams(num_warps=_num_warps(block, x.dtype.itemsize)),
        interpret=interpret,
        name="kzoo_layer_norm_dx",
    )(x, dy, w, mean, rstd)

    tiles_of_rows = pl.cdiv(m, _TILE_ROWS)
    chunks = min(tiles_of_rows, _MAX_CHUNKS)
    chunk = pl.cdiv(tiles_of_rows, chunks) * _TILE_ROWS
    chunks = pl.cdiv(m, chunk)
    col_blocks = pl.cdiv(n, _TILE_COLS)
    width = col_blocks * _TILE_COLS
    part_spec = pl.BlockSpec((None, _TILE_COLS), lambda g, j: (g, j))
    dw_part, db_part = pl.pallas_call(
        functools.partial(_dwdb_kernel, m=m, n=n, chunk=chunk),
        grid=(chunks, col_blocks),
        in_specs=[_whole_spec((m, n)), _whole_spec((m, n)), _whole_spec((m,)), _whole_spec((m,))],
        out_specs=[part_spec, part_spec],
        out_shape=[jax.ShapeDtypeStruct((chunks, width), jnp.float32)] * 2,
        compiler_params=plgpu.CompilerParams(num_warps=4),
        interpret=interpret,
        name="kzoo_layer_norm_dwdb",
    )(x, dy, mean, rstd)
    # Summing the per-chunk partials in a fixed order keeps the result reproducible.
    return dx, jnp.sum(dw_part, axis=0)[:n], jnp.sum(db_part, axis=0)[:n]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _layer_norm(x, w, b, eps, interpret, max_block):
    return _forward(x, w, b, eps, interpret, max_block)[0]


def _layer_norm_fwd(x, w, b, eps, interpret, max_block):
    y, mean, rstd = _forward(x, w, b, eps, interpret, max_block)
    return y, (x, w, b, mean, rstd)


def _layer_norm_bwd(eps, interpret, max_block, residuals, dy):
    x, w, b, mean, rstd = residuals
    dx, dw, db = _backward(x, w, mean, rstd, dy, interpret, max_block)
    return dx, dw.astype(w.dtype), db.astype(b.dtype)


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


def layer_norm_2d(x, weight=None, bias=None, eps=1e-5, interpret=None, max_block=0):
    """Layer norm over the last axis of the 2-D array ``x`` with the Pallas kernels.

    ``interpret=None`` interprets the kernels unless JAX runs on a GPU. ``max_block`` caps the
    block width (0: up to 64 KiB of input); a small cap makes the tests cover the looped path.
    """
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"layer_norm_2d expects a 2-D array; received shape {x.shape}.")
    if x.dtype not in (jnp.float16, jnp.bfloat16, jnp.float32):
        raise ValueError(f"The Pallas layer norm supports float16/bfloat16/float32, not {x.dtype}.")
    n = x.shape[1]
    if n == 0:
        raise ValueError("Cannot normalise rows of size 0.")
    for name, p in (("gamma", weight), ("beta", bias)):
        if p is not None and math.prod(p.shape) != n:
            raise ValueError(f"`{name}` has {math.prod(p.shape)} elements; expected {n}.")
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    # Missing parameters become constants: their cotangents are computed and dropped.
    w = jnp.ones((n,), jnp.float32) if weight is None else jnp.reshape(weight, (n,))
    b = jnp.zeros((n,), jnp.float32) if bias is None else jnp.reshape(bias, (n,))
    return _layer_norm(x, w, b, float(eps), bool(interpret), int(max_block))


def layer_norm(x, gamma, beta, axes, epsilon, rms_scaling=False, interpret=None, max_block=0):
    """The dispatch entry: layer norm of ``x`` over its trailing ``axes`` (see the module doc)."""
    if rms_scaling:
        raise ValueError("The Pallas layer norm does not implement rms_scaling.")
    ndim = x.ndim
    if tuple(axes) != tuple(range(ndim - len(axes), ndim)):
        raise ValueError(f"The Pallas layer norm normalises trailing axes only; received {axes}.")
    n = math.prod(x.shape[ndim - len(axes) :])
    y = layer_norm_2d(jnp.reshape(x, (-1, n)), gamma, beta, epsilon, interpret, max_block)
    return jnp.reshape(y, x.shape)
