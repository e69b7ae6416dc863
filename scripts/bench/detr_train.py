"""Time one DETR-R50 training step: kzoo on each backend against HuggingFace transformers.

One step is the forward pass, Hungarian matching, the set loss (with the auxiliary decoder
losses), the backward pass and an AdamW update with gradient clipping at norm 0.1 and the
backbone at 1/10 of the learning rate (DETR's recipe), at batch 2 on the same images and
targets. kzoo runs ``model.train_on_batch`` after ``model.compile()`` (its default recipe);
transformers runs ``DetrForObjectDetection`` (its own ResNet-50, random weights, auxiliary loss
on) computing its own loss, ``torch.nn.utils.clip_grad_norm_`` and ``torch.optim.AdamW`` with
two parameter groups. The two are timed in alternation in one process, after warm-up (JAX's
compilation, TensorFlow's tracing); the script reports each side's median and the median of
the per-round ratios kzoo / HF (< 1 means kzoo is faster). ``--pause S`` idles ``S`` seconds
before every timed step, so that threads one framework leaves spinning cannot slow the other.

Dropout: kzoo's DETR follows the official model (``dropout=0.1`` on the attention weights, after
each attention, inside and after each feed-forward block); transformers' ``DetrConfig`` defaults
``attention_dropout`` and ``activation_dropout`` to 0, which skips two of those. The script sets
both to 0.1, so that the two models run the same configuration (``--hf-default-dropout`` keeps
transformers' defaults).

Which backbone parameters train: transformers' own ResNet is frozen completely by its
``freeze_backbone`` check (it looks for ``stage.1`` in names that read ``stages.1``), while
DETR's recipe trains layer2-layer4. ``--backbone recipe`` (default) unfreezes HF's
``stages.{1,2,3}`` convolutions to match kzoo's default; ``--backbone frozen`` freezes kzoo's
whole backbone (``backbone_trainable_stages=0``) to match HF's default.

``--training-queries`` times kzoo against kzoo instead: the same DETR-R50 step without and
with the training-only queries (``compile(denoising=DenoisingConfig(groups=--dn-groups),
query_groups=--query-groups)``, DN-DETR's 5 and LW-DETR's 13 by default), alternating in one
process per backend; the ratio is with / without (the issue's target: at most 1.25x).

Usage:
    python scripts/bench/detr_train.py                         # all backends, 512x640
    python scripts/bench/detr_train.py --backends torch jax --rounds 7 --backbone frozen
    python scripts/bench/detr_train.py --training-queries      # DN + groups vs plain, per backend
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def _targets(rng, batch, counts, num_classes):
    boxes, labels = [], []
    for n in counts[:batch]:
        cxcy = rng.uniform(0.2, 0.8, size=(n, 2))
        wh = rng.uniform(0.05, 0.3, size=(n, 2))
        boxes.append(np.concatenate([cxcy, wh], 1).astype("float32"))
        labels.append(rng.integers(0, num_classes, size=n).astype("int32"))
    return boxes, labels


def build_steps(args):
    """``(step_hf, step_kzoo, hf, model)``: one training step of each on the same batch.

    ``args`` needs ``batch``, ``height``, ``width``, ``backbone``, ``dtype_policy`` and
    ``hf_default_dropout`` (as this script's options); ``scripts/profile/detr_train.py`` profiles
    the same two steps.
    """
    # transformers pulls in triton, whose LLVM clashes with TensorFlow's when loaded after it:
    # import it before keras (the noqa keeps the import sorter from moving it).
    from transformers import DetrConfig, DetrForObjectDetection  # noqa: I001

    import keras
    import torch

    from kzoo.models import DETR

    if args.dtype_policy:
        keras.config.set_dtype_policy(args.dtype_policy)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(args.batch, args.height, args.width, 3)).astype("float32")
    dropout = (
        {} if args.hf_default_dropout else {"attention_dropout": 0.1, "activation_dropout": 0.1}
    )
    hf = DetrForObjectDetection(
        DetrConfig(
            use_timm_backbone=False, use_pretrained_backbone=False, auxiliary_loss=True, **dropout
        )
    ).train()
    num_classes = hf.config.num_labels
    boxes, labels = _targets(rng, args.batch, (3, 5, 2, 4), num_classes)

    backbone_params, other_params = [], []
    for name, p in hf.named_parameters():
        if ".backbone." in name:
            trainable = args.backbone == "recipe" and any(f"stages.{s}." in name for s in (1, 2, 3))
            p.requires_grad_(trainable)
            if trainable:
                backbone_params.append(p)
        else:
            other_params.append(p)
    optimizer = torch.optim.AdamW(
        [{"params": other_params}, {"params": backbone_params, "lr": 1e-5}],
        lr=1e-4,
        weight_decay=1e-4,
    )
    pixels = torch.tensor(images).permute(0, 3, 1, 2).contiguous()
    hf_labels = [
        {"class_labels": torch.tensor(lab, dtype=torch.long), "boxes": torch.tensor(b)}
        for b, lab in zip(boxes, labels)
    ]

    def step_hf():
        optimizer.zero_grad(set_to_none=True)
        loss = hf(pixel_values=pixels, labels=hf_labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 0.1)
        optimizer.step()
        return float(loss)

    stages = 0 if args.backbone == "frozen" else None
    model = DETR(num_classes=num_classes, backbone_trainable_stages=stages)
    model.compile()
    width = max(len(b) for b in boxes)
    y = {
        "boxes": np.zeros((args.batch, width, 4), "float32"),
        "labels": np.full((args.batch, width), -1, "int32"),
    }
    for i, (b, lab) in enumerate(zip(boxes, labels)):
        y["boxes"][i, : len(b)] = b
        y["labels"][i, : len(lab)] = lab

    def step_kzoo():
        return float(np.asarray(model.train_on_batch(images, y)))

    return step_hf, step_kzoo, hf, model


def build_query_steps(args):
    """``(step_plain, step_queries, plain, model)``: one kzoo step without and with the
    training-only queries, same weights, same batch."""
    import keras

    from kzoo.models import DETR
    from kzoo.models.detr import DenoisingConfig

    if args.dtype_policy:
        keras.config.set_dtype_policy(args.dtype_policy)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(args.batch, args.height, args.width, 3)).astype("float32")
    num_classes = 91
    boxes, labels = _targets(rng, args.batch, (3, 5, 2, 4), num_classes)
    width = max(len(b) for b in boxes)
    y = {
        "boxes": np.zeros((args.batch, width, 4), "float32"),
        "labels": np.full((args.batch, width), -1, "int32"),
    }
    for i, (b, lab) in enumerate(zip(boxes, labels)):
        y["boxes"][i, : len(b)] = b
        y["labels"][i, : len(lab)] = lab
    stages = 0 if args.backbone == "frozen" else None
    plain = DETR(num_classes=num_classes, backbone_trainable_stages=stages)
    plain.build((None, None, None, 3))
    model = DETR(num_classes=num_classes, backbone_trainable_stages=stages)
    model.build((None, None, None, 3))
    model.set_weights(plain.get_weights())
    plain.compile()
    model.compile(
        denoising=DenoisingConfig(groups=args.dn_groups) if args.dn_groups else None,
        query_groups=args.query_groups,
    )

    def step(m):
        return lambda: float(np.asarray(m.train_on_batch(images, y)))

    return step(plain), step(model), plain, model


def child(args):
    if args.training_queries:
        return child_queries(args)
    step_hf, step_kzoo, hf, model = build_steps(args)  # imports transformers before keras
    import keras
    import torch

    from kzoo.utils import benchmark

    start = time.perf_counter()
    step_kzoo()
    first_call = time.perf_counter() - start
    samples = benchmark.alternate(
        {"hf": step_hf, "kzoo": step_kzoo}, args.rounds, warmup=args.warmup, pause=args.pause
    )
    medians = benchmark.medians(samples)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    hf_trainable = sum(p.numel() for p in hf.parameters() if p.requires_grad)
    print(
        "RESULT "
        + json.dumps(
            {
                "backend": keras.backend.backend(),
                "dtype_policy": args.dtype_policy or "float32",
                "backbone": args.backbone,
                "kzoo_median_s": medians["kzoo"],
                "hf_median_s": medians["hf"],
                "ratio_median": benchmark.ratio(samples, "kzoo", "hf"),
                "kzoo_first_call_s": first_call,
                "kzoo_trainable": trainable,
                "hf_trainable": hf_trainable,
                "torch_threads": torch.get_num_threads(),
                "rounds": args.rounds,
                "hf_dropout": "transformers defaults" if args.hf_default_dropout else "DETR (0.1)",
                "size": [args.height, args.width],
            }
        ),
        flush=True,
    )


def child_queries(args):
    step_plain, step_queries, plain, model = build_query_steps(args)
    import keras

    from kzoo.utils import benchmark

    for step in (step_plain, step_queries):
        step()  # compile / trace
    samples = benchmark.alternate(
        {"plain": step_plain, "queries": step_queries},
        args.rounds,
        warmup=args.warmup,
        pause=args.pause,
    )
    medians = benchmark.medians(samples)
    print(
        "RESULT "
        + json.dumps(
            {
                "backend": keras.backend.backend(),
                "dtype_policy": args.dtype_policy or "float32",
                "backbone": args.backbone,
                "dn_groups": args.dn_groups,
                "query_groups": args.query_groups,
                "plain_median_s": medians["plain"],
                "queries_median_s": medians["queries"],
                "ratio_median": benchmark.ratio(samples, "queries", "plain"),
                "rounds": args.rounds,
                "size": [args.height, args.width],
            }
        ),
        flush=True,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["torch", "jax", "tensorflow"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--backbone", choices=("recipe", "frozen"), default="recipe")
    parser.add_argument("--dtype-policy", default="", help="e.g. mixed_bfloat16 (kzoo side)")
    parser.add_argument(
        "--hf-default-dropout",
        action="store_true",
        help="keep transformers' attention_dropout=activation_dropout=0 (kzoo keeps DETR's 0.1)",
    )
    parser.add_argument(
        "--pause",
        type=float,
        default=0.0,
        help="seconds idle before each timed step (lets the other side's threads go to sleep)",
    )
    parser.add_argument(
        "--training-queries",
        action="store_true",
        help="time kzoo with denoising queries and query groups against plain kzoo (no HF)",
    )
    parser.add_argument("--dn-groups", type=int, default=5, help="with --training-queries (0: off)")
    parser.add_argument("--query-groups", type=int, default=13, help="with --training-queries")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0 or not 1 <= args.batch <= 4 or args.pause < 0:
        parser.error("--rounds must be >= 1, --warmup >= 0, --batch in 1..4 and --pause >= 0")
    if args.child:
        child(args)
        return 0
    results = []
    for backend in args.backends:
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
        cmd = [sys.executable, os.path.abspath(__file__), "--child"]
        for key in ("rounds", "warmup", "batch", "height", "width", "backbone", "pause"):
            cmd += [f"--{key}", str(getattr(args, key))]
        if args.training_queries:
            cmd += ["--training-queries", "--dn-groups", str(args.dn_groups)]
            cmd += ["--query-groups", str(args.query_groups)]
        if args.dtype_policy:
            cmd += ["--dtype-policy", args.dtype_policy]
        if args.hf_default_dropout:
            cmd += ["--hf-default-dropout"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{backend}: failed (exit {proc.returncode})\n{proc.stderr[-3000:]}")
            continue
        result = json.loads(lines[-1][len("RESULT ") :])
        results.append(result)
        if args.training_queries:
            print(
                f"{backend:>10}: plain {result['plain_median_s']:.3f} s, with {args.dn_groups} "
                f"DN groups and {args.query_groups} query groups "
                f"{result['queries_median_s']:.3f} s, ratio {result['ratio_median']:.2f}x",
                flush=True,
            )
            continue
        print(
            f"{backend:>10}: kzoo {result['kzoo_median_s']:.3f} s, HF torch "
            f"{result['hf_median_s']:.3f} s, ratio {result['ratio_median']:.2f}x "
            f"(first call {result['kzoo_first_call_s']:.1f} s; trainable kzoo "
            f"{result['kzoo_trainable']:,}, HF {result['hf_trainable']:,})",
            flush=True,
        )
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
