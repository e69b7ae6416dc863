"""Layer norm for torch tensors on CUDA as Triton kernels (forward and backward).

The input is viewed as ``(rows, N)`` with the normalised (trailing) axes flattened into ``N``.

Forward: statistics in float32. When a row fits one block (``N`` up to ``max_block`` elements)
it is loaded once, centred in registers (two-pass variance, no cancellation for inputs with a
large mean) and written: rows of up to 1024 values several to a program (a 2-D tile), wider rows
one per program. Rows wider than a block take a looped path that reads the row three times
(mean, centred variance, output). The per-row mean and 1/std are kept for the backward pass.

Backward: ``dx = rstd * (w*dy - mean(w*dy) - xhat * mean(w*dy*xhat))``. ``dgamma`` and ``dbeta``
are column sums over all rows; each program owns a contiguous chunk of rows and writes its own
float32 partial sums to a private row of a ``(programs, N)`` buffer, which is then summed in a
fixed order. No atomics, so the result is bitwise reproducible. Rows of up to 8192 values use a
single fused kernel (x and dy read once); wider rows use two kernels: per-row reductions, then an
elementwise pass over ``(row chunk, column block)`` tiles that writes dx and the partial sums.

The kernels are wrapped in ``torch.library`` custom ops with a fake (meta) implementation and an
autograd formula, so they work under autograd and ``torch.compile``. This module imports triton
and is imported only by the dispatch (``kzoo.ops.layer_norm``) on first use.
"""

import functools
import math

import torch
import triton
import triton.language as tl

# A row is held in registers when it fits this many bytes (per input tensor).
_MAX_FUSED_BYTES = 65536
# Rows of at most a quarter of this many elements are normalised several to a program, in tiles
# of up to this many elements and at most _MAX_TILE_ROWS rows.
_MAX_ROWS_TILE = 4096
_MAX_TILE_ROWS = 128
# The fused backward keeps x, dy and two float32 accumulators per column live: keep it smaller.
_MAX_FUSED_BWD_ELEMENTS = 8192


@triton.jit
def _fwd_fused(
    X, Y, W, B, Mean, Rstd, N, eps, HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(X + row * N + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / N
    xc = tl.where(mask, x - mean, 0.0)
    var = tl.sum(xc * xc, axis=0) / N
    rstd = 1.0 / tl.sqrt(var + eps)
    y = xc * rstd
    if HAS_W:
        y = y * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_B:
        y = y + tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * N + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(Mean + row, mean)
    tl.store(Rstd + row, rstd)


@triton.jit
def _fwd_rows(
    X,
    Y,
    W,
    B,
    Mean,
    Rstd,
    M,
    N,
    eps,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    row_mask = rows < M
    col_mask = cols < N
    mask = row_mask[:, None] & col_mask[None, :]
    offs = rows[:, None] * N + cols[None, :]
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / N
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / N + eps)
    y = xc * rstd[:, None]
    if HAS_W:
        y = y * tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        y = y + tl.load(B + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(Mean + rows, mean, mask=row_mask)
    tl.store(Rstd + rows, rstd, mask=row_mask)


@triton.jit
def _fwd_looped(
    X, Y, W, B, Mean, Rstd, N, eps, HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    X += row * N
    Y += row * N
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for off in range(0, N, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        acc += tl.load(X + cols, mask=cols < N, other=0.0).to(tl.float32)
    mean = tl.sum(acc, axis=0) / N
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for off in range(0, N, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        mask = cols < N
        x = tl.load(X + cols, mask=mask, other=0.0).to(tl.float32)
        xc = tl.where(mask, x - mean, 0.0)
        acc += xc * xc
    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / N + eps)
    for off in range(0, N, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        mask = cols < N
        x = tl.load(X + cols, mask=mask, other=0.0).to(tl.float32)
        y = (x - mean) * rstd
        if HAS_W:
            y = y * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_B:
            y = y + tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(Mean + row, mean)
    tl.store(Rstd + row, rstd)


@triton.jit
def _bwd_fused(
    X,
    DY,
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
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(Mean + row)
        rstd = tl.load(Rstd + row)
        xhat = tl.where(mask, (x - mean) * rstd, 0.0)
        wdy = w * dy
        c1 = tl.sum(xhat * wdy, axis=0) / N
        c2 = tl.sum(wdy, axis=0) / N
        dx = (wdy - (xhat * c1 + c2)) * rstd
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
        dw_acc += dy * xhat
        db_acc += dy
    tl.store(DW_part + pid * N + cols, dw_acc, mask=mask)
    tl.store(DB_part + pid * N + cols, db_acc, mask=mask)


@triton.jit
def _bwd_row_sums(X, DY, W, Mean, Rstd, C1, C2, N, HAS_W: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    mean = tl.load(Mean + row)
    rstd = tl.load(Rstd + row)
    a1 = tl.zeros([BLOCK], dtype=tl.float32)
    a2 = tl.zeros([BLOCK], dtype=tl.float32)
    for off in range(0, N, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        mask = cols < N
        x = tl.load(X + row * N + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * N + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_W:
            dy = dy * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        xhat = tl.where(mask, (x - mean) * rstd, 0.0)
        a1 += xhat * dy
        a2 += dy
    tl.store(C1 + row, tl.sum(a1, axis=0) / N)
    tl.store(C2 + row, tl.sum(a2, axis=0) / N)


@triton.jit
def _bwd_tiles(
    X,
    DY,
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
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(Rstd + row)
        xhat = tl.where(mask, (x - tl.load(Mean + row)) * rstd, 0.0)
        dx = (w * dy - (xhat * tl.load(C1 + row) + tl.load(C2 + row))) * rstd
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
        dw_acc += dy * xhat
        db_acc += dy
    tl.store(DW_part + pid * N + cols, dw_acc, mask=mask)
    tl.store(DB_part + pid * N + cols, db_acc, mask=mask)


def _block(n, element_size, max_block):
    limit = _MAX_FUSED_BYTES // element_size if max_block is None or max_block <= 0 else max_block
    limit = 1 << (max(int(limit), 1).bit_length() - 1)  # a power of two, as tl.arange needs
    return min(triton.next_power_of_2(n), limit)


def _num_warps(block, element_size):
    return max(1, min(16, block * element_size // 256))


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


@torch.library.custom_op("kzoo::layer_norm_fwd", mutates_args=())
def _layer_norm_fwd(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    max_block: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows, n = x.shape
    y = torch.empty_like(x)
    mean = torch.empty((rows,), dtype=torch.float32, device=x.device)
    rstd = torch.empty((rows,), dtype=torch.float32, device=x.device)
    if rows == 0:
        return y, mean, rstd
    w = weight if weight is not None else mean
    b = bias if bias is not None else mean
    block = _block(n, x.element_size(), max_block)
    if block >= n and block <= _MAX_ROWS_TILE // 4:
        # Narrow rows: several per program, so that a program still moves a useful tile.
        tile_rows = min(_MAX_TILE_ROWS, _MAX_ROWS_TILE // block)
        _fwd_rows[(triton.cdiv(rows, tile_rows),)](
            x,
            y,
            w,
            b,
            mean,
            rstd,
            rows,
            n,
            eps,
            HAS_W=weight is not None,
            HAS_B=bias is not None,
            BLOCK=block,
            ROWS=tile_rows,
            num_warps=max(1, min(8, tile_rows * block * x.element_size() // 512)),
        )
        return y, mean, rstd
    kernel = _fwd_fused if block >= n else _fwd_looped
    kernel[(rows,)](
        x,
        y,
        w,
        b,
        mean,
        rstd,
        n,
        eps,
        HAS_W=weight is not None,
        HAS_B=bias is not None,
        BLOCK=block,
        num_warps=_num_warps(block, x.element_size()),
    )
    return y, mean, rstd


@_layer_norm_fwd.register_fake
def _(x, weight, bias, eps, max_block):
    rows = x.shape[0]
    return (
        torch.empty_like(x),
        x.new_empty((rows,), dtype=torch.float32),
        x.new_empty((rows,), dtype=torch.float32),
    )


@torch.library.custom_op("kzoo::layer_norm_bwd", mutates_args=())
def _layer_norm_bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    max_block: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows, n = x.shape
    dy = dy.contiguous()
    dx = torch.empty_like(x)
    fused = triton.next_power_of_2(n) <= min(
        _MAX_FUSED_BWD_ELEMENTS, _block(n, x.element_size(), max_block)
    )
    tile = min(_block(n, x.element_size(), max_block), 1024)
    warps = _num_warps(triton.next_power_of_2(n) if fused else tile, 4)
    programs = _programs(rows, x.device, warps)
    # Every program writes its whole row of partial sums (zeros when it has no rows), so the
    # buffers need no clearing unless no kernel runs at all.
    alloc = torch.empty if rows > 0 else torch.zeros
    dw_part = alloc((programs, n), dtype=torch.float32, device=x.device)
    db_part = alloc((programs, n), dtype=torch.float32, device=x.device)
    if rows > 0:
        rows_per_program = math.ceil(rows / programs)
        w = weight if weight is not None else mean
        if fused:
            block = triton.next_power_of_2(n)
            _bwd_fused[(programs,)](
                x,
                dy,
                dx,
                w,
                mean,
                rstd,
                dw_part,
                db_part,
                rows,
                n,
                rows_per_program,
                HAS_W=weight is not None,
                BLOCK=block,
                num_warps=warps,
            )
        else:
            block = _block(n, x.element_size(), max_block)
            c1 = torch.empty((rows,), dtype=torch.float32, device=x.device)
            c2 = torch.empty((rows,), dtype=torch.float32, device=x.device)
            _bwd_row_sums[(rows,)](
                x,
                dy,
                w,
                mean,
                rstd,
                c1,
                c2,
                n,
                HAS_W=weight is not None,
                BLOCK=block,
                num_warps=_num_warps(block, x.element_size()),
            )
            _bwd_tiles[(programs, triton.cdiv(n, tile))](
                x,
                dy,
                dx,
                w,
                mean,
                rstd,
                c1,
                c2,
                dw_part,
                db_part,
                rows,
                n,
                rows_per_program,
                HAS_W=weight is not None,
                BLOCK=tile,
                num_warps=warps,
            )
    # A fixed-order sum of the per-program partials: deterministic, unlike atomics.
    dw = dw_part.sum(dim=0)
    db = db_part.sum(dim=0)
    return dx, dw, db


@_layer_norm_bwd.register_fake
def _(dy, x, weight, mean, rstd, max_block):
    n = x.shape[1]
    return (
        torch.empty_like(x),
        x.new_empty((n,), dtype=torch.float32),
        x.new_empty((n,), dtype=torch.float32),
    )


def _setup_context(ctx, inputs, output):
    x, weight, bias, _, max_block = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.has_bias = bias is not None
    ctx.max_block = max_block
    ctx.param_dtypes = (
        None if weight is None else weight.dtype,
        None if bias is None else bias.dtype,
    )


def _backward(ctx, dy, _dmean, _drstd):
    x, weight, mean, rstd = ctx.saved_tensors
    dx, dw, db = _layer_norm_bwd(dy, x, weight, mean, rstd, ctx.max_block)
    w_dtype, b_dtype = ctx.param_dtypes
    dw = dw.to(w_dtype) if w_dtype is not None else None
    db = db.to(b_dtype) if b_dtype is not None else None
    return dx, dw, db, None, None


_layer_norm_fwd.register_autograd(_backward, setup_context=_setup_context)


def layer_norm_2d(x, weight=None, bias=None, eps=1e-5, max_block=0):
    """Layer norm over the last axis of the 2-D torch tensor ``x`` with the Triton kernels.

    ``max_block`` caps the block width in elements (0: as wide as 64 KiB of input allows); a
    smaller cap forces the looped paths, which the tests use to cover them with small rows.
    """
    if x.ndim != 2:
        raise ValueError(f"layer_norm_2d expects a 2-D tensor; received shape {tuple(x.shape)}.")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"The Triton layer norm supports float16/bfloat16/float32, not {x.dtype}.")
    n = x.shape[1]
    if n == 0:
        raise ValueError("Cannot normalise rows of size 0.")
    for name, p in (("gamma", weight), ("beta", bias)):
        if p is not None and p.numel() != n:
            raise ValueError(f"`{name}` has {p.numel()} elements; expected {n}.")
    weight = None if weight is None else weight.reshape(n).contiguous()
    bias = None if bias is None else bias.reshape(n).contiguous()
    y, _, _ = _layer_norm_fwd(x.contiguous(), weight, bias, float(eps), int(max_block))
    return y


def layer_norm(x, gamma, beta, axes, epsilon, rms_scaling=False, max_block=0):
    """The dispatch entry: layer norm of ``x`` over its trailing ``axes`` (see the module doc)."""
    if rms_scaling:
        raise ValueError("The Triton layer norm does not implement rms_scaling.")
    ndim = x.ndim
    if tuple(axes) != tuple(range(ndim - len(axes), ndim)):
        raise ValueError(f"The Triton layer norm normalises trailing axes only; received {axes}.")
    n = math.prod(x.shape[ndim - len(axes) :])
    y = layer_norm_2d(x.reshape(-1, n), gamma, beta, epsilon, max_block)
    return y.reshape(x.shape)
