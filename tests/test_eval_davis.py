"""DAVIS J/F metrics and folder scoring: known answers, the official test cases, and the real clips."""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from vlprop.errors import InputError
from vlprop.eval import davis as D
from vlprop.eval.score import (
    GLOBAL_COLUMNS,
    PER_OBJECT_COLUMNS,
    main_score,
    score_folder,
    score_sequences,
    write_all,
)

DATA = Path(__file__).resolve().parents[1] / "../shared/data"
DAVIS16 = DATA / "davis2016"
DAVIS16_GT = DAVIS16 / "Annotations" / "480p"
needs_davis16 = pytest.mark.skipif(not DAVIS16_GT.is_dir(), reason=f"real DAVIS-2016 clips not found at {DAVIS16}")


# ---------------------------------------------------------------------------------------------------
# A literal, slow re-statement of the official definitions (independent of the fast code paths)
# ---------------------------------------------------------------------------------------------------
def loop_seg2bmap(seg: np.ndarray) -> np.ndarray:
    """Pixel loop over the official rules (E/S/SE; last row E only; last column S only; corner 0)."""
    seg = seg.astype(bool)
    h, w = seg.shape
    b = np.zeros_like(seg)
    for y in range(h):
        for x in range(w):
            if y == h - 1 and x == w - 1:
                continue
            if y == h - 1:
                b[y, x] = seg[y, x] != seg[y, x + 1]
            elif x == w - 1:
                b[y, x] = seg[y, x] != seg[y + 1, x]
            else:
                b[y, x] = seg[y, x] != seg[y, x + 1] or seg[y, x] != seg[y + 1, x] or seg[y, x] != seg[y + 1, x + 1]
    return b


def hand_disk(r: int) -> np.ndarray:
    return np.array([[1 if dx * dx + dy * dy <= r * r else 0 for dx in range(-r, r + 1)] for dy in range(-r, r + 1)],
                    dtype=np.uint8)


def reference_f(fg, gt, void=None, bound_th=0.008, dilation="scipy"):
    fg, gt = fg.astype(bool), gt.astype(bool)
    if void is not None:
        fg, gt = fg & ~void, gt & ~void
    r = int(D.bound_pix(*fg.shape, bound_th))
    k = hand_disk(r)
    bf, bg = D.seg2bmap(fg), D.seg2bmap(gt)
    if dilation == "scipy":
        fd, gd = ndimage.binary_dilation(bf, k.astype(bool)), ndimage.binary_dilation(bg, k.astype(bool))
    else:
        fd = cv2.dilate(bf.astype(np.uint8), k).astype(bool)
        gd = cv2.dilate(bg.astype(np.uint8), k).astype(bool)
    nf, ng = int(bf.sum()), int(bg.sum())
    if nf == 0 and ng > 0:
        p, rc = 1, 0
    elif nf > 0 and ng == 0:
        p, rc = 0, 1
    elif nf == 0 and ng == 0:
        p, rc = 1, 1
    else:
        p, rc = (bf & gd).sum() / float(nf), (bg & fd).sum() / float(ng)
    return 0 if p + rc == 0 else 2 * p * rc / (p + rc)


def reference_j(fg, gt, void=None):
    fg, gt = fg.astype(bool), gt.astype(bool)
    keep = np.ones_like(fg) if void is None else ~void
    union = ((fg | gt) & keep).sum()
    return 1.0 if union == 0 else ((fg & gt) & keep).sum() / union


def reference_stats(x):
    x = np.asarray(x, dtype=float)
    ids = (np.round(np.linspace(1, len(x), 5) + 1e-10) - 1).astype(np.int64)
    bins = [x[ids[i]: ids[i + 1] + 1] for i in range(4)]
    return np.nanmean(x), np.mean(x > 0.5), np.nanmean(bins[0]) - np.nanmean(bins[3])


def box(h, w, rows, cols, value=1, dtype=np.uint8):
    m = np.zeros((h, w), dtype=dtype)
    m[rows[0]:rows[1], cols[0]:cols[1]] = value
    return m


# ---------------------------------------------------------------------------------------------------
# J, F, boundary map, disk
# ---------------------------------------------------------------------------------------------------
def test_void_masks_official_case_scores_one():
    """Official `test_void_masks`: GT rows 100-150, void rows 50-100, prediction rows 50-150 (cols 100-150)."""
    gt = np.zeros((2, 200, 200))
    pred = np.zeros((2, 200, 200))
    void = np.zeros((2, 200, 200))
    gt[:, 100:150, 100:150] = 1
    void[:, 50:100, 100:150] = 1
    pred[:, 50:150, 100:150] = 1
    assert np.mean(D.db_eval_iou(gt, pred, void)) == 1
    assert np.mean(D.db_eval_boundary(gt, pred, void)) == 1
    # Without the void the prediction is twice the GT: J = 2500 / 5000.
    assert np.mean(D.db_eval_iou(gt, pred)) == 0.5


def test_void_is_excluded_in_unsupervised_but_background_in_semi_supervised():
    gt = np.zeros((3, 200, 200), np.uint8)
    gt[:, 100:150, 100:150] = 1
    gt[:, 50:100, 100:150] = 255
    pred = np.zeros_like(gt)
    pred[:, 50:150, 100:150] = 1
    unsup = D.evaluate_unsupervised(gt, pred)
    assert unsup.J.tolist() == [[1.0, 1.0, 1.0]] and unsup.F.tolist() == [[1.0, 1.0, 1.0]]
    semi = D.evaluate_semisupervised(gt, pred)  # official semi task: void is plain background
    assert semi.J.tolist() == [[0.5]]
    assert semi.F[0, 0] < 1


def test_empty_mask_rules_for_j_and_f():
    h, w = 20, 20
    empty = np.zeros((h, w), bool)
    sq = box(h, w, (5, 10), (5, 10)).astype(bool)
    full = np.ones((h, w), bool)
    assert D.db_eval_iou(empty, empty) == 1 and D.f_measure(empty, empty) == 1  # both empty
    assert D.db_eval_iou(sq, empty) == 0 and D.f_measure(empty, sq) == 0  # prediction empty, GT not (P=1, R=0)
    assert D.db_eval_iou(empty, sq) == 0 and D.f_measure(sq, empty) == 0  # GT empty, prediction not (P=0, R=1)
    # A full-frame mask has no boundary pixel: full vs full -> both boundaries empty -> F = 1.
    assert not D.seg2bmap(full).any()
    assert D.db_eval_iou(full, full) == 1 and D.f_measure(full, full) == 1
    # Full GT (empty boundary) vs a square (non-empty boundary): P = 0, R = 1 -> F = 0; J = 25/400.
    assert D.f_measure(sq, full) == 0 and D.db_eval_iou(full, sq) == 25 / 400
    # Boundaries further apart than the tolerance: P = R = 0 -> F = 0 (not a division by zero).
    far = box(h, w, (5, 10), (14, 19)).astype(bool)
    assert D.f_measure(far, sq, bound_th=1) == 0


def test_hand_computed_j_and_f_for_shifted_squares():
    # 5x5 squares (rows 5-9) at cols 5-9 and 8-12; boundaries are 6x6 rings of 20 pixels each.
    gt = box(20, 20, (5, 10), (5, 10)).astype(bool)
    pred = box(20, 20, (5, 10), (8, 13)).astype(bool)
    assert D.seg2bmap(gt).sum() == 20
    assert D.db_eval_iou(gt, pred) == 10 / 40
    # tolerance 1 px (cross): 10 of 20 boundary pixels matched each way -> P = R = F = 0.5
    assert D.f_measure(pred, gt, bound_th=1) == pytest.approx(0.5, abs=1e-15)
    # tolerance 2 px (disk 2): 14 of 20 -> 0.7
    assert D.f_measure(pred, gt, bound_th=2) == pytest.approx(0.7, abs=1e-15)
    # image diagonal 28.3 * 0.008 -> ceil = 1 px: same as tolerance 1
    assert D.f_measure(pred, gt) == pytest.approx(0.5, abs=1e-15)


def test_bound_pix_is_8_for_davis_480p_and_threshold_above_one_is_pixels():
    assert D.bound_pix(480, 854) == 8
    assert D.bound_pix(20, 20) == 1
    assert D.bound_pix(480, 854, bound_th=3) == 3


def test_seg2bmap_matches_pixel_loop_of_the_official_rules():
    rng = np.random.default_rng(1)
    for _ in range(40):
        h, w = rng.integers(1, 12, size=2)
        seg = rng.random((h, w)) < 0.4
        assert np.array_equal(D.seg2bmap(seg), loop_seg2bmap(seg))
    # square -> ring shifted half a pixel towards the origin
    sq = box(8, 8, (2, 5), (2, 5))
    ring = np.zeros((8, 8), bool)
    ring[1:5, 1:5] = True
    ring[2:4, 2:4] = False
    assert np.array_equal(D.seg2bmap(sq), ring)
    # a mask touching the last row/column: only E on the last row, only S on the last column, corner never
    corner = box(4, 4, (2, 4), (2, 4))
    expected = np.array([[0, 0, 0, 0], [0, 1, 1, 1], [0, 1, 0, 0], [0, 1, 0, 0]], bool)
    assert np.array_equal(D.seg2bmap(corner), expected)


def test_disk_equals_hand_built_disk_and_differs_from_opencv_ellipse():
    for r in range(0, 13):
        assert np.array_equal(D.disk(r), hand_disk(r))
    assert D.disk(8).shape == (17, 17) and int(D.disk(8).sum()) == 197
    # Why the kernel is built by hand: OpenCV's MORPH_ELLIPSE is another shape for r = 8.
    assert not np.array_equal(cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (17, 17)), D.disk(8))


def test_cv2_dilation_with_disk_equals_scipy_binary_dilation():
    rng = np.random.default_rng(2)
    img = rng.random((60, 70)) < 0.01
    for r in (1, 3, 8):
        ours = cv2.dilate(img.astype(np.uint8), D.disk(r)).astype(bool)
        assert np.array_equal(ours, ndimage.binary_dilation(img, hand_disk(r).astype(bool)))


def _random_masks(rng, h, w):
    kind = rng.integers(3)
    if kind == 0:
        return rng.random((h, w)) < 0.3
    m = np.zeros((h, w), bool)
    y0, x0 = rng.integers(-3, h), rng.integers(-3, w)  # some boxes touch the image border
    m[max(y0, 0): y0 + rng.integers(1, h + 1), max(x0, 0): x0 + rng.integers(1, w + 1)] = True
    return m


def test_fast_f_and_j_equal_literal_official_definition_on_random_masks():
    rng = np.random.default_rng(3)
    for trial in range(250):
        h, w = (int(v) for v in rng.integers(3, 50, size=2))
        a, b = _random_masks(rng, h, w), _random_masks(rng, h, w)
        void = rng.random((h, w)) < 0.1 if trial % 3 == 0 else None
        th = [0.008, 0.05, 0.1, 2, 4][trial % 5]
        assert D.f_measure(a, b, void, th) == reference_f(a, b, void, th)
        assert D.db_eval_iou(b, a, void) == reference_j(a, b, void)


def test_frame_scores_all_pairs_equal_pairwise_metrics():
    rng = np.random.default_rng(4)
    gt = rng.integers(0, 4, size=(30, 40)).astype(np.uint8)
    gt = ndimage.median_filter(gt, 5)
    pred = np.roll(gt, 2, axis=1)
    pred[pred == 3] = 5
    void = np.zeros(gt.shape, bool)
    void[:5] = True
    j, f = D.frame_scores(gt, pred, [1, 2, 3], [1, 2, 5, 7], void)
    assert j.shape == f.shape == (4, 3)
    for p, pid in enumerate([1, 2, 5, 7]):
        for g, gid in enumerate([1, 2, 3]):
            assert j[p, g] == reference_j(pred == pid, gt == gid, void)
            assert f[p, g] == reference_f(pred == pid, gt == gid, void)


# ---------------------------------------------------------------------------------------------------
# Statistics and decay
# ---------------------------------------------------------------------------------------------------
def test_decay_bins_for_100_frames():
    assert D.decay_bin_indices(100).tolist() == [0, 25, 50, 74, 99]
    x = np.r_[np.ones(50), np.zeros(50)]
    mean, recall, decay = D.db_statistics(x)
    assert (mean, recall, decay) == (0.5, 0.5, 1.0)  # bin 0 = x[0:26] (ones), bin 3 = x[74:100] (zeros)


def test_recall_threshold_is_strict():
    assert D.db_statistics(np.full(10, 0.5))[1] == 0.0
    assert D.db_statistics(np.full(10, 0.5000001))[1] == 1.0


def test_long_sequence_decay_fixed_by_default_and_uint8_overflow_in_compat_mode():
    x = np.linspace(1.0, 0.0, 300)
    assert D.decay_bin_indices(300).tolist() == [0, 75, 150, 224, 299]
    assert D.decay_bin_indices(300, compat_uint8=True).tolist() == [0, 75, 150, 224, 43]
    fixed = D.db_statistics(x)[2]
    assert fixed == pytest.approx(np.mean(x[0:76]) - np.mean(x[224:300]), abs=1e-15)
    assert math.isnan(D.db_statistics(x, compat_uint8_decay=True)[2])  # empty last bin -> NaN
    # 400 frames: the wrapped bins are not empty but wrong ([43:144] as the last bin).
    y = np.linspace(1.0, 0.0, 400)
    wrong = D.db_statistics(y, compat_uint8_decay=True)[2]
    assert wrong == pytest.approx(np.mean(y[0:101]) - np.mean(y[43:144]), abs=1e-15)
    right = D.db_statistics(y)[2]
    assert right == pytest.approx(np.mean(y[0:101]) - np.mean(y[299:400]), abs=1e-15)
    assert abs(right - wrong) > 0.3
    # both modes agree up to 256 frames
    z = np.linspace(1.0, 0.2, 256)
    assert D.db_statistics(z) == D.db_statistics(z, compat_uint8_decay=True)
    assert D.db_statistics(z)[2] == pytest.approx(reference_stats(z)[2], abs=1e-15)


# ---------------------------------------------------------------------------------------------------
# Sequences
# ---------------------------------------------------------------------------------------------------
def _moving_objects(t=6, h=40, w=50, k=3, seed=0):
    rng = np.random.default_rng(seed)
    seq = np.zeros((t, h, w), np.uint8)
    for obj in range(1, k + 1):
        y, x = rng.integers(0, h - 12), rng.integers(0, w - 12)
        for i in range(t):
            seq[i, y: y + 10, min(x + i, w - 10): min(x + i, w - 10) + 10] = obj
    return seq


def test_unsupervised_permuted_ids_score_one_one_zero():
    gt = _moving_objects()
    perm = {1: 2, 2: 3, 3: 1}
    pred = np.zeros_like(gt)
    for a, b in perm.items():
        pred[gt == a] = b
    res = D.evaluate_unsupervised(gt, pred)
    assert res.object_ids == [1, 2, 3]
    assert res.proposals == [2, 3, 1]
    for stats in res.statistics():
        assert (stats["J-Mean"], stats["J-Recall"], stats["J-Decay"]) == (1, 1, 0)
        assert (stats["F-Mean"], stats["F-Recall"], stats["F-Decay"]) == (1, 1, 0)
    # the semi-supervised task takes ids literally: the same prediction is wrong there
    assert D.evaluate_semisupervised(gt, pred).J.max() == 0


def test_unsupervised_assignment_maximises_mean_j_plus_f_like_brute_force():
    rng = np.random.default_rng(5)
    t, h, w = 4, 30, 30
    gt = np.stack([ndimage.median_filter(rng.integers(0, 4, (h, w)), 7) for _ in range(t)]).astype(np.uint8)
    gt[0][gt[0] == 0] = 0
    gt[0, 0, :3] = [1, 2, 3]  # frame 0 fixes K = 3
    pred = np.stack([ndimage.median_filter(rng.integers(0, 5, (h, w)), 7) for _ in range(t)]).astype(np.uint8)
    res = D.evaluate_unsupervised(gt, pred)
    n = max(int(pred.max()), 3)
    jm = np.zeros((n, 3, t))
    fm = np.zeros((n, 3, t))
    for i in range(t):
        jm[:, :, i], fm[:, :, i] = D.frame_scores(gt[i], pred[i], [1, 2, 3], list(range(1, n + 1)))
    score = (jm.mean(2) + fm.mean(2)) / 2
    best = max(itertools.permutations(range(n), 3), key=lambda p: sum(score[p[g], g] for g in range(3)))
    got = sum(score[res.proposals[g] - 1, g] for g in range(3))
    assert got == pytest.approx(sum(score[best[g], g] for g in range(3)), abs=1e-12)
    for g in range(3):
        assert np.array_equal(res.J[g], jm[res.proposals[g] - 1, g])


def test_unsupervised_limits_and_zero_padding():
    gt = _moving_objects(k=3)
    too_many = gt.copy()
    too_many[0, 0, 0] = 21
    with pytest.raises(InputError, match="21"):
        D.evaluate_unsupervised(gt, too_many)
    only_one = np.where(gt == 1, 1, 0).astype(np.uint8)
    res = D.evaluate_unsupervised(gt, only_one)
    assert sorted(res.proposals) == [0, 0, 1]
    for g, p in enumerate(res.proposals):
        if p == 0:
            assert res.J[g].max() == 0 and res.F[g].max() == 0  # empty proposal vs a present object


def test_semisupervised_frames_objects_and_errors():
    gt = _moving_objects(t=7, k=2)
    late = gt.copy()
    late[3:, 30:35, 0:5] = 3  # appears after frame 0: not an object of the semi-supervised task (K from frame 0)
    pred = gt.copy()
    pred[0] = 0  # first and last frames are never read
    pred[-1] = 9
    res = D.evaluate_semisupervised(late, pred)
    assert res.object_ids == [1, 2] and res.J.shape == (2, 5) and res.frames == ["1", "2", "3", "4", "5"]
    assert res.J.min() == 1 and res.F.min() == 1
    missing = np.where(gt == 2, 0, gt).astype(np.uint8)  # object 2 never predicted: zero-padded
    res = D.evaluate_semisupervised(gt, missing)
    assert res.J[0].min() == 1 and res.J[1].max() == 0 and res.F[1].max() == 0
    bad = gt.copy()
    bad[2, 0, 0] = 3
    with pytest.raises(InputError, match="object id 3"):
        D.evaluate_semisupervised(gt, bad)


# ---------------------------------------------------------------------------------------------------
# Scoring folders
# ---------------------------------------------------------------------------------------------------
def _save(path: Path, arr: np.ndarray, palette: bool = True):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr.astype(np.uint8))
    if palette:
        img = img.convert("P")
        img.putpalette([v for i in range(256) for v in (i * 7 % 256, i * 13 % 256, i * 29 % 256)])
    img.save(path)


def _write_seq(root: Path, name: str, stack: np.ndarray, palette=True):
    for t, m in enumerate(stack):
        _save(root / name / f"{t:05d}.png", m, palette)


def test_score_folder_known_answers_and_written_tables(tmp_path):
    gt = _moving_objects(t=6, k=2, seed=1)
    pred = gt.copy()
    pred[pred == 2] = 0  # object 2 missed everywhere
    _write_seq(tmp_path / "gt", "a", gt)
    _write_seq(tmp_path / "pred", "a", pred)
    _write_seq(tmp_path / "gt", "b", gt[:, :, ::-1])
    _write_seq(tmp_path / "pred", "b", gt[:, :, ::-1], palette=False)  # L images are fine too
    res = score_folder(tmp_path / "pred", tmp_path / "gt")
    assert [o.name for o in res.objects] == ["a_1", "a_2", "b_1", "b_2"]
    g = res.global_metrics()
    assert g["J-Mean"] == 0.75 and g["F-Mean"] == 0.75 and g["J&F-Mean"] == 0.75
    assert g["J-Recall"] == 0.75 and g["J-Decay"] == 0
    files = write_all(res, tmp_path / "out")
    assert (tmp_path / "out" / "global_results.csv").read_text() == (
        ",".join(GLOBAL_COLUMNS) + "\n0.750,0.750,0.750,0.000,0.750,0.750,0.000\n")
    lines = (tmp_path / "out" / "per-sequence_results.csv").read_text().splitlines()
    assert lines[0] == ",".join(PER_OBJECT_COLUMNS)
    assert lines[1:3] == ["a_1,1.000,1.000,1.000,1.000,0.000,1.000,0.000",
                          "a_2,0.000,0.000,0.000,0.000,0.000,0.000,0.000"]
    data = json.loads(Path(files["json"]).read_text())
    assert data["global"]["J&F-Mean"] == 0.75 and data["objects"][1]["J"] == [0.0] * 4
    assert "| a_2 | 0.000 |" in Path(files["markdown"]).read_text()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["global_results.csv", "per-sequence_results.csv", "results.md", "results.json"])  # no temp files left


def test_score_folder_input_errors_name_the_file(tmp_path):
    gt = _moving_objects(t=5, k=1)
    _write_seq(tmp_path / "gt", "a", gt)
    _write_seq(tmp_path / "pred", "a", gt)
    (tmp_path / "pred" / "a" / "00002.png").unlink()
    with pytest.raises(InputError, match=r"00002\.png"):
        score_folder(tmp_path / "pred", tmp_path / "gt")
    _save(tmp_path / "pred" / "a" / "00002.png", np.where(gt[2] > 0, 2, 0))
    with pytest.raises(InputError, match=r"00002\.png.*object id 2"):
        score_folder(tmp_path / "pred", tmp_path / "gt")
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "pred" / "a" / "00002.png")
    with pytest.raises(InputError, match=r"00002\.png is a RGB colour image"):
        score_folder(tmp_path / "pred", tmp_path / "gt")
    _save(tmp_path / "pred" / "a" / "00002.png", np.zeros((20, 50)))
    with pytest.raises(InputError, match=r"00002\.png is 50x20"):
        score_folder(tmp_path / "pred", tmp_path / "gt")
    _write_seq(tmp_path / "gt", "zz", gt)
    with pytest.raises(InputError, match="zz"):
        score_folder(tmp_path / "pred", tmp_path / "gt")
    with pytest.raises(InputError, match="task"):
        score_folder(tmp_path / "pred", tmp_path / "gt", task="interactive")


def test_compat_uint8_decay_through_scoring(tmp_path):
    t = 302  # 300 scored frames
    gt = np.zeros((t, 16, 16), np.uint8)
    gt[:, 4:12, 4:12] = 1
    pred = gt.copy()
    pred[150:, 4:12, 4:8] = 0  # worse in the second half
    _write_seq(tmp_path / "gt", "long", gt)
    _write_seq(tmp_path / "pred", "long", pred)
    fixed = score_folder(tmp_path / "pred", tmp_path / "gt")
    compat = score_folder(tmp_path / "pred", tmp_path / "gt", compat_uint8_decay=True)
    assert fixed.global_metrics()["J-Decay"] == pytest.approx(1 - 0.5, abs=1e-12)
    assert math.isnan(compat.global_metrics()["J-Decay"])
    assert fixed.global_metrics()["J-Mean"] == compat.global_metrics()["J-Mean"]


def test_parallel_scoring_equals_serial(tmp_path):
    for s in range(3):
        gt = _moving_objects(t=6, k=2, seed=10 + s)
        _write_seq(tmp_path / "gt", f"s{s}", gt)
        _write_seq(tmp_path / "pred", f"s{s}", np.roll(gt, s + 1, axis=2))
    one = score_folder(tmp_path / "pred", tmp_path / "gt", workers=1)
    two = score_folder(tmp_path / "pred", tmp_path / "gt", workers=2)
    assert one.to_dict() == two.to_dict()
    assert 0 < one.global_metrics()["J-Mean"] < 1


@needs_davis16
def test_ground_truth_scored_against_itself_is_one_on_real_davis2016():
    res = score_folder(DAVIS16_GT, DAVIS16, task="semi", workers=2)  # DAVIS root resolves to Annotations/480p
    assert len(res.sequences) == 10 and len(res.objects) == 10
    assert sum(len(o.frames) for o in res.objects) == 684 - 2 * 10
    g = res.global_metrics()
    assert [g[c] for c in GLOBAL_COLUMNS] == [1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    out = main_score(DAVIS16_GT, DAVIS16_GT, task="unsupervised", sequences=["blackswan"])
    assert out["global"]["J&F-Mean"] == 1.0 and out["num_objects"] == 1


@needs_davis16
def test_shifted_predictions_on_real_clips_equal_literal_official_computation(tmp_path):
    from vlprop.eval.datasets import read_davis2016

    seqs = read_davis2016(DAVIS16, ["libby", "blackswan"])
    expected = {}
    for seq in seqs:
        js, fs = [], []
        for t in range(len(seq)):
            gt = seq.read_mask(t)
            # an imperfect prediction: eroded and shifted by 12 px (> the 8 px tolerance), saved as 0/255
            pred = np.roll(ndimage.binary_erosion(gt > 0, iterations=3), 12, axis=1)
            _save(tmp_path / seq.name / f"{t:05d}.png", pred * 255, palette=False)
            if 0 < t < len(seq) - 1:
                js.append(reference_j(pred, gt > 0))
                fs.append(reference_f(pred, gt > 0, dilation="cv2"))
        expected[seq.name] = (reference_stats(js), reference_stats(fs))
    res = score_sequences(tmp_path, seqs)
    for obj, row in zip(res.objects, res.per_object()):
        (jm, jr, jd), (fm, fr, fd) = expected[obj.sequence]
        assert row["J-Mean"] == pytest.approx(jm, abs=1e-12) and row["F-Mean"] == pytest.approx(fm, abs=1e-12)
        assert row["J-Recall"] == jr and row["F-Recall"] == fr
        assert row["J-Decay"] == pytest.approx(jd, abs=1e-12) and row["F-Decay"] == pytest.approx(fd, abs=1e-12)
        assert 0.3 < row["J-Mean"] < 0.95 and 0.1 < row["F-Mean"] < 0.95
