"""A small, deterministic trainer for in-memory view tensors.

Micro-expression datasets are small (hundreds of clips), so views are held in memory as
tensors ``(N, ...)``. Every random choice (initialisation, shuffling, augmentation) flows from
one seed, so the same seed gives the same model on CPU.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from merkit.config import TrainConfig
from merkit.models.base import MERModel, logits_of
from merkit.train.augment import augment_batch

log = logging.getLogger(__name__)

Views = dict[str, torch.Tensor]


@dataclass
class History:
    """Per-epoch training loss and, when validation data is given, validation scores."""

    train_loss: list[float] = field(default_factory=list)
    val_uf1: list[float] = field(default_factory=list)
    best_epoch: int | None = None


def to_tensors(views: dict[str, np.ndarray]) -> Views:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in views.items()}


def subset(views: Views, index: np.ndarray | torch.Tensor) -> Views:
    index = torch.as_tensor(index, dtype=torch.long)
    return {k: v[index] for k, v in views.items()}


def epoch_order(labels: torch.Tensor, sampler: str, generator: torch.Generator) -> torch.Tensor:
    """Positions of the training clips in one epoch, ``(N,)`` for ``N = len(labels)``.

    ``shuffle``: a random permutation. ``balanced``: ``N`` draws with replacement, clip ``i`` with
    probability ``1 / (K * count(labels[i]))`` for the ``K`` classes present, so every class is
    drawn equally often on average.
    """
    n = len(labels)
    if sampler == "shuffle":
        return torch.randperm(n, generator=generator)
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    weights = 1.0 / counts[inverse].double()
    return torch.multinomial(weights, n, replacement=True, generator=generator)


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig):
    if config.schedule.type == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.schedule.gamma)
    if config.schedule.type == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return None


def _autocast(config: TrainConfig):
    if config.amp == "none":
        return contextlib.nullcontext()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if config.amp == "bf16" or device == "cpu" else torch.float16
    return torch.autocast(device_type=device, dtype=dtype)


def fit(
    model: MERModel,
    views: Views,
    labels: torch.Tensor,
    config: TrainConfig,
    *,
    seed: int,
    validate: Callable[[nn.Module], float] | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> History:
    """Train ``model`` in place for ``config.epochs`` epochs.

    Args:
        model: a registered merkit model (its ``loss`` is minimised).
        views: view name -> ``(N, ...)`` tensors.
        labels: ``(N,)`` class indices.
        config: optimiser, schedule, batch size, sampler (shuffled or class-balanced epochs), augmentation.
        seed: seeds shuffling and augmentation.
        validate: called after every epoch with the model in eval mode; returns a score
            (higher is better). When given, the best epoch's weights are restored at the end.
        on_epoch: progress callback ``(epoch, train_loss)``.

    Returns:
        The training history (``best_epoch`` is 1-based, None without ``validate``).
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = _optimizer(model, config)
    scheduler = _scheduler(optimizer, config)
    history = History()
    best_state, best_score = None, -np.inf
    n = len(labels)
    for epoch in range(config.epochs):
        model.train()
        order = epoch_order(labels, config.sampler, generator)
        total, seen = 0.0, 0
        for start in range(0, n, config.batch_size):
            index = order[start : start + config.batch_size]
            if len(index) < 2 and n >= 2:  # BatchNorm needs two samples: a lone last sample sits this epoch out
                continue
            batch = augment_batch(subset(views, index), config.augment, generator)
            with _autocast(config):
                output = model(batch)
                loss = model.loss(output, labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            total += float(loss.detach()) * len(index)
            seen += len(index)
        if scheduler is not None:
            scheduler.step()
        epoch_loss = total / max(1, seen)
        history.train_loss.append(epoch_loss)
        if on_epoch is not None:
            on_epoch(epoch + 1, epoch_loss)
        if validate is not None:
            model.eval()  # the next epoch starts with model.train()
            score = float(validate(model))
            history.val_uf1.append(score)
            if score > best_score:
                best_score = score
                history.best_epoch = epoch + 1
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if best_state is not None:
        model.load_state_dict(best_state)
    return history


@torch.no_grad()
def predict_proba(model: nn.Module, views: Views, batch_size: int = 64) -> np.ndarray:
    """Class probabilities ``(N, K)`` in eval mode."""
    model.eval()
    n = next(iter(views.values())).shape[0]
    chunks = []
    for start in range(0, n, batch_size):
        index = torch.arange(start, min(n, start + batch_size))
        logits = logits_of(model(subset(views, index))).float()
        chunks.append(torch.softmax(logits, dim=1).numpy())
    return np.concatenate(chunks)
