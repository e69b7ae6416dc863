"""The grid of published ConvLSTM configurations that ``scripts/bench/convlstm.py --grid`` times.

Each point is a next-frame model of the kind papers and tutorials train: 1-3 stacked
``ConvLSTM2D`` layers (BatchNorm between them) and a sigmoid convolution head, trained with
``model.fit`` on frames in [0, 1]. Together the points cover kernel sizes 1, 3, 5 and 7,
16-128 filters, 8-20 frames, 16-64 px frames, batch 1-16, tanh and relu, 1-3 layers,
``return_sequences`` both ways, the time axis given or ``None``, and float32 and
mixed_bfloat16. ``kind`` says which regime a point is in: ``call-bound`` points are small
enough that per-call overhead (keras's per-step Python and layout work) dominates,
``conv-bound`` points spend their time in convolutions.
"""

GRID = [
    # name, kernels per layer, filters, frames, size, batch, activation, return_sequences,
    # time_given, dtype policy, kind
    ("tiny-1layer", (3,), 16, 8, 16, 4, "tanh", True, True, "float32", "call-bound"),
    ("tiny-last-frame", (3, 3), 16, 8, 16, 4, "tanh", False, False, "float32", "call-bound"),
    ("batch1-k1", (1,), 16, 10, 16, 1, "tanh", True, False, "float32", "call-bound"),
    # return_sequences=True: keras's own Conv2D head cannot train at batch 1 on torch 2.13
    # (torch picks slow_conv2d, whose backward refuses keras's permuted kernel: "slow_conv2d:
    # grad_weight must be contiguous"), with either ConvLSTM layer before it.
    ("batch1-k5", (5,), 32, 10, 16, 1, "relu", True, True, "float32", "call-bound"),
    ("small-3layer", (3, 3, 3), 16, 10, 16, 4, "relu", True, False, "float32", "call-bound"),
    ("long-seq-small", (3,), 16, 20, 16, 2, "tanh", True, True, "float32", "call-bound"),
    ("kerasio-like", (5, 3, 1), 32, 10, 32, 5, "relu", True, False, "float32", "mixed"),
    ("k3-32f-32px", (3, 3), 32, 10, 32, 8, "tanh", True, True, "float32", "mixed"),
    ("k7-16f", (7,), 16, 8, 32, 4, "tanh", False, False, "float32", "mixed"),
    ("k1-64f", (1, 1), 64, 10, 32, 8, "relu", True, False, "float32", "mixed"),
    ("bf16-k3", (3, 3), 32, 10, 32, 4, "tanh", True, False, "mixed_bfloat16", "mixed"),
    ("bf16-small", (3,), 16, 8, 16, 4, "relu", False, True, "mixed_bfloat16", "call-bound"),
    ("shi-precip", (3, 3), 64, 10, 32, 4, "tanh", True, True, "float32", "conv-bound"),
    ("k5-64f-32px", (5,), 64, 10, 32, 4, "tanh", False, False, "float32", "conv-bound"),
    ("k3-128f-16px", (3,), 128, 8, 16, 4, "tanh", True, False, "float32", "conv-bound"),
    ("k7-32f-32px", (7, 7), 32, 8, 32, 2, "relu", True, True, "float32", "conv-bound"),
    ("batch16-k3", (3,), 32, 8, 32, 16, "tanh", True, False, "float32", "conv-bound"),
    ("64px-k3", (3,), 32, 8, 64, 4, "tanh", False, True, "float32", "conv-bound"),
    ("64px-3layer", (5, 3, 1), 32, 10, 64, 2, "relu", True, False, "float32", "conv-bound"),
    ("mnist-like", (3, 3, 3), 64, 10, 64, 4, "tanh", True, False, "float32", "conv-bound"),
]

FIELDS = (
    "name",
    "kernels",
    "filters",
    "frames",
    "size",
    "batch",
    "activation",
    "return_sequences",
    "time_given",
    "dtype",
    "kind",
)


def points(names=None):
    rows = [dict(zip(FIELDS, p)) for p in GRID]
    if names:
        wanted = set(names)
        unknown = wanted - {r["name"] for r in rows}
        if unknown:
            raise ValueError(f"unknown grid points: {', '.join(sorted(unknown))}")
        rows = [r for r in rows if r["name"] in wanted]
    return rows


def build_model(point, layer_cls, channels=1):
    """The point's next-frame model with ``layer_cls`` as its ConvLSTM2D."""
    import keras

    frames = point["frames"] if point["time_given"] else None
    size = point["size"]
    inputs = keras.Input((frames, size, size, channels))
    x = inputs
    kernels = point["kernels"]
    for i, k in enumerate(kernels):
        last = i == len(kernels) - 1
        x = layer_cls(
            point["filters"],
            k,
            padding="same",
            activation=point["activation"],
            return_sequences=point["return_sequences"] or not last,
            name=f"conv_lstm_{i}",
        )(x)
        if not last:
            x = keras.layers.BatchNormalization(name=f"bn_{i}")(x)
    head = keras.layers.Conv3D if point["return_sequences"] else keras.layers.Conv2D
    outputs = head(channels, 3, padding="same", activation="sigmoid", name="head")(x)
    outputs = keras.layers.Activation("linear", dtype="float32", name="out")(outputs)
    return keras.Model(inputs, outputs)
