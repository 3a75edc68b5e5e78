"""Losses the models use: focal loss and class-balancing weights.

Focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017), in its multi-class
softmax form, for one sample with true class ``y`` and predicted probability ``p_y``:

    FL = -alpha_y * (1 - p_y) ** gamma * log(p_y)

``gamma`` (focusing) down-weights well-classified samples; ``alpha`` (class balancing) weights
each class. With ``gamma = 0`` and no ``alpha`` it is exactly the cross-entropy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from merkit.errors import ConfigError, ModelInputError, check_choice

_REDUCTIONS = ("mean", "sum", "none")


class FocalLoss(nn.Module):
    """Multi-class focal loss on logits.

    Args:
        alpha: class-balancing weight. ``None``: every class 1. A float: the same weight for every
            class (the multi-class reading of the binary alpha; it scales the loss). A sequence
            of K non-negative floats: the weight of each class (see :func:`inverse_frequency_alpha`).
        gamma: focusing parameter, >= 0 (0 gives the alpha-weighted cross-entropy).
        reduction: ``"mean"`` (plain mean over the batch, not divided by the sum of the alphas as
            ``F.cross_entropy(weight=...)`` does), ``"sum"`` or ``"none"`` (per-sample ``(B,)``).

    Shapes: ``forward(logits (B, K), target (B,) long) -> ()`` (or ``(B,)`` with ``"none"``).
    The loss is computed in float32 whatever the logits' dtype (autocast-safe).

    Raises:
        ConfigError: negative alpha or gamma, an unknown reduction.
        ModelInputError: a per-class alpha whose length is not K, targets outside ``[0, K)``.
    """

    def __init__(self, alpha: float | Sequence[float] | None = None, gamma: float = 2.0, reduction: str = "mean"):
        super().__init__()
        if gamma < 0:
            raise ConfigError(f"focal loss gamma must be >= 0, got {gamma}")
        check_choice("focal loss reduction", reduction, _REDUCTIONS)
        weights = None if alpha is None else torch.as_tensor(alpha, dtype=torch.float32).reshape(-1)
        if weights is not None and (weights < 0).any():
            raise ConfigError(f"focal loss alpha must be non-negative, got {alpha}")
        self.gamma = float(gamma)
        self.reduction = reduction
        self.per_class = weights is not None and not isinstance(alpha, (int, float))
        self.register_buffer("alpha", weights, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 2:
            raise ModelInputError(f"focal loss expects logits (B, K), got shape {tuple(logits.shape)}")
        num_classes = logits.shape[1]
        if target.numel() and (target.min() < 0 or target.max() >= num_classes):
            raise ModelInputError(f"focal loss targets must lie in [0, {num_classes}), got {target.tolist()}")
        log_prob = F.log_softmax(logits.float(), dim=1).gather(1, target.long()[:, None]).squeeze(1)
        # 1 - p computed as -expm1(log p): exact near p = 1; clamped so that fractional gamma has
        # a finite gradient when p rounds to 1.
        one_minus_p = (-torch.expm1(log_prob)).clamp(min=1e-12)
        loss = -(one_minus_p**self.gamma) * log_prob
        if self.alpha is not None:
            if self.per_class and self.alpha.numel() != num_classes:
                raise ModelInputError(
                    f"focal loss has {self.alpha.numel()} class weights (alpha) but the logits have {num_classes} classes"
                )
            loss = loss * (self.alpha[target.long()] if self.per_class else self.alpha[0])
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss


def inverse_frequency_alpha(class_counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Class-balancing weights ``alpha_k`` proportional to ``1 / n_k``, normalised to mean 1.

    Args:
        class_counts: ``(K,)`` number of training samples of each class.

    Returns:
        ``(K,)`` float32 weights; a class absent from the training set gets weight 0.

    Raises:
        ConfigError: negative counts or no samples at all.
    """
    counts = torch.as_tensor(class_counts, dtype=torch.float32).reshape(-1)
    if (counts < 0).any() or counts.sum() <= 0:
        raise ConfigError(f"class counts must be non-negative with at least one sample, got {counts.tolist()}")
    present = counts > 0
    weights = torch.zeros_like(counts)
    weights[present] = 1.0 / counts[present]
    return weights * present.sum() / weights.sum()
