"""ConvLSTM video predictors: ``NextFramePredictor`` and ``ColorFramePredictor``."""

from kzoo.models.conv_lstm import presets  # noqa: F401  (registers the shipped presets)
from kzoo.models.conv_lstm.frame_predictors import ColorFramePredictor, NextFramePredictor

__all__ = ["ColorFramePredictor", "NextFramePredictor"]
