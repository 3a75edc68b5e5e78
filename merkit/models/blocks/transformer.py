"""Vision-Transformer building blocks (Dosovitskiy et al., ICLR 2021), reusable by every model.

* :class:`PatchEmbedding`: a ``P x P`` convolution with stride ``P`` that cuts an image
  ``(B, C, H, W)`` into ``(H/P) * (W/P)`` tokens ``(B, N, D)`` (row-major order);
* :class:`LearnedPositionEmbedding`: a learnable ``(1, N, D)`` tensor added to the tokens;
* :class:`TransformerBlock`: pre-norm block ``x + MHSA(LN(x))`` then ``x + MLP(LN(x))``;
* :class:`FeedForward` (Linear - GELU - Linear) and :class:`DropPath` (stochastic depth), also
  used by the RetNet block of :mod:`merkit.models.blocks.retention`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from merkit.errors import ConfigError, ModelInputError


class DropPath(nn.Module):
    """Stochastic depth: drops a whole residual branch per sample with probability ``drop_prob``.

    Surviving samples are scaled by ``1 / (1 - drop_prob)``; identity in eval mode.
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ConfigError(f"drop path probability must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, ...)`` -> same shape."""
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class FeedForward(nn.Module):
    """Token-wise MLP ``Linear(D, hidden) - GELU - Linear(hidden, D)``: ``(B, N, D) -> (B, N, D)``."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(x)))))


class MultiHeadSelfAttention(nn.Module):
    """Softmax self-attention ``softmax(Q K^T / sqrt(d)) V`` over ``num_heads`` heads.

    ``(B, N, D) -> (B, N, D)``. Each head is ``d = head_dim`` wide; without ``head_dim``,
    ``d = D / num_heads`` and ``D`` must be divisible by ``num_heads``. With ``head_dim`` the
    heads together are ``num_heads * d`` wide (HTNet: ``D = 256``, 3 heads of 85) and the output
    projection maps that width back to ``D``.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attention_dropout: float = 0.0,
                 head_dim: int | None = None):
        super().__init__()
        if head_dim is None:
            if dim % num_heads != 0:
                raise ConfigError(f"attention: dim {dim} is not divisible by num_heads {num_heads}")
            head_dim = dim // num_heads
        if head_dim < 1:
            raise ConfigError(f"attention: head width must be at least 1, got {head_dim} (dim {dim}, {num_heads} heads)")
        self.num_heads = num_heads
        self.head_dim = head_dim
        inner = num_heads * head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim)
        self.attention_dropout = attention_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, N, d)
        dropout = self.attention_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)  # (B, heads, N, d)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, self.num_heads * self.head_dim))


class TransformerBlock(nn.Module):
    """Pre-norm ViT block: ``x = x + MHSA(LN(x)); x = x + MLP(LN(x))``, ``(B, N, D) -> (B, N, D)``.

    Args:
        dim: token width ``D``.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width is ``mlp_ratio * D``.
        qkv_bias: bias on the query/key/value projection.
        drop_path: stochastic-depth probability of both residual branches.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attention = MultiHeadSelfAttention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = FeedForward(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)
        self.apply(_vit_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attention(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbedding(nn.Module):
    """Non-overlapping ``P x P`` patches projected to ``D`` channels (ViT Eq. 6-7 of TSFmicro).

    ``(B, C, H, W) -> (B, N, D)`` with ``N = (H / P) * (W / P)`` tokens in row-major order.

    Args:
        in_channels: ``C``.
        embed_dim: ``D``.
        patch_size: ``P``.
        image_size: ``(H, W)``, both divisible by ``P``.

    Raises:
        ConfigError: ``image_size`` not divisible by ``patch_size``.
    """

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int, image_size: tuple[int, int]):
        super().__init__()
        height, width = image_size
        if height % patch_size or width % patch_size:
            raise ConfigError(f"patch embedding: image size {image_size} is not divisible by patch size {patch_size}")
        self.image_size = (height, width)
        self.grid = (height // patch_size, width // patch_size)
        self.in_channels = in_channels
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != (self.in_channels, *self.image_size):
            raise ModelInputError(
                f"patch embedding expects (B, {self.in_channels}, {self.image_size[0]}, {self.image_size[1]}), "
                f"got {tuple(x.shape)}")
        return self.proj(x).flatten(2).transpose(1, 2)


class LearnedPositionEmbedding(nn.Module):
    """A learnable position tensor added to ``N`` tokens (TSFmicro Eq. 8): ``(B, N, D) -> (B, N, D)``."""

    def __init__(self, num_tokens: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, num_tokens, dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight


def _vit_init(module: nn.Module) -> None:
    """ViT initialisation: truncated-normal (std 0.02) linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
