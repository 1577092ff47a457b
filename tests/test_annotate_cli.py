"""``vlprop propagate --direction/--review-below`` (confidence.csv, protocol.json) and the confidence score."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlprop.cli import main
from vlprop.demo import iou, synthetic_video
from vlprop.io.masks import read_mask, write_mask
from vlprop.io.report import read_confidence_csv
from vlprop.labels.confidence import ConfidenceTracker, frames_to_review, sharpness, stability


def test_sharpness_is_one_for_certain_maps_and_drops_with_spread_mass():
    certain = torch.zeros(2, 4, 4)
    certain[1, 1:3, 1:3] = 1
    certain[0] = 1 - certain[1]
    assert sharpness(certain, 1) == 1.0
    blurred = certain.clone()
    blurred[1] = 0.5 * certain[1] + 0.25  # inside 0.75, outside 0.25 (still the argmax inside only)
    blurred[0] = 1 - blurred[1]
    # inside: 4 cells of 0.75 -> min sum 3; max sum 4 + 12 * 0.25 = 7
    assert sharpness(blurred, 1) == pytest.approx(3 / 7)
    assert sharpness(torch.stack([torch.ones(4, 4), torch.zeros(4, 4)]), 1) == 0.0
    assert stability(50, 100) == 0.5 and stability(0, 0) == 1.0 and stability(10, None) == 1.0


def test_confidence_rows_rank_a_lost_object_first():
    tr = ConfidenceTracker()
    probs = torch.zeros(2, 4, 4)
    probs[1, :2] = 1
    probs[0] = 1 - probs[1]
    m = np.zeros((8, 8), np.uint8)
    m[:4] = 1
    rows = tr.update(0, "a", m, None, [1], annotated=True)
    rows += tr.update(1, "b", m, probs, [1])
    shrunk = np.zeros_like(m)
    shrunk[0, :4] = 1  # area 32 -> 4
    rows += tr.update(2, "c", shrunk, probs * 0.6, [1])  # sharpness 0.6, stability 4/32
    assert [r.confidence for r in rows[:2]] == [1.0, 1.0]
    assert rows[2].confidence == pytest.approx(0.6 * 4 / 32)
    review = frames_to_review(rows, 0.5)
    assert [t for t, _, _ in review] == [2]


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    vid = synthetic_video(num_frames=5, height=64, width=96, seed=4, num_objects=1, speed=2.0)
    for t, img in enumerate(vid.frames):
        Image.fromarray(img).save(root / f"{t:05d}.png")
    write_mask(root.parent / "last.png", vid.masks[4])
    return root, vid


def test_propagate_backward_writes_masks_confidence_and_protocol(frames_dir, tmp_path, capsys):
    root, vid = frames_dir
    out = tmp_path / "run"
    rc = main(["propagate", str(root), "--mask", str(root.parent / "last.png"), "--mask-frame", "4",
               "--direction", "backward", "--out", str(out), "--preset", "crw", "--weights", "random", "--quiet",
               "--review-below", "1"])
    assert rc == 0
    masks = [read_mask(out / f"{t:05d}.png") for t in range(5)]
    assert np.array_equal(masks[4], vid.masks[4])
    assert iou(masks[3] == 1, vid.masks[3] == 1) > 0.6  # propagated backwards one frame
    rows = read_confidence_csv(out / "confidence.csv")
    assert [r["frame_index"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[4]["annotated"] and rows[4]["confidence"] == 1.0
    assert all(0 <= r["confidence"] <= 1 for r in rows)
    proto = json.loads((out / "protocol.json").read_text())
    assert proto["direction"] == "backward" and proto["preset"]["name"] == "crw"
    assert proto["weights"]["kind"] == "random" and proto["frames"] == 5
    printed = capsys.readouterr().out
    assert "frames to review (an object's confidence < 1): 4 of 5" in printed
    lowest = min(rows[:4], key=lambda r: r["confidence"])
    assert printed.split("):")[0].count("frame") >= 1 and f"frame {lowest['frame_index']} (" in printed


def test_propagate_rejects_an_unknown_direction(frames_dir, tmp_path, capsys):
    root, _ = frames_dir
    with pytest.raises(SystemExit):
        main(["propagate", str(root), "--mask", str(root.parent / "last.png"), "--direction", "up",
              "--out", str(tmp_path / "x")])
    assert "invalid choice" in capsys.readouterr().err


def test_propagate_both_ways_from_two_labelled_frames(frames_dir, tmp_path):
    root, vid = frames_dir
    ann = tmp_path / "ann"
    write_mask(ann / "00000.png", vid.masks[0])
    write_mask(ann / "00004.png", vid.masks[4])
    out = tmp_path / "run"
    assert main(["propagate", str(root), "--annotations", str(ann), "--direction", "both", "--out", str(out),
                 "--preset", "crw", "--weights", "random", "--quiet"]) == 0
    for t in (0, 4):
        assert np.array_equal(read_mask(out / f"{t:05d}.png"), vid.masks[t])
    from vlprop import AnnotationSession, Propagator

    sess = AnnotationSession(root, Propagator(preset="crw", weights="random", seed=0))
    sess.add_mask(0, vid.masks[0])
    sess.add_mask(4, vid.masks[4])
    for r in sess.propagate("both"):  # the CLI writes exactly the session's merged result
        assert np.array_equal(read_mask(out / f"{r.index:05d}.png"), r.mask)
    rows = read_confidence_csv(out / "confidence.csv")
    assert [r["annotated"] for r in rows] == [True, False, False, False, True]
    assert json.loads((out / "protocol.json").read_text())["direction"] == "both"
