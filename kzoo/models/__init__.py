"""kzoo.models."""

from kzoo import _command

if not _command.parsing:
    # Skipped only while the kzoo command parses its arguments (see kzoo/_command.py).
    from kzoo.models.causal_lm import CausalLM, CausalLMBlock  # noqa: F401
    from kzoo.models.conv_lstm import ColorFramePredictor, NextFramePredictor  # noqa: F401
    from kzoo.models.detr import DETR  # noqa: F401
