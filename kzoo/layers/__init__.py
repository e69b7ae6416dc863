"""kzoo.layers."""

from kzoo.layers.context_parallel_attention import ContextParallelAttention  # noqa: E402,F401
from kzoo.layers.conv_lstm import ConvLSTM  # noqa: E402,F401
from kzoo.layers.conv_lstm1d import ConvLSTM1D  # noqa: E402,F401
from kzoo.layers.conv_lstm2d import ConvLSTM2D  # noqa: E402,F401
from kzoo.layers.conv_lstm3d import ConvLSTM3D  # noqa: E402,F401
from kzoo.layers.dropout import Dropout  # noqa: E402,F401
from kzoo.layers.layer_normalization import LayerNormalization  # noqa: E402,F401
from kzoo.layers.rms_normalization import RMSNormalization  # noqa: E402,F401

__all__ = [
    "ContextParallelAttention",
    "ConvLSTM",
    "ConvLSTM1D",
    "ConvLSTM2D",
    "ConvLSTM3D",
    "Dropout",
    "LayerNormalization",
    "RMSNormalization",
]


def __getattr__(name):
    # DETRHead is kzoo.models.DETRHead (it lives with DETR, a layer above); this name is an
    # alias, deprecated, answered through kzoo._deprecated so this package imports no model.
    from kzoo._deprecated import moved_name

    return moved_name(__name__, name)
