"""kzoo.layers."""

from kzoo.layers.context_parallel_attention import ContextParallelAttention  # noqa: E402,F401
from kzoo.layers.conv_lstm import ConvLSTM, ConvLSTM1D, ConvLSTM2D, ConvLSTM3D  # noqa: E402,F401
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
    # DETRHead is built from kzoo.models.detr's pieces, and kzoo.models.detr imports it: an
    # import here would be circular, so it is looked up on first use (``import kzoo`` has
    # imported it by then anyway).
    if name == "DETRHead":
        from kzoo.layers.detr_head import DETRHead

        return DETRHead
    raise AttributeError(f"module 'kzoo.layers' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | {"DETRHead"})
