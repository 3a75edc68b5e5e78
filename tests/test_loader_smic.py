from collections import Counter

import pytest

from fixtures_datasets import build_smic, write_image
from merkit.data.protocols import apply_protocol
from merkit.data.registry import get_dataset, load_dataset
from merkit.errors import DatasetError, MissingFramesError


@pytest.fixture(scope="module")
def smic(tmp_path_factory):
    root = build_smic(tmp_path_factory.mktemp("smic"))
    return root, load_dataset("smic", root)


def test_counts(smic):
    _, result = smic
    samples = result.samples
    assert len(samples) == 164 and len({s.subject for s in samples}) == 16
    assert Counter(s.emotion for s in samples) == {"negative": 70, "positive": 51, "surprise": 43}
    three = apply_protocol(samples, "smic-3")
    assert Counter(s.label for s in three) == {0: 70, 1: 51, 2: 43}
    assert result.fixes == [] and result.skipped == []


def test_fields_and_no_apex(smic):
    root, result = smic
    first = result.samples[0]
    assert (first.dataset, first.subject, first.clip_id, first.emotion) == ("smic", "s1", "s1_ne_01", "negative")
    assert (first.onset_frame, first.apex_frame, first.offset_frame) == (1000, None, 1023)
    assert first.fps == 100
    assert first.frames.numbers == (1000, 1011, 1023)
    assert first.meta["folder"] == str(root / "HS" / "s1" / "micro" / "negative" / "s1_ne_01")
    assert all(s.apex_frame is None for s in result.samples)
    assert [s.subject for s in result.samples][-1] == "s20"  # natural order, s2 < s10


def test_registered():
    assert get_dataset("smic").protocols == ("smic-3",)


def test_bad_folders(tmp_path):
    root = build_smic(tmp_path, {1: (1, 1, 0)})
    (root / "HS" / "s1" / "micro" / "negative" / "s1_ne_02").mkdir()
    with pytest.raises(MissingFramesError, match="s1_ne_02"):
        load_dataset("smic", root)
    write_image(root / "HS" / "s1" / "micro" / "Happy" / "h_01" / "image1.bmp")
    result = load_dataset("smic", root, on_error="skip")
    assert len(result.samples) == 2 and len(result.skipped) == 2
    assert any("unknown emotion folder" in line for line in result.skipped)
    with pytest.raises(DatasetError, match="no HS/ folder(.|\n)*Expected layout"):
        load_dataset("smic", root / "HS")
