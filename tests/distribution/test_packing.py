"""Packed documents: segment ids and positions in layout order, the layout check, and the
document reordering that balances the ring's work (checked with the ring's own skip rule)."""

import importlib
import itertools

import keras
import numpy as np
import pytest

from kzoo.distribution import check_packed_layout, pack_documents

ra = importlib.import_module("kzoo.ops.ring_attention")


def test_pack_documents_numbers_documents_and_restarts_positions():
    segment_ids, positions = pack_documents([[3, 2], [5], []], 6)
    assert segment_ids.dtype == positions.dtype == np.int32
    assert segment_ids.tolist() == [[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 0], [0] * 6]
    assert positions.tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 0], [0] * 6]
    check_packed_layout(segment_ids, positions)


@pytest.mark.parametrize(
    "lengths,match",
    [
        ([[3, 4]], "7 tokens, more than seq_len=6"),
        ([[0, 2]], "length < 1"),
        ([[1.5]], "list of rows"),
        ([3, 2], "list of rows"),
    ],
)
def test_pack_documents_rejects_bad_lengths(lengths, match):
    with pytest.raises(ValueError, match=match):
        pack_documents(lengths, 6)


def test_check_packed_layout_refuses_split_documents_and_broken_positions():
    with pytest.raises(ValueError, match="document 1 is split into 2 pieces"):
        check_packed_layout(np.array([[1, 1, 2, 1]]))
    with pytest.raises(ValueError, match="goes from position 1 to 3"):
        check_packed_layout(np.array([[1, 1, 1, 0]]), np.array([[0, 1, 3, 0]]))
    with pytest.raises(ValueError, match=">= 0"):
        check_packed_layout(np.array([[1, -1]]))
    with pytest.raises(ValueError, match="max_sequence_length=4"):
        check_packed_layout(np.array([[1, 1]]), np.array([[3, 4]]), max_position=4)


def _cp(shape):
    from kzoo.distribution import ContextParallel

    devices = keras.distribution.list_devices()[: int(np.prod(shape))]
    return ContextParallel(
        keras.distribution.DeviceMesh(shape, ["batch", "context"], devices=devices)
    )


@pytest.mark.backends("jax")
def test_layout_order_and_unconverted_inputs_are_refused():
    cp = _cp((2, 4))
    rows = [[5, 7, 4], [16]]
    segment_ids, positions = pack_documents(rows, 16, cp)
    natural_ids, natural_positions = pack_documents(rows, 16)
    np.testing.assert_array_equal(segment_ids, cp.to_layout_order(natural_ids))
    np.testing.assert_array_equal(positions, cp.to_layout_order(natural_positions))
    check_packed_layout(segment_ids, positions, cp)
    with pytest.raises(ValueError, match="segment_ids are not in the layout order"):
        check_packed_layout(natural_ids, None, cp)
    with pytest.raises(ValueError, match="positions are not in the layout order"):
        check_packed_layout(segment_ids, natural_positions, cp)
    with pytest.raises(ValueError, match="2 \\* CP = 8"):
        pack_documents([[5, 7]], 12, cp)


@pytest.mark.backends("jax")
def test_balance_documents_lowers_the_busiest_devices_work():
    from kzoo.distribution import balance_documents

    cp = _cp((1, 8))
    seq_len = 4096
    rng = np.random.default_rng(3)
    rows = []
    for _ in range(4):
        lengths = []
        while sum(lengths) < seq_len:
            lengths.append(int(rng.integers(1, seq_len // 2)))
        lengths[-1] -= sum(lengths) - seq_len
        rows.append(lengths)
    # Random short documents whose sums are exact multiples of the chunk size: the aligned
    # order skips every block between chunks.
    rows.append([64] * 64)

    def work(row):
        return np.array(ra.packed_device_work(pack_documents([row], seq_len, cp)[0], 8))

    orders = balance_documents(rows, seq_len, cp)
    for row, order in zip(rows, orders):
        assert sorted(order.tolist()) == list(range(len(row)))
        assert work([row[i] for i in order]).max() <= work(row).max()
    before = sum(work(row).max() for row in rows[:4])
    after = sum(work([row[i] for i in order]).max() for row, order in zip(rows[:4], orders))
    assert after <= 0.8 * before
    # With few documents the search finds the best order there is (busiest device first,
    # then max/mean): an exhaustive search over the 120 orders of the 5-document row agrees.
    row, order = rows[2], orders[2]
    assert len(row) == 5

    def key(order):
        w = work([row[i] for i in order])
        return (w.max(), w.max() / w.mean())

    assert key(order) == min(key(p) for p in itertools.permutations(range(5)))
    # 64-token documents on 256-token chunks: every device computes only its two own chunks.
    assert work([rows[4][i] for i in orders[4]]).tolist() == [2] * 8
    with pytest.raises(ValueError, match="ContextParallel"):
        balance_documents(rows, seq_len, None)
