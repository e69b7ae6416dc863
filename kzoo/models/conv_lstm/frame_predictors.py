"""Next-frame video predictors built from stacked ConvLSTM2D layers (keras's video example)."""

import keras
import numpy as np

from kzoo.export.mixin import ExportMixin
from kzoo.layers.conv_lstm2d import ConvLSTM2D
from kzoo.presets import PresetMixin
from kzoo.training.first_step import OptimizerBuiltBeforeTracing


def _check_stack(filters, kernel_sizes, channels):
    if not isinstance(channels, int) or isinstance(channels, bool) or channels <= 0:
        raise ValueError(f"`channels` must be a positive integer; got {channels!r}.")
    filters = tuple(filters) if isinstance(filters, (list, tuple)) else (filters,)
    kernel_sizes = (
        tuple(kernel_sizes) if isinstance(kernel_sizes, (list, tuple)) else (kernel_sizes,)
    )
    if not filters or not all(isinstance(f, int) and f > 0 for f in filters):
        raise ValueError(f"`filters` must be a non-empty list of positive ints; got {filters!r}.")
    if len(kernel_sizes) != len(filters) or not all(
        isinstance(k, int) and k > 0 for k in kernel_sizes
    ):
        raise ValueError(
            f"`kernel_sizes` must hold one positive int per ConvLSTM layer ({len(filters)}); "
            f"got {kernel_sizes!r}."
        )
    return filters, kernel_sizes


def conv_lstm_stack(x, filters, kernel_sizes, activation, last_return_sequences, layer_cls):
    """ConvLSTM2D layers with BatchNormalization between them (not after the last)."""
    for index, (f, k) in enumerate(zip(filters, kernel_sizes)):
        last = index == len(filters) - 1
        x = layer_cls(
            f,
            (k, k),
            padding="same",
            activation=activation,
            return_sequences=last_return_sequences or not last,
            name=f"conv_lstm_{index}",
        )(x)
        if not last:
            x = keras.layers.BatchNormalization(name=f"batch_norm_{index}")(x)
    return x


def _frames_input(channels, frame_size):
    # keras's own ConvLSTM2D needs static spatial dims (the benchmark builds with it); kzoo's
    # does not, so the models accept any frame size.
    size = (None, None) if frame_size is None else tuple(frame_size)
    return keras.Input(shape=(None,) + size + (channels,), name="frames")


def build_next_frame_graph(
    channels, filters, kernel_sizes, activation, head_kernel_size, layer_cls, frame_size=None
):
    """Inputs and outputs of ``NextFramePredictor``'s graph, with ``layer_cls`` as ConvLSTM."""
    inputs = _frames_input(channels, frame_size)
    x = conv_lstm_stack(inputs, filters, kernel_sizes, activation, True, layer_cls)
    k = head_kernel_size
    outputs = keras.layers.Conv3D(
        channels, (k, k, k), padding="same", activation="sigmoid", name="head"
    )(x)
    return inputs, outputs


def build_color_frame_graph(
    channels,
    output_channels,
    filters,
    kernel_sizes,
    activation,
    head_kernel_size,
    layer_cls,
    frame_size=None,
):
    """Inputs and outputs of ``ColorFramePredictor``'s graph, with ``layer_cls`` as ConvLSTM."""
    inputs = _frames_input(channels, frame_size)
    x = conv_lstm_stack(inputs, filters, kernel_sizes, activation, False, layer_cls)
    k = head_kernel_size
    outputs = keras.layers.Conv2D(
        output_channels, (k, k), padding="same", activation="sigmoid", name="head"
    )(x)
    return inputs, outputs


class _FramePredictor(OptimizerBuiltBeforeTracing, PresetMixin, ExportMixin, keras.Model):
    """What both predictors share: self-compiling defaults and config handling."""

    _default_loss = "mae"
    _config_keys = ()

    def compile(self, optimizer="auto", loss="auto", metrics="auto", **kwargs):
        """Adam (learning rate 1e-3), the model's default loss and an MAE metric unless told
        otherwise (binary cross-entropy for ``NextFramePredictor``, MAE for
        ``ColorFramePredictor``)."""
        optimizer = keras.optimizers.Adam(1e-3) if optimizer == "auto" else optimizer
        loss = self._default_loss if loss == "auto" else loss
        metrics = ["mae"] if metrics == "auto" else metrics
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    # The model compiles itself with its defaults when built, so saved files carry no compile
    # settings: a saved optimizer's class is backend-specific (a preset saved on torch names
    # torch's Adam), and restoring it on another backend would import that framework.
    def get_compile_config(self):
        return None

    def compile_from_config(self, config):
        self.compile()

    def _next_frame(self, window, batch_size):
        """The model's prediction of the frame after ``window``: ``(batch, H, W, C)``."""
        raise NotImplementedError

    def rollout(self, frames, steps=1, batch_size=32):
        """Predict ``steps`` frames after ``frames`` by feeding predictions back in.

        Each step predicts the frame after the current window, then slides the window: the
        oldest frame is dropped and the prediction appended, so the model always sees as many
        frames as ``frames`` holds, the window length it was trained on. (Growing the window
        instead would show the ConvLSTM longer sequences than it ever saw in training, and
        make every step cost more than the last.)

        Args:
            frames: ``(batch, time, height, width, channels)`` context frames in [0, 1].
            steps: How many frames to predict.
            batch_size: Sequences per forward pass (``predict``'s batch size).

        Returns:
            float32 numpy array ``(batch, steps, height, width, channels)``; step ``k`` is the
            prediction of frame ``time + k``.

        Example:

        ```python
        model = kzoo.models.ColorFramePredictor.from_preset("convlstm_color_shapes")
        videos = kzoo.data.moving_objects(4, num_frames=16, image_size=24, color=True)
        future = model.rollout(videos[:, :6], steps=10)  # (4, 10, 24, 24, 3)
        ```
        """
        if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps <= 0:
            raise ValueError(f"`steps` must be a positive integer; got {steps!r}.")
        if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise ValueError(f"`batch_size` must be a positive integer; got {batch_size!r}.")
        window = np.asarray(keras.ops.convert_to_numpy(frames), dtype="float32")
        if window.ndim != 5 or min(window.shape[:2]) == 0:
            raise ValueError(
                "`frames` must be (batch, time, height, width, channels) with at least one "
                f"sequence and one frame; got shape {window.shape}."
            )
        if window.shape[-1] != self.channels:
            raise ValueError(
                f"`frames` must have {self.channels} channels (the model's `channels`); got "
                f"{window.shape[-1]}."
            )
        out_channels = getattr(self, "output_channels", self.channels)
        if out_channels != self.channels:
            raise ValueError(
                f"rollout feeds predictions back as inputs, so `output_channels` "
                f"({out_channels}) must equal `channels` ({self.channels})."
            )
        predictions = []
        for _ in range(int(steps)):
            frame = self._next_frame(window, int(batch_size)).astype("float32")
            predictions.append(frame)
            window = np.concatenate([window[:, 1:], frame[:, None]], axis=1)
        return np.stack(predictions, axis=1)

    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable}
        for key in self._config_keys:
            value = getattr(self, key)
            config[key] = list(value) if isinstance(value, tuple) else value
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="kzoo")
class NextFramePredictor(_FramePredictor):
    """Predicts every next frame of a video: stacked ConvLSTM2D + BatchNorm, Conv3D head.

    Input ``(batch, time, height, width, channels)`` in [0, 1]; output the same shape, step
    ``t`` being the prediction of frame ``t + 1`` (train on ``next_frame_targets(v,
    "sequence")``). Any frame size works; frames are channels-last. Compiled at construction
    with Adam and binary cross-entropy, as keras's next-frame example (``compile`` again to
    change it).

    Args:
        channels: Channels of a frame (1 for grey videos).
        filters: Filters of each ConvLSTM2D layer.
        kernel_sizes: Kernel size of each ConvLSTM2D layer.
        activation: Activation of the ConvLSTM cells.
        head_kernel_size: Kernel size of the sigmoid Conv3D head.

    Example:

    ```python
    model = kzoo.models.NextFramePredictor(channels=1, filters=(16, 16), kernel_sizes=(5, 3))
    x, y = kzoo.data.next_frame_targets(kzoo.data.moving_objects(32), "sequence")
    model.fit(x, y, epochs=1, batch_size=8)
    ```
    """

    # Binary cross-entropy by default, as keras's next-frame example trains it.
    _default_loss = "binary_crossentropy"
    _config_keys = ("channels", "filters", "kernel_sizes", "activation", "head_kernel_size")

    def __init__(
        self,
        channels=1,
        filters=(64, 64, 64),
        kernel_sizes=(5, 3, 1),
        activation="relu",
        head_kernel_size=3,
        **kwargs,
    ):
        filters, kernel_sizes = _check_stack(filters, kernel_sizes, channels)
        if not isinstance(head_kernel_size, int) or head_kernel_size <= 0:
            raise ValueError(
                f"`head_kernel_size` must be a positive integer; got {head_kernel_size!r}."
            )
        inputs, outputs = build_next_frame_graph(
            channels, filters, kernel_sizes, activation, head_kernel_size, ConvLSTM2D
        )
        kwargs.setdefault("name", "next_frame_predictor")
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.channels = channels
        self.filters = filters
        self.kernel_sizes = kernel_sizes
        self.activation = activation
        self.head_kernel_size = head_kernel_size
        self.compile()

    def _next_frame(self, window, batch_size):
        # Step t of the output predicts frame t + 1: the last step predicts the next frame.
        return np.asarray(self.predict(window, batch_size=batch_size, verbose=0))[:, -1]


@keras.saving.register_keras_serializable(package="kzoo")
class ColorFramePredictor(_FramePredictor):
    """Predicts the frame after a colour video: stacked ConvLSTM2D, Conv2D head.

    The last ConvLSTM2D returns only its last output; a sigmoid Conv2D with ``output_channels``
    filters turns it into the next frame. Input ``(batch, time, height, width, channels)`` in
    [0, 1]; output ``(batch, height, width, output_channels)`` (train on
    ``next_frame_targets(v, "last")``). Compiled at construction with Adam, MAE loss and an MAE
    metric.

    Args:
        channels: Channels of an input frame.
        output_channels: Channels of the predicted frame.
        filters: Filters of each ConvLSTM2D layer.
        kernel_sizes: Kernel size of each ConvLSTM2D layer.
        activation: Activation of the ConvLSTM cells.
        head_kernel_size: Kernel size of the Conv2D head.

    Example:

    ```python
    model = kzoo.models.ColorFramePredictor.from_preset("convlstm_color_shapes")
    videos = kzoo.data.moving_objects(4, color=True, seed=7)
    x, y = kzoo.data.next_frame_targets(videos, target="last")
    next_frames = model.predict(x)  # (4, 32, 32, 3)
    ```
    """

    _default_loss = "mae"
    _config_keys = (
        "channels",
        "output_channels",
        "filters",
        "kernel_sizes",
        "activation",
        "head_kernel_size",
    )

    def __init__(
        self,
        channels=3,
        output_channels=3,
        filters=(64, 64, 64),
        kernel_sizes=(5, 3, 1),
        activation="relu",
        head_kernel_size=3,
        **kwargs,
    ):
        filters, kernel_sizes = _check_stack(filters, kernel_sizes, channels)
        if not isinstance(output_channels, int) or output_channels <= 0:
            raise ValueError(
                f"`output_channels` must be a positive integer; got {output_channels!r}."
            )
        if not isinstance(head_kernel_size, int) or head_kernel_size <= 0:
            raise ValueError(
                f"`head_kernel_size` must be a positive integer; got {head_kernel_size!r}."
            )
        inputs, outputs = build_color_frame_graph(
            channels,
            output_channels,
            filters,
            kernel_sizes,
            activation,
            head_kernel_size,
            ConvLSTM2D,
        )
        kwargs.setdefault("name", "color_frame_predictor")
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.channels = channels
        self.output_channels = output_channels
        self.filters = filters
        self.kernel_sizes = kernel_sizes
        self.activation = activation
        self.head_kernel_size = head_kernel_size
        self.compile()

    def _next_frame(self, window, batch_size):
        return np.asarray(self.predict(window, batch_size=batch_size, verbose=0))
