import logging

import cv2
import numpy as np
import pytest

from faces import astronaut_face, neutral_landmarks
from fixtures_datasets import build_megc2019_flow, megc2019_flow_rows
from merkit.config import ViewsConfig
from merkit.data.megc2019 import read_flow_image
from merkit.data.protocols import apply_protocol
from merkit.data.registry import load_dataset
from merkit.errors import PreprocessError
from merkit.preprocess.pipeline import build_views, load_course, release_views
from merkit.preprocess.regions import crop_regions, five_points, flow_regions, quadrant_centres, region_centres
from merkit.views import ViewSpec

# five points (x, y) on a 224 px image; pixel-edge coordinates (x + 0.5) / 8 land on whole 28-px pixels
POINTS_224 = np.array([[79.5, 87.5],     # image-left eye       -> (10, 11)
                       [167.5, 87.5],    # image-right eye      -> (21, 11)
                       [111.5, 127.5],   # nose (not used)
                       [87.5, 175.5],    # image-left mouth     -> (11, 22), y clamped to 21
                       [159.5, 167.5]])  # image-right mouth    -> (20, 21)


def test_region_centres_by_hand():
    centres = region_centres(POINTS_224, (224, 224), (28, 28))
    # layout order: top-left left eye, top-right left mouth corner, bottom-left right eye, bottom-right right mouth
    assert centres.tolist() == [[10, 11], [11, 21], [21, 11], [20, 21]]
    far = POINTS_224.copy()
    far[0] = (-30.0, 300.0)  # outside the image: clamped to [7, 21]
    assert region_centres(far, (224, 224), (28, 28))[0].tolist() == [7, 21]


def test_crop_against_known_landmark_positions():
    flow = np.arange(3 * 28 * 28, dtype=np.float32).reshape(3, 28, 28)
    regions = crop_regions(flow, region_centres(POINTS_224, (224, 224), (28, 28)))
    assert regions.shape == (3, 28, 28) and regions.dtype == np.float32
    # region centred at (x, y) covers rows y-7..y+6 and columns x-7..x+6
    np.testing.assert_array_equal(regions[:, :14, :14], flow[:, 4:18, 3:17])     # left eye (10, 11)
    np.testing.assert_array_equal(regions[:, :14, 14:], flow[:, 14:28, 4:18])    # left mouth corner (11, 21)
    np.testing.assert_array_equal(regions[:, 14:, :14], flow[:, 4:18, 14:28])    # right eye (21, 11)
    np.testing.assert_array_equal(regions[:, 14:, 14:], flow[:, 14:28, 13:27])   # right mouth corner (20, 21)


def test_quadrants_and_bad_sizes():
    assert quadrant_centres((28, 28)).tolist() == [[7, 7], [7, 21], [21, 7], [21, 21]]
    flow = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    regions = crop_regions(flow, quadrant_centres((4, 4)))
    # the off-diagonal quadrants trade places: top-right shows the bottom-left quadrant (left mouth area)
    assert regions[0].tolist() == [[0, 1, 8, 9], [4, 5, 12, 13], [2, 3, 10, 11], [6, 7, 14, 15]]
    with pytest.raises(PreprocessError, match="even map size"):
        crop_regions(np.zeros((3, 27, 28), np.float32), quadrant_centres((28, 28)))
    with pytest.raises(PreprocessError, match="leaves the 28 x 28 map"):
        crop_regions(np.zeros((3, 28, 28), np.float32), np.array([[3, 7], [7, 21], [21, 7], [21, 21]]))


def test_five_points_on_a_real_face():
    face = astronaut_face(192)
    points, source = five_points(face)
    marks = neutral_landmarks(192)
    assert source == "mtcnn" and points.shape == (5, 2)
    expected = np.stack([marks[36:42].mean(0), marks[42:48].mean(0), marks[30], marks[48], marks[54]])
    # MTCNN and dlib place the points a few pixels apart on a 192 px face (inter-ocular ~45 px)
    assert np.linalg.norm(points - expected, axis=1).max() < 6.0
    assert points[0, 0] < points[1, 0] and points[3, 0] < points[4, 0]  # image-left before image-right
    assert points[:2, 1].max() < points[2, 1] < points[3:, 1].min()     # eyes above the nose above the mouth


def test_no_face_gives_the_quadrants_and_says_so(caplog):
    flow = np.random.default_rng(0).random((3, 28, 28)).astype(np.float32)
    with caplog.at_level(logging.INFO, logger="merkit.preprocess.regions"):
        regions = flow_regions(flow, np.full((64, 64, 3), 128, np.uint8), sample_id="smic/s01/x")
    np.testing.assert_array_equal(regions, crop_regions(flow, quadrant_centres((28, 28))))
    assert "smic/s01/x: no face found" in caplog.text


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """Six released clips; the first one's apex crop is a real face (the others are 8 x 8 patterns)."""
    root = build_megc2019_flow(tmp_path_factory.mktemp("release"), megc2019_flow_rows()[:6])
    samples = apply_protocol(load_dataset("megc2019-flow", root).samples, "megc2019-3")
    face = cv2.resize(astronaut_face(192), (224, 224), interpolation=cv2.INTER_LINEAR)
    ok, data = cv2.imencode(".jpg", face[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 98])
    assert ok
    with open(samples[0].meta["apex_image"], "wb") as handle:
        handle.write(data.tobytes())
    return root, samples


def test_release_view_cuts_the_released_flow_around_the_apex_face(release):
    from merkit.data.sample import read_image

    _, samples = release
    spec = ViewSpec("flow_regions", (28, 28))
    assert "flow_regions" in release_views(("flow", "apex")) and "flow_regions" not in release_views(("flow",))
    views = build_views(samples[0], [spec, ViewSpec("flow", (28, 28))], ViewsConfig())
    flow = read_flow_image(samples[0].meta["flow_image"])
    np.testing.assert_array_equal(views["flow"], flow)
    apex = read_image(samples[0].meta["apex_image"])
    points, source = five_points(apex)
    assert source == "mtcnn"
    np.testing.assert_array_equal(views["flow_regions"], crop_regions(flow, region_centres(points, (224, 224), (28, 28))))
    assert views["flow_regions"].shape == (3, 28, 28) and views["flow_regions"].dtype == np.float32


def test_htnet_runs_on_a_release_with_crops_only(release, tmp_path):
    from merkit.api import fit_to_release
    from merkit.config import load_config
    from merkit.errors import ConfigError

    _, samples = release
    config = load_config("htnet-cpu")
    assert fit_to_release(config, samples) == (config, [])
    bare = build_megc2019_flow(tmp_path, megc2019_flow_rows()[:3], crops=False)
    without = apply_protocol(load_dataset("megc2019-flow", bare).samples, "megc2019-3")
    with pytest.raises(ConfigError, match="flow_regions"):
        fit_to_release(config, without)


def test_view_from_frames_cuts_the_flow_view(synth_samples):
    sample = synth_samples[3]
    config = ViewsConfig(flow="dis")
    views = build_views(sample, [ViewSpec("flow", (28, 28)), ViewSpec("flow_regions", (28, 28))], config)
    course = load_course(sample, config, full=False)
    apex = course.frames[course.apex]
    found = five_points(apex)
    centres = quadrant_centres((28, 28)) if found is None else region_centres(found[0], apex.shape[:2], (28, 28))
    np.testing.assert_allclose(views["flow_regions"], crop_regions(views["flow"], centres))


def test_region_arrangement_is_never_flipped_or_shifted():
    import torch

    from merkit.config import AugmentConfig
    from merkit.train.augment import augment_batch

    views = {"flow_regions": torch.rand(6, 3, 28, 28), "flow": torch.rand(6, 3, 28, 28)}
    out = augment_batch(views, AugmentConfig(hflip=True, vflip=True, random_crop=2), torch.Generator().manual_seed(0))
    assert torch.equal(out["flow_regions"], views["flow_regions"])
    assert not torch.equal(out["flow"], views["flow"])  # the plain flow view is augmented
