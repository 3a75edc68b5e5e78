"""SAMM (Davison et al., IEEE TAC 2018): 159 micro-movements of 32 subjects at 200 fps.

Reads ``SAMM_Micro_FACS_Codes_v2.xlsx`` (a title block precedes the table; the header row is
found as the row holding a ``Subject`` cell, row 14 in the v2 release) and the frames
``<root>/<subject>/<Filename>/<subject>_<frame number>.jpg``. Frame numbers are parsed from the
file names, whatever their zero padding.

Each clip has its own frame folder running from its onset to its offset (``Duration`` =
offset - onset + 1 frames), so the generic repair rules (:mod:`merkit.data.repairs`) read a
clip's bounds off its folder. Known annotation issues (each change is recorded in
``LoadResult.fixes``):

* ``Apex Frame`` = ``-1`` (earlier releases; meb lists rows 140, 147 and 148): the clip is
  kept with ``apex_frame=None``.
* v2 row 140 (028_4_1): apex 1143 after the offset 1134 (onset 1071, ``Duration`` 64 agrees
  with onset and offset). Four single-digit slips fit (1103, 1113, 1123, 1133): rule
  ``apex-unreliable``, ``apex_frame=None``.
* v2 row 147 (032_3_1): apex 1930 before the onset 4896 (offset 4970, ``Duration`` 75 agrees):
  the only slip inside the clip is 4930, rule ``digit-typo``.
* ``Action Units`` with ``or`` (``R12 or R15``) or ``/`` (the sheet's key: ``"/" = or``): the
  coder was unsure; the alternatives are left out of ``aus`` (``au_or="all"`` keeps them) and
  kept in ``meta["au_alternatives"]``.
* Spreadsheet row 71 of an earlier release has an offset (5379) the frames contradict; the meb
  toolkit (tvaranka/meb) reads 5739 off the frames on disk, used here (guarded, see
  :class:`~merkit.data.annotations.KnownFix`; v2 has 5739).
* ``Estimated Emotion`` ``Others`` is the same class as ``Other``; case varies.
"""

from __future__ import annotations

import re
from pathlib import Path

from merkit.data.annotations import (
    AUPolicy, KnownFix, RepairContext, annotated_clip, cell, cell_text, find_one, load_header_sheet,
)
from merkit.data.registry import DatasetInfo, LoadResult, OnError, register_dataset
from merkit.data.sample import Sample
from merkit.errors import AnnotationError, DatasetError

SAMM_FPS = 200.0

LAYOUT = """\
<root>/
  SAMM_Micro_FACS_Codes_v2.xlsx  the coding spreadsheet; a title block, then a header row with
                                 Subject, Filename, Inducement Code, Onset Frame, Apex Frame,
                                 Offset Frame, Duration, Micro, Action Units, Estimated Emotion,
                                 Objective Classes, Notes
  006/                           one folder per subject (3 digits)
    006_1_2/                     one folder per clip, named by Filename
      006_05562.jpg              frames named <subject>_<frame number>.jpg
      006_05563.jpg ...
  007/ ... 037/"""

COLUMNS = {
    "subject": "Subject",
    "filename": "Filename",
    "onset": "Onset Frame",
    "apex": "Apex Frame",
    "offset": "Offset Frame",
    "aus": "Action Units",
    "emotion": "Estimated Emotion",
}
OPTIONAL_COLUMNS = {"objective_class": "Objective Classes"}

EMOTION_ALIASES = {"others": "other", "happy": "happiness", "sad": "sadness", "suprise": "surprise",
                   "angry": "anger", "disgusted": "disgust"}

# spreadsheet row -> fixes (SAMM_Micro_FACS_Codes.xlsx before v2)
KNOWN_ROW_FIXES: dict[int, tuple[KnownFix, ...]] = {
    71: (KnownFix("offset", 5739, "offset read off the frames on disk (as the meb toolkit does)"),),
}

REPAIRS = """\
folder kind: clip (one folder per clip, onset..offset), so the folder's first and last frames
bound a clip. v2: row 140 (028_4_1) apex 1143 after the offset -> None (apex-unreliable); row 147
(032_3_1) apex 1930 before the onset -> 4930 (digit-typo). Known fix: row 71 of earlier releases,
offset 5739 (read off the frames, as meb does). Readings: Apex Frame -1 = no apex; AUs 'A or B'."""


def subject_id(value: object, *, file: Path, row: int) -> str:
    """Three-digit subject id from ``6``, ``"6"`` or ``"006"``.

    Raises:
        AnnotationError: anything else.
    """
    text = cell_text(value)
    if not re.fullmatch(r"\d+", text):
        raise AnnotationError(f"Subject: expected a subject number such as 006, got {text!r}", file=str(file), row=row)
    return f"{int(text):03d}"


def load_samm(root: str | Path, on_error: OnError = "repair", *, frames_dir: str = "",
              au_or: AUPolicy = "drop") -> LoadResult:
    """Load SAMM from ``root`` (see :data:`LAYOUT`).

    Args:
        root: dataset root (holds the spreadsheet).
        on_error: ``repair`` (default), ``strict`` or ``skip`` (see :mod:`merkit.data.repairs`).
        frames_dir: folder under ``root`` holding the subject folders (default: ``root`` itself).
        au_or: AU terms written ``A or B``: ``drop`` them, or keep ``all`` alternatives.

    Returns:
        LoadResult: one Sample per spreadsheet row (``dataset="samm"``, ``subject="006"``,
        ``clip_id=Filename``, ``fps=200``, emotion lower case with ``other`` for Other/Others,
        ``meta={"row", "file", "objective_class"}``), no protocol applied.

    Raises:
        DatasetError: no or several spreadsheets.
        AnnotationError: no header row, or a required column is missing; unless
            ``on_error="skip"``, a malformed row (``strict``: also an inconsistent one).
        MissingFramesError: unless ``on_error="skip"``, a clip folder is missing (``strict``:
            also a frame that is not on disk).
    """
    root = Path(root)
    sheet_path = find_one([root], ["SAMM_Micro_FACS_Codes*.xlsx"], dataset="samm", what="coding spreadsheet",
                          layout=LAYOUT)
    frames_root = root / frames_dir
    if not frames_root.is_dir():
        raise DatasetError(f"samm: frame folder {frames_root} does not exist.\nExpected layout:\n{LAYOUT}")
    return load_header_sheet(sheet_path, COLUMNS, OPTIONAL_COLUMNS,
                             lambda values, columns, row, repair: _read_row(values, columns, row, sheet_path, frames_root,
                                                                            au_or, repair),
                             on_error)


def _read_row(values: tuple, columns: dict[str, int], row: int, sheet_path: Path, frames_root: Path,
              au_or: AUPolicy, repair: RepairContext | None) -> tuple[Sample, list]:
    subject = subject_id(cell(values, columns["subject"]), file=sheet_path, row=row)
    filename = cell_text(cell(values, columns["filename"]))
    if not filename:
        raise AnnotationError("Filename is empty", file=str(sheet_path), row=row)
    meta = {"objective_class": cell_text(cell(values, columns.get("objective_class")))}
    return annotated_clip(values, columns, COLUMNS, row=row, file=sheet_path, dataset="samm", subject=subject,
                          clip_id=filename, folder=frames_root / subject / filename, fps=SAMM_FPS,
                          aliases=EMOTION_ALIASES, repair=repair, au_or=au_or, known_fixes=KNOWN_ROW_FIXES.get(row, ()),
                          meta=meta)


register_dataset(DatasetInfo(name="samm", loader=load_samm, protocols=("samm-5", "samm-3", "samm-8"), layout=LAYOUT,
                             repairs=REPAIRS))
