"""Pre-train -> fine-tune: start a model from the weights of an earlier run.

MADV-Net (paper 002) pre-trains on SMIC and fine-tunes on CASME II, CAS(ME)^2 and SAMM; any
merkit model can do the same. The first stage's checkpoint is a LOSO fold's ``model.pt``
(``{"state_dict": ..., "model": <model config>, "classes": [...]}``, written by
:mod:`merkit.train.loso`) or a plain ``state_dict``. Classifier heads sized for the first
stage's classes cannot be reused when the class count changes; they are skipped and keep their
fresh initialisation.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from merkit.errors import ConfigError, WeightsNotFoundError

log = logging.getLogger(__name__)


def read_state_dict(checkpoint_path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (LOSO ``model.pt`` format or a plain ``state_dict``).

    Raises:
        WeightsNotFoundError: the file does not exist.
        ConfigError: the file is not a torch checkpoint holding a state dict.
    """
    path = Path(checkpoint_path)
    if not path.is_file():
        raise WeightsNotFoundError(f"pre-trained checkpoint {path} not found; give the model.pt of a finished run "
                                   "(runs/<name>/folds/<fold>/model.pt) or a saved state_dict")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for a corrupt or foreign file
        raise ConfigError(f"{path}: not a readable torch checkpoint ({err})") from err
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path}: expected a state_dict or a dict with a 'state_dict' of tensors")
    return state


def load_pretrained(model: nn.Module, checkpoint_path: str | Path, *, skip_head: bool = True) -> list[str]:
    """Copy a first-stage checkpoint's weights into ``model`` (in place).

    Every entry of the model's ``state_dict`` must be in the checkpoint with the same shape,
    except, when ``skip_head`` is true, classifier heads sized for another number of classes:
    entries whose shapes differ in the first (output) dimension only. Those keep the model's
    current values. Any other difference (a position embedding of another input size, a layer
    of another width) and checkpoint entries the model does not have are errors, so weights of
    another architecture never load partially by accident.

    Args:
        model: the freshly built model to fine-tune.
        checkpoint_path: ``model.pt`` of a LOSO fold or a file holding a plain ``state_dict``.
        skip_head: skip entries whose shape differs instead of raising.

    Returns:
        The state-dict keys that were loaded, in the model's order.

    Raises:
        WeightsNotFoundError: the checkpoint file does not exist.
        ConfigError: unreadable file, keys missing on either side, a shape mismatch that is not
            a head's, or any shape mismatch with ``skip_head=False`` (the message names the keys).
    """
    source = read_state_dict(checkpoint_path)
    target = model.state_dict()
    missing = [k for k in target if k not in source]
    unexpected = [k for k in source if k not in target]
    if missing or unexpected:
        raise ConfigError(f"{checkpoint_path} does not fit this model: missing {_few(missing)}, unexpected {_few(unexpected)}; "
                          "was it trained with another model or variant?")
    mismatched = [k for k in target if source[k].shape != target[k].shape]
    not_heads = [k for k in mismatched if not _differs_in_outputs_only(source[k].shape, target[k].shape)]
    if not_heads or (mismatched and not skip_head):
        bad = not_heads or mismatched
        hint = "the model was built with other sizes" if not_heads else "pass skip_head=True to keep fresh heads"
        raise ConfigError(f"{checkpoint_path}: shapes differ for {_few(bad)} (e.g. {bad[0]}: checkpoint "
                          f"{tuple(source[bad[0]].shape)}, model {tuple(target[bad[0]].shape)}); {hint}")
    loaded = [k for k in target if k not in mismatched]
    model.load_state_dict({k: source[k] for k in loaded}, strict=False)
    if mismatched:
        log.info("pre-trained %s: kept fresh weights for %d entries whose shape differs: %s",
                 checkpoint_path, len(mismatched), ", ".join(mismatched))
    return loaded


def _differs_in_outputs_only(source: torch.Size, target: torch.Size) -> bool:
    """True for a head's weight ``(K, ...)`` or bias ``(K,)`` resized to another class count."""
    return len(source) == len(target) >= 1 and source[1:] == target[1:]


def _few(keys: list[str], limit: int = 5) -> str:
    if not keys:
        return "none"
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
