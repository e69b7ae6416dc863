"""``ConvLSTM1D``: the 1D convolutional LSTM, a faster drop-in for ``keras.layers.ConvLSTM1D``
(the recurrence is ``kzoo.layers.conv_lstm.ConvLSTM``'s)."""

import keras

from kzoo.layers.conv_lstm import ConvLSTM


@keras.saving.register_keras_serializable(package="kzoo")
class ConvLSTM1D(ConvLSTM):
    """1D convolutional LSTM, a faster drop-in for ``keras.layers.ConvLSTM1D``.

    Same arguments, weights and outputs as ``keras.layers.ConvLSTM1D`` (weights ``kernel``,
    ``recurrent_kernel`` and ``bias`` on a sub-layer called ``cell``, gate order i, f, c, o), so
    ``layer.set_weights(keras_layer.get_weights())`` and keras weight files carry over; the
    recurrence is computed faster (see the module docstring). The cell is Shi et al., 2015
    (https://arxiv.org/abs/1506.04214) without peephole connections from the cell state, as in
    keras.

    Args:
        filters: Positive int, the number of output channels (and of each gate).
        kernel_size: Size of the convolution window, an int or a tuple of 1 ints (the
            input and the recurrent convolution use the same size).
        strides: Strides of the input convolution, an int or a tuple of 1 ints; the
            recurrent convolution always has stride 1. ``strides > 1`` cannot be combined with
            ``dilation_rate > 1``.
        padding: ``"valid"`` or ``"same"`` (case-insensitive), the padding of the input
            convolution; the recurrent convolution always pads ``"same"``. ``"same"`` pads
            evenly, the odd pixel after, so the state keeps the input's spatial size (with
            stride 1).
        data_format: ``"channels_last"`` or ``"channels_first"``: where the channels are in the
            input (see "Input shape"). Defaults to ``keras.config.image_data_format()``
            (``"channels_last"`` unless configured otherwise).
        dilation_rate: Dilation of the input convolution, an int or a tuple of 1 ints.
        activation: Activation of the cell input and output (``"tanh"``).
        recurrent_activation: Activation of the input, forget and output gates
            (``"sigmoid"``).
        use_bias: Whether the gates have a bias.
        kernel_initializer: Initializer of ``kernel``, the input convolution
            (``"glorot_uniform"``).
        recurrent_initializer: Initializer of ``recurrent_kernel``, the state convolution
            (``"orthogonal"``).
        bias_initializer: Initializer of ``bias`` (``"zeros"``).
        unit_forget_bias: Add 1 to the forget gate's bias at initialization (Jozefowicz et
            al., 2015), with ``bias_initializer="zeros"``.
        kernel_regularizer: Regularizer of ``kernel``.
        recurrent_regularizer: Regularizer of ``recurrent_kernel``.
        bias_regularizer: Regularizer of ``bias``.
        activity_regularizer: Regularizer of the layer's output.
        kernel_constraint: Constraint on ``kernel``.
        recurrent_constraint: Constraint on ``recurrent_kernel``.
        bias_constraint: Constraint on ``bias``.
        dropout: Fraction in [0, 1] of the input convolution's input units to drop in
            training; one mask per gate, fixed for the whole sequence (keras's semantics).
        recurrent_dropout: Fraction in [0, 1] of the state's units to drop in training, in the
            same way.
        seed: Seed of the dropout masks.
        return_sequences: Return the output of every timestep, not only the last one.
        return_state: Also return the last state ``h`` and ``c``.
        go_backwards: Process the sequence from its last timestep (the outputs stay in that
            reversed order).
        stateful: Carry the last state of sample i of a batch over as the initial state of
            sample i of the next batch (needs a fixed batch size and spatial shape;
            ``reset_state()`` zeroes it).
        **kwargs: Base layer arguments (``name``, ``dtype``, ``trainable``, ...).

    Call arguments:
        inputs: A 4D tensor (see "Input shape").
        initial_state: Optional list ``[h, c]`` of two state-shaped tensors to start from.
        mask: Optional (batch, time) boolean tensor; a masked timestep keeps the state and
            repeats the previous output (zeros before the first step), as keras's RNN.
        training: Whether dropout applies.

    Input shape:
        ``(batch, time, steps, channels)`` with ``data_format="channels_last"``,
        ``(batch, time, channels, steps)`` with ``data_format="channels_first"``.

    Output shape:
        - ``return_sequences=True``: ``(batch, time, new_steps, filters)``, or
          ``(batch, time, filters, new_steps)`` with channels first;
        - otherwise the last step's output: ``(batch, new_steps, filters)``, or
          ``(batch, filters, new_steps)`` with channels first;
        - with ``return_state=True``: a list ``[output, h, c]``, the states shaped like one
          step's output.

        The ``new_*`` sizes differ from the input's only with ``padding="valid"`` or
        ``strides > 1``.

    Example:

    ```python
    layer = kzoo.layers.ConvLSTM1D(8, 3, padding="same", return_sequences=True)
    y = layer(np.zeros((2, 5, 16, 3), "float32"))  # (2, 5, 16, 8)
    ```
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        padding="valid",
        data_format=None,
        dilation_rate=1,
        activation="tanh",
        recurrent_activation="sigmoid",
        use_bias=True,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        unit_forget_bias=True,
        kernel_regularizer=None,
        recurrent_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        recurrent_constraint=None,
        bias_constraint=None,
        dropout=0.0,
        recurrent_dropout=0.0,
        seed=None,
        return_sequences=False,
        return_state=False,
        go_backwards=False,
        stateful=False,
        **kwargs,
    ):
        super().__init__(
            rank=1,
            filters=filters,
            kernel_size=kernel_size,
            strides=strides,
            padding=padding,
            data_format=data_format,
            dilation_rate=dilation_rate,
            activation=activation,
            recurrent_activation=recurrent_activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            recurrent_initializer=recurrent_initializer,
            bias_initializer=bias_initializer,
            unit_forget_bias=unit_forget_bias,
            kernel_regularizer=kernel_regularizer,
            recurrent_regularizer=recurrent_regularizer,
            bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer,
            kernel_constraint=kernel_constraint,
            recurrent_constraint=recurrent_constraint,
            bias_constraint=bias_constraint,
            dropout=dropout,
            recurrent_dropout=recurrent_dropout,
            seed=seed,
            return_sequences=return_sequences,
            return_state=return_state,
            go_backwards=go_backwards,
            stateful=stateful,
            **kwargs,
        )

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("rank", None)
        return cls(**config)
