"""ContextParallel: mesh validation, data and variable layouts, and the zigzag layout order.

keras.distribution exists on JAX only (keras 3.15), so these run under JAX; the zigzag
permutation itself is plain numpy and is checked on every backend.
"""

import keras
import numpy as np
import pytest

from kzoo.distribution import zigzag_permutation


def test_zigzag_permutation_assigns_chunks_r_and_2cp_minus_1_minus_r():
    perm = zigzag_permutation(16, 4)  # 8 chunks of 2 tokens
    chunks = perm.reshape(4, 2, 2)[:, :, 0] // 2  # device r's two chunks
    assert chunks.tolist() == [[0, 7], [1, 6], [2, 5], [3, 4]]
    assert sorted(perm.tolist()) == list(range(16))
    # Every device gets the same number of causally visible (query, key) pairs.
    visible = [
        sum(int(q >= k) for q in perm[r * 4 : (r + 1) * 4] for k in range(16)) for r in range(4)
    ]
    assert len(set(visible)) == 1


def test_zigzag_permutation_rejects_lengths_not_divisible_by_2cp():
    with pytest.raises(ValueError, match="divide by 2 \\* CP = 8"):
        zigzag_permutation(12, 4)


def _mesh(shape=(2, 4), names=("batch", "context")):
    return keras.distribution.DeviceMesh(shape, list(names))


@pytest.mark.backends("jax")
def test_layouts_and_layout_order():
    from kzoo.distribution import ContextParallel

    cp = ContextParallel(_mesh())
    assert cp.context_size == 4 and cp.num_model_replicas == 2
    assert cp.get_data_layout((8, 32)).axes == ("batch", "context")
    assert cp.get_data_layout((8, 32, 5)).axes == ("batch", "context", None)
    assert cp.get_data_layout((8,)).axes == ("batch",)
    x = np.arange(2 * 16).reshape(2, 16)
    ordered = cp.to_layout_order(x)
    np.testing.assert_array_equal(ordered[0], zigzag_permutation(16, 4))
    np.testing.assert_array_equal(cp.from_layout_order(ordered), x)
    np.testing.assert_array_equal(cp.layout_positions(16), zigzag_permutation(16, 4))
    with pytest.raises(ValueError, match="2 \\* CP = 8"):
        cp.to_layout_order(np.zeros((2, 12)))
    contiguous = ContextParallel(_mesh(), load_balance="contiguous")
    np.testing.assert_array_equal(contiguous.to_layout_order(x), x)
    clone = ContextParallel.from_config(cp.get_config())
    assert clone.get_config() == cp.get_config()
    assert cp.strategy == "ring"
    auto = ContextParallel(_mesh(), strategy="auto")
    assert ContextParallel.from_config(auto.get_config()).strategy == "auto"


@pytest.mark.backends("jax")
def test_variables_replicated_or_laid_out_by_layout_map_and_data_sharded():
    import jax

    from kzoo.distribution import ContextParallel

    mesh = _mesh()
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map["dense/kernel"] = keras.distribution.TensorLayout([None, "batch"])
    cp = ContextParallel(mesh, layout_map=layout_map)
    with cp.scope():
        assert keras.distribution.distribution() is cp
        dense = keras.layers.Dense(4, name="dense")
        dense.build((None, 6))
        other = keras.layers.Dense(4, name="other")
        other.build((None, 6))
    assert keras.distribution.distribution() is None
    assert dense.kernel.value.sharding.spec == jax.sharding.PartitionSpec(None, "batch")
    assert other.kernel.value.sharding.is_fully_replicated
    data = keras.distribution.distribute_tensor(
        np.zeros((4, 16, 3), "float32"), cp.get_data_layout((4, 16, 3))
    )
    # Each device holds 2 of 4 rows and 4 of 16 positions.
    assert {s.data.shape for s in data.addressable_shards} == {(2, 4, 3)}


@pytest.mark.backends("jax")
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"sequence_axis": "seq"}, "sequence_axis='seq'"),
        ({"batch_dim_name": "data"}, "batch_dim_name='data'"),
        ({"load_balance": "random"}, "load_balance"),
        ({"strategy": "tree"}, "strategy must be one of"),
        ({"layout_map": {"a": None}}, "layout_map"),
        ({"batch_dim_name": "context"}, "different"),
    ],
)
def test_rejects_bad_arguments(kwargs, match):
    from kzoo.distribution import ContextParallel

    with pytest.raises(ValueError, match=match):
        ContextParallel(_mesh(), **kwargs)
    with pytest.raises(ValueError, match="DeviceMesh"):
        ContextParallel("mesh")


@pytest.mark.backends("jax")
def test_mesh_without_batch_axis():
    from kzoo.distribution import ContextParallel

    cp = ContextParallel(_mesh((8,), ("context",)), batch_dim_name=None)
    assert cp.num_model_replicas == 1 and cp.context_size == 8
    assert cp.get_data_layout((2, 32)).axes == (None, "context")
