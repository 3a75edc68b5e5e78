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

Training speed (``fused``, default on). The published layer order spends most of a training
step on memory traffic at the 30 x 30 resolution (batch norm, pooling with indices and their
backward passes on ``(256, 16, 30, 30)`` maps), not on arithmetic. In training mode the streams
and the average pooling run as one exact reformulation, :class:`FusedStreams`:

* the streams' 3 + 5 + 8 filters form one 16-filter convolution (each output map depends only
  on its own filter, so this is the same computation), in channels-last layout;
* batch norm with a positive scale ``gamma / sqrt(var + eps)`` is an increasing map of each
  channel, so it commutes with the max pooling: the batch statistics are taken on the 30 x 30
  ReLU maps as before, but only the 10 x 10 pooled maxima are normalised;
* batch norm and dropout are affine per pooled position, so the 2 x 2 average pooling of their
  output is formed from two pooled averages;
* the backward pass is derived by hand: the conv's output gradient is built in one pass over a
  ReLU map instead of the backward passes of pooling, batch norm and ReLU;
* the batch is processed in chunks of :data:`FUSED_CHUNK` clips so that the full-resolution
  maps of a chunk stay in the CPU cache between operations.

Outputs, gradients and running statistics equal the published formulation's up to float
rounding (``tests/test_ststnet.py``); with a batch-norm weight that is not positive, or under
autocast, the published formulation is used for that step. Dropout draws its masks from the
global generator (:func:`dropout_multipliers`): the same Bernoulli distribution as
``nn.Dropout``, a different random stream, so a fused run and an unfused run of the same seed
differ. ``fused=False`` trains the published formulation. Eval mode always runs the published
formulation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from merkit.errors import ConfigError, ModelInputError, check_choice
from merkit.models.base import MERModel
from merkit.models.registry import register
from merkit.views import ViewSpec


#: clips per chunk of the fused training pass: the 30 x 30 maps of a chunk (32 x 900 x 16 floats,
#: 1.8 MB) stay in the CPU cache from one operation to the next. A constant, so that the rounding
#: of a run depends on its batches only
FUSED_CHUNK = 32
#: the batch variance is E[x^2] - E[x]^2 unless E[x]^2 exceeds this many variances; then the
#: second pass over the deviations (the published formula) is used, so rounding stays at ~1e-6
_CANCELLATION_RATIO = 8.0


class FusedStreams(torch.autograd.Function):
    """The streams and the 2 x 2 average pooling in training mode, fused: conv (all filters) ->
    ReLU -> batch norm with batch statistics -> 3 x 3 / 3 max pooling -> dropout -> 2 x 2 average
    pooling, flattened channel-major.

    ``forward(flow (B, 3, H, W), keep (B, h, w, C), weight (C, 3, 3, 3), bias (C,), gamma (C,),
    beta (C,), padding, eps)`` returns ``(features (B, C * s * s), mean (C,), var (C,))``: the
    features the classifier reads (``s = h // 2``), and the biased batch mean and variance of the
    ReLU maps (for the running statistics; not differentiable). ``keep`` holds the dropout
    multipliers (0 or ``1 / (1 - p)``) of the pooled maps, channels last. Requires ``gamma > 0``
    (then batch norm and max pooling commute exactly).

    Batch norm and dropout are affine per pooled position, so the average pooling of
    ``keep * (scale * max + shift)`` is ``scale * avg(keep * max) + shift * avg(keep)``: only the
    two pooled averages are formed, and the backward pass needs no normalised map either.
    """

    @staticmethod
    def forward(ctx, flow: torch.Tensor, keep: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                gamma: torch.Tensor, beta: torch.Tensor, padding: int, eps: float):
        # zero padding written out: oneDNN's 3-channel convolution is about twice as fast unpadded;
        # the channels-last padded input is written in one allocation (not pad, then a layout copy)
        batch, in_channels, height, width = flow.shape
        x = flow.new_zeros((batch, height + 2 * padding, width + 2 * padding, in_channels))
        x[:, padding:padding + height, padding:padding + width] = flow.permute(0, 2, 3, 1)
        x = x.permute(0, 3, 1, 2)  # (B, C, H, W) in channels-last memory
        channels = weight.shape[0]
        maps, pooled, argmax = [], [], []
        total = x.new_zeros(channels)
        total_sq = x.new_zeros(channels)
        squares = None  # one buffer for every chunk's squared map
        for start in range(0, x.shape[0], FUSED_CHUNK):
            relu = F.conv2d(x[start:start + FUSED_CHUNK], weight, bias).relu_()
            flat = relu.permute(0, 2, 3, 1).reshape(-1, channels)  # a view: the maps are channels-last
            squares = torch.empty_like(flat) if squares is None else squares[:len(flat)]
            total += flat.sum(0)
            total_sq += torch.mul(flat, flat, out=squares).sum(0)
            chunk_max, chunk_argmax = F.max_pool2d_with_indices(relu, 3, 3, 1)
            maps.append(relu)
            pooled.append(chunk_max)
            argmax.append(chunk_argmax)
        n = x.shape[0] * relu.shape[2] * relu.shape[3]
        mean = total / n
        var = (total_sq / n - mean * mean).clamp_(min=0)
        if bool((mean * mean > _CANCELLATION_RATIO * var).any()):
            var = sum(((m.permute(0, 2, 3, 1).reshape(-1, channels) - mean) ** 2).sum(0) for m in maps) / n
        invstd = torch.rsqrt(var + eps)
        scale, shift = gamma * invstd, beta - mean * gamma * invstd
        pooled_max = torch.cat(pooled).permute(0, 2, 3, 1)  # (B, h, w, C), contiguous
        kept = pooled_max * keep
        kept_avg, keep_avg = _average_2x2(kept), _average_2x2(keep)  # (B, s, s, C)
        features = kept_avg * scale + keep_avg * shift
        keep_positive = torch.sign(pooled_max).mul_(keep)  # the maxima are >= 0: sign is 1 where positive, else 0
        ctx.save_for_backward(x, weight, kept_avg, keep_avg, keep_positive, mean, invstd, gamma)
        ctx.maps, ctx.argmax, ctx.count = maps, argmax, n
        ctx.mark_non_differentiable(mean, var)
        return features.permute(0, 3, 1, 2).flatten(1), mean, var

    @staticmethod
    def backward(ctx, grad_features: torch.Tensor, _grad_mean, _grad_var):
        """Batch-norm backward on the pooled maxima, scattered back through the argmax.

        With ``g`` the gradient at the max-pooled positions (zero elsewhere), ``x_hat`` the
        normalised ReLU map and ``m1 = mean(g)``, ``m2 = mean(g * x_hat)`` over all B x H x W
        positions, batch norm gives ``dL/drelu = gamma * invstd * (g - m1 - x_hat * m2)``; the
        ReLU passes it where the map is positive. Away from the argmax positions this is
        ``offset + slope * relu`` per channel, so one pass builds the conv's output gradient.
        """
        x, weight, kept_avg, keep_avg, keep_positive, mean, invstd, gamma = ctx.saved_tensors
        batch, side, _, channels = kept_avg.shape
        grad = grad_features.view(batch, channels, side, side).permute(0, 2, 3, 1)  # (B, s, s, C)
        grad_beta = (grad * keep_avg).sum((0, 1, 2))  # sum of the pooled positions' gradients
        grad_gamma = invstd * ((grad * kept_avg).sum((0, 1, 2)) - mean * grad_beta)  # ... times x_hat
        gain = gamma * invstd
        m1, m2 = grad_beta / ctx.count, grad_gamma / ctx.count
        slope = (-gain * invstd * m2).view(1, -1, 1, 1)
        offset = (-gain * (m1 - mean * invstd * m2)).view(1, -1, 1, 1)
        # gain * g where the max is positive, at the max-pooled positions (B, h * w, C): the 2 x 2
        # average spreads a quarter of each feature's gradient over its block, dropout masks it
        # (the spread gradient is duplicated along the block's columns first: a broadcast over rows
        # of 2 x C floats is several times faster than one over rows of C)
        spread = grad * (gain * 0.25)
        spread = torch.stack([spread, spread], 3).view(batch, side, 1, side, 2 * channels)
        pooled_height, pooled_width = keep_positive.shape[1:3]
        if pooled_height == 2 * side and pooled_width == 2 * side:  # the blocks cover the pooled maps
            at_max = torch.empty_like(keep_positive)
            torch.mul(spread, keep_positive.view(batch, side, 2, side, 2 * channels),
                      out=at_max.view(batch, side, 2, side, 2 * channels))
        else:  # an odd last row or column: no gradient there
            at_max = torch.zeros_like(keep_positive)
            blocks = keep_positive[:, :2 * side, :2 * side].reshape(batch, side, 2, side, 2 * channels)
            at_max[:, :2 * side, :2 * side] = (spread * blocks).view(batch, 2 * side, 2 * side, channels)
        at_max = at_max.view(batch, -1, channels)
        grad_weight = torch.zeros_like(weight)
        grad_bias = weight.new_zeros(channels)
        buffer = torch.empty_like(ctx.maps[0])  # one gradient map buffer for every chunk
        start = 0
        for relu, argmax in zip(ctx.maps, ctx.argmax):
            b, _, map_height, map_width = relu.shape
            grad_map = torch.addcmul(offset, relu, slope, out=buffer[:b])
            torch.ops.aten.threshold_backward.grad_input(grad_map, relu, 0.0, grad_input=grad_map)
            grad_map.permute(0, 2, 3, 1).view(b, map_height * map_width, channels).scatter_add_(
                1, argmax.permute(0, 2, 3, 1).reshape(b, -1, channels), at_max[start:start + b])
            _, chunk_weight, _ = torch.ops.aten.convolution_backward(
                grad_map, x[start:start + b], weight, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                [False, True, False])
            grad_weight += chunk_weight
            grad_bias += grad_map.permute(0, 2, 3, 1).reshape(-1, channels).sum(0)
            start += b
        return None, None, grad_weight, grad_bias, grad_gamma, grad_beta, None, None


def _average_2x2(maps: torch.Tensor) -> torch.Tensor:
    """2 x 2 average pooling (stride 2, an odd last row/column dropped) of channels-last maps
    ``(B, h, w, C)`` -> ``(B, h // 2, w // 2, C)``."""
    batch, height, width, channels = maps.shape
    side_h, side_w = height // 2, width // 2
    blocks = maps[:, :2 * side_h, :2 * side_w].reshape(batch, side_h, 2, side_w, 2, channels)
    rows = blocks[:, :, 0] + blocks[:, :, 1]  # (B, s, s, 2, C); two adds are ~30x faster than sum((2, 4))
    return (rows[:, :, :, 0] + rows[:, :, :, 1]).mul_(0.25)


def dropout_multipliers(shape: Sequence[int], p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Inverted-dropout multipliers from the global generator: ``1 / (1 - p)`` with probability
    ``1 - p``, else 0. For ``p = 0.5`` each keep decision is one random bit (eight per random
    byte, much cheaper than ``bernoulli_``); otherwise one uniform draw per element."""
    count = math.prod(shape)
    if p == 0:
        return torch.ones(shape, device=device)
    if p == 0.5:  # a table row per byte value: its eight bits as multipliers
        random_bytes = torch.randint(0, 256, ((count + 7) // 8,), device=device)
        table = (torch.arange(256, device=device).unsqueeze(1) >> torch.arange(8, device=device)) & 1
        return table.to(torch.float32).mul_(2.0).index_select(0, random_bytes).view(-1)[:count].view(shape)
    keep = torch.rand(shape, device=device) >= p
    return keep.to(torch.float32).mul_(1 / (1 - p))


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
        fused: train with the fused exact reformulation (module docstring); False trains the
            published layer order.

    Input: ``views["flow"]`` (B, 3, image_size, image_size). Output: logits (B, K).
    """

    def __init__(self, num_classes: int, stream_widths: Sequence[int] = (3, 5, 8), conv_padding: int = 2,
                 dropout: float = 0.5, image_size: int = 28, fused: bool = True):
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
        self.conv_padding, self.dropout, self.fused = conv_padding, dropout, fused

    @classmethod
    def input_spec_from(cls, options: dict[str, Any]) -> tuple[ViewSpec, ...]:
        """The ``flow`` view at ``image_size``."""
        return (ViewSpec("flow", size=(options["image_size"], options["image_size"])),)

    def classifier_keys(self) -> list[str]:
        """The fully connected layer's weight and bias."""
        return ["classifier.weight", "classifier.bias"]

    def features(self, flow: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 16 * s * s) pooled stream maps, channel-major (s = 5 at 28 x 28)."""
        features = self._fused_features(flow) if self.training and self.fused else None
        if features is None:
            maps = torch.cat([stream(flow) for stream in self.streams], dim=1)
            features = self.pool(maps).flatten(1)
        return features

    def _fused_features(self, flow: torch.Tensor) -> torch.Tensor | None:
        """Training-mode features by :class:`FusedStreams`, running statistics updated as
        ``nn.BatchNorm2d`` does; None (use the published layer order) when a batch-norm weight
        is not positive, autocast is on, or the tensors are on torch's ``meta`` device (no values
        to check the weights on; the device tests run there)."""
        if flow.device.type == "meta" or torch.is_autocast_enabled(flow.device.type):
            return None
        convs = [stream[0] for stream in self.streams]
        norms: list[nn.BatchNorm2d] = [stream[2] for stream in self.streams]
        gamma = torch.cat([norm.weight for norm in norms])
        if not bool((gamma > 0).all()):
            return None
        weight = torch.cat([conv.weight for conv in convs])
        bias = torch.cat([conv.bias for conv in convs])
        beta = torch.cat([norm.bias for norm in norms])
        map_height, map_width = (side + 2 * self.conv_padding - 2 for side in flow.shape[2:])
        pooled = ((map_height - 1) // 3 + 1, (map_width - 1) // 3 + 1)  # 3 x 3 / 3 max pooling, padding 1
        keep = dropout_multipliers((flow.shape[0], *pooled, len(gamma)), self.dropout, flow.device)
        features, mean, var = FusedStreams.apply(flow, keep, weight, bias, gamma, beta, self.conv_padding,
                                                 norms[0].eps)
        count = flow.shape[0] * map_height * map_width
        unbiased = var * (count / max(1, count - 1))
        with torch.no_grad():
            for norm, part_mean, part_var in zip(norms, mean.split([n.num_features for n in norms]),
                                                 unbiased.split([n.num_features for n in norms])):
                norm.num_batches_tracked.add_(1)
                factor = 1 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
                norm.running_mean.mul_(1 - factor).add_(part_mean, alpha=factor)
                norm.running_var.mul_(1 - factor).add_(part_var, alpha=factor)
        return features

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

