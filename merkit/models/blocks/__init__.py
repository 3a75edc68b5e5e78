"""Building blocks shared by the models (one place for retention, attention, fusion, ...)."""

from merkit.models.blocks.retention import MultiScaleRetention, RetNetBlock
from merkit.models.blocks.transformer import (
    DropPath,
    FeedForward,
    LearnedPositionEmbedding,
    MultiHeadSelfAttention,
    PatchEmbedding,
    TransformerBlock,
)

__all__ = [
    "DropPath", "FeedForward", "LearnedPositionEmbedding", "MultiHeadSelfAttention", "MultiScaleRetention",
    "PatchEmbedding", "RetNetBlock", "TransformerBlock",
]
