"""Continuous Attention (CA) blocks, as in MMNet.

MMNet: H. Li, M. Sui, Z. Zhu, F. Zhao, "MMNet: Muscle motion-guided network for micro-expression
recognition", IJCAI 2022. ATM-GCN (paper 001) builds its motion encoder from these blocks.

A CA block is a residual unit (3x3 conv -> BN -> ReLU -> 1x1 conv -> BN, plus the identity or a
1x1-conv + BN projection, -> ReLU) whose output is re-weighted by a spatial attention map. The map
is computed from the output's channel-wise mean and max (concatenated -> 1x1 conv -> BN ->
sigmoid) and multiplied by the previous block's map, max-pooled (kernel 3, padding 1, the block's
stride) to this block's resolution: attention is continuous through the stack, so a later block
can only attend where the earlier ones did. Every map is a product of sigmoids, in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from merkit.errors import ConfigError


class ContinuousAttentionBlock(nn.Module):
    """One CA block.

    Args:
        in_channels: channels of the input feature map.
        out_channels: channels of the output feature map.
        stride: stride of the 3x3 convolution (and of the projection and of the map's max-pool).

    Shapes: ``forward(x (N, C_in, H, W), previous_map (N, 1, H_prev, W_prev) | None)`` returns
    ``(features (N, C_out, H', W'), attention_map (N, 1, H', W'))`` with ``H' = ceil(H / stride)``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.projection: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.projection = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.attention = nn.Sequential(nn.Conv2d(2, 1, 1, bias=False), nn.BatchNorm2d(1), nn.Sigmoid())

    def forward(self, x: torch.Tensor, previous_map: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)) + self.projection(x))
        statistics = torch.cat([out.mean(dim=1, keepdim=True), out.amax(dim=1, keepdim=True)], dim=1)
        attention_map = self.attention(statistics)
        if previous_map is not None:
            if previous_map.shape[-2:] != attention_map.shape[-2:]:
                previous_map = F.max_pool2d(previous_map, kernel_size=3, stride=self.stride, padding=1)
            attention_map = attention_map * previous_map
        return out * attention_map, attention_map


class ContinuousAttentionStack(nn.Module):
    """A sequence of CA blocks whose attention maps are chained (the MMNet main branch).

    Args:
        in_channels: channels of the input feature map.
        channels: output channels of each block, e.g. ``(64, 128, 256, 512)``.
        strides: stride of each block (default: 1 for the first block, 2 for the others, as MMNet).

    Shapes: ``forward(x (N, C_in, H, W))`` returns ``(features (N, channels[-1], H_n, W_n),
    maps)`` where ``maps[k]`` is block k's attention map ``(N, 1, H_k, W_k)`` in [0, 1].

    Raises:
        ConfigError: no blocks, non-positive widths, or ``strides`` of the wrong length.
    """

    def __init__(self, in_channels: int, channels: Sequence[int], strides: Sequence[int] | None = None):
        super().__init__()
        channels = list(channels)
        if not channels or min(channels) < 1:
            raise ConfigError(f"a CA stack needs at least one block of positive width, got channels={channels}")
        strides = [1] + [2] * (len(channels) - 1) if strides is None else list(strides)
        if len(strides) != len(channels) or min(strides) < 1:
            raise ConfigError(f"CA stack: {len(channels)} blocks need as many positive strides, got {strides}")
        widths = [in_channels] + channels
        self.blocks = nn.ModuleList(
            ContinuousAttentionBlock(widths[k], widths[k + 1], strides[k]) for k in range(len(channels))
        )
        self.out_channels = channels[-1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        maps: list[torch.Tensor] = []
        attention_map = None
        for block in self.blocks:
            x, attention_map = block(x, attention_map)
            maps.append(attention_map)
        return x, maps
