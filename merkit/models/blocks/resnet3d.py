"""A generic 3D-ResNet builder: basic and bottleneck blocks, variants as one-line calls.

Every tensor is ``(B, C, T, H, W)``. A :class:`ResNet3d` is a stem (one ``kT x kH x kW``
convolution, BatchNorm, ReLU), a max pool that opens the first stage (as in ResNet's conv2_x),
and four stages of residual blocks. It returns the output of every stage, so multi-scale models
can tap them; :func:`resnet3d` builds a named layout::

    resnet3d("paper-basic", in_channels=3)   # basic blocks 3-4-6-3 (32 conv layers in stages, ResNet-34)
    resnet3d("bottleneck50", in_channels=3)  # bottleneck blocks 3-4-6-3 (48 conv layers in stages, ResNet-50)
    resnet3d("basic18", in_channels=3)       # basic blocks 2-2-2-2 (R3D-18)

Stage ``i`` has ``base_width * 2**i`` channels inside its blocks and ``expansion`` times that at
its output (1 for basic blocks, 4 for bottlenecks). The first stage keeps the resolution after
the pool; later stages halve T, H and W (``stage_strides``).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from merkit.errors import ConfigError, check_choice

Triple = tuple[int, int, int]


def _same_padding(kernel: Triple) -> Triple:
    return (kernel[0] // 2, kernel[1] // 2, kernel[2] // 2)


class BasicBlock3d(nn.Module):
    """Two 3x3x3 convolutions with BatchNorm and an identity (or 1x1x1 projection) shortcut.

    ``(B, in_channels, T, H, W) -> (B, width, T/s, H/s, W/s)`` for stride ``s``.
    """

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: Triple = (1, 1, 1)):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv3d(in_channels, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = nn.Conv3d(width, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck3d(nn.Module):
    """1x1x1 reduce, 3x3x3 (strided), 1x1x1 expand by 4, with a residual shortcut.

    ``(B, in_channels, T, H, W) -> (B, 4 * width, T/s, H/s, W/s)`` for stride ``s``.
    """

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: Triple = (1, 1, 1)):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv3d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = nn.Conv3d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(width)
        self.conv3 = nn.Conv3d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def _shortcut(in_channels: int, out_channels: int, stride: Triple) -> nn.Module:
    if in_channels == out_channels and tuple(stride) == (1, 1, 1):
        return nn.Identity()
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm3d(out_channels),
    )


Block = type[BasicBlock3d] | type[Bottleneck3d]

LAYOUTS: dict[str, tuple[Block, tuple[int, ...]]] = {
    "paper-basic": (BasicBlock3d, (3, 4, 6, 3)),
    "bottleneck50": (Bottleneck3d, (3, 4, 6, 3)),
    "basic18": (BasicBlock3d, (2, 2, 2, 2)),
}


class ResNet3d(nn.Module):
    """Stem + stages of residual blocks; returns every stage's output.

    Args:
        block: :class:`BasicBlock3d` or :class:`Bottleneck3d`.
        layers: blocks per stage, e.g. ``(3, 4, 6, 3)``.
        in_channels: input channels (3 for u, v, strain flow maps).
        base_width: block width of the first stage; stage ``i`` uses ``base_width * 2**i``.
        stem_kernel: stem convolution kernel ``(kT, kH, kW)``.
        stem_stride: stem convolution stride.
        stem_pool: max pool 3x3x3 with stride (1, 2, 2) at the start of the first stage.
        stage_strides: stride of the first block of every stage.

    Attributes:
        stage_channels: output channels of every stage.
        stage_strides: as given (one ``(sT, sH, sW)`` per stage).
    """

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        in_channels: int = 3,
        base_width: int = 64,
        stem_kernel: Triple = (3, 7, 7),
        stem_stride: Triple = (1, 2, 2),
        stem_pool: bool = True,
        stage_strides: Sequence[Triple] = ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)),
        zero_init_residual: bool = False,
    ):
        super().__init__()
        if len(stage_strides) != len(layers):
            raise ConfigError(f"ResNet3d: {len(layers)} stages but {len(stage_strides)} stage strides")
        if base_width < 1 or any(n < 1 for n in layers):
            raise ConfigError(f"ResNet3d: base_width and blocks per stage must be >= 1, got {base_width}, {tuple(layers)}")
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, base_width, stem_kernel, stride=stem_stride, padding=_same_padding(stem_kernel), bias=False),
            nn.BatchNorm3d(base_width),
            nn.ReLU(inplace=True),
        )
        self.stem_pool = nn.MaxPool3d(3, stride=(1, 2, 2), padding=1) if stem_pool else nn.Identity()
        self.stage_strides = tuple(tuple(s) for s in stage_strides)
        stages, channels, current = [], [], base_width
        for index, (count, stride) in enumerate(zip(layers, self.stage_strides)):
            width = base_width * 2**index
            blocks = [block(current, width, stride)]
            current = width * block.expansion
            blocks += [block(current, width) for _ in range(count - 1)]
            stages.append(nn.Sequential(*blocks))
            channels.append(current)
        self.stages = nn.ModuleList(stages)
        self.stage_channels = tuple(channels)
        _init_weights(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock3d, Bottleneck3d)):
                    nn.init.zeros_((m.bn2 if isinstance(m, BasicBlock3d) else m.bn3).weight)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, C, T, H, W)`` -> the output of every stage, shallowest first."""
        x = self.stem_pool(self.stem(x))
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def resnet3d(layout: str, in_channels: int = 3, base_width: int = 64, **kwargs: Any) -> ResNet3d:
    """A :class:`ResNet3d` with a named layout from :data:`LAYOUTS`.

    Raises:
        ConfigError: unknown layout name.
    """
    check_choice("3D-ResNet layout", layout, sorted(LAYOUTS))
    block, layers = LAYOUTS[layout]
    return ResNet3d(block, layers, in_channels=in_channels, base_width=base_width, **kwargs)


def _init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
