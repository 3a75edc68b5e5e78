"""CAS(ME)^3 part A (Li et al., IEEE TPAMI 2022): 860 coded micro-expressions at 30 fps, with depth.

Reads ``cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx`` (worksheet ``label``; columns ``Subject,
Filename, Onset, Apex, Offset, AU, Objective class, emotion``) and the frames of each material
(one recorded video, ``Filename``) at ``<subject>/<Filename>/color/<n>.jpg`` with the aligned
depth frames in ``<subject>/<Filename>/depth/``.

A material folder holds the whole recording (several coded expressions), so the generic repair
rules (:mod:`merkit.data.repairs`, folder kind ``recording``) estimate a missing bound from the
sheet's median lengths, never from the folder's ends. Known annotation issues (each change is
recorded in ``LoadResult.fixes``):

* One material can hold several micro-expressions. Each row is its own clip, with
  ``clip_id = "<Filename>_<onset>"`` (the onset as annotated, so a repair never renames a
  clip); two rows of one material starting at the same onset get
  ``_2``, ``_3`` ... appended (reported). ``meta["material"]`` keeps the Filename.
* Rows with onset == apex are kept as annotated.
* ``emotion`` case varies (``others``/``Others``); spellings such as ``happiness`` are read
  as the release's ``happy``.
* Folder names may differ in case from the spreadsheet (``spNo.1`` for ``spNO.1``); they are
  matched case-insensitively (reported once per subject).
* Inconsistent rows of the v2 label sheet. The release's full annotation
  (``CAS(ME)3_part_A_v2.xls``, worksheet ``AU+Emotion``, every macro- and micro-expression)
  holds corrected values for three of them, used as known fixes (guarded, see
  :class:`~merkit.data.annotations.KnownFix`): row 130 (spNO.149/d) apex 83 before the onset
  112 -> 160; rows 798 and 800 (spNO.40/e) offset 0 (not coded) -> 1845 and 2403. Row 751
  (spNO.216/d) onset 3647 after apex 2668 and offset 2694: rule ``digit-typo`` gives 2647, the
  value of the full annotation. Row 752 (spNO.216/e) onset and apex 0: rule ``first-frame``
  (frames are numbered from 1). Row 710 (spNO.214/c, offset 3460 after onset 5: 115 s) is
  corrected to 34 as the meb toolkit (tvaranka/meb) reads it off the disk, applied only where
  frame 3460 is not on disk.

The release's exception lists (damaged or poor-quality recordings) can be applied with
``exclude_lists``; excluded rows are listed in ``LoadResult.skipped``.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from merkit.data.annotations import (
    AUPolicy, KnownFix, LoadLog, RepairContext, Row, annotated_clip, cell, cell_text, child_dir, collect_rows,
    column_positions, find_header, find_one, read_sheet, sheet_stats,
)
from merkit.data.registry import DatasetInfo, LoadResult, OnError, register_dataset
from merkit.data.repairs import Change
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

_FULL = "the release's full annotation CAS(ME)3_part_A_v2.xls (worksheet AU+Emotion, row {}) gives {}"
# spreadsheet row -> fixes (cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx)
KNOWN_ROW_FIXES: dict[int, tuple[KnownFix, ...]] = {
    130: (KnownFix("apex", 160, _FULL.format(697, 160)),),
    710: (KnownFix("offset", 34, "frame read off the disk (as the meb toolkit does)"),),
    798: (KnownFix("offset", 1845, _FULL.format(3897, 1845)),),
    800: (KnownFix("offset", 2403, _FULL.format(3906, 2403)),),
}

REPAIRS = """\
folder kind: recording (one folder per material, several expressions), so a missing bound is
estimated from the sheet's median lengths. v2 label sheet: row 130 apex 83 -> 160, rows 798/800
offset 0 -> 1845/2403 (known fixes from the release's full annotation CAS(ME)3_part_A_v2.xls);
row 751 onset 3647 -> 2647 (digit-typo, as the full annotation); row 752 onset/apex 0 -> 1
(first-frame); row 710 offset 3460 -> 34 where 3460 is not on disk (meb). Readings: 'Others',
emotion spellings; folder-name case; repeated onsets of one material get clip ids _2, _3."""


def load_casme3(root: str | Path, on_error: OnError = "repair", *, frames_dir: str = "", depth: bool = True,
                exclude_lists: Sequence[str | Path] = (), au_or: AUPolicy = "drop") -> LoadResult:
    """Load CAS(ME)^3 part A from ``root`` (see :data:`LAYOUT`).

    Args:
        root: dataset root (holds the spreadsheet, directly or in ``annotation/``).
        on_error: ``repair`` (default), ``strict`` or ``skip`` (see :mod:`merkit.data.repairs`).
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
        AnnotationError / MissingFramesError: unless ``on_error="skip"``, a malformed row or a
            clip whose folders are not on disk (``strict``: also an inconsistent row or a frame
            that is not on disk).
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
    repair = RepairContext("recording", sheet_stats(body, columns)) if log.repairs else None
    reader = _RowReader(sheet_path, frames_root, columns, clip_ids, depth, au_or, repair)
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


def _clip_ids(rows: Iterable[Row], columns: dict[str, int]) -> dict[int, tuple[str, Change | None]]:
    """row -> (clip id, the change or None): ``<Filename>_<onset>``, numbered on repeats."""
    seen: Counter = Counter()
    ids = {}
    for row, values in rows:
        subject, material, onset = (cell_text(cell(values, columns[f])) for f in ("subject", "filename", "onset"))
        base = f"{material}_{onset}"
        seen[subject.lower(), base] += 1
        count = seen[subject.lower(), base]
        ids[row] = (base, None) if count == 1 else (
            f"{base}_{count}", Change("clip_id", base, f"{base}_{count}", "clip-id-repeat",
                                      f"another micro-expression of material {material} starts at frame {onset}"))
    return ids


class _RowReader:
    """Reads one row of the label sheet; resolves folders case-insensitively and caches listings."""

    def __init__(self, sheet_path: Path, frames_root: Path, columns: dict[str, int],
                 clip_ids: dict[int, tuple[str, Change | None]], depth: bool, au_or: AUPolicy,
                 repair: RepairContext | None):
        self.sheet_path, self.frames_root, self.columns = sheet_path, frames_root, columns
        self.clip_ids, self.depth, self.au_or, self.repair = clip_ids, depth, au_or, repair
        self.subject_dirs: dict[str, Path | None] = {}
        self.subject_names: dict[Path, str] = {}
        self.frame_cache: dict[tuple[Path, str], FrameSource] = {}

    def read(self, row: int, values: tuple) -> tuple[Sample, list[Change]]:
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
            fixes.append(Change("subject_folder", subject, subject_dir.name, "folder-case",
                                f"subject folder {subject_dir.name} taken for {subject} (case differs)"))
        meta = {"material": material,
                "objective_class": cell_text(cell(values, self.columns.get("objective_class")))}
        # one folder is one person and one LOSO fold, however the sheet spells it ('spNO.1', 'spno.1'):
        # the subject is the first spelling seen for that folder
        canonical = self.subject_names.setdefault(subject_dir, subject)
        if canonical != subject:
            fixes.append(Change("subject", subject, canonical, "subject-spelling",
                                f"subject {subject} read as {canonical} (same folder {subject_dir.name})"))
        sample, more = annotated_clip(values, self.columns, COLUMNS, row=row, file=self.sheet_path, dataset="casme3",
                                      subject=canonical, clip_id=clip_id, folder=color_dir, fps=CASME3_FPS,
                                      aliases=EMOTION_ALIASES, repair=self.repair, au_or=self.au_or,
                                      known_fixes=KNOWN_ROW_FIXES.get(row, ()),
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
                             layout=LAYOUT, repairs=REPAIRS))
