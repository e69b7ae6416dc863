"""The ConvLSTM forward pass for the TensorFlow backend, with a hand-written backward pass.

On the CPU, what TensorFlow's automatic gradient of a ``keras.ops.scan`` loop costs beyond the
convolutions is op count and copies: the scan runs its ``tf.while_loop`` with
``parallel_iterations=1``, carries the state through TensorArrays, splits the fused gates along
the channel axis every step and pushes every intermediate on a stack, and the weight gradient
of the recurrent convolution runs once per step on a small batch. Here:

- everything runs channels-last and time-major, the input transposed once (it has few
  channels) rather than the four-times-wider input projection;
- the input convolution of all timesteps and gates is one convolution over batch x time, which
  TensorFlow differentiates as usual (one weight gradient for the whole sequence);
- the recurrence is one ``tf.custom_gradient`` function: a forward ``tf.while_loop`` carrying
  ``(h, c)``, one convolution of the state for the four gates per step, keeping the gate
  activations; a reverse loop that only propagates ``dh`` and ``dc`` (one transposed
  convolution per step for the four gates; derivatives of sigmoid, tanh, relu and linear from
  their outputs by TensorFlow's fused gradient kernels, any other activation differentiated by
  TensorFlow); then the recurrent kernel's gradient as ONE weight-gradient convolution over all
  timesteps at once;
- without an initial state the first step's recurrent convolution (of a zero state) and its
  gradient are skipped.

Calls with a time mask or with recurrent dropout masks take the portable loop. Same arguments
and results as ``kzoo.backends.common.conv_lstm.conv_lstm_forward``.

Inference calls (``training=False``: ``predict``, ``model.export``, a plain ``model(x)``) run
``conv_lstm_forward_inference``: the same per-step function in the same loop, without the
``tf.custom_gradient`` wrapper, whose gradient function a SavedModel cannot hold (it captures
the loop's TensorArrays). The dispatch picks between the two from the ``training`` flag.
"""

import keras
import tensorflow as tf

from kzoo.backends.common import conv_lstm as portable

# Activations whose derivative is a function of their output: the backward pass then needs
# only the activations the forward pass kept. Each maps (output, output gradient) to the input
# gradient with one fused TensorFlow kernel.
_GRADIENTS_FROM_OUTPUT = {
    keras.activations.sigmoid: lambda y, d_y: tf.raw_ops.SigmoidGrad(y=y, dy=d_y),
    keras.activations.tanh: lambda y, d_y: tf.raw_ops.TanhGrad(y=y, dy=d_y),
    # relu's output is positive exactly where its input is.
    keras.activations.relu: lambda y, d_y: tf.raw_ops.ReluGrad(gradients=d_y, features=y),
    keras.activations.linear: lambda y, d_y: d_y,
}


class _Activation:
    """An activation and how the backward pass differentiates it.

    ``forward(x)`` returns the output and what the forward pass keeps for the backward pass:
    the output when the derivative is known from it, else the input. ``value(kept)`` recovers
    the output and ``grad(kept, d_y)`` maps the output's gradient to the input's.
    """

    def __init__(self, fn):
        self.fn = fn
        self.from_output = _GRADIENTS_FROM_OUTPUT.get(fn)

    def forward(self, x):
        y = self.fn(x)
        return y, (y if self.from_output is not None else x)

    def value(self, kept):
        return kept if self.from_output is not None else self.fn(kept)

    def grad(self, kept, d_y):
        if self.from_output is not None:
            return self.from_output(kept, d_y)
        with tf.GradientTape() as tape:
            tape.watch(kept)
            y = self.fn(kept)
        return tape.gradient(y, kept, output_gradients=d_y)


_CHANNELS_LAST = {3: "NWC", 4: "NHWC", 5: "NDHWC"}


def _recurrent_conv(h, kernel):
    # An explicit data_format: eager Conv3D records no default attributes, and TensorFlow's
    # Conv3D gradient reads this one (inference calls are differentiated by TensorFlow).
    data_format = _CHANNELS_LAST[len(kernel.shape)]
    return tf.nn.convolution(h, kernel, strides=1, padding="SAME", data_format=data_format)


def _recurrent_conv_transpose(d_y, kernel, like):
    """The gradient of ``_recurrent_conv(h, kernel)`` with respect to ``h`` (shaped ``like``)."""
    return tf.nn.conv_transpose(d_y, kernel, output_shape=tf.shape(like), strides=1, padding="SAME")


def _kernel_gradient(x, kernel, d_y):
    """The gradient of ``_recurrent_conv(x, kernel)`` with respect to ``kernel``."""
    rank = len(kernel.shape) - 2
    if rank == 1:
        # As tf.nn.convolution runs 1D: a 2D convolution over a height of one.
        return _kernel_gradient(x[:, None], kernel[None], d_y[:, None])[0]
    size = tf.shape(kernel)
    ones = [1] * (rank + 2)
    if rank == 2:
        return tf.raw_ops.Conv2DBackpropFilter(
            input=x, filter_sizes=size, out_backprop=d_y, strides=ones, padding="SAME"
        )
    return tf.raw_ops.Conv3DBackpropFilterV2(
        input=x, filter_sizes=size, out_backprop=d_y, strides=ones, padding="SAME"
    )


def _merge_time(x):
    """``(time, batch, ...)`` -> ``(time * batch, ...)``."""
    return tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], axis=0))


def _cell(z_t, h, c, kernel, act, rec, recurrent=True):
    """One LSTM step on the input projection ``z_t`` of the four gates (channels last).

    Returns ``(h_new, c_new, kept)``, ``kept`` being what the backward pass needs of the gate
    and cell activations (see ``_Activation``). The training and the inference loops both run
    this function, so they compute the same numbers.
    """
    # One convolution for the four gates (measured faster here than one per gate).
    a = z_t + _recurrent_conv(h, kernel) if recurrent else z_t
    a = tf.split(a, 4, axis=-1)
    i, keep_i = rec.forward(a[0])
    f, keep_f = rec.forward(a[1])
    g, keep_g = act.forward(a[2])
    o, keep_o = rec.forward(a[3])
    c_new = f * c + i * g
    act_c, keep_act_c = act.forward(c_new)
    h_new = o * act_c
    return h_new, c_new, (keep_i, keep_f, keep_g, keep_o, keep_act_c)


def _make_inference_recurrence(activation, recurrent_activation, zero_state, return_sequences):
    """The forward loop of ``_make_recurrence`` without its ``tf.custom_gradient``.

    A graph holding a ``tf.custom_gradient`` function cannot be written to a SavedModel (its
    gradient function captures the loop's TensorArrays), so inference graphs - which is what
    ``model.export``, ``tf2onnx`` and the TF Lite converter trace - run this loop instead: the
    same ``_cell`` per step, keeping nothing for a backward pass (TensorFlow can still
    differentiate it, through the loop).

    Written for converters: the sequence of outputs grows by concatenation rather than in a
    TensorArray (TF Lite has no builtin TensorList ops for tensors of unknown spatial size, and
    tf2onnx mistypes them), and the loop's shape invariants keep the channel count known (TF
    Lite's builtin convolution needs it). The copies this costs are a few bytes per element
    and step against the recurrent convolution's ``72 * filters`` flops.
    """
    act = _Activation(activation)
    rec = _Activation(recurrent_activation)

    def recurrence(z, h0, c0, kernel):
        steps = tf.shape(z)[0]
        filters = h0.shape[-1]
        state_shape = tf.TensorShape([None] * (h0.shape.rank - 1) + [filters])

        def step(t, h, c, hs, recurrent=True):
            # The TF Lite converter types loop variables without their channel count (whatever
            # the invariants say); a reshape to it keeps the convolution a builtin.
            h = tf.reshape(h, tf.concat([tf.shape(h)[:-1], [filters]], axis=0))
            h_new, c_new, _ = _cell(z[t], h, c, kernel, act, rec, recurrent)
            if return_sequences:
                hs = tf.concat([hs, h_new[None]], axis=0)
            return t + 1, h_new, c_new, hs

        hs = tf.zeros(tf.concat([[0], tf.shape(h0)], axis=0), h0.dtype)
        state = (tf.constant(0), h0, c0, hs)
        if zero_state:
            state = step(*state, recurrent=False)
        _, h_last, c_last, hs = tf.while_loop(
            lambda t, *_: t < steps,
            step,
            state,
            shape_invariants=(
                tf.TensorShape([]),
                state_shape,
                state_shape,
                tf.TensorShape([None]).concatenate(state_shape),
            ),
            parallel_iterations=32,
        )
        return (hs if return_sequences else h_last), c_last

    return recurrence


def _make_recurrence(activation, recurrent_activation, zero_state, return_sequences):
    """The LSTM recurrence over a time-major, channels-last input projection, with its gradient.

    ``(z, h0, c0, kernel) -> (out, c_last)``: ``z`` is the input projection of the four gates
    ``(time, batch, ..., 4 * filters)``, ``kernel`` the recurrent kernel; ``out`` is the
    time-major sequence of ``h`` with ``return_sequences``, else the last ``h``. With
    ``zero_state`` the initial state is known to be zeros (no initial state was given), so the
    first step has no recurrent convolution and nothing is propagated back into ``h0``.
    """
    act = _Activation(activation)
    rec = _Activation(recurrent_activation)

    @tf.custom_gradient
    def recurrence(z, h0, c0, kernel):
        steps = tf.shape(z)[0]
        first = 1 if zero_state else 0

        def step(t, h, c, arrays, recurrent=True):
            h_new, c_new, kept = _cell(z[t], h, c, kernel, act, rec, recurrent)
            kept = (h_new, c) + kept
            arrays = tuple(arr.write(t, v) for arr, v in zip(arrays, kept))
            return t + 1, h_new, c_new, arrays

        arrays = tuple(
            tf.TensorArray(h0.dtype, size=steps, element_shape=h0.shape) for _ in range(7)
        )
        state = (0, h0, c0, arrays)
        if zero_state:
            state = step(*state, recurrent=False)
        _, h_last, c_last, arrays = tf.while_loop(
            lambda t, *_: t < steps, step, state, parallel_iterations=32
        )
        hs = arrays[0].stack()
        saved = arrays[1:]

        def grad(d_out, d_c_last):
            # An output the loss does not use may arrive as None.
            if d_out is None:
                d_out = tf.zeros_like(hs if return_sequences else h_last)
            if d_c_last is None:
                d_c_last = tf.zeros_like(c_last)

            def back(t, d_h, d_c, d_array, recurrent=True):
                # What the forward pass kept: outputs, or inputs of activations without a
                # gradient-from-output kernel (``_Activation``).
                c_prev, kept_i, kept_f, kept_g, kept_o, kept_c = (arr.read(t) for arr in saved)
                i, f, o = rec.value(kept_i), rec.value(kept_f), rec.value(kept_o)
                g, act_c = act.value(kept_g), act.value(kept_c)
                if return_sequences:
                    d_h = d_h + d_out[t]
                d_c = d_c + act.grad(kept_c, d_h * o)
                d_a = tf.concat(
                    [
                        rec.grad(kept_i, d_c * g),
                        rec.grad(kept_f, d_c * c_prev),
                        act.grad(kept_g, d_c * i),
                        rec.grad(kept_o, d_h * act_c),
                    ],
                    axis=-1,
                )
                # One transposed convolution for the four gates.
                if recurrent:
                    d_h = _recurrent_conv_transpose(d_a, kernel, h0)
                else:
                    d_h = tf.zeros_like(d_h)
                return t - 1, d_h, d_c * f, d_array.write(t, d_a)

            d_h = tf.zeros_like(h0) if return_sequences else d_out
            state = (steps - 1, d_h, d_c_last, tf.TensorArray(z.dtype, size=steps))
            state = tf.while_loop(lambda t, *_: t >= first, back, state, parallel_iterations=32)
            if zero_state:
                state = back(*state, recurrent=False)
            _, d_h0, d_c0, d_array = state
            d_z = d_array.stack()
            # The recurrent kernel's gradient of all steps at once, batch and time merged (a
            # step whose previous state is known to be zero adds nothing).
            h_prev = hs[:-1] if zero_state else tf.concat([h0[None], hs[:-1]], axis=0)
            d_kernel = _kernel_gradient(_merge_time(h_prev), kernel, _merge_time(d_z[first:]))
            return d_z, d_h0, d_c0, d_kernel

        return ((hs if return_sequences else h_last), c_last), grad

    return recurrence


def _value(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


def conv_lstm_forward(
    inputs,
    kernel,
    recurrent_kernel,
    bias,
    initial_state=None,
    mask=None,
    input_masks=None,
    recurrent_mask_fn=None,
    config=None,
):
    """Run a ConvLSTM over ``inputs`` (a TensorFlow tensor); returns ``(output, h, c)``.

    The training path: the loop's gradient is the hand-written backward pass.
    """
    return _forward(
        _make_recurrence,
        inputs,
        kernel,
        recurrent_kernel,
        bias,
        initial_state,
        mask,
        input_masks,
        recurrent_mask_fn,
        config,
    )


def conv_lstm_forward_inference(
    inputs,
    kernel,
    recurrent_kernel,
    bias,
    initial_state=None,
    mask=None,
    input_masks=None,
    recurrent_mask_fn=None,
    config=None,
):
    """``conv_lstm_forward`` for inference graphs: the same numbers, no ``tf.custom_gradient``,
    so the graph can be saved (SavedModel), converted (TF Lite, tf2onnx) and served."""
    return _forward(
        _make_inference_recurrence,
        inputs,
        kernel,
        recurrent_kernel,
        bias,
        initial_state,
        mask,
        input_masks,
        recurrent_mask_fn,
        config,
    )


def supports_training(shape, dtype, training=True, **kwargs):
    return bool(training)


def supports_inference(shape, dtype, training=True, **kwargs):
    return not training


def _forward(
    make_recurrence,
    inputs,
    kernel,
    recurrent_kernel,
    bias,
    initial_state,
    mask,
    input_masks,
    recurrent_mask_fn,
    config,
):
    rank = config["rank"]
    channels_first = config["data_format"] == "channels_first"
    batch_major = (1, 0) + tuple(range(2, rank + 3))

    def to_channels_last(x, leading):
        if not channels_first:
            return x
        return tf.transpose(x, (*range(leading), *range(leading + 1, leading + rank + 1), leading))

    def to_channels_first(x, leading):
        if not channels_first:
            return x
        return tf.transpose(x, (*range(leading), leading + rank, *range(leading, leading + rank)))

    # Time-major and channels-last once, on the input (few channels) rather than on the
    # four-gate projection.
    x = tf.transpose(to_channels_last(inputs, 2), batch_major)
    if config["go_backwards"]:
        x = tf.reverse(x, axis=[0])
    shape = tf.shape(x)
    # The channel count stays static (TF Lite's builtin convolution needs it).
    channels = x.shape[-1] if x.shape[-1] is not None else shape[-1]
    merged = tf.reshape(x, tf.concat([[-1], shape[2:-1], [channels]], axis=0))

    def conv(source, k, b):
        z = keras.ops.conv(
            source,
            k,
            strides=config["strides"],
            padding=config["padding"],
            data_format="channels_last",
            dilation_rate=config["dilation_rate"],
        )
        # A plain add rather than ``bias_add``: TensorFlow's oneDNN rewrite fuses the gradient
        # of a ``bias_add`` after a convolution into ``Conv2DBackpropFilterWithBias``, which
        # profiled 1.3-3x slower than the filter gradient and a separate bias sum
        # (``scripts/profile/convlstm.py k3-32f-32px --backend tensorflow``).
        return z if b is None else z + b

    k, b = _value(kernel), None if bias is None else _value(bias)
    if input_masks is None:
        z = conv(merged, k, b)
    else:
        # One dropout mask per gate, the same for every timestep: one convolution per gate.
        biases = [None] * 4 if b is None else tf.split(b, 4)
        parts = []
        for m, k_gate, b_gate in zip(input_masks, tf.split(k, 4, axis=-1), biases):
            masked = tf.reshape(x * to_channels_last(m, 1)[None], tf.shape(merged))
            parts.append(conv(masked, k_gate, b_gate))
        z = tf.concat(parts, axis=-1)
    z = tf.reshape(z, tf.concat([shape[:2], tf.shape(z)[1:]], axis=0))

    if initial_state is None:
        h0, c0 = portable.initial_state_like(z, config["filters"], channels_first=False)
    else:
        h0, c0 = (to_channels_last(tf.convert_to_tensor(s, z.dtype), 1) for s in initial_state)

    rec_masks = None
    if recurrent_mask_fn is not None:
        rec_masks = recurrent_mask_fn(to_channels_first(h0, 1))
    if mask is not None or rec_masks is not None:
        # The portable loop, on the projection made here, in the layer's data format.
        if mask is not None:
            mask = tf.transpose(mask)
            if config["go_backwards"]:
                mask = tf.reverse(mask, axis=[0])
        return portable.recurrence(
            to_channels_first(z, 2),
            recurrent_kernel,
            to_channels_first(h0, 1),
            to_channels_first(c0, 1),
            mask,
            rec_masks,
            config,
        )

    recurrence = make_recurrence(
        config["activation"],
        config["recurrent_activation"],
        zero_state=initial_state is None,
        return_sequences=config["return_sequences"],
    )
    out, c = recurrence(z, h0, c0, _value(recurrent_kernel))
    if config["return_sequences"]:
        h = out[-1]
        output = to_channels_first(tf.transpose(out, batch_major), 2)
    else:
        h = out
        output = to_channels_first(h, 1)
    return output, to_channels_first(h, 1), to_channels_first(c, 1)
