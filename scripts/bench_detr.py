"""Time DETR-R50 inference on one 480×640 image: kzoo on each backend against HuggingFace.

Each backend runs in its own subprocess (keras picks its backend at import). Inside it, kzoo's
``DETR()`` (ResNet-50, d_model 256, 6+6 layers, 100 queries, random weights) and transformers'
``DetrForObjectDetection(DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False))``
(random weights, torch, eval, no_grad; on the GPU when torch sees CUDA, where keras computes too)
are timed in alternation on the same image, after warm-up
(which includes JAX's jit compilation / TensorFlow's tracing); the script reports each side's
median and the median of the per-round ratios kzoo / HF.

kzoo runs through ``model.predict_on_batch`` (jit-compiled on JAX, a ``tf.function`` on
TensorFlow, eager under ``no_grad`` on torch), which is how ``predict_detections`` runs it.

Usage:
    python scripts/bench_detr.py                       # all three backends
    python scripts/bench_detr.py --backends jax torch --rounds 7
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(rounds, warmup, height, width):
    # transformers pulls in triton, whose LLVM clashes with TensorFlow's when loaded after it:
    # import it before keras (the noqa keeps the import sorter from moving it).
    from transformers import DetrConfig, DetrForObjectDetection  # noqa: I001

    import keras
    import numpy as np
    import torch

    sys.path.insert(0, ROOT)
    from kzoo.models import DETR

    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, height, width, 3)).astype("float32")
    # On a CUDA machine keras computes on the GPU, so HF runs there too.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    hf = (
        DetrForObjectDetection(DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False))
        .eval()
        .to(device)
    )
    pixels = torch.tensor(image).permute(0, 3, 1, 2).contiguous().to(device)
    # Same configuration: transformers' default DetrConfig has num_labels=2.
    model = DETR(num_classes=hf.config.num_labels)
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
    for _ in range(warmup):
        run_hf()
        run_kzoo()
    hf_times, kzoo_times = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        run_hf()
        hf_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        run_kzoo()
        kzoo_times.append(time.perf_counter() - start)
    ratios = [k / h for k, h in zip(kzoo_times, hf_times)]
    print(
        "RESULT "
        + json.dumps(
            {
                "backend": keras.backend.backend(),
                "kzoo_median_s": statistics.median(kzoo_times),
                "hf_median_s": statistics.median(hf_times),
                "ratio_median": statistics.median(ratios),
                "kzoo_first_call_s": first_call,
                "kzoo_params": kzoo_params,
                "hf_params": hf_params,
                "torch_threads": torch.get_num_threads(),
                "hf_device": device,
                "rounds": rounds,
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
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0:
        parser.error("--rounds must be >= 1 and --warmup >= 0")
    if args.child:
        child(args.rounds, args.warmup, args.height, args.width)
        return 0
    results = []
    for backend in args.backends:
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
        # JAX would otherwise reserve most of a GPU's memory, leaving none for HF's torch.
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        cmd = [sys.executable, os.path.abspath(__file__), "--child"]
        cmd += ["--rounds", str(args.rounds), "--warmup", str(args.warmup)]
        cmd += ["--height", str(args.height), "--width", str(args.width)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{backend}: failed (exit {proc.returncode})\n{proc.stderr[-3000:]}")
            continue
        result = json.loads(lines[-1][len("RESULT ") :])
        results.append(result)
        print(
            f"{backend:>10}: kzoo {result['kzoo_median_s']:.3f} s, HF torch "
            f"{result['hf_median_s']:.3f} s, ratio {result['ratio_median']:.2f}x "
            f"(first call {result['kzoo_first_call_s']:.1f} s)",
            flush=True,
        )
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
