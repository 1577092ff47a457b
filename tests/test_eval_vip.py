"""VIP semantic parts: parsing metrics on hand-computed confusion matrices, the reader and end-to-end scoring."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from vlprop.errors import InputError
from vlprop.eval.vip import (NUM_CLASSES, confusion_matrix, parsing_scores, propagate_parts, read_vip,
                             resize_nearest, score_parts)

GT = np.array([[0, 0, 1, 255], [1, 2, 2, 2]])
PRED = np.array([[0, 1, 1, 2], [1, 2, 0, 7]])


def test_parsing_metrics_match_hand_computed_values():
    # 7 scored pixels (gt 255 ignored; predicted 7 is outside the classes: wrong)
    # TP 1/2/1, GT 2/2/3, Pred 2/3/1 -> IoU 1/3, 2/3, 1/3; class 3 absent everywhere (NaN, not averaged)
    conf = confusion_matrix(GT, PRED, n=4)
    assert conf.shape == (4, 5) and conf.sum() == 7 and conf[2, 4] == 1
    r = parsing_scores(conf)
    assert math.isclose(r["pixel_acc"], 4 / 7)
    assert math.isclose(r["mean_class_acc"], (1 / 2 + 1 + 1 / 3) / 3)
    assert np.allclose(r["iou"][:3], [1 / 3, 2 / 3, 1 / 3]) and r["iou"][3] is None
    assert math.isclose(r["miou"], 4 / 9)
    assert math.isclose(r["fwiou"], 2 / 7 * 1 / 3 + 2 / 7 * 2 / 3 + 3 / 7 * 1 / 3)


def test_confusion_accumulates_over_frames_and_checks_sizes():
    a = confusion_matrix(GT, PRED, n=4) + confusion_matrix(GT, GT.clip(0, 3), n=4)
    assert a.sum() == 14 and np.trace(a[:, :4]) == 4 + 7
    with pytest.raises(InputError, match="size"):
        confusion_matrix(GT, PRED[:, :3])


def test_prediction_is_nearest_resized_to_the_ground_truth():
    small = np.array([[1, 2], [3, 4]])
    big = resize_nearest(small, (4, 6))
    assert big.shape == (4, 6)
    assert (big[:2, :3] == 1).all() and (big[:2, 3:] == 2).all() and (big[2:, :3] == 3).all() and (big[2:, 3:] == 4).all()


def make_vip(root, videos=("v1", "v2"), T=30, size=(32, 40)):
    rng = np.random.default_rng(0)
    H, W = size
    (root / "lists").mkdir(parents=True)
    (root / "lists" / "val_videos.txt").write_text("\n".join(videos) + "\n")
    tex = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    parts = np.zeros((H, W), np.uint8)
    parts[4:14, 5:20] = 2   # hair
    parts[14:28, 5:20] = 4  # upper clothes
    parts[14:28, 22:30] = 13  # face
    for v in videos:
        (root / "Images" / v).mkdir(parents=True)
        (root / "Category_ids" / v).mkdir(parents=True)
        for t in range(T):
            Image.fromarray(tex).save(root / "Images" / v / f"{t:06d}.jpg", quality=98)
            if t % 25 == 0:
                Image.fromarray(parts).save(root / "Category_ids" / v / f"{t:06d}.png")
    return parts


def test_reader_lists_videos_frames_and_every_25th_frame_annotation(tmp_path):
    make_vip(tmp_path / "VIP_Fine")
    vids = read_vip(tmp_path / "VIP_Fine", "val")
    assert [v.name for v in vids] == ["v1", "v2"]
    assert len(vids[0].frames) == 30 and vids[0].annotated == [0, 25]
    with pytest.raises(InputError, match="split list"):
        read_vip(tmp_path / "VIP_Fine", "test")
    with pytest.raises(InputError, match="VIP folder"):
        read_vip(tmp_path)


def test_parts_propagate_like_objects_and_score_end_to_end(tmp_path):
    from vlprop.session import Propagator

    parts = make_vip(tmp_path / "VIP_Fine", videos=("v1",), T=26)
    vids = read_vip(tmp_path / "VIP_Fine", "val")
    prop = Propagator(preset="crw", backbone="resnet18", weights="random", void=None)
    propagate_parts(vids, prop, tmp_path / "pred")
    pred = np.asarray(Image.open(tmp_path / "pred" / "v1" / "000025.png"))
    assert set(np.unique(pred)) <= {0, 2, 4, 13}  # class ids are carried as object ids
    res = score_parts(vids, tmp_path / "pred")
    assert res["frames"] == 1 and res["pixels"] == parts.size
    # a static video: the parts stay where they were up to the 8-px grid (measured: pixel acc 0.79 on the 4x5 grid)
    assert res["pixel_acc"] > 0.7 and res["miou"] > 0.4
    with pytest.raises(InputError, match="missing prediction"):
        score_parts(vids, tmp_path / "nothing")
    assert NUM_CLASSES == 20


def test_eval_parts_cli_scores_a_prediction_folder(tmp_path, capsys):
    import json

    from vlprop.cli import main

    parts = make_vip(tmp_path / "VIP_Fine", videos=("v1",), T=26)
    pred = tmp_path / "pred" / "v1"
    pred.mkdir(parents=True)
    wrong = parts.copy()
    wrong[:, :20] = 0  # hair and upper clothes lost, face kept
    Image.fromarray(wrong).save(pred / "000025.png")
    assert main(["eval", "parts", "--root", str(tmp_path / "VIP_Fine"), "--out", str(tmp_path / "out"),
                 "--score-only", str(tmp_path / "pred")]) == 0
    res = json.loads((tmp_path / "out" / "parts.json").read_text())
    bg = int((parts == 0).sum())
    face = int((parts == 13).sum())
    assert math.isclose(res["pixel_acc"], (bg + face) / parts.size)
    assert res["iou"][13] == 1.0 and res["iou"][2] == 0.0 and res["iou"][4] == 0.0
    # background: TP = bg, predicted everywhere but the face -> IoU = bg / (size - face)
    assert math.isclose(res["iou"][0], bg / (parts.size - face))
    assert math.isclose(res["miou"], (bg / (parts.size - face) + 0 + 0 + 1) / 4)
    assert "miou" in capsys.readouterr().out
