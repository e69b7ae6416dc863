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


def reference(x, w, b, n_axes, eps, dy):
    """float64 torch layer norm: output and gradients of ``sum(y * dy)``."""
    x64 = x.detach().double().requires_grad_()
    w64 = None if w is None else w.detach().double().requires_grad_()
    b64 = None if b is None else b.detach().double().requires_grad_()
    y = torch.nn.functional.layer_norm(x64, tuple(x.shape[x.ndim - n_axes :]), w64, b64, eps)
    y.backward(dy.double())
    return y, x64.grad, None if w is None else w64.grad, None if b is None else b64.grad


def run(ln, x, w, b, n_axes, eps, dy, max_block=0):
    x = x.detach().requires_grad_()
    w = None if w is None else w.detach().requires_grad_()
    b = None if b is None else b.detach().requires_grad_()
    axes = tuple(range(x.ndim - n_axes, x.ndim))
    y = ln.layer_norm(x, w, b, axes, eps, max_block=max_block)
    y.backward(dy)
    return y, x.grad, None if w is None else w.grad, None if b is None else b.grad


def check(ln, shape, n_axes=1, dtype="float32", max_block=0, mean=1.0, tol=2e-5, params=True):
    dtype = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(sum(shape) + max_block)
    x = (torch.randn(shape, generator=gen) * 2 + mean).to(DEVICE, dtype)
    pshape = shape[len(shape) - n_axes :]
    w = torch.randn(pshape, generator=gen).to(DEVICE) if params else None
    b = torch.randn(pshape, generator=gen).to(DEVICE) if params else None
    dy = torch.randn(shape, generator=gen).to(DEVICE, dtype)
    got = run(ln, x, w, b, n_axes, 1e-5, dy, max_block)
    want = reference(x, w, b, n_axes, 1e-5, dy)
    assert got[0].dtype == dtype and got[0].shape == x.shape
    for name, g, r in zip(("y", "dx", "dgamma", "dbeta"), got, want):
        if r is None:
            assert g is None
            continue
        assert g.shape == r.shape, name
        # Gradients sum over rows and columns: scale the tolerance with the reduced size.
        scale = 1.0 if name in ("y", "dx") else max(1.0, shape[0] ** 0.5)
        torch.testing.assert_close(g.double(), r, rtol=tol, atol=tol * scale, msg=name)


@pytest.mark.parametrize(
    "shape, n_axes, max_block",
    [
        ((4, 1), 1, 0),
        ((3, 7), 1, 0),
        ((2, 1000), 1, 0),
        ((2, 4096), 1, 0),
        ((2, 5000), 1, 0),  # one masked block of 8192
        ((3, 5000), 1, 1024),  # every path looped, with a partial last block
        ((2, 3, 7), 1, 0),
        ((2, 3, 4, 5), 2, 0),
        ((9, 40), 1, 0),  # more rows than backward programs: partial sums are reduced
        ((9, 40), 1, 16),  # ... and on the tiled backward path
        ((1, 1000), 1, 0),
        ((70, 33), 1, 0),  # several row tiles (64 rows each), the last one partial
    ],
)
def test_float32_matches_float64(ln, shape, n_axes, max_block):
    check(ln, shape, n_axes, max_block=max_block)


def test_without_gamma_and_beta(ln):
    check(ln, (3, 33), params=False)
    check(ln, (3, 33), params=False, max_block=8)


def test_large_mean(ln):
    # Two-pass statistics: a mean of 1e4 over unit spread keeps float32 accuracy of ~ulp(1e4).
    check(ln, (3, 300), mean=1e4, tol=1e-2)
    check(ln, (3, 300), mean=1e4, tol=1e-2, max_block=64)


@pytest.mark.parametrize("dtype, tol", [("float16", 2e-3), ("bfloat16", 2e-2)])
def test_half_precision(ln, dtype, tol):
    # The reference sees the same rounded inputs; the error left is the output rounding.
    check(ln, (3, 1000), dtype=dtype, tol=tol)
    check(ln, (2, 300), dtype=dtype, tol=tol, max_block=128)


def test_zero_rows(ln):
    x = torch.zeros((0, 3, 7), device=DEVICE, requires_grad=True)
    w = torch.ones(7, device=DEVICE, requires_grad=True)
    b = torch.zeros(7, device=DEVICE, requires_grad=True)
    y = ln.layer_norm(x, w, b, (2,), 1e-5)
    assert y.shape == (0, 3, 7)
    y.sum().backward()
    assert w.grad.shape == (7,) and torch.all(w.grad == 0) and torch.all(b.grad == 0)


def test_parameter_gradients_are_deterministic(ln):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(11, 50, generator=gen).to(DEVICE)
    w = torch.randn(50, generator=gen).to(DEVICE)
    dy = torch.randn(11, 50, generator=gen).to(DEVICE)
    grads = []
    for _ in range(2):
        wi = w.clone().requires_grad_()
        ln.layer_norm_2d(x, wi, None, 1e-5).backward(dy)
        grads.append(wi.grad)
    assert torch.equal(grads[0], grads[1])


def test_torch_compile_and_fake_tensors(ln):
    from torch.library import opcheck

    x = torch.randn(3, 20, device=DEVICE)
    w = torch.randn(20, device=DEVICE)
    b = torch.randn(20, device=DEVICE)
    opcheck(
        torch.ops.kzoo.layer_norm_fwd.default,
        (x, w, b, 1e-5, 0),
        test_utils=("test_schema", "test_faketensor"),
    )

    def f(x, w, b):
        return ln.layer_norm_2d(x, w, b, 1e-5).square().sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    inputs = [t.clone().requires_grad_() for t in (x, w, b)]
    eager_inputs = [t.clone().requires_grad_() for t in (x, w, b)]
    compiled(*inputs).backward()
    f(*eager_inputs).backward()
    for a, e in zip(inputs, eager_inputs):
        torch.testing.assert_close(a.grad, e.grad)


COMPILE_SCRIPT = r"""
import json, re
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from kzoo.backends.torch import layer_norm_triton as ln

cases = {
    "_fwd_fused": ({"X": "*bf16", "Y": "*bf16"}, {"HAS_B": True}, 4096, 2),
    "_fwd_rows": ({"X": "*bf16", "Y": "*bf16"}, {"HAS_B": True, "ROWS": 16}, 256, 2),
    "_fwd_looped": ({"X": "*fp16", "Y": "*fp16"}, {"HAS_B": False}, 1024, 2),
    "_bwd_fused": ({"X": "*bf16", "DY": "*bf16", "DX": "*bf16"}, {}, 4096, 4),
    "_bwd_row_sums": ({}, {}, 8192, 4),
    "_bwd_tiles": ({}, {}, 1024, 4),
}
report = {}
for name, (types, flags, block, size) in cases.items():
    fn = getattr(ln, name)
    signature = {}
    for arg in fn.arg_names:
        if arg in ("HAS_W", "HAS_B", "BLOCK", "ROWS"):
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
        options={"num_warps": ln._num_warps(block, size)},
    )
    ptx = kernel.asm["ptx"]
    report[name] = {
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
        "_fwd_fused",
        "_fwd_rows",
        "_fwd_looped",
        "_bwd_fused",
        "_bwd_row_sums",
        "_bwd_tiles",
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
