"""Context parallelism on torch.distributed (``kzoo/backends/torch/cp_*.py``).

Fast, one process: the ring and all-to-all autograd functions on a one-process mesh against
exact attention (outputs and gradients), the per-process plan against the masks it must
cover, and the errors (no process group, a mesh that does not match the world, NCCL without
GPUs, a sequence not divisible by 2 * CP).

Slow, real processes (``torchrun`` with gloo on 127.0.0.1, 2 and 4 of them): the op's output
and the gradients of query, key and value, and the layer's output and the gradients of its
input and of its four projections, equal one process's exact attention on the whole sequence, for both strategies, both layouts, and causal, windowed,
packed and padded inputs; the ring sends ``CP - 1`` blocks forward and ``2 * CP - 1`` backward.
This file is also the worker the slow test launches.
"""

import importlib
import json
import os
import sys
import types

import keras
import numpy as np
import pytest

from tests.distribution.processes import free_port, run_torchrun

ra = importlib.import_module("kzoo.ops.ring_attention")

# Document lengths of the rows of a packed batch of 32 tokens (row 1 ends with padding).
DOCUMENTS = [[7, 20, 5], [30]]
# (causal, window, packed documents, key padding mask)
CASES = [(True, None, False, True), (True, 6, True, True), (False, None, True, False)]


def _one_process_mesh():
    return types.SimpleNamespace(
        context_index=0, context_size=1, context_group=None, context_group_order=[0]
    )


def _tensors(b=4, s=32, h=4, hk=2, d=8, seed=0):
    import torch

    rng = np.random.default_rng(seed)

    def t(shape):
        return torch.tensor(rng.normal(size=shape), dtype=torch.float32, requires_grad=True)

    mask = rng.random((b, s)) > 0.3
    mask[:, 0] = True
    mask[1, :3] = False  # under a causal mask row 1's first queries see no key: zeros, not NaN
    return t((b, s, h, d)), t((b, s, hk, d)), t((b, s, hk, d)), torch.tensor(mask)


@pytest.mark.backends("torch")
@pytest.mark.parametrize("strategy", ["ring", "all_to_all"])
@pytest.mark.parametrize("causal,window,packed,padded", CASES + [(True, 1, False, False)])
def test_one_process_strategies_match_exact_attention(
    strategy, causal, window, packed, padded, monkeypatch
):
    import torch

    from kzoo.backends.common import ring_schedule
    from kzoo.backends.torch import cp_all_to_all, cp_ring
    from kzoo.distribution import pack_documents

    # Blocks of 4 tokens: a 32-token sequence is cut into many blocks, as long ones are.
    monkeypatch.setattr(ring_schedule, "ATTENTION_BLOCK", 4)
    cp_ring._plan.cache_clear()
    cp_all_to_all._local_plan.cache_clear()
    q, k, v, mask = _tensors()
    mask = mask if padded else None
    segments = None
    if packed:
        segments = torch.tensor(pack_documents([[5, 11, 9], [32], [3, 3, 20], [14, 10]], 32)[0])
    fn = cp_ring.ring_attention if strategy == "ring" else cp_all_to_all.all_to_all_attention
    try:
        out = fn(q, k, v, mask, segments, mesh=_one_process_mesh(), causal=causal,
                 window_size=window)  # fmt: skip
    finally:
        cp_ring._plan.cache_clear()
        cp_all_to_all._local_plan.cache_clear()
    ref = ra.exact_attention(
        q, k, v, key_mask=mask, causal=causal, query_segment_ids=segments,
        key_segment_ids=segments, window_size=window,
    )  # fmt: skip
    cot = torch.tensor(np.random.default_rng(1).normal(size=out.shape), dtype=torch.float32)
    grads = torch.autograd.grad((out * cot).sum(), (q, k, v))
    expected = torch.autograd.grad((ref * cot).sum(), (q, k, v))
    out, ref = out.detach(), ref.detach()
    assert torch.isfinite(out).all()
    assert float((out - ref).abs().max()) <= 1e-5
    for name, a, b in zip("qkv", grads, expected):
        assert float((a - b).abs().max()) <= 1e-5, name
        # Not trivially zero (but a one-token window has a constant softmax: no dq, dk).
        if name == "v" or window != 1:
            assert float(b.abs().max()) > 1e-2, name


@pytest.mark.backends("torch")
@pytest.mark.parametrize("num_shards", [2, 3, 4])
@pytest.mark.parametrize("load_balance", ["zigzag", "contiguous"])
@pytest.mark.parametrize("causal,window", [(False, None), (True, None), (True, 5), (True, 1)])
def test_plans_cover_every_visible_pair_once_and_no_masked_block(
    num_shards, load_balance, causal, window, monkeypatch
):
    # What every process computes, over all its ring steps, is exactly the (query, key) pairs
    # the mask lets through, each once; a block no pair of is visible is never computed.
    from kzoo.backends.common import ring_schedule
    from kzoo.backends.torch import cp_ring
    from kzoo.distribution import zigzag_permutation

    monkeypatch.setattr(ring_schedule, "ATTENTION_BLOCK", 2)
    cp_ring._plan.cache_clear()
    seq = 8 * num_shards
    length, chunk = seq // num_shards, seq // (2 * num_shards)
    perm = zigzag_permutation(seq, num_shards)
    positions = perm if load_balance == "zigzag" else np.arange(seq)
    counts = np.zeros((seq, seq), int)
    try:
        for rank in range(num_shards):
            steps, _, q_size, k_size, plan = cp_ring._plan(
                rank, num_shards, causal, load_balance, window, chunk, chunk
            )
            for step in steps:
                source = (rank - step) % num_shards
                for qi, ki, offset in plan[step]:
                    qp = positions[rank * length + qi * q_size :][:q_size]
                    kp = positions[source * length + ki * k_size :][:k_size]
                    distance = qp[:, None] - kp[None, :]
                    visible = np.ones_like(distance, bool)
                    if causal:
                        visible &= distance >= 0
                    if window is not None:
                        visible &= distance < window
                    assert visible.any()
                    if offset is None:
                        assert visible.all()
                    else:  # the offset is the first query's position minus the first key's
                        assert offset == qp[0] - kp[0]
                    counts[np.ix_(qp, kp)] += visible
    finally:
        cp_ring._plan.cache_clear()
    distance = np.arange(seq)[:, None] - np.arange(seq)[None, :]
    expected = np.ones((seq, seq), int)
    if causal:
        expected &= distance >= 0
    if window is not None:
        expected &= distance < window
    np.testing.assert_array_equal(counts, expected)


@pytest.mark.backends("torch")
def test_byte_packing_round_trips_ids_and_values_exactly():
    import torch

    from kzoo.backends.torch import cp_blocks

    k = torch.tensor([[np.nan, -0.0, 1e-40]], dtype=torch.float32)
    v = torch.tensor([[1.5, 2.25]], dtype=torch.bfloat16)
    ids = torch.tensor([[2**31 - 1, -1, 7]], dtype=torch.int32)
    packed = cp_blocks.pack([k, v, ids])
    assert packed.dtype == torch.uint8 and packed.numel() == 12 + 4 + 12
    k2, v2, ids2 = cp_blocks.unpack(packed, [k, v, ids])
    assert k2.view(torch.int32).equal(k.view(torch.int32))  # bit for bit, NaN payload too
    assert v2.equal(v) and ids2.equal(ids)


@pytest.mark.backends("torch")
def test_meta_tensors_give_shapes_without_communication():
    import torch

    from kzoo.backends.torch import cp_ring

    mesh = types.SimpleNamespace(context_index=0, context_size=4, context_group="no group")
    q = torch.empty((2, 8, 4, 3), device="meta")
    kv = torch.empty((2, 8, 2, 3), device="meta")
    out = cp_ring.ring_attention(q, kv, torch.empty((2, 8, 2, 5), device="meta"), mesh=mesh)
    assert out.shape == (2, 8, 4, 5) and out.device.type == "meta"


@pytest.mark.backends("torch")
def test_a_sequence_shard_of_odd_length_names_the_whole_sequence_and_2cp():
    import torch

    from kzoo.backends.torch import cp_ring

    mesh = types.SimpleNamespace(context_index=0, context_size=4, context_group=None)
    q, kv = torch.zeros((1, 3, 2, 4)), torch.zeros((1, 3, 2, 4))
    # 3 tokens per process of 4: a sequence of 12, which does not divide by 2 * CP = 8.
    with pytest.raises(ValueError, match="divide by 2 \\* CP = 8.*has length 12"):
        cp_ring.ring_attention(q, kv, kv, mesh=mesh, causal=True)


def _no_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.backends("torch")
def test_runtime_errors_before_anything_runs(monkeypatch):
    import torch
    import torch.distributed as dist

    from kzoo.distribution import ContextParallel, initialize, list_devices

    _no_torchrun(monkeypatch)
    assert not dist.is_initialized()
    # One process, no torchrun: a one-device mesh needs no runtime, a larger one is an error.
    assert list_devices() == ["cpu:0"] and initialize() == 1
    one = ContextParallel(
        keras.distribution.DeviceMesh((1,), ["context"], devices=list_devices()),
        batch_dim_name=None,
    )
    assert one.runtime is None and one.context_size == 1
    mesh = keras.distribution.DeviceMesh((1, 2), ["batch", "context"], devices=["cpu:0", "cpu:1"])
    with pytest.raises(ValueError, match="no process group is initialised.*--nproc-per-node 2"):
        ContextParallel(mesh)
    with pytest.raises(ValueError, match="backend must be one of"):
        initialize("mpi")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="backend='nccl' needs CUDA GPUs"):
            initialize("nccl")
    # A running group of one process: a mesh of two devices does not match it.
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )
    try:
        with pytest.raises(ValueError, match="mesh has 2 devices.*runs 1 processes"):
            ContextParallel(mesh)
        bad = keras.distribution.DeviceMesh((1, 2), ["batch", "context"], ["tpu:0", "tpu:1"])
        with pytest.raises(ValueError, match="named 'cpu:<rank>'"):
            ContextParallel(bad)
        assert initialize() == 1 and initialize("gloo") == 1  # the running group is kept
    finally:
        dist.destroy_process_group()


def _runtime_at(batch_index, batch_shards, context_index, context_size):
    """A ProcessRuntime's data arithmetic at one mesh coordinate (no process group needed)."""
    from kzoo.backends.torch.cp_training import ProcessRuntime

    runtime = object.__new__(ProcessRuntime)
    runtime.batch_index, runtime.batch_shards = batch_index, batch_shards
    runtime.context_index, runtime.context_size = context_index, context_size
    return runtime


@pytest.mark.backends("torch")
def test_data_shards_rebuild_every_global_batch_and_refuse_what_does_not_divide():
    from kzoo.distribution import zigzag_permutation

    # 10 rows in global batches of 4 (the last holds 2), 16 tokens, mesh 2 (batch) x 4 (seq).
    tokens = np.arange(10 * 16).reshape(10, 16)
    weights = np.arange(10.0)
    shards = {
        (j, c): _runtime_at(j, 2, c, 4).shard_data(
            {"tokens": tokens}, tokens[:, zigzag_permutation(16, 4)], weights, batch_size=4
        )
        for j in range(2)
        for c in range(4)
    }
    for (j, c), (x, y, w, local_batch) in shards.items():
        assert local_batch == 2 and x["tokens"].shape == (5, 4) and w.shape == (5,)
        # Batch k of every process of batch row j holds rows k*4 + 2j, k*4 + 2j + 1 (and row
        # 8 + j of the last batch), and its sequence coordinate's quarter of the tokens.
        rows = [0 + 2 * j, 1 + 2 * j, 4 + 2 * j, 5 + 2 * j, 8 + j]
        np.testing.assert_array_equal(x["tokens"], tokens[rows][:, 4 * c : 4 * c + 4])
        np.testing.assert_array_equal(
            y, tokens[rows][:, zigzag_permutation(16, 4)][:, 4 * c :][:, :4]
        )
        np.testing.assert_array_equal(w, weights[rows])
    # The processes of one batch row see the same rows; together they see everything once.
    rebuilt = np.concatenate([shards[(0, c)][0]["tokens"] for c in range(4)], axis=1)
    np.testing.assert_array_equal(rebuilt, tokens[[0, 1, 4, 5, 8]])
    runtime = _runtime_at(0, 2, 0, 4)
    with pytest.raises(ValueError, match="must divide by the 2 processes"):
        runtime.shard_data(tokens, batch_size=3)
    with pytest.raises(ValueError, match="a batch holds 1 rows"):
        runtime.shard_data(tokens[:9], batch_size=4)
    with pytest.raises(ValueError, match="divide by 2 \\* CP = 8.*sequence length 12"):
        runtime.shard_data(np.zeros((4, 12)), batch_size=4)
    with pytest.raises(ValueError, match="different numbers of rows"):
        runtime.shard_data(tokens, tokens[:8], batch_size=2)
    with pytest.raises(ValueError, match="auto_shard_dataset=False"):
        runtime.shard_data(iter([tokens]), batch_size=2)


@pytest.mark.backends("torch")
def test_checkpoint_writes_are_atomic_and_failures_leave_the_old_file(tmp_path):
    from kzoo.backends.torch.cp_training import _write_atomically

    target = tmp_path / "model.weights.h5"
    target.write_bytes(b"old")
    seen = []

    def write(path):
        seen.append(path)
        assert not os.path.exists(path)  # a fresh temporary file next to the target
        with open(path, "wb") as f:
            f.write(b"new")

    _write_atomically(write, str(target), overwrite=True)
    assert target.read_bytes() == b"new" and seen[0].endswith(".weights.h5")
    assert os.path.dirname(seen[0]) == str(tmp_path) and seen[0] != str(target)

    def broken(path):
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _write_atomically(broken, str(target), overwrite=True)
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.weights.h5"]


# ---------------------------------------------------------------------------------------------
# Real processes.


def _layer_inputs(seed=3, b=2, s=32, dim=12):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, s, dim)).astype("float32")
    cot = rng.normal(size=(b, s, dim)).astype("float32")
    mask = np.ones((b, s), bool)
    mask[0, 29:] = False
    mask[1, 30:] = False
    return x, cot, mask


def _layer_grads(layer, sent, x, cot, mask, seg):
    """The layer's output, the gradients of its input and weights, and the exchanges the
    forward pass made (``sent`` collects the ring's exchanges)."""
    import torch

    weights = [w.value for w in layer.trainable_weights]
    xt = torch.tensor(x, requires_grad=True)
    out = layer(
        xt, xt, attention_mask=None if mask is None else torch.tensor(mask),
        segment_ids=None if seg is None else torch.tensor(seg),
    )  # fmt: skip
    forward = len(sent)
    g = torch.autograd.grad((out * torch.tensor(cot)).sum(), [xt] + weights)
    return out.detach().numpy(), g[0].numpy(), [t.clone() for t in g[1:]], forward


def _op_grads(q, k, v, cot, mask, seg, causal, window):
    """The attention op's output and the gradients of query, key and value."""
    import torch

    qkv = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    out = ra.ring_attention(
        *qkv, key_mask=None if mask is None else torch.tensor(mask), causal=causal,
        segment_ids=None if seg is None else torch.tensor(seg), window_size=window,
    )  # fmt: skip
    grads = torch.autograd.grad((out * torch.tensor(cot)).sum(), qkv)
    return [out.detach().numpy()] + [g.numpy() for g in grads]


def _attention_worker(out_dir):
    """Run by every process: each configuration once on the whole sequence without a
    distribution (the reference) and once context parallel; record the largest differences."""
    import torch.distributed as dist

    from kzoo.backends.torch import cp_ring
    from kzoo.distribution import ContextParallel, list_devices, pack_documents
    from kzoo.layers import ContextParallelAttention

    world = len(list_devices())
    rank = dist.get_rank()
    sent = []
    exchange = cp_ring.exchange

    def counting(*args, **kwargs):
        sent.append(args[3] if len(args) > 3 else kwargs.get("tag"))
        return exchange(*args, **kwargs)

    cp_ring.exchange = counting
    x, cot, pad = _layer_inputs()
    rng = np.random.default_rng(5)
    qkv = [rng.normal(size=(2, 32, h, 4)).astype("float32") for h in (4, 2, 2)]
    op_cot = rng.normal(size=(2, 32, 4, 4)).astype("float32")
    segments = pack_documents(DOCUMENTS, x.shape[1])[0]
    mesh = keras.distribution.DeviceMesh((1, world), ["batch", "context"], devices=list_devices())
    length = x.shape[1] // world
    part = slice(rank * length, (rank + 1) * length)
    results = []
    for causal, window, packed, padded in CASES:
        keras.utils.set_random_seed(11)
        layer = ContextParallelAttention(
            num_heads=4, key_dim=4, num_key_value_heads=2, causal=causal, window_size=window
        )
        layer.build(x.shape, x.shape)
        mask = pad if padded else None
        seg = segments if packed else None
        out_ref, dx_ref, dw_ref, _ = _layer_grads(layer, sent, x, cot, mask, seg)
        op_ref = _op_grads(*qkv, op_cot, mask, seg, causal, window)
        for strategy in ("ring", "all_to_all"):
            for load_balance in ("zigzag", "contiguous"):
                cp = ContextParallel(mesh, strategy=strategy, load_balance=load_balance)
                local = [
                    None if a is None else cp.to_layout_order(a)[:, part]
                    for a in (x, cot, mask, seg, out_ref, dx_ref)
                ]
                sent.clear()
                with cp.scope():
                    out, dx, dw, forward = _layer_grads(layer, sent, *local[:4])
                backward = len(sent) - forward
                with cp.scope():
                    op = _op_grads(
                        *[cp.to_layout_order(a)[:, part] for a in qkv + [op_cot]],
                        *local[2:4], causal, window,
                    )  # fmt: skip
                op_error = max(
                    float(np.abs(a - cp.to_layout_order(b)[:, part]).max())
                    for a, b in zip(op, op_ref)
                )
                for g in dw:  # the replicated weights' gradient: the sum of every process's
                    dist.all_reduce(g)
                chunk = x.shape[1] // (2 * world)
                steps = cp_ring.ring_steps(world, causal, load_balance, window, chunk)
                results.append(
                    {
                        "config": [strategy, load_balance, causal, window, packed, padded],
                        "out": float(np.abs(out - local[4]).max()),
                        "dx": float(np.abs(dx - local[5]).max()),
                        "dw": max(float((a - b).abs().max()) for a, b in zip(dw, dw_ref)),
                        # The op alone: output and the gradients of query, key and value.
                        "op": op_error,
                        # Softmax ignores a key bias (its gradient is 0): the others must not
                        # be trivially small.
                        "dw_ref_min_max": min(
                            float(b.abs().max())
                            for w, b in zip(layer.trainable_weights, dw_ref)
                            if not w.path.endswith("key/bias")
                        ),
                        "sends": [forward, backward],
                        "steps": len(steps),
                    }
                )
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"world": world, "results": results}, f)
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.backends("torch")
@pytest.mark.parametrize("nproc", [2, 4])
def test_processes_match_one_process_outputs_and_all_gradients(nproc, tmp_path):
    run_torchrun(__file__, nproc, ["attention", str(tmp_path)])
    for rank in range(nproc):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["world"] == nproc
        assert len(report["results"]) == 4 * len(CASES)
        for r in report["results"]:
            strategy, load_balance, causal, window, packed, padded = r["config"]
            assert r["out"] <= 1e-5 and r["dx"] <= 1e-5 and r["dw"] <= 1e-5, r
            assert r["op"] <= 1e-5, r
            assert r["dw_ref_min_max"] > 1e-3, r
            forward, backward = r["sends"]
            if strategy == "ring":
                # Forward: one exchange per further ring step; backward: the key/value blocks
                # again plus each dK/dV accumulator (the last one home) - 2 * CP - 1 in all
                # without a window.
                assert forward == r["steps"] - 1, r
                expected = 2 * nproc - 1 if r["steps"] == nproc else 2 * (r["steps"] - 1)
                assert backward == expected, r
            else:
                assert forward == backward == 0, r  # all-to-all sends no ring blocks


if __name__ == "__main__":
    if sys.argv[1] == "attention":
        _attention_worker(sys.argv[2])
