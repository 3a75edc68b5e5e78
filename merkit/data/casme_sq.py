"""CAS(ME)^2 (Qu et al., IEEE TAC 2018), named ``casme_sq`` as in the spotting literature.

Long videos at 30 fps with coded macro- and micro-expressions; for recognition the loader keeps
the micro-expressions (57 in the release). The coding workbook ``CAS(ME)^2code_final.xlsx`` has
no header row; its first worksheet holds one expression per row, by position:

    participant, video name_expression number (``disgust1_1``), onset, apex, offset, AUs,
    emotion (negative / positive / surprise / others), expression type, self-reported emotion

and two further worksheets map the codes to the folders under ``rawpic/``: ``naming rule1``
(subject folder number, subject name, participant number) and ``naming rule2`` (video code,
video name). A clip's frames are ``rawpic/s<NN>/<NN>_<code><title>/img<N>.jpg``.

A video folder holds a whole recording, so the generic repair rules (:mod:`merkit.data.repairs`,
folder kind ``recording``) estimate a bound from the sheet's median lengths. Known annotation
issues (each change is recorded in ``LoadResult.fixes``):

* offset 0 (no offset coded, as the spotting literature reads it): the offset becomes the apex,
  ``meta["offset_coded"] = False`` (a reading of this release, under every policy).
* apex 0 (no apex coded): ``apex_frame=None``.
* emotion case variants (``Negative``) and ``other`` for ``others``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from merkit.data.annotations import (
    UNANNOTATED, AUPolicy, LoadLog, RepairContext, Row, annotated_clip, cell, cell_text, child_dir, collect_rows,
    find_one, header_key, read_sheet, sheet_names, sheet_stats,
)
from merkit.data.registry import DatasetInfo, LoadResult, OnError, register_dataset
from merkit.data.repairs import Change
from merkit.data.sample import Sample
from merkit.errors import AnnotationError, DatasetError

CASME_SQ_FPS = 30.0

LAYOUT = """\
<root>/
  CAS(ME)^2code_final.xlsx       the coding workbook: worksheet 1 = one expression per row, no
                                 header (participant, video name_expression number, onset, apex,
                                 offset, AUs, emotion, expression type, self-report);
                                 "naming rule1" = subject folder number, name, participant;
                                 "naming rule2" = video code, video name
  rawpic/
    s15/                         one folder per subject
      15_0101disgustingteeth/    one folder per long video: <subject>_<video code><title>
        img1.jpg                 frames named img<frame number>.jpg
        img2.jpg ...
    s16/ ... s40/"""

# positions in the code worksheet
POSITIONS = {"participant": 0, "clip": 1, "onset": 2, "apex": 3, "offset": 4, "aus": 5, "emotion": 6, "type": 7,
             "self_report": 8}
HEADERS = {"onset": "onset (column C)", "apex": "apex (column D)", "offset": "offset (column E)",
           "aus": "AUs (column F)", "emotion": "emotion (column G)"}
TYPES = {"micro": "microexpression", "macro": "macroexpression"}
EMOTION_ALIASES = {"other": "others"}

REPAIRS = """\
folder kind: recording (one folder per long video), so a missing bound is estimated from the
sheet's median lengths. Readings: offset 0 = not coded, read as the apex (as the spotting
literature does; meta offset_coded=False); apex 0 = no apex; 'other' = 'others'."""


def load_casme_sq(root: str | Path, on_error: OnError = "repair", *, frames_dir: str = "rawpic",
                  expression_type: Literal["micro", "macro", "all"] = "micro", au_or: AUPolicy = "drop") -> LoadResult:
    """Load CAS(ME)^2 from ``root`` (see :data:`LAYOUT`).

    Args:
        root: dataset root.
        on_error: ``repair`` (default), ``strict`` or ``skip`` (see :mod:`merkit.data.repairs`).
        frames_dir: folder under ``root`` with the subject folders (``rawpic``, or e.g. a folder
            of face crops with the same tree).
        expression_type: keep ``micro``-expressions (recognition), ``macro`` or ``all``.
        au_or: AU terms written ``A or B``: ``drop`` them, or keep ``all`` alternatives.

    Returns:
        LoadResult: one Sample per kept row (``dataset="casme_sq"``, ``subject`` = the subject
        folder name such as ``s15``, ``clip_id`` = the code cell such as ``disgust1_1``,
        ``fps=30``, ``meta={"row", "file", "video_code", "video_folder", "expression_type",
        "self_report", "offset_coded"}``).

    Raises:
        DatasetError: no or several workbooks, a missing worksheet or frames folder.
        AnnotationError / MissingFramesError: unless ``on_error="skip"``, a malformed row or a
            clip whose folder is not on disk (``strict``: also an inconsistent row or a frame
            that is not on disk).
    """
    root = Path(root)
    book = find_one([root], ["CAS(ME)^2code_final*.xlsx", "CAS(ME)2code_final*.xlsx"], dataset="casme_sq",
                    what="coding workbook", layout=LAYOUT)
    frames_root = root / frames_dir
    if not frames_root.is_dir():
        raise DatasetError(f"casme_sq: frame folder {frames_root} does not exist.\nExpected layout:\n{LAYOUT}")
    names = sheet_names(book)
    subjects = _subject_folders(read_sheet(book, _sheet(names, "naming rule1", 1, book)), frames_root)
    codes = _video_codes(read_sheet(book, _sheet(names, "naming rule2", 2, book)))
    rows = read_sheet(book, 0)
    if rows and _is_header(rows[0][1]):
        rows = rows[1:]  # a later edition added a header row
    log = LoadLog(on_error)
    wanted = set(TYPES.values()) if expression_type == "all" else {TYPES[expression_type]}
    # rows of an unknown type stay, so that reading them reports the error
    kept_rows = [r for r in rows if header_key(cell(r[1], POSITIONS["type"])) in wanted
                 or header_key(cell(r[1], POSITIONS["type"])) not in TYPES.values()]
    repair = RepairContext("recording", sheet_stats(kept_rows, POSITIONS)) if log.repairs else None
    samples = collect_rows(kept_rows,
                           lambda row, values: _read_row(values, row, book, frames_root, subjects, codes, au_or, repair),
                           log, book)
    return LoadResult(samples=samples, fixes=log.fixes, skipped=log.skipped)


def _is_header(values: tuple) -> bool:
    """A title row: no frame number in the onset column and a column title such as "onset" in
    its cells (a data row with a bad onset is read, so that its error names the row)."""
    if re.fullmatch(r"\d+", cell_text(cell(values, POSITIONS["onset"]))):
        return False
    return any(word in cell_text(value).lower() for value in values for word in ("onset", "apex", "offset"))


def _sheet(names: list[str], wanted: str, position: int, book: Path) -> str:
    for name in names:
        if header_key(name) == header_key(wanted):
            return name
    if position < len(names):
        return names[position]
    raise DatasetError(f"{book}: no worksheet {wanted!r}; worksheets: {names}")


def _subject_folders(rows: list[Row], frames_root: Path) -> dict[int, tuple[Path, str]]:
    """participant number -> (subject folder, its number as written in video folder names)."""
    folders = {}
    for _, values in rows:
        number, name, participant = (cell_text(cell(values, i)) for i in range(3))
        if not (re.fullmatch(r"\d+", participant) and re.fullmatch(r"\d+", number)):
            continue  # a title row
        candidates = [c for c in (name, f"s{int(number):02d}", f"s{int(number)}") if c]
        folder = next((d for d in (child_dir(frames_root, c) for c in candidates) if d is not None), None)
        folders[int(participant)] = (folder or frames_root / candidates[-1], f"{int(number):02d}")
    return folders


def _video_codes(rows: list[Row]) -> dict[str, str]:
    """video name (lower case) -> four-digit video code."""
    codes = {}
    for _, values in rows:
        code, name = cell_text(cell(values, 0)), cell_text(cell(values, 1))
        if re.fullmatch(r"\d+", code) and name:
            codes[name.lower()] = code.zfill(4)
    return codes


def _read_row(values: tuple, row: int, book: Path, frames_root: Path, subjects: dict[int, tuple[Path, str]],
              codes: dict[str, str], au_or: AUPolicy, repair: RepairContext | None) -> tuple[Sample, list[Change]]:
    participant = cell_text(cell(values, POSITIONS["participant"]))
    if not re.fullmatch(r"\d+", participant) or int(participant) not in subjects:
        raise AnnotationError(f"participant (column A) {participant!r} is not listed in 'naming rule1'",
                              file=str(book), row=row)
    subject_dir, number = subjects[int(participant)]
    clip = cell_text(cell(values, POSITIONS["clip"]))
    video, _, expression = clip.rpartition("_")
    if not video or not expression:
        raise AnnotationError(f"column B: expected <video name>_<expression number>, got {clip!r}", file=str(book), row=row)
    if video.lower() not in codes:
        raise AnnotationError(f"video name {video!r} is not listed in 'naming rule2'", file=str(book), row=row)
    code = codes[video.lower()]
    matches = sorted(subject_dir.glob(f"{number}_{code}*")) if subject_dir.is_dir() else []
    if len(matches) != 1:
        found = "no" if not matches else f"{len(matches)}"
        raise AnnotationError(f"{found} video folder {subject_dir}/{number}_{code}* for {clip!r} (expected one)",
                              file=str(book), row=row)
    kind = cell_text(cell(values, POSITIONS["type"]))
    if header_key(kind) not in TYPES.values():
        raise AnnotationError(f"expression type (column H): expected micro-expression or macro-expression, got {kind!r}",
                              file=str(book), row=row)
    values = list(values)
    fixes = []
    offset_coded = cell_text(cell(values, POSITIONS["offset"])) != "0"
    if not offset_coded:
        values[POSITIONS["offset"]] = cell(values, POSITIONS["apex"])
        apex = cell_text(values[POSITIONS["apex"]])
        fixes.append(Change("offset", 0, int(apex) if apex.isdigit() else apex or None, "offset-not-coded-apex",
                            "offset 0 (not coded): offset_frame set to the apex frame"))
    meta = {"video_code": code, "video_folder": matches[0].name,
            "expression_type": kind,
            "self_report": cell_text(cell(values, POSITIONS["self_report"])), "offset_coded": offset_coded}
    sample, more = annotated_clip(values, POSITIONS, HEADERS, row=row, file=book, dataset="casme_sq",
                                  subject=subject_dir.name, clip_id=clip, folder=matches[0], fps=CASME_SQ_FPS,
                                  aliases=EMOTION_ALIASES, repair=repair, au_or=au_or, meta=meta,
                                  unannotated=UNANNOTATED | {"0"})
    return sample, fixes + more


register_dataset(DatasetInfo(name="casme_sq", loader=load_casme_sq, protocols=("casme_sq-4", "casme_sq-3"),
                             layout=LAYOUT, repairs=REPAIRS))
