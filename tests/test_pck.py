"""PCK and coverage (eval/pck.py) against hand-computed values and a loop transcription of the
reference definition (CRW eval_pck.py / Waldmann keypoint_eval_utils.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from vlprop.errors import InputError
from vlprop.eval.pck import (
    PCK_THRESHOLDS, evaluate_pck, evaluate_pck_sequences, format_pck_markdown, keypoint_coverage,
    normalised_distances, reference_sizes, write_pck_csv, write_pck_json, write_pck_markdown,
)
from vlprop.io.keypoints import KeypointSequence

NAN = np.nan


def _hand_video():
    """3 frames, 3 joints. GT box of frames 1-2: x 0..30, y 0..40 -> diagonal 50 -> ref 30.

    frame 1: j0 off by 3 px (d = 0.1 exactly: the <= boundary), j1 off by 6 (0.2), j2 off by 20.
    frame 2: j0 exact, j1 not predicted, j2 off by 4.5.
    frame 0 is excluded: its predictions are far off on purpose.
    """
    gt = np.array([[[0, 0], [30, 40], [0, 40]]] * 3, dtype=np.float64)
    pred = np.array([
        [[100, 100], [200, 200], [300, 300]],
        [[3, 0], [30, 46], [20, 40]],
        [[0, 0], [-1, -1], [4.5, 40]],
    ], dtype=np.float64)
    return gt, pred


def test_reference_size_is_sixty_percent_of_the_gt_box_diagonal():
    gt, _ = _hand_video()
    np.testing.assert_array_equal(reference_sizes(gt, np.ones((3, 3), bool)), [30.0, 30.0, 30.0])
    # only joints 0 and 2: box 0..0 x 0..40 -> 0.6 * 40
    np.testing.assert_array_equal(reference_sizes(gt, np.array([[1, 0, 1]] * 3, bool)), [24.0] * 3)
    assert np.isnan(reference_sizes(gt, np.zeros((3, 3), bool))).all()


def test_pck_with_prediction_visibility_matches_hand_computation():
    gt, pred = _hand_video()
    d = normalised_distances(gt, pred)
    # frame 2: j1 is not predicted, so the box uses j0 and j2 only (0.6 * 40 = 24)
    np.testing.assert_array_equal(d[:, 0], [0.1, 0.2, 20 / 30])
    np.testing.assert_array_equal(d[:, 1], [0.0, NAN, 4.5 / 24])
    r = evaluate_pck([gt], [pred], thresholds=[0.1, 0.2, 0.5, 0.7], joint_names=["a", "b", "c"])
    # per joint @0.1: j0 2/2 (0.1 <= 0.1 counts), j1 0/1, j2 0/2; @0.2: 2/2, 1/1, 1/2
    np.testing.assert_allclose(r.per_joint, [[100, 100, 100, 100], [0, 100, 100, 100], [0, 50, 50, 100]])
    np.testing.assert_allclose(r.pck, [100 / 3, 250 / 3, 250 / 3, 100])
    np.testing.assert_array_equal(r.counts, [2, 1, 2])
    assert r.at(0.1) == pytest.approx(100 / 3)


def test_pck_with_gt_visibility_counts_missing_predictions_as_misses():
    gt, pred = _hand_video()
    d = normalised_distances(gt, pred, visibility="gt")
    np.testing.assert_array_equal(d[:, 1], [0.0, np.inf, 0.15])   # frame 2: ref 30 over all GT joints
    r = evaluate_pck([gt], [pred], thresholds=[0.1, 0.2], visibility="gt")
    np.testing.assert_allclose(r.per_joint, [[100, 100], [0, 50], [0, 50]])
    np.testing.assert_allclose(r.pck, [100 / 3, 200 / 3])
    np.testing.assert_array_equal(r.counts, [2, 2, 2])


def test_gt_visibility_mode_ignores_gt_joints_outside_the_frame_when_asked():
    gt, pred = _hand_video()
    gt = gt.copy()
    gt[:, 1] = [330, 40]                   # j1 outside a 320x240 frame
    pred = pred.copy()
    pred[1, 1] = [330, 46]
    inside = evaluate_pck([gt], [pred], thresholds=[0.2], visibility="gt", frame_size=(320, 240))
    assert inside.counts[1] == 0 and np.isnan(inside.per_joint[1]).all()
    everything = evaluate_pck([gt], [pred], thresholds=[0.2], visibility="gt")
    assert everything.counts[1] == 2


def test_frame_zero_is_excluded_and_the_boundary_is_inclusive():
    gt, pred = _hand_video()
    with_first = evaluate_pck([gt], [pred], thresholds=[0.1], skip_first=False)
    # frame 0 predictions are all wrong, so including it gives j0 2/3, j1 0/2, j2 0/3
    assert with_first.pck[0] == pytest.approx((200 / 3) / 3)
    # the j0 sample at exactly d = 0.1 counts; just below the threshold it does not
    assert evaluate_pck([gt], [pred], thresholds=[0.1]).per_joint[0, 0] == 100.0
    assert evaluate_pck([gt], [pred], thresholds=[0.0999999]).per_joint[0, 0] == 50.0


def test_reference_layout_visibility_is_negative_x():
    gt, pred = _hand_video()
    ref_pred = KeypointSequence.from_reference_array(np.transpose(pred, (2, 1, 0)))
    assert not ref_pred.visible[2, 1]
    r1 = evaluate_pck([gt], [ref_pred.xy], [ref_pred.visible])
    r2 = evaluate_pck([gt], [pred])          # default: x >= 0 means predicted
    np.testing.assert_array_equal(r1.pck, r2.pck)


def _reference_pck(gts, preds, thresholds):
    """Loop transcription of the reference definition, [2, K, T] arrays, x < 0 = not predicted."""
    K = gts[0].shape[1]
    dist = {j: [] for j in range(K)}
    for gt, pr in zip(gts, preds):
        for t in range(gt.shape[2]):
            vis = [j for j in range(K) if pr[0, j, t] >= 0]
            if not vis:
                continue
            xs, ys = [gt[0, j, t] for j in vis], [gt[1, j, t] for j in vis]
            box = 0.6 * np.hypot(max(xs) - min(xs), max(ys) - min(ys))
            if t == 0:
                continue
            for j in vis:
                dist[j].append(np.hypot(pr[0, j, t] - gt[0, j, t], pr[1, j, t] - gt[1, j, t]) / box)
    return [np.mean([100.0 * sum(d <= a for d in dist[j]) / len(dist[j]) for j in range(K)]) for a in thresholds]


def test_pck_equals_the_reference_definition_on_random_videos():
    rng = np.random.default_rng(0)
    gts, preds = [], []
    for T in (7, 12, 5):
        gt = rng.uniform(20, 300, size=(2, 15, T))
        pr = gt + rng.normal(0, 12, size=gt.shape)
        hide = rng.random((15, T)) < 0.15
        pr[:, hide] = -1
        pr[0][pr[0] < 0] = -1                 # a prediction left of the frame is "not predicted" too
        gts.append(gt)
        preds.append(pr)
    expected = _reference_pck(gts, preds, PCK_THRESHOLDS)
    r = evaluate_pck([g.transpose(2, 1, 0) for g in gts], [p.transpose(2, 1, 0) for p in preds])
    np.testing.assert_allclose(r.pck, expected, rtol=0, atol=1e-9)
    assert r.thresholds == PCK_THRESHOLDS and r.num_videos == 3


def test_coverage_matches_hand_computation():
    gt = np.array([[[10, 10], [20, 20], [330, 30]]] * 2, dtype=np.float64)   # j2 outside 320 wide
    pred = gt.copy()
    pred[1, 0] = -1                                                        # frame 1 misses j0
    c1, c2 = keypoint_coverage([gt], [pred])
    assert c1 == pytest.approx(100 * (1 + 2 / 3) / 2)      # min(pred, gt) / gt per frame
    assert c2 == pytest.approx(100 * (1 + 1 / 2) / 2)      # only j0, j1 count
    long = np.array([[[10, 10], [20, 20], [30, 30]]] * 4, dtype=np.float64)
    c1w, _ = keypoint_coverage([gt, long], [pred, long.copy()])
    assert c1w == pytest.approx((c1 * 2 + 100 * 4) / 6)   # weighted by video length
    c1u, _ = keypoint_coverage([gt, long], [pred, long.copy()], weighted=False)
    assert c1u == pytest.approx((c1 + 100) / 2)


def test_sparse_annotations_are_scored_on_annotated_frames_only():
    names = ["a", "b"]
    gt = KeypointSequence(names, [0, 5, 9], np.array([[[0, 0], [30, 40]]] * 3, float), np.ones((3, 2), bool))
    pred_xy = np.full((10, 2, 2), 1000.0)           # wrong everywhere except on annotated frames
    pred_xy[[0, 5, 9]] = [[0, 0], [30, 40]]
    pred_xy[9, 1] = [30, 55]                         # d = 15 / 30 = 0.5
    pred = KeypointSequence(names, list(range(10)), pred_xy, np.ones((10, 2), bool))
    r = evaluate_pck_sequences([gt], [pred], thresholds=[0.1, 0.5])
    np.testing.assert_allclose(r.per_joint, [[100, 100], [50, 100]])
    assert r.joint_names == names
    # a GT frame without prediction: nothing predicted there (pred mode: not scored; gt mode: miss)
    short = KeypointSequence(names, list(range(9)), pred_xy[:9], np.ones((9, 2), bool))
    assert evaluate_pck_sequences([gt], [short], thresholds=[0.1], visibility="gt").per_joint[0, 0] == 50.0
    assert evaluate_pck_sequences([gt], [short], thresholds=[0.1]).counts.tolist() == [1, 1]


def test_writers_produce_csv_markdown_and_json(tmp_path):
    gt, pred = _hand_video()
    results = {"ours": evaluate_pck([gt], [pred], thresholds=[0.1, 0.2], with_coverage=True,
                                    joint_names=["a", "b", "c"]),
               "strict": evaluate_pck([gt], [pred], thresholds=[0.1, 0.2], visibility="gt")}
    write_pck_csv(tmp_path / "pck.csv", results)
    write_pck_markdown(tmp_path / "pck.md", results, per_joint=True)
    write_pck_json(tmp_path / "pck.json", results)
    lines = (tmp_path / "pck.csv").read_text().splitlines()
    assert lines[0] == "method,visibility,videos,PCK@0.1,PCK@0.2,c1,c2"
    assert lines[1].startswith("ours,pred,1,33.33,83.33,") and lines[2] == "strict,gt,1,33.33,66.67,,"
    md = (tmp_path / "pck.md").read_text()
    assert "| ours | pred | 33.33 | 83.33 |" in md and "| b | 1 | 0.00 | 100.00 |" in md
    doc = json.loads((tmp_path / "pck.json").read_text())
    assert doc["ours"]["pck"]["0.1"] == pytest.approx(100 / 3) and doc["strict"]["visibility"] == "gt"
    assert doc["ours"]["counts"] == {"a": 2, "b": 1, "c": 2} and "coverage" in doc["ours"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pck.csv", "pck.json", "pck.md"]
    assert format_pck_markdown(results["ours"]).startswith("| method | visibility | PCK@0.1")


def test_bad_inputs_raise_input_errors():
    gt, pred = _hand_video()
    with pytest.raises(InputError, match="shape"):
        evaluate_pck([gt], [pred[:, :2]])
    with pytest.raises(InputError, match="visibility mode"):
        evaluate_pck([gt], [pred], visibility="both")
    with pytest.raises(InputError, match="2 predicted"):
        evaluate_pck([gt], [pred, pred])
