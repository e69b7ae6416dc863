"""ConvLSTM1D/2D/3D show their whole argument list (help(), IDEs), as keras's layers do."""

import inspect
import re

import keras
import pytest

from kzoo.layers import ConvLSTM1D, ConvLSTM2D, ConvLSTM3D

PAIRS = [
    (ConvLSTM1D, keras.layers.ConvLSTM1D),
    (ConvLSTM2D, keras.layers.ConvLSTM2D),
    (ConvLSTM3D, keras.layers.ConvLSTM3D),
]


@pytest.mark.parametrize("ours, theirs", PAIRS)
def test_signature_is_keras_signature(ours, theirs):
    mine = inspect.signature(ours.__init__).parameters
    keras_params = inspect.signature(theirs.__init__).parameters
    assert list(mine) == list(keras_params)
    for name, param in keras_params.items():
        assert mine[name].default == param.default, name
        assert mine[name].kind == param.kind, name


@pytest.mark.parametrize("ours, theirs", PAIRS)
def test_docstring_documents_every_argument(ours, theirs):
    doc = inspect.getdoc(ours)
    for section in ("Args:", "Call arguments:", "Input shape:", "Output shape:", "Example:"):
        assert section in doc, section
    args = doc.split("Args:")[1].split("Call arguments:")[0]
    documented = re.findall(r"^    (?:\*\*)?(\w+):", args, flags=re.MULTILINE)
    assert documented == [p for p in inspect.signature(ours.__init__).parameters if p != "self"]
    assert f"keras.layers.{theirs.__name__}" in doc


def test_positional_arguments_land_where_keras_puts_them():
    args = (4, 3, 2, "same", "channels_first", 1, "relu", "hard_sigmoid", False)
    ours, theirs = ConvLSTM2D(*args), keras.layers.ConvLSTM2D(*args)
    for key in ("filters", "kernel_size", "strides", "padding", "data_format", "use_bias"):
        assert getattr(ours, key) == getattr(theirs, key), key
    assert ours.activation is keras.activations.relu
    assert ours.recurrent_activation is keras.activations.hard_sigmoid
    assert ours.rank == 2
    config = ours.get_config()
    assert "rank" not in config
    assert ConvLSTM2D.from_config(config).get_config() == config
    assert ConvLSTM3D.from_config({**ConvLSTM3D(2, 1).get_config(), "rank": 3}).rank == 3
