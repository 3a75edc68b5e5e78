from collections import Counter

import openpyxl
import pytest

from fixtures_datasets import build_casme_sq, casme_sq_rows
from merkit.data.protocols import apply_protocol
from merkit.data.registry import get_dataset, load_dataset
from merkit.errors import AnnotationError


@pytest.fixture(scope="module")
def casme_sq(tmp_path_factory):
    root = build_casme_sq(tmp_path_factory.mktemp("casme_sq"))
    return root, load_dataset("casme_sq", root)


def test_micro_expressions_and_protocols(casme_sq):
    _, result = casme_sq
    samples = result.samples
    assert len(samples) == 57 and len({s.subject for s in samples}) == 22
    assert Counter(s.emotion for s in samples) == {"negative": 21, "positive": 8, "surprise": 9, "others": 19}
    assert len(apply_protocol(samples, "casme_sq-4")) == 57
    assert Counter(s.label for s in apply_protocol(samples, "casme_sq-3")) == {0: 21, 1: 8, 2: 9}
    assert all(s.meta["expression_type"] == "micro-expression" for s in samples)


def test_expression_type_option(casme_sq):
    root, _ = casme_sq
    assert len(load_dataset("casme_sq", root, expression_type="macro").samples) == 40
    assert len(load_dataset("casme_sq", root, expression_type="all").samples) == 97


def test_fields_follow_the_naming_rules(casme_sq):
    root, result = casme_sq
    first = result.samples[0]
    assert (first.dataset, first.subject, first.clip_id, first.fps) == ("casme_sq", "s15", "disgust1_1", 30)
    assert first.meta["video_code"] == "0101" and first.meta["video_folder"] == "15_0101disgustingteeth"
    assert first.frames.paths[0] == root / "rawpic" / "s15" / "15_0101disgustingteeth" / f"img{first.onset_frame}.jpg"
    assert first.meta["row"] == 1  # no header row
    second_video = next(s for s in result.samples if s.subject == "s15" and s.clip_id.startswith("anger1"))
    assert second_video.meta["video_folder"] == "15_0401girlcrashing"  # code written as a number in naming rule2


def test_quirks(casme_sq):
    _, result = casme_sq
    uncoded = next(s for s in result.samples if s.meta["row"] == 4)
    assert uncoded.offset_frame == uncoded.apex_frame and uncoded.meta["offset_coded"] is False
    [offset] = [f for f in result.fixes if f.rule == "offset-not-coded-apex"]
    assert (offset.row, offset.field, offset.old, offset.new) == (4, "offset", 0, uncoded.apex_frame)
    assert any(f.rule == "emotion-spelling" and (f.old, f.new) == ("other", "others") for f in result.fixes)
    assert len(result.fixes) == 2  # the macro row with offset 0 is not read


def test_registered():
    info = get_dataset("casme_sq")
    assert info.protocols == ("casme_sq-4", "casme_sq-3") and "naming rule2" in info.layout


@pytest.mark.parametrize("column, value, message, repaired", [
    (2, "fear9_1", "video name 'fear9' is not listed in 'naming rule2'", None),
    (1, 99, "participant .column A. '99' is not listed", None),
    (8, "micro", "expression type .column H.", None),
    (4, 1, "apex frame 1 is before the onset", ("apex_frame", None, "apex-unreliable")),
    # a video folder is a recording: onset 150 + the sheet's median length 9 = 159, on disk
    (5, 1, "onset frame 150 is after offset frame 1", ("offset_frame", 159, "offset-unreliable")),
])
def test_bad_rows(tmp_path, column, value, message, repaired):
    root = build_casme_sq(tmp_path, casme_sq_rows()[:5])
    book_path = root / "CAS(ME)^2code_final.xlsx"
    book = openpyxl.load_workbook(book_path)
    book["CASFEcode_final"].cell(row=2, column=column, value=value)
    book.save(book_path)
    with pytest.raises(AnnotationError, match=message) as info:
        load_dataset("casme_sq", root, on_error="strict")
    assert info.value.row == 2 and "CAS(ME)^2code_final.xlsx" in info.value.file
    result = load_dataset("casme_sq", root, on_error="skip")
    assert len(result.samples) == 4 and "row 2" in result.skipped[0]
    if repaired is None:  # nothing to repair: the default policy fails too
        with pytest.raises(AnnotationError, match=message):
            load_dataset("casme_sq", root)
        return
    result = load_dataset("casme_sq", root)
    attribute, new, rule = repaired
    assert getattr(result.samples[1], attribute) == new
    [fix] = [f for f in result.fixes if f.row == 2]
    assert (fix.old, fix.new, fix.rule) == (value, new, rule)


def test_title_row_is_skipped_but_a_bad_first_row_is_an_error(tmp_path):
    root = build_casme_sq(tmp_path, casme_sq_rows()[:3])
    book_path = root / "CAS(ME)^2code_final.xlsx"
    book = openpyxl.load_workbook(book_path)
    sheet = book["CASFEcode_final"]
    sheet.cell(row=1, column=3).value = None  # the first clip's onset is missing
    book.save(book_path)
    with pytest.raises(AnnotationError) as info:
        load_dataset("casme_sq", root)
    assert info.value.row == 1
    sheet.insert_rows(1)  # a later edition's title row
    for column, title in enumerate(["participant", "video", "onset", "apex", "offset", "AU", "emotion", "type"], 1):
        sheet.cell(row=1, column=column, value=title)
    sheet.cell(row=2, column=3, value=casme_sq_rows()[0]["onset"])
    book.save(book_path)
    result = load_dataset("casme_sq", root)
    assert len(result.samples) == 3 and result.samples[0].meta["row"] == 2
