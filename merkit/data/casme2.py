"""CASME II (Yan et al., PLoS ONE 2014): 255 coded clips of 26 subjects at 200 fps.

Reads the release as distributed: one coding spreadsheet ``CASME2-coding-*.xlsx`` and the
face-cropped frames ``Cropped/subNN/<Filename>/reg_img<N>.jpg`` (the SynthME demo writes the
same layout). Frames are numbered by the numbers in their file names, not 0..n.

Known annotation errors handled here (each applied fix is reported in ``LoadResult.fixes``):

* ``ApexFrame`` written ``/`` (sub04/EP12_01f in the 2014-05-08 release, more rows in older
  ones): the clip is kept with ``apex_frame=None``; the run's apex policy decides.
* ``OffsetFrame`` of sub16/EP01_08 (110) points past the frames on disk (users of the release
  report frames 73..96 only): the offset becomes the last frame on disk.
* Spreadsheet row 62 has an offset its frames contradict; the meb toolkit (tvaranka/meb)
  corrects it to 91, read off the frames, which is used here.
* ``Estimated Emotion`` spelling and case variants (``Happiness``, ``suprise``) are normalised.

Both table fixes are guarded (see :class:`~merkit.data.annotations.KnownFix`): they change
nothing in a release where the row is already correct.
"""

from __future__ import annotations

import re
from pathlib import Path

from merkit.data.annotations import (
    AUPolicy, KnownFix, annotated_clip, cell, cell_text, find_one, load_header_sheet,
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

# (subject, Filename) -> fixes
KNOWN_CLIP_FIXES: dict[tuple[str, str], tuple[KnownFix, ...]] = {
    ("sub16", "EP01_08"): (KnownFix("offset", "last", "the release's frames of this clip stop before the annotated offset"),),
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


def load_casme2(root: str | Path, on_error: OnError = "raise", *, frames_dir: str = "Cropped",
                au_or: AUPolicy = "drop") -> LoadResult:
    """Load CASME II from ``root`` (see :data:`LAYOUT`).

    Args:
        root: dataset root.
        on_error: ``raise`` the first row error, or ``skip`` the row and record why.
        frames_dir: folder under ``root`` holding ``subNN/<Filename>/`` frame folders.
        au_or: AU terms written ``A or B``: ``drop`` them, or keep ``all`` alternatives.

    Returns:
        LoadResult: one Sample per spreadsheet row (``dataset="casme2"``, ``subject="sub01"``,
        ``clip_id=Filename``, ``fps=200``, ``meta={"row", "file"}``), no protocol applied.

    Raises:
        DatasetError: no or several coding spreadsheets, or the frames folder is missing.
        AnnotationError: a required column is missing; with ``on_error="raise"`` also a
            malformed row (bad number, onset > apex, apex > offset, onset > offset).
        MissingFramesError: with ``on_error="raise"``, a clip folder or an annotated frame is
            not on disk.
    """
    root = Path(root)
    sheet_path = find_one([root], ["CASME2-coding-*.xlsx"], dataset="casme2", what="coding spreadsheet", layout=LAYOUT)
    frames_root = root / frames_dir
    if not frames_root.is_dir():
        raise DatasetError(f"casme2: frame folder {frames_root} does not exist.\nExpected layout:\n{LAYOUT}")
    return load_header_sheet(sheet_path, COLUMNS, None,
                             lambda values, columns, row: _read_row(values, columns, row, sheet_path, frames_root, au_or),
                             on_error)


def _read_row(values: tuple, columns: dict[str, int], row: int, sheet_path: Path, frames_root: Path,
              au_or: AUPolicy) -> tuple[Sample, list[str]]:
    subject = subject_id(cell(values, columns["subject"]), file=sheet_path, row=row)
    filename = cell_text(cell(values, columns["filename"]))
    if not filename:
        raise AnnotationError("Filename is empty", file=str(sheet_path), row=row)
    known = KNOWN_CLIP_FIXES.get((subject, filename), ()) + KNOWN_ROW_FIXES.get(row, ())
    return annotated_clip(values, columns, COLUMNS, row=row, file=sheet_path, dataset="casme2", subject=subject,
                          clip_id=filename, folder=frames_root / subject / filename, fps=CASME2_FPS,
                          aliases=EMOTION_ALIASES, au_or=au_or, known_fixes=known)


register_dataset(DatasetInfo(name="casme2", loader=load_casme2, protocols=("casme2-5", "casme2-3", "casme2-4"), layout=LAYOUT))
