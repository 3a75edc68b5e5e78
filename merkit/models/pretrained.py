"""Pre-train -> fine-tune: start a model from the weights of an earlier run.

MADV-Net (paper 002) pre-trains on SMIC and fine-tunes on CASME II, CAS(ME)^2 and SAMM; any
merkit model can do the same. The first stage's checkpoint is a LOSO fold's ``model.pt``
(``{"state_dict": ..., "model": <model config>, "classes": [...]}``, written by
:mod:`merkit.train.loso`) or a plain ``state_dict``. Classifier heads sized for the first
stage's classes cannot be reused when the classes change: with another count they are skipped
by shape; with the same count, the checkpoint's ``classes`` decide: the same names in another
order are re-ordered, other names keep the heads' fresh initialisation. The class-indexed
entries are the ones the model names (:meth:`~merkit.models.base.MERModel.classifier_keys`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch

from merkit.errors import ConfigError, WeightsNotFoundError
from merkit.models.base import MERModel

log = logging.getLogger(__name__)


def read_checkpoint(checkpoint_path: str | Path) -> tuple[dict[str, torch.Tensor], list[str] | None]:
    """The tensors of a checkpoint file (LOSO ``model.pt`` format or a plain ``state_dict``) and
    the class names it records (None for a plain ``state_dict``).

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
    classes = checkpoint.get("classes") if state is not checkpoint else None
    return state, (list(classes) if classes is not None else None)


def load_pretrained(
    model: MERModel,
    checkpoint_path: str | Path,
    *,
    skip_head: bool = True,
    classes: Sequence[str] | None = None,
) -> list[str]:
    """Copy a first-stage checkpoint's weights into ``model`` (in place).

    Every entry of the model's ``state_dict`` must be in the checkpoint with the same shape,
    except, when ``skip_head`` is true, classifier heads sized for another number of classes:
    entries the model names in ``classifier_keys()`` whose shapes differ in the first (output)
    dimension only. Those keep the model's current values. Any other difference (a position embedding of another input size, a layer
    of another width) and checkpoint entries the model does not have are errors, so weights of
    another architecture never load partially by accident.

    When the checkpoint records its classes and ``classes`` (the fine-tuning run's) are given,
    heads of the same size are matched by name: the same classes in another order have the rows
    of the heads re-ordered; different class names keep the heads fresh (as for another count).
    A plain ``state_dict`` records no classes and loads by shape alone.

    Args:
        model: the freshly built model to fine-tune.
        checkpoint_path: ``model.pt`` of a LOSO fold or a file holding a plain ``state_dict``.
        skip_head: skip heads that do not fit the new classes instead of raising.
        classes: the class names ``model`` is trained on, in its output order.

    Returns:
        The state-dict keys that were loaded (re-ordered heads included), in the model's order.

    Raises:
        WeightsNotFoundError: the checkpoint file does not exist.
        ConfigError: unreadable file, keys missing on either side, a shape mismatch that is not
            a head's, or any head that cannot be reused with ``skip_head=False`` (the message
            names the keys or classes).
    """
    source, source_classes = read_checkpoint(checkpoint_path)
    target = model.state_dict()
    missing = [k for k in target if k not in source]
    unexpected = [k for k in source if k not in target]
    if missing or unexpected:
        raise ConfigError(f"{checkpoint_path} does not fit this model: missing {_few(missing)}, unexpected {_few(unexpected)}; "
                          "was it trained with another model or variant?")
    head_keys = model.classifier_keys()
    mismatched = [k for k in target if source[k].shape != target[k].shape]
    not_heads = [k for k in mismatched
                 if k not in head_keys or not _differs_in_outputs_only(source[k].shape, target[k].shape)]
    if not_heads or (mismatched and not skip_head):
        bad = not_heads or mismatched
        hint = "the model was built with other sizes" if not_heads else "pass skip_head=True to keep fresh heads"
        raise ConfigError(f"{checkpoint_path}: shapes differ for {_few(bad)} (e.g. {bad[0]}: checkpoint "
                          f"{tuple(source[bad[0]].shape)}, model {tuple(target[bad[0]].shape)}); {hint}")
    source = dict(source)
    if not mismatched and classes is not None and source_classes is not None and list(classes) != source_classes:
        if sorted(classes) == sorted(source_classes):
            order = torch.tensor([source_classes.index(name) for name in classes])
            for key in head_keys:
                source[key] = source[key].index_select(0, order)
            log.info("pre-trained %s: heads re-ordered from classes %s to %s", checkpoint_path, source_classes, list(classes))
        elif skip_head:
            mismatched = list(head_keys)
        else:
            raise ConfigError(f"{checkpoint_path} was trained on classes {source_classes}, this run has {list(classes)}; "
                              "pass skip_head=True to keep fresh heads")
    loaded = [k for k in target if k not in mismatched]
    model.load_state_dict({k: source[k] for k in loaded}, strict=False)
    if mismatched:
        log.info("pre-trained %s: kept fresh weights for %d class-indexed entries: %s",
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
