"""DETR: the detection transformer, its backbone, transformer, heads and post-processing."""

from kzoo.layers.detr_head import DETRHead
from kzoo.models.detr import presets  # noqa: F401  (registers the COCO presets and hf:// DETR repos)
from kzoo.models.detr.backbone import FrozenBatchNormalization, ResNetBackbone
from kzoo.models.detr.detr_loss import DETRLoss
from kzoo.models.detr.detr_model import DETR
from kzoo.models.detr.matcher import HungarianMatcher
from kzoo.models.detr.optimizer import ScaledAdamW
from kzoo.models.detr.position_embedding import SinePositionEmbedding
from kzoo.models.detr.transformer import (
    DETRAttention,
    DETRTransformer,
    TransformerDecoderLayer,
    TransformerEncoderLayer,
)

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
