"""HTNet: a hierarchical transformer over four facial regions of the onset->apex optical flow.

Wang, Zhang, Luo and Sankaranarayana, "HTNet for micro-expression recognition",
Neurocomputing 602 (2024) 128196 (arXiv 2307.14637). The best published result on the
MEGC2019 composite (UF1 .8603, UAR .8475), with the epoch of each LOSO fold chosen by its
accuracy on the test subject; merkit evaluates the model after the last epoch of the fixed
budget (or a validation split of the training subjects), never the test subject.

Input: the ``flow_regions`` view (B, 3, 28, 28): the onset->apex flow (u, v, optical strain)
cut into four 14 x 14 areas around the eyes and mouth corners of the apex face, arranged 2 x 2
(:mod:`merkit.preprocess.regions`; built from the released MEGC2019 flow image and apex crop,
or from the clip's frames).

Architecture, with T hierarchies numbered l = T-1 (finest) ... 0 and base width D:

1. Patch embedding: non-overlapping P x P patches (P = 7) projected to D channels, giving a
   (H/P) x (W/P) token map (4 x 4 at 28 px).
2. Hierarchy l works at width D * 2^(T-1-l) with heads * 2^(T-1-l) heads. Its token map is cut
   into 2^l x 2^l blocks; a learned positional embedding is added and ``block_repeats`` pre-norm
   transformer blocks (``x + MSA(LN(x))``, then ``x + MLP(LN(x))``) run on each block's tokens
   on their own, with one set of weights for all blocks (local self-attention).
3. Block aggregation between hierarchies (:class:`BlockAggregation`): 3 x 3 convolution to the
   next width, layer norm over channels, 3 x 3 max pooling with stride 2 (the map halves, so
   four neighbouring blocks become one); the last hierarchy has none.
4. Head: layer norm, global average pooling, linear classifier.

Choices where the paper leaves room (settled by reading the authors' release):

* Head width is ``width // heads`` (85 at 256 / 3), so the heads are jointly 255 wide and the
  output projection maps 255 -> 256; queries, keys and values have no bias.
* The positional embedding is one learned scalar per token position of a block (initialised
  N(0, 1)), shared by all channels and added once before each hierarchy's blocks.
* Layer norms normalise over channels (eps 1e-5); the MLP is 4x wide with GELU; no dropout;
  PyTorch's default initialisation; the last hierarchy's blocks are ``block_repeats[-1]``
  (the paper's (2, 2, 10): 2 at the finest level, 10 at the coarsest).
* The release feeds the flow image's bytes (0..255) and merkit's flow views are in [0, 1]
  (the released image / 255); ``input_scale`` multiplies the input (255 reproduces the
  release's scale). Its channel order is BGR (strain, v, u), which the linear patch
  embedding absorbs.

What the paper setting implies (stated, not changed): at 28 px, patch 7 and three hierarchies
every block holds ONE token at every level (4 x 4 tokens in 4 x 4 blocks, then 2 x 2 in 2 x 2,
then 1 x 1), so each self-attention attends to a single token (weight 1: the output is the
projected value) and the transformer layers act as per-position MLPs; positions mix only in the
aggregation convolutions. A channel-shared positional scalar is removed by every layer norm
that reads it, so the last hierarchy's embedding never receives a gradient. Larger inputs or
smaller patches give blocks of several tokens, where attention is local as the paper describes.
At the paper's widths (D = 256, blocks (2, 2, 10)) the model has about 140 M parameters, 10 of
its 14 transformer blocks at width 1024.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from merkit.errors import ConfigError, ModelInputError
from merkit.models.base import MERModel
from merkit.models.blocks import FeedForward, MultiHeadSelfAttention, PatchEmbedding
from merkit.models.registry import register
from merkit.views import ViewSpec


def split_blocks(x: torch.Tensor, per_side: int) -> torch.Tensor:
    """Cut a token map into ``per_side x per_side`` blocks of tokens.

    ``(B, H, W, D) -> (B * per_side**2, (H / per_side) * (W / per_side), D)``: blocks in
    row-major order per sample, tokens in row-major order inside a block.
    """
    batch, height, width, dim = x.shape
    block_h, block_w = height // per_side, width // per_side
    x = x.reshape(batch, per_side, block_h, per_side, block_w, dim).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(batch * per_side * per_side, block_h * block_w, dim)


def merge_blocks(tokens: torch.Tensor, per_side: int, size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`split_blocks`: ``(B * per_side**2, h * w, D) -> (B, H, W, D)`` with
    ``size = (H, W)``."""
    height, width = size
    block_h, block_w = height // per_side, width // per_side
    dim = tokens.shape[-1]
    x = tokens.reshape(-1, per_side, per_side, block_h, block_w, dim).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, height, width, dim)


class LocalTransformerBlock(nn.Module):
    """Pre-norm block ``x + MSA(LN(x))``, then ``x + MLP(LN(x))``: ``(N, S, D) -> (N, S, D)``.

    Args:
        dim: D. heads: attention heads, each ``dim // heads`` wide. mlp_mult: MLP hidden width
        ``mlp_mult * D``. dropout: on the attention weights, the attention output and the MLP.
    """

    def __init__(self, dim: int, heads: int, mlp_mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attention = MultiHeadSelfAttention(dim, heads, qkv_bias=False, attention_dropout=dropout,
                                                head_dim=dim // heads)
        self.dropout = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = FeedForward(dim, dim * mlp_mult, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.norm1(x)))
        return x + self.mlp(self.norm2(x))


class LocalTransformer(nn.Module):
    """One hierarchy's transformer layer: positional embedding, then ``depth`` blocks, applied
    to every block of tokens on its own.

    Input and output: ``(B, H, W, D)`` token maps; the map is cut into ``per_side x per_side``
    blocks of ``tokens_per_block`` tokens (:func:`split_blocks`).
    """

    def __init__(self, dim: int, heads: int, depth: int, per_side: int, tokens_per_block: int, mlp_mult: int = 4,
                 dropout: float = 0.0):
        super().__init__()
        self.per_side = per_side
        self.position = nn.Parameter(torch.randn(tokens_per_block))  # one scalar per position, shared by channels
        self.blocks = nn.ModuleList(LocalTransformerBlock(dim, heads, mlp_mult, dropout) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[1], x.shape[2])
        tokens = split_blocks(x, self.per_side) + self.position[None, :, None]
        for block in self.blocks:
            tokens = block(tokens)
        return merge_blocks(tokens, self.per_side, size)


class BlockAggregation(nn.Module):
    """3 x 3 convolution, layer norm over channels, 3 x 3 max pooling with stride 2 (padding 1).

    ``(B, H, W, D_in) -> (B, ceil(H / 2), ceil(W / 2), D_out)``: every 2 x 2 group of blocks of
    the finer hierarchy becomes one block of the next.
    """

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.conv = nn.Conv2d(dim_in, dim_out, kernel_size=3, padding=1)
        self.norm = nn.LayerNorm(dim_out, eps=1e-5)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        return self.pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


@register("htnet", "HTNet (Wang et al., Neurocomputing 2024): hierarchical transformer on four facial regions of the flow")
class HTNet(MERModel):
    """HTNet on the ``flow_regions`` view.

    Args:
        num_classes: K.
        image_size: side of the square input (paper: 28).
        patch_size: P (paper: 7).
        dim: width D of the finest hierarchy; it doubles at each coarser one (paper: 256).
        heads: heads of the finest hierarchy; doubles likewise (paper: 3).
        num_hierarchies: T (paper: 3).
        block_repeats: transformer blocks per hierarchy, finest first (paper: (2, 2, 10)).
        mlp_mult: MLP width multiple (4). dropout: 0 in the paper.
        input_scale: the input is multiplied by this (1: merkit's [0, 1] flow; 255: the release).

    Input: ``views["flow_regions"]`` (B, 3, image_size, image_size). Output: logits (B, K).

    Raises:
        ConfigError: the token map ``image_size / patch_size`` cannot be cut into
            ``2**(T-1)`` blocks per side, or ``block_repeats`` does not name T hierarchies.
    """

    def __init__(self, num_classes: int, image_size: int = 28, patch_size: int = 7, dim: int = 256, heads: int = 3,
                 num_hierarchies: int = 3, block_repeats: Sequence[int] = (2, 2, 10), mlp_mult: int = 4,
                 dropout: float = 0.0, input_scale: float = 1.0):
        super().__init__()
        block_repeats = tuple(block_repeats)
        if num_hierarchies < 1:
            raise ConfigError(f"HTNet num_hierarchies must be at least 1, got {num_hierarchies}")
        if len(block_repeats) != num_hierarchies or min(block_repeats) < 1:
            raise ConfigError(f"HTNet block_repeats {list(block_repeats)} must give at least one block for each of "
                              f"the {num_hierarchies} hierarchies")
        if image_size % patch_size:
            raise ConfigError(f"HTNet image_size {image_size} is not divisible by patch_size {patch_size}")
        grid = image_size // patch_size
        finest_blocks = 2 ** (num_hierarchies - 1)
        if grid % finest_blocks:
            raise ConfigError(f"HTNet: the {grid} x {grid} token map (image {image_size} / patch {patch_size}) cannot be "
                              f"cut into {finest_blocks} x {finest_blocks} blocks for {num_hierarchies} hierarchies")
        if heads < 1 or dim < heads:
            raise ConfigError(f"HTNet needs 1 <= heads <= dim, got dim {dim}, heads {heads}")
        self.input_spec = self.input_spec_from({"image_size": image_size})
        self.input_scale = float(input_scale)
        self.patch_embedding = PatchEmbedding(3, dim, patch_size, (image_size, image_size))
        tokens_per_block = (grid // finest_blocks) ** 2  # the same at every level
        widths = [dim * 2**k for k in range(num_hierarchies)]
        self.hierarchies = nn.ModuleList()
        self.aggregations = nn.ModuleList()
        for k, (width, depth) in enumerate(zip(widths, block_repeats)):
            per_side = 2 ** (num_hierarchies - 1 - k)
            self.hierarchies.append(LocalTransformer(width, heads * 2**k, depth, per_side, tokens_per_block, mlp_mult,
                                                     dropout))
            last = k == num_hierarchies - 1
            self.aggregations.append(nn.Identity() if last else BlockAggregation(width, widths[k + 1]))
        self.norm = nn.LayerNorm(widths[-1], eps=1e-5)
        self.classifier = nn.Linear(widths[-1], num_classes)

    @classmethod
    def input_spec_from(cls, options: dict[str, Any]) -> tuple[ViewSpec, ...]:
        """The ``flow_regions`` view at ``image_size``."""
        return (ViewSpec("flow_regions", size=(options["image_size"], options["image_size"])),)

    def classifier_keys(self) -> list[str]:
        """The linear classifier's weight and bias."""
        return ["classifier.weight", "classifier.bias"]

    def features(self, regions: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D * 2**(T-1)) pooled features of the coarsest hierarchy."""
        tokens = self.patch_embedding(regions * self.input_scale)
        grid = self.patch_embedding.grid
        x = tokens.reshape(tokens.shape[0], grid[0], grid[1], tokens.shape[-1])
        for transformer, aggregation in zip(self.hierarchies, self.aggregations):
            x = aggregation(transformer(x))
        return self.norm(x).mean(dim=(1, 2))

    def forward(self, views: dict[str, torch.Tensor]) -> torch.Tensor:
        """``views["flow_regions"]``: (B, 3, H, W) -> logits (B, K).

        Raises:
            ModelInputError: the view is missing or not (B, 3, H, W) at the spec's size.
        """
        if "flow_regions" not in views:
            raise ModelInputError(f"HTNet needs view 'flow_regions'; got views {sorted(views)}")
        regions = views["flow_regions"]
        expected = (3, *self.input_spec[0].size)
        if regions.ndim != 4 or tuple(regions.shape[1:]) != expected:
            raise ModelInputError(f"HTNet expects flow_regions of shape (B, {', '.join(map(str, expected))}), "
                                  f"got {tuple(regions.shape)}")
        return self.classifier(self.features(regions))

