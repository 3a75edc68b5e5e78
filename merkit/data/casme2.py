"""CASME II (Yan et al., PLoS ONE 2014): 255 coded clips of 26 subjects at 200 fps.

Reads the release as distributed: one coding spreadsheet ``CASME2-coding-*.xlsx`` and the
face-cropped frames ``Cropped/subNN/<Filename>/reg_img<N>.jpg`` (the SynthME demo writes the
same layout). Frames are numbered by the numbers in their file names, not 0..n.

Each clip has its own frame folder running from its onset to its offset, so the generic repair
rules (:mod:`merkit.data.repairs`) read a clip's bounds off its folder. Known annotation issues
(each change is recorded in ``LoadResult.fixes``):

* ``ApexFrame`` written ``/`` (sub04/EP12_01f in the 2014-05-08 and 2019-07-01 releases, more
  rows in older ones): the clip is kept with ``apex_frame=None``; the run's apex policy decides.
* ``OffsetFrame`` of sub16/EP01_08 (110) points past the frames on disk (users of the release
  report frames 73..96 only): rule ``offset-unreliable`` makes it the folder's last frame.
* Spreadsheet row 62 of the 2014-05-08 sheet has an offset its frames contradict; the meb
  toolkit (tvaranka/meb) corrects it to 91, read off the frames, which is used here (a guarded
  :class:`~merkit.data.annotations.KnownFix`: it changes nothing in a sheet where the row is
  correct, as in the 2019-07-01 one).
* ``Estimated Emotion`` spelling and case variants (``Happiness``, ``suprise``) are normalised.

The 2019-07-01 sheet (``CASME2-coding-20190701.xlsx``) labels sub24/EP07_01, EP07_04f and
EP10_03 ``surprise``; older sheets did not (the 5-class protocol counted 246 clips, surprise 25,
sadness 7; the 2019 sheet gives 249, surprise 28, sadness 4). The MEGC2019 composite leaves the
three out (:data:`merkit.data.megc2019.EXCLUDED`).
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

CASME2_FPS = 200.0

LAYOUT = """\
<root>/
  CASME2-coding-<date>.xlsx      exactly one coding spreadsheet, header in row 1 with the columns
                                 Subject, Filename, OnsetFrame, ApexFrame, OffsetFrame,
                                 Action Units, Estimated Emotion (further columns are ignored)
  Cropped/                       face-cropped frames (frames_dir="CASME2_RAW_selected" reads the
    sub01/                       raw frames, same tree)
      EP02_01f/
        reg_img46.jpg            one image per frame, named by its frame number
        reg_img47.jpg ...
    sub02/ ... sub26/"""

COLUMNS = {
    "subject": "Subject",
    "filename": "Filename",
    "onset": "OnsetFrame",
    "apex": "ApexFrame",
    "offset": "OffsetFrame",
    "aus": "Action Units",
    "emotion": "Estimated Emotion",
}

EMOTION_ALIASES = {
    "suprise": "surprise",
    "surprised": "surprise",
    "happy": "happiness",
    "disgusted": "disgust",
    "sad": "sadness",
    "other": "others",
}

# spreadsheet row -> fixes (CASME2-coding-20140508.xlsx)
KNOWN_ROW_FIXES: dict[int, tuple[KnownFix, ...]] = {
    62: (KnownFix("offset", 91, "offset read off the frames on disk (as the meb toolkit does)"),),
}


def subject_id(value: object, *, file: Path, row: int) -> str:
    """``subNN`` from a Subject cell holding ``1``, ``"01"`` or ``"sub01"``.

    Raises:
        AnnotationError: anything else.
    """
    text = cell_text(value)
    match = re.fullmatch(r"(?:sub)?0*(\d+)", text, flags=re.IGNORECASE)
    if match is None:
        raise AnnotationError(f"Subject: expected a subject number such as 1 or sub01, got {text!r}",
                              file=str(file), row=row)
    return f"sub{int(match.group(1)):02d}"


REPAIRS = """\
folder kind: clip (one folder per clip, onset..offset), so the folder's first and last frames
bound a clip. Known fix: row 62 of the 2014-05-08 sheet, offset 91 (read off the frames, as the
meb toolkit does). Readings: ApexFrame '/' = no apex; 'suprise', 'happy' ... spellings."""


def load_casme2(root: str | Path, on_error: OnError = "repair", *, frames_dir: str = "Cropped",
                au_or: AUPolicy = "drop") -> LoadResult:
    """Load CASME II from ``root`` (see :data:`LAYOUT`).

    Args:
        root: dataset root.
        on_error: ``repair`` (default), ``strict`` or ``skip`` (see :mod:`merkit.data.repairs`).
        frames_dir: folder under ``root`` holding ``subNN/<Filename>/`` frame folders.
        au_or: AU terms written ``A or B``: ``drop`` them, or keep ``all`` alternatives.

    Returns:
        LoadResult: one Sample per spreadsheet row (``dataset="casme2"``, ``subject="sub01"``,
        ``clip_id=Filename``, ``fps=200``, ``meta={"row", "file"}``), no protocol applied.

    Raises:
        DatasetError: no or several coding spreadsheets, or the frames folder is missing.
        AnnotationError: a required column is missing; a malformed row (a cell that is not a
            frame number; with ``on_error="strict"`` also onset > apex, apex > offset, onset >
            offset) unless ``on_error="skip"``.
        MissingFramesError: unless ``on_error="skip"``, a clip folder is missing (``strict``:
            also an annotated frame that is not on disk).
    """
    root = Path(root)
    sheet_path = find_one([root], ["CASME2-coding-*.xlsx"], dataset="casme2", what="coding spreadsheet", layout=LAYOUT)
    frames_root = root / frames_dir
    if not frames_root.is_dir():
        raise DatasetError(f"casme2: frame folder {frames_root} does not exist.\nExpected layout:\n{LAYOUT}")
    return load_header_sheet(sheet_path, COLUMNS, None,
                             lambda values, columns, row, repair: _read_row(values, columns, row, sheet_path, frames_root,
                                                                            au_or, repair),
                             on_error)


def _read_row(values: tuple, columns: dict[str, int], row: int, sheet_path: Path, frames_root: Path,
              au_or: AUPolicy, repair: RepairContext | None) -> tuple[Sample, list]:
    subject = subject_id(cell(values, columns["subject"]), file=sheet_path, row=row)
    filename = cell_text(cell(values, columns["filename"]))
    if not filename:
        raise AnnotationError("Filename is empty", file=str(sheet_path), row=row)
    return annotated_clip(values, columns, COLUMNS, row=row, file=sheet_path, dataset="casme2", subject=subject,
                          clip_id=filename, folder=frames_root / subject / filename, fps=CASME2_FPS,
                          aliases=EMOTION_ALIASES, repair=repair, au_or=au_or, known_fixes=KNOWN_ROW_FIXES.get(row, ()))


register_dataset(DatasetInfo(name="casme2", loader=load_casme2, protocols=("casme2-5", "casme2-3"), layout=LAYOUT,
                             repairs=REPAIRS))
