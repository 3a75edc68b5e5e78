import csv
from collections import Counter

import numpy as np
import pytest

from fixtures_datasets import build_megc2019, build_megc2019_flow, megc2019_flow_rows
from merkit.data.megc2019 import EXCLUDED, read_flow_image
from merkit.data.protocols import apply_protocol
from merkit.data.registry import get_dataset, load_dataset
from merkit.errors import AnnotationError, DatasetError, MissingFramesError


def _summary(samples):
    per = {}
    for name in ("casme2", "samm", "smic"):
        part = [s for s in samples if s.dataset == name]
        per[name] = (len(part), tuple(Counter(s.label for s in part)[k] for k in range(3)), len({s.subject for s in part}))
    return per


@pytest.fixture(scope="module")
def composite(tmp_path_factory):
    root = build_megc2019(tmp_path_factory.mktemp("megc"))
    return root, load_dataset("megc2019", root)


def test_composite_counts(composite):
    _, result = composite
    samples = apply_protocol(result.samples, "megc2019-3")
    assert len(samples) == 442
    assert len({s.group for s in samples}) == 68
    assert Counter(s.label for s in samples) == {0: 250, 1: 109, 2: 83}
    assert _summary(samples) == {"casme2": (145, (88, 32, 25), 24), "samm": (133, (92, 26, 15), 28),
                                 "smic": (164, (70, 51, 43), 16)}


def test_exclusions_and_reports(composite):
    _, result = composite
    clips = {(s.subject, s.clip_id) for s in result.samples if s.dataset == "casme2"}
    assert not clips & EXCLUDED
    assert len(result.samples) == 255 - 5 + 159 + 164
    excluded = [line for line in result.skipped if "excluded from the MEGC2019 composite" in line]
    assert len(excluded) == 5 and all(line.startswith("[casme2] ") for line in excluded)
    assert any(fix.sample_id.startswith("casme2/") for fix in result.fixes)
    assert not any("sub04/EP12_01f" in fix.sample_id for fix in result.fixes)  # excluded: its fixes go too
    assert any(fix.sample_id.startswith("samm/") for fix in result.fixes)


def test_subject_ids_stay_distinct(composite):
    _, result = composite
    groups = {s.group for s in result.samples}
    assert {g.split("/")[0] for g in groups} == {"casme2", "samm", "smic"}
    assert len(groups) == len({(s.dataset, s.subject) for s in result.samples}) == 26 + 32 + 16


def test_source_roots_on_their_own(composite, tmp_path, monkeypatch):
    root, _ = composite
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no casme2 dataset(.|\n)*casme2_root="):
        load_dataset("megc2019", empty)
    monkeypatch.setenv("MERKIT_SMIC_ROOT", str(root / "SMIC"))
    result = load_dataset("megc2019", empty, casme2_root=root / "CASME2", samm_root=root / "SAMM")
    assert len(apply_protocol(result.samples, "megc2019-3")) == 442


@pytest.fixture(scope="module")
def flow_release(tmp_path_factory):
    root = build_megc2019_flow(tmp_path_factory.mktemp("megc_flow"))
    return root, load_dataset("megc2019-flow", root)


def test_flow_release_counts(flow_release):
    _, result = flow_release
    samples = apply_protocol(result.samples, "megc2019-3")
    assert len(samples) == 442 and len({s.group for s in samples}) == 68
    assert _summary(samples) == {"casme2": (145, (88, 32, 25), 24), "samm": (133, (92, 26, 15), 28),
                                 "smic": (164, (70, 51, 43), 16)}


def test_flow_release_samples_carry_precomputed_views(flow_release):
    root, result = flow_release
    first = result.samples[0]
    assert (first.dataset, first.subject, first.clip_id) == ("casme2", "sub01", "EP01_01f")
    assert first.emotion in ("negative", "positive", "surprise") and first.label is None
    assert len(first.frames) == 0 and first.apex_frame is None
    assert first.meta["precomputed_views"] == ("flow", "apex")
    assert first.meta["flow_image"] == str(root / "datasets" / "STSNet_whole_norm_u_v_os" / "sub01_EP01_01f.png")
    assert result.samples[1].meta["flow_image"].endswith("sub01_EP02_01f .png")  # with the space
    assert first.meta["apex_image"] == str(root / "datasets" / "combined_datasets_whole" / "sub01_EP01_01f.jpg")
    samm = next(s for s in result.samples if s.dataset == "samm")
    assert samm.subject == "006" and samm.fps == 200
    flow = read_flow_image(first.meta["flow_image"])
    assert flow.shape == (3, 28, 28) and flow.dtype == np.float32
    np.testing.assert_allclose(flow[0, 5], np.arange(28) * 9 / 255, atol=1e-6)  # u = the R plane
    np.testing.assert_allclose(flow[2], 200 / 255, atol=1e-6)


def test_flow_release_without_crops(tmp_path):
    rows = megc2019_flow_rows()[:6]
    root = build_megc2019_flow(tmp_path, rows, crops=False)
    result = load_dataset("megc2019-flow", root)
    assert all(s.meta["precomputed_views"] == ("flow",) and "apex_image" not in s.meta for s in result.samples)


def test_flow_release_bad_rows(tmp_path):
    rows = megc2019_flow_rows()[:6]
    root = build_megc2019_flow(tmp_path, rows)
    table = root / "label" / "combined_3_class2_for_optical_flow.csv"
    lines = list(csv.reader(open(table)))
    lines[3][3] = "5"
    with open(table, "w", newline="") as handle:
        csv.writer(handle).writerows(lines)
    with pytest.raises(AnnotationError, match="label: expected 0, 1 or 2, got '5'") as info:
        load_dataset("megc2019-flow", root)
    assert info.value.row == 4
    (root / "datasets" / "STSNet_whole_norm_u_v_os" / "sub01_EP02_01f .png").unlink()
    result = load_dataset("megc2019-flow", root, on_error="skip")
    assert len(result.samples) == 4 and "row 3" in result.skipped[0] and "row 4" in result.skipped[1]
    with pytest.raises(MissingFramesError, match="no flow image sub01_EP02_01f"):
        load_dataset("megc2019-flow", root, csv_file=table, flow_dir="datasets/STSNet_whole_norm_u_v_os")


def test_registered():
    assert get_dataset("megc2019").protocols == ("megc2019-3",)
    assert "filename_o" in get_dataset("megc2019-flow").layout


def _write_flow_png(path, flow_uvs):
    """Write a (3, H, W) flow the way the release does: each channel min-max scaled to 0..255."""
    scaled = []
    for channel in flow_uvs:
        scaled.append(np.round(255 * (channel - channel.min()) / (channel.max() - channel.min())))
    image = np.stack(scaled, axis=-1).astype(np.uint8)
    import cv2

    assert cv2.imwrite(str(path), image[..., ::-1])  # RGB = u, v, strain; cv2 writes BGR


def test_centered_release_flow_puts_no_motion_at_zero_and_mirrors_exactly(tmp_path):
    """A clip and its mirror image, each written as the release writes flow (per-image min-max):
    the centered view of the mirror is the flipped centered view with u negated, which is what
    the horizontal flip of the augmentation does; the minmax view is not."""
    from dataclasses import replace

    from merkit.config import ViewsConfig
    from merkit.preprocess.pipeline import build_views
    from merkit.views import ViewSpec

    rng = np.random.default_rng(0)
    u, v = np.zeros((28, 28)), np.zeros((28, 28))
    u[5:12, 4:10] = 1.5 + rng.random((7, 6))  # an asymmetric movement on a still face
    v[18:24, 14:20] = -2.0 - rng.random((6, 6))
    strain = np.abs(np.gradient(u, axis=1)) + np.abs(np.gradient(v, axis=0)) + 0.01 * rng.random((28, 28))
    _write_flow_png(tmp_path / "clip.png", [u, v, strain])
    _write_flow_png(tmp_path / "mirror.png", [-u[:, ::-1], v[:, ::-1], strain[:, ::-1]])
    root = build_megc2019_flow(tmp_path / "release", megc2019_flow_rows()[:1], crops=False)
    sample = load_dataset("megc2019-flow", root).samples[0]
    mirror = replace(sample, meta={**sample.meta, "flow_image": str(tmp_path / "mirror.png")})
    sample = replace(sample, meta={**sample.meta, "flow_image": str(tmp_path / "clip.png")})
    spec = [ViewSpec("flow", (28, 28), 3)]

    def view(s, encoding):
        return build_views(s, spec, ViewsConfig(release_flow=encoding))["flow"]

    minmax, centered = view(sample, "minmax"), view(sample, "centered")
    np.testing.assert_allclose(minmax, read_flow_image(tmp_path / "clip.png"))
    assert np.median(centered[0]) == 0 and np.median(centered[1]) == 0
    np.testing.assert_allclose(centered[0][u == 0], 0, atol=1e-6)  # the still face is 0
    np.testing.assert_allclose(centered[:2], minmax[:2] - np.median(minmax[:2], axis=(1, 2), keepdims=True))
    np.testing.assert_array_equal(centered[2], minmax[2])  # strain as released
    flipped = centered[:, :, ::-1].copy()
    flipped[0] *= -1
    np.testing.assert_allclose(view(mirror, "centered"), flipped, atol=1 / 255)
    wrong = minmax[:, :, ::-1].copy()
    wrong[0] *= -1
    assert np.abs(view(mirror, "minmax") - wrong).max() > 0.5  # negating the minmax u is no mirror
    assert view(sample, "centered").shape == (3, 28, 28)
    resized = build_views(sample, [ViewSpec("flow", (32, 32), 3)], ViewsConfig(release_flow="centered"))["flow"]
    assert resized.shape == (3, 32, 32) and abs(np.median(resized[0])) < 1e-6


def test_flips_of_a_released_minmax_flow_are_refused(tmp_path):
    from merkit.config import config_from_dict
    from merkit.data.protocols import get_protocol
    from merkit.errors import ConfigError
    from merkit.train.loso import run_loso

    rows = [r for r in megc2019_flow_rows() if r["sub"] in ("sub01", "s01")]
    samples = apply_protocol(load_dataset("megc2019-flow", build_megc2019_flow(tmp_path / "r", rows)).samples,
                             "megc2019-3")
    raw = {"model": {"name": "logreg", "image_size": 28, "view": "flow"},
           "train": {"epochs": 1, "augment": {"hflip": True}}}
    with pytest.raises(ConfigError, match="release_flow: centered"):
        run_loso(samples, get_protocol("megc2019-3"), config_from_dict(raw), tmp_path / "a")
    mirrored = {**raw, "train": {"epochs": 1, "augment": {"test_hflip": True}}}  # mirroring at test time alike
    with pytest.raises(ConfigError, match="release_flow: centered"):
        run_loso(samples, get_protocol("megc2019-3"), config_from_dict(mirrored), tmp_path / "a")
    metrics = run_loso(samples, get_protocol("megc2019-3"), config_from_dict({**raw, "views": {"release_flow": "centered"}}),
                       tmp_path / "b")
    assert metrics["n_samples"] == len(samples)


def test_release_form_flow_from_frames_equals_the_same_flow_read_from_a_release_image(synth_samples, tmp_path):
    """``views.flow_form: release`` renders the onset->apex flow of a clip's frames as the release
    does (28 x 28, min-max per channel) and reads it as a released image: written to a release's
    PNG and read back through the megc2019-flow loader, the same flow gives the same view (for
    both release_flow scalings and a resized view), and flips of it follow the release's rule."""
    from dataclasses import replace

    import cv2

    from merkit.config import ViewsConfig, config_from_dict
    from merkit.errors import ConfigError
    from merkit.preprocess.flow import megc_flow_image, optical_flow
    from merkit.preprocess.pipeline import _grey, build_views, load_course
    from merkit.train.loso import check_views_config
    from merkit.views import ViewSpec

    sample = synth_samples[2]
    course = load_course(sample, ViewsConfig())

    image = megc_flow_image(optical_flow(_grey(course.frames[0]), _grey(course.frames[course.apex]), "dis"))
    assert image.shape == (28, 28, 3)
    cv2.imwrite(str(tmp_path / "flow.png"), image[..., ::-1])  # the release's PNG: RGB = u, v, strain
    released = load_dataset("megc2019-flow", build_megc2019_flow(tmp_path / "r", megc2019_flow_rows()[:1],
                                                                   crops=False)).samples[0]
    released = replace(released, meta={**released.meta, "flow_image": str(tmp_path / "flow.png")})
    for scaling in ("minmax", "centered"):
        for size in ((28, 28), (32, 32)):
            spec = [ViewSpec("flow", size, 3)]
            computed = build_views(sample, spec, ViewsConfig(flow="dis", flow_form="release", release_flow=scaling))
            read = build_views(released, spec, ViewsConfig(release_flow=scaling))
            assert computed["flow"].shape == (3, *size)
            np.testing.assert_array_equal(computed["flow"], read["flow"])
    raw = build_views(sample, [ViewSpec("flow", (28, 28), 3)], ViewsConfig(flow="dis"))["flow"]
    assert raw.min() < 0 and np.abs(raw - build_views(sample, [ViewSpec("flow", (28, 28), 3)],
                                                       ViewsConfig(flow="dis", flow_form="release"))["flow"]).max() > 0.1
    flips = {"model": {"name": "logreg", "image_size": 28, "view": "flow"}, "train": {"augment": {"hflip": True}}}
    with pytest.raises(ConfigError, match="release_flow: centered"):
        check_views_config([ViewSpec("flow", (28, 28), 3)], config_from_dict({**flips, "views": {"flow_form": "release"}}))
    check_views_config([ViewSpec("flow", (28, 28), 3)],
                       config_from_dict({**flips, "views": {"flow_form": "release", "release_flow": "centered"}}))
