"""Presets of the ConvLSTM predictors."""

from kzoo.presets import PresetInfo, register_preset

register_preset(
    PresetInfo(
        name="convlstm_color_shapes",
        model_class="ColorFramePredictor",
        location="builtin:convlstm_color_shapes",
        description="Predicts the next 32x32 frame of coloured bouncing shapes (9 frames in)",
        license="Apache-2.0",
    )
)

register_preset(
    PresetInfo(
        name="convlstm_color_shapes_rollout",
        model_class="ColorFramePredictor",
        location="builtin:convlstm_color_shapes_rollout",
        description="convlstm_color_shapes fine-tuned on its own 10-step rollouts (MSE): "
        "lower rollout MSE",
        license="Apache-2.0",
    )
)
