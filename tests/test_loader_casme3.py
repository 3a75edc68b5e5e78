import re
from collections import Counter

import pytest

from fixtures_datasets import build_casme3, casme3_rows
from merkit.data.protocols import apply_protocol
from merkit.data.registry import get_dataset, load_dataset
from merkit.errors import AnnotationError, DatasetError, MissingFramesError


@pytest.fixture(scope="module")
def casme3(tmp_path_factory):
    # colour frames only: the full tree is large; depth is checked on a small one below
    root = build_casme3(tmp_path_factory.mktemp("casme3"), depth=False)
    return root, load_dataset("casme3", root, depth=False)


def test_counts_and_protocols(casme3):
    _, result = casme3
    samples = result.samples
    assert len(samples) == 860 and len({s.subject for s in samples}) == 100
    assert Counter(s.emotion for s in samples) == {"disgust": 250, "surprise": 187, "others": 161, "fear": 86,
                                                  "anger": 64, "sad": 57, "happy": 55}
    assert len(apply_protocol(samples, "casme3-7")) == 860
    four = Counter(s.label for s in apply_protocol(samples, "casme3-4"))
    assert four == {0: 250 + 86 + 64 + 57, 1: 55, 2: 187, 3: 161}
    assert len(apply_protocol(samples, "casme3-3")) == 860 - 161
    assert len({s.sample_id for s in samples}) == 860


def test_fields_and_materials(casme3):
    root, result = casme3
    first = result.samples[0]
    assert (first.dataset, first.subject, first.fps) == ("casme3", "spNO.1", 30)
    assert first.clip_id == f"{first.meta['material']}_{first.onset_frame}"
    assert first.frames.paths[0].parent == root / "spNo.1" / first.meta["material"] / "color"
    shared = Counter((s.subject, s.meta["material"]) for s in result.samples)
    assert max(shared.values()) >= 2  # several micro-expressions of one material stay distinct
    assert sum(s.apex_frame == s.onset_frame for s in result.samples) >= 20  # onset == apex kept
    assert first.aus in (("L12",), ("4", "7"))


def test_quirks(casme3):
    _, result = casme3
    by_row = {s.meta["row"]: s for s in result.samples}
    assert by_row[130].apex_frame == 160  # the release's full annotation
    assert by_row[710].offset_frame == 34 and by_row[751].onset_frame == 2647
    assert (by_row[752].onset_frame, by_row[752].apex_frame) == (1, 1)
    assert by_row[798].offset_frame == 1845 and by_row[800].offset_frame == 2403
    twins = [s for s in result.samples if s.subject == "spNO.7" and s.meta["material"] == "a"]
    assert [s.clip_id for s in twins] == ["a_100", "a_100_2"]
    assert Counter(f.rule for f in result.fixes) == {"folder-case": 20, "clip-id-repeat": 1, "known-fix": 4,
                                                    "digit-typo": 1, "first-frame": 2}
    repairs = {(f.row, f.field): (f.old, f.new, f.rule) for f in result.fixes
               if f.rule in ("known-fix", "digit-typo", "first-frame")}
    assert repairs == {(130, "apex"): (83, 160, "known-fix"), (710, "offset"): (3460, 34, "known-fix"),
                       (751, "onset"): (3647, 2647, "digit-typo"), (752, "onset"): (0, 1, "first-frame"),
                       (752, "apex"): (0, 1, "first-frame"), (798, "offset"): (0, 1845, "known-fix"),
                       (800, "offset"): (0, 2403, "known-fix")}
    typo = next(f for f in result.fixes if f.rule == "digit-typo")
    assert typo.sample_id.endswith("/f751_3647")  # the clip id keeps the onset as annotated
    [repeat] = [f for f in result.fixes if f.rule == "clip-id-repeat"]
    assert (repeat.field, repeat.old, repeat.new) == ("clip_id", "a_100", "a_100_2")


def test_strict_and_skip(casme3):
    root, _ = casme3
    with pytest.raises(AnnotationError, match=r"row 130: spNO.\d+/f130_112: apex frame 83 is before the onset"):
        load_dataset("casme3", root, depth=False, on_error="strict")
    result = load_dataset("casme3", root, depth=False, on_error="skip")
    rows = [int(re.search(r", row (\d+)", line).group(1)) for line in result.skipped]
    assert rows == [130, 710, 751, 752, 798, 800] and len(result.samples) == 854


def test_exception_lists(casme3, tmp_path):
    root, full = casme3
    one = next(s for s in full.samples if s.subject == "spNO.9")
    listing = tmp_path / "damaged.txt"
    listing.write_text(f"Damaged recordings\nspNO.3/b/color/12.jpg\nspno.5_c\n{one.subject}_{one.clip_id}\n")
    result = load_dataset("casme3", root, depth=False, exclude_lists=[listing])
    dropped = {s.sample_id for s in full.samples} - {s.sample_id for s in result.samples}
    expected = {s.sample_id for s in full.samples
                if (s.subject, s.meta["material"]) in {("spNO.3", "b"), ("spNO.5", "c")}} | {one.sample_id}
    assert dropped == expected
    assert len(result.skipped) == len(expected) and all("damaged.txt" in line for line in result.skipped)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("casme3", root, depth=False, exclude_lists=[tmp_path / "none.txt"])


def test_depth_frames(tmp_path):
    root = build_casme3(tmp_path, casme3_rows()[:4])
    first = load_dataset("casme3", root).samples[0]
    assert first.depth is not None and first.depth.paths[0].suffix == ".png"
    assert first.depth.paths[0].parent == root / "spNo.1" / "a" / "depth"
    assert first.depth.numbers == first.frames.numbers


def test_depth_required_unless_disabled(tmp_path):
    root = build_casme3(tmp_path, casme3_rows()[:4], depth=False)
    with pytest.raises(MissingFramesError, match="row 2 .spNO.1/a.: no depth folder"):
        load_dataset("casme3", root)
    result = load_dataset("casme3", root, depth=False)
    assert len(result.samples) == 4 and result.samples[0].depth is None


def test_one_folder_is_one_subject_however_the_sheet_spells_it(tmp_path):
    rows = casme3_rows()[:4]
    rows[2] = {**rows[2], "subject": rows[2]["subject"].lower()}  # 'spno.1' for the folder of 'spNO.1'
    result = load_dataset("casme3", build_casme3(tmp_path, rows, depth=False), depth=False)
    assert {s.subject for s in result.samples} == {rows[0]["subject"]}
    assert any(f.rule == "subject-spelling" and (f.old, f.new) == ("spno.1", "spNO.1") for f in result.fixes)


def test_registered_and_sheet_required(tmp_path):
    assert get_dataset("casme3").protocols == ("casme3-7", "casme3-4", "casme3-3")
    import openpyxl

    root = build_casme3(tmp_path, casme3_rows()[:2])
    path = root / "annotation" / "cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx"
    book = openpyxl.load_workbook(path)
    book["label"].title = "Sheet1"
    book.save(path)
    with pytest.raises(DatasetError, match="no worksheet named 'label'"):
        load_dataset("casme3", root)
