"""Crop/uncrop mappings and the correlation-filter tracker (tasks/tracker.py)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from vlprop.errors import InputError
from vlprop.tasks.tracker import (
    CorrelationTracker, CropWindow, box_center, box_from_keypoints, box_iou, orientation_features,
)

# ------------------------------------------------------------------- crops

WINDOWS = [
    CropWindow(20.5, 17.25, 60.3, 45.1, 137, 101),     # up-sampling, fractional origin
    CropWindow(-10.2, -4.3, 170.7, 140.2, 64, 48),     # down-sampling, partly outside the frame
    CropWindow(30, 40, 30, 30, 30, 30),                # identity scale: an integer shift
]


@pytest.mark.parametrize("win", WINDOWS)
def test_crop_mapping_round_trips_exactly(win):
    p = np.random.default_rng(0).uniform(-50, 400, size=(100, 2))
    np.testing.assert_allclose(win.from_crop(win.to_crop(p)), p, rtol=0, atol=1e-9)
    np.testing.assert_allclose(win.to_crop(win.from_crop(p)), p, rtol=0, atol=1e-9)
    # the affine used for resampling is the same mapping
    m = win.affine()
    np.testing.assert_allclose(p @ m[:, :2].T + m[:, 2], win.to_crop(p), atol=1e-9)


def test_crop_mapping_follows_the_cell_centre_convention():
    win = CropWindow(10, 20, 40, 30, 80, 60)    # x2 up-sampling of pixels 10..49 x 20..49
    # pixel 10 spans crop pixels 0 and 1, so its centre is at 0.5; the window's left edge is -0.5
    np.testing.assert_allclose(win.to_crop([[10, 20]]), [[0.5, 0.5]])
    np.testing.assert_allclose(win.to_crop([[9.5, 19.5]]), [[-0.5, -0.5]])
    np.testing.assert_allclose(win.to_crop([[49.5, 49.5]]), [[79.5, 59.5]])
    box = (12.0, 25.0, 8.0, 6.0)
    assert win.box_from_crop(win.box_to_crop(box)) == pytest.approx(box)
    assert win.box_to_crop((10, 20, 40, 30)) == pytest.approx((0, 0, 80, 60))


@pytest.mark.parametrize("win", WINDOWS)
@pytest.mark.parametrize("p", [(40.3, 50.7), (47.6, 49.4)])  # inside every window
def test_a_dot_at_p_appears_at_to_crop_p(win, p):
    H, W = 120, 160
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.exp(-((xx - p[0]) ** 2 + (yy - p[1]) ** 2) / (2 * 2.0 ** 2)).astype(np.float32)
    crop = win.crop(img)
    assert crop.shape == (win.out_h, win.out_w)
    Y, X = np.mgrid[0:crop.shape[0], 0:crop.shape[1]]
    w = crop / crop.sum()
    centroid = np.array([(w * X).sum(), (w * Y).sum()])
    np.testing.assert_allclose(centroid, win.to_crop(p), atol=0.02)


def test_crop_replicates_the_border_and_handles_colour_frames():
    frame = np.zeros((50, 60, 3), np.uint8)
    frame[:, :, 0] = np.arange(60, dtype=np.uint8)[None, :]   # red ramp along x
    frame[:, :, 2] = 7
    win = CropWindow(-20, 10, 40, 20, 40, 20)                 # left half outside the frame
    c = win.crop(frame, antialias=False)
    assert c.shape == (20, 40, 3) and c.dtype == np.uint8
    assert (c[:, :20, 0] == 0).all()                          # replicated column 0
    np.testing.assert_array_equal(c[0, 20:, 0], np.arange(20))
    assert (c[..., 2] == 7).all()
    far = CropWindow(500, 500, 10, 10, 5, 5).crop(frame)     # entirely outside: nearest border pixel
    assert (far[..., 0] == 59).all()


def test_keypoints_survive_crop_encode_decode_uncrop():
    # the joint tracking + propagation path: box around the keypoints -> up-sampled crop ->
    # label map on the crop's feature grid -> decode -> back to image pixels
    from vlprop.geometry import GridGeometry
    from vlprop.labels.keypoints import KeypointCodec

    xy = np.array([[903.3, 511.8], [921.7, 530.2], [897.1, 538.9]])   # a small animal in 1920x1080
    win = CropWindow.from_box(box_from_keypoints(xy, padding=0.5), out_w=320, out_h=320, context=1.5,
                              square=True)
    geo = GridGeometry.for_frame(320, 320, stride=8)
    codec = KeypointCodec.waldmann().with_decoder("fit")
    decoded = codec.decode(codec.encode(win.to_crop(xy), None, geo), geo)
    np.testing.assert_allclose(win.from_crop(decoded.xy), xy, atol=1e-3)


def test_box_from_keypoints_pads_around_the_visible_keypoints():
    xy = np.array([[10.0, 20.0], [29.0, 24.0], [500.0, 500.0], [np.nan, 3.0]])
    vis = np.array([True, True, False, True])
    assert box_from_keypoints(xy, vis, padding=0.0, min_size=1) == (10.0, 20.0, 20.0, 5.0)
    x, y, w, h = box_from_keypoints(xy, vis, padding=0.25, min_size=8)
    assert (w, h) == (30.0, 8.0)                              # 20 * 1.5; 5 * 1.5 = 7.5 -> min 8
    np.testing.assert_allclose(box_center((x, y, w, h)), [19.5, 22.0])
    assert box_from_keypoints(xy, vis, padding=0.0, min_size=1, square=True)[2:] == (20.0, 20.0)
    with pytest.raises(InputError, match="no visible keypoint"):
        box_from_keypoints(xy, np.zeros(4, bool))


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0


def test_orientation_features_respond_to_edge_direction():
    img = np.zeros((32, 32), np.float32)
    img[:, 16:] = 1.0                                          # vertical edge: horizontal gradient
    f = orientation_features(img, cell=4)
    assert f.shape == (8, 8, 10)
    edge = f[:, 3:5, :9].sum(axis=(0, 1))
    assert np.argmax(edge) == 0 and edge[0] > 5 * np.delete(edge, 0).max()
    assert f[:, 0, :9].max() == 0.0                            # flat region: no gradient


# ----------------------------------------------------------------- tracker


def _textured(shape, rng, blocks):
    small = rng.uniform(0, 255, size=(shape[0] // blocks, shape[1] // blocks, 3)).astype(np.uint8)
    return cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def _paste(frame, patch, center):
    """Paste ``patch`` with its centre at sub-pixel ``center`` (bilinear, exact position)."""
    S = patch.shape[0]
    pad = 3
    x0, y0 = int(np.floor(center[0] - (S - 1) / 2)), int(np.floor(center[1] - (S - 1) / 2))
    fx, fy = center[0] - (S - 1) / 2 - x0, center[1] - (S - 1) / 2 - y0
    m = np.array([[1, 0, fx + pad], [0, 1, fy + pad]], dtype=np.float64)
    size = (S + 2 * pad, S + 2 * pad)
    alpha = cv2.warpAffine(np.ones((S, S), np.float32), m, size)[..., None]
    moved = cv2.warpAffine(patch.astype(np.float32), m, size)
    sl = (slice(y0 - pad, y0 + S + pad), slice(x0 - pad, x0 + S + pad))
    out = frame.copy()
    out[sl] = (out[sl] * (1 - alpha) + moved * alpha).round().astype(np.uint8)
    return out


def _track(tracker, background, patch, trajectory):
    S = patch.shape[0]
    c0 = trajectory[0]
    tracker.init(_paste(background, patch, c0), (c0[0] - (S - 1) / 2, c0[1] - (S - 1) / 2, S, S))
    errors, sizes = [], []
    for c in trajectory[1:]:
        box = tracker.update(_paste(background, patch, c))
        errors.append(np.linalg.norm(box_center(box) - c))
        sizes.append(box[2])
    return np.array(errors), np.array(sizes)


@pytest.mark.parametrize("kwargs", [{}, {"kernel": "linear"}, {"features": "gray"}, {"num_scales": 1}])
def test_tracker_follows_a_textured_square_on_a_known_trajectory(kwargs):
    rng = np.random.default_rng(0)
    background = _textured((240, 320), rng, 8)
    patch = cv2.resize(rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8), (40, 40), interpolation=cv2.INTER_NEAREST)
    t = np.arange(31)
    trajectory = np.stack([80 + 4.1 * t, 100 + 40 * np.sin(t / 5)], axis=1)   # up to ~8 px per frame
    errors, sizes = _track(CorrelationTracker(**kwargs), background, patch, trajectory)
    assert errors.max() < 2.0, errors
    assert 0.85 * 40 < sizes.min() and sizes.max() < 1.15 * 40


def test_tracker_follows_a_small_object_in_a_large_frame():
    rng = np.random.default_rng(1)
    background = _textured((1080, 1920), rng, 16)
    patch = cv2.resize(rng.uniform(0, 255, (6, 6, 3)).astype(np.uint8), (24, 24), interpolation=cv2.INTER_NEAREST)
    t = np.arange(31)
    trajectory = np.stack([900 + 3.3 * t, 500 + 15 * np.sin(t / 4)], axis=1)
    errors, _ = _track(CorrelationTracker(), background, patch, trajectory)
    assert errors.max() < 2.0, errors


def test_tracker_reports_a_static_target_without_drift():
    rng = np.random.default_rng(2)
    frame = _paste(_textured((120, 160), rng, 8),
                   cv2.resize(rng.uniform(0, 255, (5, 5, 3)).astype(np.uint8), (30, 30),
                              interpolation=cv2.INTER_NEAREST), (70.0, 60.0))
    tr = CorrelationTracker()
    tr.init(frame, (55.5, 45.5, 30, 30))
    for _ in range(5):
        box = tr.update(frame)
    np.testing.assert_allclose(box_center(box), [70.0, 60.0], atol=0.05)
    assert tr.score > 0.5


def test_tracker_misuse_raises_input_errors():
    tr = CorrelationTracker()
    with pytest.raises(InputError, match="before init"):
        tr.update(np.zeros((10, 10), np.uint8))
    with pytest.raises(InputError, match="w, h >= 1"):
        tr.init(np.zeros((10, 10), np.uint8), (0, 0, 0, 5))
    with pytest.raises(InputError, match="features"):
        CorrelationTracker(features="sift")
