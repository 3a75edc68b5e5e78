"""Footage for predict: videos through PyAV, frame folders, arrays; in-memory frame sources."""

from __future__ import annotations

import numpy as np
import pytest

from merkit.errors import ConfigError, FootageError, MissingFramesError
from merkit.inference.footage import ArrayFrameSource, from_array, open_footage, write_video


@pytest.fixture(scope="module")
def frames():
    from merkit.data.synthetic import SynthConfig, generate_clip

    return generate_clip(SynthConfig(size=64, fps=100), 0, 0, seed=1).frames


def test_a_lossless_video_gives_back_the_frames_and_its_rate(frames, tmp_path):
    footage = open_footage(write_video(tmp_path / "clip.mp4", frames, 100, lossless=True))
    assert footage.fps == 100 and footage.name.endswith("clip.mp4")
    decoded = np.stack(list(footage.frames()))
    assert np.array_equal(decoded, frames) and len(footage) == len(frames)
    first, second = footage.read_ranges([(3, 5), (4, 10)])
    assert np.array_equal(first, frames[3:6]) and np.array_equal(second, frames[4:11])
    with pytest.raises(FootageError, match=f"holds only {len(frames)} frames"):
        footage.read_ranges([(0, len(frames))])


def test_h264_is_close_and_odd_sizes_are_padded(frames, tmp_path):
    footage = open_footage(write_video(tmp_path / "clip.mp4", frames[:, :63, :61], 200))
    decoded = np.stack(list(footage.frames()))
    assert decoded.shape == (len(frames), 64, 62, 3) and footage.fps == 200
    assert np.abs(decoded[:, :63, :61].astype(float) - frames[:, :63, :61]).mean() < 3  # grey levels, crf 12, 4:2:0
    assert open_footage(tmp_path / "clip.mp4", fps=50).fps == 50  # the user's rate wins


def test_a_frame_folder_keeps_the_numbers_in_its_file_names(synth_samples):
    folder = synth_samples[0].frames.paths[0].parent
    with pytest.raises(ConfigError, match="records no frame rate"):
        open_footage(folder)
    footage = open_footage(folder, fps=100)
    assert list(footage.numbers) == list(synth_samples[0].frames.numbers)
    assert footage.position(int(footage.numbers[3])) == 3
    with pytest.raises(FootageError, match="no frame 0 "):
        footage.position(0)


def test_arrays_need_a_rate_and_an_rgb_or_grey_shape(frames):
    with pytest.raises(ConfigError, match="need their frame rate"):
        from_array(frames, None)
    with pytest.raises(ConfigError, match=r"expected \(T, H, W, 3\)"):
        from_array(frames[..., :2], 100)
    grey = from_array(frames[..., 0].astype(np.float32) / 255.0, 100)
    assert next(grey.frames()).shape == (64, 64, 3)


def test_an_array_frame_source_reads_like_a_dataset_clip(frames):
    source = ArrayFrameSource.of(frames[:5], [10, 11, 12, 13, 14])
    assert np.array_equal(source.read(12), frames[2]) and source.read(12, gray=True).shape == (64, 64)
    assert source.between(11, 12).numbers == (11, 12)
    with pytest.raises(MissingFramesError, match="frame 9 "):
        source.read(9)
