"""One registry for every model: ``merkit.models.create(name, num_classes=..., **config)``.

A registered model is a plain ``torch.nn.Module`` with

* ``input_spec``: a tuple of :class:`~merkit.views.ViewSpec` naming the views it consumes;
* ``forward(views: dict[str, Tensor])`` returning logits ``(B, K)`` or a dict holding at least
  ``"logits"`` (plus auxiliary outputs);
* optionally ``loss(output, target) -> Tensor``; without it the trainer uses cross-entropy on
  the logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from merkit.errors import ConfigError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, description: str = "") -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a builder ``builder(num_classes=..., **config) -> nn.Module``."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ConfigError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, builder, description or (builder.__doc__ or "").strip().split("\n")[0])
        return builder

    return wrap


def _load_all() -> None:
    # importing the model modules registers them
    from merkit.models import baselines, tsfmicro  # noqa: F401
    import importlib

    for optional in ("atm_gcn", "ms3d_resnet", "madv_net", "ststnet", "htnet"):
        try:
            importlib.import_module(f"merkit.models.{optional}")
        except ModuleNotFoundError as err:  # a model file not written yet
            if err.name != f"merkit.models.{optional}":
                raise


def available() -> dict[str, str]:
    """Registered model names and one-line descriptions."""
    _load_all()
    return {n: e.description for n, e in sorted(_REGISTRY.items())}


def create(name: str, num_classes: int, **config: Any) -> nn.Module:
    """Build model ``name`` for ``num_classes`` classes.

    Raises:
        ConfigError: unknown model name or an option the model does not take.
    """
    _load_all()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    try:
        model = _REGISTRY[name].builder(num_classes=num_classes, **config)
    except TypeError as err:
        raise ConfigError(f"model {name!r}: {err}") from err
    if not hasattr(model, "input_spec"):
        raise ConfigError(f"model {name!r} declares no input_spec")
    return model


def input_spec(name: str, **config: Any) -> tuple:
    """The views model ``name`` with ``config`` consumes, without touching the global RNG.

    Raises:
        ConfigError: as :func:`create`.
    """
    with torch.random.fork_rng():
        return tuple(create(name, num_classes=2, **config).input_spec)


def logits_of(output: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
    """The ``(B, K)`` logits of a model output (a tensor or a dict with ``"logits"``)."""
    return output["logits"] if isinstance(output, dict) else output
