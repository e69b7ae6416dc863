"""The launch choosers of the norm kernels: what they pick, and what they drop per GPU target."""

import pytest

from kzoo.backends.common import norm_configs as nc
from kzoo.backends.common.norm_configs import Config

# Pure Python: the same under every backend, so one run is enough.
pytestmark = pytest.mark.backends("torch")


def test_triton_forward_choices():
    # Narrow rows several to a program, 1-D rows up to 64 KiB, then the looped kernel.
    assert nc.triton_forward(1, 4) == Config("_fwd_rows", 1, 1, 128)
    assert nc.triton_forward(1000, 4) == Config("_fwd_rows", 1024, 8, 4)
    assert nc.triton_forward(33, 2) == Config("_fwd_rows", 64, 8, 64)
    assert nc.triton_forward(4097, 4) == Config("_fwd_fused", 8192, 16)
    assert nc.triton_forward(16384, 4) == Config("_fwd_fused", 16384, 16)
    assert nc.triton_forward(16385, 4) == Config("_fwd_looped", 4096, 16)
    assert nc.triton_forward(20000, 2) == Config("_fwd_fused", 32768, 16)
    assert nc.triton_forward(40000, 2) == Config("_fwd_looped", 4096, 16)
    # A cap (as the tests use to reach the looped paths with small rows).
    assert nc.triton_forward(5000, 4, max_block=1024) == Config("_fwd_looped", 1024, 16)
    assert nc.triton_forward(300, 2, max_block=128) == Config("_fwd_looped", 128, 1)


def test_triton_backward_choices():
    assert nc.triton_backward(7, 4) == (Config("_bwd_fused", 8, 1),)
    # The fused backward's warps count float32 accumulators whatever the input dtype.
    assert nc.triton_backward(1000, 2) == (Config("_bwd_fused", 1024, 16),)
    assert nc.triton_backward(5000, 4) == (Config("_bwd_fused", 8192, 16),)
    assert nc.triton_backward(8193, 2) == (
        Config("_bwd_row_sums", 4096, 16),
        Config("_bwd_tiles", 1024, 16),
    )
    assert nc.triton_backward(40, 4, max_block=16) == (
        Config("_bwd_row_sums", 16, 1),
        Config("_bwd_tiles", 16, 1),
    )


def test_removed_configurations_are_skipped_on_their_targets():
    for target in (90, 100):
        assert nc.triton_forward(20000, 2, target=target) == Config("_fwd_looped", 4096, 16)
        assert nc.triton_forward(20000, 4, target=target) == Config("_fwd_looped", 4096, 16)
        assert nc.triton_backward(5000, 4, target=target) == (
            Config("_bwd_row_sums", 4096, 16),
            Config("_bwd_tiles", 1024, 16),
        )
        assert nc.pallas_dx(20000, 2, target=target) == Config("dx_looped", 4096, 16)
        # What is not removed is unchanged.
        assert nc.triton_backward(4096, 2, target=target) == (Config("_bwd_fused", 4096, 16),)
        assert nc.pallas_forward(20000, 2, target=target) == Config("fwd", 32768, 16)
    # sm_100 only: half the rows per program for rows of 17-32 float32 values, half the loop
    # block of the half-precision row sums.
    assert nc.triton_forward(20, 4, target=100) == Config("_fwd_rows", 32, 8, 64)
    assert nc.triton_forward(20, 4, target=90) == Config("_fwd_rows", 32, 8, 128)
    assert nc.triton_backward(9000, 2, target=100)[0] == Config("_bwd_row_sums", 2048, 16)
    assert nc.triton_backward(9000, 2, target=90)[0] == Config("_bwd_row_sums", 4096, 16)
    # No GPU (the interpreters): nothing removed; a target the check does not cover: all of it.
    assert nc.triton_backward(5000, 4) == (Config("_bwd_fused", 8192, 16),)
    assert nc.triton_backward(5000, 4, target=80)[0].kernel == "_bwd_row_sums"
    assert nc.is_removed("triton", "_fwd_fused", 2, 32768, 120)
    assert not nc.is_removed("triton", "_fwd_fused", 2, 32768, None)
    assert not nc.is_removed("triton", "_fwd_fused", 4, 16384, 90)
    assert nc.is_removed("triton", "_fwd_rows", 4, 32, 100, rows=128)
    assert not nc.is_removed("triton", "_fwd_rows", 4, 32, 100, rows=64)


def test_a_removed_loop_block_falls_back_to_a_smaller_one(monkeypatch):
    removed = {
        ("triton", "_fwd_fused", 2, 8192, 1): {90: "test"},
        ("triton", "_fwd_looped", 2, 4096, 1): {90: "test"},
        ("triton", "_fwd_looped", 2, 2048, 1): {90: "test"},
    }
    monkeypatch.setattr(nc, "REMOVED", removed)
    # The looped kernel starts below the removed fused block and skips removed loop blocks.
    assert nc.triton_forward(5000, 2, target=90) == Config("_fwd_looped", 1024, 8)
    assert nc.triton_forward(5000, 2, target=100) == Config("_fwd_fused", 8192, 16)
    monkeypatch.setattr(
        nc, "REMOVED", {("triton", "_fwd_looped", 4, 1 << k, 1): {90: "x"} for k in range(20)}
    )
    with pytest.raises(RuntimeError, match="no triton _fwd_looped configuration"):
        nc.triton_forward(20000, 4, target=90)


def test_reachable_lists_each_configuration_with_its_row_lengths():
    found = nc.reachable(nc.triton_forward, 2, target=90)
    assert found[Config("_fwd_rows", 1, 1, 128)] == (1, 1)
    assert found[Config("_fwd_rows", 1024, 8, 4)] == (513, 1024)
    assert found[Config("_fwd_fused", 16384, 16)] == (8193, 16384)
    assert found[Config("_fwd_looped", 4096, 16)] == (16385, 1 << 20)
    assert Config("_fwd_fused", 32768, 16) not in found
    assert nc.reachable(nc.triton_forward, 2)[Config("_fwd_fused", 32768, 16)] == (16385, 32768)
    backward = nc.reachable(nc.triton_backward, 4, target=100)
    assert backward[Config("_bwd_row_sums", 4096, 16)] == (4097, 1 << 20)
    assert backward[Config("_bwd_tiles", 1024, 16)] == (4097, 1 << 20)
