"""Tiny versions of every exportable kzoo model, with inputs at two sizes.

Shared by the export tests and ``scripts/tools/export_matrix.py`` (which prints docs/export.md's
table). Each case builds its model with fixed seeds and makes inputs from named sizes
(``batch``, ``time``, ``height``, ...); a dimension a backend's converter must fix
(``kzoo.export.fixed_dims``) keeps its first size in the second input.
"""

import dataclasses

import keras
import numpy as np

import kzoo
from kzoo import export


@dataclasses.dataclass
class Case:
    build: object  # () -> built keras.Model
    sample: object  # (sizes: dict, rng) -> inputs (array or dict by input name)
    sizes: tuple  # two dicts of sizes by dimension name
    # Outputs in pixels: their difference is compared after dividing by this dimension's size.
    pixel_outputs: dict = dataclasses.field(default_factory=dict)


def _conv_lstm_model(rank):
    cls = {1: kzoo.layers.ConvLSTM1D, 2: kzoo.layers.ConvLSTM2D, 3: kzoo.layers.ConvLSTM3D}[rank]
    keras.utils.set_random_seed(3)
    inputs = keras.Input((None,) * (rank + 1) + (2,), name="frames")
    x = cls(3, 3, padding="same", return_sequences=True, name="conv_lstm_0")(inputs)
    x = cls(2, 2, padding="same", name="conv_lstm_1")(x)
    return keras.Model(inputs, x)


def _video(channels, spatial):
    def sample(sizes, rng):
        shape = (sizes["batch"], sizes["time"]) + tuple(sizes[d] for d in spatial) + (channels,)
        return rng.random(shape, dtype=np.float32)

    return sample


def _sequence_model(layer):
    keras.utils.set_random_seed(3)
    inputs = keras.Input((None, 16), name="x")
    hidden = keras.layers.Dense(16, name="dense")(inputs)
    if isinstance(layer, kzoo.layers.ContextParallelAttention):
        return keras.Model(inputs, layer(hidden, hidden))
    return keras.Model(inputs, layer(hidden))


def _sequence(sizes, rng):
    return rng.normal(size=(sizes["batch"], sizes["x_1"], 16)).astype("float32")


def _causal_lm():
    keras.utils.set_random_seed(3)
    model = kzoo.models.CausalLM(
        vocabulary_size=11,
        num_layers=1,
        hidden_dim=16,
        num_heads=4,
        num_key_value_heads=2,
        max_sequence_length=32,
    )
    model.build((None, None))
    return model


def _tokens(sizes, rng):
    return rng.integers(0, 11, size=(sizes["batch"], sizes["sequence"])).astype("int32")


def small_detr():
    """A DETR small enough for tests, built through its public constructor."""
    keras.utils.set_random_seed(3)
    model = kzoo.models.DETR(
        num_classes=3,
        num_queries=5,
        d_model=32,
        num_heads=4,
        num_encoder_layers=1,
        num_decoder_layers=1,
        ffn_dim=64,
        backbone="small",
    )
    model.build()
    return model


def detr_inputs(sizes, rng):
    """Normalised images, the last one padded at the bottom and right (its pixel mask)."""
    b, h, w = sizes["batch"], sizes["height"], sizes["width"]
    images = rng.normal(size=(b, h, w, 3)).astype("float32")
    mask = np.ones((b, h, w), "float32")
    mask[-1, h - h // 3 :, :] = 0
    mask[-1, :, w - w // 4 :] = 0
    images[-1][mask[-1] == 0] = 0
    return {"images": images, "pixel_mask": mask}


def _frames(time, height, width, batch=2):
    return {"batch": batch, "time": time, "height": height, "width": width}


CASES = {
    "ConvLSTM1D": Case(
        lambda: _conv_lstm_model(1),
        _video(2, ("length",)),
        ({"batch": 2, "time": 3, "length": 8}, {"batch": 1, "time": 5, "length": 11}),
    ),
    "ConvLSTM2D": Case(
        lambda: _conv_lstm_model(2),
        _video(2, ("height", "width")),
        (_frames(3, 8, 8), _frames(5, 11, 6, batch=1)),
    ),
    "ConvLSTM3D": Case(
        lambda: _conv_lstm_model(3),
        _video(2, ("depth", "height", "width")),
        (
            {"batch": 2, "time": 3, "depth": 5, "height": 5, "width": 5},
            {"batch": 1, "time": 4, "depth": 6, "height": 4, "width": 7},
        ),
    ),
    "LayerNormalization": Case(
        lambda: _sequence_model(kzoo.layers.LayerNormalization(name="norm")),
        _sequence,
        ({"batch": 2, "x_1": 5}, {"batch": 3, "x_1": 9}),
    ),
    "ContextParallelAttention": Case(
        lambda: _sequence_model(
            kzoo.layers.ContextParallelAttention(
                num_heads=4, key_dim=4, num_key_value_heads=2, causal=True, name="attention"
            )
        ),
        _sequence,
        ({"batch": 2, "x_1": 5}, {"batch": 3, "x_1": 9}),
    ),
    "CausalLM": Case(
        _causal_lm, _tokens, ({"batch": 2, "sequence": 6}, {"batch": 3, "sequence": 11})
    ),
    "ColorFramePredictor": Case(
        lambda: kzoo.models.ColorFramePredictor(channels=3, filters=(4, 4), kernel_sizes=(3, 3)),
        _video(3, ("height", "width")),
        (_frames(3, 8, 8), _frames(4, 12, 10, batch=1)),
    ),
    "NextFramePredictor": Case(
        lambda: kzoo.models.NextFramePredictor(channels=1, filters=(4, 4), kernel_sizes=(3, 3)),
        _video(1, ("height", "width")),
        (_frames(3, 8, 8), _frames(4, 12, 10, batch=1)),
    ),
    "DETR": Case(
        small_detr,
        detr_inputs,
        (
            {"batch": 2, "height": 64, "width": 96},
            {"batch": 1, "height": 96, "width": 64},
        ),
    ),
    "DETR + post-processing": Case(
        lambda: export.DETRDetections(small_detr()),
        detr_inputs,
        (
            {"batch": 2, "height": 64, "width": 96},
            {"batch": 1, "height": 96, "width": 64},
        ),
        pixel_outputs={"boxes": ("height", "width")},
    ),
}

# Cells that do not work: why, and what the converter's error says (docs/export.md explains
# at more length). A test checks that each still fails so the table is corrected when an
# upstream fix lands.
UNSUPPORTED = {
    ("ConvLSTM3D", "jax", "onnx"): (
        "jax2onnx 0.17 lowers 1D and 2D convolutions only",
        "Unsupported conv layouts",
    ),
    ("NextFramePredictor", "jax", "onnx"): (
        "jax2onnx 0.17 lowers 1D and 2D convolutions only (the Conv3D head)",
        "Unsupported conv layouts",
    ),
}


def input_sizes(case, signature, format):
    """The case's two size dicts, with the dimensions this backend fixes kept equal."""
    first, second = (dict(s) for s in case.sizes)
    fixed = {d: first[d] for d in export.fixed_dims(signature, format) if d in first}
    second.update(fixed)
    return first, second, fixed


def run_case(name, format, directory, seed=0):
    """Export case ``name`` in ``format`` to ``directory``, run it in its runtime at both
    sizes; returns ``(per-size max differences, fixed sizes, path)``. Differences of pixel
    outputs are divided by the image's larger side."""
    case = CASES[name]
    model = case.build()
    signature = export.signature_for(model)
    first, second, fixed = input_sizes(case, signature, format)
    suffix = {"saved_model": "", "onnx": ".onnx", "litert": ".tflite"}[format]
    path = export.export_model(
        model, f"{directory}/{name.replace(' ', '_')}{suffix}", format, fixed_sizes=fixed
    )
    artifact = export.load(path, format)
    rng = np.random.default_rng(seed)
    results = []
    for sizes in (first, second):
        diffs = export.max_differences(model, artifact, case.sample(sizes, rng), signature)
        for output, dims in case.pixel_outputs.items():
            diffs[output] /= max(sizes[d] for d in dims)
        results.append(diffs)
    return results, fixed, path
