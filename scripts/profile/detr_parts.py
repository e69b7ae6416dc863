"""How a DETR inference splits between its backbone and its head (JAX).

Builds ``DETR(num_classes=2)`` (ResNet-50, random weights; ``--dc5`` for the dilated last stage)
and times, alternating in one process on one ``--height`` x ``--width`` image: the backbone alone
and the head alone (each through ``jax.jit`` of its ``stateless_call``; the head on the
backbone's feature map, no pixel mask) and the whole model through ``predict_on_batch``. Prints
the medians. Run it once with ``KZOO_KERNELS=off`` as well to see what kzoo's optional
implementations (the backbone's fused convolutions, the query-blocked attention) change.

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

    def jitted(layer, x):
        run = jax.jit(lambda tv, ntv, x: layer.stateless_call(tv, ntv, x)[0])

        def call():
            trainable = [v.value for v in layer.trainable_variables]
            non_trainable = [v.value for v in layer.non_trainable_variables]
            return jax.block_until_ready(run(trainable, non_trainable, x))

        return call

    runs = {
        "backbone": jitted(model.backbone, image),
        "head": jitted(model.head, features),
        "whole model": lambda: model.predict_on_batch(image)["logits"],
    }
    for run in runs.values():  # compile
        run()
    samples = benchmark.alternate(runs, args.rounds, warmup=1)
    medians = benchmark.medians(samples)
    print(json.dumps({"dc5": args.dc5, "feature_map": list(features.shape), "medians_s": medians}))


if __name__ == "__main__":
    main()
