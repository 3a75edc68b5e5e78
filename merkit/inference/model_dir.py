"""Model directories: what a trained model needs to be used on new footage.

Three layouts are read (each holds the resolved config, the class names and the weights; the
config names the views, through the model's input spec):

``final``
    ``model.pt`` + ``config.yaml``: one model trained on every subject with the config's fixed
    budget (``merkit train ... --all-subjects``, :func:`merkit.train.loso.train_all`).
``ensemble``
    A LOSO run directory (``config.yaml`` + ``folds/<subject>/model.pt``): its fold models,
    whose class probabilities are averaged.
``fold``
    One fold of a LOSO run (``<run>/folds/<subject>/``, with ``model.pt``): that fold's model,
    the one the run evaluated the subject's clips with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import yaml
from torch import nn

from merkit.config import RunConfig, config_from_dict
from merkit.errors import ConfigError
from merkit.models.registry import create

ModelKind = Literal["final", "ensemble", "fold"]


@dataclass(frozen=True)
class ModelDirectory:
    """A model directory, read but not loaded.

    Attributes:
        path: the directory.
        kind: ``final``, ``ensemble`` or ``fold`` (see the module docstring).
        config: the resolved run config.
        classes: class names in the models' output order.
        protocol: the label protocol's name (None when the config does not record one).
        checkpoints: the ``model.pt`` files (one, or one per fold).
    """

    path: Path
    kind: ModelKind
    config: RunConfig
    classes: tuple[str, ...]
    protocol: str | None
    checkpoints: tuple[Path, ...]


def read_run_config(path: str | Path) -> tuple[RunConfig, list[str] | None, str | None]:
    """A run's (or model directory's) ``config.yaml``: the config, the class names and the
    protocol name it records (None where it records none).

    Raises:
        ConfigError: an unreadable or invalid file.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: not a readable run config ({err})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping (a run's config.yaml)")
    protocol = raw.pop("protocol", None) or {}
    raw.pop("input_spec", None)
    config = config_from_dict(raw, source=str(path))
    classes = protocol.get("classes") if isinstance(protocol, dict) else None
    return config, classes, protocol.get("name") if isinstance(protocol, dict) else None


def read_model_dir(path: str | Path) -> ModelDirectory:
    """Find out which kind of model directory ``path`` is and read its config and classes.

    Raises:
        ConfigError: ``path`` is none of the three layouts, its config is unreadable, a LOSO run
            holds no fold model yet, or its checkpoints record other classes than its config.
    """
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path}: no such model directory")
    if (path / "config.yaml").is_file() and (path / "model.pt").is_file():
        kind: ModelKind = "final"
        config_path, checkpoints = path / "config.yaml", [path / "model.pt"]
    elif (path / "config.yaml").is_file() and (path / "folds").is_dir():
        kind, config_path = "ensemble", path / "config.yaml"
        checkpoints = sorted((path / "folds").glob("*/model.pt"))
        if not checkpoints:
            raise ConfigError(f"{path}: a LOSO run directory without fold models (folds/*/model.pt); has it finished a fold?")
    elif (path / "model.pt").is_file() and path.parent.name == "folds" and (path.parent.parent / "config.yaml").is_file():
        kind, config_path, checkpoints = "fold", path.parent.parent / "config.yaml", [path / "model.pt"]
    else:
        raise ConfigError(
            f"{path}: not a model directory; expected model.pt + config.yaml (merkit train ... --all-subjects), a LOSO "
            "run directory (config.yaml + folds/*/model.pt), or one of its folds/<subject>/ folders")
    config, classes, protocol = read_run_config(config_path)
    recorded = torch.load(checkpoints[0], map_location="cpu", weights_only=True)
    saved_classes = recorded.get("classes") if isinstance(recorded, dict) else None
    if classes is None:
        classes = saved_classes
    if classes is None:
        raise ConfigError(f"{config_path}: records no classes (protocol.classes), nor does {checkpoints[0]}")
    if saved_classes is not None and list(saved_classes) != list(classes):
        raise ConfigError(f"{checkpoints[0]} was trained on classes {list(saved_classes)}, but {config_path} names "
                          f"{list(classes)}")
    return ModelDirectory(path, kind, config, tuple(str(c) for c in classes), protocol, tuple(checkpoints))


def load_models(directory: ModelDirectory, device: str | torch.device = "cpu") -> list[nn.Module]:
    """Build the directory's models, load their weights onto ``device``, in eval mode: one per
    checkpoint, or each checkpoint's members (``train.members``) in turn.

    Raises:
        ConfigError: a checkpoint does not fit the model its config builds.
    """
    config = directory.config
    models = []
    for checkpoint in directory.checkpoints:
        saved = torch.load(checkpoint, map_location=device, weights_only=True)
        if isinstance(saved, dict) and "state_dict" in saved:  # merkit's checkpoint: the first member, then the others
            states = [saved["state_dict"]] + saved.get("members", [])
        else:  # a bare state dict
            states = [saved]
        for state in states:
            with torch.random.fork_rng():
                model = create(config.model_name, num_classes=len(directory.classes), **config.model_kwargs)
            try:
                model.load_state_dict(state)
            except RuntimeError as err:
                raise ConfigError(f"{checkpoint}: does not fit model {config.model_name} of its config ({err})") from None
            models.append(model.to(device).eval())
    return models
