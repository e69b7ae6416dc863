"""The ConvLSTM forward pass in keras.ops, for every backend (the dispatch fallback), and the
convolution sizes the layer and the backends' own loops share.

The input convolution of all timesteps is one convolution over batch x time; the loop
(``keras.ops.scan``: ``lax.scan`` on JAX, a ``tf.while_loop`` on TensorFlow) then does one
convolution of the state per step, with the recurrent kernel of all four gates at once.
"""

from keras import ops


def conv_output_length(length, kernel, stride, dilation, padding):
    """Output length of a convolution along one axis (``None`` stays ``None``)."""
    if length is None:
        return None
    if padding == "same":
        return -(-length // stride)
    effective = (kernel - 1) * dilation + 1
    return max((length - effective) // stride + 1, 0)


def same_padding(length, kernel, stride, dilation):
    """(before, after) padding of TF/keras "same": the odd pixel goes after."""
    effective = (kernel - 1) * dilation + 1
    out = -(-length // stride)
    total = max((out - 1) * stride + effective - length, 0)
    return total // 2, total - total // 2


def no_export_fixed_dims(config):
    return ()


def _gate_slices(kernel):
    """The kernel of each gate (i, f, c, o), split along the output-channel axis."""
    return ops.split(kernel, 4, axis=-1)


def _bias_shape(rank, channels, data_format, leading):
    if data_format == "channels_last":
        return (1,) * (leading + rank) + (channels,)
    return (1,) * leading + (channels,) + (1,) * rank


def input_projection(inputs, kernel, bias, input_masks, config):
    """The input convolution of every timestep: ``(batch, time, ...)`` -> ``(batch, time, ...)``
    with ``4 * filters`` channels, as one convolution over the merged batch and time axes."""
    rank, filters = config["rank"], config["filters"]
    channel_axis = 2 if config["data_format"] == "channels_first" else -1
    shape = ops.shape(inputs)
    batch, steps = shape[0], shape[1]

    def conv(x, w):
        merged = ops.reshape(x, (-1,) + tuple(ops.shape(x)[2:]))
        return ops.conv(
            merged,
            w,
            strides=config["strides"],
            padding=config["padding"],
            data_format=config["data_format"],
            dilation_rate=config["dilation_rate"],
        )

    if input_masks is None:
        z = conv(inputs, kernel)
    else:
        # One mask per gate (fixed over time), so each gate sees differently masked inputs.
        kernels = _gate_slices(kernel)
        parts = [conv(inputs * ops.expand_dims(m, 1), k) for m, k in zip(input_masks, kernels)]
        z = ops.concatenate(parts, axis=1 if channel_axis == 2 else -1)
    if bias is not None:
        z = z + ops.reshape(bias, _bias_shape(rank, 4 * filters, config["data_format"], 1))
    return ops.reshape(z, (batch, steps) + tuple(ops.shape(z)[1:]))


def step_projection(kernel, bias, input_masks, config):
    """The input convolution of ONE timestep, ``(batch, ...)`` -> ``(batch, ...)`` with
    ``4 * filters`` channels: ``input_projection`` without merging batch and time."""
    rank, filters = config["rank"], config["filters"]
    channel_axis = 1 if config["data_format"] == "channels_first" else -1
    bias_shape = _bias_shape(rank, 4 * filters, config["data_format"], 1)

    def conv(x, w):
        return ops.conv(
            x,
            w,
            strides=config["strides"],
            padding=config["padding"],
            data_format=config["data_format"],
            dilation_rate=config["dilation_rate"],
        )

    def project(x_t):
        if input_masks is None:
            z = conv(x_t, kernel)
        else:
            parts = [conv(x_t * m, k) for m, k in zip(input_masks, _gate_slices(kernel))]
            z = ops.concatenate(parts, axis=channel_axis)
        return z if bias is None else z + ops.reshape(bias, bias_shape)

    return project


def initial_state_like(z, filters, channels_first):
    """Zero ``h`` and ``c`` for a time-major ``z`` (the input projection)."""
    first = z[0]
    zeros = ops.zeros_like(first[:, :filters] if channels_first else first[..., :filters])
    return zeros, zeros


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
    scan=ops.scan,
):
    """Run a ConvLSTM over ``inputs``; returns ``(output, h, c)``.

    ``output`` is the sequence of outputs ``(batch, time, ...)`` with ``return_sequences``,
    else the last output. ``mask`` is a boolean ``(batch, time)`` tensor: a masked step keeps
    the state and repeats the previous output (zeros before the first step), as keras's RNN.
    ``scan`` runs the loop (``keras.ops.scan``'s signature); a backend may pass its own.
    """
    z = input_projection(inputs, kernel, bias, input_masks, config)
    z = ops.moveaxis(z, 1, 0)  # time-major for the scan
    return _time_major_forward(
        z, recurrent_kernel, initial_state, mask, recurrent_mask_fn, config, scan=scan
    )


def conv_lstm_forward_per_step(
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
    """``conv_lstm_forward`` with the input convolution inside the loop, one step at a time.

    For graphs traced with symbolic batch and time sizes (shape-polymorphic export), where
    merging the two axes for one big convolution is a reshape some converters cannot map
    (jax2onnx). Same arguments and results, up to float rounding (the convolutions see
    other batch sizes).
    """
    project = step_projection(kernel, bias, input_masks, config)
    x = ops.moveaxis(inputs, 1, 0)
    return _time_major_forward(
        x, recurrent_kernel, initial_state, mask, recurrent_mask_fn, config, project=project
    )


def _time_major_forward(
    z, recurrent_kernel, initial_state, mask, recurrent_mask_fn, config, project=None, scan=ops.scan
):
    """The loop of ``conv_lstm_forward`` over time-major ``z`` (the input projection, or the
    inputs when ``project`` computes each step's projection)."""
    if mask is not None:
        mask = ops.moveaxis(mask, 1, 0)
    if config["go_backwards"]:
        z = ops.flip(z, axis=0)
        if mask is not None:
            mask = ops.flip(mask, axis=0)
    if initial_state is None:
        first = z if project is None else project(z[0])[None]
        h0, c0 = initial_state_like(
            first, config["filters"], config["data_format"] == "channels_first"
        )
    else:
        h0, c0 = initial_state
    rec_masks = None if recurrent_mask_fn is None else recurrent_mask_fn(h0)
    return recurrence(
        z, recurrent_kernel, h0, c0, mask, rec_masks, config, project=project, scan=scan
    )


def recurrence(z, recurrent_kernel, h0, c0, mask, rec_masks, config, project=None, scan=ops.scan):
    """The loop over time of a time-major input projection ``z``; returns ``(output, h, c)``.

    ``mask`` is time-major ``(time, batch)`` or None; ``rec_masks`` are the four recurrent
    dropout masks (one per gate) or None. With ``project``, ``z`` holds the inputs and
    ``project(z[t])`` is step ``t``'s input projection. ``scan`` runs the loop
    (``keras.ops.scan``'s signature).
    """
    rank = config["rank"]
    c_axis = 1 if config["data_format"] == "channels_first" else -1
    act, rec_act = config["activation"], config["recurrent_activation"]
    rec_kernels = None if rec_masks is None else _gate_slices(recurrent_kernel)

    def recurrent_conv(x, w):
        return ops.conv(x, w, strides=1, padding="same", data_format=config["data_format"])

    def step(carry, xs):
        if mask is None:
            h, c = carry
            z_t = xs
        else:
            h, c, prev = carry
            z_t, m_t = xs
        if project is not None:
            z_t = project(z_t)
        if rec_masks is None:
            gates = z_t + recurrent_conv(h, recurrent_kernel)
        else:
            gates = z_t + ops.concatenate(
                [recurrent_conv(h * m, k) for m, k in zip(rec_masks, rec_kernels)], axis=c_axis
            )
        i, f, g, o = ops.split(gates, 4, axis=c_axis)
        c_new = rec_act(f) * c + rec_act(i) * act(g)
        h_new = rec_act(o) * act(c_new)
        if mask is None:
            new = (h_new, c_new)
        else:
            keep = ops.reshape(m_t, (-1,) + (1,) * (rank + 1))
            new = (
                ops.where(keep, h_new, h),
                ops.where(keep, c_new, c),
                ops.where(keep, h_new, prev),
            )
        # keras's TensorFlow scan needs the per-step outputs to mirror the carry.
        return new, new

    if mask is None:
        init, xs = (h0, c0), z
    else:
        init, xs = (h0, c0, ops.zeros_like(h0)), (z, mask)
    last, ys = scan(step, init, xs)
    h, c = last[0], last[1]
    if config["return_sequences"]:
        seq = ys[0] if mask is None else ys[2]
        output = ops.moveaxis(seq, 0, 1)
    else:
        output = h if mask is None else last[2]
    return output, h, c
