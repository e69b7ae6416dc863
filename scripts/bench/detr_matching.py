"""What the Hungarian matching costs per DETR training step (loss forward + backward).

Times ``DETRLoss`` value-and-gradient as keras ``fit`` runs it on the current backend (compiled
with ``jax.jit`` on JAX, ``tf.function`` on TensorFlow, eager on torch) twice, alternating, in one
process: with the real matcher (cost matrices, host callback, scipy), and with a matcher that
returns a fixed assignment without leaving the device. The difference is the matching's cost.
Also reports the host-side scipy time alone.

    KERAS_BACKEND=jax python scripts/bench/detr_matching.py --config train
    KERAS_BACKEND=jax python scripts/bench/detr_matching.py --config r50
"""

import argparse
import statistics

import keras
import numpy as np
from keras import ops

from kzoo.models.detr.training.loss import DETRLoss
from kzoo.models.detr.training.matcher import HungarianMatcher
from kzoo.ops.hungarian import solve_numpy
from kzoo.utils import benchmark

CONFIGS = {
    # scripts/train/detr.py defaults: batch 8, 10 queries, 3 decoder layers, <= 4 objects.
    "train": dict(batch=8, queries=10, classes=3, layers=3, targets=4),
    # DETR R50 on COCO: batch 2 per GPU, 100 queries, 6 decoder layers, up to ~30 objects.
    "r50": dict(batch=2, queries=100, classes=91, layers=6, targets=30),
}


class FixedMatcher(HungarianMatcher):
    """Target slot t -> query t, with no cost matrix and no host call (the baseline)."""

    def __call__(self, logits, pred_boxes, target_boxes, target_labels):
        t = target_labels.shape[1]
        return ops.broadcast_to(ops.arange(t, dtype="int32")[None], ops.shape(target_labels))


def make_problem(c, rng):
    b, q, layers = c["batch"], c["queries"], c["layers"]
    y_pred = {
        "logits": rng.normal(size=(b, q, c["classes"] + 1)).astype("float32"),
        "boxes": rng.uniform(0.1, 0.5, size=(b, q, 4)).astype("float32"),
        "aux_logits": rng.normal(size=(b, layers - 1, q, c["classes"] + 1)).astype("float32"),
        "aux_boxes": rng.uniform(0.1, 0.5, size=(b, layers - 1, q, 4)).astype("float32"),
    }
    labels = np.full((b, c["targets"]), -1, "int32")
    boxes = np.zeros((b, c["targets"], 4), "float32")
    for i in range(b):
        n = rng.integers(c["targets"] // 2, c["targets"] + 1)
        labels[i, :n] = rng.integers(0, c["classes"], size=n)
        boxes[i, :n] = rng.uniform(0.1, 0.5, size=(n, 4))
    return y_pred, {"boxes": boxes, "labels": labels}


def compiled_step(loss):
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(jax.value_and_grad(lambda p, y: loss(y, p)))
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function
        def step(p, y):
            with tf.GradientTape() as tape:
                tape.watch(p)
                value = loss(y, p)
            return value, tape.gradient(value, p)

        return lambda p, y: step({k: tf.constant(v) for k, v in p.items()}, y)
    import torch

    def step(p, y):
        p = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
        value = loss(y, p)
        value.backward()
        return value, {k: v.grad for k, v in p.items()}

    return step


def block(out):
    return [np.asarray(keras.ops.convert_to_numpy(x)) for x in keras.tree.flatten(out)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="train")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    c = CONFIGS[args.config]
    y_pred, y_true = make_problem(c, np.random.default_rng(0))
    real = compiled_step(DETRLoss())
    fixed = compiled_step(DETRLoss(matcher=FixedMatcher()))
    times = benchmark.alternate(
        {"real": lambda: real(y_pred, y_true), "fixed": lambda: fixed(y_pred, y_true)},
        args.repeats,
        warmup=1,
        sync=block,
    )
    matcher = HungarianMatcher()
    outputs = [(y_pred["logits"], y_pred["boxes"])] + [
        (y_pred["aux_logits"][:, i], y_pred["aux_boxes"][:, i]) for i in range(c["layers"] - 1)
    ]
    costs = [
        np.asarray(
            keras.ops.convert_to_numpy(
                matcher.cost_matrix(lg, bx, y_true["boxes"], y_true["labels"])
            )
        )
        for lg, bx in outputs
    ]
    scipy_times = benchmark.alternate(
        {"scipy": lambda: [solve_numpy(cost) for cost in costs]}, args.repeats, warmup=0
    )["scipy"]
    medians = benchmark.medians(times)
    real_ms = medians["real"] * 1e3
    fixed_ms = medians["fixed"] * 1e3
    print(
        f"backend {keras.backend.backend()}, config {args.config} {c}\n"
        f"loss value+grad with Hungarian matching: {real_ms:.2f} ms (median of {args.repeats})\n"
        f"same with a fixed assignment:            {fixed_ms:.2f} ms\n"
        f"matching cost per step:                  {real_ms - fixed_ms:.2f} ms\n"
        f"  of which scipy on the host:            "
        f"{statistics.median(scipy_times) * 1e3:.2f} ms ({c['layers']} outputs x {c['batch']} images)"
    )


if __name__ == "__main__":
    main()
