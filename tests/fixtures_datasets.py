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
from typing import Any

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
    """The frame numbers written for a row: ``row["frames"]`` (any iterable, e.g. a range for a
    clip folder running onset..offset), else the row's own numbers."""
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
# the 255-row coding file (2019-07-01) as modelled here
CASME2_EMOTIONS = {"others": 99, "disgust": 63, "happiness": 32, "repression": 27, "surprise": 28, "sadness": 4, "fear": 2}
CASME2_SHEET = "CASME2-coding-20190701.xlsx"
CASME2_HEADER = ["Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None, "Action Units",
                 "Estimated Emotion"]
_AU_CELLS = [4, "4+7", "R12", "L10+25", "1+2", "12+15", "4+9"]


def casme2_rows() -> list[dict]:
    """255 rows of 26 subjects, the emotions of the 2019-07-01 sheet: the 145 clips of the
    composite (disgust 61, repression 27, happiness 32, surprise 25, per-subject counts as in
    MEGC2019), the five clips the challenge excluded (sub04/EP12_01f and sub05/EP09_05f disgust,
    the three sub24 ones surprise, as the 2019 sheet labels them) and 105 others/sadness/fear
    clips; sub10 and sub18 have only those. Quirks of the real sheet: sub04/EP12_01f has
    ApexFrame ``/``, sub05/EP09_05f onset == apex. Planted from reports on other releases:
    sub16/EP01_08's offset lies past its frames, row 62's offset contradicts the frames (the
    2014 sheet's error, 91 is on disk), one emotion is spelled ``suprise``, one ``Happiness ``."""
    composite = _spread(["disgust"] * 61 + ["repression"] * 27 + ["happiness"] * 32 + ["surprise"] * 25, seed=2)
    rows: list[dict] = []
    for subject, count in CASME2_MEGC_SUBJECTS.items():
        for k in range(count):
            name = "EP01_08" if (subject, k) == (16, 0) else f"EP{20 + k:02d}_{subject:02d}f"
            rows.append({"subject": subject, "filename": name, "emotion": composite.pop()})
    rows += [{"subject": 4, "filename": "EP12_01f", "emotion": "disgust"},
             {"subject": 5, "filename": "EP09_05f", "emotion": "disgust"}]
    rows += [{"subject": 24, "filename": name, "emotion": "surprise"} for name in ("EP07_01", "EP07_04f", "EP10_03")]
    extra = ["others"] * 99 + ["sadness"] * 4 + ["fear"] * 2
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
    spelled = [r for r in rows if r["emotion"] == "surprise" and r["subject"] != 24][3]
    spelled["emotion"] = "suprise"
    [r for r in rows if r["emotion"] == "happiness"][5]["emotion"] = "Happiness "
    assert len(rows) == 255
    return rows


def build_casme2(root: Path, rows: list[dict] | None = None, *, sheet: str = CASME2_SHEET,
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


# --------------------------------------------------------------------------- SAMM

# clips per subject in the MEGC2019 composite (133 clips, 28 subjects)
SAMM_MEGC_SUBJECTS = {
    6: 11, 7: 8, 9: 4, 10: 4, 11: 20, 12: 3, 13: 6, 14: 10, 15: 3, 16: 5, 17: 4, 18: 3, 19: 1, 20: 4, 21: 2,
    22: 5, 23: 1, 24: 1, 26: 9, 28: 3, 30: 3, 31: 1, 32: 4, 33: 5, 34: 3, 35: 8, 36: 1, 37: 1,
}
SAMM_EMOTIONS = {"Anger": 57, "Other": 26, "Happiness": 26, "Surprise": 15, "Contempt": 12, "Disgust": 9, "Fear": 8,
                 "Sadness": 6}
SAMM_HEADER = ["Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame", "Offset Frame", "Duration",
               "Micro", "Action Units", "Estimated Emotion", "Objective Classes", "Notes"]
SAMM_TITLE_BLOCK = [
    ["SAMM - Spontaneous Actions and Micro-Movements"],
    ["FACS codes of the micro-movements, version 2"],
    [],
    ["Subject numbers match the folder names of the image sequences."],
    ["Onset, apex and offset are frame numbers of the 200 fps sequences."],
    ["Objective classes follow Davison et al. (2018)."],
    [],
    ["Key", "Meaning"],
    ["L", "Left"],
    ["R", "Right"],
    ["A-E", "Intensity"],
    [],
    [],
]
SAMM_OR_AU_ROWS = (30, 33, 56, 79, 169)


def samm_rows() -> list[dict]:
    """159 rows of 32 subjects (006..037): the 133 composite clips (anger 57, contempt 12,
    disgust 9, fear 8, sadness 6, happiness 26, surprise 15; per-subject counts as in MEGC2019)
    and 26 Other clips; 008, 025, 027 and 029 have only Other. Quirks of the real v2 sheet, each
    clip folder holding onset..offset: row 140 apex 1143 after the offset (onset 1071, offset
    1134), row 147 apex 1930 before the onset (4896..4970). Planted: AUs with ``or`` in rows 30,
    33, 56, 79, 169; row 71's offset contradicts its frames as in an earlier release (5739 is on
    disk); two Other clips spelled ``Others``; Subject cells are numbers or text."""
    composite = _spread([e for e, n in SAMM_EMOTIONS.items() if e != "Other" for _ in range(n)], seed=3)
    rows: list[dict] = []
    for subject, count in SAMM_MEGC_SUBJECTS.items():
        rows += [{"subject": subject, "filename": f"{subject:03d}_{k // 3 + 1}_{k % 3 + 1}", "emotion": composite.pop()}
                 for k in range(count)]
    others = [8, 25, 27, 29, 8, 25, 27, 29] + [6, 7, 9, 10, 11, 11, 13, 14, 16, 17, 20, 22, 26, 26, 32, 33, 35, 35]
    rows += [{"subject": s, "filename": f"{s:03d}_9_{k + 1}", "emotion": "Other"} for k, s in enumerate(others)]
    rows.sort(key=lambda r: (r["subject"], r["filename"]))
    for i, row in enumerate(rows):
        onset = 1000 + 37 * i
        row.update(onset=onset, apex=onset + 30, offset=onset + 60, aus=_AU_CELLS[i % len(_AU_CELLS)],
                   padded=row["subject"] % 2 == 0)
    assert rows[140 - 15]["subject"] == 28
    rows[140 - 15].update(filename="028_4_1", onset=1071, apex=1143, offset=1134, frames=range(1071, 1135))
    rows[147 - 15].update(onset=4896, apex=1930, offset=4970, frames=range(4896, 4971))  # 032_3_1 in v2
    for row_number, aus in zip(SAMM_OR_AU_ROWS, ("R12 or R15", "R12 or R15+R20", "L14 or R14", "R14 or L14",
                                                 "R14A or R14B")):
        rows[row_number - 15]["aus"] = aus
    rows[71 - 15].update(onset=5700, apex=5720, offset=5379, frames=[5700, 5720, 5739])
    for row in [r for r in rows if r["emotion"] == "Other"][3:5]:
        row["emotion"] = "Others"
    assert len(rows) == 159
    return rows


def build_samm(root: Path, rows: list[dict] | None = None, *, sheet: str = "SAMM_Micro_FACS_Codes_v2.xlsx") -> Path:
    """Write the spreadsheet (title block, header in row 14) and ``root/<sss>/<Filename>/<sss>_<n>.jpg``."""
    rows = samm_rows() if rows is None else rows
    table = [list(r) for r in SAMM_TITLE_BLOCK] + [SAMM_HEADER]
    for i, row in enumerate(rows):
        subject = row["subject"] if i % 4 else f"{row['subject']:03d}"  # numbers and text, as pandas sees them
        table.append([subject, row["filename"], f"{row['subject'] % 7 + 1}", row["onset"], row["apex"], row["offset"],
                      row["offset"] - row["onset"] + 1, "Micro - 1/2", row["aus"], row["emotion"],
                      f"Class {i % 6 + 1}", None])
        for n in _frames_of(row):
            name = f"{row['subject']:03d}_{n:05d}.jpg" if row.get("padded") else f"{row['subject']:03d}_{n}.jpg"
            write_image(root / f"{row['subject']:03d}" / row["filename"] / name)
    write_xlsx(root / sheet, {"FACS_Codes": table})
    return root


def small_samm_rows() -> list[dict]:
    return [
        {"subject": 6, "filename": "006_1_2", "onset": 5562, "apex": 5588, "offset": 5632, "aus": "4+7", "emotion": "Anger", "padded": True},
        {"subject": 6, "filename": "006_1_3", "onset": 1024, "apex": -1, "offset": 1082, "aus": "R12 or R15", "emotion": "Happiness"},
        {"subject": 7, "filename": "007_3_1", "onset": 3500, "apex": 3520, "offset": 3544, "aus": "A1+2", "emotion": "Others"},
    ]


# --------------------------------------------------------------------------- SMIC-HS

# (negative, positive, surprise) per subject: the 164 clips of 16 subjects
SMIC_SUBJECTS = {
    1: (3, 2, 1), 2: (0, 1, 5), 3: (22, 11, 6), 4: (10, 4, 5), 5: (1, 0, 1), 6: (2, 0, 2), 8: (9, 4, 0), 9: (0, 1, 3),
    11: (3, 3, 1), 12: (0, 8, 1), 13: (0, 10, 0), 14: (3, 2, 5), 15: (1, 1, 2), 18: (2, 0, 5), 19: (0, 1, 1),
    20: (14, 3, 5),
}
_SMIC_ABBREVIATION = {"negative": "ne", "positive": "po", "surprise": "sur"}


def build_smic(root: Path, subjects: dict[int, tuple[int, int, int]] | None = None) -> Path:
    """``root/HS/s<k>/micro/<emotion>/s<k>_<ne|po|sur>_<nn>/image<number>.bmp``, three frames a clip,
    plus folders the loader must ignore (a subject without micro/, a non_micro/ folder)."""
    subjects = SMIC_SUBJECTS if subjects is None else subjects
    for subject, counts in subjects.items():
        for emotion, count in zip(("negative", "positive", "surprise"), counts):
            for k in range(count):
                clip = root / "HS" / f"s{subject}" / "micro" / emotion / f"s{subject}_{_SMIC_ABBREVIATION[emotion]}_{k + 1:02d}"
                first = 1000 * subject + 40 * k
                for n in (first, first + 11, first + 23):
                    write_image(clip / f"image{n:07d}.bmp")
        write_image(root / "HS" / f"s{subject}" / "non_micro" / "n_01" / "image0000001.bmp")
    (root / "HS" / "s7").mkdir(parents=True, exist_ok=True)
    return root


# --------------------------------------------------------------------------- CAS(ME)^2

CASME_SQ_SUBJECTS = (15, 16, 19, 20, 21, 22, 23, 24, 25, 26, 27, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 40)
CASME_SQ_VIDEOS = {"0101": ("disgust1", "disgustingteeth"), "0102": ("disgust2", "eatingworms"),
                   "0401": ("anger1", "girlcrashing"), "0402": ("anger2", "sittingonbed"),
                   "0502": ("happy2", "funnyerrors"), "0503": ("happy3", "keyboard"),
                   "0505": ("happy5", "funnyinnovations"), "0507": ("happy7", "climbingthewall")}
CASME_SQ_MICRO = {"negative": 21, "positive": 8, "surprise": 9, "others": 19}
CASME_SQ_MACRO = 40


def casme_sq_rows() -> list[dict]:
    """57 micro-expressions (negative 21, positive 8, surprise 9, others 19) spread over the 22
    subjects, plus 40 macro-expressions; several expressions per video. Quirks: one micro row
    with offset 0 (not coded), emotions in mixed case, ``other`` once."""
    emotions = _spread([e for e, n in CASME_SQ_MICRO.items() for _ in range(n)], seed=5)
    codes = list(CASME_SQ_VIDEOS)
    rows = []
    for k in range(57 + CASME_SQ_MACRO):
        participant = k % 22 + 1
        code = codes[(k // 22) % len(codes)]
        micro = k < 57
        onset = 100 + 50 * k
        rows.append({"participant": participant, "code": code, "onset": onset, "apex": onset + 4,
                     "offset": onset + (9 if micro else 40), "aus": _AU_CELLS[k % len(_AU_CELLS)],
                     "emotion": emotions.pop() if micro else "positive",
                     "type": "micro-expression" if micro else "macro-expression", "self_report": "happy"})
    per_video = Counter()
    for row in rows:
        per_video[row["participant"], row["code"]] += 1
        row["clip"] = f"{CASME_SQ_VIDEOS[row['code']][0]}_{per_video[row['participant'], row['code']]}"
    rows[3].update(offset=0, frames=[rows[3]["onset"], rows[3]["apex"]])
    rows[5]["emotion"] = rows[5]["emotion"].capitalize()
    next(r for r in rows[:57] if r["emotion"] == "others")["emotion"] = "other"
    rows[60].update(offset=0, frames=[rows[60]["onset"], rows[60]["apex"]])  # a macro row, filtered out
    return rows


def build_casme_sq(root: Path, rows: list[dict] | None = None, *, frames_dir: str = "rawpic") -> Path:
    """``CAS(ME)^2code_final.xlsx`` (no header; naming rule sheets) and
    ``rawpic/s<NN>/<NN>_<code><title>/img<N>.jpg``."""
    rows = casme_sq_rows() if rows is None else rows
    codes = [[row["participant"], row["clip"], row["onset"], row["apex"], row["offset"], row["aus"], row["emotion"],
              row["type"], row["self_report"]] for row in rows]
    rule1 = [[number, f"casme_0{number}", k + 1] for k, number in enumerate(CASME_SQ_SUBJECTS)]
    rule2 = [[int(code) if k % 2 else code, name] for k, (code, (name, _)) in enumerate(CASME_SQ_VIDEOS.items())]
    write_xlsx(root / "CAS(ME)^2code_final.xlsx", {"CASFEcode_final": codes, "naming rule1": rule1,
                                                  "naming rule2": rule2})
    for row in rows:
        number = CASME_SQ_SUBJECTS[row["participant"] - 1]
        title = CASME_SQ_VIDEOS.get(row["code"], ("", "unknown"))[1]
        for n in _frames_of(row):
            write_image(root / frames_dir / f"s{number}" / f"{number}_{row['code']}{title}" / f"img{n}.jpg")
    return root


# --------------------------------------------------------------------------- CAS(ME)^3 part A

CASME3_EMOTIONS = {"disgust": 250, "surprise": 187, "others": 161, "fear": 86, "anger": 64, "sad": 57, "happy": 55}
CASME3_SUBJECTS = tuple(f"spNO.{k}" for k in range(1, 200, 2))  # 100 subjects
CASME3_HEADER = ["Subject", "Filename", "Onset", "Apex", "Offset", "AU", "Objective class", "emotion"]


def casme3_rows() -> list[dict]:
    """860 rows (disgust 250, surprise 187, others 161, fear 86, anger 64, sad 57, happy 55) of
    100 subjects, about two micro-expressions per material, 8 to 64 frames long. Quirks:
    ``Others`` for a third of the others, onset == apex in every 40th row, two rows of one
    material with the same onset, subject folders ``spNo.<k>`` for every fifth subject, and the
    inconsistent rows of the real v2 sheet (130, 710, 751, 752, 798, 800) with their values, each
    in a material of its own whose folder holds a run of frames as a recording does."""
    emotions = _spread([e for e, n in CASME3_EMOTIONS.items() for _ in range(n)], seed=7)
    rows = []
    for i in range(860):
        subject = CASME3_SUBJECTS[i % 100]
        material = "abcde"[(i // 100) % 5]
        onset = 100 + 40 * (i // 100)
        emotion = emotions.pop()
        if emotion == "others" and i % 3 == 0:
            emotion = "Others"
        rows.append({"subject": subject, "filename": material, "onset": onset,
                     "apex": onset if i % 40 == 0 else onset + 5, "offset": onset + 8 + (7 * i) % 57,
                     "aus": "4,7" if i % 2 else "L12", "objective": f"{i % 7 + 1}", "emotion": emotion})
    rows.sort(key=lambda r: (int(r["subject"].split(".")[1]), r["filename"], r["onset"]))
    twin = next(r for r in rows if r["subject"] == "spNO.7" and r["filename"] == "a")
    twin_index = rows.index(twin)
    rows[twin_index + 1].update(onset=twin["onset"], apex=twin["onset"] + 2, offset=twin["onset"] + 30)
    fixes = {130: dict(onset=112, apex=83, offset=358, frames=range(1, 400)),
             710: dict(onset=5, apex=5, offset=3460, frames=range(1, 60)),
             751: dict(onset=3647, apex=2668, offset=2694, frames=range(1, 3700)),
             752: dict(onset=0, apex=0, offset=25, frames=range(1, 40)),
             798: dict(onset=1812, apex=1824, offset=0, frames=range(1800, 1900)),
             800: dict(onset=2327, apex=2363, offset=0, frames=range(2300, 2450))}
    for row_number, change in fixes.items():
        row = rows[row_number - 2]
        assert row["subject"] != "spNO.7", row_number
        row.update(change, filename=f"f{row_number}")  # its own material
    assert len(rows) == 860
    return rows


def casme3_folder(subject: str) -> str:
    """The on-disk folder of a subject: every fifth is written ``spNo.<k>``."""
    k = int(subject.split(".")[1])
    return f"spNo.{k}" if k % 10 == 1 else subject


def build_casme3(root: Path, rows: list[dict] | None = None, *, depth: bool = True,
                 sheet: str = "cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx") -> Path:
    """``root/annotation/<sheet>`` (worksheet ``label``) and
    ``root/<subject>/<material>/color/<n>.jpg`` + ``depth/<n>.png``."""
    rows = casme3_rows() if rows is None else rows
    table = [CASME3_HEADER] + [[r["subject"], r["filename"], r["onset"], r["apex"], r["offset"], r["aus"],
                                r["objective"], r["emotion"]] for r in rows]
    write_xlsx(root / "annotation" / sheet, {"label": table, "notes": [["AU coded by two coders"]]})
    for row in rows:
        clip = root / casme3_folder(row["subject"]) / row["filename"]
        for n in _frames_of(row):
            write_image(clip / "color" / f"{n}.jpg")
            if depth:
                write_image(clip / "depth" / f"{n}.png")
    return root


# --------------------------------------------------------------------------- MEGC2019


def build_megc2019(root: Path) -> Path:
    """``root/CASME2``, ``root/SAMM``, ``root/SMIC`` with the full fixture trees."""
    build_casme2(root / "CASME2")
    build_samm(root / "SAMM")
    build_smic(root / "SMIC")
    return root


def megc2019_flow_rows() -> list[dict]:
    """The 442 rows of the released CSV: per source dataset the subject counts of the composite
    and its class counts (CASME II 88/32/25, SAMM 92/26/15, SMIC 70/51/43)."""
    rows = []
    labels = {"casme2": _spread([0] * 88 + [1] * 32 + [2] * 25, seed=11),
              "samm": _spread([0] * 92 + [1] * 26 + [2] * 15, seed=12)}
    for subject, count in CASME2_MEGC_SUBJECTS.items():
        rows += [{"dataset": "casme2", "sub": f"sub{subject:02d}", "filename_o": f"EP{k + 1:02d}_{subject:02d}f",
                  "label": labels["casme2"].pop()} for k in range(count)]
    for subject, counts in SMIC_SUBJECTS.items():
        for label, count in enumerate(counts):
            rows += [{"dataset": "smic", "sub": f"s{subject:02d}",
                      "filename_o": f"s{subject:02d}_{('ne', 'po', 'sur')[label]}_{k + 1:02d}", "label": label}
                     for k in range(count)]
    for subject, count in SAMM_MEGC_SUBJECTS.items():
        rows += [{"dataset": "samm", "sub": f"{subject:03d}", "filename_o": f"{subject:03d}_{k // 3 + 1}_{k % 3 + 1}",
                  "label": labels["samm"].pop()} for k in range(count)]
    assert len(rows) == 442
    return rows


def build_megc2019_flow(root: Path, rows: list[dict] | None = None, *, crops: bool = True) -> Path:
    """``label/combined_3_class2_for_optical_flow.csv``, ``STSNet_whole_norm_u_v_os/<sub>_<filename_o> .png``
    (28 x 28; every tenth without the space) and, with ``crops``, ``combined_datasets_whole/<imagename>``;
    plus a decoy folder holding two of the flow images."""
    rows = megc2019_flow_rows() if rows is None else rows
    table = root / "label" / "combined_3_class2_for_optical_flow.csv"
    table.parent.mkdir(parents=True, exist_ok=True)
    image = np.zeros((28, 28, 3), np.uint8)
    image[..., 0] = np.arange(28, dtype=np.uint8)[None, :] * 9  # R: a ramp along x
    image[..., 2] = 200
    ok, flow_png = cv2.imencode(".png", image[..., ::-1])  # cv2 writes BGR
    assert ok
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dataset", "sub", "filename_o", "label", "imagename", "notes"])
        for k, row in enumerate(rows):
            name = f"{row['sub']}_{row['filename_o']}"
            writer.writerow([row["dataset"], row["sub"], row["filename_o"], row["label"], f"{name}.jpg", ""])
            flow = root / "datasets" / "STSNet_whole_norm_u_v_os" / (f"{name}.png" if k % 10 == 0 else f"{name} .png")
            flow.parent.mkdir(parents=True, exist_ok=True)
            flow.write_bytes(flow_png.tobytes())
            if crops:
                write_image(root / "datasets" / "combined_datasets_whole" / f"{name}.jpg")
    for row in rows[:2]:
        (root / "datasets" / "decoy").mkdir(parents=True, exist_ok=True)
        (root / "datasets" / "decoy" / f"{row['sub']}_{row['filename_o']} .png").write_bytes(flow_png.tobytes())
    return root
