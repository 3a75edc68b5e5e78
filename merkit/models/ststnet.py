"""STSTNet: Shallow Triple Stream Three-dimensional CNN.

Liong, Gan, See, Khor and Huang, "Shallow Triple Stream Three-dimensional CNN (STSTNet) for
Micro-expression Recognition", IEEE FG 2019 (MEGC2019 recognition challenge).

The input is the onset->apex optical flow of a clip as a 28 x 28 image with three channels
(horizontal flow u, vertical flow v, optical strain): the ``flow`` view, or the released
MEGC2019 flow images. Three parallel streams, each a single 3 x 3 convolution with 3, 5 and 8
filters, look at all three channels; each stream is ReLU -> batch norm -> 3 x 3 max pooling
(stride 3) -> dropout. The 3 + 5 + 8 = 16 maps are concatenated, 2 x 2 average pooled and
classified by one fully connected layer (5 * 5 * 16 = 400 inputs at 28 x 28).

Choices where the paper leaves room:

* ``conv_padding``: the paper's Matlab network pads "same" (1 pixel, 28 x 28 maps); the
  authors' PyTorch release pads 2 pixels (30 x 30 maps), and its published per-subject weights
  use that. Both give 10 x 10 maps after the pooling and 400 features. Default 2 (the release);
  1 is the Matlab reading.
* The order ReLU -> batch norm and the 0.5 dropout after each stream's pooling follow the
  authors' release; the paper's figure shows only conv, pooling and the dense layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from merkit.errors import ConfigError, ModelInputError, check_choice
from merkit.models.base import MERModel
from merkit.models.registry import register
from merkit.views import ViewSpec


def _pooled(size: int, padding: int) -> int:
    """Side of a stream's output: conv 3x3 (``padding``), max pool 3/3 (pad 1), then avg pool 2/2."""
    conv = size + 2 * padding - 2
    pooled = (conv + 2 - 3) // 3 + 1
    return pooled // 2


@register("ststnet", "STSTNet (Liong et al., FG 2019): three shallow conv streams on the 28x28 onset->apex flow")
class STSTNet(MERModel):
    """STSTNet on the ``flow`` view.

    Args:
        num_classes: K.
        stream_widths: filters of the three streams (paper: 3, 5, 8).
        conv_padding: 2 (authors' release) or 1 ("same", the paper's Matlab network).
        dropout: dropout after each stream's pooling.
        image_size: side of the square flow view (paper: 28).

    Input: ``views["flow"]`` (B, 3, image_size, image_size). Output: logits (B, K).
    """

    def __init__(self, num_classes: int, stream_widths: Sequence[int] = (3, 5, 8), conv_padding: int = 2,
                 dropout: float = 0.5, image_size: int = 28):
        super().__init__()
        check_choice("STSTNet conv_padding (1 'same', 2 release)", conv_padding, (1, 2))
        side = _pooled(image_size, conv_padding)
        if side < 1:
            raise ConfigError(f"STSTNet image_size {image_size} is too small (needs at least 6)")
        self.input_spec = self.input_spec_from({"image_size": image_size})
        self.streams = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(3, width, kernel_size=3, padding=conv_padding),
                nn.ReLU(),
                nn.BatchNorm2d(width),
                nn.MaxPool2d(kernel_size=3, stride=3, padding=1),
                nn.Dropout(dropout),
            )
            for width in stream_widths
        )
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)
        self.classifier = nn.Linear(sum(stream_widths) * side * side, num_classes)

    @classmethod
    def input_spec_from(cls, options: dict[str, Any]) -> tuple[ViewSpec, ...]:
        """The ``flow`` view at ``image_size``."""
        return (ViewSpec("flow", size=(options["image_size"], options["image_size"])),)

    def classifier_keys(self) -> list[str]:
        """The fully connected layer's weight and bias."""
        return ["classifier.weight", "classifier.bias"]

    def features(self, flow: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 16 * s * s) pooled stream maps, channel-major (s = 5 at 28 x 28)."""
        maps = torch.cat([stream(flow) for stream in self.streams], dim=1)
        return self.pool(maps).flatten(1)

    def forward(self, views: dict[str, torch.Tensor]) -> torch.Tensor:
        """``views["flow"]``: (B, 3, H, W) -> logits (B, K).

        Raises:
            ModelInputError: the flow view is missing or not (B, 3, H, W) at the spec's size.
        """
        if "flow" not in views:
            raise ModelInputError(f"STSTNet needs view 'flow'; got views {sorted(views)}")
        flow = views["flow"]
        expected = (3, *self.input_spec[0].size)
        if flow.ndim != 4 or tuple(flow.shape[1:]) != expected:
            raise ModelInputError(f"STSTNet expects flow of shape (B, {', '.join(map(str, expected))}), "
                                  f"got {tuple(flow.shape)}")
        return self.classifier(self.features(flow))

