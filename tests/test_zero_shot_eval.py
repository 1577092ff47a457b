"""Zero-shot evaluation (vlprop.eval.zero_shot) and its CLI: single-object scoring with merged objects, the
first-frame IoU record, and the init-mask / segment / eval zero-shot commands on a tiny synthetic dataset."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vlprop.cli import main
from vlprop.eval.datasets import read_folder
from vlprop.eval.zero_shot import score_single_object
from vlprop.io.masks import write_mask
from vlprop.tasks.zero_shot import mask_iou

H, W, T = 48, 64, 5


def _dataset(root, two_objects=True):
    """A red square moving right by 2 px per frame (object 1) and a blue bar (object 2) on grey."""
    for t in range(T):
        img = np.full((H, W, 3), 128, np.uint8)
        ann = np.zeros((H, W), np.uint8)
        img[14:34, 20 + 2 * t:40 + 2 * t] = (200, 40, 40)
        ann[14:34, 20 + 2 * t:40 + 2 * t] = 1
        if two_objects:
            img[38:44, 10:50] = (40, 40, 200)
            ann[38:44, 10:50] = 2
        ann[0, 0] = 255  # a void pixel
        (root / "JPEGImages" / "seq").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / "seq").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "JPEGImages" / "seq" / f"{t:05d}.png")
        write_mask(root / "Annotations" / "seq" / f"{t:05d}.png", ann)
    return read_folder(root)


def test_single_object_scoring_merges_objects_and_skips_first_and_last_frames(tmp_path):
    seqs = _dataset(tmp_path / "data")
    pred = tmp_path / "pred"
    for t in range(T):
        gt = np.array(Image.open(tmp_path / "data" / "Annotations" / "seq" / f"{t:05d}.png"))
        merged = ((gt > 0) & (gt != 255)).astype(np.uint8)  # both objects as one, id 1
        if t == 2:
            merged[:] = 0  # an empty prediction on frame 2: J = 0
        write_mask(pred / "seq" / f"{t:05d}.png", merged)
    res = score_single_object(pred, seqs)
    (obj,) = res.objects
    assert obj.frames == ("00001", "00002", "00003")
    np.testing.assert_allclose(obj.J, [1.0, 0.0, 1.0])
    np.testing.assert_allclose(obj.F, [1.0, 0.0, 1.0])
    assert res.global_metrics()["J-Mean"] == pytest.approx(2 / 3)


def test_eval_zero_shot_cli_writes_predictions_scores_and_the_first_frame_iou(tmp_path, capsys):
    _dataset(tmp_path / "data", two_objects=False)
    out = tmp_path / "out"
    rc = main(["eval", "zero-shot", "--dataset", "folder", "--root", str(tmp_path / "data"), "--out", str(out),
               "--init", "center", "--weights", "random", "--set", "radius=4"])
    assert rc == 0
    proto = json.loads((out / "zero_shot.json").read_text())
    first = np.array(Image.open(out / "seq" / "00000.png")) > 0
    gt = np.zeros((H, W), bool)
    gt[14:34, 20:40] = True
    iou = proto["first_frame_iou"]["per_sequence"]["seq"]
    assert iou == pytest.approx(mask_iou(first, gt), abs=1e-9)
    assert iou > 0.9  # the centred square: the CRF snaps the centre ellipse onto it
    assert proto["first_frame_iou"]["mean"] == proto["first_frame_iou"]["median"] == iou
    assert sorted(p.name for p in (out / "seq").glob("*.png")) == [f"{t:05d}.png" for t in range(T)]
    assert (out / "global_results.csv").is_file() and (out / "init_iou.csv").read_text().startswith("sequence,")
    assert "first-frame IoU (center)" in capsys.readouterr().out
    # a rerun resumes; other settings are refused
    assert main(["eval", "zero-shot", "--dataset", "folder", "--root", str(tmp_path / "data"), "--out", str(out),
                 "--init", "center", "--weights", "random", "--set", "radius=4"]) == 0
    assert json.loads((out / "zero_shot.json").read_text())["resumed"] == ["seq"]
    assert main(["eval", "zero-shot", "--dataset", "folder", "--root", str(tmp_path / "data"), "--out", str(out),
                 "--init", "center", "--weights", "random"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_init_mask_and_segment_commands(tmp_path, capsys):
    _dataset(tmp_path / "data", two_objects=False)
    frames = tmp_path / "data" / "JPEGImages" / "seq"
    mask_png = tmp_path / "m.png"
    assert main(["init-mask", str(frames / "00000.png"), "--out", str(mask_png), "--init", "center"]) == 0
    m = np.array(Image.open(mask_png))
    assert set(np.unique(m)) == {0, 1}
    assert main(["init-mask", str(frames / "00000.png"), "--out", str(mask_png), "--init", "center"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["init-mask", str(tmp_path / "nope.png"), "--out", str(tmp_path / "x.png")]) == 2
    assert "not found" in capsys.readouterr().err
    out = tmp_path / "seg"
    assert main(["segment", str(frames), "--out", str(out), "--init", "center", "--weights", "random"]) == 0
    assert len(list(out.glob("*.png"))) == T
    np.testing.assert_array_equal(np.array(Image.open(out / "00000.png")), m)
