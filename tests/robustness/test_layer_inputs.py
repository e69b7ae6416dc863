"""Issue #17, item 9: layers refuse bad arguments and inputs with one ``ValueError`` naming the
argument, raised before backend code runs, so every backend gives the same message."""

import keras
import numpy as np
import pytest

from kzoo.layers import ContextParallelAttention, ConvLSTM2D, LayerNormalization
from tests.presets.tiny_model import TinyPresetModel, build


def _x(*shape, dtype="float32"):
    return np.random.default_rng(0).normal(size=shape).astype(dtype)


# ----------------------------------------------------------------------------- attention

ATTENTION_CASES = {
    "kv_length": (
        dict(query=_x(2, 8, 6), value=_x(2, 5, 6), key=_x(2, 4, 6)),
        r"`key` and `value` must have the same length; got key length 4 and value length 5",
    ),
    "value_batch": (
        dict(query=_x(2, 8, 6), value=_x(3, 8, 6)),
        r"`value` has batch size 3 but `query` has 2",
    ),
    "key_batch": (
        dict(query=_x(2, 8, 6), value=_x(2, 8, 6), key=_x(1, 8, 6)),
        r"`key` has batch size 1 but `query` has 2",
    ),
    "mask_query_length": (
        dict(query=_x(2, 8, 6), value=_x(2, 5, 6), attention_mask=np.ones((2, 8), bool)),
        r"`attention_mask` must be a key padding mask \(batch, kv_len\) = \(2, 5\)",
    ),
    "mask_rank_1": (
        dict(query=_x(2, 8, 6), value=_x(2, 8, 6), attention_mask=np.ones((8,), bool)),
        r"`attention_mask` must be .*got shape \(8,\)",
    ),
    "query_rank_2": (
        dict(query=_x(8, 6), value=_x(2, 8, 6)),
        r"`query` must have shape \(batch, seq_len, dim\); got shape \(8, 6\) \(rank 2\)",
    ),
}


@pytest.mark.parametrize("case", sorted(ATTENTION_CASES))
def test_attention_input_mistakes(case):
    inputs, message = ATTENTION_CASES[case]
    layer = ContextParallelAttention(num_heads=2, key_dim=4)
    with pytest.raises(ValueError, match=message):
        layer(**inputs)
    # The same mistake on a layer already built by a good call.
    built = ContextParallelAttention(num_heads=2, key_dim=4)
    built(_x(2, 8, 6), _x(2, 8, 6))
    with pytest.raises(ValueError, match=message):
        built(**inputs)


def test_attention_built_for_another_width():
    layer = ContextParallelAttention(num_heads=2, key_dim=4)
    layer(_x(2, 8, 6), _x(2, 8, 6))
    with pytest.raises(ValueError, match=r"`value` has last dimension 7 but the layer was built"):
        layer(_x(2, 8, 6), _x(2, 8, 7))


def test_causal_needs_equal_lengths_on_one_device_as_in_the_ring():
    layer = ContextParallelAttention(num_heads=2, key_dim=4, causal=True)
    with pytest.raises(ValueError, match=r"causal=True needs equal query and key/value lengths"):
        layer(_x(2, 8, 6), _x(2, 6, 6))
    assert tuple(layer(_x(2, 8, 6), _x(2, 8, 6)).shape) == (2, 8, 6)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(value_dim=True), "value_dim"),
        (dict(num_key_value_heads=True), "num_key_value_heads"),
        (dict(output_shape=True), "output_shape"),
        (dict(causal="yes"), "causal"),
    ],
)
def test_attention_refuses_booleans_for_sizes(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ContextParallelAttention(num_heads=2, key_dim=4, **kwargs)


# ----------------------------------------------------------------------------- ConvLSTM


def test_conv_lstm_integer_inputs():
    layer = ConvLSTM2D(2, 3, padding="same")
    with pytest.raises(ValueError, match=r"`inputs` of ConvLSTM2D must be floating point; got "):
        layer(np.zeros((1, 2, 4, 4, 1), "int32"))


@pytest.mark.parametrize("mask_shape", [(1, 2), (2, 3), (2,), (2, 2, 1)])
def test_conv_lstm_mask_of_the_wrong_shape(mask_shape):
    layer = ConvLSTM2D(2, 3, padding="same")
    with pytest.raises(ValueError, match=r"`mask` must have shape \(batch, time\) = \(2, 2\)"):
        layer(_x(2, 2, 4, 4, 1), mask=np.ones(mask_shape, bool))


def test_conv_lstm_empty_batch():
    layer = ConvLSTM2D(2, 3, padding="same")
    with pytest.raises(ValueError, match="`inputs` is an empty batch"):
        layer(np.zeros((0, 2, 4, 4, 1), "float32"))
    layer(_x(1, 2, 4, 4, 1))  # built
    with pytest.raises(ValueError, match="`inputs` is an empty batch"):
        layer(np.zeros((0, 2, 4, 4, 1), "float32"))


# ----------------------------------------------------------------------------- LayerNormalization


@pytest.mark.parametrize("epsilon", [float("nan"), float("inf"), -1e-3])
def test_layer_norm_epsilon_must_be_finite(epsilon):
    with pytest.raises(ValueError, match="`epsilon` must be a finite"):
        LayerNormalization(epsilon=epsilon)


# ----------------------------------------------------------------------------- presets


def test_architecture_mismatch_when_loading_names_the_override(tmp_path):
    build(units=4).save_to_preset(tmp_path / "p")
    with pytest.raises(ValueError) as info:
        TinyPresetModel.from_preset(str(tmp_path / "p"), units=6)
    message = str(info.value)
    assert "units=6" in message and "load_weights=False" in message
    assert "List of objects" not in message and "\n" not in message
    fresh = TinyPresetModel.from_preset(str(tmp_path / "p"), units=6, load_weights=False)
    assert fresh.units == 6 and keras.ops.convert_to_numpy(fresh(_x(1, 3))).shape == (1, 2)
