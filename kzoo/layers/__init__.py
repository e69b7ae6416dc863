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
    "DETRHead",
    "Dropout",
    "LayerNormalization",
    "RMSNormalization",
]


def __getattr__(name):
    # DETRHead lives with the model it belongs to (kzoo.models.detr.model.head), a layer above
    # this package: it is looked up on first use rather than imported here (``import kzoo`` has
    # imported it by then anyway).
    if name == "DETRHead":
        from kzoo.models.detr.model.head import DETRHead

        return DETRHead
    raise AttributeError(f"module 'kzoo.layers' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | {"DETRHead"})
