"""How a DETR inference splits between its backbone and its head (JAX).

Builds ``DETR(num_classes=2)`` (ResNet-50, random weights; ``--dc5`` for the dilated last stage)
and times, alternating in one process on one ``--height`` x ``--width`` image: the backbone alone
and the head alone (each through ``jax.jit`` of its ``stateless_call``; the head on the
backbone's feature map, no pixel mask) and the whole model through ``predict_on_batch``. Prints
the medians. Run it once with ``KZOO_KERNELS=off`` as well to see what kzoo's optional
implementations (the backbone's fused convolutions, the query-blocked attention) change.

It also prints how fast the backbone computes: its floating-point operations (XLA's cost
analysis of the compiled backbone) over its median time, next to the rate of a 2048 x 2048
float32 matrix product timed in the same rounds, the most this CPU gives a dense kernel.

Usage: ``KERAS_BACKEND=jax python scripts/profile/detr_parts.py --dc5 [--rounds 5]``
"""

import argparse
import json

import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dc5", action="store_true", help="dilated last stage (DETR-DC5)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    import jax
    import keras

    from kzoo.models import DETR
    from kzoo.utils import benchmark

    if keras.backend.backend() != "jax":
        parser.error("run it with KERAS_BACKEND=jax")
    image = np.random.default_rng(0).normal(size=(1, args.height, args.width, 3))
    image = image.astype("float32")
    model = DETR(num_classes=2, backbone_dilation=args.dc5)
    model.build()
    features = np.asarray(model.backbone(image))

    flops = {}

    def jitted(name, layer, x):
        run = jax.jit(lambda tv, ntv, x: layer.stateless_call(tv, ntv, x)[0])

        def arguments():
            trainable = [v.value for v in layer.trainable_variables]
            non_trainable = [v.value for v in layer.non_trainable_variables]
            return trainable, non_trainable, x

        flops[name] = run.lower(*arguments()).compile().cost_analysis()["flops"]
        return lambda: jax.block_until_ready(run(*arguments()))

    a = np.random.default_rng(1).normal(size=(2048, 2048)).astype("float32")
    matmul = jax.jit(lambda a: a @ a)
    runs = {
        "backbone": jitted("backbone", model.backbone, image),
        "head": jitted("head", model.head, features),
        "whole model": lambda: model.predict_on_batch(image)["logits"],
        "matmul 2048": lambda: jax.block_until_ready(matmul(a)),
    }
    for run in runs.values():  # compile
        run()
    samples = benchmark.alternate(runs, args.rounds, warmup=1)
    medians = benchmark.medians(samples)
    rates = {name: flops[name] / medians[name] / 1e9 for name in flops}
    rates["matmul 2048"] = 2 * 2048**3 / medians["matmul 2048"] / 1e9
    print(
        json.dumps(
            {
                "dc5": args.dc5,
                "feature_map": list(features.shape),
                "medians_s": medians,
                "gflop": {name: value / 1e9 for name, value in flops.items()},
                "gflop_per_s": rates,
            }
        )
    )


if __name__ == "__main__":
    main()
