"""The BADJA protocol (eval/pck.py BADJA rule, eval/pose.py ``--protocol badja``): threshold 0.2 * sqrt(GT
mask area), known areas, hand-computed PCK end to end with an identity propagator."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlprop.errors import InputError
from vlprop.eval.pck import badja_correct, badja_thresholds, mask_area, resize_nearest
from vlprop.eval.pose import evaluate_pose, read_pose_dataset
from vlprop.geometry import GridGeometry
from vlprop.tasks.pose import KeypointPropagator


class _IdentityExtractor:
    """One-hot features per grid cell, the same on every frame: keypoints stay where they were labelled."""

    batch_size = 4

    def geometry(self, h, w):
        return GridGeometry.for_frame(h, w, stride=8)

    def extract_batch(self, frames):
        g = self.geometry(*frames[0].shape[:2])
        n = g.grid_height * g.grid_width
        return torch.eye(n).reshape(n, g.grid_height, g.grid_width)[None].repeat(len(frames), 1, 1, 1)


def test_badja_threshold_is_a_fifth_of_the_square_root_of_the_mask_area():
    mask = np.zeros((50, 60), np.uint8)
    mask[10:30, 5:25] = 3                                   # 20 x 20 = 400 px of object id 3
    assert mask_area(mask) == 400.0
    assert badja_thresholds([mask_area(mask)]) == pytest.approx([0.2 * 20.0])   # 4 px
    gt = np.array([[[10.0, 10.0], [20.0, 20.0], [30.0, 30.0], [40.0, 40.0]]])
    pred = gt + np.array([[[3.99, 0.0], [0.0, 4.0], [0.0, 0.0], [np.nan, np.nan]]])
    vis = np.array([[True, True, False, True]])
    correct, scored = badja_correct(gt, pred, vis, [400.0])
    # 3.99 < 4 correct; 4.0 is not (strict <, as PIPs); an invisible GT joint is not scored; no prediction = miss
    assert correct.tolist() == [[True, False, False, False]] and scored.tolist() == [[True, True, False, True]]
    # distances are measured in evaluation pixels: x scaled by 2 turns 3.99 px into 7.98 > 4
    correct, _ = badja_correct(gt, pred, vis, [400.0], scale=(2.0, 1.0))
    assert correct.tolist() == [[False, False, False, False]]


def test_mask_area_after_nearest_resize_to_the_pips_resolution_matches_hand_count():
    full = np.zeros((1080, 1920), bool)
    full[:200, :200] = True
    # output row i samples input row floor(i * 1080 / 320) = floor(3.375 i) < 200 -> i <= 59 (60 rows);
    # column j samples floor(3.75 j) < 200 -> j <= 53 (54 columns)
    assert mask_area(full, (512, 320)) == 60 * 54
    assert mask_area(full, (96, 54)) == 10 * 10            # exact 20x subsampling
    assert resize_nearest(np.arange(4)[None].repeat(2, 0), (2, 1)).tolist() == [[0, 2]]


def _badja_layout(root, mask_shape=(1080, 1920)):
    """One BADJA video: 96x54 frames (a 1/20 copy), full-resolution masks, joints in 1920x1080 (row, col).

    frame 0 (labelled): j0, j1 visible, j2 invisible.
    frame 2: mask 200x200 full-res px; j0 moved 30 full-res px in x (1.5 frame px), j1 moved 40 in y (2.0 px),
             j2 visible (never predicted: it was invisible on the labelled frame).
    frame 4: mask 400x400; j0 moved 70 in x (3.5 px); j1, j2 invisible.
    """
    frames = root / "DAVIS" / "JPEGImages" / "Full-Resolution" / "dog"
    masks = root / "DAVIS" / "Annotations" / "Full-Resolution" / "dog"
    frames.mkdir(parents=True)
    masks.mkdir(parents=True)
    for t in range(5):
        Image.fromarray(np.full((54, 96, 3), 20 * t, np.uint8)).save(frames / f"{t:05d}.jpg")
    base = np.array([[300.0, 400.0], [600.0, 1000.0], [500.0, 500.0]])
    entries = []
    for t, side, move, vis in ((0, 300, [[0, 0], [0, 0], [0, 0]], [1, 1, 0]),
                               (2, 200, [[0, 30], [40, 0], [0, 0]], [1, 1, 1]),
                               (4, 400, [[0, 70], [0, 0], [0, 0]], [1, 0, 0])):
        m = np.zeros(mask_shape, np.uint8)
        m[:side, :side] = 1
        im = Image.fromarray(m, mode="L").convert("P")
        im.putpalette([0, 0, 0, 0, 128, 0] + [0] * 762)     # object 1 is green: any non-zero label counts
        im.save(masks / f"{t:05d}.png")
        entries.append({"image_path": f"DAVIS/JPEGImages/Full-Resolution/dog/{t:05d}.jpg",
                        "segmentation_path": f"DAVIS/Annotations/Full-Resolution/dog/{t:05d}.png",
                        "joints": (base + np.array(move)).tolist(), "visibility": vis})
    (root / "joint_annotations").mkdir()
    (root / "joint_annotations" / "dog.json").write_text(json.dumps(entries))


@pytest.mark.parametrize("size", [None, (512, 320)])
def test_badja_protocol_end_to_end_matches_hand_computation(tmp_path, size):
    root = tmp_path / "badja"
    _badja_layout(root)
    (video,) = read_pose_dataset("badja", root)
    assert sorted(video.masks) == [0, 2, 4]
    prop = KeypointPropagator("crw-jhmdb", extractor=_IdentityExtractor(), decoder="fit", topk=1, crw_compat=False,
                              subpixel=True)
    res = evaluate_pose([video], prop, tmp_path / "out", dataset={"name": "badja"}, progress=False,
                        protocol="badja", badja_size=size)
    if size is None:   # frame pixels: areas 10x10 and 20x20 -> thresholds 2 and 4 px
        thr2, thr4, sx, sy = 2.0, 4.0, 1.0, 1.0
    else:              # 512x320: areas 60x54 and 119x107 (nearest resize, hand-counted as above)
        thr2, thr4, sx, sy = 0.2 * np.sqrt(60 * 54), 0.2 * np.sqrt(119 * 107), 512 / 96, 320 / 54
    assert 1.5 * sx < thr2 <= 2.0 * sy and 3.5 * sx < thr4              # the hand answer below holds
    # scored: frame 2 j0 (correct), j1 (2 px: miss), j2 (not predicted: miss); frame 4 j0 (correct) -> 2 / 4
    r = res.results["badja"]
    assert r.pck.tolist() == [50.0] and r.extra["scored"] == 4
    assert r.per_joint[:, 0].tolist() == [100.0, 0.0, 0.0] and r.counts.tolist() == [2, 1, 1]
    assert res.per_video[0]["badja PCK@0.2"] == 50.0 and res.per_video[0]["scored"] == 4
    doc = json.loads((tmp_path / "out" / "protocol.json").read_text())
    assert doc["scoring"]["protocol"] == "badja"
    assert doc["scoring"]["eval_size"] == (None if size is None else [512, 320])
    assert "0.2 * sqrt(area of the GT mask)" in (tmp_path / "out" / "pck.md").read_text()


def test_badja_protocol_refuses_missing_masks_before_propagating(tmp_path):
    root = tmp_path / "badja"
    _badja_layout(root)
    (root / "DAVIS" / "Annotations" / "Full-Resolution" / "dog" / "00004.png").unlink()
    (video,) = read_pose_dataset("badja", root)
    prop = KeypointPropagator("crw-jhmdb", extractor=_IdentityExtractor())
    with pytest.raises(InputError, match=r"segmentation mask not found: .*00004.png"):
        evaluate_pose([video], prop, tmp_path / "out", progress=False, protocol="badja")
    assert not (tmp_path / "out" / "predictions").exists()


def test_eval_pose_defaults_to_the_badja_protocol_for_badja_only():
    from vlprop.cli.eval import pose_protocol

    assert pose_protocol("badja", None) == "badja"
    assert pose_protocol("badja", "jhmdb") == "jhmdb"
    assert pose_protocol("jhmdb", None) == "jhmdb"
    with pytest.raises(InputError, match="--protocol badja needs"):
        pose_protocol("folder", "badja")


def test_eval_points_on_badja_queries_late_joints_and_scores_both_ways(tmp_path):
    from vlprop.eval.points import evaluate_points, pose_point_videos

    root = tmp_path / "badja"
    _badja_layout(root)
    (video,) = pose_point_videos("badja", root)
    prop = KeypointPropagator("crw-jhmdb", extractor=_IdentityExtractor(), decoder="fit", topk=1, crw_compat=False,
                              subpixel=True)
    res = evaluate_points([video], prop, tmp_path / "out", kind="badja", progress=False, badja_size=None)
    row = res.per_video[0]
    # j2 (invisible on frame 0) is queried on frame 2: two passes; its own query frame is not scored, so the
    # BADJA PCK is frame 2 j0 (correct), j1 (miss), frame 4 j0 (correct) = 2 / 3
    assert row["passes"] == 2 and row["badja PCK@0.2"] == pytest.approx(200 / 3)
    # TAP-Vid scores j0 on f2, f4, j1 on f2, f4 (occluded) and j2 on f4 (occluded); every prediction is
    # visible, so the two occluded points are occlusion errors: OA = 3 / 5
    assert (row["scored"], row["visible"]) == (5, 3) and row["OA"] == pytest.approx(60.0)


def test_badja_size_option_takes_wxh_or_native():
    from vlprop.cli import build_parser

    base = ["eval", "pose", "--dataset", "badja", "--root", "r", "--out", "o"]
    assert build_parser().parse_args(base).badja_size == (512, 320)
    assert build_parser().parse_args(base + ["--badja-size", "native"]).badja_size is None
    assert build_parser().parse_args(base + ["--badja-size", "1920x1080"]).badja_size == (1920, 1080)
    with pytest.raises(SystemExit):
        build_parser().parse_args(base + ["--badja-size", "big"])
