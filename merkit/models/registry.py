"""One registry for every model: ``merkit.models.create(name, num_classes=..., **options)``.

A registered model is a :class:`~merkit.models.base.MERModel` subclass (the contract: input
spec without building, ``forward(views)``, ``loss``, ``classifier_keys``), registered by
decorating the class with :func:`register`. The package :mod:`merkit.models` imports every
model module, so importing the registry registers them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from merkit.errors import ConfigError
from merkit.models.base import MERModel, logits_of
from merkit.views import ViewSpec

__all__ = ["ModelEntry", "available", "create", "input_spec", "logits_of", "model_class", "register"]


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its name, class and one-line description."""

    name: str
    model_class: type[MERModel]
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, description: str = "") -> Callable[[type[MERModel]], type[MERModel]]:
    """Class decorator registering a :class:`MERModel` subclass under ``name``.

    Raises:
        ConfigError: ``name`` is taken, or the class is not a ``MERModel``.
    """

    def wrap(cls: type[MERModel]) -> type[MERModel]:
        if name in _REGISTRY:
            raise ConfigError(f"model {name!r} registered twice")
        if not (isinstance(cls, type) and issubclass(cls, MERModel)):
            raise ConfigError(f"model {name!r}: {cls!r} is not a MERModel subclass")
        cls.registry_name = name
        _REGISTRY[name] = ModelEntry(name, cls, description or (cls.__doc__ or "").strip().split("\n")[0])
        return cls

    return wrap


def available() -> dict[str, str]:
    """Registered model names and one-line descriptions."""
    return {n: e.description for n, e in sorted(_REGISTRY.items())}


def model_class(name: str) -> type[MERModel]:
    """The class registered as ``name``.

    Raises:
        ConfigError: unknown name (the message lists the registered models).
    """
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; available models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name].model_class


def create(name: str, num_classes: int, **options: Any) -> MERModel:
    """Build model ``name`` for ``num_classes`` classes.

    Raises:
        ConfigError: unknown model name, an option the model does not take or of the wrong
            type, or a value the model refuses.
    """
    cls = model_class(name)
    return cls(num_classes, **cls.options(options))


def input_spec(name: str, **options: Any) -> tuple[ViewSpec, ...]:
    """The views model ``name`` with ``options`` consumes, without building it.

    Raises:
        ConfigError: as :func:`create`.
    """
    return model_class(name).input_spec_for(**options)
