"""Shared helpers of the dataset loaders: reading annotation spreadsheets, parsing cells,
building a checked :class:`~merkit.data.sample.Sample`, and recording fixes and skips.

Spreadsheet rows are numbered as a spreadsheet program shows them: 1-based, header included.
Every problem found in a row is a typed error naming the file and that row. The loader's
``on_error`` policy (see :mod:`merkit.data.repairs`) decides what happens to it: ``repair``
(default) mends inconsistent frame numbers by documented rules and records each change as a
:class:`~merkit.data.repairs.Fix`, ``strict`` raises the first problem, ``skip`` leaves the row
out and records one line saying why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

from merkit.data.protocols import normalise_emotion
from merkit.data.registry import ON_ERROR, LoadResult, OnError
from merkit.data.repairs import Change, FolderKind, Fix, SheetStats, ordered, repair_frames
from merkit.data.sample import FrameSource, Sample
from merkit.errors import AnnotationError, DatasetError, MissingFramesError, check_choice

Row = tuple[int, tuple[Any, ...]]
"""One spreadsheet row: (1-based row number, cell values)."""

UNANNOTATED = frozenset({"", "/", "-", "-1", "n/a", "na", "none", "nan"})
"""Cell texts that mean "not annotated" in an apex column (CASME II writes ``/``, SAMM ``-1``)."""

AUPolicy = Literal["drop", "all"]


# --------------------------------------------------------------------------- files


def find_one(directories: Sequence[Path], patterns: Sequence[str], *, dataset: str, what: str, layout: str) -> Path:
    """The single file matching one of ``patterns`` (case-insensitive) in ``directories``.

    Raises:
        DatasetError: no file or several files match; the message shows the expected layout.
    """
    regexes = [re.compile(_glob_to_regex(p), re.IGNORECASE) for p in patterns]
    found: list[Path] = []
    for directory in directories:
        if directory.is_dir():
            found += sorted(p for p in directory.iterdir() if p.is_file() and any(r.fullmatch(p.name) for r in regexes)
                            and not p.name.startswith("~$"))
    if not found:
        searched = ", ".join(str(d) for d in directories)
        raise DatasetError(f"{dataset}: no {what} ({' or '.join(patterns)}) in {searched}.\nExpected layout:\n{layout}")
    if len(found) > 1:
        raise DatasetError(f"{dataset}: several {what} files, expected one: {', '.join(str(p) for p in found)}")
    return found[0]


def _glob_to_regex(pattern: str) -> str:
    return "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)


def child_dir(parent: Path, name: str) -> Path | None:
    """``parent/name``, matched case-insensitively when the exact name is absent; None if none."""
    exact = parent / name
    if exact.is_dir():
        return exact
    if not parent.is_dir():
        return None
    matches = [p for p in parent.iterdir() if p.is_dir() and p.name.lower() == name.lower()]
    return matches[0] if len(matches) == 1 else None


def read_sheet(path: Path, sheet: str | int = 0) -> list[Row]:
    """Every row of one worksheet as raw cell values (openpyxl, cached formula values).

    Args:
        sheet: worksheet name (matched case-insensitively, surrounding spaces ignored) or index.

    Raises:
        DatasetError: the file is not a readable .xlsx, or the sheet does not exist.
    """
    import openpyxl

    try:
        book = openpyxl.load_workbook(path, data_only=True)
    except Exception as err:  # openpyxl raises several unrelated types for a bad file
        raise DatasetError(f"{path}: cannot read as an .xlsx workbook ({err})") from err
    names = book.sheetnames
    if isinstance(sheet, int):
        if sheet >= len(names):
            raise DatasetError(f"{path}: expected at least {sheet + 1} worksheet(s), found {names}")
        worksheet = book[names[sheet]]
    else:
        wanted = [n for n in names if n.strip().lower() == sheet.strip().lower()]
        if not wanted:
            raise DatasetError(f"{path}: no worksheet named {sheet!r}; worksheets: {names}")
        worksheet = book[wanted[0]]
    rows = [(i, tuple(values)) for i, values in enumerate(worksheet.iter_rows(min_row=1, values_only=True), start=1)]
    book.close()
    return rows


def sheet_names(path: Path) -> list[str]:
    import openpyxl

    try:
        book = openpyxl.load_workbook(path, read_only=True)
    except Exception as err:
        raise DatasetError(f"{path}: cannot read as an .xlsx workbook ({err})") from err
    names = list(book.sheetnames)
    book.close()
    return names


def is_blank_row(values: Iterable[Any]) -> bool:
    return all(cell_text(v) == "" for v in values)


# --------------------------------------------------------------------------- header and cells


def header_key(name: Any) -> str:
    """Header comparison key: lower case, spaces/underscores/hyphens removed (``Onset Frame`` = ``onsetframe``)."""
    return re.sub(r"[\s_\-]+", "", cell_text(name).lower())


def find_header(rows: Sequence[Row], marker: str, *, file: Path) -> int:
    """Position in ``rows`` of the first row that has a cell equal to ``marker`` (header row).

    Raises:
        AnnotationError: no such row.
    """
    key = header_key(marker)
    for i, (_, values) in enumerate(rows):
        if any(header_key(v) == key for v in values):
            return i
    raise AnnotationError(f"no header row (a row with a {marker!r} cell) found", file=str(file))


def column_positions(header: Row, required: Mapping[str, str], optional: Mapping[str, str] | None = None,
                     *, file: Path) -> dict[str, int]:
    """Map field names to column positions from a header row.

    Args:
        header: the header row.
        required: field -> header text that must be present (compared with :func:`header_key`).
        optional: field -> header text used when present.

    Raises:
        AnnotationError: a required column is missing (names all missing and all found columns).
    """
    row_number, values = header
    keys = [header_key(v) for v in values]
    positions: dict[str, int] = {}
    missing = []
    for field, name in {**required, **(optional or {})}.items():
        if header_key(name) in keys:
            positions[field] = keys.index(header_key(name))
        elif field in required:
            missing.append(name)
    if missing:
        found = [cell_text(v) for v in values if cell_text(v)]
        raise AnnotationError(f"missing column(s) {missing}; the header holds {found}", file=str(file), row=row_number)
    return positions


def cell(values: Sequence[Any], position: int | None) -> Any:
    if position is None or position >= len(values):
        return None
    return values[position]


def cell_text(value: Any) -> str:
    """A cell as stripped text; integral floats lose their ``.0`` (``4.0`` -> ``"4"``)."""
    if value is None:
        return ""
    if isinstance(value, float):
        if value != value:  # NaN
            return ""
        if value.is_integer():
            return str(int(value))
    return str(value).strip()


MAX_FRAME = 10**8
"""Frame numbers are below this (a day at 1000 fps); larger cells are errors, not frames."""


def parse_frame(value: Any, column: str, *, file: Path, row: int) -> int:
    """A frame number cell as an int: a whole number, written as a number or as text
    (``355``, ``"355"``, ``355.0``, ``" 355 "``), from 0 to :data:`MAX_FRAME`.

    Raises:
        AnnotationError: the cell is empty, not a whole number, negative or implausibly large.
    """
    text = cell_text(value)
    if isinstance(value, bool) or not re.fullmatch(r"[0-9]+(\.0*)?", text):
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise AnnotationError(f"{column}: expected a frame number, got {shown or 'an empty cell'!r}",
                              file=str(file), row=row)
    number = int(text.split(".")[0])
    if number >= MAX_FRAME:
        raise AnnotationError(f"{column}: frame number {number} is implausibly large (expected below {MAX_FRAME})",
                              file=str(file), row=row)
    return number


_AU_INTENSITIES = "ABCDE"
_AU_SEPARATOR = re.compile(r"\s*(\+|,|;|&|/|\bAND\b|\bOR\b)\s*")
_AU_EMPTY = {"", "-", "--", "/", "NONE", "N/A", "NA", "NAN", "NULL", "?"}


def au_term_groups(text: str) -> list[list[str]]:
    """Split the text of an AU cell into its terms, each a group of the alternatives written
    with ``or`` or ``/`` (one code for a plain term): ``"4 or 7+R12A"`` -> ``[["4", "7"], ["R12A"]]``.

    Codes are upper-cased, a leading ``AU`` and brackets are removed, stray side, intensity and
    ``?`` pieces are re-attached (``R 12`` -> ``R12``); separators are ``+ , ; & and``, and
    whitespace between codes. Nothing is validated (see
    :func:`merkit.preprocess.au.parse_au_string`). Empty-cell
    spellings (``-``, ``none``, ``n/a``, a lone ``?``) give no group.
    """
    cleaned = re.sub(r"AU\s*", "", text.upper().replace("(", " ").replace(")", " ")).strip()
    if cleaned in _AU_EMPTY:
        return []
    # groups of alternatives: ['4', 'OR', '7', '+', '9'] -> [['4', '7'], ['9']]
    pieces = _AU_SEPARATOR.split(cleaned)
    groups: list[list[str]] = [[]]
    for index, piece in enumerate(pieces):
        if index % 2 == 1:
            if piece not in ("OR", "/"):
                groups.append([])
            continue
        tokens = _au_tokens(piece)
        if not tokens:
            continue
        # whitespace-separated codes ('4 7') are separate AUs, like '+'
        groups[-1].append(tokens[0])
        for token in tokens[1:]:
            groups.append([token])
    return [group for group in groups if group]


def _au_tokens(part: str) -> list[str]:
    """Split one ``+``-free part on whitespace, re-attaching stray side/intensity/``?`` pieces
    (``R 12``, ``12 A``, ``12 ?``)."""
    merged: list[str] = []
    pending_side = ""
    for piece in part.split():
        if piece in ("L", "R"):
            pending_side = piece
        elif merged and (piece == "?" or (len(piece) == 1 and piece in _AU_INTENSITIES)):
            merged[-1] += piece
        else:
            merged.append(pending_side + piece)
            pending_side = ""
    if pending_side:
        merged.append(pending_side)
    return merged


def parse_aus(value: Any, or_policy: AUPolicy = "drop") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """AU codes of an annotation cell, and the alternatives written with ``or``.

    The cell is split by :func:`au_term_groups` (``+``, ``,`` as in CAS(ME)^3, ``or``, ``/``
    ...); each code is kept as annotated (``R12``, ``4``, ``L14A``, also codes outside the FACS
    vocabulary such as ``A1``), upper-cased and without a leading ``AU``. A term such as ``R12 or R15`` means the coder was unsure which AU it was: with
    ``or_policy="drop"`` neither is kept (loaders never invent an annotation); with ``"all"``
    both are kept.

    Returns:
        (AU codes, the alternative terms, e.g. ``("R12 or R15",)``).
    """
    codes: list[str] = []
    alternatives: list[str] = []
    for group in au_term_groups(cell_text(value)):
        known = [code for code in group if code != "?"]  # '4 or ?': unsure whether it was AU 4
        if len(group) > 1:
            alternatives.append(" or ".join(group))
            if or_policy == "all":
                codes += known
        else:
            codes += known
    return tuple(codes), tuple(alternatives)


def canonical_emotion(raw: Any, aliases: Mapping[str, str]) -> tuple[str, Change | None]:
    """Normalised emotion (:func:`normalise_emotion`) and the alias applied, if any.

    Returns:
        (emotion, None) or (alias target, the change ``'suprise' -> 'surprise'``).
    """
    emotion = normalise_emotion(cell_text(raw))
    if emotion in aliases:
        return aliases[emotion], Change("emotion", cell_text(raw), aliases[emotion], "emotion-spelling",
                                        f"{cell_text(raw)!r} read as {aliases[emotion]!r}")
    return emotion, None


# --------------------------------------------------------------------------- fixes and skips


class LoadLog:
    """Collects a loader's fixes and skipped rows and applies its ``on_error`` policy."""

    def __init__(self, on_error: OnError):
        check_choice("on_error", on_error, ON_ERROR, error=DatasetError)
        self.on_error = on_error
        self.fixes: list[Fix] = []
        self.skipped: list[str] = []

    @property
    def repairs(self) -> bool:
        """Whether inconsistent frame numbers are repaired (``on_error="repair"``)."""
        return self.on_error == "repair"

    def problem(self, error: DatasetError) -> None:
        """Raise ``error`` (``repair``: a problem no rule mends; ``strict``), or record it as a
        skipped row under ``on_error="skip"``."""
        if self.on_error == "skip":
            self.skipped.append(str(error))
            return
        if self.on_error == "repair":
            error.args = (f"{error} (no repair rule applies; --skip-bad / on_error='skip' leaves such rows out)",)
        raise error


def where(file: Path, row: int | None, clip: str | None = None) -> str:
    text = f"{file}" + (f", row {row}" if row is not None else "")
    return text + (f" ({clip})" if clip else "")


@dataclass(frozen=True)
class KnownFix:
    """A documented annotation error of one release, corrected in code (rule ``known-fix``).

    The fix is applied only while the row still shows the error: the annotated value must be
    unusable (its frame is not on disk, or it breaks onset <= apex <= offset) and the
    replacement must be on disk. A corrected release therefore passes through untouched.
    Known fixes are tried before the generic rules of :mod:`merkit.data.repairs`, and only
    under the ``repair`` policy.

    Attributes:
        field: ``onset``, ``apex`` or ``offset``.
        value: replacement frame number; None (apex only) = no usable apex.
        reason: where the fix comes from, shown in the fix record.
    """

    field: Literal["onset", "apex", "offset"]
    value: int | None
    reason: str


def apply_known_fixes(fixes: Sequence[KnownFix], numbers: dict[str, int | None], frames: FrameSource) -> list[Change]:
    """Apply ``fixes`` to ``numbers`` (keys onset, apex, offset) in place, all or none.

    A fix is a candidate while its field's value is unusable (not coded, not on disk, or the
    row is not ordered onset <= apex <= offset) and its replacement is on disk; the candidates
    are applied together only if they leave the row ordered.

    Returns:
        one change per fix applied.
    """
    trial = dict(numbers)
    applied = []
    for fix in fixes:
        old = trial[fix.field]
        if old is not None and frames.has(old) and ordered(trial):
            continue
        if fix.value is not None and not frames.has(fix.value):
            continue
        trial[fix.field] = fix.value
        applied.append(Change(fix.field, old, fix.value, "known-fix", fix.reason))
    if not applied or not ordered(trial):
        return []
    numbers.update(trial)
    return applied


@dataclass(frozen=True)
class RepairContext:
    """What the generic repair rules of a loader run need (``on_error="repair"`` only).

    Attributes:
        folder: ``clip`` (a folder per clip, onset..offset) or ``recording`` (a folder per
            recording holding several clips).
        stats: lengths of the sheet's consistent clips (None: too few rows).
    """

    folder: FolderKind
    stats: SheetStats | None


def sheet_stats(rows: Iterable[Row], columns: Mapping[str, int]) -> SheetStats | None:
    """:class:`SheetStats` of the rows whose onset, apex and offset cells are frame numbers."""
    numbers = []
    for row, values in rows:
        parsed = {}
        for field in ("onset", "apex", "offset"):
            try:
                parsed[field] = parse_frame(cell(values, columns[field]), field, file=Path(), row=row)
            except AnnotationError:
                parsed[field] = None
        numbers.append(parsed)
    return SheetStats.from_rows(numbers)


# --------------------------------------------------------------------------- samples


def frame_source(folder: Path, pattern: str, *, file: Path, row: int | None, clip: str,
                 cache: dict[tuple[Path, str], FrameSource] | None = None) -> FrameSource:
    """:meth:`FrameSource.from_dir` whose error also names the annotation file and row.

    ``cache`` (one dict per loader run) reuses the listing of a folder that holds several
    clips (CAS(ME)^3 materials).
    """
    if cache is not None and (folder, pattern) in cache:
        return cache[folder, pattern]
    try:
        frames = FrameSource.from_dir(folder, pattern)
    except MissingFramesError as err:
        raise MissingFramesError(f"{where(file, row, clip)}: {err}") from None
    if cache is not None:
        cache[folder, pattern] = frames
    return frames


def checked_sample(
    *,
    dataset: str,
    subject: str,
    clip_id: str,
    frames: FrameSource,
    onset: int,
    apex: int | None,
    offset: int | None,
    emotion: str,
    aus: tuple[str, ...] = (),
    depth: FrameSource | None = None,
    fps: float,
    file: Path | None,
    row: int | None,
    meta: Mapping[str, Any] | None = None,
) -> Sample:
    """A Sample whose onset/apex/offset are ordered and on disk.

    Raises:
        AnnotationError: no offset, onset > apex, apex > offset or onset > offset (naming file
            and row).
        MissingFramesError: the onset, apex or offset frame (or its depth frame) is not on disk.
    """
    place = where(file, row, f"{subject}/{clip_id}") if file is not None else f"{subject}/{clip_id}"
    if offset is None:
        raise AnnotationError(f"{subject}/{clip_id}: no offset frame is coded", file=_str(file), row=row)
    if onset > offset:
        raise AnnotationError(f"{subject}/{clip_id}: onset frame {onset} is after offset frame {offset}",
                              file=_str(file), row=row)
    if apex is not None and not onset <= apex <= offset:
        order = "before the onset" if apex < onset else "after the offset"
        raise AnnotationError(f"{subject}/{clip_id}: apex frame {apex} is {order} (onset {onset}, offset {offset})",
                              file=_str(file), row=row)
    for name, number in (("onset", onset), ("apex", apex), ("offset", offset)):
        if number is None:
            continue
        for source, kind in ((frames, "frame"), (depth, "depth frame")):
            if source is not None and not source.has(number):
                folder = source.paths[0].parent
                raise MissingFramesError(
                    f"{place}: {name} {kind} {number} is not on disk in {folder} "
                    f"(frames present: {source.numbers[0]}..{source.numbers[-1]})")
    info = {"row": row, "file": _str(file)} if file is not None else {}
    return Sample(dataset=dataset, subject=subject, clip_id=clip_id, frames=frames, onset_frame=onset,
                  apex_frame=apex, offset_frame=offset, emotion=emotion, aus=aus, depth=depth, fps=fps,
                  meta={**info, **(meta or {})})


def annotated_clip(
    values: Sequence[Any],
    columns: Mapping[str, int],
    headers: Mapping[str, str],
    *,
    row: int,
    file: Path,
    dataset: str,
    subject: str,
    clip_id: str,
    folder: Path,
    fps: float,
    aliases: Mapping[str, str],
    repair: RepairContext | None,
    au_or: AUPolicy = "drop",
    known_fixes: Sequence[KnownFix] = (),
    frame_pattern: str = "*.jpg",
    depth_folder: Path | None = None,
    meta: Mapping[str, Any] | None = None,
    unannotated: frozenset[str] = UNANNOTATED,
    frame_cache: dict[tuple[Path, str], FrameSource] | None = None,
) -> tuple[Sample, list[Change]]:
    """The Sample of one coded spreadsheet row, and the changes made to its values.

    Reads the ``onset``, ``apex``, ``offset``, ``aus`` and ``emotion`` fields (``columns``:
    field -> position, ``headers``: field -> header text for messages). An apex cell whose
    text is in ``unannotated`` (default :data:`UNANNOTATED`) becomes None; so does an offset
    cell (not coded). ``aliases`` rename emotion spellings. With ``repair`` given (policy
    ``repair``), ``known_fixes`` and then the generic rules of :mod:`merkit.data.repairs` mend
    inconsistent frame numbers before the clip is checked by :func:`checked_sample`; without
    it the row must be consistent as annotated. ``depth_folder`` adds a depth source (see
    :func:`depth_source`); ``frame_cache`` is passed to :func:`frame_source`.

    Raises:
        AnnotationError, MissingFramesError: as :func:`parse_frame` and :func:`checked_sample`.
    """
    clip = f"{subject}/{clip_id}"
    onset = parse_frame(cell(values, columns["onset"]), headers["onset"], file=file, row=row)
    offset_cell = cell(values, columns["offset"])
    offset = (None if cell_text(offset_cell).lower() in unannotated
              else parse_frame(offset_cell, headers["offset"], file=file, row=row))
    changes: list[Change] = []
    apex_cell = cell(values, columns["apex"])
    if cell_text(apex_cell).lower() in unannotated:
        apex = None
        changes.append(Change("apex", cell_text(apex_cell), None, "apex-not-annotated",
                              f"{headers['apex']} {cell_text(apex_cell)!r} means no apex was annotated"))
    else:
        apex = parse_frame(apex_cell, headers["apex"], file=file, row=row)
    emotion, alias = canonical_emotion(cell(values, columns["emotion"]), aliases)
    if not emotion:
        raise AnnotationError(f"{headers['emotion']} is empty", file=str(file), row=row)
    if alias:
        changes.append(alias)
    aus, alternatives = parse_aus(cell(values, columns["aus"]), au_or)
    extra = dict(meta or {})
    if alternatives:
        extra["au_alternatives"] = alternatives
        changes.append(Change("aus", cell_text(cell(values, columns["aus"])), aus, "au-alternatives",
                              f"uncertain AU term(s) {list(alternatives)}: "
                              + ("all alternatives kept" if au_or == "all" else "left out of aus")))
    frames = frame_source(folder, frame_pattern, file=file, row=row, clip=clip, cache=frame_cache)
    depth = None if depth_folder is None else depth_source(depth_folder, file=file, row=row, clip=clip, cache=frame_cache)
    numbers = {"onset": onset, "apex": apex, "offset": offset}
    if repair is not None:
        changes += apply_known_fixes(known_fixes, numbers, frames)
        changes += repair_frames(numbers, frames, folder=repair.folder, stats=repair.stats)
    sample = checked_sample(dataset=dataset, subject=subject, clip_id=clip_id, frames=frames, onset=numbers["onset"],
                            apex=numbers["apex"], offset=numbers["offset"], emotion=emotion, aus=aus, depth=depth,
                            fps=fps, file=file, row=row, meta=extra)
    return sample, changes


def depth_source(folder: Path, *, file: Path, row: int | None, clip: str,
                 cache: dict[tuple[Path, str], FrameSource] | None = None) -> FrameSource:
    """Depth frames of a clip: the folder's .png files, or its .jpg files when it has no .png."""
    for pattern in ("*.png", "*.jpg"):
        if cache is not None and (folder, pattern) in cache:
            return cache[folder, pattern]
    pattern = "*.jpg" if folder.is_dir() and not any(folder.glob("*.png")) else "*.png"
    return frame_source(folder, pattern, file=file, row=row, clip=clip, cache=cache)


def collect_rows(rows: Iterable[Row], read_row: Callable[[int, tuple[Any, ...]], tuple[Sample, list[Change]]],
                 log: LoadLog, file: Path) -> list[Sample]:
    """Samples of the non-blank ``rows``, each read by ``read_row(row, values) -> (sample, changes)``.

    A row whose sample id repeats an earlier row's is an :class:`AnnotationError`. Row errors go
    through ``log`` (raised or recorded as skipped); a kept row's changes are recorded as
    :class:`~merkit.data.repairs.Fix` es.
    """
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    for row, values in rows:
        if is_blank_row(values):
            continue
        try:
            sample, changes = read_row(row, values)
            if sample.sample_id in seen:
                raise AnnotationError(f"{sample.subject}/{sample.clip_id} is annotated twice "
                                      f"(first in row {seen[sample.sample_id]})", file=str(file), row=row)
        except DatasetError as err:
            log.problem(err)
            continue
        seen[sample.sample_id] = row
        samples.append(sample)
        log.fixes += [Fix.of(c, file=str(file), row=row, sample_id=sample.sample_id) for c in changes]
    return samples


def load_header_sheet(sheet_path: Path, required: Mapping[str, str], optional: Mapping[str, str] | None,
                      read_row: Callable[[tuple[Any, ...], dict[str, int], int, RepairContext | None],
                                         tuple[Sample, list[Change]]],
                      on_error: OnError) -> LoadResult:
    """Read a coding sheet whose header row holds ``Subject`` (CASME II, SAMM: a folder per clip).

    Rows above the header (SAMM's title block) are ignored; every row after it goes through
    ``read_row(values, columns, row, repair) -> (sample, changes)`` with ``columns`` from the
    header and ``repair`` the context of the ``repair`` policy (None under the others).

    Raises:
        AnnotationError: no header row, or a required column missing; unless
            ``on_error="skip"``, also a malformed row.
    """
    rows = read_sheet(sheet_path, 0)
    header_at = find_header(rows, "Subject", file=sheet_path)
    columns = column_positions(rows[header_at], required, optional, file=sheet_path)
    log = LoadLog(on_error)
    body = rows[header_at + 1:]
    repair = RepairContext("clip", sheet_stats(body, columns)) if log.repairs else None
    samples = collect_rows(body, lambda row, values: read_row(values, columns, row, repair), log, sheet_path)
    return LoadResult(samples=samples, fixes=log.fixes, skipped=log.skipped)


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def natural_key(text: str) -> list[Any]:
    """Sort key that orders ``s2`` before ``s10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]
