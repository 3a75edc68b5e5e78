"""Deterministic repairs of inconsistent frame numbers in annotation rows, each one recorded.

Every loader takes an ``on_error`` policy:

``repair`` (the default)
    keep every row that has a usable label. A row whose frame numbers contradict each other
    or the frames on disk is repaired by the rules of :data:`RULES`, tried in that order;
    every changed value is recorded as a :class:`Fix` (file, row, sample id, field, old value,
    new value, rule). A row no rule can repair (its clip folder is missing, a cell is not a
    number) is still an error.
``strict``
    the annotation as released: the first inconsistent row is an error.
``skip``
    inconsistent or unreadable rows are left out, one line each in ``LoadResult.skipped``.

The rules only look at the row, the frames on disk and statistics of the same sheet
(:class:`SheetStats`), so the same files always give the same repairs. Reading conventions
that are not repairs (an apex written ``/``, an emotion spelling, uncertain AUs) apply under
every policy and are recorded the same way.

Two kinds of frame folder differ in what a rule may assume (:data:`FolderKind`):

* ``clip``: the folder holds one clip, from its onset to its offset (CASME II, SAMM): its
  first and last frames are the clip's bounds.
* ``recording``: the folder holds a whole recording with several coded expressions
  (CAS(ME)^3 materials, CAS(ME)^2 videos): its bounds say nothing about one clip's.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Literal, Mapping

from merkit.data.sample import FrameSource

FolderKind = Literal["clip", "recording"]
FIELDS = ("onset", "apex", "offset")

#: rule id -> what it does; shown by ``merkit datasets list`` and in docs/decisions.md.
RULES: dict[str, str] = {
    "known-fix": "a documented error of one release, corrected from the named source; applied only while "
                 "the row still shows the error and the replacement frame is on disk",
    "first-frame": "an onset or apex of 0 where the frames are numbered from 1 is the first frame",
    "offset-not-coded": "an offset left empty or 0 ('not coded'): clip folder -> its last frame; recording "
                        "folder -> onset + the sheet's median onset-to-offset length (at least the apex, at "
                        "most the last frame on disk)",
    "digit-typo": "one number contradicts the other two or is not on disk, and exactly one single-digit slip "
                  "(one digit replaced, or two neighbouring digits swapped) gives a value that orders the row "
                  "and is on disk (an onset or offset slip must also keep the clip no longer than 95 % of the "
                  "sheet's consistent clips): that value",
    "swapped-onset-offset": "onset after offset, both on disk, no unique typo, and the apex (if any) between "
                            "them the other way round: onset and offset swapped",
    "apex-unreliable": "an apex outside [onset, offset] or not on disk, with no unique typo: apex_frame=None; "
                       "the run's apex policy decides (annotated-or-middle: the middle frame, spotted: the "
                       "frame spotted within the clip)",
    "onset-unreliable": "an onset after the apex and offset, or not on disk, with no unique typo: clip folder "
                        "-> its first frame; recording folder -> apex - the sheet's median onset-to-apex time "
                        "(offset - median length without apex), the nearest frame on disk",
    "offset-unreliable": "an offset before the onset or apex, or not on disk, with no unique typo: clip folder "
                         "-> its last frame; an offset past the recording -> its last frame; otherwise onset + "
                         "the sheet's median length, as for offset-not-coded",
}

#: reading conventions that apply under every policy (recorded as fixes, not repairs)
READINGS: dict[str, str] = {
    "apex-not-annotated": "an apex cell the release uses for 'no apex' ('/', '-1', empty): apex_frame=None",
    "emotion-spelling": "a known variant spelling of an emotion read as the release's own word",
    "au-alternatives": "an AU term 'A or B' (the coder was unsure): left out of aus unless au_or='all'",
}


@dataclass(frozen=True)
class Change:
    """One changed value of a row, before the row's file, number and sample id are attached."""

    field: str
    old: Any
    new: Any
    rule: str
    detail: str = ""


@dataclass(frozen=True)
class Fix:
    """A recorded change to an annotation row (a repair or a reading convention).

    Attributes:
        file: the annotation file (None when the loader has none, e.g. SMIC).
        row: 1-based spreadsheet row, header included (None when not row-based).
        sample_id: ``dataset/subject/clip_id`` of the sample the row became.
        field: what changed (``onset``, ``apex``, ``offset``, ``emotion``, ``aus``, ...).
        old, new: the value as annotated and as used (None = no value).
        rule: the rule id (:data:`RULES`, :data:`READINGS` or a loader's own).
        detail: one sentence saying why, for people.
    """

    file: str | None
    row: int | None
    sample_id: str | None
    field: str
    old: Any
    new: Any
    rule: str
    detail: str = ""

    @classmethod
    def of(cls, change: Change, *, file: str | None, row: int | None, sample_id: str | None) -> "Fix":
        return cls(file, row, sample_id, change.field, change.old, change.new, change.rule, change.detail)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def __str__(self) -> str:
        place = ", ".join(str(p) for p in (self.file, None if self.row is None else f"row {self.row}") if p)
        who = f" ({self.sample_id})" if self.sample_id else ""
        detail = f": {self.detail}" if self.detail else ""
        return f"{place}{who}: {self.field} {self.old!r} -> {self.new!r} [{self.rule}]{detail}"


@dataclass(frozen=True)
class SheetStats:
    """Lengths of the clips a sheet codes consistently (0 < onset <= apex <= offset), in frames.

    Attributes:
        median_length: median of offset - onset.
        median_rise: median of apex - onset (rows with an apex).
        long_length: the 95th percentile of offset - onset (nearest rank): the longest a
            repaired clip may be.
        rows: how many consistent rows the figures come from.
    """

    median_length: int
    median_rise: int
    long_length: int
    rows: int

    @classmethod
    def from_rows(cls, numbers: Iterable[Mapping[str, int | None]]) -> "SheetStats | None":
        """Statistics of the consistent rows among ``numbers`` (dicts onset/apex/offset);
        None when fewer than three rows are consistent."""
        lengths, rises = [], []
        for row in numbers:
            onset, apex, offset = (row.get(f) for f in FIELDS)
            if onset is None or offset is None or not 0 < onset <= offset:
                continue
            if apex is not None:
                if not onset <= apex <= offset:
                    continue
                rises.append(apex - onset)
            lengths.append(offset - onset)
        if len(lengths) < 3:
            return None
        ordered = sorted(lengths)
        long_length = ordered[math.ceil(0.95 * len(ordered)) - 1]
        rise = int(statistics.median_low(rises)) if rises else int(statistics.median_low(lengths)) // 2
        return cls(int(statistics.median_low(lengths)), rise, long_length, len(lengths))


def ordered(numbers: Mapping[str, int | None]) -> bool:
    """onset <= apex <= offset (apex may be None), all given."""
    onset, apex, offset = (numbers[f] for f in FIELDS)
    if onset is None or offset is None or onset > offset:
        return False
    return apex is None or onset <= apex <= offset


def problem(numbers: Mapping[str, int | None], frames: FrameSource) -> tuple[str, str] | None:
    """The field to repair first and why, or None when the row is ordered and on disk.

    Args:
        numbers: onset, apex (may be None) and offset, all given.

    Returns:
        (field, reason) with field ``onset``, ``apex``, ``offset`` or ``swap``.
    """
    onset, apex, offset = (numbers[f] for f in FIELDS)
    if onset > offset:
        if apex is None:
            # the frame folder decides which of the two is wrong when only one is on disk
            if frames.has(onset) and not frames.has(offset):
                return "offset", f"offset {offset} is before onset {onset} and not on disk"
            if frames.has(offset) and not frames.has(onset):
                return "onset", f"onset {onset} is after offset {offset} and not on disk"
            return "swap", f"onset {onset} is after offset {offset}"
        if apex >= onset:
            return "offset", f"offset {offset} is before onset {onset} and apex {apex}"
        if apex <= offset:
            return "onset", f"onset {onset} is after apex {apex} and offset {offset}"
        return "swap", f"onset {onset} is after apex {apex}, which is after offset {offset}"
    if apex is not None and not onset <= apex <= offset:
        side = "before the onset" if apex < onset else "after the offset"
        return "apex", f"apex {apex} is {side} ({onset}..{offset})"
    for field in ("onset", "offset", "apex"):
        value = numbers[field]
        if value is not None and not frames.has(value):
            return field, f"{field} {value} is not on disk (frames {frames.numbers[0]}..{frames.numbers[-1]})"
    return None


def repair_frames(numbers: dict[str, int | None], frames: FrameSource, *, folder: FolderKind,
                  stats: SheetStats | None) -> list[Change]:
    """Repair ``numbers`` (keys onset, apex, offset; offset None = not coded) in place.

    The rules of :data:`RULES` are tried until :func:`problem` finds nothing; each field is
    repaired at most once, so a row no rule can mend is left for :func:`checked_sample` to
    report.

    Args:
        numbers: the row's frame numbers.
        frames: the clip's (or recording's) frames on disk.
        folder: ``clip`` or ``recording`` (see the module doc).
        stats: the sheet's clip lengths; the rules that need them do not apply without.

    Returns:
        one :class:`Change` per changed value, in the order applied.
    """
    changes: list[Change] = []

    def change(field: str, new: int | None, rule: str, detail: str) -> None:
        changes.append(Change(field, numbers[field], new, rule, detail))
        numbers[field] = new

    if frames.numbers[0] == 1:
        for field in ("onset", "apex"):
            if numbers[field] == 0:
                change(field, 1, "first-frame", "frames are numbered from 1; 0 means the first frame")
    if numbers["offset"] is None or (numbers["offset"] == 0 and numbers["onset"] > 0):
        value = _offset_estimate(numbers, frames, folder, stats)
        if value is None:
            return changes  # left for checked_sample to report
        change("offset", value, "offset-not-coded", _offset_detail(folder, stats))
    repaired: set[str] = set()
    while (found := problem(numbers, frames)) is not None:
        field, reason = found
        if field in repaired or (field == "swap" and repaired & {"onset", "offset"}):
            break  # every field is repaired at most once
        typo = _unique_typo(field, numbers, frames, stats)
        if typo is not None:
            target, value = typo
            change(target, value, "digit-typo", f"{reason}; {value} is the only single-digit slip of "
                                                f"{numbers[target]} that fits")
            repaired.add(target)
        elif field == "swap":
            if not _swap_fits(numbers, frames):
                break
            onset, offset = numbers["onset"], numbers["offset"]
            change("onset", offset, "swapped-onset-offset", reason)
            change("offset", onset, "swapped-onset-offset", reason)
            repaired.update(("onset", "offset"))
        else:
            value = _fallback(field, numbers, frames, folder, stats)
            if value is _NONE or value == numbers[field]:
                break
            change(field, value, f"{field}-unreliable", f"{reason}; no unique typo: {_fallback_detail(field, folder)}")
            repaired.add(field)
    return changes


_NONE = object()


def _offset_detail(folder: FolderKind, stats: SheetStats | None) -> str:
    if folder == "clip":
        return "the clip folder's last frame"
    return f"onset + the sheet's median length ({stats.median_length if stats else '?'} frames), nearest frame on disk"


def _fallback_detail(field: str, folder: FolderKind) -> str:
    if field == "apex":
        return "apex_frame=None, the run's apex policy decides"
    if folder == "clip":
        return "the clip folder's " + ("first" if field == "onset" else "last") + " frame"
    return "estimated from the sheet's median lengths, nearest frame on disk"


def _offset_estimate(numbers: Mapping[str, int | None], frames: FrameSource, folder: FolderKind,
                     stats: SheetStats | None) -> int | None:
    onset, apex = numbers["onset"], numbers["apex"]
    low = max(onset, apex if apex is not None else onset)
    if folder == "clip":
        last = frames.numbers[-1]
        return last if last >= low else None
    if stats is None:
        return None
    return _nearest(frames, max(low, onset + stats.median_length), low, frames.numbers[-1])


def _fallback(field: str, numbers: dict[str, int | None], frames: FrameSource, folder: FolderKind,
              stats: SheetStats | None) -> Any:
    """The replacement the ``<field>-unreliable`` rule gives, or :data:`_NONE`."""
    onset, apex, offset = (numbers[f] for f in FIELDS)
    first, last = frames.numbers[0], frames.numbers[-1]
    if field == "apex":
        return None
    if field == "onset":
        high = apex if apex is not None else offset
        if folder == "clip":
            return first if first <= high else _NONE
        if stats is None:
            return _NONE
        target = high - (stats.median_rise if apex is not None else stats.median_length)
        value = _nearest(frames, target, first, high)
        return _NONE if value is None else value
    low = max(onset, apex if apex is not None else onset)
    if folder == "clip" or (offset > last and last >= low):
        return last if last >= low else _NONE
    value = _offset_estimate(numbers, frames, folder, stats)
    return _NONE if value is None else value


def _nearest(frames: FrameSource, target: int, low: int, high: int) -> int | None:
    """The frame on disk in [low, high] nearest to ``target`` (the earlier one on a tie)."""
    inside = frames.between(low, high).numbers
    if not inside:
        return None
    return min(inside, key=lambda n: (abs(n - target), n))


def _swap_fits(numbers: Mapping[str, int | None], frames: FrameSource) -> bool:
    """Swapping orders the row and both values are frames on disk."""
    onset, apex, offset = (numbers[f] for f in FIELDS)
    return (offset <= onset and (apex is None or offset <= apex <= onset)
            and frames.has(onset) and frames.has(offset))


def slips(value: int) -> set[int]:
    """Values one typing slip away from ``value``: one digit replaced, or two neighbouring
    digits swapped (``1930`` -> ``4930``, ``5379`` -> ``5739``); never ``value`` itself or a
    negative number."""
    text = str(value)
    found = set()
    for i, digit in enumerate(text):
        for other in "0123456789":
            if other != digit:
                found.add(int(text[:i] + other + text[i + 1:]))
        if i + 1 < len(text) and text[i + 1] != digit:
            found.add(int(text[:i] + text[i + 1] + digit + text[i + 2:]))
    found.discard(value)
    return {n for n in found if n >= 0}


def _unique_typo(field: str, numbers: Mapping[str, int | None], frames: FrameSource,
                 stats: SheetStats | None) -> tuple[str, int] | None:
    """(field, value) of the single slip that repairs the row, or None when there is none or
    several. ``field == "swap"`` tries onset and offset (the one that is wrong is unknown)."""
    targets = ("onset", "offset") if field == "swap" else (field,)
    fits = []
    for target in targets:
        value = numbers[target]
        if value is None:
            continue
        for candidate in slips(value):
            trial = {**numbers, target: candidate}
            if not ordered(trial) or not frames.has(candidate):
                continue
            if target != "apex" and stats is not None and trial["offset"] - trial["onset"] > stats.long_length:
                continue  # an onset or offset slip must not make the clip implausibly long
            fits.append((target, candidate))
    return fits[0] if len(fits) == 1 else None
