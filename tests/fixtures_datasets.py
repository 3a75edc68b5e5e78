"""Fixture trees in the real on-disk layouts of the licensed datasets, with tiny images.

Each ``*_rows()`` function returns annotation rows whose class and subject distribution mirrors
the real release where the literature gives it (per-subject counts of the MEGC2019 composite are
those of its 442-clip list); each ``build_*`` writes a tree a loader can read. Clips carry only
the frames their annotation names (onset, apex, offset), as 8 x 8 images. The known quirks of
each release are planted where the real files have them.
"""

from __future__ import annotations

import csv
import random
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np
import openpyxl

_ENCODED: dict[str, bytes] = {}


def write_image(path: Path) -> None:
    """An 8 x 8 image in the format of ``path``'s suffix (encoded once, then copied)."""
    suffix = path.suffix.lower()
    if suffix not in _ENCODED:
        image = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 4)
        ok, data = cv2.imencode(suffix, np.dstack([image, image[::-1], image.T]))
        assert ok
        _ENCODED[suffix] = data.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_ENCODED[suffix])


def write_xlsx(path: Path, sheets: dict[str, list[list[Any]]]) -> Path:
    """An .xlsx with one worksheet per entry, rows written from row 1."""
    book = openpyxl.Workbook()
    book.remove(book.active)
    for name, rows in sheets.items():
        sheet = book.create_sheet(name)
        for values in rows:
            sheet.append(list(values))
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(path)
    return path


def _frames_of(row: dict) -> set[int]:
    if "frames" in row:
        return set(row["frames"])
    return {n for n in (row["onset"], row["apex"], row["offset"]) if isinstance(n, int) and n >= 0}


def _spread(emotions: list[str], seed: int) -> list[str]:
    shuffled = list(emotions)
    random.Random(seed).shuffle(shuffled)
    return shuffled


# --------------------------------------------------------------------------- CASME II

# clips per subject in the MEGC2019 composite (145 clips, 24 subjects)
CASME2_MEGC_SUBJECTS = {
    1: 3, 2: 9, 3: 5, 4: 2, 5: 6, 6: 4, 7: 5, 8: 1, 9: 10, 11: 4, 12: 11, 13: 2, 14: 3, 15: 3, 16: 3,
    17: 31, 19: 11, 20: 2, 21: 1, 22: 2, 23: 8, 24: 3, 25: 5, 26: 11,
}
CASME2_EXCLUDED = (("sub04", "EP12_01f"), ("sub05", "EP09_05f"), ("sub24", "EP07_01"), ("sub24", "EP07_04f"),
                   ("sub24", "EP10_03"))
# the 255-row coding file (2014-05-08) as modelled here
CASME2_EMOTIONS = {"others": 99, "disgust": 63, "happiness": 32, "repression": 27, "surprise": 25, "sadness": 7, "fear": 2}
CASME2_HEADER = ["Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None, "Action Units",
                 "Estimated Emotion"]
_AU_CELLS = [4, "4+7", "R12", "L10+25", "1+2", "12+15", "4+9"]


def casme2_rows() -> list[dict]:
    """255 rows of 26 subjects: the 145 clips of the composite (disgust 61, repression 27,
    happiness 32, surprise 25, per-subject counts as in MEGC2019), the five clips the challenge
    excluded (sub04/EP12_01f and sub05/EP09_05f disgust, the three sub24 ones others) and 105
    others/sadness/fear clips; sub10 and sub18 have only those. Quirks: sub04/EP12_01f has
    ApexFrame ``/``, sub05/EP09_05f onset == apex, sub16/EP01_08's offset lies past its frames,
    row 62's offset contradicts the frames (91 is on disk), one emotion is spelled ``suprise``,
    one ``Happiness ``."""
    composite = _spread(["disgust"] * 61 + ["repression"] * 27 + ["happiness"] * 32 + ["surprise"] * 25, seed=2)
    rows: list[dict] = []
    for subject, count in CASME2_MEGC_SUBJECTS.items():
        for k in range(count):
            name = "EP01_08" if (subject, k) == (16, 0) else f"EP{20 + k:02d}_{subject:02d}f"
            rows.append({"subject": subject, "filename": name, "emotion": composite.pop()})
    rows += [{"subject": 4, "filename": "EP12_01f", "emotion": "disgust"},
             {"subject": 5, "filename": "EP09_05f", "emotion": "disgust"}]
    rows += [{"subject": 24, "filename": name, "emotion": "others"} for name in ("EP07_01", "EP07_04f", "EP10_03")]
    extra = ["others"] * 96 + ["sadness"] * 7 + ["fear"] * 2
    subjects = [s for s in range(1, 27)]
    for k, emotion in enumerate(extra):
        subject = subjects[k % len(subjects)]
        rows.append({"subject": subject, "filename": f"EP{60 + k // 26:02d}_{k % 26:02d}", "emotion": emotion})
    rows.sort(key=lambda r: (r["subject"], r["filename"]))
    for i, row in enumerate(rows):
        onset = 40 + (i % 50)
        row.update(onset=onset, apex=onset + 10, offset=onset + 20, aus=_AU_CELLS[i % len(_AU_CELLS)])
    by_clip = {(r["subject"], r["filename"]): r for r in rows}
    by_clip[4, "EP12_01f"].update(onset=261, apex="/", offset=321)
    by_clip[5, "EP09_05f"].update(apex=by_clip[5, "EP09_05f"]["onset"])
    by_clip[16, "EP01_08"].update(onset=73, apex=94, offset=110, frames=[73, 94, 96])
    row62 = rows[62 - 2]
    assert row62["subject"] not in (4, 5, 16, 24), row62
    row62.update(onset=60, apex=75, offset=190, frames=[60, 75, 91])
    spelled = [r for r in rows if r["emotion"] == "surprise"][3]
    spelled["emotion"] = "suprise"
    [r for r in rows if r["emotion"] == "happiness"][5]["emotion"] = "Happiness "
    assert len(rows) == 255
    return rows


def build_casme2(root: Path, rows: list[dict] | None = None, *, sheet: str = "CASME2-coding-20140508.xlsx",
                 frames_dir: str = "Cropped") -> Path:
    """Write ``root/<sheet>`` and ``root/Cropped/subNN/<Filename>/reg_img<N>.jpg``."""
    rows = casme2_rows() if rows is None else rows
    table = [CASME2_HEADER]
    for row in rows:
        table.append([row["subject"], row["filename"], None, row["onset"], row["apex"], row["offset"], None,
                      row["aus"], row["emotion"]])
        for n in _frames_of(row):
            folder = f"sub{row['subject']:02d}" if isinstance(row["subject"], int) else str(row["subject"])
            write_image(root / frames_dir / folder / row["filename"] / f"reg_img{n}.jpg")
    write_xlsx(root / sheet, {"Sheet1": table})
    return root


def small_casme2_rows() -> list[dict]:
    """Three plain rows for malformed-input tests."""
    return [
        {"subject": 1, "filename": "EP02_01f", "onset": 46, "apex": 59, "offset": 86, "aus": "12", "emotion": "happiness"},
        {"subject": 1, "filename": "EP03_02", "onset": 131, "apex": 139, "offset": 161, "aus": "18", "emotion": "others"},
        {"subject": 2, "filename": "EP01_11f", "onset": 46, "apex": 76, "offset": 91, "aus": "4+9", "emotion": "disgust"},
    ]
