from collections import Counter
from pathlib import Path

import pytest

from fixtures_datasets import CASME2_SHEET, build_casme2, small_casme2_rows, write_image
from merkit.data.annotations import KnownFix, apply_known_fixes
from merkit.data.protocols import apply_protocol
from merkit.data.registry import get_dataset, load_dataset
from merkit.data.repairs import Change
from merkit.data.sample import FrameSource
from merkit.errors import AnnotationError, DatasetError, MissingFramesError


@pytest.fixture(scope="module")
def casme2(tmp_path_factory):
    root = build_casme2(tmp_path_factory.mktemp("casme2"))
    return root, load_dataset("casme2", root)


def test_counts_match_the_release(casme2):
    _, result = casme2
    samples = result.samples
    assert len(samples) == 255
    assert len({s.subject for s in samples}) == 26
    assert Counter(s.emotion for s in samples) == {"others": 99, "disgust": 63, "happiness": 32, "repression": 27,
                                                  "surprise": 28, "sadness": 4, "fear": 2}
    five = apply_protocol(samples, "casme2-5")
    assert len(five) == 249  # the 2019-07-01 sheet; 246 with the 2014 one
    three = apply_protocol(samples, "casme2-3")
    assert Counter(s.label for s in three) == {0: 90, 1: 32, 2: 28}
    assert result.skipped == []


def test_sample_fields(casme2):
    root, result = casme2
    sample = next(s for s in result.samples if s.subject == "sub01")
    assert sample.dataset == "casme2"
    assert sample.fps == 200
    assert sample.sample_id == f"casme2/sub01/{sample.clip_id}"
    assert sample.meta["file"] == str(root / CASME2_SHEET)
    assert sample.meta["row"] == 2
    assert sample.frames.numbers == (sample.onset_frame, sample.apex_frame, sample.offset_frame)
    assert sample.frames.paths[0] == root / "Cropped" / "sub01" / sample.clip_id / f"reg_img{sample.onset_frame}.jpg"
    assert all(isinstance(au, str) for s in result.samples for au in s.aus)
    assert sample.aus == ("4",)  # a numeric AU cell
    assert {s.aus for s in result.samples if s.meta["row"] == 3} == {("4", "7")}
    assert all(s.label is None and s.depth is None for s in result.samples)


def test_known_quirks_are_fixed_and_reported(casme2):
    _, result = casme2
    by_clip = {(s.subject, s.clip_id): s for s in result.samples}
    no_apex = by_clip["sub04", "EP12_01f"]
    assert no_apex.apex_frame is None and (no_apex.onset_frame, no_apex.offset_frame) == (261, 321)
    assert by_clip["sub05", "EP09_05f"].apex_frame == by_clip["sub05", "EP09_05f"].onset_frame
    assert by_clip["sub16", "EP01_08"].offset_frame == 96
    assert next(s for s in result.samples if s.meta["row"] == 62).offset_frame == 91
    fixes = {(f.sample_id, f.field): f for f in result.fixes}
    assert len(result.fixes) == len(fixes) == 4, result.fixes
    row = no_apex.meta["row"]
    slash = fixes["casme2/sub04/EP12_01f", "apex"]
    assert (slash.row, slash.old, slash.new, slash.rule) == (row, "/", None, "apex-not-annotated")
    assert f"row {row} (casme2/sub04/EP12_01f): apex '/' -> None [apex-not-annotated]" in str(slash)
    past = fixes["casme2/sub16/EP01_08", "offset"]
    assert (past.old, past.new, past.rule) == (110, 96, "offset-unreliable") and "not on disk" in past.detail
    row62 = next(f for f in result.fixes if f.row == 62)
    assert (row62.field, row62.old, row62.new, row62.rule) == ("offset", 190, 91, "known-fix")
    spelling = next(f for f in result.fixes if f.rule == "emotion-spelling")
    assert (spelling.field, spelling.old, spelling.new) == ("emotion", "suprise", "surprise")
    assert all(f.file.endswith(CASME2_SHEET) for f in result.fixes)
    assert get_dataset("casme2").repairs and "clip" in get_dataset("casme2").repairs


def test_registered_with_layout():
    info = get_dataset("casme2")
    assert info.protocols == ("casme2-5", "casme2-3")
    assert "Cropped/" in info.layout and "reg_img46.jpg" in info.layout and "CASME2-coding-" in info.layout


def test_missing_root_names_the_licence_and_layout(tmp_path):
    with pytest.raises(DatasetError, match="licensed(.|\n)*Cropped/"):
        load_dataset("casme2", tmp_path / "nowhere")


def _build(tmp_path: Path, change=None) -> Path:
    rows = small_casme2_rows()
    if change:
        change(rows)
    return build_casme2(tmp_path, rows)


@pytest.mark.parametrize("field, value, message, repaired, rule", [
    # 40, 30 and 50 are all one slip from 70 and on disk: the clip folder's first frame decides
    ("onset", 70, "onset frame 70 is after offset frame 60", ("onset", 30), "onset-unreliable"),
    # 40, 50 and 60 are all one slip from 30: the apex is unreliable
    ("apex", 30, "apex frame 30 is before the onset", ("apex", None), "apex-unreliable"),
    # only 60 is one slip from 65 and on disk within 40..60
    ("apex", 65, "apex frame 65 is after the offset", ("apex", 60), "digit-typo"),
])
def test_order_errors_by_policy(tmp_path, field, value, message, repaired, rule):
    def change(rows):
        rows[1].update(onset=40, apex=50, offset=60, frames=[30, 40, 50, 60, 65, 70])
        rows[1][field] = value
    root = _build(tmp_path, change)
    with pytest.raises(AnnotationError, match=message) as info:
        load_dataset("casme2", root, on_error="strict")
    assert info.value.row == 3 and info.value.file.endswith(CASME2_SHEET)
    result = load_dataset("casme2", root, on_error="skip")
    assert [s.clip_id for s in result.samples] == ["EP02_01f", "EP01_11f"]
    assert len(result.skipped) == 1 and "row 3" in result.skipped[0] and "CASME2-coding" in result.skipped[0]
    result = load_dataset("casme2", root)  # default: repaired and recorded
    sample = result.samples[1]
    assert len(result.samples) == 3 and result.skipped == []
    assert getattr(sample, f"{repaired[0]}_frame") == repaired[1]
    [fix] = result.fixes
    assert (fix.row, fix.sample_id, fix.field, fix.old, fix.new, fix.rule) == (
        3, "casme2/sub01/EP03_02", repaired[0], value, repaired[1], rule)


def test_missing_frame_and_folder(tmp_path):
    def change(rows):
        rows[0]["frames"] = [46, 86]  # the apex frame 59 is not on disk
    root = _build(tmp_path, change)
    with pytest.raises(MissingFramesError, match=r"row 2 \(sub01/EP02_01f\): apex frame 59 is not on disk"):
        load_dataset("casme2", root, on_error="strict")
    first = load_dataset("casme2", root).samples[0]
    assert first.apex_frame is None  # no slip of 59 is on disk: apex-unreliable
    for path in (root / "Cropped" / "sub02" / "EP01_11f").iterdir():
        path.unlink()
    (root / "Cropped" / "sub02" / "EP01_11f").rmdir()
    with pytest.raises(MissingFramesError, match="row 4(.|\n)*does not exist(.|\n)*no repair rule applies"):
        load_dataset("casme2", root)  # a missing clip folder cannot be repaired
    result = load_dataset("casme2", root, on_error="skip")
    assert [s.clip_id for s in result.samples] == ["EP03_02"]
    assert "row 2" in result.skipped[0] and "row 4" in result.skipped[1] and "does not exist" in result.skipped[1]


@pytest.mark.parametrize("field, value, message", [
    ("onset", "abc", "OnsetFrame: expected a frame number, got 'abc'"),
    ("subject", "x1", "Subject: expected a subject number"),
    ("emotion", None, "Estimated Emotion is empty"),
])
def test_malformed_cells(tmp_path, field, value, message):
    def change(rows):
        rows[2][field] = value
    root = _build(tmp_path, change)
    with pytest.raises(AnnotationError, match=message) as info:
        load_dataset("casme2", root)
    assert info.value.row == 4


def test_duplicate_clip(tmp_path):
    root = _build(tmp_path, lambda rows: rows.append(dict(rows[0])))
    with pytest.raises(AnnotationError, match="annotated twice .first in row 2"):
        load_dataset("casme2", root)


def test_missing_column(tmp_path):
    import openpyxl

    root = _build(tmp_path)
    sheet = root / CASME2_SHEET
    book = openpyxl.load_workbook(sheet)
    book.active["I1"] = "Emotion"
    book.save(sheet)
    with pytest.raises(AnnotationError, match=r"row 1: missing column\(s\) \['Estimated Emotion'\]") as info:
        load_dataset("casme2", root, on_error="skip")  # structural errors are never skipped
    assert info.value.row == 1


def test_spreadsheet_must_be_unique(tmp_path):
    root = _build(tmp_path)
    (root / CASME2_SHEET).rename(root / "notes.xlsx")
    with pytest.raises(DatasetError, match="no coding spreadsheet(.|\n)*Expected layout"):
        load_dataset("casme2", root)
    (root / "notes.xlsx").rename(root / "CASME2-coding-1.xlsx")
    build_casme2(root, small_casme2_rows(), sheet="CASME2-coding-2.xlsx")
    with pytest.raises(DatasetError, match="several coding spreadsheet"):
        load_dataset("casme2", root)


def test_raw_frames_folder_and_extra_files(tmp_path):
    root = build_casme2(tmp_path, small_casme2_rows(), frames_dir="CASME2_RAW_selected")
    (root / "CASME2_RAW_selected" / "sub01" / "EP02_01f" / "Thumbs.db").write_bytes(b"")
    write_image(root / "CASME2_RAW_selected" / "sub01" / "EP02_01f" / "reg_img47.jpg")
    result = load_dataset("casme2", root, frames_dir="CASME2_RAW_selected")
    first = result.samples[0]
    assert first.frames.numbers == (46, 47, 59, 86)
    with pytest.raises(DatasetError, match="Cropped does not exist"):
        load_dataset("casme2", root)


def test_known_fix_leaves_a_correct_row_alone(tmp_path):
    for n in (60, 75, 91, 120):
        write_image(tmp_path / f"reg_img{n}.jpg")
    frames = FrameSource.from_dir(tmp_path)
    numbers = {"onset": 60, "apex": 75, "offset": 120}
    assert apply_known_fixes([KnownFix("offset", 91, "test")], numbers, frames) == []
    assert numbers["offset"] == 120
    numbers["offset"] = 130  # not on disk: fixed
    assert apply_known_fixes([KnownFix("offset", 91, "test")], numbers, frames) == [
        Change("offset", 130, 91, "known-fix", "test")]
    numbers.update(offset=130, apex=100)  # the replacement would leave the apex after the offset: not applied
    assert apply_known_fixes([KnownFix("offset", 91, "test")], numbers, frames) == []
    assert numbers["offset"] == 130
