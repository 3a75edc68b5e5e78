"""Multi-scale modules RC1, RC2, RC3 of paper 004 (Sec. 3.3.2) with learnable branch weights.

Every module maps ``(B, C, T, H, W) -> (B, C, T, H, W)``: each branch produces one or more maps
of the input's shape ("same" padding; the paper pads the directional branches of RC3 to the size
of the others), and the maps are summed with one learnable scalar weight each:

* Eq. 3.8 (RC1, RC2, four maps): ``K = a X1 + b X2 + c X3 + d X4``;
* Eq. 3.9 (RC3, eight maps from four branches): ``K = sum_i w_i X_i``.

``weighting="free"`` uses the weights as written (initialised to 1/n, so the module starts as
the mean of its branches); ``weighting="softmax"`` normalises them to sum to one, a common
stabilising variant (BiFPN-style) the paper does not mention. ``residual=True`` returns
``x + K`` instead of ``K`` (the paper never expands "RC"; "residual convolution" is one reading).

Kernel sizes are written ``kT x kH x kW`` as in the paper ("3 x 7 x 7" stem): ``1x1x7`` is
horizontal (W), ``1x7x1`` vertical (H), ``7x1x1`` temporal ("radial"). Every convolution is
followed by BatchNorm and ReLU (Inception-v3 style, also between the factorised convolutions);
"reduce" convolutions are ``1x1x1`` to ``max(1, C // reduction)`` channels. The branches:

RC1 (after stage 2): ``1x1x1``; reduce -> ``3x3x3``; reduce -> ``3x3x3`` -> ``3x3x3`` (for a
``5x5x5``); global average pooling -> ``1x1x1`` -> broadcast.

RC2 (after stage 3): ``1x1x1``; reduce -> ``1x1x7, 1x7x1, 7x1x1`` (a factorised ``7x7x7``, the
paper's "depth-separable" convolution); reduce -> two such factorised stacks (the paper's
replacement of a ``9x9x9``, though two stacks reach 13 voxels); global average pooling. The text
names no reduce convolution here; we use one as in RC1 to keep the cost of the wide kernels down.

RC3 (after stage 4), eight maps as the text describes: branch 1 reduces, passes a factorised
``3`` stack (``1x1x3, 1x3x1, 3x1x1``), then splits into three parallel directional convolutions
``1x1x3`` (transverse), ``1x3x1`` (longitudinal), ``3x1x1`` (radial), each one output map
(reach 5 voxels per direction: the text's later "5x5x5 kernel ... in all directions"); branch 2
reduces and splits directly into the three directional convolutions (three maps); branch 3 is
``1x1x1``; branch 4 global average pooling.

The global-average-pooling branch has no BatchNorm (a pooled map has one value per sample and
channel).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

from merkit.errors import ModelInputError, check_choice

Weighting = Literal["free", "softmax"]


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int | tuple[int, int, int]) -> nn.Sequential:
    """Stride-1 convolution with "same" padding, BatchNorm, ReLU."""
    kernel = (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)
    padding = tuple(k // 2 for k in kernel)
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, kernel, padding=padding, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
    )


def factorised_stack(in_channels: int, out_channels: int, size: int) -> nn.Sequential:
    """``1x1xk -> 1xkx1 -> kx1x1`` (k = ``size``): a ``k x k x k`` reach at a third of the cost."""
    return nn.Sequential(
        conv_bn_relu(in_channels, out_channels, (1, 1, size)),
        conv_bn_relu(out_channels, out_channels, (1, size, 1)),
        conv_bn_relu(out_channels, out_channels, (size, 1, 1)),
    )


class DirectionalSplit(nn.Module):
    """Three parallel directional convolutions ``1x1xk``, ``1xkx1``, ``kx1x1``.

    ``(B, C_in, T, H, W) -> [3 x (B, C_out, T, H, W)]`` (transverse, longitudinal, radial).
    """

    def __init__(self, in_channels: int, out_channels: int, size: int = 3):
        super().__init__()
        self.directions = nn.ModuleList(
            conv_bn_relu(in_channels, out_channels, kernel) for kernel in ((1, 1, size), (1, size, 1), (size, 1, 1))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [direction(x) for direction in self.directions]


class GlobalContext(nn.Module):
    """Global average pooling over (T, H, W), ``1x1x1`` convolution, ReLU, broadcast back.

    ``(B, C, T, H, W) -> (B, C, T, H, W)``, constant over (T, H, W).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.project = nn.Conv3d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3, 4), keepdim=True)
        return torch.relu(self.project(pooled)).expand_as(x)


class MultiScaleModule(nn.Module):
    """Parallel branches fused by learnable per-map weights (Eqs. 3.8 and 3.9).

    Args:
        branches: modules ``(B, C, T, H, W) ->`` one map or a list of maps of that shape.
        num_maps: total number of maps the branches produce (4 for RC1/RC2, 8 for RC3).
        weighting: ``"free"`` (as written) or ``"softmax"``.
        residual: add the input to the fused map.

    Attributes:
        branch_weights: ``(num_maps,)`` learnable weights, one per map in branch order.
    """

    def __init__(self, branches: Sequence[nn.Module], num_maps: int, weighting: Weighting = "free", residual: bool = False):
        super().__init__()
        self.residual = residual
        check_choice("multi-scale weighting", weighting, ("free", "softmax"))
        self.branches = nn.ModuleList(branches)
        self.weighting = weighting
        initial = torch.full((num_maps,), 1.0 / num_maps) if weighting == "free" else torch.zeros(num_maps)
        self.branch_weights = nn.Parameter(initial)

    def fusion_weights(self) -> torch.Tensor:
        """The weights actually applied, ``(num_maps,)``."""
        return torch.softmax(self.branch_weights, dim=0) if self.weighting == "softmax" else self.branch_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps: list[torch.Tensor] = []
        for branch in self.branches:
            out = branch(x)
            maps.extend(out if isinstance(out, list) else [out])
        if len(maps) != len(self.branch_weights):
            raise ModelInputError(f"multi-scale module: branches gave {len(maps)} maps, expected {len(self.branch_weights)}")
        weights = self.fusion_weights()
        fused = weights[0] * maps[0]
        for weight, feature in zip(weights[1:], maps[1:]):
            fused = fused + weight * feature
        return x + fused if self.residual else fused


def rc1(channels: int, reduction: int = 2, weighting: Weighting = "free", residual: bool = False) -> MultiScaleModule:
    """RC1: ``1x1x1``; reduce -> ``3x3x3``; reduce -> two ``3x3x3``; global average (4 maps)."""
    mid = max(1, channels // reduction)
    branches = [
        conv_bn_relu(channels, channels, 1),
        nn.Sequential(conv_bn_relu(channels, mid, 1), conv_bn_relu(mid, channels, 3)),
        nn.Sequential(conv_bn_relu(channels, mid, 1), conv_bn_relu(mid, mid, 3), conv_bn_relu(mid, channels, 3)),
        GlobalContext(channels),
    ]
    return MultiScaleModule(branches, num_maps=4, weighting=weighting, residual=residual)


def rc2(channels: int, reduction: int = 2, weighting: Weighting = "free", residual: bool = False) -> MultiScaleModule:
    """RC2: ``1x1x1``; reduce -> factorised 7; reduce -> two factorised 7; global average (4 maps)."""
    mid = max(1, channels // reduction)
    branches = [
        conv_bn_relu(channels, channels, 1),
        nn.Sequential(conv_bn_relu(channels, mid, 1), factorised_stack(mid, channels, 7)),
        nn.Sequential(conv_bn_relu(channels, mid, 1), factorised_stack(mid, mid, 7), factorised_stack(mid, channels, 7)),
        GlobalContext(channels),
    ]
    return MultiScaleModule(branches, num_maps=4, weighting=weighting, residual=residual)


def rc3(channels: int, reduction: int = 2, weighting: Weighting = "free", residual: bool = False) -> MultiScaleModule:
    """RC3: two directional branches (3 maps each), ``1x1x1``, global average (8 maps, Eq. 3.9)."""
    mid = max(1, channels // reduction)
    branches = [
        nn.Sequential(conv_bn_relu(channels, mid, 1), factorised_stack(mid, mid, 3), DirectionalSplit(mid, channels, 3)),
        nn.Sequential(conv_bn_relu(channels, mid, 1), DirectionalSplit(mid, channels, 3)),
        conv_bn_relu(channels, channels, 1),
        GlobalContext(channels),
    ]
    return MultiScaleModule(branches, num_maps=8, weighting=weighting, residual=residual)
