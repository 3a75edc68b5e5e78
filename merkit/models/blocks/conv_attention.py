"""Convolutional-projection attention over video token maps (MADV-Net, paper 002, Sec. 3.2.1).

Kong, You, Lv, "3D Micro-Expression Recognition Based on Adaptive Dynamic Vision", Sensors 25
(2025) 3175. The attention follows the convolutional projection of CvT (Wu et al., ICCV 2021):

* :class:`VideoToTokens` (Eq. 2): ``Out(z') = MaxPool3d(BN(Conv3d(z)))`` turns a video (or the
  token map of the previous stage) ``(B, C, T, H, W)`` into a token map ``(B, D, T', H', W')``.
* :class:`ConvProjection` (Eq. 1): ``z^{q,k,v} = Flatten(Conv2d(Reshape2d(z), s))`` where the
  convolution is depthwise-separable: depthwise ``s x s`` convolution (one filter per channel, no
  bias) -> BatchNorm -> pointwise ``1 x 1`` convolution (``D x D`` weights + bias). The pointwise
  convolution of a flattened map is a linear layer over tokens, and is implemented as one, so the
  class token (which has no place on the map) skips the depthwise part and shares the pointwise
  one, as in CvT. Parameters: ``D s^2`` (depthwise) + ``2D`` (BN) + ``D^2 + D`` (pointwise).
* :class:`ConvAttention`: multi-head ``softmax(Q K^T / sqrt(d)) V`` whose Q, K, V come from three
  :class:`ConvProjection`; K and V may use a spatial stride (CvT's "squeezed" projection, the
  paper's "considering cost savings").
* :class:`ConvTransformerBlock`: pre-norm ``x + Attn(LN x)``, ``x + MLP(LN x)``.
* :class:`ConvTransformerStage`: Eq. 2 embedding, class token and learnable position embedding
  (Eq. 13: ``[f_cls, f_1..f_p] + f_pos``), then a stack of blocks (Eq. 16).

Choice (the paper is silent): Eq. 1 writes a 2D convolution over a "token graph" while the
tokens come from a video. ``projection="2d"`` (default, literal) applies the depthwise ``s x s``
convolution to every time slice of the ``(T', H', W')`` map; ``projection="3d"`` uses an
``s x s x s`` depthwise kernel over time too. Attention itself is always joint over all
space-time tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from merkit.errors import ConfigError, ModelInputError, check_choice
from merkit.models.blocks.transformer import DropPath, FeedForward, LearnedPositionEmbedding

Grid = tuple[int, int, int]
PROJECTIONS = ("2d", "3d")


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _same_padding(kernel: int, stride: int) -> int:
    """Padding giving ``ceil(size / stride)`` outputs (``k // 2`` for stride 1, 0 for ``k = s`` patches)."""
    return max(0, (kernel - stride + 1) // 2)


class VideoToTokens(nn.Module):
    """3D-video-to-tokens (Eq. 2): ``Conv3d -> BatchNorm3d -> MaxPool3d``.

    Args:
        in_channels: ``C`` of the input video or token map.
        embed_dim: ``D``, channels of the output token map.
        kernel: ``(k_t, k_s)`` temporal and spatial kernel of the convolution (padded so that the
            output has ``ceil(size / stride)`` positions when ``k >= s``; ``k = s`` cuts patches).
        stride: ``(s_t, s_s)`` convolution stride.
        pool: ``(p_t, p_s)`` max-pooling kernel = stride (``(1, 1)``: no pooling).

    Shapes: ``(B, C, T, H, W) -> (B, D, T', H', W')`` with ``T', H', W'`` given by
    :meth:`output_grid`.
    """

    def __init__(self, in_channels: int, embed_dim: int, kernel: tuple[int, int] = (3, 3),
                 stride: tuple[int, int] = (1, 1), pool: tuple[int, int] = (1, 1)):
        super().__init__()
        (k_t, k_s), (s_t, s_s), (p_t, p_s) = kernel, stride, pool
        if min(k_t, k_s, s_t, s_s, p_t, p_s) < 1:
            raise ConfigError(f"video-to-tokens: kernel {kernel}, stride {stride} and pool {pool} must be >= 1")
        self.kernel, self.stride, self.pool = (k_t, k_s), (s_t, s_s), (p_t, p_s)
        self.in_channels = in_channels
        self.padding = (_same_padding(k_t, s_t), _same_padding(k_s, s_s))
        self.conv = nn.Conv3d(in_channels, embed_dim, (k_t, k_s, k_s), stride=(s_t, s_s, s_s),
                              padding=(self.padding[0], self.padding[1], self.padding[1]), bias=False)
        self.norm = nn.BatchNorm3d(embed_dim)
        self.max_pool = nn.MaxPool3d((p_t, p_s, p_s)) if (p_t, p_s) != (1, 1) else nn.Identity()

    def output_grid(self, grid: Grid) -> Grid:
        """``(T', H', W')`` of the token map made from an input of size ``grid = (T, H, W)``."""
        (k_t, k_s), (s_t, s_s), (p_t, p_s), (pad_t, pad_s) = self.kernel, self.stride, self.pool, self.padding
        t = _conv_out(grid[0], k_t, s_t, pad_t) // p_t
        h = _conv_out(grid[1], k_s, s_s, pad_s) // p_s
        w = _conv_out(grid[2], k_s, s_s, pad_s) // p_s
        return t, h, w

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.max_pool(self.norm(self.conv(video)))


class ConvProjection(nn.Module):
    """Depthwise-separable convolutional projection of a token map (Eq. 1).

    Args:
        dim: token width ``D``.
        kernel: ``s``, the depthwise kernel size (padding ``s // 2``).
        stride: spatial stride of the depthwise convolution (1 for queries; 2 squeezes K and V).
        projection: ``"2d"`` (per time slice, ``s x s``) or ``"3d"`` (``s x s x s``, temporal
            stride 1).
        bias: bias of the pointwise convolution.

    Shapes: ``forward(token_map (B, D, T, H, W), cls (B, 1, D) | None)`` returns
    ``(B, [1 +] T * H' * W', D)`` with ``H' = ceil(H / stride)``; the class token, when given,
    comes first.
    """

    def __init__(self, dim: int, kernel: int = 3, stride: int = 1, projection: str = "2d", bias: bool = True):
        super().__init__()
        check_choice("convolutional projection", projection, PROJECTIONS)
        if kernel < 1 or kernel % 2 == 0 or stride < 1:
            raise ConfigError(f"convolutional projection: kernel {kernel} must be odd and stride {stride} >= 1 "
                              "(an even kernel would change the number of query tokens)")
        self.projection = projection
        if projection == "2d":
            self.depthwise: nn.Module = nn.Conv2d(dim, dim, kernel, stride=stride, padding=kernel // 2,
                                                  groups=dim, bias=False)
            self.norm: nn.Module = nn.BatchNorm2d(dim)
        else:
            self.depthwise = nn.Conv3d(dim, dim, kernel, stride=(1, stride, stride), padding=kernel // 2,
                                       groups=dim, bias=False)
            self.norm = nn.BatchNorm3d(dim)
        self.pointwise = nn.Linear(dim, dim, bias=bias)

    def forward(self, token_map: torch.Tensor, cls: torch.Tensor | None = None) -> torch.Tensor:
        batch, dim, frames = token_map.shape[:3]
        if self.projection == "2d":
            slices = token_map.transpose(1, 2).flatten(0, 1)  # (B*T, D, H, W)
            projected = self.norm(self.depthwise(slices))
            tokens = projected.unflatten(0, (batch, frames)).flatten(3).permute(0, 1, 3, 2).flatten(1, 2)
        else:
            tokens = self.norm(self.depthwise(token_map)).flatten(2).transpose(1, 2)  # (B, T*H'*W', D)
        if cls is not None:
            tokens = torch.cat([cls, tokens], dim=1)
        return self.pointwise(tokens)


class ConvAttention(nn.Module):
    """Multi-head self-attention with convolutional Q/K/V projections.

    Args:
        dim: token width ``D`` (divisible by ``num_heads``).
        num_heads: attention heads.
        kernel: ``s`` of the depthwise projections.
        kv_stride: spatial stride of the key and value projections.
        projection: ``"2d"`` or ``"3d"`` (see :class:`ConvProjection`).
        qkv_bias: bias of the pointwise projections.
        attention_dropout: dropout on the attention weights (training only).

    Shapes: ``forward(tokens (B, 1 + N, D), grid (T, H, W))`` with ``N = T H W`` and the class
    token first; returns ``(B, 1 + N, D)``.
    """

    def __init__(self, dim: int, num_heads: int, kernel: int = 3, kv_stride: int = 1, projection: str = "2d",
                 qkv_bias: bool = True, attention_dropout: float = 0.0):
        super().__init__()
        if dim % num_heads != 0:
            raise ConfigError(f"convolutional attention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.query = ConvProjection(dim, kernel, 1, projection, qkv_bias)
        self.key = ConvProjection(dim, kernel, kv_stride, projection, qkv_bias)
        self.value = ConvProjection(dim, kernel, kv_stride, projection, qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attention_dropout = attention_dropout

    def forward(self, tokens: torch.Tensor, grid: Grid) -> torch.Tensor:
        batch, length, dim = tokens.shape
        cls, patches = tokens[:, :1], tokens[:, 1:]
        token_map = patches.transpose(1, 2).reshape(batch, dim, *grid)

        def heads(x: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, heads, L, d)
            return x.unflatten(2, (self.num_heads, dim // self.num_heads)).transpose(1, 2)

        q = heads(self.query(token_map, cls))
        k = heads(self.key(token_map, cls))
        v = heads(self.value(token_map, cls))
        dropout = self.attention_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class ConvTransformerBlock(nn.Module):
    """Pre-norm block ``x + Attn(LN x)``, ``x + MLP(LN x)`` with convolutional-projection attention.

    Shapes: ``forward(tokens (B, 1 + N, D), grid (T, H, W)) -> (B, 1 + N, D)``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, kernel: int = 3, kv_stride: int = 1,
                 projection: str = "2d", qkv_bias: bool = True, dropout: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attention = ConvAttention(dim, num_heads, kernel, kv_stride, projection, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = FeedForward(dim, int(dim * mlp_ratio), dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, tokens: torch.Tensor, grid: Grid) -> torch.Tensor:
        tokens = tokens + self.drop_path(self.attention(self.norm1(tokens), grid))
        return tokens + self.drop_path(self.mlp(self.norm2(tokens)))


class ConvTransformerStage(nn.Module):
    """One level of the MADV-Transformer: Eq. 2 embedding, Eq. 13 tokens, Eq. 16 blocks.

    Args:
        in_channels: channels of the input video / previous token map.
        dim: token width ``D`` of this stage.
        input_grid: ``(T, H, W)`` of the input (fixes the position embedding's length).
        depth: number of blocks.
        num_heads: attention heads.
        embed_kernel, embed_stride, embed_pool: ``(temporal, spatial)`` settings of
            :class:`VideoToTokens`.
        drop_path: per-block stochastic-depth probabilities (``depth`` values) or one value.
        **block_options: ``mlp_ratio``, ``kernel``, ``kv_stride``, ``projection``, ``qkv_bias``,
            ``dropout`` of :class:`ConvTransformerBlock`.

    Shapes: ``forward(x (B, C, T, H, W))`` returns ``(cls (B, D), token_map (B, D, T', H', W'),
    embedded (B, D, T', H', W'))``: the class token after the last block (layer-normalised), the
    patch tokens after the last block as a map, and the Eq. 2 embedding before the blocks.

    Raises:
        ConfigError: the embedding leaves an empty token map.
    """

    def __init__(self, in_channels: int, dim: int, input_grid: Grid, depth: int, num_heads: int,
                 embed_kernel: tuple[int, int] = (3, 3), embed_stride: tuple[int, int] = (1, 1),
                 embed_pool: tuple[int, int] = (1, 1), drop_path: float | Sequence[float] = 0.0, **block_options):
        super().__init__()
        self.embed = VideoToTokens(in_channels, dim, embed_kernel, embed_stride, embed_pool)
        self.input_grid = tuple(input_grid)
        self.grid = self.embed.output_grid(self.input_grid)
        if min(self.grid) < 1:
            raise ConfigError(f"video-to-tokens (kernel {embed_kernel}, stride {embed_stride}, pool {embed_pool}) "
                              f"maps an input of T x H x W = {input_grid} to an empty token map {self.grid}; "
                              "use more frames, a larger image or less pooling")
        rates = [float(drop_path)] * depth if isinstance(drop_path, (int, float)) else list(drop_path)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = LearnedPositionEmbedding(1 + self.num_tokens, dim)
        self.blocks = nn.ModuleList(ConvTransformerBlock(dim, num_heads, drop_path=rates[i], **block_options)
                                    for i in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def num_tokens(self) -> int:
        """Patch tokens ``T' H' W'`` (without the class token)."""
        t, h, w = self.grid
        return t * h * w

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if tuple(x.shape[2:]) != self.input_grid or x.shape[1] != self.embed.in_channels:
            raise ModelInputError(f"transformer stage expects (B, {self.embed.in_channels}, {', '.join(map(str, self.input_grid))}), "
                                  f"got {tuple(x.shape)}")
        embedded = self.embed(x)
        batch, dim = embedded.shape[:2]
        tokens = torch.cat([self.cls_token.expand(batch, -1, -1), embedded.flatten(2).transpose(1, 2)], dim=1)
        tokens = self.position(tokens)
        for block in self.blocks:
            tokens = block(tokens, self.grid)
        token_map = tokens[:, 1:].transpose(1, 2).reshape(batch, dim, *self.grid)
        return self.norm(tokens[:, 0]), token_map, embedded
