"""TAP-Vid metrics (eval/tapvid.py) on hand-computed tracks covering every branch of the reference
definition (google-deepmind/tapnet ``compute_tapvid_metrics``)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from vlprop.errors import InputError
from vlprop.eval.tapvid import (
    evaluation_points, mean_over_videos, query_first_frames, tapvid_metrics, to_benchmark_pixels,
)


def _tracks():
    """Two tracks, five frames, ground truth at (100, 100) everywhere; predictions offset along x.

    Track A (visible on every frame, query frame 0 -> frames 1-4 scored):
      f1 visible-correct (0.5 px, predicted visible)      f2 visible-far (10 px, predicted visible)
      f3 predicted-occluded-but-visible (3 px)            f4 exactly 1 px (strict < : not within 1)
    Track B (occluded on f0, so queried on f1 -> frames 2-4 scored in "first" mode):
      f0 predicted visible 50 px away (only scored in "strided" mode, as a false positive)
      f2 visible, predicted visible 20 px away             f3 occluded, predicted visible (exact position)
      f4 occluded, predicted occluded
    """
    gt = np.full((2, 5, 2), 100.0)
    occ = np.array([[0, 0, 0, 0, 0], [1, 0, 0, 1, 1]], bool)
    dx = np.array([[0.0, 0.5, 10.0, 3.0, 1.0], [50.0, 0.0, 20.0, 0.0, 0.0]])
    pred = gt.copy()
    pred[..., 0] += dx
    pocc = np.array([[0, 0, 0, 1, 0], [0, 0, 0, 0, 1]], bool)
    return gt, occ, pred, pocc


def test_query_first_is_the_first_visible_frame_and_never_visible_tracks_have_none():
    occ = np.array([[0, 0, 1], [1, 1, 0], [1, 1, 1]], bool)
    assert query_first_frames(occ).tolist() == [0, 2, -1]
    ev = evaluation_points([0, 2, -1], 3, "first")
    assert ev.tolist() == [[False, True, True], [False, False, False], [False, False, False]]
    assert evaluation_points([0, 2, -1], 3, "strided").tolist() == [[False, True, True], [True, True, False],
                                                                     [False, False, False]]


def test_tapvid_metrics_match_hand_computation_in_query_first_mode():
    gt, occ, pred, pocc = _tracks()
    m = tapvid_metrics(gt, occ, pred, pocc, query_mode="first")
    # scored: A f1-f4, B f2-f4 = 7 points, 5 of them visible
    assert (m["num_points"], m["num_visible"]) == (7, 5)
    # occlusion right on A f1, f2, f4, B f2, f4; wrong on A f3 (visible, predicted occluded), B f3
    assert m["occlusion_accuracy"] == pytest.approx(5 / 7)
    # within (visible only): d1 {A f1}; d2 {A f1, f4}; d4, d8 {A f1, f3, f4}; d16 {A f1, f2, f3, f4}
    expected_within = {1: 1 / 5, 2: 2 / 5, 4: 3 / 5, 8: 3 / 5, 16: 4 / 5}
    # TP excludes A f3 (predicted occluded); FP = predicted visible and (occluded or not within):
    # d1: TP {A f1}, FP {A f2, A f4, B f2, B f3}; d2/d4/d8: TP {A f1, A f4}, FP {A f2, B f2, B f3};
    # d16: TP {A f1, f2, f4}, FP {B f2, B f3}
    expected_jaccard = {1: 1 / (5 + 4), 2: 2 / (5 + 3), 4: 2 / (5 + 3), 8: 2 / (5 + 3), 16: 3 / (5 + 2)}
    for thr in (1, 2, 4, 8, 16):
        assert m[f"pts_within_{thr}"] == pytest.approx(expected_within[thr])
        assert m[f"jaccard_{thr}"] == pytest.approx(expected_jaccard[thr])
    assert m["average_pts_within_thresh"] == pytest.approx(np.mean(list(expected_within.values())))
    assert m["average_jaccard"] == pytest.approx(np.mean(list(expected_jaccard.values())))


def test_strided_mode_also_scores_frames_before_the_query():
    gt, occ, pred, pocc = _tracks()
    m = tapvid_metrics(gt, occ, pred, pocc, query_frames=[0, 1], query_mode="strided")
    # B f0 joins: occluded in the GT but predicted visible -> occlusion wrong and a false positive everywhere
    assert (m["num_points"], m["num_visible"]) == (8, 5)
    assert m["occlusion_accuracy"] == pytest.approx(5 / 8)
    assert m["jaccard_1"] == pytest.approx(1 / (5 + 5))
    assert m["jaccard_16"] == pytest.approx(3 / (5 + 3))
    assert m["pts_within_16"] == pytest.approx(4 / 5)


def test_missing_predicted_coordinates_are_never_within_a_threshold():
    gt, occ, pred, pocc = _tracks()
    pred[0, 1] = np.nan                     # A f1 (was 0.5 px, predicted visible)
    m = tapvid_metrics(gt, occ, pred, pocc)
    assert m["pts_within_1"] == 0.0
    assert m["jaccard_1"] == pytest.approx(0 / (5 + 5))     # A f1 is now a visible prediction that is not within


def test_sparse_annotations_restrict_the_scored_points():
    gt, occ, pred, pocc = _tracks()
    annotated = np.ones((2, 5), bool)
    annotated[:, 2] = False                 # frame 2 not annotated: A f2 and B f2 drop out
    m = tapvid_metrics(gt, occ, pred, pocc, evaluate=annotated)
    assert (m["num_points"], m["num_visible"]) == (5, 3)
    assert m["pts_within_16"] == pytest.approx(3 / 3)
    assert m["jaccard_16"] == pytest.approx(2 / (3 + 1))   # TP A f1, f4; FP B f3


def test_benchmark_pixels_scale_each_axis_to_256():
    xy = to_benchmark_pixels([[639.5, 0.0]], (640, 480))
    np.testing.assert_allclose(xy, [[256.0, 0.5 * 256 / 480]])
    d = to_benchmark_pixels([[10.0, 10.0]], (512, 128)) - to_benchmark_pixels([[0.0, 0.0]], (512, 128))
    np.testing.assert_allclose(d, [[5.0, 20.0]])


def test_mean_over_videos_skips_videos_without_visible_points():
    gt, occ, pred, pocc = _tracks()
    a = tapvid_metrics(gt, occ, pred, pocc)
    b = tapvid_metrics(gt, np.ones_like(occ), pred, np.ones_like(pocc))   # nothing visible, all predicted occluded
    assert math.isnan(b["average_jaccard"]) and b["num_points"] == 0      # no query at all
    m = mean_over_videos([a, b])
    assert m["num_videos"] == 2 and m["average_jaccard"] == pytest.approx(a["average_jaccard"])


def test_bad_shapes_and_query_modes_are_refused():
    gt, occ, pred, pocc = _tracks()
    with pytest.raises(InputError, match="shape"):
        tapvid_metrics(gt, occ, pred[:, :3], pocc)
    with pytest.raises(InputError, match="query mode"):
        tapvid_metrics(gt, occ, pred, pocc, query_mode="middle")
