"""``vlprop eval pose`` (eval/pose.py): dataset layouts, PCK on known answers, the real JHMDB clip."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlprop.errors import InputError
from vlprop.eval.pck import reference_sizes
from vlprop.eval.pose import PoseVideo, evaluate_pose, read_pose_dataset
from vlprop.geometry import GridGeometry
from vlprop.io.keypoints import KeypointSequence, read_keypoints_json, write_keypoints_json
from vlprop.tasks.pose import KeypointPropagator

JHMDB_VIDEO = "catch/Goal_Keeping_Tips_catch_f_cm_np1_fr_med_2"


def _cli(argv: list[str]) -> int:
    """``vlprop eval ...`` through the real command-line parser (errors raised, not turned into exit codes)."""
    from vlprop.cli import build_parser

    args = build_parser().parse_args(["eval", *argv])
    return args.func(args)


class _IdentityExtractor:
    """One-hot features per grid cell, the same on every frame: propagation keeps keypoints where they are."""

    batch_size = 4
    stride = 8

    def geometry(self, h, w):
        return GridGeometry.for_frame(h, w, stride=self.stride)

    def extract_batch(self, frames):
        g = self.geometry(*frames[0].shape[:2])
        n = g.grid_height * g.grid_width
        return torch.eye(n).reshape(n, g.grid_height, g.grid_width)[None].repeat(len(frames), 1, 1, 1)


def _write_frames(folder, n, h=48, w=64, ext="png", start=0):
    folder.mkdir(parents=True, exist_ok=True)
    for t in range(n):
        Image.fromarray(np.full((h, w, 3), 10 * t, np.uint8)).save(folder / f"{start + t:05d}.{ext}")


# ----------------------------------------------------------------- the real clip


def test_jhmdb_sample_clip_runs_end_to_end_and_ground_truth_scores_100(jhmdb_sample, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["pose", "--dataset", "jhmdb", "--root", str(jhmdb_sample), "--out", str(out), "--preset", "crw-jhmdb",
            "--weights", "random", "--short-side", "160", "--max-frames", "8", "--quiet"]
    assert _cli(args) == 0
    assert "| reference | pred |" in capsys.readouterr().out
    doc = json.loads((out / "pck.json").read_text())
    for variant in ("reference", "gt-visibility"):
        pck = doc["results"][variant]["pck"]
        assert set(pck) == {"0.1", "0.2", "0.3", "0.4", "0.5"}
        values = [pck[k] for k in sorted(pck)]
        assert all(v is not None and 0.0 <= v <= 100.0 for v in values), values
        assert values == sorted(values)                        # PCK grows with the threshold
        assert doc["results"][variant]["num_videos"] == 1
    print("JHMDB sample (crw-jhmdb, short side 160, 8 frames): PCK@0.1/0.2",
          doc["results"]["reference"]["pck"]["0.1"], doc["results"]["reference"]["pck"]["0.2"])
    proto = doc["protocol"]
    assert proto["preset"]["name"] == "crw-jhmdb" and proto["preset"]["features"]["short_side"] == 160
    assert proto["backbone"] == "resnet18" and proto["weights"]["kind"] == "random" and proto["track"] is False
    assert proto["dataset"]["videos"] == [JHMDB_VIDEO] and proto["max_frames"] == 8
    assert {"vlprop", "torch", "numpy"} <= set(proto["versions"])
    for name in ("pck.csv", "pck.md", "per_video.csv", "protocol.json"):
        assert (out / name).is_file()
    pred_path = out / "predictions" / f"{JHMDB_VIDEO}.json"
    pred = read_keypoints_json(pred_path)
    assert pred.frames == list(range(8)) and pred.num_keypoints == 15

    # ground truth as the prediction: the rerun reuses the (finished) prediction file and scores 100
    video = read_pose_dataset("jhmdb", jhmdb_sample)[0]
    gt = video.gt
    write_keypoints_json(pred_path, KeypointSequence(gt.names, gt.frames[:8], gt.xy[:8], gt.visible[:8]))
    assert _cli(args) == 0
    assert "(0 propagated, 1 reused)" in capsys.readouterr().out
    doc = json.loads((out / "pck.json").read_text())
    for variant in ("reference", "gt-visibility"):
        assert all(v == 100.0 for v in doc["results"][variant]["pck"].values())
        assert doc["results"][variant]["coverage"] == {"c1": 100.0, "c2": 100.0}

    # a different protocol in the same folder needs --force
    with pytest.raises(InputError, match="different protocol"):
        _cli(args[:-1] + ["--track", "--crop-size", "96", "--quiet"])


# ----------------------------------------------------------------- known answers


def test_folder_dataset_scores_only_frames_after_the_first_annotated_one(tmp_path):
    """Identity propagation from frame 2 predicts frame 2's keypoints on frame 4: the PCK is known exactly."""
    root = tmp_path / "data"
    _write_frames(root / "clip" / "frames", 6)
    names = ["a", "b", "c"]
    xy = np.array([
        [[np.nan, np.nan]] * 3,                          # frame 00000: annotated, nothing visible
        [[10.0, 10.0], [50.0, 12.0], [30.0, 34.0]],      # frame 00002: the labelled frame
        [[10.0, 10.0], [52.0, 12.0], [30.0, 24.0]],      # frame 00004: b moved 2 px, c moved 10 px
    ])
    vis = np.array([[False] * 3, [True] * 3, [True] * 3])
    write_keypoints_json(root / "clip" / "keypoints.json", KeypointSequence(names, ["00000", "00002", "00004"], xy, vis))
    videos = read_pose_dataset("folder", root)
    assert [v.name for v in videos] == ["clip"] and videos[0].start() == 2 and videos[0].frame_size == (64, 48)
    prop = KeypointPropagator("crw-jhmdb", extractor=_IdentityExtractor(), decoder="fit", topk=1, crw_compat=False,
                              subpixel=True)
    res = evaluate_pose(videos, prop, tmp_path / "out", dataset={"name": "folder"}, progress=False)
    pred = read_keypoints_json(tmp_path / "out" / "predictions" / "clip.json")
    assert pred.frames == [2, 3, 4, 5]                    # indices of the video's frames, from the labelled one
    np.testing.assert_allclose(pred.xy[2], xy[1], atol=1e-6)
    ref = reference_sizes(xy[2][None], np.ones((1, 3), bool))[0]
    d = np.array([0.0, 2.0, 10.0]) / ref                  # = 0, 0.075, 0.376
    for t in (0.1, 0.2, 0.3, 0.4, 0.5):
        expected = 100.0 * np.mean(d <= t)
        assert res.results["reference"].at(t) == pytest.approx(expected)
        assert res.results["gt-visibility"].at(t) == pytest.approx(expected)
    assert res.results["reference"].counts.tolist() == [1, 1, 1]   # only frame 4 is scored
    assert res.per_video[0]["video"] == "clip" and res.per_video[0]["reference PCK@0.1"] == pytest.approx(200 / 3)
    assert res.computed == 1 and res.reused == 0


def test_badja_layout_maps_annotated_images_to_frame_indices(tmp_path):
    root = tmp_path / "badja"
    _write_frames(root / "extra_videos" / "dog" / "frames", 8, h=54, w=96, ext="jpg")
    entries = [{"image_path": f"extra_videos/dog/frames/{t:05d}.jpg", "segmentation_path": "",
                "joints": [[540.0, 960.0], [100.0, 200.0]], "visibility": [1, int(t == 5)]} for t in (5, 3)]
    (root / "joint_annotations").mkdir(parents=True)
    (root / "joint_annotations" / "dog.json").write_text(json.dumps(entries))
    (video,) = read_pose_dataset("badja", root)
    assert video.name == "dog" and len(video.frames) == 8 and video.frame_size == (96, 54)
    assert video.gt.frames == [3, 5] and video.start() == 3
    # (row, col) in 1920x1080 -> (x, y) in the 96x54 frame, pixel-centre convention
    np.testing.assert_allclose(video.gt.xy[0, 0], [(960 + 0.5) / 20 - 0.5, (540 + 0.5) / 20 - 0.5])
    assert video.gt.visible.tolist() == [[True, False], [True, True]]
    start, frames, gt = video.clip(max_frames=2)
    assert start == 3 and [p.stem for p in frames] == ["00003", "00004"] and gt.frames == [3]


def test_jhmdb_split_selection_and_bad_roots(jhmdb_sample, tmp_path):
    ok = tmp_path / "list.txt"
    ok.write_text("Goal_Keeping_Tips_catch_f_cm_np1_fr_med_2.avi 2\n")
    assert [v.name for v in read_pose_dataset("jhmdb", jhmdb_sample, split=ok)] == [JHMDB_VIDEO]
    train_only = tmp_path / "train.txt"
    train_only.write_text("Goal_Keeping_Tips_catch_f_cm_np1_fr_med_2.avi 1\n")
    with pytest.raises(InputError, match="lists no"):
        read_pose_dataset("jhmdb", jhmdb_sample, split=train_only)
    unknown = tmp_path / "unknown.txt"
    unknown.write_text("catch/not_a_video\n")
    with pytest.raises(InputError, match="'catch/not_a_video' is not in the dataset"):
        read_pose_dataset("jhmdb", jhmdb_sample, split=unknown)
    with pytest.raises(InputError, match="split file not found"):
        read_pose_dataset("jhmdb", jhmdb_sample, split="test")
    with pytest.raises(InputError, match="has no joint_positions/ folder"):
        read_pose_dataset("jhmdb", tmp_path)
    with pytest.raises(InputError, match="unknown keypoint dataset"):
        read_pose_dataset("coco", tmp_path)


def test_pose_video_rejects_ground_truth_frames_outside_the_video(tmp_path):
    _write_frames(tmp_path / "f", 3)
    frames = sorted((tmp_path / "f").iterdir())
    gt = KeypointSequence(["a"], [0, 7], [[[1.0, 1.0]], [[2.0, 2.0]]], [[True], [True]])
    with pytest.raises(InputError, match="frame 7 is not an index of its 3 frames"):
        PoseVideo("v", frames, gt)
