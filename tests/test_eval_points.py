"""``vlprop eval points`` (eval/points.py): per-query-frame propagation, TAP-Vid metrics and PCK from the same
predictions (hand-computed with an identity propagator), and the real model on a translating texture."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from vlprop.errors import InputError
from vlprop.eval.points import evaluate_points, pose_point_videos, tapvid_point_videos
from vlprop.eval.tapvid import tapvid_metrics, to_benchmark_pixels
from vlprop.geometry import GridGeometry
from vlprop.io.keypoints import KeypointSequence, write_keypoints_json
from vlprop.tasks.pose import KeypointPropagator


def _cli(argv: list[str]) -> int:
    from vlprop.cli import build_parser

    args = build_parser().parse_args(["eval", *argv])
    return args.func(args)


class _IdentityExtractor:
    """One-hot features per grid cell, the same on every frame: every point stays at its query position."""

    batch_size = 4

    def geometry(self, h, w):
        return GridGeometry.for_frame(h, w, stride=8)

    def extract_batch(self, frames):
        g = self.geometry(*frames[0].shape[:2])
        n = g.grid_height * g.grid_width
        return torch.eye(n).reshape(n, g.grid_height, g.grid_width)[None].repeat(len(frames), 1, 1, 1)


def test_points_are_queried_at_their_first_visible_frame_and_scored_by_hand(tmp_path):
    """64x48 frames, annotations on frames 0, 2, 4; identity propagation keeps each point at its query.

    a: (10, 10) on every frame -> exact on frames 2, 4.
    b: invisible on 0, (50, 12) on 2 (its query), (52.5, 12) on 4 -> 2.5 px = 10 benchmark px off on frame 4.
    c: (30, 34) on 0 and 2, (30, 24) on 4 -> 10 px = 53 benchmark px off on frame 4.
    """
    root = tmp_path / "data"
    (root / "clip" / "frames").mkdir(parents=True)
    for t in range(6):
        Image.fromarray(np.full((48, 64, 3), 10 * t, np.uint8)).save(root / "clip" / "frames" / f"{t:05d}.png")
    nan = [np.nan, np.nan]
    xy = np.array([[[10, 10], nan, [30, 34]], [[10, 10], [50, 12], [30, 34]], [[10, 10], [52.5, 12], [30, 24]]], float)
    vis = np.array([[1, 0, 1], [1, 1, 1], [1, 1, 1]], bool)
    write_keypoints_json(root / "clip" / "keypoints.json",
                         KeypointSequence(["a", "b", "c"], ["00000", "00002", "00004"], xy, vis))
    (video,) = pose_point_videos("folder", root)
    assert video.annotated == [0, 2, 4] and video.occluded.tolist() == [[0, 0, 0], [1, 0, 0], [0, 0, 0]]
    prop = KeypointPropagator("crw-jhmdb", extractor=_IdentityExtractor(), decoder="fit", topk=1, crw_compat=False,
                              subpixel=True)
    res = evaluate_points([video], prop, tmp_path / "out", kind="folder", progress=False)
    row = res.per_video[0]
    assert row["passes"] == 2 and row["points"] == 3                     # query frames 0 and 2
    assert (row["scored"], row["visible"]) == (5, 5)                     # a: 2, 4; b: 4; c: 2, 4
    # within 1/2/4/8 px: a x2, c on frame 2 = 3 of 5; within 16: + b = 4 of 5; all predicted visible
    assert row["δ_avg"] == pytest.approx(100 * (4 * 3 / 5 + 4 / 5) / 5)
    # Jaccard: TP = within; FP = the visible predictions that are not within (b, c@4; at 16 px only c@4)
    assert row["AJ"] == pytest.approx(100 * (4 * 3 / 7 + 4 / 6) / 5)
    assert row["OA"] == pytest.approx(100.0)
    # JHMDB reference PCK from the same predictions (frames 2 and 4; frame 4 box 42.5 x 14 -> ref 0.6 * 44.75):
    # c is 10 px off (d = 0.372) on frame 4, b 2.5 px (0.093) -> per joint @0.1: a 2/2, b 2/2, c 1/2
    assert res.overall["PCK@0.1"] == pytest.approx(250 / 3) and res.overall["PCK@0.2"] == pytest.approx(250 / 3)
    pred = np.load(tmp_path / "out" / "predictions" / "clip.npz")
    np.testing.assert_allclose(pred["xy"][1, 2], [50, 12], atol=1e-6)   # b kept at its query position
    assert pred["query"].tolist() == [0, 1, 0] and np.isnan(pred["xy"][1, 0]).all()
    doc = json.loads((tmp_path / "out" / "points.json").read_text())
    assert doc["protocol"]["query_mode"] == "first" and doc["protocol"]["metric_frame"] == [256, 256]
    with pytest.raises(InputError, match="not empty"):
        evaluate_points([video], prop, tmp_path / "out", kind="folder", progress=False)


def _translating_texture(path, T=6, H=64, W=64, step=2):
    """Smooth random texture moving ``step`` px right per frame; point 3 appears on frame 2, point 4 is
    (GT-)occluded on the last two frames. Returns the GT pixel tracks."""
    rng = np.random.default_rng(0)
    big = gaussian_filter(rng.random((H, W + T * step, 3)), sigma=(2, 2, 0))
    big = (255 * (big - big.min()) / (big.max() - big.min())).astype(np.uint8)
    frames = np.stack([big[:, (T - 1 - t) * step:(T - 1 - t) * step + W] for t in range(T)])
    pts0 = np.array([[20, 24], [34, 34], [26, 44], [40, 20], [30, 30]], float)
    xy = pts0[:, None] + np.array([step, 0.0]) * np.arange(T)[None, :, None]
    occ = np.zeros((len(pts0), T), bool)
    occ[3, :2] = True
    occ[4, T - 2:] = True
    points = ((xy + 0.5) / np.array([W, H])).astype(np.float32)
    path.write_bytes(pickle.dumps({"shift": {"video": frames, "points": points, "occluded": occ}}))
    return xy, occ


def test_eval_points_tracks_a_translating_texture_with_the_shipped_dul_model(tmp_path, capsys):
    pkl = tmp_path / "tapvid_synthetic.pkl"
    xy, occ = _translating_texture(pkl)
    out = tmp_path / "out"
    assert _cli(["points", "--dataset", "tapvid", "--root", str(pkl), "--out", str(out), "--resize", "native",
                 "--weights", "vlprop-dul-r18", "--quiet"]) == 0
    assert "| shift | 5 |" in capsys.readouterr().out
    doc = json.loads((out / "points.json").read_text())
    o = doc["overall"]
    # the baseline that does not track (every point stays at its query position) in the same metric
    static = np.repeat(xy[np.arange(5), [0, 0, 0, 2, 0]][:, None], xy.shape[1], axis=1)
    base = tapvid_metrics(to_benchmark_pixels(xy, (64, 64)), occ, to_benchmark_pixels(static, (64, 64)),
                          np.zeros_like(occ))
    assert base["average_pts_within_thresh"] < 0.3
    print("translating texture, shipped DUL model: AJ %.1f, δ_avg %.1f, OA %.1f (static baseline δ_avg %.1f)"
          % (o["AJ"], o["δ_avg"], o["OA"], 100 * base["average_pts_within_thresh"]))
    assert o["δ_avg"] > 70.0 and o["AJ"] > 55.0
    assert doc["videos"][0]["passes"] == 2 and doc["protocol"]["pck"] is None
    assert (out / "protocol.json").is_file() and (out / "points.md").is_file()


def test_tapvid_frames_are_resized_to_the_benchmark_input_by_default(tmp_path):
    pkl = tmp_path / "t.pkl"
    xy, _ = _translating_texture(pkl)
    (v,) = tapvid_point_videos(pkl)
    assert v.frame_size == (256, 256) and np.asarray(v.frames[0]).shape == (256, 256, 3)
    np.testing.assert_allclose(v.xy, (xy + 0.5) * 4 - 0.5)
    (n,) = tapvid_point_videos(pkl, resize=None)
    assert n.frame_size == (64, 64)
