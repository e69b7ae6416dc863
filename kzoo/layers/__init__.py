"""kzoo.layers."""

from kzoo.layers.context_parallel_attention import ContextParallelAttention  # noqa: E402,F401
from kzoo.layers.conv_lstm import ConvLSTM, ConvLSTM1D, ConvLSTM2D, ConvLSTM3D  # noqa: E402,F401
from kzoo.layers.layer_normalization import LayerNormalization  # noqa: E402,F401
from kzoo.layers.rms_normalization import RMSNormalization  # noqa: E402,F401
