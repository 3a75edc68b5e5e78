"""CAS(ME)^3 part A (Li et al., IEEE TPAMI 2022): 860 coded micro-expressions at 30 fps, with depth.

Reads ``cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx`` (worksheet ``label``; columns ``Subject,
Filename, Onset, Apex, Offset, AU, Objective class, emotion``) and the frames of each material
(one recorded video, ``Filename``) at ``<subject>/<Filename>/color/<n>.jpg`` with the aligned
depth frames in ``<subject>/<Filename>/depth/``.

Known annotation issues handled here (each applied fix is reported in ``LoadResult.fixes``):

* One material can hold several micro-expressions. Each row is its own clip, with
  ``clip_id = "<Filename>_<onset>"``; two rows of one material starting at the same onset get
  ``_2``, ``_3`` ... appended (reported). ``meta["material"]`` keeps the Filename.
* Rows with onset == apex are kept as annotated.
* ``emotion`` case varies (``others``/``Others``); spellings such as ``happiness`` are read
  as the release's ``happy``.
* Folder names may differ in case from the spreadsheet (``spNo.1`` for ``spNO.1``); they are
  matched case-insensitively (reported once per subject).
* Rows whose frames contradict the annotation, with the frame read off the disk by the meb
  toolkit (tvaranka/meb): onset of row 751 (2647), offsets of rows 710, 798, 800 (34, 1845,
  2403), and row 752 whose onset and apex 0 mean the first frame, 1. Row 130's apex lies
  outside its onset..offset: ``apex_frame=None`` (a loader never invents an apex). All guarded
  (see :class:`~merkit.data.annotations.KnownFix`).

The release's exception lists (damaged or poor-quality recordings) can be applied with
``exclude_lists``; excluded rows are listed in ``LoadResult.skipped``.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from merkit.data.annotations import (
    AUPolicy, KnownFix, LoadLog, Row, annotated_clip, cell, cell_text, child_dir, collect_rows, column_positions,
    find_header, find_one, read_sheet,
)
from merkit.data.registry import DatasetInfo, LoadResult, OnError, register_dataset
from merkit.data.sample import FrameSource, Sample
from merkit.errors import AnnotationError, DatasetError, MissingFramesError

CASME3_FPS = 30.0

LAYOUT = """\
<root>/
  cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx   (or in annotation/) worksheet "label" with the
                                 columns Subject, Filename, Onset, Apex, Offset, AU,
                                 Objective class, emotion
  spNO.1/                        one folder per subject (case may differ: spNo.1)
    a/                           one folder per material (Filename)
      color/
        1.jpg                    colour frames named by frame number
        2.jpg ...
      depth/
        1.png                    depth frames with the same numbers
        2.png ...
  spNO.2/ ..."""

COLUMNS = {"subject": "Subject", "filename": "Filename", "onset": "Onset", "apex": "Apex", "offset": "Offset",
           "aus": "AU", "emotion": "emotion"}
OPTIONAL_COLUMNS = {"objective_class": "Objective class"}

EMOTION_ALIASES = {"happiness": "happy", "sadness": "sad", "other": "others", "surprised": "surprise",
                   "suprise": "surprise", "angry": "anger", "disgusted": "disgust", "fearful": "fear"}

_FIRST_FRAME = "frames are numbered from 1; the row's 0 means the first frame"
_MEB = "frame read off the disk (as the meb toolkit does)"
# spreadsheet row -> fixes (cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx)
KNOWN_ROW_FIXES: dict[int, tuple[KnownFix, ...]] = {
    130: (KnownFix("apex", None, "the apex lies outside onset..offset"),),
    710: (KnownFix("offset", 34, _MEB),),
    751: (KnownFix("onset", 2647, _MEB),),
    752: (KnownFix("onset", 1, _FIRST_FRAME), KnownFix("apex", 1, _FIRST_FRAME)),
    798: (KnownFix("offset", 1845, _MEB),),
    800: (KnownFix("offset", 2403, _MEB),),
}


def load_casme3(root: str | Path, on_error: OnError = "raise", *, frames_dir: str = "", depth: bool = True,
                exclude_lists: Sequence[str | Path] = (), au_or: AUPolicy = "drop") -> LoadResult:
    """Load CAS(ME)^3 part A from ``root`` (see :data:`LAYOUT`).

    Args:
        root: dataset root (holds the spreadsheet, directly or in ``annotation/``).
        on_error: ``raise`` the first row error, or ``skip`` the row and record why.
        frames_dir: folder under ``root`` holding the subject folders (default: ``root``).
        depth: attach the ``depth/`` frames as ``Sample.depth`` (required on disk when True).
        exclude_lists: files listing recordings to leave out (.txt/.csv: one entry per line or
            comma-separated; .xlsx: every cell). An entry names a material as
            ``spNO.1/a``, ``spNO.1_a`` or a path below it (``spNO.1/a/color/12.jpg``), or a
            single micro-expression as ``spNO.1_a_<onset>``; case is ignored, other entries
            (titles, notes) are ignored.
        au_or: AU terms written ``A or B``: ``drop`` them, or keep ``all`` alternatives.

    Returns:
        LoadResult: one Sample per row (``dataset="casme3"``, ``subject="spNO.1"``,
        ``clip_id="<Filename>_<onset>"``, ``fps=30``, ``depth`` frames, ``meta={"row", "file",
        "material", "objective_class"}``).

    Raises:
        DatasetError: no or several spreadsheets, no ``label`` worksheet, a missing frames
            folder or exclusion list.
        AnnotationError / MissingFramesError: with ``on_error="raise"``, a malformed row or a
            clip whose folders or frames are not on disk.
    """
    root = Path(root)
    sheet_path = find_one([root, root / "annotation"], ["cas(me)3_part_A_ME_label*.xlsx", "cas(me)^3_part_A_ME_label*.xlsx"],
                          dataset="casme3", what="part A ME label spreadsheet", layout=LAYOUT)
    frames_root = root / frames_dir
    if not frames_root.is_dir():
        raise DatasetError(f"casme3: frame folder {frames_root} does not exist.\nExpected layout:\n{LAYOUT}")
    rows = read_sheet(sheet_path, "label")
    header_at = find_header(rows, "Subject", file=sheet_path)
    columns = column_positions(rows[header_at], COLUMNS, OPTIONAL_COLUMNS, file=sheet_path)
    body = rows[header_at + 1:]
    log = LoadLog(on_error)
    excluded = _read_exclusions(exclude_lists)
    clip_ids = _clip_ids(body, columns)
    reader = _RowReader(sheet_path, frames_root, columns, clip_ids, depth, au_or)
    kept = []
    for row, values in body:
        subject, material = cell_text(cell(values, columns["subject"])), cell_text(cell(values, columns["filename"]))
        onset = cell_text(cell(values, columns["onset"]))
        hit = excluded.get((subject.lower(), material.lower(), onset)) or excluded.get((subject.lower(), material.lower(), ""))
        if subject and hit:
            log.skipped.append(f"{sheet_path}, row {row} ({subject}/{material}, onset {onset}): listed in {hit}")
        else:
            kept.append((row, values))
    samples = collect_rows(kept, reader.read, log, sheet_path)
    return LoadResult(samples=samples, fixes=log.fixes, skipped=log.skipped)


def _clip_ids(rows: Iterable[Row], columns: dict[str, int]) -> dict[int, tuple[str, str | None]]:
    """row -> (clip id, fix message or None): ``<Filename>_<onset>``, numbered on repeats."""
    seen: Counter = Counter()
    ids = {}
    for row, values in rows:
        subject, material, onset = (cell_text(cell(values, columns[f])) for f in ("subject", "filename", "onset"))
        base = f"{material}_{onset}"
        seen[subject.lower(), base] += 1
        count = seen[subject.lower(), base]
        ids[row] = (base, None) if count == 1 else (
            f"{base}_{count}", f"another micro-expression of material {material} starts at frame {onset}: "
                               f"clip id {base}_{count}")
    return ids


class _RowReader:
    """Reads one row of the label sheet; resolves folders case-insensitively and caches listings."""

    def __init__(self, sheet_path: Path, frames_root: Path, columns: dict[str, int],
                 clip_ids: dict[int, tuple[str, str | None]], depth: bool, au_or: AUPolicy):
        self.sheet_path, self.frames_root, self.columns = sheet_path, frames_root, columns
        self.clip_ids, self.depth, self.au_or = clip_ids, depth, au_or
        self.subject_dirs: dict[str, Path | None] = {}
        self.subject_names: dict[Path, str] = {}
        self.frame_cache: dict[tuple[Path, str], FrameSource] = {}

    def read(self, row: int, values: tuple) -> tuple[Sample, list[str]]:
        subject = cell_text(cell(values, self.columns["subject"]))
        material = cell_text(cell(values, self.columns["filename"]))
        if not subject or not material:
            raise AnnotationError("Subject and Filename must not be empty", file=str(self.sheet_path), row=row)
        clip_id, id_fix = self.clip_ids[row]
        fixes = [id_fix] if id_fix else []
        first_time = subject not in self.subject_dirs
        if first_time:
            self.subject_dirs[subject] = child_dir(self.frames_root, subject)
        subject_dir = self.subject_dirs[subject]
        material_dir = child_dir(subject_dir, material) if subject_dir is not None else None
        color_dir = child_dir(material_dir, "color") if material_dir is not None else None
        if color_dir is None:
            raise MissingFramesError(f"{self.sheet_path}, row {row} ({subject}/{material}): no folder "
                                     f"{self.frames_root / subject / material / 'color'}")
        depth_dir = None
        if self.depth:
            depth_dir = child_dir(material_dir, "depth")
            if depth_dir is None:
                raise MissingFramesError(f"{self.sheet_path}, row {row} ({subject}/{material}): no depth folder "
                                         f"{material_dir / 'depth'} (load with depth=False to read colour only)")
        if first_time and subject_dir.name != subject:
            fixes.append(f"subject folder {subject_dir.name} taken for {subject} (case differs)")
        meta = {"material": material,
                "objective_class": cell_text(cell(values, self.columns.get("objective_class")))}
        # one folder is one person and one LOSO fold, however the sheet spells it ('spNO.1', 'spno.1'):
        # the subject is the first spelling seen for that folder
        canonical = self.subject_names.setdefault(subject_dir, subject)
        if canonical != subject:
            fixes.append(f"subject {subject} read as {canonical} (same folder {subject_dir.name})")
        sample, more = annotated_clip(values, self.columns, COLUMNS, row=row, file=self.sheet_path, dataset="casme3",
                                      subject=canonical, clip_id=clip_id, folder=color_dir, fps=CASME3_FPS,
                                      aliases=EMOTION_ALIASES, au_or=self.au_or, known_fixes=KNOWN_ROW_FIXES.get(row, ()),
                                      depth_folder=depth_dir, meta=meta, frame_cache=self.frame_cache)
        return sample, fixes + more


def _read_exclusions(paths: Sequence[str | Path]) -> dict[tuple[str, str, str], str]:
    """(subject, material, onset or "") in lower case -> the list file naming it."""
    excluded = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise DatasetError(f"casme3: exception list {path} does not exist")
        if path.suffix.lower() == ".xlsx":
            import openpyxl

            book = openpyxl.load_workbook(path, read_only=True, data_only=True)
            entries = [cell_text(v) for sheet in book for values in sheet.iter_rows(values_only=True) for v in values]
            book.close()
        else:
            entries = re.split(r"[\n\r,;\t]+", path.read_text(encoding="utf-8", errors="replace"))
        for entry in entries:
            key = _exclusion_key(entry)
            if key is not None:
                excluded[key] = str(path)
    return excluded


def _exclusion_key(entry: str) -> tuple[str, str, str] | None:
    entry = entry.strip().replace("\\", "/").lower()
    match = re.match(r"(sp\w*\.\d+)(?:/|_)([^/_.\s]+)(?:_(\d+))?(?=$|/|\.)", entry)
    if match is None:
        return None
    return match.group(1), match.group(2), match.group(3) or ""


register_dataset(DatasetInfo(name="casme3", loader=load_casme3, protocols=("casme3-7", "casme3-4", "casme3-3"),
                             layout=LAYOUT))
