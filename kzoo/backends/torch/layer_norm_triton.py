"""Layer norm and RMS norm for torch tensors on CUDA as Triton kernels, with a fused residual add.

The input is viewed as ``(rows, N)`` with the normalised (trailing) axes flattened into ``N``.
One set of kernels serves four ops through compile-time flags: ``RMS`` (no centring, no beta:
``y = x * rstd * w`` with ``rstd = 1/sqrt(mean(x^2) + eps)``) and ``HAS_R`` (a residual ``r`` is
read with ``x``, ``z = x + r`` is written in the input's dtype and ``z`` is normalised: one read
of each input and one write of each output).

Forward: statistics in float32. When a row fits one block (``N`` up to ``max_block`` elements)
it is loaded once, centred in registers (two-pass variance, no cancellation for inputs with a
large mean) and written: rows of up to 1024 values several to a program (a 2-D tile), wider rows
one per program. Rows wider than a block take a looped path that reads the row three times
(mean, centred variance, output) in blocks of 4096. The per-row mean and 1/std are kept for the
backward pass.

Backward: ``dx = rstd * (w*dy - mean(w*dy) - xhat * mean(w*dy*xhat))`` (RMS: without the
``mean(w*dy)`` term), plus the gradient arriving at ``z`` for the fused residual ops; ``x`` and the
residual get the same gradient. ``dgamma`` and ``dbeta`` are column sums over all rows; each
program owns a contiguous chunk of rows and writes its own float32 partial sums to a private row
of a ``(programs, N)`` buffer, which is then summed in a fixed order. No atomics, so the result is
bitwise reproducible. Rows of up to 8192 values use a single fused kernel (x and dy read once);
wider rows use two kernels: per-row reductions, then an elementwise pass over ``(row chunk,
column block)`` tiles that writes dx and the partial sums.

Which kernel, block and warps a launch uses comes from ``kzoo.backends.common.norm_configs``, which
also drops, per GPU (compute capability), the configurations that spill or fail there (found by
``scripts/tools/gpu_compile_check.py``): on sm_90 and sm_100 the fused backward of 8192 and the
half-precision forward block of 32768.

The kernels are wrapped in ``torch.library`` custom ops with a fake (meta) implementation and an
autograd formula, so they work under autograd and ``torch.compile``. This module imports triton
and is imported only by the dispatch (``kzoo.ops.layer_norm``) on first use.
"""

import functools
import math

import torch
import triton
import triton.language as tl

from kzoo.backends.common import norm_configs

KERNEL_NAMES = (
    "_fwd_fused",
    "_fwd_rows",
    "_fwd_looped",
    "_bwd_fused",
    "_bwd_row_sums",
    "_bwd_tiles",
)


@triton.jit
def _load_sum(X, R, Z, offs, mask, HAS_R: tl.constexpr, WRITE_Z: tl.constexpr):
    """``x`` (or ``x + r`` rounded to the input dtype, stored to ``Z`` when asked) in float32."""
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_R:
        z = (x + tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)).to(Z.dtype.element_ty)
        if WRITE_Z:
            tl.store(Z + offs, z, mask=mask)
        x = z.to(tl.float32)
    return x


@triton.jit
def _affine(y, W, B, cols, mask, HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    if HAS_W:
        y = y * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_B:
        y = y + tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    return y


@triton.jit
def _fwd_fused(
    X,
    R,
    Y,
    Z,
    W,
    B,
    Mean,
    Rstd,
    N,
    eps,
    HAS_R: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    RMS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = _load_sum(X, R, Z, row * N + cols, mask, HAS_R, True)
    if RMS:
        xc = x
    else:
        mean = tl.sum(x, axis=0) / N
        xc = tl.where(mask, x - mean, 0.0)
        tl.store(Mean + row, mean)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / N + eps)
    y = _affine(xc * rstd, W, B, cols, mask, HAS_W, HAS_B)
    tl.store(Y + row * N + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(Rstd + row, rstd)


@triton.jit
def _fwd_rows(
    X,
    R,
    Y,
    Z,
    W,
    B,
    Mean,
    Rstd,
    M,
    N,
    eps,
    HAS_R: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    RMS: tl.constexpr,
    BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    row_mask = rows < M
    col_mask = cols < N
    mask = row_mask[:, None] & col_mask[None, :]
    offs = rows[:, None] * N + cols[None, :]
    x = _load_sum(X, R, Z, offs, mask, HAS_R, True)
    if RMS:
        xc = x
    else:
        mean = tl.sum(x, axis=1) / N
        xc = tl.where(mask, x - mean[:, None], 0.0)
        tl.store(Mean + rows, mean, mask=row_mask)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / N + eps)
    y = _affine(xc * rstd[:, None], W, B, cols[None, :], col_mask[None, :], HAS_W, HAS_B)
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(Rstd + rows, rstd, mask=row_mask)


@triton.jit
def _fwd_looped(
    X,
    R,
    Y,
    Z,
    W,
    B,
    Mean,
    Rstd,
    N,
    eps,
    HAS_R: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    RMS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # The row does not fit a block: each pass re-reads it (x + r is recomputed, not re-read
    # from Z, so no pass depends on another's stores).
    row = tl.program_id(0).to(tl.int64)
    start = row * N
    mean = 0.0
    if not RMS:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for off in range(0, N, BLOCK):
            cols = off + tl.arange(0, BLOCK)
            acc += _load_sum(X, R, Z, start + cols, cols < N, HAS_R, False)
        mean = tl.sum(acc, axis=0) / N
        tl.store(Mean + row, mean)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for off in range(0, N, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        mask = cols < N
        xc = tl.where(mask, _load_sum(X, R, Z, start + cols, mask, HAS_R, False) - mean, 0.0)
        acc += xc * xc
    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / N + eps)
    for off in range(0, N, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        mask = cols < N
        x = _load_sum(X, R, Z, start + cols, mask, HAS_R, True)
        y = _affine((x - mean) * rstd, W, B, cols, mask, HAS_W, HAS_B)
        tl.store(Y + start + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(Rstd + row, rstd)


@triton.jit
def _xhat(X, Mean, Rstd, row, offs, mask, RMS: tl.constexpr):
    """The normalised input of one row (block) in float32, and its 1/std."""
    rstd = tl.load(Rstd + row)
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    if not RMS:
        x = x - tl.load(Mean + row)
    return tl.where(mask, x * rstd, 0.0), rstd


@triton.jit
def _bwd_fused(
    X,
    DY,
    DZ,
    DX,
    W,
    Mean,
    Rstd,
    DW_part,
    DB_part,
    M,
    N,
    rows_per_program,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_DZ: tl.constexpr,
    RMS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    if HAS_W:
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    else:
        w = tl.where(mask, 1.0, 0.0)
    dw_acc = tl.zeros([BLOCK], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK], dtype=tl.float32)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    for row in range(row_start, row_end):
        offs = row * N + cols
        xhat, rstd = _xhat(X, Mean, Rstd, row, offs, mask, RMS)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        wdy = w * dy
        dx = wdy - xhat * (tl.sum(xhat * wdy, axis=0) / N)
        if not RMS:
            dx -= tl.sum(wdy, axis=0) / N
        dx *= rstd
        if HAS_DZ:
            dx += tl.load(DZ + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
        dw_acc += dy * xhat
        if HAS_B:
            db_acc += dy
    tl.store(DW_part + pid * N + cols, dw_acc, mask=mask)
    if HAS_B:
        tl.store(DB_part + pid * N + cols, db_acc, mask=mask)


@triton.jit
def _bwd_row_sums(
    X, DY, W, Mean, Rstd, C1, C2, N, HAS_W: tl.constexpr, RMS: tl.constexpr, BLOCK: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    a1 = tl.zeros([BLOCK], dtype=tl.float32)
    a2 = tl.zeros([BLOCK], dtype=tl.float32)
    for off in range(0, N, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        mask = cols < N
        xhat, _ = _xhat(X, Mean, Rstd, row, row * N + cols, mask, RMS)
        dy = tl.load(DY + row * N + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_W:
            dy = dy * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        a1 += xhat * dy
        if not RMS:
            a2 += dy
    tl.store(C1 + row, tl.sum(a1, axis=0) / N)
    if not RMS:
        tl.store(C2 + row, tl.sum(a2, axis=0) / N)


@triton.jit
def _bwd_tiles(
    X,
    DY,
    DZ,
    DX,
    W,
    Mean,
    Rstd,
    C1,
    C2,
    DW_part,
    DB_part,
    M,
    N,
    rows_per_program,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_DZ: tl.constexpr,
    RMS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N
    if HAS_W:
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    else:
        w = tl.where(mask, 1.0, 0.0)
    dw_acc = tl.zeros([BLOCK], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK], dtype=tl.float32)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    for row in range(row_start, row_end):
        offs = row * N + cols
        xhat, rstd = _xhat(X, Mean, Rstd, row, offs, mask, RMS)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        dx = w * dy - xhat * tl.load(C1 + row)
        if not RMS:
            dx -= tl.load(C2 + row)
        dx *= rstd
        if HAS_DZ:
            dx += tl.load(DZ + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
        dw_acc += dy * xhat
        if HAS_B:
            db_acc += dy
    tl.store(DW_part + pid * N + cols, dw_acc, mask=mask)
    if HAS_B:
        tl.store(DB_part + pid * N + cols, db_acc, mask=mask)


@functools.cache
def _capability(index):
    major, minor = torch.cuda.get_device_capability(index)
    return 10 * major + minor


def _target(device):
    """The compute capability the launch configurations are chosen for (``None``: no GPU)."""
    if device.type != "cuda":
        return None
    return _capability(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _multiprocessors(index):
    return torch.cuda.get_device_properties(index).multi_processor_count


def _programs(rows, device, num_warps):
    """Backward programs: enough warps to fill every multiprocessor (64 warps each), no more."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        target = _multiprocessors(index) * max(1, 64 // num_warps)
    else:
        # The interpreter runs programs one after another; a few still exercise the reduction.
        target = 4
    return max(1, min(rows, target))


def _stats(x, rows, rms):
    """The per-row float32 statistics buffers: the mean (empty for RMS) and 1/std."""
    mean = torch.empty((0 if rms else rows,), dtype=torch.float32, device=x.device)
    return mean, torch.empty((rows,), dtype=torch.float32, device=x.device)


@torch.library.custom_op("kzoo::norm_fwd", mutates_args=())
def _norm_fwd(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    rms: bool,
    max_block: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y, z, mean, rstd)``: ``z = x + residual`` (empty without a residual), ``y = norm(z)``."""
    rows, n = x.shape
    y = torch.empty_like(x)
    z = torch.empty_like(x) if residual is not None else x.new_empty((0,))
    mean, rstd = _stats(x, rows, rms)
    if rows == 0:
        return y, z, mean, rstd
    # Absent tensors are never read (their flags are off); any pointer fills their slot.
    r = residual if residual is not None else x
    w = weight if weight is not None else rstd
    b = bias if bias is not None else rstd
    flags = {
        "HAS_R": residual is not None,
        "HAS_W": weight is not None,
        "HAS_B": bias is not None,
        "RMS": rms,
    }
    pointers = (x, r, y, z if residual is not None else y, w, b, mean if not rms else rstd, rstd)
    config = norm_configs.triton_forward(n, x.element_size(), max_block, _target(x.device))
    if config.kernel == "_fwd_rows":
        # Narrow rows: several per program, so that a program still moves a useful tile.
        _fwd_rows[(triton.cdiv(rows, config.rows),)](
            *pointers,
            rows,
            n,
            eps,
            **flags,
            BLOCK=config.block,
            ROWS=config.rows,
            num_warps=config.warps,
        )
        return y, z, mean, rstd
    kernel = _fwd_fused if config.kernel == "_fwd_fused" else _fwd_looped
    kernel[(rows,)](
        *pointers,
        n,
        eps,
        **flags,
        BLOCK=config.block,
        num_warps=config.warps,
    )
    return y, z, mean, rstd


@_norm_fwd.register_fake
def _(x, residual, weight, bias, eps, rms, max_block):
    rows = x.shape[0]
    return (
        torch.empty_like(x),
        torch.empty_like(x) if residual is not None else x.new_empty((0,)),
        x.new_empty((0 if rms else rows,), dtype=torch.float32),
        x.new_empty((rows,), dtype=torch.float32),
    )


@torch.library.custom_op("kzoo::norm_bwd", mutates_args=())
def _norm_bwd(
    dy: torch.Tensor,
    dz: torch.Tensor | None,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    rms: bool,
    has_bias: bool,
    max_block: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dgamma, dbeta)`` (``dbeta`` empty without a bias); ``dz`` is added to ``dx``."""
    rows, n = x.shape
    dy = dy.contiguous()
    dz = None if dz is None else dz.contiguous()
    dx = torch.empty_like(x)
    configs = norm_configs.triton_backward(n, x.element_size(), max_block, _target(x.device))
    fused = len(configs) == 1
    programs = _programs(rows, x.device, configs[-1].warps)
    # Every program writes its whole row of partial sums (zeros when it has no rows), so the
    # buffers need no clearing unless no kernel runs at all.
    alloc = torch.empty if rows > 0 else torch.zeros
    dw_part = alloc((programs, n), dtype=torch.float32, device=x.device)
    db_part = alloc((programs if has_bias else 0, n), dtype=torch.float32, device=x.device)
    if rows > 0:
        rows_per_program = math.ceil(rows / programs)
        w = weight if weight is not None else rstd
        stats = (w, mean if not rms else rstd, rstd)
        flags = {"HAS_W": weight is not None, "RMS": rms}
        part_flags = {**flags, "HAS_B": has_bias, "HAS_DZ": dz is not None}
        dz_ptr = dz if dz is not None else dy
        db_ptr = db_part if has_bias else dw_part
        if fused:
            _bwd_fused[(programs,)](
                x,
                dy,
                dz_ptr,
                dx,
                *stats,
                dw_part,
                db_ptr,
                rows,
                n,
                rows_per_program,
                **part_flags,
                BLOCK=configs[0].block,
                num_warps=configs[0].warps,
            )
        else:
            sums, tiles = configs
            c1 = torch.empty((rows,), dtype=torch.float32, device=x.device)
            c2 = torch.empty((0 if rms else rows,), dtype=torch.float32, device=x.device)
            c2_ptr = c2 if not rms else c1
            _bwd_row_sums[(rows,)](
                x,
                dy,
                *stats,
                c1,
                c2_ptr,
                n,
                **flags,
                BLOCK=sums.block,
                num_warps=sums.warps,
            )
            _bwd_tiles[(programs, triton.cdiv(n, tiles.block))](
                x,
                dy,
                dz_ptr,
                dx,
                *stats,
                c1,
                c2_ptr,
                dw_part,
                db_ptr,
                rows,
                n,
                rows_per_program,
                **part_flags,
                BLOCK=tiles.block,
                num_warps=tiles.warps,
            )
    # A fixed-order sum of the per-program partials: deterministic, unlike atomics.
    dw = dw_part.sum(dim=0)
    db = db_part.sum(dim=0) if has_bias else db_part.new_empty((0,))
    return dx, dw, db


@_norm_bwd.register_fake
def _(dy, dz, x, weight, mean, rstd, rms, has_bias, max_block):
    n = x.shape[1]
    return (
        torch.empty_like(x),
        x.new_empty((n,), dtype=torch.float32),
        x.new_empty((n if has_bias else 0,), dtype=torch.float32),
    )


def _setup_context(ctx, inputs, output):
    x, residual, weight, bias, _, rms, max_block = inputs
    _, z, mean, rstd = output
    # The backward reads the normalised input: the sum when there is a residual.
    ctx.save_for_backward(z if residual is not None else x, weight, mean, rstd)
    ctx.set_materialize_grads(False)
    ctx.rms = rms
    ctx.max_block = max_block
    ctx.dtypes = tuple(None if t is None else t.dtype for t in (residual, weight, bias))


def _backward(ctx, dy, dz, _dmean, _drstd):
    x, weight, mean, rstd = ctx.saved_tensors
    r_dtype, w_dtype, b_dtype = ctx.dtypes
    if dy is None:
        dy = torch.zeros_like(x)
    dz = dz if r_dtype is not None else None
    dx, dw, db = _norm_bwd(
        dy, dz, x, weight, mean, rstd, ctx.rms, b_dtype is not None, ctx.max_block
    )
    dr = dx.to(r_dtype) if r_dtype is not None else None
    dw = dw.to(w_dtype) if w_dtype is not None else None
    db = db.to(b_dtype) if b_dtype is not None else None
    return dx, dr, dw, db, None, None, None


_norm_fwd.register_autograd(_backward, setup_context=_setup_context)


def norm_2d(x, residual=None, weight=None, bias=None, eps=1e-5, rms=False, max_block=0):
    """Normalise the rows of the 2-D torch tensor ``x`` (plus ``residual``) with the kernels.

    Returns ``(y, z)``: ``y`` the normalised rows, ``z = x + residual`` (``None`` without a
    residual). ``rms=True`` is RMS norm (no centring; ``bias`` must be ``None``). ``max_block``
    caps the block width in elements (0: as wide as 64 KiB of input allows); a smaller cap forces
    the looped paths, which the tests use to cover them with small rows.
    """
    if x.ndim != 2:
        raise ValueError(f"norm_2d expects a 2-D tensor; received shape {tuple(x.shape)}.")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"The Triton norms support float16/bfloat16/float32, not {x.dtype}.")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError(
            f"`residual` must match x's shape {tuple(x.shape)} and dtype {x.dtype}; received "
            f"{tuple(residual.shape)} {residual.dtype}."
        )
    if rms and bias is not None:
        raise ValueError("RMS norm takes no `beta`.")
    n = x.shape[1]
    if n == 0:
        raise ValueError("Cannot normalise rows of size 0.")
    for name, p in (("gamma", weight), ("beta", bias)):
        if p is not None and p.numel() != n:
            raise ValueError(f"`{name}` has {p.numel()} elements; expected {n}.")
    weight = None if weight is None else weight.reshape(n).contiguous()
    bias = None if bias is None else bias.reshape(n).contiguous()
    residual = None if residual is None else residual.contiguous()
    y, z, _, _ = _norm_fwd(x.contiguous(), residual, weight, bias, float(eps), rms, int(max_block))
    return y, (z if residual is not None else None)


def layer_norm_2d(x, weight=None, bias=None, eps=1e-5, max_block=0):
    """Layer norm over the last axis of the 2-D torch tensor ``x`` (see ``norm_2d``)."""
    return norm_2d(x, None, weight, bias, eps, False, max_block)[0]


def _rows(x, axes, what):
    ndim = x.ndim
    if tuple(axes) != tuple(range(ndim - len(axes), ndim)):
        raise ValueError(f"The Triton {what} normalises trailing axes only; received {axes}.")
    return math.prod(x.shape[ndim - len(axes) :])


def _nd(x, residual, gamma, beta, axes, epsilon, rms, max_block, what):
    n = _rows(x, axes, what)
    r = None if residual is None else residual.reshape(-1, n)
    y, z = norm_2d(x.reshape(-1, n), r, gamma, beta, epsilon, rms, max_block)
    y = y.reshape(x.shape)
    return y if residual is None else (y, z.reshape(x.shape))


def layer_norm(x, gamma, beta, axes, epsilon, rms_scaling=False, max_block=0):
    """The dispatch entry: layer norm of ``x`` over its trailing ``axes`` (see the module doc)."""
    if rms_scaling:
        raise ValueError("The Triton layer norm does not implement rms_scaling.")
    return _nd(x, None, gamma, beta, axes, epsilon, False, max_block, "layer norm")


def rms_norm(x, gamma, axes, epsilon, max_block=0):
    """The dispatch entry of ``rms_norm``: RMS norm over the trailing ``axes``."""
    return _nd(x, None, gamma, None, axes, epsilon, True, max_block, "RMS norm")


def add_layer_norm(x, residual, gamma, beta, axes, epsilon, max_block=0):
    """The dispatch entry of ``add_layer_norm``: ``(layer_norm(x + residual), x + residual)``."""
    return _nd(x, residual, gamma, beta, axes, epsilon, False, max_block, "layer norm")


def add_rms_norm(x, residual, gamma, axes, epsilon, max_block=0):
    """The dispatch entry of ``add_rms_norm``: ``(rms_norm(x + residual), x + residual)``."""
    return _nd(x, residual, gamma, None, axes, epsilon, True, max_block, "RMS norm")
