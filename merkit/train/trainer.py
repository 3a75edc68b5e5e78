"""A small, deterministic trainer for in-memory view tensors.

Micro-expression datasets are small (hundreds of clips), so views are held in memory as
tensors ``(N, ...)``. Every random choice (initialisation, shuffling, augmentation) flows from
one seed, so the same seed gives the same model on CPU. The device, mixed precision and moving
views to the device are :mod:`merkit.train.device`'s; the random draws stay on the CPU whatever
the device, so they do not depend on it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from merkit.config import AugmentConfig, TrainConfig
from merkit.models.base import MERModel, logits_of
from merkit.train.augment import apply_offline_copies, augment_batch, mirror_views, offline_copies
from merkit.train.device import (Precision, Views, describe_device, model_device, place_views, resolve_device,
                                 resolve_precision, take_batch)

log = logging.getLogger(__name__)


@dataclass
class History:
    """Per-epoch training loss and, when validation data is given, validation scores; the device
    and the mixed precision the model was trained with."""

    train_loss: list[float] = field(default_factory=list)
    val_uf1: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    device: str = "cpu"
    amp: str = "none"


def to_tensors(views: dict[str, np.ndarray]) -> Views:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in views.items()}


def subset(views: Views, index: np.ndarray | torch.Tensor) -> Views:
    index = torch.as_tensor(index, dtype=torch.long)
    return {k: v[index] for k, v in views.items()}


def epoch_order(labels: torch.Tensor, sampler: str, generator: torch.Generator, copies: int = 1) -> torch.Tensor:
    """Positions drawn for one epoch, ``(N * copies,)`` for ``N = len(labels)``: position ``p`` is
    clip ``p % N`` in its offline copy ``p // N`` (``copies`` = 1 without offline expansion).

    ``shuffle``: a random permutation. ``balanced``: ``N * copies`` draws with replacement, clip
    ``i`` with probability ``1 / (K * count(labels[i]))`` for the ``K`` classes present, so every
    class is drawn equally often on average. Draws use the CPU ``generator`` whatever the device.
    """
    n = len(labels) * copies
    if sampler == "shuffle":
        return torch.randperm(n, generator=generator)
    _, inverse, counts = torch.unique(labels.cpu(), return_inverse=True, return_counts=True)
    weights = (1.0 / counts[inverse].double()).repeat(copies)
    return torch.multinomial(weights, n, replacement=True, generator=generator)


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The configured optimiser. On the CPU its multi-tensor (``foreach``) implementation: torch's
    CPU default updates one parameter at a time, and for a model of a few small parameters (STSTNet:
    14) that loop's per-tensor overhead is much of the step. Both give bit-identical updates
    (``tests/test_trainer.py``); elsewhere torch's default is kept."""
    params = [p for p in model.parameters() if p.requires_grad]
    foreach = True if params and all(p.device.type == "cpu" for p in params) else None
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, foreach=foreach)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, foreach=foreach)
    return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay, foreach=foreach)


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig):
    if config.schedule.type == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.schedule.gamma)
    if config.schedule.type == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return None


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the model's state dict, on its device."""
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


class WeightAverage:
    """The bias-corrected exponential moving average of a model's state (``train.ema``).

    After the ``t``-th :meth:`update` the average of each floating-point entry is
    ``sum_{s<=t} (1 - d) d^(t - s) w_s / (1 - d^t)`` for the entry's values ``w_s`` at update
    ``s``: the recurrence ``a_t = a_(t-1) + (w_t - a_(t-1)) (1 - d) / (1 - d^t)``, whose first
    step copies ``w_1``. Integer entries (BatchNorm's batch counter) are the last update's. The
    average lives on the model's device.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.state = _state_copy(model)
        self._floating = [key for key, value in self.state.items() if value.is_floating_point()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        weight = (1.0 - self.decay) / (1.0 - self.decay**self.updates)
        current = model.state_dict()
        torch._foreach_lerp_([self.state[key] for key in self._floating],
                             [current[key].detach() for key in self._floating], weight)
        for key, value in current.items():
            if not value.is_floating_point():
                self.state[key].copy_(value)


def train_step(model: MERModel, batch: Views, target: torch.Tensor, optimizer: torch.optim.Optimizer,
               precision: Precision, scaler: torch.amp.GradScaler | None, grad_clip: float | None) -> torch.Tensor:
    """One optimisation step on one batch; returns the (detached) loss.

    The forward pass and the loss run under the precision's autocast. With a gradient scaler
    (``amp: fp16``) the loss is scaled before ``backward``, the gradients are unscaled before
    clipping, and the step is skipped when they overflowed (the scaler then lowers its scale).

    Args:
        model: in training mode, on the batch's device.
        batch: view name -> ``(B, ...)`` tensors. target: ``(B,)`` class indices.
    """
    with precision.autocast():
        output = model(batch)
        loss = model.loss(output, target)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        if grad_clip is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
    return loss.detach()


def fit(
    model: MERModel,
    views: Views,
    labels: torch.Tensor,
    config: TrainConfig,
    *,
    seed: int,
    validate: Callable[[nn.Module], float] | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    device: str | torch.device | None = None,
) -> History:
    """Train ``model`` in place for ``config.epochs`` epochs on ``device``.

    The model, the views (when they fit in device memory; else they are streamed batch by batch)
    and the labels are moved to the device once; the model stays there.

    Args:
        model: a registered merkit model (its ``loss`` is minimised).
        views: view name -> ``(N, ...)`` tensors.
        labels: ``(N,)`` class indices.
        config: optimiser, schedule, batch size, sampler (shuffled or class-balanced epochs),
            augmentation, precision (``amp``).
        seed: seeds shuffling and augmentation.
        validate: called after every epoch with the model in eval mode; returns a score
            (higher is better). When given, the best epoch's weights are restored at the end.
            With ``config.ema`` the weight average is what is validated, kept and restored.
        on_epoch: progress callback ``(epoch, train_loss)``.
        device: where to train (default: ``config.device``).

    Returns:
        The training history (``best_epoch`` is 1-based, None without ``validate``).

    Raises:
        ConfigError: the device is not on this machine, or ``amp`` is not available on it.
    """
    device = resolve_device(config.device if device is None else device)
    precision = resolve_precision(config.amp, device)
    model.to(device)
    views = place_views(views, device)
    labels = labels.to(device)
    scaler = precision.grad_scaler()
    generator = torch.Generator().manual_seed(seed)
    optimizer = _optimizer(model, config)
    scheduler = _scheduler(optimizer, config)
    history = History(device=describe_device(device), amp=config.amp)
    best_state, best_score = None, -np.inf
    average = WeightAverage(model, config.ema) if config.ema is not None else None
    n = len(labels)
    copies = offline_copies(config.augment)  # one (the clip itself) unless offline expansion is asked for
    # without training-time augmentation a batch is a plain slice of the views
    augmenting = config.augment.model_copy(update={"test_hflip": False}) != AugmentConfig()
    for epoch in range(config.epochs):
        model.train()
        order = epoch_order(labels, config.sampler, generator, copies=len(copies))
        total, seen = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            expanded = order[start : start + config.batch_size]
            index = expanded % n
            if len(index) < 2 and n >= 2:  # BatchNorm needs two samples: a lone last sample sits this epoch out
                continue
            batch = take_batch(views, index, device)
            if augmenting:
                batch = augment_batch(apply_offline_copies(batch, expanded // n, copies), config.augment, generator)
            loss = train_step(model, batch, labels[index.to(device)], optimizer, precision, scaler, config.grad_clip)
            if average is not None:
                average.update(model)
            total += float(loss) * len(index)
            seen += len(index)
        if scheduler is not None:
            scheduler.step()
        epoch_loss = total / max(1, seen)
        history.train_loss.append(epoch_loss)
        if on_epoch is not None:
            on_epoch(epoch + 1, epoch_loss)
        if validate is not None:
            training_state = None
            if average is not None:  # validate the average; training goes on from the last step's weights
                training_state = _state_copy(model)
                model.load_state_dict(average.state)
            model.eval()  # the next epoch starts with model.train()
            score = float(validate(model))
            history.val_uf1.append(score)
            if score > best_score:
                best_score = score
                history.best_epoch = epoch + 1
                best_state = _state_copy(model)
            if training_state is not None:
                model.load_state_dict(training_state)
    if best_state is not None:
        model.load_state_dict(best_state)
    elif average is not None:
        model.load_state_dict(average.state)
    return history


@torch.no_grad()
def class_probabilities(model: nn.Module, batch: Views, mirror: bool = False) -> torch.Tensor:
    """Softmax of ``model``'s logits for one batch (float32, on the batch's device); with
    ``mirror`` (``train.augment.test_hflip``) the mean of the batch's and its mirror image's
    (:func:`merkit.train.augment.mirror_views`). The model is used in whatever mode it is in."""
    probabilities = torch.softmax(logits_of(model(batch)).float(), dim=1)
    if mirror:
        probabilities = (probabilities + torch.softmax(logits_of(model(mirror_views(batch))).float(), dim=1)) / 2
    return probabilities


@torch.no_grad()
def predict_proba(model: nn.Module, views: Views, batch_size: int = 64,
                  device: str | torch.device | None = None, mirror: bool = False) -> np.ndarray:
    """Class probabilities ``(N, K)`` in eval mode, computed in float32 (:func:`class_probabilities`).

    Args:
        model: a trained model (moved to ``device`` when one is given).
        views: view name -> ``(N, ...)`` tensors on any device; moved to the model's device
            once when they fit there, else streamed batch by batch.
        batch_size: rows per forward pass.
        device: where to compute (``auto``, ``cpu``, ``cuda:N`` ...); default: where the model is.
        mirror: average with the mirror images' probabilities (``train.augment.test_hflip``).

    Returns:
        ``(N, K)`` probabilities on the CPU.
    """
    device = model_device(model) if device is None else resolve_device(device)
    model.to(device).eval()
    views = place_views(views, device)
    n = next(iter(views.values())).shape[0]
    chunks = []
    for start in range(0, n, batch_size):
        index = torch.arange(start, min(n, start + batch_size))
        chunks.append(class_probabilities(model, take_batch(views, index, device), mirror).cpu().numpy())
    return np.concatenate(chunks)


def predict_members(models: Sequence[nn.Module], views: Views, mirror: bool = False) -> np.ndarray:
    """``(N, K)`` class probabilities (float64) averaged over ``models``: an ensemble's, or a
    fold's members (``train.members``); each model's by :func:`predict_proba`."""
    return np.mean([predict_proba(m, views, mirror=mirror) for m in models], axis=0, dtype=np.float64)
