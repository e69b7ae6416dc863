"""DETR, the detection transformer, by role:

- ``model/``: the network (``DETR``, its ResNet backbone, ``DETRHead``, the transformer, input
  checks, post-processing, COCO's label names, ``DETRDetections`` for export);
- ``training/``: the loss and its matcher, the training-only queries (denoising, query
  groups), the optimizer, ``TrainConfig`` and the engine (``train``), DETR's callbacks, COCO evaluation, fine-tuning a preset;
- ``convert/``: facebookresearch and HuggingFace checkpoints into kzoo presets;
- ``recipe.py``: the recipe's sizes and defaults (800 / 1333, learning rates, ...);
- ``presets.py``: the registered COCO checkpoints.

The command line (``kzoo train|predict|eval|convert detr``) is ``kzoo.cli.detr``.
"""

from kzoo import _command

if not _command.parsing:
    # Skipped only while the kzoo command parses its arguments: its parsers read recipe.py and
    # training/config.py, which need none of this (see kzoo/_command.py).
    # presets registers the COCO presets and hf:// DETR repos.
    from kzoo.models.detr import presets  # noqa: F401
    from kzoo.models.detr.model.backbone import FrozenBatchNormalization, ResNetBackbone
    from kzoo.models.detr.model.detections import DETRDetections
    from kzoo.models.detr.model.detr import DETR
    from kzoo.models.detr.model.head import DETRHead
    from kzoo.models.detr.model.position_embedding import SinePositionEmbedding
    from kzoo.models.detr.model.transformer import (
        DETRAttention,
        DETRTransformer,
        TransformerDecoderLayer,
        TransformerEncoderLayer,
    )
    from kzoo.models.detr.training.config import TrainConfig
    from kzoo.models.detr.training.engine import train
    from kzoo.models.detr.training.loss import DETRLoss
    from kzoo.models.detr.training.matcher import HungarianMatcher
    from kzoo.models.detr.training.optimizer import ScaledAdamW
    from kzoo.models.detr.training.training_queries import DenoisingConfig, DETRTrainingQueries

__all__ = [
    "DETR",
    "DETRAttention",
    "DETRDetections",
    "DETRHead",
    "DETRLoss",
    "DETRTrainingQueries",
    "DETRTransformer",
    "DenoisingConfig",
    "FrozenBatchNormalization",
    "HungarianMatcher",
    "ResNetBackbone",
    "ScaledAdamW",
    "SinePositionEmbedding",
    "TrainConfig",
    "TransformerDecoderLayer",
    "TransformerEncoderLayer",
    "train",
]
