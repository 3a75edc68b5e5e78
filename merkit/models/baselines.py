"""Simple peers that put the published models' numbers in context."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from merkit.errors import ModelInputError, check_choice
from merkit.models.base import MERModel
from merkit.models.registry import register
from merkit.views import ViewSpec


@register("logreg", "multinomial logistic regression on the apex - onset difference or flow (trivial peer)")
class LogisticRegression(MERModel):
    """Multinomial logistic regression on a flattened motion map.

    Input: ``views[view]`` of shape (B, C, H, W): the apex - onset difference (``diff``, C =
    ``in_channels``) or the onset->apex flow (``flow``, C = 3). Output: logits (B, K). It sees the
    same motion signal as the published models with no spatial structure at all, so a model
    that cannot beat it clearly has learnt little about micro-expressions.
    """

    def __init__(self, num_classes: int, image_size: int = 32, in_channels: int = 1, view: str = "diff"):
        super().__init__()
        self.view = view
        self.input_spec = self.input_spec_from({"image_size": image_size, "in_channels": in_channels, "view": view})
        self.linear = nn.Linear(self.input_spec[0].channels * image_size * image_size, num_classes)

    @classmethod
    def input_spec_from(cls, options: dict[str, Any]) -> tuple[ViewSpec, ...]:
        """One view: ``diff`` (``in_channels``) or ``flow`` (3 channels) at ``image_size``."""
        view, size = options["view"], options["image_size"]
        check_choice("logreg option 'view'", view, ("diff", "flow"))
        channels = 3 if view == "flow" else options["in_channels"]
        return (ViewSpec(view, size=(size, size), channels=channels),)

    def classifier_keys(self) -> list[str]:
        """The linear layer's weight and bias."""
        return ["linear.weight", "linear.bias"]

    def forward(self, views: dict[str, torch.Tensor]) -> torch.Tensor:
        """``views[view]: (B, C, H, W)`` -> ``(B, K)`` logits.

        Raises:
            ModelInputError: the view is missing or not ``(B, C, H, W)`` of the input spec.
        """
        spec = self.input_spec[0]
        if self.view not in views:
            raise ModelInputError(f"logreg needs the {self.view!r} view, got {sorted(views)}")
        x = views[self.view]
        if tuple(x.shape[1:]) != spec.shape():
            raise ModelInputError(f"logreg: view {self.view!r} must be (B, {', '.join(map(str, spec.shape()))}), "
                                  f"got {tuple(x.shape)}")
        return self.linear(x.flatten(1))

