"""DETR: the detection transformer, its backbone, transformer, heads and post-processing."""

from kzoo.models.detr import presets  # noqa: F401  (registers the COCO presets and hf:// DETR repos)
from kzoo.models.detr.model.backbone import FrozenBatchNormalization, ResNetBackbone
from kzoo.models.detr.model.detr import DETR
from kzoo.models.detr.model.head import DETRHead
from kzoo.models.detr.model.position_embedding import SinePositionEmbedding
from kzoo.models.detr.model.transformer import (
    DETRAttention,
    DETRTransformer,
    TransformerDecoderLayer,
    TransformerEncoderLayer,
)
from kzoo.models.detr.training.loss import DETRLoss
from kzoo.models.detr.training.matcher import HungarianMatcher
from kzoo.models.detr.training.optimizer import ScaledAdamW

__all__ = [
    "DETR",
    "DETRAttention",
    "DETRHead",
    "DETRLoss",
    "DETRTransformer",
    "FrozenBatchNormalization",
    "HungarianMatcher",
    "ResNetBackbone",
    "ScaledAdamW",
    "SinePositionEmbedding",
    "TransformerDecoderLayer",
    "TransformerEncoderLayer",
]
