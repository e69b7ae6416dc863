"""Time DETR-R50 inference on one 480×640 image: kzoo on each backend, its exported artifacts
(ONNX Runtime, SavedModel) and HuggingFace.

Each backend runs in its own subprocess (keras picks its backend at import). Inside it, kzoo's
``DETR()`` (ResNet-50, d_model 256, 6+6 layers, 100 queries, random weights) and transformers'
``DetrForObjectDetection(DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False))``
(random weights, torch, eval, no_grad; on the GPU when torch sees CUDA, where keras computes too)
are timed in alternation on the same image, after warm-up
(which includes JAX's jit compilation / TensorFlow's tracing); the script reports each side's
median and the median of the per-round ratios kzoo / HF.

kzoo runs through ``model.predict_on_batch`` (jit-compiled on JAX, a ``tf.function`` on
TensorFlow, eager under ``no_grad`` on torch), which is how ``predict_detections`` runs it.

Exported rows: the same model is exported with ``kzoo.export`` in each format the backend
writes (``--formats``; ONNX from every backend, SavedModel from TensorFlow and JAX, LiteRT on
request) and the artifact is timed in its runtime (``onnxruntime.InferenceSession`` on the CPU,
``tf.saved_model.load`` + its serving signature, the LiteRT interpreter), also alternating with
HF, after checking it against the keras model on the image. The artifact takes the image and
its pixel mask (all ones); JAX's ONNX is exported for the image's size (jax2onnx cannot leave
DETR's height and width free).

DC5 (``--dc5``): kzoo's ``DETR(backbone_dilation=True)`` against transformers' DETR with its own
ResNet's last stage switched, in place, to DC5's strides and dilations (``layer4``'s first block
and shortcut stride 1; its other 3x3 convolutions dilation 2, padding 2: what a timm backbone with
``output_stride=16`` computes, which transformers uses for ``facebook/detr-resnet-50-dc5``). timm
(and the torchvision it needs) cannot be installed next to the CPU build of torch 2.13 here: the
only torchvision 0.28 wheel on the index is the CUDA build, whose ``_C.so`` needs
``libtorch_cuda.so``. The script checks the patched model's feature map is at stride 16.

Usage:
    python scripts/bench/detr.py                       # all three backends and their exports
    python scripts/bench/detr.py --dc5 --formats       # DETR-DC5, kzoo against transformers
    python scripts/bench/detr.py --backends jax torch --rounds 7 --formats onnx
    python scripts/bench/detr.py --small --rounds 1 --warmup 0 --height 64 --width 96  # smoke
"""

import argparse
import json
import os
import subprocess
import sys
import time


def _exported_rows(model, image, run_hf, formats, rounds, warmup):
    """Export ``model`` in each of ``formats`` this backend writes; time each artifact."""
    import tempfile

    import keras
    import numpy as np

    from kzoo import export
    from kzoo.utils import benchmark

    backend = keras.backend.backend()
    inputs = {"images": image, "pixel_mask": np.ones(image.shape[:3], "float32")}
    signature = export.signature_for(model)
    rows = []
    for format in formats:
        if format not in export.supported_formats(backend):
            continue
        with tempfile.TemporaryDirectory() as directory:
            suffix = {"saved_model": "", "onnx": ".onnx", "litert": ".tflite"}[format]
            sizes = signature.sizes(signature.check(inputs))
            fixed = {d: sizes[d] for d in export.fixed_dims(signature, format)}
            start = time.perf_counter()
            path = export.export_model(
                model, f"{directory}/detr{suffix}", format, fixed_sizes=fixed
            )
            export_s = time.perf_counter() - start
            artifact = export.load(path, format)
            diff = max(export.max_differences(model, artifact, inputs, signature).values())

            def run_artifact(artifact=artifact):
                return artifact(inputs)["logits"]

            samples = benchmark.alternate(
                {"artifact": run_artifact, "hf": run_hf}, rounds, warmup=warmup
            )
        medians = benchmark.medians(samples)
        rows.append(
            {
                "backend": backend,
                "runtime": export.runtimes.RUNTIMES[format].split(",")[0],
                "format": format,
                "median_s": medians["artifact"],
                "hf_median_s": medians["hf"],
                "ratio_median": benchmark.ratio(samples, "artifact", "hf"),
                "export_s": export_s,
                "max_diff": diff,
                "fixed": fixed,
            }
        )
    return rows


def dilate_hf_last_stage(hf):
    """Make transformers' native ResNet-50 in ``hf`` compute DC5's last stage (see the module
    docstring); returns the backbone's output stride after the change."""
    import torch

    stage = hf.model.backbone.model.encoder.stages[-1]
    for index, block in enumerate(stage.layers):
        conv3x3 = block.layer[1].convolution
        if index == 0:
            conv3x3.stride = (1, 1)
            block.shortcut.convolution.stride = (1, 1)
        else:
            conv3x3.dilation = (2, 2)
            conv3x3.padding = (2, 2)
    with torch.no_grad():
        probe = torch.zeros(1, 3, 128, 96)
        features = hf.model.backbone.model(probe).feature_maps[-1]
    return 128 // features.shape[-2]


def child(rounds, warmup, height, width, formats=(), small=False, dc5=False):
    # transformers pulls in triton, whose LLVM clashes with TensorFlow's when loaded after it:
    # import it before keras (the noqa keeps the import sorter from moving it).
    from transformers import DetrConfig, DetrForObjectDetection  # noqa: I001

    import keras
    import numpy as np
    import torch

    from kzoo.models import DETR
    from kzoo.utils import benchmark

    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, height, width, 3)).astype("float32")
    # On a CUDA machine keras computes on the GPU, so HF runs there too.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    hf = (
        DetrForObjectDetection(DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False))
        .eval()
        .to(device)
    )
    if dc5:
        stride = dilate_hf_last_stage(hf)
        if stride != 16:
            raise SystemExit(f"the patched transformers backbone has stride {stride}, not 16")
    pixels = torch.tensor(image).permute(0, 3, 1, 2).contiguous().to(device)
    # Same configuration: transformers' default DetrConfig has num_labels=2.
    if small:
        # A smoke-test size: checks the script runs, times nothing worth reporting.
        model = DETR(
            num_classes=hf.config.num_labels, num_queries=5, d_model=32, num_heads=4,
            num_encoder_layers=1, num_decoder_layers=1, ffn_dim=64, backbone="small",
            backbone_dilation=dc5,
        )  # fmt: skip
    else:
        model = DETR(num_classes=hf.config.num_labels, backbone_dilation=dc5)
    model.build()
    kzoo_params = sum(int(np.prod(v.shape)) for v in model.weights if "moving" not in v.name)
    hf_params = sum(p.numel() for p in hf.parameters())

    def run_hf():
        with torch.no_grad():
            out = hf(pixel_values=pixels)
        return out.logits.cpu().numpy()  # waits for the device, as kzoo's numpy output does

    def run_kzoo():
        return model.predict_on_batch(image)["logits"]

    start = time.perf_counter()
    run_kzoo()
    first_call = time.perf_counter() - start
    samples = benchmark.alternate({"hf": run_hf, "kzoo": run_kzoo}, rounds, warmup=warmup)
    medians = benchmark.medians(samples)
    exported = _exported_rows(model, image, run_hf, formats, rounds, warmup)
    print(
        "RESULT "
        + json.dumps(
            {
                "backend": keras.backend.backend(),
                "dc5": dc5,
                "kzoo_median_s": medians["kzoo"],
                "hf_median_s": medians["hf"],
                "ratio_median": benchmark.ratio(samples, "kzoo", "hf"),
                "kzoo_first_call_s": first_call,
                "kzoo_params": kzoo_params,
                "hf_params": hf_params,
                "torch_threads": torch.get_num_threads(),
                "hf_device": device,
                "rounds": rounds,
                "exported": exported,
            }
        ),
        flush=True,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["torch", "jax", "tensorflow"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument(
        "--formats",
        nargs="*",
        default=["onnx", "saved_model"],
        choices=["onnx", "saved_model", "litert"],
        help="exported artifacts to time (default: onnx saved_model; none: only kzoo and HF)",
    )
    parser.add_argument("--small", action="store_true", help="a tiny DETR: checks the script runs")
    parser.add_argument(
        "--dc5",
        action="store_true",
        help="DETR-DC5 (dilated last stage) on both sides; see the module docstring",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0:
        parser.error("--rounds must be >= 1 and --warmup >= 0")
    if args.child:
        child(args.rounds, args.warmup, args.height, args.width, args.formats, args.small, args.dc5)
        return 0
    results = []
    for backend in args.backends:
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
        # JAX would otherwise reserve most of a GPU's memory, leaving none for HF's torch.
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        cmd = [sys.executable, os.path.abspath(__file__), "--child"]
        cmd += ["--rounds", str(args.rounds), "--warmup", str(args.warmup)]
        cmd += ["--height", str(args.height), "--width", str(args.width)]
        cmd += ["--formats", *args.formats] + (["--small"] if args.small else [])
        cmd += ["--dc5"] if args.dc5 else []
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{backend}: failed (exit {proc.returncode})\n{proc.stderr[-3000:]}")
            continue
        result = json.loads(lines[-1][len("RESULT ") :])
        results.append(result)
        print(
            f"{backend:>10}{' DC5' if args.dc5 else ''}: kzoo {result['kzoo_median_s']:.3f} s, "
            "HF torch "
            f"{result['hf_median_s']:.3f} s, ratio {result['ratio_median']:.2f}x "
            f"(first call {result['kzoo_first_call_s']:.1f} s)",
            flush=True,
        )
        for row in result["exported"]:
            fixed = f", {row['fixed']} fixed" if row["fixed"] else ""
            print(
                f"{'':>10}  {row['format']} from {backend} in {row['runtime']}: "
                f"{row['median_s']:.3f} s, HF torch {row['hf_median_s']:.3f} s, ratio "
                f"{row['ratio_median']:.2f}x (export {row['export_s']:.0f} s, max diff "
                f"{row['max_diff']:.1e}{fixed})",
                flush=True,
            )
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
