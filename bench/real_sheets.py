"""The loaders on the real coding sheets: counts per protocol and every fix, under each policy.

The real CASME II, SAMM and CAS(ME)^3 coding sheets are public, their frames are not. This
script lays out a temporary tree in each dataset's real on-disk layout around the REAL sheet
(tiny JPEG frames, hard-linked, numbered as the sheet says) and loads it as ``merkit datasets
inspect`` does (``load_dataset`` once per policy, then ``label_samples`` per protocol): with the
default ``repair`` policy, then ``strict`` and ``skip``. It prints the counts per protocol
against the published ones, every fix, the rows left out, and rows that are consistent but
implausibly long (kept as annotated), and writes ``bench/results/real_sheets.json``
(git-ignored: it is derived from the licensed sheets).

What the tree assumes, since the frames are not here (printed with the results):

* CASME II, SAMM: a folder per clip holding every frame from the sheet's onset to its offset
  (the releases' clip folders run from onset to offset; SAMM's ``Duration`` column agrees).
* CAS(ME)^3: a folder per material holding the whole recording, frames 1..N with N the largest
  frame number the label sheet (and, with ``xlrd``, the release's full annotation of every
  macro- and micro-expression) names for that material; ``depth/`` links to ``color/``.
* MEGC2019 from raw datasets: the CASME II and SAMM trees above plus the SMIC fixture tree of
  the tests (SMIC has no public sheet); the CASME II and SAMM clips it keeps are compared with
  the released composite list (``megc2019-flow``), read from ``--root`` as it is.

With ``xlrd`` installed the CAS(ME)^3 repairs are also compared with the release's full
annotation ``CAS(ME)3_part_A_v2.xls`` (every macro- and micro-expression, some corrected).

Usage::

    .venv/bin/python bench/real_sheets.py --root /work/realdata
    .venv/bin/python bench/real_sheets.py --root /work/realdata --keep /tmp/real-trees
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
RESULTS = ROOT / "bench" / "results" / "real_sheets.json"

#: published counts (issue 11; CASME II: see the casme2 loader's doc for the 2019 sheet)
EXPECTED = {
    ("samm", "samm-5"): (136, {"anger": 57, "other": 26, "happiness": 26, "surprise": 15, "contempt": 12}),
    ("samm", "samm-3"): (133, None),
    ("samm", "samm-8"): (159, None),
    ("casme3", "casme3-7"): (860, {"disgust": 250, "surprise": 187, "others": 161, "fear": 86, "anger": 64,
                                   "sad": 57, "happy": 55}),
    ("casme2", "casme2-5"): (249, None),
    ("megc2019-flow", "megc2019-3"): (442, None),
    ("megc2019", "megc2019-3"): (442, None),
}
PROTOCOLS = {"casme2": ("casme2-5", "casme2-3"), "samm": ("samm-5", "samm-3", "samm-8"),
             "casme3": ("casme3-7", "casme3-4", "casme3-3")}
READING_RULES = {"apex-not-annotated", "emotion-spelling", "au-alternatives", "folder-case", "subject-spelling",
                 "clip-id-repeat", "offset-not-coded-apex"}


# --------------------------------------------------------------------------- trees


class FrameWriter:
    """Writes frame files as hard links to one tiny JPEG per folder (fast, few inodes)."""

    def __init__(self) -> None:
        import cv2
        import numpy as np

        ok, data = cv2.imencode(".jpg", np.full((8, 8, 3), 128, np.uint8))
        assert ok
        self.jpeg = data.tobytes()
        self.files = 0

    def folder(self, folder: Path, names: list[str]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        existing = {p.name for p in folder.iterdir()}
        todo = [n for n in names if n not in existing]
        self.files += len(set(names))
        if not todo:
            return
        source = folder / todo[0]
        source.write_bytes(self.jpeg)
        for name in todo[1:]:
            os.link(source, folder / name)


def _numbers(values: tuple, columns: dict[str, int]) -> list[int]:
    from merkit.data.annotations import cell, cell_text

    found = []
    for field in ("onset", "apex", "offset"):
        text = cell_text(cell(values, columns[field]))
        if re.fullmatch(r"[0-9]+", text):
            found.append(int(text))
    return found


def _interval(values: tuple, columns: dict[str, int]) -> range:
    """The frames from the row's onset to its offset (either order), as annotated."""
    from merkit.data.annotations import cell, cell_text

    ends = [int(t) for t in (cell_text(cell(values, columns[f])) for f in ("onset", "offset")) if t.isdigit()]
    return range(min(ends), max(ends) + 1)


def _header_rows(sheet: Path, required: dict[str, str]):
    from merkit.data.annotations import column_positions, find_header, is_blank_row, read_sheet

    rows = read_sheet(sheet, 0)
    at = find_header(rows, "Subject", file=sheet)
    columns = column_positions(rows[at], required, None, file=sheet)
    return [(r, v) for r, v in rows[at + 1:] if not is_blank_row(v)], columns


def build_clip_folders(dataset: str, sheet: Path, root: Path, writer: FrameWriter) -> str:
    """CASME II or SAMM: the sheet, and one folder per clip holding its onset..offset frames."""
    from merkit.data import casme2, samm
    from merkit.data.annotations import cell, cell_text

    module = {"casme2": casme2, "samm": samm}[dataset]
    shutil.copy(sheet, root / sheet.name)
    rows, columns = _header_rows(sheet, module.COLUMNS)
    for row, values in rows:
        subject = module.subject_id(cell(values, columns["subject"]), file=sheet, row=row)
        clip = cell_text(cell(values, columns["filename"]))
        frames = _interval(values, columns)
        if dataset == "casme2":
            writer.folder(root / "Cropped" / subject / clip, [f"reg_img{n}.jpg" for n in frames])
        else:
            writer.folder(root / subject / clip, [f"{subject}_{n:05d}.jpg" for n in frames])
    if dataset == "casme2":
        return "Cropped/subNN/<Filename>/reg_img<n>.jpg for n = onset..offset of the row"
    return "<sss>/<Filename>/<sss>_<nnnnn>.jpg for n = onset..offset of the row (SAMM's Duration agrees)"


def full_annotation(root: Path) -> list[list] | str:
    """Rows of the release's full part-A annotation (``CAS(ME)3_part_A_v2.xls``, first worksheet:
    Subject, Filename, Onset, Apex, Offset, AU, Expression type, ...), or why there are none."""
    path = _find(root, r"CAS\(ME\)3_part_A_v2\.xls")
    if path is None:
        return "CAS(ME)3_part_A_v2.xls not found under --root"
    try:
        import xlrd
    except ImportError:
        return "install xlrd to read CAS(ME)3_part_A_v2.xls"
    sheet = xlrd.open_workbook(str(path)).sheet_by_index(0)
    return [sheet.row_values(i) for i in range(sheet.nrows)]


def build_casme3(sheet: Path, root: Path, writer: FrameWriter, full: list[list] | str) -> str:
    from merkit.data.annotations import cell, cell_text, column_positions, find_header, read_sheet
    from merkit.data.casme3 import COLUMNS

    (root / "annotation").mkdir(parents=True, exist_ok=True)
    shutil.copy(sheet, root / "annotation" / sheet.name)
    rows = read_sheet(sheet, "label")
    at = find_header(rows, "Subject", file=sheet)
    columns = column_positions(rows[at], COLUMNS, None, file=sheet)
    last: dict[tuple[str, str], int] = defaultdict(int)
    for _, values in rows[at + 1:]:
        subject, material = (cell_text(cell(values, columns[f])) for f in ("subject", "filename"))
        if subject and material:
            last[subject, material] = max([last[subject, material], *_numbers(values, columns)])
    if isinstance(full, list):  # the recording runs at least to the last expression coded in it
        for values in full[1:]:
            key = (cell_text(values[0]), cell_text(values[1]))
            if key in last:
                last[key] = max([last[key], *_numbers(tuple(values), {"onset": 2, "apex": 3, "offset": 4})])
    for (subject, material), high in last.items():
        folder = root / subject / material
        writer.folder(folder / "color", [f"{n}.jpg" for n in range(1, high + 1)])
        if not (folder / "depth").exists():
            (folder / "depth").symlink_to("color", target_is_directory=True)
    source = "the label sheet and the full annotation" if isinstance(full, list) else f"the label sheet ({full})"
    return (f"<subject>/<material>/color/<n>.jpg for n = 1..the largest frame number {source} names for the "
            f"material (the whole recording); depth/ links to color/")


def _find(root: Path, pattern: str) -> Path | None:
    found = sorted(p for p in root.rglob("*") if p.is_file() and re.fullmatch(pattern, p.name, re.IGNORECASE))
    return found[0] if found else None


# --------------------------------------------------------------------------- runs


def _load(name: str, root: Path, policy: str):
    """(LoadResult or None, error line or None, seconds) of one loader run."""
    from merkit.data.registry import load_dataset
    from merkit.errors import MerkitError

    start = time.perf_counter()
    try:
        result, error = load_dataset(name, root, on_error=policy), None
    except MerkitError as err:
        result, error = None, f"{type(err).__name__}: {err}"
    return result, error, round(time.perf_counter() - start, 2)


def _summary(loaded, protocol: str, policy: str) -> dict[str, Any]:
    """Counts under ``protocol`` as ``merkit datasets inspect`` gives them (same functions)."""
    from merkit.data.protocols import label_samples
    from merkit.errors import MerkitError

    result, error, seconds = loaded
    if error is not None:
        return {"error": error, "seconds": seconds}
    try:
        labelled = label_samples(result.samples, get_protocol(protocol), strict=policy == "strict")
    except MerkitError as err:
        return {"error": f"{type(err).__name__}: {err}", "seconds": seconds}
    classes = get_protocol(protocol).classes
    counts = Counter(classes[s.label] for s in labelled.samples)
    fixes = [f.as_dict() for f in result.fixes]
    return {"n_samples": len(labelled.samples), "n_subjects": len({s.group for s in labelled.samples}),
            "class_counts": {c: counts[c] for c in classes}, "left_out": labelled.left_out,
            "fixes_by_rule": dict(Counter(f["rule"] for f in fixes)),
            "repairs": [f for f in fixes if f["rule"] not in READING_RULES],
            "skipped": [*result.skipped, *labelled.skipped], "load_seconds": seconds}


def get_protocol(name: str):
    from merkit.data.protocols import get_protocol as lookup

    return lookup(name)


def long_rows(samples: list) -> list[str]:
    """Consistent rows whose onset-to-offset length is over twice the sheet's 95th percentile."""
    from merkit.data.repairs import SheetStats

    stats = SheetStats.from_rows({"onset": s.onset_frame, "apex": s.apex_frame, "offset": s.offset_frame}
                                 for s in samples)
    return [f"{s.meta.get('file')}, row {s.meta.get('row')} ({s.sample_id}): onset {s.onset_frame}, apex "
            f"{s.apex_frame}, offset {s.offset_frame}: {s.offset_frame - s.onset_frame} frames "
            f"(95th percentile {stats.long_length})"
            for s in samples if stats and s.offset_frame - s.onset_frame > 2 * stats.long_length]


def casme3_full_annotation(rows: list[list] | str, repairs: list[dict]) -> list[str]:
    """The release's full annotation's micro-expression rows of each repaired CAS(ME)^3 row."""
    if isinstance(rows, str):
        return [rows]
    lines = []
    for fix in repairs:
        subject, clip = fix["sample_id"].split("/")[1:]
        material = clip.split("_")[0]
        found = []
        for i, r in enumerate(rows):
            numbers = {str(v).removesuffix(".0") for v in r[2:5]}
            if r[0] == subject and r[1] == material and "micro" in str(r[6]).lower() and \
                    numbers & {str(fix["old"]), str(fix["new"])}:
                found.append(f"row {i + 1}: onset {r[2]}, apex {r[3]}, offset {r[4]}")
        lines.append(f"{fix['sample_id']} {fix['field']} {fix['old']} -> {fix['new']} [{fix['rule']}]; "
                     f"full annotation: {'; '.join(found) or 'no matching row'}")
    return lines


def composite_vs_release(raw, root: Path) -> dict[str, Any]:
    """The CASME II and SAMM clips megc2019 keeps from the raw sheets vs the released list."""
    import csv

    from merkit.data.protocols import apply_protocol

    table = _find(root, r"combined_3_class2_for_optical_flow\.csv")
    if table is None or raw is None:
        return {"note": "no released composite CSV or no raw composite"}
    with open(table, newline="") as handle:
        released = {(r["dataset"].lower(), r["sub"], r["filename_o"]): int(r["label"]) for r in csv.DictReader(handle)}
    samples = apply_protocol(raw.samples, "megc2019-3")
    ours = {(s.dataset, s.subject, s.clip_id): s.label for s in samples if s.dataset in ("casme2", "samm")}
    wanted = {k: v for k, v in released.items() if k[0] in ("casme2", "samm")}
    return {"only_in_raw": sorted("/".join(k) for k in set(ours) - set(wanted)),
            "only_in_release": sorted("/".join(k) for k in set(wanted) - set(ours)),
            "label_differs": sorted("/".join(k) for k in set(ours) & set(wanted) if ours[k] != wanted[k]),
            "compared": len(wanted)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=None, help="folder holding the real sheets (searched recursively)")
    parser.add_argument("--keep", type=Path, default=None, help="build the trees here and keep them")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.root is None:
        print("real_sheets: no --root given (the folder holding the real coding sheets); nothing measured")
        return {}
    sheets = {"casme2": _find(args.root, r"CASME2-coding-.*\.xlsx"),
              "samm": _find(args.root, r"SAMM_Micro_FACS_Codes.*\.xlsx"),
              "casme3": _find(args.root, r"cas\(me\)3_part_A_ME_label.*_v2\.xlsx")}
    work = args.keep or Path(tempfile.mkdtemp(prefix="merkit-real-"))
    writer = FrameWriter()
    full = full_annotation(args.root)
    builders = {"casme2": lambda sheet, root, writer: build_clip_folders("casme2", sheet, root, writer),
                "samm": lambda sheet, root, writer: build_clip_folders("samm", sheet, root, writer),
                "casme3": lambda sheet, root, writer: build_casme3(sheet, root, writer, full)}
    report: dict[str, Any] = {"root": str(args.root), "sheets": {k: str(v) for k, v in sheets.items()}, "layout": {},
                              "datasets": {}}
    try:
        start = time.perf_counter()
        for name, sheet in sheets.items():
            if sheet is None:
                print(f"{name}: no sheet under {args.root}")
                continue
            (work / name).mkdir(parents=True, exist_ok=True)
            report["layout"][name] = builders[name](sheet, work / name, writer)
        report["layout_seconds"] = round(time.perf_counter() - start, 1)
        report["frame_files"] = writer.files
        print(f"trees in {work}: {writer.files} frame files in {report['layout_seconds']} s")
        for name in (n for n in sheets if sheets[n] is not None):
            loads = {policy: _load(name, work / name, policy) for policy in ("repair", "strict", "skip")}
            entry: dict[str, Any] = {protocol: {policy: _summary(loaded, protocol, policy)
                                                for policy, loaded in loads.items()}
                                     for protocol in PROTOCOLS[name]}
            entry["long_rows"] = long_rows(loads["repair"][0].samples) if loads["repair"][0] else []
            report["datasets"][name] = entry
        report["datasets"]["megc2019-flow"] = {"megc2019-3": {"repair": _summary(
            _load("megc2019-flow", args.root, "repair"), "megc2019-3", "repair")}}
        if sheets["casme2"] and sheets["samm"]:
            from fixtures_datasets import build_smic

            composite = work / "megc2019"
            composite.mkdir(exist_ok=True)
            for name in ("casme2", "samm"):
                if not (composite / name.upper()).exists():
                    (composite / name.upper()).symlink_to(work / name, target_is_directory=True)
            build_smic(composite / "SMIC")
            loaded = _load("megc2019", composite, "repair")
            report["datasets"]["megc2019"] = {"megc2019-3": {"repair": _summary(loaded, "megc2019-3", "repair")},
                                              "vs_release": composite_vs_release(loaded[0], args.root)}
        if "casme3" in report["datasets"]:
            repairs = report["datasets"]["casme3"]["casme3-7"]["repair"].get("repairs", [])
            report["datasets"]["casme3"]["vs_full_annotation"] = casme3_full_annotation(full, repairs)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    _print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {args.out}")
    return report


def _print(report: dict[str, Any]) -> None:
    print("\nassumed frame folders:")
    for name, text in report["layout"].items():
        print(f"  {name}: {text}")
    for name, entry in report["datasets"].items():
        for protocol, runs in entry.items():
            if not isinstance(runs, dict) or "repair" not in runs:
                continue
            print(f"\n== {name} / {protocol}")
            for policy, summary in runs.items():
                if "error" in summary:
                    print(f"  {policy:7s} error: {summary['error'][:300]}")
                    continue
                expected = EXPECTED.get((name, protocol))
                check = ""
                if expected and policy == "repair":
                    n_ok = summary["n_samples"] == expected[0]
                    classes_ok = expected[1] is None or summary["class_counts"] == expected[1]
                    check = "  [matches the published count]" if n_ok and classes_ok else f"  [EXPECTED {expected}]"
                print(f"  {policy:7s} {summary['n_samples']} clips, {summary['n_subjects']} subjects  "
                      f"{summary['class_counts']}{check}")
                if policy == "repair":
                    if summary["left_out"]:
                        print(f"          left out by the protocol: {summary['left_out']}")
                    print(f"          fixes by rule: {summary['fixes_by_rule']}")
                    for fix in summary["repairs"]:
                        print(f"          repair: row {fix['row']} {fix['sample_id']}: {fix['field']} {fix['old']} -> "
                              f"{fix['new']} [{fix['rule']}] {fix['detail']}")
                if summary["skipped"] and policy != "repair" or (policy == "repair" and summary["skipped"]):
                    for line in summary["skipped"][:12]:
                        print(f"          skipped: {line}")
                    if len(summary["skipped"]) > 12:
                        print(f"          ... {len(summary['skipped']) - 12} more skipped")
        for line in entry.get("long_rows", []):
            print(f"  consistent but long (kept): {line}")
        if "vs_release" in entry:
            print(f"  raw composite vs released list: {entry['vs_release']}")
        for line in entry.get("vs_full_annotation", []):
            print(f"  vs full annotation: {line}")


if __name__ == "__main__":
    main()
