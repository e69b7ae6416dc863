"""kzoo.models: the models, and the heads and export wrappers that belong to them."""

from kzoo import _command

if not _command.parsing:
    # Skipped only while the kzoo command parses its arguments (see kzoo/_command.py).
    from kzoo.models.causal_lm import CausalLM, CausalLMBlock
    from kzoo.models.conv_lstm import ColorFramePredictor, NextFramePredictor
    from kzoo.models.detr import DETR, DETRDetections, DETRHead

__all__ = [
    "CausalLM",
    "CausalLMBlock",
    "ColorFramePredictor",
    "DETR",
    "DETRDetections",
    "DETRHead",
    "NextFramePredictor",
]
