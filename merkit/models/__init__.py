"""Models, built through one registry: ``create(name, num_classes=..., **options)``.

Importing this package imports every model module (each registers its model), so the
registry is complete whichever module is imported first.
"""

from merkit.models.base import MERModel
from merkit.models.registry import available, create, input_spec, logits_of, model_class, register

# the model modules, imported for their registration
from merkit.models import atm_gcn, baselines, htnet, madv_net, ms3d_resnet, ststnet, tsfmicro  # noqa: E402,F401  isort: skip

__all__ = ["MERModel", "available", "create", "input_spec", "logits_of", "model_class", "register"]
