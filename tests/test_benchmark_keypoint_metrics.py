"""benchmarks/keypoint_metrics.py: the synthetic video it measures on has the motion and occlusion it claims."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from vlprop.io.tapvid import read_tapvid

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "keypoint_metrics.py"


def test_synthetic_video_translates_two_pixels_per_frame_under_a_grey_occluder(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_keypoint_metrics", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.synthetic_tapvid(tmp_path / "s.pkl", T=6, size=64)
    (v,) = read_tapvid(tmp_path / "s.pkl")
    frames = np.asarray(v.frames)
    xy = v.pixel_points()
    np.testing.assert_allclose(np.diff(xy[..., 0], axis=1), 2.0, atol=1e-4)
    x0, x1 = int(0.58 * 64), int(0.66 * 64)
    assert (frames[:, :, x0:x1] == 128).all()
    # texture columns move right by 2 px per frame outside the occluder
    np.testing.assert_array_equal(frames[1, :, 2:20], frames[0, :, 0:18])
    under = (xy[..., 0] >= x0 - 0.5) & (xy[..., 0] < x1 - 0.5)
    assert under.any() and (v.occluded == under).all()
