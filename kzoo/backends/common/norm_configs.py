"""Launch configurations of the Triton and Pallas norm kernels, and those removed per GPU target.

The kernel modules (``kzoo/backends/torch/layer_norm_triton.py``,
``kzoo/backends/jax/layer_norm_pallas.py``) ask the choosers here which kernel, block width and
number of warps to launch for a row of ``n`` elements; ``scripts/tools/gpu_compile_check.py``
compiles every configuration the choosers can return for sm_90 (H100/H200) and sm_100 (B200)
without a GPU and reports registers, spills, shared memory and occupancy
(``docs/gpu_kernels.md``). A configuration that fails to compile or spills registers on a
target is listed in ``REMOVED`` with the reason; the choosers never return it for that target
and take the next legal one instead (a looped kernel, or a smaller loop block).

Pure Python: no framework is imported, so the compile check and its tests can enumerate the
configurations anywhere.
"""

import dataclasses

# A row is held in registers (one block) when its input fits this many bytes.
MAX_FUSED_BYTES = 65536
# Rows wider than one block are read in loop blocks of at most this many elements: the loop
# keeps a float32 accumulator of a block per thread group, so a wider block only adds register
# pressure (blocks of 16384 and 32768 spilled on sm_90) without reading fewer bytes.
LOOP_BLOCK = 4096
# Triton: rows of at most a quarter of this many elements are normalised several to a program,
# in tiles of up to this many elements and at most MAX_TILE_ROWS rows.
MAX_ROWS_TILE = 4096
MAX_TILE_ROWS = 128
# Triton: the fused backward keeps a row of x, dy and two float32 accumulators live.
MAX_FUSED_BWD_ELEMENTS = 8192
# Triton: the column block of the tiled backward (rows wider than the fused backward).
BWD_TILE = 1024
# Pallas: the dgamma/dbeta kernel's tile (rows x columns) and its warps.
PALLAS_TILE_ROWS = 32
PALLAS_TILE_COLS = 256
PALLAS_DWDB_WARPS = 4
# The targets the compile check covers: compute capability 9.0 (H100, H200) and 10.0 (B200).
TARGETS = (90, 100)

# (backend, kernel, element size in bytes, block, rows per program) -> {target: why it is removed
# there}, from scripts/tools/gpu_compile_check.py; docs/gpu_kernels.md has each compile's
# registers and spilled bytes (every dtype, form and row-length specialisation of the key).
_SPILLS = "spills registers at 128 per thread"
REMOVED = {
    # A row of 32768 half-precision values held at 16 warps: the looped forward instead (rows of
    # 16385-32768 values).
    ("triton", "_fwd_fused", 2, 32768, 1): {90: _SPILLS, 100: _SPILLS},
    # A row of x and dy and two float32 accumulators of 8192: the two-kernel backward (row sums,
    # then column tiles) instead, for rows of 4097-8192 values.
    ("triton", "_bwd_fused", 4, 8192, 1): {90: _SPILLS, 100: _SPILLS},
    ("triton", "_bwd_fused", 2, 8192, 1): {90: _SPILLS, 100: _SPILLS},
    # sm_100's ptxas spills a few bytes well below the register cap (the RMS form, N % 16 != 0):
    # half the rows per program (rows of 17-32 float32 values), half the loop block.
    ("triton", "_fwd_rows", 4, 32, 128): {100: "spills 4 bytes at 80 registers"},
    ("triton", "_bwd_row_sums", 2, 4096, 1): {100: "spills 8 bytes at 40 registers"},
    # The one-block dx kernel of 32768 half-precision values: the looped dx kernel instead.
    ("pallas", "dx", 2, 32768, 1): {90: _SPILLS, 100: _SPILLS},
}


@dataclasses.dataclass(frozen=True)
class Config:
    """One launch: ``kernel`` (its name), the ``block`` width, ``warps`` per program and
    ``rows`` per program (Triton's ``_fwd_rows`` and Pallas's dgamma/dbeta tiles; else 1)."""

    kernel: str
    block: int
    warps: int
    rows: int = 1


def next_power_of_2(n):
    return 1 << max(0, int(n) - 1).bit_length()


def warps_for(block, element_size):
    """Warps per program for a block: one per 256 bytes of input, 1 to 16."""
    return max(1, min(16, block * element_size // 256))


def block_limit(element_size, max_block=0):
    """The widest block: ``MAX_FUSED_BYTES`` of input, or ``max_block`` (a power of two below)."""
    limit = MAX_FUSED_BYTES // element_size if not max_block or max_block <= 0 else max_block
    return 1 << (max(int(limit), 1).bit_length() - 1)


def is_removed(backend, kernel, element_size, block, target, rows=1):
    """Whether the configuration is removed for ``target`` (a compute capability such as 90).

    ``None`` (no GPU: the interpreters) removes nothing; a target the compile check does not
    cover gets every target's removals, since a spill on sm_90 and sm_100 comes from the register
    budget (65536 per multiprocessor) that other NVIDIA GPUs share.
    """
    if target is None:
        return False
    where = REMOVED.get((backend, kernel, element_size, block, rows), {})
    return target in where if target in TARGETS else bool(where)


def _looped(backend, kernel, n, element_size, start, target, warp_size=None):
    """The widest loop block from ``start`` down that is not removed."""
    block = start
    while block >= 1:
        if not is_removed(backend, kernel, element_size, block, target):
            return Config(kernel, block, warps_for(block, warp_size or element_size))
        block //= 2
    raise RuntimeError(f"no {backend} {kernel} configuration is legal for rows of {n}")


def triton_forward(n, element_size, max_block=0, target=None):
    """The Triton forward launch for rows of ``n`` elements of ``element_size`` bytes."""
    limit = block_limit(element_size, max_block)
    block = min(next_power_of_2(n), limit)
    start = min(limit, LOOP_BLOCK)
    if block >= n:
        if block <= MAX_ROWS_TILE // 4:
            # Several rows to a program; a removed tile is tried again with half the rows.
            rows = min(MAX_TILE_ROWS, MAX_ROWS_TILE // block)
            while rows >= 1:
                warps = max(1, min(8, rows * block * element_size // 512))
                if not is_removed("triton", "_fwd_rows", element_size, block, target, rows):
                    return Config("_fwd_rows", block, warps, rows)
                rows //= 2
        else:
            config = Config("_fwd_fused", block, warps_for(block, element_size))
            if not is_removed("triton", config.kernel, element_size, block, target):
                return config
        start = min(start, block // 2)
    return _looped("triton", "_fwd_looped", n, element_size, start, target)


def triton_backward(n, element_size, max_block=0, target=None):
    """The Triton backward launches: ``(_bwd_fused,)`` or ``(_bwd_row_sums, _bwd_tiles)``."""
    limit = block_limit(element_size, max_block)
    width = next_power_of_2(n)
    if width <= min(MAX_FUSED_BWD_ELEMENTS, limit):
        # Its accumulators are float32 whatever the input: warps as for float32 rows.
        config = Config("_bwd_fused", width, warps_for(width, 4))
        if not is_removed("triton", "_bwd_fused", element_size, width, target):
            return (config,)
    start = min(limit, width)
    sums = _looped("triton", "_bwd_row_sums", n, element_size, min(start, LOOP_BLOCK), target)
    tiles = _looped("triton", "_bwd_tiles", n, element_size, min(start, BWD_TILE), target, 4)
    return (sums, tiles)


def _pallas_row(kernel, n, itemsize, max_block, target):
    limit = block_limit(itemsize, max_block)
    block = min(next_power_of_2(n), limit)
    start = min(limit, LOOP_BLOCK)
    if block >= n:
        if not is_removed("pallas", kernel, itemsize, block, target):
            return Config(kernel, block, warps_for(block, itemsize))
        start = min(start, block // 2)
    return _looped("pallas", f"{kernel}_looped", n, itemsize, start, target)


def pallas_forward(n, itemsize, max_block=0, target=None):
    """The Pallas forward: ``fwd`` (the row in one block) or ``fwd_looped``."""
    return _pallas_row("fwd", n, itemsize, max_block, target)


def pallas_dx(n, itemsize, max_block=0, target=None):
    """The Pallas input-gradient kernel: ``dx`` (one block) or ``dx_looped``."""
    return _pallas_row("dx", n, itemsize, max_block, target)


def pallas_dwdb():
    """The Pallas dgamma/dbeta kernel: tiles of 32 rows by 256 columns, 4 warps."""
    return Config("dwdb", PALLAS_TILE_COLS, PALLAS_DWDB_WARPS, PALLAS_TILE_ROWS)


def reachable(chooser, element_size, target=None, max_width=1 << 20):
    """``{config: (smallest n, largest n)}`` for every configuration that ``chooser(n,
    element_size, target=target)`` returns for rows of 1 to ``max_width`` elements (each of a
    tuple of launches counts). The choice depends on ``n`` only through its next power of two,
    so one width per interval ``(2**(k-1), 2**k]`` is asked; a range ending at ``max_width``
    goes on for every wider row."""
    found = {}
    lo = 1
    for k in range(max_width.bit_length()):
        hi = 1 << k
        picked = chooser(hi, element_size, target=target)
        for config in picked if isinstance(picked, tuple) else (picked,):
            first, _ = found.get(config, (lo, hi))
            found[config] = (first, hi)
        lo = hi + 1
    return found
