from collections import Counter

import openpyxl
import pytest

from fixtures_datasets import SAMM_OR_AU_ROWS, build_samm, small_samm_rows
from merkit.data.protocols import apply_protocol
from merkit.data.registry import get_dataset, load_dataset
from merkit.errors import AnnotationError, MissingFramesError


@pytest.fixture(scope="module")
def samm(tmp_path_factory):
    root = build_samm(tmp_path_factory.mktemp("samm"))
    return root, load_dataset("samm", root)


def test_counts_and_protocols(samm):
    _, result = samm
    samples = result.samples
    assert len(samples) == 159 and len({s.subject for s in samples}) == 32
    assert Counter(s.emotion for s in samples) == {"anger": 57, "other": 26, "happiness": 26, "surprise": 15,
                                                  "contempt": 12, "disgust": 9, "fear": 8, "sadness": 6}
    five = apply_protocol(samples, "samm-5")
    assert len(five) == 136
    three = apply_protocol(samples, "samm-3")
    assert Counter(s.label for s in three) == {0: 92, 1: 26, 2: 15}
    assert len({s.subject for s in three}) == 28
    eight = apply_protocol(samples, "samm-8")
    assert len(eight) == 159 and len({s.label for s in eight}) == 8


def test_header_found_below_title_block_and_fields(samm):
    root, result = samm
    first = result.samples[0]
    assert first.meta["row"] == 15  # header in row 14
    assert first.meta["file"] == str(root / "SAMM_Micro_FACS_Codes_v2.xlsx")
    assert (first.dataset, first.subject, first.clip_id, first.fps) == ("samm", "006", "006_1_1", 200)
    assert first.frames.paths[0].name == f"006_{first.onset_frame:05d}.jpg"
    odd = next(s for s in result.samples if s.subject == "007")
    assert odd.frames.paths[0].name == f"007_{odd.onset_frame}.jpg"  # no zero padding
    assert odd.frames.numbers[0] == odd.onset_frame
    assert first.meta["objective_class"] == "Class 1"


def test_quirks(samm):
    _, result = samm
    by_row = {s.meta["row"]: s for s in result.samples}
    assert by_row[140].apex_frame is None  # 1143 after the offset; 1103, 1113, 1123, 1133 all fit
    assert by_row[147].apex_frame == 4930  # 1930 before the onset; 4930 is the one slip inside 4896..4970
    assert sum(s.apex_frame is None for s in result.samples) == 1
    assert by_row[30].aus == () and by_row[30].meta["au_alternatives"] == ("R12 or R15",)
    assert by_row[33].aus == ("R20",)
    assert by_row[71].offset_frame == 5739
    rules = Counter(f.rule for f in result.fixes)
    assert rules == {"au-alternatives": len(SAMM_OR_AU_ROWS), "emotion-spelling": 2, "known-fix": 1,
                     "apex-unreliable": 1, "digit-typo": 1}
    fixes = {f.row: f for f in result.fixes if f.rule not in ("au-alternatives", "emotion-spelling")}
    assert (fixes[71].field, fixes[71].old, fixes[71].new) == ("offset", 5379, 5739)
    assert (fixes[140].sample_id, fixes[140].field, fixes[140].old, fixes[140].new) == ("samm/028/028_4_1", "apex",
                                                                                       1143, None)
    assert (fixes[147].field, fixes[147].old, fixes[147].new) == ("apex", 1930, 4930)
    assert all(f.file.endswith("SAMM_Micro_FACS_Codes_v2.xlsx") for f in result.fixes)


def test_strict_and_skip(samm):
    root, _ = samm
    with pytest.raises(AnnotationError, match=r"row 71: 012/012_1_2: onset frame 5700 is after offset frame 5379"):
        load_dataset("samm", root, on_error="strict")
    result = load_dataset("samm", root, on_error="skip")
    assert len(result.samples) == 156
    assert [line.split(", ")[1].split(":")[0] for line in result.skipped] == ["row 71", "row 140", "row 147"]
    assert len(apply_protocol(result.samples, "samm-5")) == 133


def test_or_aus_kept_on_request(tmp_path):
    root = build_samm(tmp_path, small_samm_rows())
    result = load_dataset("samm", root, au_or="all")
    assert result.samples[1].aus == ("R12", "R15")
    assert result.samples[2].aus == ("A1", "2")
    assert result.samples[2].emotion == "other"


def test_registered():
    info = get_dataset("samm")
    assert info.protocols[0] == "samm-5" and "006_05562.jpg" in info.layout


def test_apex_minus_one_means_not_annotated(tmp_path):
    result = load_dataset("samm", build_samm(tmp_path, small_samm_rows()), on_error="strict")
    assert result.samples[1].apex_frame is None
    [fix] = [f for f in result.fixes if f.rule == "apex-not-annotated"]
    assert (fix.row, fix.old, fix.new) == (16, "-1", None)


def test_header_missing_and_bad_rows(tmp_path):
    root = build_samm(tmp_path, small_samm_rows())
    sheet = root / "SAMM_Micro_FACS_Codes_v2.xlsx"
    book = openpyxl.load_workbook(sheet)
    book.active["D16"] = 2000  # row 16: onset after offset
    book.active["C17"] = None
    book.save(sheet)
    with pytest.raises(AnnotationError, match="onset frame 2000 is after offset frame 1082") as info:
        load_dataset("samm", root, on_error="strict")
    assert info.value.row == 16
    # default: only the offset 1082 is on disk, so the onset is wrong: the clip folder's first frame
    repaired = load_dataset("samm", root).samples[1]
    assert (repaired.onset_frame, repaired.offset_frame) == (1024, 1082)
    book.active["A14"] = "Participant"
    book.save(sheet)
    with pytest.raises(AnnotationError, match="no header row"):
        load_dataset("samm", root)


def test_missing_frame_names_row(tmp_path):
    rows = small_samm_rows()
    rows[2]["frames"] = [3500, 3544]
    root = build_samm(tmp_path, rows)
    with pytest.raises(MissingFramesError, match=r"row 17 \(007/007_3_1\): apex frame 3520"):
        load_dataset("samm", root, on_error="strict")
    result = load_dataset("samm", root, on_error="skip")
    assert len(result.samples) == 2 and "row 17" in result.skipped[0]
