"""The convolutional LSTM base layer of ``ConvLSTM1D``, ``ConvLSTM2D`` and ``ConvLSTM3D`` (in
``conv_lstm1d.py``, ``conv_lstm2d.py``, ``conv_lstm3d.py``, as keras lays out its own): drop-in,
faster versions of keras's ConvLSTM layers.

The layers take the constructor arguments of ``keras.layers.ConvLSTM{1,2,3}D`` and hold the same
weights (``kernel``, ``recurrent_kernel``, ``bias`` on a sub-layer called ``cell``; gate order i,
f, c, o), so ``set_weights(keras_layer.get_weights())`` and keras weight files carry over. What
differs is how the recurrence is computed:

- the input convolution of every timestep runs as ONE convolution over batch x time before the
  loop (keras runs four per step);
- each step runs one convolution of the state with the whole recurrent kernel, giving the four
  gates at once (keras runs four, re-splitting the kernel every step);
- backends that need it get their own loop (the dispatch op ``conv_lstm_forward``:
  ``kzoo/backends/torch/conv_lstm.py`` keeps the state channels-first so no step pays a layout
  transpose; ``kzoo/backends/tensorflow/conv_lstm.py`` has a hand-written backward pass that
  computes the recurrent kernel's gradient once for all timesteps);
- exported graphs keep a loop over any number of steps, keras's ``model.export`` included (on
  torch, whose exporter traces one eager run, the loop is a TorchScript function:
  ``kzoo/backends/torch/conv_lstm_traced.py``; ``export_fixed_dims()`` names what an export
  must fix where that is impossible).
"""

import numbers

import keras
from keras import activations, constraints, initializers, ops, regularizers

from kzoo.backends import dispatch
from kzoo.backends.common.conv_lstm import conv_output_length
from kzoo.utils.errors import ArgumentIndexError, ArgumentTypeError

OP = "conv_lstm_forward"

dispatch.register(
    OP,
    dispatch.Implementation(
        name="portable",
        target="kzoo.backends.common.conv_lstm:conv_lstm_forward",
        description="hoisted input conv + one fused recurrent conv per step (keras.ops.scan)",
    ),
    fallback=True,
)

# The free dimensions an export must fix in size for a layer of this configuration: every
# backend's exported graph has a real loop over time, except where the backend says otherwise
# (torch's traced export, for activations without a TorchScript form).
EXPORT_FIXED_DIMS_OP = "conv_lstm_export_fixed_dims"


dispatch.register(
    EXPORT_FIXED_DIMS_OP,
    dispatch.Implementation(
        name="portable",
        target="kzoo.backends.common.conv_lstm:no_export_fixed_dims",
        description="none: the exported graph loops over any number of steps",
    ),
    fallback=True,
)


def _positive_tuple(value, rank, name):
    """``value`` as a tuple of ``rank`` positive ints.

    Not an int or a sequence of ints: ``ArgumentTypeError`` (a ``ValueError`` and a
    ``TypeError``: keras raises either, depending on the mistake); the wrong length or a value
    below 1: ``ValueError``.
    """
    message = (
        f"`{name}` must be a positive integer or a tuple of {rank} positive integers; "
        f"got {value!r}."
    )
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,) * rank
    if isinstance(value, (str, bytes)):
        raise ArgumentTypeError(message)
    try:
        value = tuple(value)
    except TypeError:
        raise ArgumentTypeError(message) from None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ArgumentTypeError(message)
    if len(value) != rank or min(value, default=0) <= 0:
        raise ValueError(message)
    return value


class _ConvLSTMWeights(keras.layers.Layer):
    """Holds the weights, under the names and nesting keras's ConvLSTM cell uses."""

    def __init__(self, owner, **kwargs):
        super().__init__(**kwargs)
        # Plain attribute access through a closure-free lambda would make keras track the owner
        # as a sub-layer (a cycle); keep only the settings needed to build.
        self._settings = dict(
            rank=owner.rank,
            filters=owner.filters,
            kernel_size=owner.kernel_size,
            kernel_initializer=owner.kernel_initializer,
            recurrent_initializer=owner.recurrent_initializer,
            bias_initializer=owner.bias_initializer,
            unit_forget_bias=owner.unit_forget_bias,
            use_bias=owner.use_bias,
            kernel_regularizer=owner.kernel_regularizer,
            recurrent_regularizer=owner.recurrent_regularizer,
            bias_regularizer=owner.bias_regularizer,
            kernel_constraint=owner.kernel_constraint,
            recurrent_constraint=owner.recurrent_constraint,
            bias_constraint=owner.bias_constraint,
        )

    def build(self, input_dim):
        s = self._settings
        f = s["filters"]
        self.kernel = self.add_weight(
            shape=s["kernel_size"] + (input_dim, 4 * f),
            initializer=s["kernel_initializer"],
            name="kernel",
            regularizer=s["kernel_regularizer"],
            constraint=s["kernel_constraint"],
        )
        self.recurrent_kernel = self.add_weight(
            shape=s["kernel_size"] + (f, 4 * f),
            initializer=s["recurrent_initializer"],
            name="recurrent_kernel",
            regularizer=s["recurrent_regularizer"],
            constraint=s["recurrent_constraint"],
        )
        if s["use_bias"]:
            base = s["bias_initializer"]
            if s["unit_forget_bias"]:

                def bias_initializer(shape, dtype=None):
                    return ops.concatenate(
                        [
                            base((f,), dtype=dtype),
                            ops.ones((f,), dtype=dtype),
                            base((2 * f,), dtype=dtype),
                        ]
                    )

            else:
                bias_initializer = base
            self.bias = self.add_weight(
                shape=(4 * f,),
                initializer=bias_initializer,
                name="bias",
                regularizer=s["bias_regularizer"],
                constraint=s["bias_constraint"],
            )
        else:
            self.bias = None
        self.built = True


class ConvLSTM(keras.layers.Layer):
    """Rank-generic convolutional LSTM; use ``ConvLSTM1D``, ``ConvLSTM2D`` or ``ConvLSTM3D``.

    Args:
        rank: 1, 2 or 3: the number of spatial axes.
        filters: Positive int, the number of output channels (and of each gate).
        kernel_size: Positive int or tuple of ``rank`` ints.
        strides: Strides of the input convolution (the recurrent one always has stride 1).
        padding: ``"valid"`` or ``"same"`` (input convolution; the recurrent one is "same").
        data_format: ``"channels_last"`` (inputs ``(batch, time, ..., channels)``) or
            ``"channels_first"`` (``(batch, time, channels, ...)``); default from keras config.
        dilation_rate: Dilation of the input convolution (not together with strides > 1).
        activation, recurrent_activation: Cell and gate activations (tanh, sigmoid).
        use_bias, kernel_initializer, recurrent_initializer, bias_initializer,
        unit_forget_bias, kernel_regularizer, recurrent_regularizer, bias_regularizer,
        activity_regularizer, kernel_constraint, recurrent_constraint, bias_constraint:
            As in ``keras.layers.ConvLSTM2D``.
        dropout, recurrent_dropout: Fractions in [0, 1] dropped from the inputs and the
            state; one mask per gate, fixed for the whole sequence (keras's semantics).
        seed: Seed of the dropout masks.
        return_sequences: Return every step's output rather than only the last.
        return_state: Also return the last ``h`` and ``c``.
        go_backwards: Process the sequence last step first (outputs stay in that order).
        stateful: Carry the last state of each sample over to the next batch.
    """

    def __init__(
        self,
        rank,
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
        kwargs.pop("unroll", None)
        kwargs.pop("zero_output_for_mask", None)
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        if rank not in (1, 2, 3):
            raise ValueError(f"`rank` must be 1, 2 or 3; got {rank!r}.")
        if not isinstance(filters, int) or isinstance(filters, bool):
            raise ArgumentTypeError(f"`filters` must be a positive integer; got {filters!r}.")
        if filters <= 0:
            raise ValueError(f"`filters` must be a positive integer; got {filters!r}.")
        self.rank = rank
        self.filters = filters
        self.kernel_size = _positive_tuple(kernel_size, rank, "kernel_size")
        self.strides = _positive_tuple(strides, rank, "strides")
        self.dilation_rate = _positive_tuple(dilation_rate, rank, "dilation_rate")
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(
                "`strides` > 1 cannot be combined with `dilation_rate` > 1; got "
                f"strides={self.strides}, dilation_rate={self.dilation_rate}."
            )
        if not isinstance(padding, str):
            raise ArgumentTypeError(f"`padding` must be 'valid' or 'same'; got {padding!r}.")
        if padding.lower() not in ("valid", "same"):
            raise ValueError(f"`padding` must be 'valid' or 'same'; got {padding!r}.")
        self.padding = padding.lower()
        if data_format is None:
            data_format = keras.config.image_data_format()
        # Case-insensitive, as keras's layers read it.
        if not isinstance(data_format, str):
            raise ArgumentTypeError(
                f"`data_format` must be 'channels_last' or 'channels_first'; got {data_format!r}."
            )
        if data_format.lower() not in ("channels_last", "channels_first"):
            raise ValueError(
                f"`data_format` must be 'channels_last' or 'channels_first'; got {data_format!r}."
            )
        self.data_format = data_format.lower()
        for name, rate in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout)):
            if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
                raise ArgumentTypeError(f"`{name}` must be a number in [0, 1]; got {rate!r}.")
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"`{name}` must be a number in [0, 1]; got {rate!r}.")
        self.activation = activations.get(activation)
        self.recurrent_activation = activations.get(recurrent_activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.recurrent_initializer = initializers.get(recurrent_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.unit_forget_bias = bool(unit_forget_bias)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = regularizers.get(recurrent_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.recurrent_constraint = constraints.get(recurrent_constraint)
        self.bias_constraint = constraints.get(bias_constraint)
        self.dropout = float(dropout)
        self.recurrent_dropout = float(recurrent_dropout)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed=seed)
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.go_backwards = bool(go_backwards)
        self.stateful = bool(stateful)
        self.supports_masking = True
        self.input_dim = None
        self.cell = _ConvLSTMWeights(self, name="conv_lstm_cell", dtype=self.dtype_policy)
        # State variables of a stateful layer are not weights (keras's RNN does not list them
        # either); bypassing attribute tracking keeps get_weights() identical to keras's.
        object.__setattr__(self, "states", None)

    # -- shapes -------------------------------------------------------------------------------

    @property
    def _channel_axis(self):
        return 2 if self.data_format == "channels_first" else -1

    def _spatial(self, shape):
        """Spatial dims of a (batch, time, ...) shape."""
        return tuple(shape[3:]) if self.data_format == "channels_first" else tuple(shape[2:-1])

    def _check_input_shape(self, shape):
        expected = self.rank + 3
        if len(shape) != expected:
            layout = (
                "(batch, time, channels, "
                if self.data_format == "channels_first"
                else "(batch, time, "
            )
            dims = ", ".join("dim" for _ in range(self.rank))
            tail = ")" if self.data_format == "channels_first" else ", channels)"
            raise ValueError(
                f"`inputs` of {type(self).__name__} must have rank {expected} {layout}{dims}"
                f"{tail}; got shape {tuple(shape)}."
            )
        if shape[0] is not None and shape[0] == 0:
            raise ValueError(
                f"`inputs` is an empty batch (shape {tuple(shape)}); a ConvLSTM needs at least "
                "one sequence."
            )
        if shape[1] is not None and shape[1] == 0:
            raise ValueError(
                f"`inputs` has zero timesteps (shape {tuple(shape)}); a ConvLSTM needs at least "
                "one."
            )
        channels = shape[self._channel_axis]
        if channels is None:
            raise ValueError(
                f"The channel axis of `inputs` must be known; got shape {tuple(shape)}."
            )
        if self.input_dim is not None and channels != self.input_dim:
            raise ValueError(
                f"`inputs` has {channels} channels but {self.name}'s weights were built for "
                f"{self.input_dim} (data_format={self.data_format!r}); got shape {tuple(shape)}."
            )
        for size in self._spatial(shape):
            if size is not None and size <= 0:
                raise ValueError(f"`inputs` has an empty spatial axis: shape {tuple(shape)}.")

    def _state_spatial(self, spatial):
        return tuple(
            conv_output_length(n, k, s, d, self.padding)
            for n, k, s, d in zip(spatial, self.kernel_size, self.strides, self.dilation_rate)
        )

    def _state_shape(self, batch, spatial):
        out = self._state_spatial(spatial)
        if self.data_format == "channels_first":
            return (batch, self.filters) + out
        return (batch,) + out + (self.filters,)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self._check_input_shape(input_shape)
        self.input_dim = int(input_shape[self._channel_axis])
        out = self._state_spatial(self._spatial(input_shape))
        if any(n is not None and n <= 0 for n in out):
            raise ValueError(
                f"`inputs` spatial shape {self._spatial(input_shape)} is smaller than the "
                f"kernel ({self.kernel_size}, dilation {self.dilation_rate}) with padding 'valid'."
            )
        self.cell.build(self.input_dim)
        if self.stateful:
            batch = input_shape[0]
            spatial = self._spatial(input_shape)
            if batch is None or None in spatial:
                raise ValueError(
                    "A stateful ConvLSTM needs a static batch size and spatial shape; got input "
                    f"shape {input_shape}."
                )
            self._create_states(batch, spatial)
        self.built = True

    def _create_states(self, batch, spatial):
        shape = self._state_shape(batch, spatial)
        states = [
            keras.Variable(
                ops.zeros(shape, dtype=self.variable_dtype),
                trainable=False,
                dtype=self.variable_dtype,
                name=name,
            )
            for name in ("rnn_state_h", "rnn_state_c")
        ]
        object.__setattr__(self, "states", states)

    def reset_state(self):
        """Zero the carried state of a stateful layer."""
        if self.states is not None:
            for v in self.states:
                v.assign(ops.zeros_like(v.value))

    def reset_states(self):
        self.reset_state()

    def compute_output_shape(self, inputs_shape, initial_state_shape=None):
        input_shape = tuple(inputs_shape)
        state = self._state_shape(input_shape[0], self._spatial(input_shape))
        if self.return_sequences:
            output = (state[0], input_shape[1]) + state[1:]
        else:
            output = state
        if self.return_state:
            return output, state, state
        return output

    def compute_mask(self, inputs, mask=None):
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        output_mask = mask if self.return_sequences else None
        if self.return_state:
            return [output_mask, None, None]
        return output_mask

    # -- forward ------------------------------------------------------------------------------

    def _dropout_masks(self, like, rate):
        ones = ops.ones_like(like)
        return [keras.random.dropout(ones, rate=rate, seed=self.seed_generator) for _ in range(4)]

    def call(self, inputs, initial_state=None, mask=None, training=False):
        self._check_input_shape(tuple(inputs.shape))
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        if not (dtype.startswith("float") or dtype == "bfloat16"):
            raise ValueError(
                f"`inputs` of {type(self).__name__} must be floating point; got dtype {dtype}. "
                "Cast it first (e.g. images scaled to [0, 1] as float32)."
            )
        if self.stateful and self.states is not None:
            carried = tuple(self.states[0].shape)
            needed = self._state_shape(inputs.shape[0], self._spatial(tuple(inputs.shape)))
            if any(a is not None and a != b for a, b in zip(needed, carried)):
                raise ValueError(
                    f"This stateful {type(self).__name__} carries states of shape {carried} "
                    f"(batch size {carried[0]}); `inputs` of shape {tuple(inputs.shape)} need "
                    f"states of shape {needed}. A stateful layer needs the same batch size and "
                    "spatial shape on every call."
                )
        if initial_state is None:
            if self.stateful:
                # Copies: on torch, assigning the new state in place would otherwise corrupt
                # tensors autograd saved from this very call.
                initial_state = [ops.copy(v.value) for v in self.states]
        else:
            # keras's layer takes a lone tensor as a list of one state and fails on the missing
            # second with an IndexError; this error is one too.
            if not isinstance(initial_state, (list, tuple)):
                raise ArgumentIndexError(
                    "`initial_state` must be a list [h, c] of two tensors; got one "
                    f"{type(initial_state).__name__}."
                )
            if len(initial_state) != 2:
                raise ArgumentIndexError(
                    "`initial_state` must be a list [h, c] of two tensors; got a "
                    f"{type(initial_state).__name__} of {len(initial_state)}."
                )
            initial_state = [ops.cast(s, self.compute_dtype) for s in initial_state]
        # keras draws the dropout masks on every call, training or not, and uses them only in
        # training; drawing them the same way keeps the random stream (and so the masks of
        # equal seeds) the same as keras's layer.
        input_masks = None
        if self.dropout > 0.0:
            input_masks = self._dropout_masks(inputs[:, 0], self.dropout)
            if not (training and self.dropout < 1.0):
                input_masks = None
        recurrent_mask_fn = None
        if self.recurrent_dropout > 0.0:
            use = bool(training) and self.recurrent_dropout < 1.0

            # Called by the forward pass with a state-shaped tensor, after the input masks.
            def recurrent_mask_fn(like):
                masks = self._dropout_masks(like, self.recurrent_dropout)
                return masks if use else None

        if mask is not None:
            if isinstance(mask, (list, tuple)):
                mask = mask[0]
            expected = tuple(inputs.shape[:2])
            if len(mask.shape) != 2 or any(
                a is not None and b is not None and a != b for a, b in zip(mask.shape, expected)
            ):
                # An IndexError too: keras's layer fails with one on a mask of another rank.
                raise ArgumentIndexError(
                    f"`mask` must have shape (batch, time) = {expected} to match `inputs`; got "
                    f"shape {tuple(mask.shape)}."
                )
            mask = ops.cast(mask, "bool")
        # ``training`` lets a backend keep a training-only construct (TensorFlow's hand-written
        # gradient) out of inference graphs, which must stay exportable.
        forward = dispatch.select(
            OP, dtype=self.compute_dtype, shape=tuple(inputs.shape), training=bool(training)
        ).load()
        output, h, c = forward(
            inputs,
            self.cell.kernel,
            self.cell.recurrent_kernel,
            self.cell.bias,
            initial_state=initial_state,
            mask=mask,
            input_masks=input_masks,
            recurrent_mask_fn=recurrent_mask_fn,
            config=self._forward_config(),
        )
        if self.stateful:
            self.states[0].assign(ops.cast(h, self.states[0].dtype))
            self.states[1].assign(ops.cast(c, self.states[1].dtype))
        if self.return_state:
            return output, h, c
        return output

    def export_fixed_dims(self):
        """The input dimensions (``"time"``) an export on this backend must fix in size for
        this layer; none where the exported graph loops over any number of steps."""
        return tuple(dispatch.select(EXPORT_FIXED_DIMS_OP).load()(self._forward_config()))

    def _forward_config(self):
        return dict(
            rank=self.rank,
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            data_format=self.data_format,
            dilation_rate=self.dilation_rate,
            activation=self.activation,
            recurrent_activation=self.recurrent_activation,
            return_sequences=self.return_sequences,
            go_backwards=self.go_backwards,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                "data_format": self.data_format,
                "dilation_rate": self.dilation_rate,
                "activation": activations.serialize(self.activation),
                "recurrent_activation": activations.serialize(self.recurrent_activation),
                "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "recurrent_initializer": initializers.serialize(self.recurrent_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "unit_forget_bias": self.unit_forget_bias,
                "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
                "recurrent_regularizer": regularizers.serialize(self.recurrent_regularizer),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer),
                "kernel_constraint": constraints.serialize(self.kernel_constraint),
                "recurrent_constraint": constraints.serialize(self.recurrent_constraint),
                "bias_constraint": constraints.serialize(self.bias_constraint),
                "dropout": self.dropout,
                "recurrent_dropout": self.recurrent_dropout,
                "seed": self.seed,
                "return_sequences": self.return_sequences,
                "return_state": self.return_state,
                "go_backwards": self.go_backwards,
                "stateful": self.stateful,
            }
        )
        return config


def __getattr__(name):
    # ConvLSTM1D/2D/3D lived in this module until the house redesign (issue #25): found by name
    # (their modules import this one), with a DeprecationWarning, for one release.
    if name in ("ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D"):
        import importlib
        import warnings

        module = f"kzoo.layers.conv_lstm{name[-2:].lower()}"
        warnings.warn(
            f"kzoo.layers.conv_lstm.{name} is deprecated; import it from kzoo.layers (or {module}).",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
