"""kzoo.models."""

import kzoo as _kzoo

if not _kzoo._light:
    # Skipped only while the kzoo command parses its arguments (see kzoo/__init__.py).
    from kzoo.models.causal_lm import CausalLM, CausalLMBlock  # noqa: F401
    from kzoo.models.conv_lstm import ColorFramePredictor, NextFramePredictor  # noqa: F401
    from kzoo.models.detr import DETR  # noqa: F401
