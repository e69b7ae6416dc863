"""The Triton layer norm (run by Triton's interpreter on CPU tensors) against float64 torch.

conftest sets ``TRITON_INTERPRET=1`` before triton is imported; rows are kept few because the
interpreter runs one program at a time. With ``KZOO_TEST_GPU=1`` on a CUDA machine the same
tests run the compiled kernels on the GPU.
"""

import os

import keras
import pytest

pytestmark = pytest.mark.backends("torch")

# Importing triton next to another backend's runtime can abort the process, so torch and triton
# are imported only in the torch run (the compile check runs in a subprocess of its own).
if keras.backend.backend() == "torch":
    torch = pytest.importorskip("torch")
    pytest.importorskip("triton")
    DEVICE = (
        "cuda" if os.environ.get("KZOO_TEST_GPU") == "1" and torch.cuda.is_available() else "cpu"
    )


@pytest.fixture(scope="module")
def ln():
    from kzoo.backends.torch import layer_norm_triton

    return layer_norm_triton


KINDS = ("layer", "rms", "add_layer", "add_rms")


def reference(kind, x, r, w, b, n_axes, eps, dy, dz):
    """float64 torch: outputs and gradients of ``sum(y * dy) + sum(z * dz)`` (z = x + r)."""
    leaves = [None if t is None else t.detach().double().requires_grad_() for t in (x, r, w, b)]
    x64, r64, w64, b64 = leaves
    z = x64 if r is None else x64 + r64
    if r is not None and x.dtype != torch.float32:
        # The kernel writes (and normalises) the sum in the input dtype: round it the same way,
        # passing gradients straight through.
        z = z + ((x + r).double() - z).detach()
    axes = tuple(range(x.ndim - n_axes, x.ndim))
    if kind.endswith("rms"):
        y = z * torch.rsqrt(z.square().mean(dim=axes, keepdim=True) + eps)
        y = y if w64 is None else y * w64
    else:
        y = torch.nn.functional.layer_norm(z, tuple(x.shape[x.ndim - n_axes :]), w64, b64, eps)
    loss = (y * dy.double()).sum()
    if r is not None:
        loss = loss + (z * dz.double()).sum()
    loss.backward()
    grads = [None if t is None else t.grad for t in leaves]
    return [y, None if r is None else z.detach(), *grads]


def run(ln, kind, x, r, w, b, n_axes, eps, dy, dz, max_block=0):
    leaves = [None if t is None else t.detach().requires_grad_() for t in (x, r, w, b)]
    x, r, w, b = leaves
    axes = tuple(range(x.ndim - n_axes, x.ndim))
    if kind == "layer":
        y, z = ln.layer_norm(x, w, b, axes, eps, max_block=max_block), None
    elif kind == "rms":
        y, z = ln.rms_norm(x, w, axes, eps, max_block=max_block), None
    elif kind == "add_layer":
        y, z = ln.add_layer_norm(x, r, w, b, axes, eps, max_block=max_block)
    else:
        y, z = ln.add_rms_norm(x, r, w, axes, eps, max_block=max_block)
    loss = (y * dy).sum()
    if z is not None:
        loss = loss + (z * dz).sum()
    loss.backward()
    return [y, z, *(None if t is None else t.grad for t in leaves)]


def inputs(kind, shape, n_axes=1, dtype="float32", mean=1.0, params=True, seed=0):
    dtype = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(sum(shape) + seed)
    x = (torch.randn(shape, generator=gen) * 2 + mean).to(DEVICE, dtype)
    r = torch.randn(shape, generator=gen).to(DEVICE, dtype) if kind.startswith("add") else None
    pshape = shape[len(shape) - n_axes :]
    w = torch.randn(pshape, generator=gen).to(DEVICE) if params else None
    b = torch.randn(pshape, generator=gen).to(DEVICE) if params and "rms" not in kind else None
    dy = torch.randn(shape, generator=gen).to(DEVICE, dtype)
    dz = torch.randn(shape, generator=gen).to(DEVICE, dtype)
    return x, r, w, b, dy, dz


def check(ln, kind, shape, n_axes=1, dtype="float32", max_block=0, mean=1.0, tol=2e-5, **kw):
    x, r, w, b, dy, dz = inputs(kind, shape, n_axes, dtype, mean, seed=max_block, **kw)
    got = run(ln, kind, x, r, w, b, n_axes, 1e-5, dy, dz, max_block)
    want = reference(kind, x, r, w, b, n_axes, 1e-5, dy, dz)
    assert got[0].dtype == x.dtype and got[0].shape == x.shape
    names = ("y", "z", "dx", "dresidual", "dgamma", "dbeta")
    for name, g, ref in zip(names, got, want):
        if ref is None:
            assert g is None, name
            continue
        param = name in ("dgamma", "dbeta")
        assert g.shape == ref.shape and g.dtype == (torch.float32 if param else x.dtype), name
        # Gradients sum over rows and columns: scale the tolerance with the reduced size.
        scale = max(1.0, shape[0] ** 0.5) if param else 1.0
        torch.testing.assert_close(g.double(), ref, rtol=tol, atol=tol * scale, msg=name)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "shape, n_axes, max_block",
    [
        ((4, 1), 1, 0),
        ((3, 7), 1, 0),
        ((2, 1000), 1, 0),
        ((2, 4097), 1, 0),  # one masked block of 8192; looped (tiled) backward
        ((3, 5000), 1, 1024),  # every path looped, with a partial last block
        ((2, 3, 4, 5), 2, 0),
        ((9, 40), 1, 16),  # more rows than backward programs, on the tiled backward path
        ((70, 33), 1, 0),  # several row tiles, the last one partial
    ],
)
def test_float32_matches_float64(ln, kind, shape, n_axes, max_block):
    check(ln, kind, shape, n_axes, max_block=max_block)


@pytest.mark.parametrize(
    "shape, n_axes, max_block",
    [
        ((2, 4096), 1, 0),
        ((2, 5000), 1, 0),
        ((2, 3, 7), 1, 0),
        ((9, 40), 1, 0),  # more rows than backward programs: partial sums are reduced
        ((1, 1000), 1, 0),
    ],
)
def test_layer_norm_more_shapes(ln, shape, n_axes, max_block):
    check(ln, "layer", shape, n_axes, max_block=max_block)


@pytest.mark.parametrize("kind", KINDS)
def test_without_parameters(ln, kind):
    check(ln, kind, (3, 33), params=False)
    check(ln, kind, (3, 33), params=False, max_block=8)


@pytest.mark.parametrize("kind", ["layer", "add_layer"])
def test_large_mean(ln, kind):
    # Two-pass statistics: a mean of 1e4 over unit spread keeps float32 accuracy of ~ulp(1e4).
    check(ln, kind, (3, 300), mean=1e4, tol=1e-2)
    check(ln, kind, (3, 300), mean=1e4, tol=1e-2, max_block=64)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype, tol", [("float16", 2e-3), ("bfloat16", 2e-2)])
def test_half_precision(ln, kind, dtype, tol):
    # The reference sees the same rounded inputs and the sum rounded as the kernel rounds it
    # (z is written in the input dtype); the error left is the output rounding.
    check(ln, kind, (3, 1000), dtype=dtype, tol=tol)
    check(ln, kind, (2, 300), dtype=dtype, tol=tol, max_block=128)


class _Launches:
    """Wraps a kernel and records each launch under its name."""

    def __init__(self, kernel, name, seen, grids):
        self.kernel, self.name, self.seen, self.grids = kernel, name, seen, grids

    def __getitem__(self, grid):
        self.seen.append(self.name)
        self.grids.append(tuple(grid))
        return self.kernel[grid]


@pytest.mark.parametrize(
    "target, kind, shape, dtype, tol, launched",
    [
        # The half-precision block of 32768 spills on sm_90: the looped forward takes the row.
        (90, "layer", (2, 20000), "bfloat16", 2e-2, ["_fwd_looped", "_bwd_row_sums", "_bwd_tiles"]),
        (90, "add_rms", (2, 20000), "bfloat16", 2e-2, ["_fwd_looped", "_bwd_row_sums", "_bwd_tiles"]),
        # The fused backward of 8192 spills: rows of 4097-8192 take the two-kernel backward.
        (90, "add_layer", (3, 5000), "float32", 2e-5, ["_fwd_fused", "_bwd_row_sums", "_bwd_tiles"]),
        (100, "rms", (3, 4100), "float16", 2e-3, ["_fwd_fused", "_bwd_row_sums", "_bwd_tiles"]),
        # sm_100: 64 rows of 17-32 float32 values to a program instead of 128 (130 rows: three
        # programs, the last partial).
        (100, "rms", (130, 20), "float32", 2e-5, ["_fwd_rows", "_bwd_fused"]),
    ],
)  # fmt: skip
def test_configurations_removed_for_the_gpu_target_are_never_launched(
    ln, monkeypatch, target, kind, shape, dtype, tol, launched
):
    # As on an H100 (compute capability 9.0) or a B200 (10.0): the chooser skips what spills
    # there (kzoo.backends.common.norm_configs.REMOVED) and the replacement computes the same norm.
    from kzoo.backends.common import norm_configs

    seen, grids = [], []
    monkeypatch.setattr(ln, "_target", lambda device: target)
    for name in ln.KERNEL_NAMES:
        monkeypatch.setattr(ln, name, _Launches(getattr(ln, name), name, seen, grids))
    check(ln, kind, shape, dtype=dtype, tol=tol)
    assert seen == launched
    if launched[0] == "_fwd_rows":
        assert norm_configs.triton_forward(20, 4, target=target).rows == 64
        assert grids[0] == (3,)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_rows(ln, kind):
    x, r, w, b, dy, dz = inputs(kind, (0, 3, 7))
    y, z, dx, dr, dw, db = run(ln, kind, x, r, w, b, 1, 1e-5, dy, dz)
    assert y.shape == (0, 3, 7) and dx.shape == (0, 3, 7)
    assert dw.shape == (7,) and torch.all(dw == 0)
    assert db is None or torch.all(db == 0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("max_block", [0, 16])
def test_parameter_gradients_are_deterministic(ln, kind, max_block):
    # No atomics: the per-program partial sums are reduced in a fixed order, so two runs agree
    # to the bit (the fused and the tiled backward paths).
    x, r, w, b, dy, dz = inputs(kind, (11, 50))
    runs = [run(ln, kind, x, r, w, b, 1, 1e-5, dy, dz, max_block) for _ in range(2)]
    for name, first, second in zip(("y", "z", "dx", "dr", "dgamma", "dbeta"), *runs):
        assert (first is None) == (second is None), name
        if first is not None:
            assert torch.equal(first, second), name


def test_unused_sum_output_needs_no_gradient(ln):
    # Only the normalised output feeds the loss: the sum's gradient is absent, not zeros.
    x, r, w, b, dy, _ = inputs("add_layer", (3, 20))
    xs, rs = x.clone().requires_grad_(), r.clone().requires_grad_()
    y, _ = ln.add_layer_norm(xs, rs, w, b, (1,), 1e-5)
    (y * dy).sum().backward()
    want = reference("add_layer", x, r, w, b, 1, 1e-5, dy, torch.zeros_like(dy))
    torch.testing.assert_close(xs.grad.double(), want[2], rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(rs.grad.double(), want[2], rtol=2e-5, atol=2e-5)


def test_torch_compile_and_fake_tensors(ln):
    from torch.library import opcheck

    x = torch.randn(3, 20, device=DEVICE)
    r = torch.randn(3, 20, device=DEVICE)
    w = torch.randn(20, device=DEVICE)
    b = torch.randn(20, device=DEVICE)
    for args in ((x, None, w, b, 1e-5, False, 0), (x, r, w, None, 1e-5, True, 0)):
        opcheck(
            torch.ops.kzoo.norm_fwd.default, args, test_utils=("test_schema", "test_faketensor")
        )

    def f(x, r, w, b):
        y, z = ln.norm_2d(x, r, w, b, 1e-5)
        return (
            y.square().sum() + z.square().sum() + ln.norm_2d(z, None, w, None, 1e-5, True)[0].sum()
        )

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    args = [t.clone().requires_grad_() for t in (x, r, w, b)]
    eager_args = [t.clone().requires_grad_() for t in (x, r, w, b)]
    compiled(*args).backward()
    f(*eager_args).backward()
    for a, e in zip(args, eager_args):
        torch.testing.assert_close(a.grad, e.grad)


COMPILE_SCRIPT = r"""
import json, re
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from kzoo.backends.common import norm_configs
from kzoo.backends.torch import layer_norm_triton as ln

# Each kernel in its plain layer-norm form and in its RMS + residual form.
plain = {"RMS": False, "HAS_R": False, "HAS_DZ": False, "HAS_B": True}
fused = {"RMS": True, "HAS_R": True, "HAS_DZ": True, "HAS_B": False}
half = {"X": "*bf16", "R": "*bf16", "Y": "*bf16", "Z": "*bf16", "DY": "*bf16", "DZ": "*bf16"}
half["DX"] = "*bf16"
cases = []
for variant, flags in (("layer", plain), ("rms+residual", fused)):
    cases += [
        ("_fwd_fused", variant, half, flags, 4096, 2),
        ("_fwd_rows", variant, half, {**flags, "ROWS": 16}, 256, 2),
        ("_fwd_looped", variant, {"X": "*fp16", "R": "*fp16", "Y": "*fp16", "Z": "*fp16"}, flags, 1024, 2),
        ("_bwd_fused", variant, half, flags, 4096, 4),
        ("_bwd_row_sums", variant, {}, flags, 8192, 4),
        ("_bwd_tiles", variant, {}, flags, 1024, 4),
    ]
constexpr = ("HAS_W", "HAS_B", "HAS_R", "HAS_DZ", "RMS", "BLOCK", "ROWS")
report = {}
for name, variant, types, flags, block, size in cases:
    fn = getattr(ln, name)
    signature = {}
    for arg in fn.arg_names:
        if arg in constexpr:
            signature[arg] = "constexpr"
        elif arg in ("M", "N", "rows_per_program"):
            signature[arg] = "i32"
        elif arg == "eps":
            signature[arg] = "fp32"
        else:
            signature[arg] = types.get(arg, "*fp32")
    consts = {"HAS_W": True, "BLOCK": block, **flags}
    consts = {(fn.arg_names.index(k),): v for k, v in consts.items() if k in fn.arg_names}
    kernel = triton.compile(
        ASTSource(fn=fn, signature=signature, constexprs=consts),
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": norm_configs.warps_for(block, size)},
    )
    ptx = kernel.asm["ptx"]
    report[f"{name}[{variant}]"] = {
        "cubin": len(kernel.asm["cubin"]),
        "atomics": bool(re.search(r"^\s*(@%p\d+\s+)?(atom|red)\.", ptx, re.M)),
    }
print(json.dumps(report))
"""


@pytest.mark.slow
@pytest.mark.backends("jax", "tensorflow", "torch")
def test_kernels_compile_for_hopper_without_atomics():
    # The interpreter is lenient where the compiler is not, so compile every kernel down to a
    # cubin for sm_90 (H100/H200); that needs no GPU. It runs in a fresh process: triton's code
    # generator misbehaves under TRITON_INTERPRET=1, which this test process has set. Slow
    # (ptxas for six kernels): it runs in CI's slow step.
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", COMPILE_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report) == {
        f"{name}[{variant}]"
        for name in ("_fwd_fused", "_fwd_rows", "_fwd_looped", "_bwd_fused", "_bwd_row_sums")
        + ("_bwd_tiles",)
        for variant in ("layer", "rms+residual")
    }
    for name, info in report.items():
        assert info["cubin"] > 0, name
        assert not info["atomics"], f"{name} uses atomics"


def test_bad_input(ln):
    with pytest.raises(ValueError, match="float16/bfloat16/float32"):
        ln.layer_norm_2d(torch.ones(2, 3, dtype=torch.float64, device=DEVICE))
    with pytest.raises(ValueError, match="trailing axes"):
        ln.layer_norm(torch.ones(2, 3, 4), None, None, (1,), 1e-5)
    with pytest.raises(ValueError, match="`gamma` has 4 elements"):
        ln.layer_norm_2d(torch.ones(2, 3), torch.ones(4))
    with pytest.raises(ValueError, match="`residual` must match"):
        ln.norm_2d(torch.ones(2, 3), torch.ones(2, 3, dtype=torch.float16))
    with pytest.raises(ValueError, match="RMS norm takes no `beta`"):
        ln.norm_2d(torch.ones(2, 3), None, None, torch.ones(3), rms=True)


@pytest.mark.parametrize("kind", KINDS)
def test_an_all_zero_row_at_the_smallest_epsilon_gives_beta(ln, kind):
    # Issue #24, item 11: the ops refuse epsilon below the smallest normal float32 (2**-126);
    # at that bound the kernel normalises an all-zero row (of the sum, for the add kinds) to 0.
    from kzoo.ops.layer_norm import MIN_EPSILON

    x, r, w, b, dy, dz = inputs(kind, (3, 7))
    with torch.no_grad():
        if r is None:
            x[1] = 0.0
        else:
            r[1] = -x[1]
    y = run(ln, kind, x, r, w, b, 1, MIN_EPSILON, dy, dz)[0]
    want = reference(kind, x, r, w, b, 1, MIN_EPSILON, dy, dz)[0]
    expected_row = torch.zeros(7) if b is None else b.detach().cpu()
    torch.testing.assert_close(y[1].detach().cpu(), expected_row, rtol=0, atol=0)
    torch.testing.assert_close(y.double(), want, rtol=2e-5, atol=2e-5)
