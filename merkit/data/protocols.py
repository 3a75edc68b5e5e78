"""Label protocols as data: a table mapping an emotion string to a class, or excluding it.

A protocol names its classes in a fixed order; the class index is the position in
:attr:`Protocol.classes`. Emotion strings are matched after :func:`normalise_emotion`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from merkit.errors import ProtocolError


def normalise_emotion(emotion: str) -> str:
    """Lower-case, stripped, inner whitespace collapsed (``' Others '`` -> ``'others'``)."""
    return " ".join(str(emotion).strip().lower().split())


@dataclass(frozen=True)
class Protocol:
    """A label mapping.

    Attributes:
        name: protocol id, e.g. ``casme2-5``.
        classes: class names in index order.
        mapping: normalised emotion -> class name; emotions absent from it are excluded.
        datasets: the datasets the protocol is defined for (empty: any).
        description: where the protocol comes from.
    """

    name: str
    classes: tuple[str, ...]
    mapping: Mapping[str, str]
    datasets: tuple[str, ...] = ()
    description: str = ""
    # per-dataset mapping overrides (composite protocols map each source differently)
    per_dataset: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for table in [self.mapping, *self.per_dataset.values()]:
            unknown = set(table.values()) - set(self.classes)
            if unknown:
                raise ProtocolError(f"protocol {self.name}: mapping targets unknown classes {sorted(unknown)}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def label_of(self, emotion: str, dataset: str | None = None) -> int | None:
        """Class index of ``emotion`` or None when the protocol excludes it."""
        table = self.per_dataset.get(dataset, self.mapping) if dataset is not None else self.mapping
        target = table.get(normalise_emotion(emotion))
        return None if target is None else self.classes.index(target)


PROTOCOLS: dict[str, Protocol] = {}


def register_protocol(protocol: Protocol) -> Protocol:
    if protocol.name in PROTOCOLS:
        raise ProtocolError(f"protocol {protocol.name} registered twice")
    PROTOCOLS[protocol.name] = protocol
    return protocol


def get_protocol(name: str) -> Protocol:
    """Look up a protocol by name.

    Raises:
        ProtocolError: unknown name (the message lists the known ones).
    """
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ProtocolError(f"unknown protocol {name!r}; known: {', '.join(sorted(PROTOCOLS))}") from None


def _identity(names: Iterable[str]) -> dict[str, str]:
    return {n: n for n in names}


register_protocol(Protocol(
    name="casme2-5",
    classes=("happiness", "disgust", "repression", "surprise", "others"),
    mapping=_identity(("happiness", "disgust", "repression", "surprise", "others")),
    datasets=("casme2",),
    description="CASME II five classes (Yan et al. 2014); fear and sadness excluded.",
))
register_protocol(Protocol(
    name="casme2-3",
    classes=("negative", "positive", "surprise"),
    mapping={"disgust": "negative", "repression": "negative", "happiness": "positive", "surprise": "surprise"},
    datasets=("casme2",),
    description="CASME II in the MEGC2019 three classes: negative = disgust + repression.",
))


def apply_protocol(samples: Iterable, protocol: Protocol | str) -> list:
    """Samples the protocol keeps, each with its ``label`` set; the others are dropped.

    Raises:
        ProtocolError: the protocol is defined for other datasets than the samples'.
    """
    if isinstance(protocol, str):
        protocol = get_protocol(protocol)
    kept = []
    for sample in samples:
        if protocol.datasets and sample.dataset not in protocol.datasets:
            raise ProtocolError(
                f"protocol {protocol.name} is defined for {', '.join(protocol.datasets)}, "
                f"not for sample {sample.sample_id}"
            )
        label = protocol.label_of(sample.emotion, sample.dataset)
        if label is not None:
            kept.append(sample.with_label(label))
    return kept
