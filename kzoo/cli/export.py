"""``kzoo export TARGET --preset P --format saved_model|onnx|litert --out DST``.

Loads a preset, writes the artifact atomically (``kzoo.export.export_model``), loads it back in
the runtime that serves it (``kzoo.export.runtimes``), runs it on a sample input and prints the
largest difference from the keras model per output.
"""

import sys
import time

TARGETS = {
    "detr": "a DETR preset (images + pixel_mask -> logits and boxes, or detections)",
    "convlstm-color": "a ColorFramePredictor preset (frames -> next frame)",
    "convlstm-next": "a NextFramePredictor preset (frames -> every next frame)",
    "causal-lm": "a CausalLM preset (token ids -> logits)",
}
DEFAULT_PRESETS = {"convlstm-color": "convlstm_color_shapes"}


FORMATS = ("saved_model", "onnx", "litert")


def register(commands):
    for target, what in TARGETS.items():
        p = commands["export"].add_parser(
            target,
            help=f"export {what}",
            description=(
                f"Export {what} to a SavedModel directory, an ONNX file or a LiteRT .tflite "
                "file (written atomically), load it back in its runtime, run it on a sample "
                "input and print the largest difference from the keras model."
            ),
        )
        default = DEFAULT_PRESETS.get(target)
        p.add_argument(
            "--preset",
            required=default is None,
            default=default,
            help="preset name, directory or hf://owner/repo[@revision]"
            + (f" (default {default})" if default else ""),
        )
        p.add_argument("--format", required=True, choices=FORMATS, help="artifact format")
        p.add_argument(
            "--out", required=True, help="destination (a directory for saved_model, else a file)"
        )
        p.add_argument(
            "--overwrite",
            action="store_true",
            help="replace an existing --out artifact of the same format (atomically)",
        )
        p.add_argument(
            "--force",
            action="store_true",
            help="replace --out whatever it holds, deleting its files (implies --overwrite)",
        )
        p.add_argument("--batch", type=int, default=2, help="sample batch size (2)")
        if target == "detr":
            p.add_argument("--height", type=int, default=480, help="sample image height (480)")
            p.add_argument("--width", type=int, default=640, help="sample image width (640)")
            p.add_argument(
                "--postprocess",
                action="store_true",
                help="put the post-processing in the graph: outputs scores, labels and boxes "
                "(x0, y0, x1, y1) in pixels of each unpadded input image",
            )
        elif target == "causal-lm":
            p.add_argument("--length", type=int, default=16, help="sample sequence length (16)")
        else:
            p.add_argument("--time", type=int, default=None, help="sample frames (default 9)")
            p.add_argument("--height", type=int, default=32, help="sample frame height (32)")
            p.add_argument("--width", type=int, default=32, help="sample frame width (32)")
        p.set_defaults(func=cmd_export, target=target)


def _positive(args, *names):
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            raise ValueError(f"--{name} must be a positive integer; got {value}.")


def _load(target, preset):
    if target == "detr":
        from kzoo.models.detr import DETR

        model = DETR.from_preset(preset)
        if not model.built:
            model.build()
        return model
    if target == "causal-lm":
        from kzoo.models.causal_lm import CausalLM

        return CausalLM.from_preset(preset)
    from kzoo.models.conv_lstm import ColorFramePredictor, NextFramePredictor

    cls = ColorFramePredictor if target == "convlstm-color" else NextFramePredictor
    return cls.from_preset(preset)


def sample_inputs(target, model, args, seed=0):
    """A sample batch for ``target`` (dict by input name, or one array)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if target == "detr":
        from kzoo.data.images import preprocess_images

        # Images of two sizes, padded into one batch: the pixel mask is part of the check.
        sizes = [(args.height, args.width)] + [
            (max(32, args.height * 3 // 4), max(32, args.width * 2 // 3))
        ] * (args.batch - 1)
        images = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in sizes]
        batch = preprocess_images(images, resize=False)
        return {"images": batch.images, "pixel_mask": batch.pixel_mask}
    if target == "causal-lm":
        return rng.integers(0, model.vocabulary_size, size=(args.batch, args.length)).astype(
            "int32"
        )
    frames = args.time or 9
    shape = (args.batch, frames, args.height, args.width, model.channels)
    return rng.random(shape, dtype=np.float32)


def cmd_export(args):
    import keras

    from kzoo import export

    _positive(args, "batch", "height", "width", "time", "length")
    export.check_format(args.format)
    # Before the model loads: a destination that would be refused costs nothing.
    export.check_destination(args.out, args.format, overwrite=args.overwrite, force=args.force)
    model = _load(args.target, args.preset)
    inputs = sample_inputs(args.target, model, args)
    if getattr(args, "postprocess", False):
        model = export.DETRDetections(model)
    signature = export.signature_for(model)
    named = (
        signature.check(inputs) if isinstance(inputs, dict) else {signature.specs[0].name: inputs}
    )
    sizes = signature.sizes(named)
    # Dimensions this backend's converter cannot leave free take the sample's size.
    fixed = {d: sizes[d] for d in export.fixed_dims(signature, args.format)}
    backend = keras.backend.backend()
    start = time.perf_counter()
    path = export.export_model(
        model,
        args.out,
        args.format,
        fixed_sizes=fixed,
        overwrite=args.overwrite,
        force=args.force,
    )
    seconds = time.perf_counter() - start
    artifact = export.load(path, args.format)
    diffs = export.max_differences(model, artifact, inputs, signature)
    shapes = ", ".join(
        f"{s.name} ({', '.join(str(fixed.get(d, d)) for d in s.dims)})" for s in signature.specs
    )
    print(f"exported {args.target} ({backend}) to {path} as {args.format} in {seconds:.1f} s")
    print(f"  inputs   {shapes}")
    print(f"  runtime  {export.runtimes.RUNTIMES[args.format]}")
    sample = ", ".join(f"{k} {tuple(v.shape)}" for k, v in named.items())
    print(f"  sample   {sample}")
    tolerance = export.TOLERANCES[args.format]
    worst = 0.0
    for name, diff in diffs.items():
        # Pixel boxes scale the normalised error by the image size.
        scale = max(sizes.get("height", 1), sizes.get("width", 1)) if name == "boxes" else 1
        unit = " px" if scale > 1 and getattr(args, "postprocess", False) else ""
        print(f"  max |{args.format} - keras| {name:<12} {diff:.3g}{unit}")
        worst = max(worst, diff / (scale if unit else 1))
    if worst > tolerance:
        print(
            f"kzoo: the artifact differs from the keras model by more than {tolerance:g}",
            file=sys.stderr,
        )
        return 1
    print(f"  within {tolerance:g} of keras")
    return 0
