"""Typed errors. Every error names the file, row or sample at fault and what was expected."""

from __future__ import annotations

from collections.abc import Iterable


class MerkitError(Exception):
    """Base class of every error merkit raises on purpose."""


class DatasetError(MerkitError):
    """A dataset root or its layout is missing or not what the loader expects."""


class AnnotationError(DatasetError):
    """A row of an annotation file is malformed.

    Attributes:
        file: the annotation file.
        row: 1-based spreadsheet row (header included) or None when not row-specific.
    """

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None):
        where = ""
        if file is not None:
            where = f"{file}"
            if row is not None:
                where += f", row {row}"
            where += ": "
        super().__init__(where + message)
        self.file = file
        self.row = row


class MissingFramesError(DatasetError):
    """Frame files referenced by an annotation are absent on disk."""


class ProtocolError(MerkitError):
    """Unknown protocol, or a protocol that does not fit the dataset."""


class ConfigError(MerkitError):
    """A configuration value is unknown or out of range."""


class PreprocessError(MerkitError):
    """A preprocessing step could not produce a view for a sample."""


class FaceNotFoundError(PreprocessError):
    """No face was detected in a frame of a sample."""


class ModelInputError(MerkitError):
    """A model received views that do not match its input spec."""


class LeakageError(MerkitError):
    """A subject appears in both the training and the test part of a fold."""


class WeightsNotFoundError(MerkitError):
    """A feature needs user-supplied weights that were not found on disk."""


class MetricsError(MerkitError):
    """Labels or a predictions table given to a metric are malformed.

    Raised for empty input, ``y_true``/``y_pred`` of different lengths, labels outside the
    protocol's classes, and a predictions file lacking a required column.
    """


def check_choice(what: str, value: object, choices: Iterable[object], *,
                 error: type[MerkitError] = ConfigError) -> None:
    """Raise ``error`` unless ``value`` is one of ``choices``.

    The one check for options with a fixed set of values (model variants, flow methods ...).

    Args:
        what: the option as the user knows it, e.g. ``"tsfmicro option 'fusion'"``.
        value: the value given.
        choices: the allowed values.
        error: the error type to raise (a :class:`MerkitError`; ``ConfigError`` by default).

    Raises:
        MerkitError: of type ``error``, naming ``what``, ``value`` and every choice.
    """
    allowed = tuple(choices)
    if value not in allowed:
        raise error(f"{what} must be one of {', '.join(repr(c) for c in allowed)}; got {value!r}")
