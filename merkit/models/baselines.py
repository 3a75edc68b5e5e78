"""Simple peers that put the published models' numbers in context."""

from __future__ import annotations

import torch
from torch import nn

from merkit.models.registry import register
from merkit.views import ViewSpec


class LogisticRegression(nn.Module):
    """Multinomial logistic regression on the flattened apex - onset difference.

    Input: ``views["diff"]`` of shape (B, C, H, W). Output: logits (B, K). It sees the same
    motion signal as the published models with no spatial structure at all, so a model that
    cannot beat it clearly has learnt little about micro-expressions.
    """

    def __init__(self, num_classes: int, image_size: int = 32, in_channels: int = 1):
        super().__init__()
        self.input_spec = (ViewSpec("diff", size=(image_size, image_size), channels=in_channels),)
        self.linear = nn.Linear(in_channels * image_size * image_size, num_classes)

    def forward(self, views: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.linear(views["diff"].flatten(1))


@register("logreg", "multinomial logistic regression on the apex - onset difference (trivial peer)")
def build_logreg(num_classes: int, image_size: int = 32, in_channels: int = 1) -> LogisticRegression:
    return LogisticRegression(num_classes, image_size=image_size, in_channels=in_channels)
