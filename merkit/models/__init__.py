"""Models, built through one registry: ``create(name, num_classes=..., **config)``."""

from merkit.models.registry import available, create, logits_of, register

__all__ = ["available", "create", "logits_of", "register"]
