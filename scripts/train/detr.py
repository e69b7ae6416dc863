"""Train a small DETR on synthetic shapes with model.fit and report held-out COCO AP.

The same as ``kzoo train detr``: its flags become a ``kzoo.models.detr.TrainConfig`` and
``kzoo.models.detr.train(config)`` runs (``kzoo.models.detr.training.engine`` describes the run
directory). Example (the figures in docs/benchmarks-history.md):

    KERAS_BACKEND=jax python scripts/train/detr.py --out runs/detr --time-limit 30
"""

import sys

from kzoo.cli.detr.train import main

if __name__ == "__main__":
    sys.exit(main())
