"""Channel attention (CAM) and attentional feature fusion (AFF), paper 004 Eqs. 3.10-3.11.

Both work on feature maps of any dimensionality ``(B, C, *spatial)`` (2-D ``(B, C, H, W)`` or
3-D ``(B, C, T, H, W)``): pooling reduces every axis after the channel axis, and a pointwise
convolution on a pooled ``(B, C, 1, ..., 1)`` map is a linear layer on ``(B, C)``.

CAM (Eq. 3.10 and the text after it)::

    L(X) = BN(W2 ReLU(BN(W1 AvgPool(X))))       # global-average branch, W1: C -> C/r, W2: C/r -> C
    G(X) = BN(W4 ReLU(BN(W3 MaxPool(X))))       # global-max branch, same structure
    CAM(X) = sigmoid(L(X) + G(X))               # (B, C, 1, ..., 1), in (0, 1)

AFF (Eq. 3.11)::

    Z = CAM(X + Y) * X + (1 - CAM(X + Y)) * Y

The paper adds that "two attentional feature networks are used to combine into an attentional
feature fusion mechanism AFFA. One AFFA corresponds to 2 fusion operations": that is the
iterative AFF of Dai et al. (WACV 2021), where the first fusion's result replaces ``X + Y`` as
the input of a second CAM::

    Z1 = CAM1(X + Y) * X + (1 - CAM1(X + Y)) * Y
    Z  = CAM2(Z1) * X + (1 - CAM2(Z1)) * Y

``iterations=2`` (the default) is that reading; ``iterations=1`` is Eq. 3.11 alone.
"""

from __future__ import annotations

import torch
from torch import nn

from merkit.errors import ConfigError, ModelInputError, check_choice


class ChannelAttention(nn.Module):
    """CAM: channel weights from a global-average and a global-max branch (Eq. 3.10).

    Args:
        channels: C.
        reduction: channel ratio r; the hidden width is ``max(1, C // r)``.

    Shapes: ``(B, C, *spatial) -> (B, C, 1, ..., 1)`` with values in (0, 1). In training mode
    the BatchNorm layers need ``B >= 2``, as every BatchNorm does.
    """

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ConfigError(f"ChannelAttention: channels and reduction must be >= 1, got {channels}, {reduction}")
        self.average_branch = _pointwise_mlp(channels, max(1, channels // reduction))
        self.max_branch = _pointwise_mlp(channels, max(1, channels // reduction))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)
        logits = self.average_branch(flat.mean(dim=2)) + self.max_branch(flat.amax(dim=2))
        return torch.sigmoid(logits).view(*x.shape[:2], *([1] * (x.dim() - 2)))


def _pointwise_mlp(channels: int, hidden: int) -> nn.Sequential:
    """Pointwise conv -> BN -> ReLU -> pointwise conv -> BN on a pooled ``(B, C)`` descriptor."""
    return nn.Sequential(
        nn.Linear(channels, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, channels, bias=False),
        nn.BatchNorm1d(channels),
    )


class AttentionalFeatureFusion(nn.Module):
    """Fuse two same-shaped maps by channel attention (Eq. 3.11, optionally iterated).

    Args:
        channels: C of both inputs.
        reduction: CAM channel ratio r.
        iterations: 1 = Eq. 3.11; 2 = the paper's "two fusion operations" (iterative AFF).

    Shapes: ``X, Y: (B, C, *spatial) -> Z: (B, C, *spatial)``. ``Z = X`` where the attention
    is 1 and ``Z = Y`` where it is 0.
    """

    def __init__(self, channels: int, reduction: int = 4, iterations: int = 2):
        super().__init__()
        check_choice("AttentionalFeatureFusion: iterations", iterations, (1, 2))
        self.attention = nn.ModuleList(ChannelAttention(channels, reduction) for _ in range(iterations))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape:
            raise ModelInputError(f"AttentionalFeatureFusion: inputs differ in shape, {tuple(x.shape)} vs {tuple(y.shape)}")
        mixed = x + y
        for attention in self.attention:
            weight = attention(mixed)
            mixed = weight * x + (1 - weight) * y
        return mixed
