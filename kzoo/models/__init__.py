"""kzoo.models."""

from kzoo.models.causal_lm import CausalLM, CausalLMBlock  # noqa: E402,F401
from kzoo.models.conv_lstm import ColorFramePredictor, NextFramePredictor  # noqa: E402,F401
from kzoo.models.detr import DETR  # noqa: E402,F401
