"""Building blocks shared by the models (one place for retention, attention, fusion, ...)."""

from merkit.models.blocks.retention import ManhattanSelfAttention, MultiScaleRetention, RetNetBlock, RMTBlock
from merkit.models.blocks.transformer import (
    DropPath,
    FeedForward,
    LearnedPositionEmbedding,
    MultiHeadSelfAttention,
    PatchEmbedding,
    TransformerBlock,
)

__all__ = [
    "DropPath", "FeedForward", "LearnedPositionEmbedding", "ManhattanSelfAttention", "MultiHeadSelfAttention",
    "MultiScaleRetention", "PatchEmbedding", "RetNetBlock", "RMTBlock", "TransformerBlock",
]
