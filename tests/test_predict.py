"""Predict on new footage: model directories, the Predictor, spotting in a long video, the CLI.

Ground truth: SynthME clips joined into one long video (merkit.data.synthme.video), whose
intervals are known exactly, and the LOSO run of the session fixture ``seamless_run`` (TSFmicro),
whose predictions.csv says how the run classified every clip.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

import merkit
from merkit.cli import app
from merkit.data.synthme.video import join_clips
from merkit.errors import ClipTooShortError, ConfigError, FaceNotFoundError, FootageError
from merkit.inference import Predictor
from merkit.inference.footage import write_video
from merkit.inference.predictor import write_predictions

runner = CliRunner()
SUBJECT = "sub02"
FPS = 100
APEX_TOLERANCE_S = 0.03  # apex within 30 ms (3 frames at 100 fps)
BOUNDARY_TOLERANCE_S = 0.1  # onset and offset within 100 ms, and the MEGC criterion IoU >= 0.5
MARGIN = 0.2  # the LOSO run's top-two probability margin above which the class must agree


@pytest.fixture(scope="module")
def joined(seamless_run, tmp_path_factory):
    """The test subject's five clips as one 674-frame video (lossless H.264: the frames of the
    dataset's JPEG files exactly, so the video and the dataset clips give the same views)."""
    root, _ = seamless_run
    video = join_clips(root, SUBJECT)
    path = write_video(tmp_path_factory.mktemp("video") / f"{SUBJECT}.mp4", video.frames, video.fps, lossless=True)
    return video, path


@pytest.fixture(scope="module")
def loso_predictions(seamless_run):
    _, run = seamless_run
    return pd.read_csv(run / "predictions.csv", dtype={"subject": str, "fold": str}).set_index("sample_id")


def iou(a: tuple[int, int], b: tuple[int, int]) -> float:
    overlap = min(a[1], b[1]) - max(a[0], b[0]) + 1
    return max(0, overlap) / (max(a[1], b[1]) - min(a[0], b[0]) + 1)


def test_spotting_finds_every_expression_of_a_long_video_and_classifies_it_like_the_loso_run(
        seamless_run, joined, loso_predictions):
    root, run = seamless_run
    video, path = joined
    predictor = Predictor.from_dir(run / "folds" / SUBJECT)  # the model that evaluated this subject
    table = predictor.predict(path)
    assert table.attrs["fps"] == FPS and table.attrs["n_frames"] == len(video.frames)
    assert len(table.attrs["motion_score"]) == len(video.frames)
    assert (table.status == "ok").all() and len(table) == len(video.intervals)
    classes = list(predictor.classes)
    columns = [f"p_{c}" for c in classes]
    agreed = 0
    for truth, (_, row) in zip(video.intervals.itertuples(), table.iterrows()):
        assert iou((row.start_frame, row.end_frame), (truth.onset, truth.offset)) >= 0.5
        assert abs(row.apex_frame - truth.apex) / FPS <= APEX_TOLERANCE_S, truth.clip_id
        assert abs(row.start_frame - truth.onset) / FPS <= BOUNDARY_TOLERANCE_S, truth.clip_id
        assert abs(row.end_frame - truth.offset) / FPS <= BOUNDARY_TOLERANCE_S, truth.clip_id
        assert row.start_s == pytest.approx(row.start_frame / FPS) and row.apex_source == "spotted:diff"
        # the chain: the same interval of the dataset clip (its JPEG files) gives the same result
        shift = truth.first_number - truth.first  # video position -> dataset frame number
        clip = predictor.predict(truth.sample_id, root=root, onset=int(row.start_frame + shift),
                                 apex=int(row.apex_frame + shift), offset=int(row.end_frame + shift)).iloc[0]
        np.testing.assert_allclose(row[columns].to_numpy(float), clip[columns].to_numpy(float), atol=1e-5)
        # and the class is the LOSO run's, wherever that run was not near a tie
        recorded = np.sort(loso_predictions.loc[truth.sample_id, columns].to_numpy(float))
        if recorded[-1] - recorded[-2] >= MARGIN:
            assert row["class"] == classes[int(loso_predictions.loc[truth.sample_id, "y_pred"])], truth.clip_id
            agreed += 1
    assert agreed >= 3


def test_a_dataset_clip_gives_the_loso_runs_probabilities(seamless_run, loso_predictions):
    root, run = seamless_run
    predictor = Predictor.from_dir(run / "folds" / SUBJECT)
    clip_id = next(i for i in loso_predictions.index if f"/{SUBJECT}/" in i)
    table = predictor.predict(clip_id, root=root)
    recorded = loso_predictions.loc[clip_id, [f"p_{c}" for c in predictor.classes]].to_numpy(float)
    np.testing.assert_allclose(table.iloc[0][[f"p_{c}" for c in predictor.classes]].to_numpy(float), recorded, atol=1e-5)
    assert table.iloc[0].apex_source == "annotated"


def test_a_given_interval_on_the_video_matches_the_dataset_clip(seamless_run, joined):
    root, run = seamless_run
    video, path = joined
    predictor = Predictor.from_dir(run / "folds" / SUBJECT)
    truth = video.intervals.iloc[2]
    from_video = predictor.predict(path, onset=int(truth.onset), apex=int(truth.apex), offset=int(truth.offset))
    from_dataset = predictor.predict(truth.sample_id, root=root)
    columns = [f"p_{c}" for c in predictor.classes]
    assert len(from_video) == 1 and from_video.iloc[0].apex_source == "given"
    assert from_video.iloc[0]["class"] == from_dataset.iloc[0]["class"]
    np.testing.assert_allclose(from_video.iloc[0][columns].to_numpy(float), from_dataset.iloc[0][columns].to_numpy(float),
                               atol=1e-5)
    assert np.isnan(from_video.iloc[0].spotting_score) and from_video.attrs["motion_score"] is None
    # without an apex the pipeline's spotting picks one inside the interval
    spotted = predictor.predict(path, onset=int(truth.onset), offset=int(truth.offset)).iloc[0]
    assert spotted.apex_source.startswith("spotted") and truth.onset <= spotted.apex_frame <= truth.offset


def test_a_loso_run_is_an_ensemble_of_its_fold_models(seamless_run):
    root, run = seamless_run
    ensemble = Predictor.from_dir(run)
    assert ensemble.directory.kind == "ensemble" and len(ensemble.models) == 4
    folds = [Predictor.from_dir(run / "folds" / f"sub0{k}") for k in range(1, 5)]
    clip = "synthme/sub01/" + pd.read_csv(run / "predictions.csv").sample_id.iloc[0].split("/")[-1]
    from merkit.data.registry import load_dataset

    sample = next(s for s in load_dataset("synthme", root).samples if s.sample_id == clip)
    views = ensemble.views_of(sample)
    np.testing.assert_allclose(ensemble.predict_views(views), np.mean([f.predict_views(views) for f in folds], axis=0),
                               atol=1e-6)


def test_train_all_subjects_writes_a_model_directory_that_predicts_a_frame_folder(synth_root, tmp_path):
    out = tmp_path / "final"
    result = runner.invoke(app, ["train", "--dataset", "synthme", "--root", str(synth_root), "--model", "logreg",
                                 "--epochs", "2", "--all-subjects", "--out", str(out), "--cache", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert (out / "model.pt").is_file() and "model directory" in result.output
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert recorded["protocol"]["classes"] == ["happiness", "disgust", "repression", "surprise", "others"]
    assert recorded["input_spec"][0]["name"] == "diff"
    predictor = Predictor.from_dir(out)
    assert predictor.directory.kind == "final" and len(predictor.models) == 1
    from merkit.data.registry import load_dataset

    sample = load_dataset("synthme", synth_root).samples[0]
    folder = sample.frames.paths[0].parent
    with pytest.raises(ConfigError, match="frame rate"):
        predictor.predict(folder, onset=sample.onset_frame, offset=sample.offset_frame)
    table = predictor.predict(folder, fps=100, onset=sample.onset_frame, apex=sample.apex_frame, offset=sample.offset_frame)
    expected = predictor.predict(sample.sample_id, root=synth_root)
    columns = [f"p_{c}" for c in predictor.classes]
    np.testing.assert_allclose(table[columns].to_numpy(float), expected[columns].to_numpy(float), atol=1e-6)
    assert table.iloc[0].start_frame == sample.onset_frame  # folder frames keep the numbers in their names
    assert table.iloc[0].start_s == pytest.approx((sample.onset_frame - sample.frames.numbers[0]) / 100)


def test_test_time_mirroring_is_what_the_run_recorded_and_what_the_predictor_does(synth_root, tmp_path):
    config = tmp_path / "mirrored.yaml"
    config.write_text("base: logreg-cpu\ntrain: {epochs: 2, augment: {hflip: true, test_hflip: true}}\n")
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--dataset", "synthme", "--root", str(synth_root), "--config", str(config),
                                 "--out", str(run), "--cache", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    recorded = pd.read_csv(run / "predictions.csv").set_index("sample_id")
    predictor = Predictor.from_dir(run / "folds" / "sub01")
    assert predictor.config.train.augment.test_hflip
    from merkit.data.registry import load_dataset
    from merkit.train.trainer import class_probabilities

    columns = [f"p_{c}" for c in predictor.classes]
    samples = [s for s in load_dataset("synthme", synth_root).samples if s.subject == "sub01"]
    for sample in samples:
        views = predictor.views_of(sample)
        mirrored = predictor.predict_views(views)[0]
        np.testing.assert_allclose(mirrored, recorded.loc[sample.sample_id, columns].to_numpy(float), atol=1e-5)
        tensors = {k: torch.from_numpy(v) for k, v in views.items()}
        plain = class_probabilities(predictor.models[0], tensors).numpy()[0]
        assert np.abs(plain - mirrored).max() > 1e-4  # the recorded figure is not the unmirrored one


def test_bad_input_gives_one_typed_error_naming_the_file(seamless_run, tmp_path, joined):
    _, run = seamless_run
    predictor = Predictor.from_dir(run / "folds" / SUBJECT)
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video")
    with pytest.raises(FootageError, match="broken.mp4: not a readable video"):
        predictor.predict(broken)
    with pytest.raises(FootageError, match="no such video file or frame folder"):
        predictor.predict(tmp_path / "missing.mp4")
    grey = write_video(tmp_path / "grey.mp4", np.full((30, 96, 96, 3), 128, np.uint8), FPS)
    with pytest.raises(FaceNotFoundError, match="grey.mp4: no face found in the first frame"):
        predictor.predict(grey, face="mtcnn")
    short = write_video(tmp_path / "short.mp4", join_clips(seamless_run[0], SUBJECT).frames[:12], FPS)
    with pytest.raises(ClipTooShortError, match="short.mp4: 12 frames; spotting needs at least 21"):
        predictor.predict(short)
    _, path = joined
    with pytest.raises(ClipTooShortError, match="holds 1 frames; model tsfmicro needs at least 2"):
        predictor.predict(path, onset=50, offset=50)
    with pytest.raises(FootageError, match="frames up to position 9000"):
        predictor.predict(path, onset=8990, offset=9000)
    with pytest.raises(ConfigError, match="onset and offset together"):
        predictor.predict(path, onset=10)
    result = runner.invoke(app, ["predict", str(run), str(broken)])
    assert result.exit_code == 2 and "error" in result.output and "Traceback" not in result.output
    assert "broken.mp4:notareadablevideo" in "".join(result.output.split())  # rich wraps long paths


def test_an_interval_that_fails_is_a_row_with_its_status(seamless_run, joined, monkeypatch):
    _, run = seamless_run
    _, path = joined
    predictor = Predictor.from_dir(run / "folds" / SUBJECT)
    monkeypatch.setattr(Predictor, "min_frames", property(lambda self: 1000))
    table = predictor.predict(path)
    assert len(table) == 5 and table.status.str.startswith("ClipTooShortError").all()
    assert table[[f"p_{c}" for c in predictor.classes]].isna().all().all() and table["class"].isna().all()


def test_cli_predict_writes_csv_timeline_and_explanations(seamless_run, joined, tmp_path):
    _, run = seamless_run
    _, path = joined
    out = tmp_path / "preds.csv"
    result = runner.invoke(app, ["predict", str(run / "folds" / SUBJECT), str(path), "--out", str(out), "--explain"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert list(table.columns[:10]) == ["source", "start_frame", "apex_frame", "end_frame", "start_s", "apex_s", "end_s",
                                        "n_frames", "apex_source", "class"]
    assert len(table) == 5 and (table.status == "ok").all()
    timeline = tmp_path / "preds-timeline.png"
    assert_not_blank(timeline)
    for file in table.explanation:
        assert_not_blank(file)
    assert "spotting" not in result.output or "error" not in result.output


def test_the_predictor_is_exported_at_the_top_level():
    assert merkit.Predictor is Predictor


def assert_not_blank(path) -> None:
    from PIL import Image

    image = np.asarray(Image.open(path).convert("RGB"), dtype=float)
    assert image.std() > 5 and len(np.unique(image.reshape(-1, 3), axis=0)) > 20, path


def test_a_model_reading_dataset_only_depth_refuses_footage(joined, tmp_path):
    from merkit.config import load_config
    from merkit.inference.model_dir import ModelDirectory
    from merkit.models import create

    config = load_config("madv-net-synthme")
    classes = ("happiness", "disgust", "repression", "surprise", "others")
    model = create(config.model_name, num_classes=5, **config.model_kwargs).eval()
    predictor = Predictor(ModelDirectory(tmp_path, "final", config, classes, "casme2-5", ()), [model])
    _, path = joined
    with pytest.raises(ConfigError, match="reads depth from 'synthme' .* which only dataset clips have"):
        predictor.predict(path, onset=41, offset=72)
