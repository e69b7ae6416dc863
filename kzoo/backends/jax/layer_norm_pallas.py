"""Layer norm and RMS norm for JAX on GPU as Pallas kernels, with a fused residual add.

Forward and backward run under ``jax.custom_vjp``. The input is viewed as ``(rows, N)`` with the
normalised (trailing) axes flattened into ``N``. Rows are independent programs (``grid=(rows,)``);
inside a program a row is read in blocks of a power-of-two width with masked loads, so any ``N``
works: one block when the row fits (up to 64 KiB of input), a loop over blocks of 4096 otherwise
(block widths and warps from ``kzoo.backends.common.norm_configs``, which drops per GPU what spills
there: the one-block dx kernel of 32768 half-precision values on sm_90 and sm_100).
Statistics are float32; layer norm's are two-pass (mean, then the mean of squared deviations),
which keeps inputs with a large mean accurate. The same kernels serve four ops through static
flags: ``rms`` (no centring and no beta) and ``residual`` (``z = x + residual`` is written in
the input's dtype and normalised, reading each input and writing each output once).

Backward: a per-row kernel writes ``dx = rstd * (w*dy - mean(w*dy) - xhat * mean(w*dy*xhat))``
(RMS: without ``mean(w*dy)``), plus the cotangent of ``z`` for the residual ops; a second kernel
tiles ``(row chunk, column block)`` and writes each chunk's float32 partial sums of ``dy * xhat``
and ``dy`` to its own row of a buffer, which is summed in a fixed order. No atomics, so
``dgamma``/``dbeta`` are reproducible.

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

from kzoo.backends.common import norm_configs

# Rows and columns of one tile of the dgamma/dbeta kernel.
_TILE_ROWS = norm_configs.PALLAS_TILE_ROWS
_TILE_COLS = norm_configs.PALLAS_TILE_COLS
# Upper bound on row chunks (programs along the rows) of the dgamma/dbeta kernel.
_MAX_CHUNKS = 512


def _target():
    """The compute capability of JAX's first GPU (``None`` without one)."""
    try:
        device = jax.local_devices(backend="gpu")[0]
    except RuntimeError:
        return None
    capability = getattr(device, "compute_capability", None)
    if not capability:
        return None
    major, _, minor = str(capability).partition(".")
    return 10 * int(major) + int(minor or 0)


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


def _take(refs, *present):
    """Split a kernel's ``refs`` into one per name, ``None`` for the absent ones."""
    refs = iter(refs)
    return [next(refs) if p else None for p in present]


def _fwd_kernel(*refs, n, eps, block, has_r, rms):
    x_ref, r_ref, w_ref, b_ref, y_ref, z_ref, mean_ref, rstd_ref = _take(
        refs, True, has_r, True, not rms, True, has_r, not rms, True
    )

    def load(c, write_z):
        x = _load_row(x_ref, c, n)
        if has_r:
            z = (x + _load_row(r_ref, c, n)).astype(z_ref.dtype)
            if write_z:
                plgpu.store(z_ref.at[c], z, mask=c < n)
            x = z.astype(jnp.float32)
        return x

    def write(c, xc, rstd):
        y = xc * rstd * _load_row(w_ref, c, n)
        if not rms:
            y = y + _load_row(b_ref, c, n)
        plgpu.store(y_ref.at[c], y.astype(y_ref.dtype), mask=c < n)

    zeros = jnp.zeros((block,), jnp.float32)
    mean = 0.0
    if pl.cdiv(n, block) == 1:
        # The whole row fits one block: read it once and centre it in registers.
        cols = _cols(0, block)
        xc = load(cols, True)
        if not rms:
            mean = jnp.sum(xc) / n
            xc = jnp.where(cols < n, xc - mean, 0.0)
        rstd = 1.0 / jnp.sqrt(jnp.sum(xc * xc) / n + eps)
        write(cols, xc, rstd)
    else:
        # Each pass re-reads the row (and recomputes x + residual; only the last writes z).
        if not rms:
            mean = jnp.sum(_fold(n, block, lambda c, acc: acc + load(c, False), zeros)) / n

        def sq(c, acc):
            d = jnp.where(c < n, load(c, False) - mean, 0.0)
            return acc + d * d

        rstd = 1.0 / jnp.sqrt(jnp.sum(_fold(n, block, sq, zeros)) / n + eps)

        def write_block(c, carry):
            write(c, load(c, True) - mean, rstd)
            return carry

        _fold(n, block, write_block, 0)
    if not rms:
        mean_ref[...] = mean
    rstd_ref[...] = rstd


def _dx_kernel(*refs, n, block, rms, has_dz):
    x_ref, dy_ref, dz_ref, w_ref, mean_ref, rstd_ref, dx_ref = _take(
        refs, True, True, has_dz, True, not rms, True, True
    )
    mean = 0.0 if rms else mean_ref[...]
    rstd = rstd_ref[...]

    def terms(c):
        xhat = jnp.where(c < n, (_load_row(x_ref, c, n) - mean) * rstd, 0.0)
        wdy = _load_row(dy_ref, c, n) * _load_row(w_ref, c, n)
        return xhat, wdy

    def write(c, xhat, wdy, c1, c2):
        dx = (wdy - (xhat * c1 + c2)) * rstd
        if has_dz:
            dx = dx + _load_row(dz_ref, c, n)
        plgpu.store(dx_ref.at[c], dx.astype(dx_ref.dtype), mask=c < n)

    if pl.cdiv(n, block) == 1:
        # One block: load x and dy once and keep them in registers for both passes.
        cols = _cols(0, block)
        xhat, wdy = terms(cols)
        c2 = 0.0 if rms else jnp.sum(wdy) / n
        write(cols, xhat, wdy, jnp.sum(xhat * wdy) / n, c2)
        return

    def sums(c, acc):
        xhat, wdy = terms(c)
        return acc[0] + xhat * wdy, acc[1] + wdy

    zeros = jnp.zeros((block,), jnp.float32)
    a1, a2 = _fold(n, block, sums, (zeros, zeros))
    c1 = jnp.sum(a1) / n
    c2 = 0.0 if rms else jnp.sum(a2) / n

    def write_block(c, carry):
        write(c, *terms(c), c1, c2)
        return carry

    _fold(n, block, write_block, 0)


def _dwdb_kernel(*refs, m, n, chunk, rms):
    x_ref, dy_ref, mean_ref, rstd_ref, dw_ref, db_ref = _take(
        refs, True, True, not rms, True, True, not rms
    )
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
        if not rms:
            x = x - plgpu.load(mean_ref.at[rows], mask=row_mask, other=0.0)[:, None]
        rstd = plgpu.load(rstd_ref.at[rows], mask=row_mask, other=0.0)
        xhat = jnp.where(mask, x * rstd[:, None], 0.0)
        return (acc[0] + dy * xhat,) + (() if rms else (acc[1] + dy,))

    zeros = jnp.zeros((_TILE_ROWS, _TILE_COLS), jnp.float32)
    sums = lax.fori_loop(0, chunk // _TILE_ROWS, body, (zeros,) * (1 if rms else 2))
    dw_ref[...] = jnp.sum(sums[0], axis=0)
    if not rms:
        db_ref[...] = jnp.sum(sums[1], axis=0)


def _row_spec(n):
    return pl.BlockSpec((None, n), lambda i: (i, 0))


def _scalar_spec():
    return pl.BlockSpec((None,), lambda i: (i,))


def _whole_spec(shape):
    return pl.BlockSpec(shape, lambda *_: (0,) * len(shape))


def _forward(x, r, w, b, eps, rms, interpret, max_block, target):
    """``(y, z, mean, rstd)``; ``z`` is ``None`` without a residual, ``mean`` for RMS."""
    m, n = x.shape
    has_r = r is not None
    if m == 0:
        empty = jnp.zeros((0,), jnp.float32)
        return jnp.zeros_like(x), (jnp.zeros_like(x) if has_r else None), empty, empty
    config = norm_configs.pallas_forward(n, x.dtype.itemsize, max_block, target)
    row = jax.ShapeDtypeStruct((m, n), x.dtype)
    stat = jax.ShapeDtypeStruct((m,), jnp.float32)
    inputs = [x] + ([r] if has_r else []) + [w] + ([] if rms else [b])
    in_specs = [_row_spec(n)] * (2 if has_r else 1) + [_whole_spec((n,))] * (1 if rms else 2)
    outputs = [row] + ([row] if has_r else []) + ([] if rms else [stat]) + [stat]
    out_specs = [_row_spec(n)] * (2 if has_r else 1) + [_scalar_spec()] * (1 if rms else 2)
    results = iter(
        pl.pallas_call(
            functools.partial(_fwd_kernel, n=n, eps=eps, block=config.block, has_r=has_r, rms=rms),
            grid=(m,),
            in_specs=in_specs,
            out_specs=out_specs,
            out_shape=outputs,
            compiler_params=plgpu.CompilerParams(num_warps=config.warps),
            interpret=interpret,
            name=f"kzoo_{'rms' if rms else 'layer'}_norm_fwd",
        )(*inputs)
    )
    return _take(results, True, has_r, not rms, True)


def _backward(x, w, mean, rstd, dy, dz, rms, interpret, max_block, target):
    m, n = x.shape
    if m == 0:
        zeros = jnp.zeros((n,), jnp.float32)
        return jnp.zeros_like(x), zeros, zeros
    config = norm_configs.pallas_dx(n, x.dtype.itemsize, max_block, target)
    has_dz = dz is not None
    kind = "rms" if rms else "layer"
    stats = ([] if rms else [mean]) + [rstd]
    dx = pl.pallas_call(
        functools.partial(_dx_kernel, n=n, block=config.block, rms=rms, has_dz=has_dz),
        grid=(m,),
        in_specs=[_row_spec(n)] * (3 if has_dz else 2)
        + [_whole_spec((n,))]
        + [_scalar_spec()] * len(stats),
        out_specs=_row_spec(n),
        out_shape=jax.ShapeDtypeStruct((m, n), x.dtype),
        compiler_params=plgpu.CompilerParams(num_warps=config.warps),
        interpret=interpret,
        name=f"kzoo_{kind}_norm_dx",
    )(x, dy, *([dz] if has_dz else []), w, *stats)

    tiles_of_rows = pl.cdiv(m, _TILE_ROWS)
    chunks = min(tiles_of_rows, _MAX_CHUNKS)
    chunk = pl.cdiv(tiles_of_rows, chunks) * _TILE_ROWS
    chunks = pl.cdiv(m, chunk)
    col_blocks = pl.cdiv(n, _TILE_COLS)
    width = col_blocks * _TILE_COLS
    part_spec = pl.BlockSpec((None, _TILE_COLS), lambda g, j: (g, j))
    parts = 1 if rms else 2
    sums = pl.pallas_call(
        functools.partial(_dwdb_kernel, m=m, n=n, chunk=chunk, rms=rms),
        grid=(chunks, col_blocks),
        in_specs=[_whole_spec((m, n))] * 2 + [_whole_spec((m,))] * len(stats),
        out_specs=[part_spec] * parts,
        out_shape=[jax.ShapeDtypeStruct((chunks, width), jnp.float32)] * parts,
        compiler_params=plgpu.CompilerParams(num_warps=norm_configs.PALLAS_DWDB_WARPS),
        interpret=interpret,
        name=f"kzoo_{kind}_norm_dwdb",
    )(x, dy, *stats)
    # Summing the per-chunk partials in a fixed order keeps the result reproducible.
    dw = jnp.sum(sums[0], axis=0)[:n]
    return dx, dw, (None if rms else jnp.sum(sums[1], axis=0)[:n])


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _norm(x, r, w, b, eps, rms, interpret, max_block, target):
    y, z, _, _ = _forward(x, r, w, b, eps, rms, interpret, max_block, target)
    return y, z


def _norm_fwd(x, r, w, b, eps, rms, interpret, max_block, target):
    y, z, mean, rstd = _forward(x, r, w, b, eps, rms, interpret, max_block, target)
    # The backward reads the normalised input: the sum when there is a residual.
    return (y, z), (x if z is None else z, w, b, mean, rstd, r is not None)


def _norm_bwd(eps, rms, interpret, max_block, target, residuals, cotangents):
    x, w, b, mean, rstd, has_r = residuals
    dy, dz = cotangents
    dz = dz if has_r else None
    dx, dw, db = _backward(x, w, mean, rstd, dy, dz, rms, interpret, max_block, target)
    return (
        dx,
        dx if has_r else None,
        dw.astype(w.dtype),
        None if b is None else db.astype(b.dtype),
    )


_norm.defvjp(_norm_fwd, _norm_bwd)


def norm_2d(
    x,
    residual=None,
    weight=None,
    bias=None,
    eps=1e-5,
    rms=False,
    interpret=None,
    max_block=0,
    target=None,
):
    """Normalise the rows of the 2-D array ``x`` (plus ``residual``) with the Pallas kernels.

    Returns ``(y, z)``: ``y`` the normalised rows, ``z = x + residual`` (``None`` without a
    residual). ``rms=True`` is RMS norm (no centring; ``bias`` must be ``None``).
    ``interpret=None`` interprets the kernels unless JAX runs on a GPU. ``max_block`` caps the
    block width (0: up to 64 KiB of input); a small cap makes the tests cover the looped path.
    ``target`` is the compute capability (e.g. 90) whose configurations are chosen
    (``kzoo.backends.common.norm_configs``; default: the GPU's, none when interpreting), which is how
    the compile check lowers for a GPU that is not there.
    """
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"norm_2d expects a 2-D array; received shape {x.shape}.")
    if x.dtype not in (jnp.float16, jnp.bfloat16, jnp.float32):
        raise ValueError(f"The Pallas norms support float16/bfloat16/float32, not {x.dtype}.")
    if residual is not None:
        residual = jnp.asarray(residual)
        if residual.shape != x.shape or residual.dtype != x.dtype:
            raise ValueError(
                f"`residual` must match x's shape {x.shape} and dtype {x.dtype}; received "
                f"{residual.shape} {residual.dtype}."
            )
    if rms and bias is not None:
        raise ValueError("RMS norm takes no `beta`.")
    n = x.shape[1]
    if n == 0:
        raise ValueError("Cannot normalise rows of size 0.")
    for name, p in (("gamma", weight), ("beta", bias)):
        if p is not None and math.prod(p.shape) != n:
            raise ValueError(f"`{name}` has {math.prod(p.shape)} elements; expected {n}.")
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    if target is None and not interpret:
        target = _target()
    # Missing parameters become constants: their cotangents are computed and dropped.
    w = jnp.ones((n,), jnp.float32) if weight is None else jnp.reshape(weight, (n,))
    b = None if rms else jnp.zeros((n,), jnp.float32) if bias is None else jnp.reshape(bias, (n,))
    target = None if target is None else int(target)
    return _norm(x, residual, w, b, float(eps), bool(rms), bool(interpret), int(max_block), target)


def layer_norm_2d(x, weight=None, bias=None, eps=1e-5, interpret=None, max_block=0):
    """Layer norm over the last axis of the 2-D array ``x`` (see ``norm_2d``)."""
    return norm_2d(x, None, weight, bias, eps, False, interpret, max_block)[0]


def _nd(x, residual, gamma, beta, axes, epsilon, rms, interpret, max_block):
    ndim = x.ndim
    if tuple(axes) != tuple(range(ndim - len(axes), ndim)):
        what = "RMS norm" if rms else "layer norm"
        raise ValueError(f"The Pallas {what} normalises trailing axes only; received {axes}.")
    n = math.prod(x.shape[ndim - len(axes) :])
    r = None if residual is None else jnp.reshape(residual, (-1, n))
    y, z = norm_2d(jnp.reshape(x, (-1, n)), r, gamma, beta, epsilon, rms, interpret, max_block)
    y = jnp.reshape(y, x.shape)
    return y if residual is None else (y, jnp.reshape(z, x.shape))


def layer_norm(x, gamma, beta, axes, epsilon, rms_scaling=False, interpret=None, max_block=0):
    """The dispatch entry: layer norm of ``x`` over its trailing ``axes`` (see the module doc)."""
    if rms_scaling:
        raise ValueError("The Pallas layer norm does not implement rms_scaling.")
    return _nd(x, None, gamma, beta, axes, epsilon, False, interpret, max_block)


def rms_norm(x, gamma, axes, epsilon, interpret=None, max_block=0):
    """The dispatch entry of ``rms_norm``: RMS norm over the trailing ``axes``."""
    return _nd(x, None, gamma, None, axes, epsilon, True, interpret, max_block)


def add_layer_norm(x, residual, gamma, beta, axes, epsilon, interpret=None, max_block=0):
    """The dispatch entry of ``add_layer_norm``: ``(layer_norm(x + residual), x + residual)``."""
    return _nd(x, residual, gamma, beta, axes, epsilon, False, interpret, max_block)


def add_rms_norm(x, residual, gamma, axes, epsilon, interpret=None, max_block=0):
    """The dispatch entry of ``add_rms_norm``: ``(rms_norm(x + residual), x + residual)``."""
    return _nd(x, residual, gamma, None, axes, epsilon, True, interpret, max_block)
