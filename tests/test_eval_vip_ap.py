"""VIP instance-level AP^r / AP^r_vol on tiny synthetic masks with hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from vlprop.errors import InputError
from vlprop.eval.vip import (
    AP_THRESHOLDS,
    InstanceFrame,
    frame_true_positives,
    instance_ap,
    mask_ious,
    voc_average_precision,
)


def strip(*spans, n=30):
    """Boolean masks ``[len(spans), 1, n]``: each span ``(a, b)`` covers pixels a..b-1 of a 1 x n image."""
    m = np.zeros((len(spans), 1, n), bool)
    for k, (a, b) in enumerate(spans):
        m[k, 0, a:b] = True
    return m


def frame(gt_spans, gt_classes, pred_spans, pred_classes, scores):
    return InstanceFrame(strip(*gt_spans), np.array(gt_classes), strip(*pred_spans), np.array(pred_classes),
                         np.array(scores, float))


def two_gt_three_preds():
    # GT A = pixels 0..9, GT B = pixels 20..29 (class 2)
    # p1 (score 0.9) = 0..7   -> IoU with A = 8/10 = 0.8
    # p2 (score 0.8) = 10..13 -> IoU 0 with both (false positive at every threshold)
    # p3 (score 0.7) = 20..25 -> IoU with B = 6/10 = 0.6
    return frame([(0, 10), (20, 30)], [2, 2], [(0, 8), (10, 14), (20, 26)], [2, 2, 2], [0.9, 0.8, 0.7])


def test_mask_ious_are_pixel_counts():
    f = two_gt_three_preds()
    assert np.allclose(mask_ious(f.pred_masks, f.gt_masks), [[0.8, 0], [0, 0], [0, 0.6]])
    assert mask_ious(np.zeros((1, 1, 3), bool), np.zeros((1, 1, 3), bool))[0, 0] == 0  # empty union


def test_ap_two_gt_three_predictions_by_hand():
    # t = 0.5: order p1 TP, p2 FP, p3 TP -> recall 1/2, 1/2, 1; precision 1, 1/2, 2/3
    #   envelope: 1 up to recall 1/2, 2/3 up to recall 1 -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    # t = 0.6 and 0.7: p3 (IoU 0.6) is no longer > t -> only p1: AP = 1/2 * 1 = 1/2
    # t = 0.8 and 0.9: p1 (IoU 0.8) is not > 0.8 (strict) -> AP = 0
    # AP^r_vol = (5 * 5/6 + 2 * 1/2 + 2 * 0) / 9 = 31/54
    res = instance_ap([two_gt_three_preds()], classes=[2])
    assert res["thresholds"] == list(AP_THRESHOLDS)
    assert np.allclose(res["ap_r"], [5 / 6] * 5 + [1 / 2] * 2 + [0, 0])
    assert math.isclose(res["ap_r_vol"], 31 / 54)
    assert res["gt_instances"] == 2 and res["pred_instances"] == 3 and res["classes_without_gt"] == []
    # the SDS one-to-one matching gives the same here (no two predictions hit one ground truth)
    assert np.allclose(instance_ap([two_gt_three_preds()], classes=[2], matching="sds")["ap_r"], res["ap_r"])


def test_score_order_decides_the_precision_curve():
    # same masks, the false positive now ranked first: order p2 FP, p1 TP, p3 TP at t = 0.5
    # recall 0, 1/2, 1; precision 0, 1/2, 2/3 -> envelope 2/3 over the whole recall range -> AP = 2/3
    f = two_gt_three_preds()
    f.pred_scores = np.array([0.8, 0.9, 0.7])
    res = instance_ap([f], classes=[2], thresholds=[0.5])
    assert math.isclose(res["ap_r"][0], 2 / 3)


def test_predictions_and_ground_truth_accumulate_over_frames_per_class():
    # frame 1: class 2, one GT, one perfect prediction (score 0.5)
    # frame 2: class 2, one GT, one prediction with IoU 0 (score 0.9); class 5: one GT, perfect (score 0.1)
    # class 2 at any t: order FP (0.9), TP (0.5) -> recall 0, 1/2; precision 0, 1/2 -> AP = 1/2 * 1/2 = 1/4
    # class 5: AP = 1 -> AP^r = (1/4 + 1) / 2 = 5/8 at every threshold, AP^r_vol = 5/8
    f1 = frame([(0, 10)], [2], [(0, 10)], [2], [0.5])
    f2 = frame([(0, 10), (10, 20)], [2, 5], [(20, 30), (10, 20)], [2, 5], [0.9, 0.1])
    res = instance_ap([f1, f2], classes=[2, 5])
    assert np.allclose(res["ap_r"], 5 / 8) and math.isclose(res["ap_r_vol"], 5 / 8)
    assert np.allclose(res["ap_r_per_class"]["2"], 1 / 4) and np.allclose(res["ap_r_per_class"]["5"], 1)


def test_perfect_prediction_gives_one_and_empty_prediction_gives_zero():
    gt = [(0, 5), (5, 12), (20, 30)]
    perfect = frame(gt, [1, 3, 3], gt, [1, 3, 3], [0.3, 0.2, 0.9])
    assert instance_ap([perfect])["ap_r_vol"] == 1.0
    empty = InstanceFrame(strip(*gt), np.array([1, 3, 3]), np.zeros((0, 1, 30), bool), np.zeros(0, int),
                          np.zeros(0))
    res = instance_ap([empty])
    assert res["ap_r_vol"] == 0.0 and res["ap_r"] == [0.0] * 9 and res["pred_instances"] == 0
    # a prediction of the right region with the wrong class is no hit either
    wrong = frame([(0, 10)], [1], [(0, 10)], [2], [1.0])
    assert instance_ap([wrong], classes=[1, 2])["ap_r_vol"] == 0.0


def test_classes_without_ground_truth_have_no_ap_and_stay_out_of_the_mean():
    # class 2 perfect; class 7 only predicted (no GT anywhere): the reference would divide by zero (NaN);
    # we report it as None and average over the classes with ground truth -> AP^r_vol = 1
    f = frame([(0, 10)], [2], [(0, 10), (10, 20)], [2, 7], [0.9, 0.8])
    res = instance_ap([f], classes=[2, 7, 9])
    assert res["ap_r_vol"] == 1.0
    assert res["ap_r_per_class"]["7"] is None and res["ap_r_per_class"]["9"] is None
    assert res["classes_without_gt"] == [7, 9]
    assert math.isnan(instance_ap([], classes=[2])["ap_r_vol"])
    assert math.isnan(voc_average_precision([0.5], [True], 0))


def test_duplicates_count_as_hits_in_the_vip_reference_but_not_in_sds():
    # one GT = pixels 0..9; d1 = 0..4 (score 0.9), d2 = 5..9 (score 0.8): both IoU 5/10 = 0.5
    # t = 0.4, vip (ATEN test_inst_part_ap.py): both TP -> recall 1, 2 (exceeds 1, as in the reference),
    #   precision 1, 1 -> AP = 1 * 1 + 1 * 1 = 2
    # t = 0.4, sds (one-to-one): d1 TP, d2 FP -> recall 1, 1; precision 1, 1/2 -> AP = 1
    # t = 0.5: neither is > 0.5 -> AP = 0 for both
    f = frame([(0, 10)], [4], [(0, 5), (5, 10)], [4, 4], [0.9, 0.8])
    vip = instance_ap([f], classes=[4], thresholds=[0.4, 0.5])
    sds = instance_ap([f], classes=[4], thresholds=[0.4, 0.5], matching="sds")
    assert np.allclose(vip["ap_r"], [2.0, 0.0]) and np.allclose(sds["ap_r"], [1.0, 0.0])
    assert vip["matching"] == "vip" and sds["matching"] == "sds"


def test_sds_takes_predictions_by_score_and_moves_on_to_uncovered_ground_truth():
    # GT A = 0..9, GT B = 10..19; p1 (0.9) = 0..9 (A: 1.0); p2 (0.5) = 1..13, 13 px:
    #   A: 9 / (10 + 13 - 9) = 9/14, B: 4 / (10 + 13 - 4) = 4/19
    # t = 0.2: p1 covers A; p2's best uncovered GT is B with IoU 4/19 = 0.21 > 0.2 -> TP (vip: TP via A)
    # t = 0.5: p2 -> B is 4/19, not > 0.5 -> FP (vip: TP, its best IoU 9/14 = 0.64 > 0.5)
    ious = mask_ious(strip((0, 10), (1, 14)), strip((0, 10), (10, 20)))
    assert np.allclose(ious, [[1, 0], [9 / 14, 4 / 19]])
    s = np.array([0.9, 0.5])
    assert frame_true_positives(ious, s, [0.2, 0.5], "sds").tolist() == [[True, True], [True, False]]
    assert frame_true_positives(ious, s, [0.2, 0.5], "vip").tolist() == [[True, True], [True, True]]
    # the order is the score's, not the input's: p2 first covers A at t = 0.5, p1 then has no GT left
    assert frame_true_positives(ious, np.array([0.1, 0.5]), [0.5], "sds").tolist() == [[False], [True]]
    with pytest.raises(InputError, match="matching"):
        frame_true_positives(ious, s, [0.5], "coco")


def test_voc_ap_is_all_points_not_eleven_point():
    # one GT, detections TP (0.9), FP (0.8): recall 1, 1; precision 1, 1/2 -> all-points AP = 1
    assert voc_average_precision([0.9, 0.8], [True, False], 1) == 1.0
    # two GT, one TP: all-points AP = 1/2 (11-point VOC07 would give 6/11)
    assert voc_average_precision([0.9], [True], 2) == 0.5
    assert voc_average_precision([], [], 3) == 0.0


# ------------------------------------------------------------------ VIP folders with instance-part annotations
def add_instances(root, videos=("v1",), T=26, size=(32, 40), txt=True):
    """Two persons on the make_vip folder: person 1 = make_vip's hair / upper clothes / face, person 2 = hair at
    rows 4..13, cols 32..39. Category_ids are rewritten; Instance_ids get id = class + 20 * (person - 1) (the
    CIHP / VIP numbering) and a .txt with '<id> <class> <person>' lines."""
    from PIL import Image

    H, W = size
    cats = np.zeros((H, W), np.uint8)
    inst = np.zeros((H, W), np.uint8)
    regions = [(1, 2, np.s_[4:14, 5:20]), (1, 4, np.s_[14:28, 5:20]), (1, 13, np.s_[14:28, 22:30]),
               (2, 2, np.s_[4:14, 32:40])]
    lines = []
    for person, cls, sl in regions:
        cats[sl] = cls
        inst[sl] = cls + 20 * (person - 1)
        lines.append(f"{cls + 20 * (person - 1)} {cls} {person}\n")
    for v in videos:
        (root / "Instance_ids" / v).mkdir(parents=True, exist_ok=True)
        for t in range(0, T, 25):
            Image.fromarray(cats).save(root / "Category_ids" / v / f"{t:06d}.png")
            Image.fromarray(inst).save(root / "Instance_ids" / v / f"{t:06d}.png")
            if txt:
                (root / "Instance_ids" / v / f"{t:06d}.txt").write_text("".join(lines))
    return cats, inst


def vip_with_instances(tmp_path, txt=True):
    from test_eval_vip import make_vip

    make_vip(tmp_path / "VIP_Fine", videos=("v1",), T=26)
    return add_instances(tmp_path / "VIP_Fine", txt=txt)


def test_instance_ground_truth_from_the_txt_or_from_category_pairs(tmp_path):
    from vlprop.eval.vip import has_instance_gt, read_instance_gt, read_vip

    _, inst = vip_with_instances(tmp_path)
    (v,) = read_vip(tmp_path / "VIP_Fine", "val")
    assert has_instance_gt([v])
    ids, class_of = read_instance_gt(v, "000025")
    assert class_of == {2: 2, 4: 4, 13: 13, 22: 2} and (ids == inst).all()
    for p in (tmp_path / "VIP_Fine" / "Instance_ids" / "v1").glob("*.txt"):
        p.unlink()
    ids2, class_of2 = read_instance_gt(v, "000025")  # no .txt: (instance id, category) pairs, renumbered
    assert sorted(class_of2.values()) == [2, 2, 4, 13]
    assert {(int((ids2 == k).sum()), c) for k, c in class_of2.items()} == \
        {(int((inst == k).sum()), c) for k, c in class_of.items()}


def test_eval_parts_cli_scores_instance_predictions_with_ap(tmp_path, capsys):
    import json

    from vlprop.cli import main
    from vlprop.eval.vip import read_instance_prediction, write_instance_prediction

    cats, inst = vip_with_instances(tmp_path)
    sem = tmp_path / "pred" / "v1"
    sem.mkdir(parents=True)
    from PIL import Image
    Image.fromarray(cats).save(sem / "000025.png")
    ins = tmp_path / "inst" / "v1"
    ins.mkdir(parents=True)
    # person 2's hair is missed: class 2 has 2 GT and 1 hit (recall 1/2, precision 1 -> AP 1/2); hat 4 and face
    # 13 are perfect (AP 1) -> AP^r = (1/2 + 1 + 1) / 3 = 5/6 at every threshold, AP^r_vol = 5/6
    missed = np.where(inst == 22, 0, inst)
    write_instance_prediction(ins / "000025.png", missed, {2: 2, 4: 4, 13: 13}, {2: 0.9, 4: 0.8, 13: 0.7})
    ids, classes, _ = read_instance_prediction(ins / "000025.png")
    assert sorted(np.unique(ids).tolist()) == [0, 1, 2, 3] and classes == {1: 2, 2: 4, 3: 13}
    assert (ins / "000025.txt").read_text() == "2 0.900000\n4 0.800000\n13 0.700000\n"  # ATEN's format
    args = ["eval", "parts", "--root", str(tmp_path / "VIP_Fine"), "--out", str(tmp_path / "out"),
            "--score-only", str(tmp_path / "pred")]
    assert main(args + ["--instance-pred", str(tmp_path / "inst")]) == 0
    res = json.loads((tmp_path / "out" / "parts.json").read_text())
    assert res["miou"] == 1.0
    ap = res["instance_ap"]
    assert np.allclose(ap["ap_r"], 5 / 6) and math.isclose(ap["ap_r_vol"], 5 / 6)
    assert ap["ap_r_per_class"]["2"] == [0.5] * 9 and ap["ap_r_per_class"]["1"] is None
    assert ap["gt_instances"] == 4 and ap["pred_instances"] == 3 and ap["frames"] == 1
    assert "AP^r_vol (vip) | 0.8333" in (tmp_path / "out" / "parts.md").read_text()
    assert "AP^r_vol" in capsys.readouterr().out
    # without --instance-pred a score-only run reports no AP; --ap on then refuses
    assert main(args + ["--out", str(tmp_path / "out2")]) == 0
    assert "instance_ap" not in json.loads((tmp_path / "out2" / "parts.json").read_text())
    capsys.readouterr()
    assert main(args + ["--ap", "on"]) == 2
    assert "needs --instance-pred" in capsys.readouterr().err
    assert main(args + ["--instance-pred", str(tmp_path / "nothing")]) == 2
    assert "missing instance prediction" in capsys.readouterr().err


def test_eval_parts_cli_propagates_instances_and_reports_ap(tmp_path):
    import json

    from vlprop.cli import main
    from vlprop.eval.vip import read_instance_prediction

    _, inst = vip_with_instances(tmp_path)
    out = tmp_path / "out"
    assert main(["eval", "parts", "--root", str(tmp_path / "VIP_Fine"), "--out", str(out), "--preset", "crw",
                 "--backbone", "resnet18", "--weights", "random"]) == 0
    ids, classes, scores = read_instance_prediction(out / "instance_part" / "v1" / "000025.png")
    assert ids.shape == inst.shape and set(classes.values()) <= {2, 4, 13}
    assert all(0 < s <= 1 for s in scores.values())
    ap = json.loads((out / "parts.json").read_text())["instance_ap"]
    assert ap["gt_instances"] == 4 and 1 <= ap["pred_instances"] <= 4
    # a static video: the instances stay where they were up to the 8-px grid
    assert ap["ap_r"][0] > 0.5 and 0 <= ap["ap_r_vol"] <= ap["ap_r"][0]
    # --ap off: no instance propagation
    assert main(["eval", "parts", "--root", str(tmp_path / "VIP_Fine"), "--out", str(tmp_path / "o2"), "--preset",
                 "crw", "--backbone", "resnet18", "--weights", "random", "--ap", "off"]) == 0
    assert not (tmp_path / "o2" / "instance_part").exists()


def test_a_video_without_instances_in_its_first_frame_predicts_none(tmp_path):
    from PIL import Image

    from vlprop.eval.vip import (
        propagate_instance_parts,
        read_instance_prediction,
        read_vip,
        score_instance_parts,
    )

    _, inst = vip_with_instances(tmp_path)
    root = tmp_path / "VIP_Fine"
    Image.fromarray(np.zeros_like(inst)).save(root / "Instance_ids" / "v1" / "000000.png")
    vids = read_vip(root, "val")
    propagate_instance_parts(vids, None, tmp_path / "inst")  # the propagator is not needed
    ids, classes, _ = read_instance_prediction(tmp_path / "inst" / "v1" / "000025.png")
    assert not ids.any() and classes == {}
    res = score_instance_parts(vids, tmp_path / "inst")
    assert res["ap_r_vol"] == 0.0 and res["gt_instances"] == 4 and res["pred_instances"] == 0
