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
``s x s x s`` depthwise kernel over time too.

The three attentions of the paper's conclusion ("mixed attention, factorial self-attention, and
dot product self-attention based on AU coding ... in the depth space dimension, time dimension,
and face AU dimension, respectively") and Sec. 3.2.3's dropping of low-attention blocks:

* **Which tokens attend to which** (``grouping`` of :class:`ConvAttention`): ``joint`` (every
  space-time token, CvT), ``frame`` (the tokens of one time step: spatial attention) or
  ``position`` (the tokens of one spatial position over time: temporal attention). A block with
  ``attention="factorised"`` runs a ``frame`` then a ``position`` attention, each with its own
  residual, as ViViT's factorised encoder block ("factorial self-attention", time dimension);
  its temporal attention uses unsqueezed keys (``kv_stride`` 1) so every position keeps its own.
  The class token always attends to every token (it summarises the clip), and every token may
  attend to the class token.
* **Mixed attention** (depth + space): a stage may carry several *streams* (texture and depth)
  on the same token grid. Each stream has its own Eq. 2 embedding and position embedding, the
  projections run per stream, and attention runs over the tokens of all streams together, so a
  texture token attends to the depth tokens of the same frame (``frame``) or clip (``joint``).
* **Dropping low-attention blocks** (``keep_ratio`` < 1): in every ``joint`` or ``frame``
  attention the class token's attention to the key blocks (softmax over all keys, averaged over
  heads: "the attention weight of each image block is learned by using this category label")
  ranks them; only the ``ceil(keep_ratio * keys)`` highest stay visible to the queries of that
  attention, the rest are discarded from it (masked; the map keeps its shape, because the next
  depthwise projection needs every position). Applied in training and evaluation alike, so the
  test-time attention reads what training taught it to read. ``position`` attention keeps all
  keys (a position's own history).
* The AU-based dot-product attention lives in :mod:`merkit.models.madv_net` (it joins the AU
  stream to the video tokens).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from merkit.errors import ConfigError, ModelInputError, check_choice
from merkit.models.blocks.transformer import DropPath, FeedForward, LearnedPositionEmbedding

Grid = tuple[int, int, int]
PROJECTIONS = ("2d", "3d")
GROUPINGS = ("joint", "frame", "position")
ATTENTIONS = ("joint", "factorised")


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
        kv_stride: spatial stride of the key and value projections (must be 1 for ``position``).
        projection: ``"2d"`` or ``"3d"`` (see :class:`ConvProjection`).
        qkv_bias: bias of the pointwise projections.
        attention_dropout: dropout on the attention weights (training only).
        grouping: ``"joint"``, ``"frame"`` or ``"position"`` (see the module docstring).
        keep_ratio: fraction of the key blocks kept visible, ranked by the class token's
            attention (1: no dropping; not with ``position``).

    Shapes: ``forward(tokens (B, 1 + S N, D), grid (T, H, W), streams=S)`` with ``N = T H W``,
    the class token first and then the ``N`` tokens of each stream in ``(t, h, w)`` order;
    returns ``(B, 1 + S N, D)``. After a forward with ``keep_ratio`` < 1, :attr:`last_kept`
    holds the ``(B, S N_k)`` boolean mask of the key blocks that stayed visible.
    """

    def __init__(self, dim: int, num_heads: int, kernel: int = 3, kv_stride: int = 1, projection: str = "2d",
                 qkv_bias: bool = True, attention_dropout: float = 0.0, grouping: str = "joint", keep_ratio: float = 1.0):
        super().__init__()
        if dim % num_heads != 0:
            raise ConfigError(f"convolutional attention: dim {dim} is not divisible by num_heads {num_heads}")
        check_choice("convolutional attention: grouping", grouping, GROUPINGS)
        if not 0.0 < keep_ratio <= 1.0:
            raise ConfigError(f"convolutional attention: keep_ratio must be in (0, 1], got {keep_ratio}")
        if grouping == "position" and (kv_stride != 1 or keep_ratio != 1.0):
            raise ConfigError("temporal ('position') attention needs kv_stride 1 and keeps every key (keep_ratio 1)")
        self.num_heads = num_heads
        self.grouping = grouping
        self.keep_ratio = float(keep_ratio)
        self.query = ConvProjection(dim, kernel, 1, projection, qkv_bias)
        self.key = ConvProjection(dim, kernel, kv_stride, projection, qkv_bias)
        self.value = ConvProjection(dim, kernel, kv_stride, projection, qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attention_dropout = attention_dropout
        self.last_kept: torch.Tensor | None = None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (G, L, D) -> (G, heads, L, d)
        return x.unflatten(2, (self.num_heads, x.shape[-1] // self.num_heads)).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:  # (G, heads, L, d) -> (G, L, D)
        return x.transpose(1, 2).flatten(2)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor | None) -> torch.Tensor:
        """``(G, L, D)`` queries over ``(G, L_k, D)`` keys/values; ``visible`` ``(G, L_k)`` or None."""
        mask = None if visible is None else visible[:, None, None, :]
        dropout = self.attention_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v), attn_mask=mask,
                                             dropout_p=dropout)
        return self._merge(out)

    def class_attention(self, q_cls: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """The class token's attention to every patch key, averaged over heads.

        Args:
            q_cls: ``(B, 1, D)`` class-token query; keys: ``(B, 1 + M, D)`` keys, class token first.

        Returns:
            ``(B, M)`` weights of the patch keys (the class key's share left out).
        """
        scale = (q_cls.shape[-1] // self.num_heads) ** -0.5
        scores = (self._heads(q_cls) @ self._heads(keys).transpose(-2, -1)) * scale  # (B, heads, 1, 1 + M)
        return torch.softmax(scores.float(), dim=-1).mean(dim=1)[:, 0, 1:]

    def forward(self, tokens: torch.Tensor, grid: Grid, streams: int = 1) -> torch.Tensor:
        batch, length, dim = tokens.shape
        t, h, w = grid
        cls, patches = tokens[:, :1], tokens[:, 1:]
        token_maps = patches.reshape(batch * streams, t, h, w, dim).permute(0, 4, 1, 2, 3)  # (B S, D, T, H, W)
        q_p, k_p, v_p = (projection(token_maps) for projection in (self.query, self.key, self.value))
        q_c, k_c, v_c = (projection.pointwise(cls) for projection in (self.query, self.key, self.value))
        n_q, n_k = q_p.shape[1], k_p.shape[1]
        per_frame_k = n_k // t
        # (B S, N, D) -> (B, S N, D) in stream order
        q_p, k_p, v_p = (x.reshape(batch, streams * x.shape[1], dim) for x in (q_p, k_p, v_p))
        keys, values = torch.cat([k_c, k_p], dim=1), torch.cat([v_c, v_p], dim=1)

        visible = None
        if self.keep_ratio < 1.0:
            weights = self.class_attention(q_c, keys)  # (B, S N_k)
            keep = max(1, math.ceil(self.keep_ratio * weights.shape[1]))
            kept = torch.zeros_like(weights, dtype=torch.bool).scatter_(1, weights.topk(keep, dim=1).indices, True)
            self.last_kept = kept.detach()
            visible = torch.cat([kept.new_ones(batch, 1), kept], dim=1)
        cls_out = self._attend(q_c, keys, values, visible)  # the class token reads every (kept) block

        if self.grouping == "joint":
            patch_out = self._attend(q_p, keys, values, visible)
        else:
            if self.grouping == "frame":  # groups (b, t): the S streams' tokens of one time step
                def group(x: torch.Tensor, per_frame: int) -> torch.Tensor:
                    x = x.reshape(batch, streams, t, per_frame, -1).transpose(1, 2)  # (B, T, S, n, ...)
                    return x.reshape(batch * t, streams * per_frame, x.shape[-1])

                def ungroup(x: torch.Tensor) -> torch.Tensor:
                    x = x.reshape(batch, t, streams, h * w, dim).transpose(1, 2)
                    return x.reshape(batch, streams * n_q, dim)

                size_q, size_k, groups = h * w, per_frame_k, t
            else:  # "position", groups (b, s, h, w): one position over time
                def group(x: torch.Tensor, per_frame: int) -> torch.Tensor:
                    x = x.reshape(batch * streams, t, per_frame, -1).transpose(1, 2)  # (B S, n, T, ...)
                    return x.reshape(batch * streams * per_frame, t, x.shape[-1])

                def ungroup(x: torch.Tensor) -> torch.Tensor:
                    x = x.reshape(batch * streams, h * w, t, dim).transpose(1, 2)
                    return x.reshape(batch, streams * n_q, dim)

                size_q, size_k, groups = h * w, per_frame_k, streams * h * w
            q_g, k_g, v_g = group(q_p, size_q), group(k_p, size_k), group(v_p, size_k)
            k_g = torch.cat([k_c.repeat_interleave(groups, dim=0), k_g], dim=1)
            v_g = torch.cat([v_c.repeat_interleave(groups, dim=0), v_g], dim=1)
            visible_g = None
            if visible is not None:  # only "frame" attention drops blocks
                kept_g = group(visible[:, 1:, None], size_k)[..., 0]
                visible_g = torch.cat([kept_g.new_ones(kept_g.shape[0], 1), kept_g], dim=1)
            patch_out = ungroup(self._attend(q_g, k_g, v_g, visible_g))
        return self.proj(torch.cat([cls_out, patch_out], dim=1))


class ConvTransformerBlock(nn.Module):
    """Pre-norm block ``x + Attn(LN x)``, ``x + MLP(LN x)`` with convolutional-projection attention.

    ``attention="joint"``: one attention over all space-time tokens. ``"factorised"``: a spatial
    (``frame``) attention, then a temporal (``position``, unsqueezed keys) attention, each with
    its own pre-norm residual, then the MLP. ``keep_ratio`` drops low-attention key blocks in
    the joint or spatial attention (see the module docstring).

    Shapes: ``forward(tokens (B, 1 + S N, D), grid (T, H, W), streams=S) -> (B, 1 + S N, D)``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, kernel: int = 3, kv_stride: int = 1,
                 projection: str = "2d", qkv_bias: bool = True, dropout: float = 0.0, drop_path: float = 0.0,
                 attention: str = "joint", keep_ratio: float = 1.0):
        super().__init__()
        check_choice("transformer block: attention", attention, ATTENTIONS)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        grouping = "joint" if attention == "joint" else "frame"
        self.attention = ConvAttention(dim, num_heads, kernel, kv_stride, projection, qkv_bias, grouping=grouping,
                                       keep_ratio=keep_ratio)
        if attention == "factorised":
            self.temporal_norm = nn.LayerNorm(dim, eps=1e-6)
            self.temporal_attention = ConvAttention(dim, num_heads, kernel, 1, projection, qkv_bias, grouping="position")
        else:
            self.temporal_norm, self.temporal_attention = None, None
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = FeedForward(dim, int(dim * mlp_ratio), dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, tokens: torch.Tensor, grid: Grid, streams: int = 1) -> torch.Tensor:
        tokens = tokens + self.drop_path(self.attention(self.norm1(tokens), grid, streams))
        if self.temporal_attention is not None:
            tokens = tokens + self.drop_path(self.temporal_attention(self.temporal_norm(tokens), grid, streams))
        return tokens + self.drop_path(self.mlp(self.norm2(tokens)))


class ConvTransformerStage(nn.Module):
    """One level of the MADV-Transformer: Eq. 2 embedding, Eq. 13 tokens, Eq. 16 blocks.

    Args:
        in_channels: channels of the input video / previous token map; a sequence gives one
            stream per entry (mixed attention: texture and depth), each with its own embedding.
        dim: token width ``D`` of this stage.
        input_grid: ``(T, H, W)`` of the input (fixes the position embedding's length).
        depth: number of blocks.
        num_heads: attention heads.
        embed_kernel, embed_stride, embed_pool: ``(temporal, spatial)`` settings of
            :class:`VideoToTokens`.
        drop_path: per-block stochastic-depth probabilities (``depth`` values) or one value.
        **block_options: ``mlp_ratio``, ``kernel``, ``kv_stride``, ``projection``, ``qkv_bias``,
            ``dropout``, ``attention``, ``keep_ratio`` of :class:`ConvTransformerBlock`.

    Shapes: ``forward(x (B, sum(C_s), T, H, W))`` (the streams stacked along channels) returns
    ``(cls (B, D), token_map (B, S D, T', H', W'), embedded (B, S D, T', H', W'))``: the class
    token after the last block (layer-normalised, one for all streams), the patch tokens after
    the last block as maps and the Eq. 2 embeddings before the blocks, streams stacked along
    channels.

    Raises:
        ConfigError: the embedding leaves an empty token map.
    """

    def __init__(self, in_channels: int | Sequence[int], dim: int, input_grid: Grid, depth: int, num_heads: int,
                 embed_kernel: tuple[int, int] = (3, 3), embed_stride: tuple[int, int] = (1, 1),
                 embed_pool: tuple[int, int] = (1, 1), drop_path: float | Sequence[float] = 0.0, **block_options):
        super().__init__()
        channels = [in_channels] if isinstance(in_channels, int) else [int(c) for c in in_channels]
        self.stream_channels = channels
        self.embed = VideoToTokens(channels[0], dim, embed_kernel, embed_stride, embed_pool)
        self.stream_embeds = nn.ModuleList(VideoToTokens(c, dim, embed_kernel, embed_stride, embed_pool)
                                           for c in channels[1:])
        self.input_grid = tuple(input_grid)
        self.grid = self.embed.output_grid(self.input_grid)
        if min(self.grid) < 1:
            raise ConfigError(f"video-to-tokens (kernel {embed_kernel}, stride {embed_stride}, pool {embed_pool}) "
                              f"maps an input of T x H x W = {input_grid} to an empty token map {self.grid}; "
                              "use more frames, a larger image or less pooling")
        rates = [float(drop_path)] * depth if isinstance(drop_path, (int, float)) else list(drop_path)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = LearnedPositionEmbedding(1 + self.streams * self.num_tokens, dim)
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
        """Patch tokens ``T' H' W'`` of one stream (without the class token)."""
        t, h, w = self.grid
        return t * h * w

    @property
    def streams(self) -> int:
        """``S``, the token streams sharing this stage (1, or 2 for mixed texture + depth)."""
        return len(self.stream_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        channels = sum(self.stream_channels)
        if tuple(x.shape[2:]) != self.input_grid or x.shape[1] != channels:
            raise ModelInputError(f"transformer stage expects (B, {channels}, {', '.join(map(str, self.input_grid))}), "
                                  f"got {tuple(x.shape)}")
        inputs = torch.split(x, self.stream_channels, dim=1)
        embedded = [embed(part) for embed, part in zip([self.embed, *self.stream_embeds], inputs)]
        batch, dim = embedded[0].shape[:2]
        patches = [e.flatten(2).transpose(1, 2) for e in embedded]
        tokens = torch.cat([self.cls_token.expand(batch, -1, -1), *patches], dim=1)
        tokens = self.position(tokens)
        for block in self.blocks:
            tokens = block(tokens, self.grid, self.streams)
        maps = tokens[:, 1:].reshape(batch, self.streams, self.num_tokens, dim)
        token_map = maps.permute(0, 1, 3, 2).reshape(batch, self.streams * dim, *self.grid)
        return self.norm(tokens[:, 0]), token_map, torch.cat(embedded, dim=1)
