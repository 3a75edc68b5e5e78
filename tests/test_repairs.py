"""The repair rules of the default annotation policy: hand-made cases, then each rule on a tree
in a real layout (CASME II: a folder per clip; CAS(ME)^3: a folder per recording)."""

from pathlib import Path

import pytest

from fixtures_datasets import build_casme2, build_casme3, small_casme2_rows
from merkit.data.registry import load_dataset
from merkit.data.repairs import RULES, SheetStats, repair_frames, slips
from merkit.data.sample import FrameSource
from merkit.errors import DatasetError


def frames(numbers) -> FrameSource:
    numbers = tuple(sorted(numbers))
    return FrameSource(tuple(Path(f"img{n}.jpg") for n in numbers), numbers)


STATS = SheetStats(median_length=21, median_rise=6, long_length=69, rows=100)


def repair(onset, apex, offset, on_disk, *, folder="clip", stats=STATS):
    numbers = {"onset": onset, "apex": apex, "offset": offset}
    changes = repair_frames(numbers, frames(on_disk), folder=folder, stats=stats)
    return (numbers["onset"], numbers["apex"], numbers["offset"]), [(c.field, c.old, c.new, c.rule) for c in changes]


def test_slips_are_one_digit_replaced_or_two_neighbours_swapped():
    assert 4930 in slips(1930) and 5739 in slips(5379) and 2647 in slips(3647)
    assert 1930 not in slips(1930) and all(n >= 0 for n in slips(10))
    assert slips(7) == {0, 1, 2, 3, 4, 5, 6, 8, 9}
    assert slips(12) == {2, 10, 11, 13, 14, 15, 16, 17, 18, 19, 21, 22, 32, 42, 52, 62, 72, 82, 92}


def test_sheet_stats_use_consistent_rows_only():
    rows = [{"onset": 10, "apex": 12, "offset": 30}, {"onset": 10, "apex": 15, "offset": 20},
            {"onset": 5, "apex": None, "offset": 45}, {"onset": 40, "apex": 10, "offset": 50},  # apex outside
            {"onset": 0, "apex": 0, "offset": 25}, {"onset": 9, "apex": 9, "offset": None}]
    stats = SheetStats.from_rows(rows)
    assert (stats.rows, stats.median_length, stats.median_rise, stats.long_length) == (3, 20, 2, 40)
    assert SheetStats.from_rows(rows[:2]) is None


def test_a_consistent_row_is_left_alone():
    assert repair(46, 59, 86, range(46, 87)) == ((46, 59, 86), [])


def test_first_frame():
    assert repair(0, 0, 25, range(1, 40), folder="recording") == (
        (1, 1, 25), [("onset", 0, 1, "first-frame"), ("apex", 0, 1, "first-frame")])
    assert repair(0, 0, 25, range(0, 40))[1] == []  # frames numbered from 0: 0 is a frame


def test_offset_not_coded():
    assert repair(46, 59, None, range(46, 87)) == ((46, 59, 86), [("offset", None, 86, "offset-not-coded")])
    # a recording: onset + the median length (21), on disk, at least the apex
    assert repair(1812, 1824, 0, range(1, 3000), folder="recording") == (
        (1812, 1824, 1833), [("offset", 0, 1833, "offset-not-coded")])
    assert repair(100, 150, 0, range(1, 3000), folder="recording")[0] == (100, 150, 150)
    # without the sheet's statistics nothing is guessed: checked_sample reports the row
    assert repair(1812, 1824, 0, range(1, 3000), folder="recording", stats=None) == ((1812, 1824, 0), [])


def test_digit_typo():
    assert repair(4896, 1930, 4970, range(4896, 4971)) == (
        (4896, 4930, 4970), [("apex", 1930, 4930, "digit-typo")])
    assert repair(5700, 5720, 5379, [5700, 5720, 5739])[0] == (5700, 5720, 5739)  # 37 <-> 73
    # 2647 is the one slip of 3647 that keeps the clip no longer than the sheet's 95th percentile
    assert repair(3647, 2668, 2694, range(1, 3700), folder="recording") == (
        (2647, 2668, 2694), [("onset", 3647, 2647, "digit-typo")])


def test_apex_unreliable_when_several_slips_fit():
    assert repair(1071, 1143, 1134, range(1071, 1135)) == (
        (1071, None, 1134), [("apex", 1143, None, "apex-unreliable")])  # 1103, 1113, 1123, 1133


def test_swapped_onset_and_offset():
    assert repair(60, None, 40, range(30, 71, 10)) == (
        (40, None, 60), [("onset", 60, 40, "swapped-onset-offset"), ("offset", 40, 60, "swapped-onset-offset")])
    assert repair(60, 50, 40, range(30, 71, 10))[0] == (40, 50, 60)


def test_onset_unreliable():
    assert repair(70, 50, 60, range(30, 71, 10)) == ((30, 50, 60), [("onset", 70, 30, "onset-unreliable")])
    assert repair(20, 50, 60, range(30, 71, 10))[0] == (30, 50, 60)  # before the clip folder's first frame
    narrow = SheetStats(median_length=21, median_rise=6, long_length=10, rows=100)
    # a recording: the apex - the median rise (6), the nearest frame on disk
    assert repair(300, 110, 120, range(1, 500), folder="recording", stats=narrow) == (
        (104, 110, 120), [("onset", 300, 104, "onset-unreliable")])


def test_offset_unreliable():
    assert repair(40, 50, 30, range(30, 71, 10)) == ((40, 50, 70), [("offset", 30, 70, "offset-unreliable")])
    # past the end of a recording: its last frame
    narrow = SheetStats(median_length=21, median_rise=6, long_length=100, rows=100)
    assert repair(50, 60, 1500, range(1, 1201), folder="recording", stats=narrow)[0] == (50, 60, 1200)
    # before the onset in a recording: onset + the median length
    assert repair(100, 110, 50, range(1, 500), folder="recording") == (
        (100, 110, 121), [("offset", 50, 121, "offset-unreliable")])


def test_every_rule_is_documented():
    produced = {"first-frame", "offset-not-coded", "digit-typo", "swapped-onset-offset", "apex-unreliable",
                "onset-unreliable", "offset-unreliable", "known-fix"}
    assert produced == set(RULES)


# --------------------------------------------------------------------------- on trees in the real layouts


@pytest.mark.parametrize("change, field, expected, rule", [
    (dict(onset=46, apex=59, offset=None), "offset_frame", 86, "offset-not-coded"),
    (dict(onset=46, apex=59, offset="/"), "offset_frame", 86, "offset-not-coded"),
    (dict(onset=86, apex="/", offset=46), "onset_frame", 46, "swapped-onset-offset"),
    (dict(onset=56, apex=59, offset=86), None, None, None),  # consistent and on disk: as annotated
    (dict(onset=46, apex=95, offset=86), "apex_frame", None, "apex-unreliable"),  # 55, 65, 75, 85, 59 fit
    (dict(onset=46, apex=146, offset=86), "apex_frame", 46, "digit-typo"),  # 046 is the one slip in 46..86
    (dict(onset=96, apex=59, offset=86), "onset_frame", 46, "onset-unreliable"),  # 46 and 56 fit
    (dict(onset=46, apex=59, offset=96), "offset_frame", 86, "offset-unreliable"),  # 96 is not on disk
])
def test_rules_on_a_casme2_tree(tmp_path, change, field, expected, rule):
    rows = small_casme2_rows()
    rows[0] = {**rows[0], "frames": range(46, 87), **change}  # EP02_01f: its clip folder holds 46..86
    root = build_casme2(tmp_path, rows)
    result = load_dataset("casme2", root)
    clip = result.samples[0]
    repairs = [f for f in result.fixes if f.rule in RULES]
    if rule is None:
        assert repairs == [] and clip.onset_frame == 56
        return
    assert getattr(clip, field) == expected
    assert {f.rule for f in repairs} == {rule}
    assert all(f.row == 2 and f.sample_id == "casme2/sub01/EP02_01f" for f in repairs)
    with pytest.raises(DatasetError, match="row 2"):
        load_dataset("casme2", root, on_error="strict")
    assert [s.clip_id for s in load_dataset("casme2", root, on_error="skip").samples] == ["EP03_02", "EP01_11f"]


def _casme3_rows(special: dict) -> list[dict]:
    """Six plain micro-expressions (lengths 10 to 30, median 18; rises 4) and the row under test
    in material ``z``, whose folder holds frames 1..400 as a recording does."""
    rows = [{"subject": "spNO.2", "filename": "a", "onset": 10 + 50 * k, "apex": 14 + 50 * k,
             "offset": 10 + 50 * k + length, "aus": "4", "objective": "1", "emotion": "disgust"}
            for k, length in enumerate((10, 14, 18, 18, 22, 30))]
    return rows + [{"subject": "spNO.2", "filename": "z", "aus": "12", "objective": "1", "emotion": "happy",
                    "frames": range(1, 401), **special}]


@pytest.mark.parametrize("special, expected, rule", [
    (dict(onset=0, apex=0, offset=25), (1, 1, 25), "first-frame"),
    (dict(onset=200, apex=206, offset=0), (200, 206, 218), "offset-not-coded"),  # 200 + the median length
    (dict(onset=200, apex=206, offset=190), (200, 206, 218), "offset-unreliable"),
    (dict(onset=300, apex=206, offset=218), (200, 206, 218), "digit-typo"),  # 100 would make 118 frames
    (dict(onset=380, apex=206, offset=218), (202, 206, 218), "onset-unreliable"),  # 206 - the median rise
    (dict(onset=200, apex=150, offset=218), (200, None, 218), "apex-unreliable"),
])
def test_rules_on_a_casme3_tree(tmp_path, special, expected, rule):
    root = build_casme3(tmp_path, _casme3_rows(special))
    result = load_dataset("casme3", root)
    clip = result.samples[-1]
    assert (clip.onset_frame, clip.apex_frame, clip.offset_frame) == expected
    repairs = [f for f in result.fixes if f.rule in RULES]
    assert {f.rule for f in repairs} == {rule} and all(f.row == 8 for f in repairs)
    with pytest.raises(DatasetError, match="row 8"):
        load_dataset("casme3", root, on_error="strict")
    assert len(load_dataset("casme3", root, on_error="skip").samples) == 6
