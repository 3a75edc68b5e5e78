"""Label protocols as data: a table mapping an emotion string to a class, or excluding it.

A protocol names its classes in a fixed order; the class index is the position in
:attr:`Protocol.classes`. Emotion strings are matched after :func:`normalise_emotion`.

A table maps every emotion its datasets use: to a class name, or to None when the protocol
leaves that emotion out by design (``casme2-5`` leaves out fear and sadness). An emotion the
table does not name (a misspelt ``hapiness``, an ``angry`` the dataset never uses) is never
dropped silently: :func:`label_samples` lists each such sample as skipped, with the reason,
and :func:`apply_protocol` refuses it.
"""

from __future__ import annotations

from collections import Counter
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
        mapping: normalised emotion -> class name, or None for an emotion the protocol leaves
            out by design; an emotion absent from it is unknown (see :meth:`label_of`).
        datasets: the datasets the protocol is defined for (empty: any).
        description: where the protocol comes from.
    """

    name: str
    classes: tuple[str, ...]
    mapping: Mapping[str, str | None]
    datasets: tuple[str, ...] = ()
    description: str = ""
    # per-dataset mapping overrides (composite protocols map each source differently)
    per_dataset: Mapping[str, Mapping[str, str | None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for table in [self.mapping, *self.per_dataset.values()]:
            unknown = set(table.values()) - set(self.classes) - {None}
            if unknown:
                raise ProtocolError(f"protocol {self.name}: mapping targets unknown classes {sorted(unknown)}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def table(self, dataset: str | None = None) -> Mapping[str, str | None]:
        """The emotion table used for samples of ``dataset``."""
        return self.per_dataset.get(dataset, self.mapping) if dataset is not None else self.mapping

    def label_of(self, emotion: str, dataset: str | None = None) -> int | None:
        """Class index of ``emotion``, or None when the protocol leaves it out by design.

        Raises:
            ProtocolError: the table does not name ``emotion`` (a misspelling, or an emotion
                of another dataset); the message lists the emotions it knows.
        """
        table = self.table(dataset)
        key = normalise_emotion(emotion)
        if key not in table:
            known = ", ".join(sorted(table))
            source = f" for {dataset}" if dataset in self.per_dataset else ""
            raise ProtocolError(f"emotion {emotion!r} is not in protocol {self.name}'s table{source} (known: {known})")
        target = table[key]
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


def _left_out(names: Iterable[str]) -> dict[str, None]:
    return {n: None for n in names}


register_protocol(Protocol(
    name="casme2-5",
    classes=("happiness", "disgust", "repression", "surprise", "others"),
    mapping={**_identity(("happiness", "disgust", "repression", "surprise", "others")),
             **_left_out(("fear", "sadness", "anger", "contempt"))},
    datasets=("casme2", "synthme"),
    description="CASME II five classes (Yan et al. 2014); fear and sadness excluded (SynthME's anger and "
                "contempt too).",
))
register_protocol(Protocol(
    name="casme2-3",
    classes=("negative", "positive", "surprise"),
    mapping={"disgust": "negative", "repression": "negative", "happiness": "positive", "surprise": "surprise",
             **_left_out(("others", "fear", "sadness", "anger", "contempt"))},
    datasets=("casme2", "synthme"),
    description="CASME II in the MEGC2019 three classes: negative = disgust + repression.",
))

_NEGATIVE_POSITIVE_SURPRISE = ("negative", "positive", "surprise")
_SAMM_NEGATIVE = ("anger", "contempt", "disgust", "fear", "sadness")
_SAMM_3 = {**{e: "negative" for e in _SAMM_NEGATIVE}, "happiness": "positive", "surprise": "surprise", "other": None}
_CASME2_3 = {"disgust": "negative", "repression": "negative", "happiness": "positive", "surprise": "surprise",
             **_left_out(("others", "fear", "sadness"))}
_CASME3_NEGATIVE = ("anger", "disgust", "fear", "sad")

register_protocol(Protocol(
    name="samm-5",
    classes=("happiness", "anger", "contempt", "surprise", "other"),
    mapping={**_identity(("happiness", "anger", "contempt", "surprise", "other")),
             **_left_out(("disgust", "fear", "sadness"))},
    datasets=("samm",),
    description="SAMM five classes (136 clips); disgust, fear and sadness excluded.",
))
register_protocol(Protocol(
    name="samm-3",
    classes=_NEGATIVE_POSITIVE_SURPRISE,
    mapping=_SAMM_3,
    datasets=("samm",),
    description="SAMM in the MEGC2019 three classes (133 clips): negative = anger + contempt + disgust + "
                "fear + sadness.",
))
register_protocol(Protocol(
    name="samm-8",
    classes=("happiness", "surprise", "contempt", "anger", "other", "disgust", "fear", "sadness"),
    mapping=_identity(("happiness", "surprise", "contempt", "anger", "other", "disgust", "fear", "sadness")),
    datasets=("samm",),
    description="SAMM, all eight estimated emotions (159 clips), as MADV-Net uses it.",
))
register_protocol(Protocol(
    name="smic-3",
    classes=_NEGATIVE_POSITIVE_SURPRISE,
    mapping=_identity(_NEGATIVE_POSITIVE_SURPRISE),
    datasets=("smic",),
    description="SMIC-HS three classes (164 clips).",
))
register_protocol(Protocol(
    name="casme_sq-4",
    classes=("negative", "positive", "surprise", "others"),
    mapping=_identity(("negative", "positive", "surprise", "others")),
    datasets=("casme_sq",),
    description="CAS(ME)^2 micro-expressions in the four emotion categories of its coding sheet.",
))
register_protocol(Protocol(
    name="casme_sq-3",
    classes=_NEGATIVE_POSITIVE_SURPRISE,
    mapping={**_identity(_NEGATIVE_POSITIVE_SURPRISE), "others": None},
    datasets=("casme_sq",),
    description="CAS(ME)^2 micro-expressions, others excluded.",
))
register_protocol(Protocol(
    name="casme3-7",
    classes=("happy", "disgust", "fear", "anger", "sad", "surprise", "others"),
    mapping=_identity(("happy", "disgust", "fear", "anger", "sad", "surprise", "others")),
    datasets=("casme3",),
    description="CAS(ME)^3 part A, seven emotions (860 clips).",
))
register_protocol(Protocol(
    name="casme3-4",
    classes=("negative", "positive", "surprise", "others"),
    mapping={**{e: "negative" for e in _CASME3_NEGATIVE}, "happy": "positive", "surprise": "surprise",
             "others": "others"},
    datasets=("casme3",),
    description="CAS(ME)^3 part A, four classes: negative = anger + disgust + fear + sad.",
))
register_protocol(Protocol(
    name="casme3-3",
    classes=_NEGATIVE_POSITIVE_SURPRISE,
    mapping={**{e: "negative" for e in _CASME3_NEGATIVE}, "happy": "positive", "surprise": "surprise", "others": None},
    datasets=("casme3",),
    description="CAS(ME)^3 part A, three classes: the four-class protocol without others.",
))
_MEGC_LABELS = _identity(_NEGATIVE_POSITIVE_SURPRISE)  # samples of the released flow format carry these
register_protocol(Protocol(
    name="megc2019-3",
    classes=_NEGATIVE_POSITIVE_SURPRISE,
    mapping=_MEGC_LABELS,
    datasets=("casme2", "samm", "smic"),
    per_dataset={"casme2": {**_CASME2_3, **_MEGC_LABELS}, "samm": {**_SAMM_3, **_MEGC_LABELS}, "smic": _MEGC_LABELS},
    description="MEGC2019 composite (See et al., FG 2019): CASME II, SAMM and SMIC-HS in negative / positive / "
                "surprise; each source dataset mapped by its own table.",
))


@dataclass
class Labelled:
    """What :func:`label_samples` makes of a list of samples.

    Attributes:
        samples: the samples the protocol keeps, each with its ``label`` set.
        left_out: emotion -> number of samples the protocol leaves out by design.
        skipped: one line per sample whose emotion the protocol's table does not name
            (file, row, sample id and the reason).
    """

    samples: list
    left_out: dict[str, int]
    skipped: list[str]


def label_samples(samples: Iterable, protocol: Protocol | str, *, strict: bool = False) -> Labelled:
    """Label ``samples`` under ``protocol``, reporting every sample that is not kept.

    Args:
        strict: refuse a sample whose emotion the protocol's table does not name (the
            loaders' ``strict`` policy) instead of listing it in ``skipped``.

    Raises:
        ProtocolError: the protocol is defined for other datasets than the samples', or
            ``strict`` and an emotion the table does not name.
    """
    if isinstance(protocol, str):
        protocol = get_protocol(protocol)
    kept, left_out, skipped = [], Counter(), []
    for sample in samples:
        if protocol.datasets and sample.dataset not in protocol.datasets:
            raise ProtocolError(
                f"protocol {protocol.name} is defined for {', '.join(protocol.datasets)}, "
                f"not for sample {sample.sample_id}"
            )
        try:
            label = protocol.label_of(sample.emotion, sample.dataset)
        except ProtocolError as err:
            meta = getattr(sample, "meta", {}) or {}
            place = ", ".join(str(p) for p in (meta.get("file"), f"row {meta['row']}" if meta.get("row") else None) if p)
            skipped.append(f"{place + ' ' if place else ''}({sample.sample_id}): {err}")
            continue
        if label is None:
            left_out[normalise_emotion(sample.emotion)] += 1
        else:
            kept.append(sample.with_label(label))
    if strict and skipped:
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        raise ProtocolError(skipped[0] + more)
    return Labelled(kept, dict(sorted(left_out.items())), skipped)


def apply_protocol(samples: Iterable, protocol: Protocol | str) -> list:
    """Samples the protocol keeps, each with its ``label`` set; emotions the protocol leaves
    out by design are dropped.

    Raises:
        ProtocolError: the protocol is defined for other datasets than the samples', or a
            sample's emotion is not in its table (use :func:`label_samples` to list such
            samples as skipped instead).
    """
    return label_samples(samples, protocol, strict=True).samples
