"""The vlprop command: propagate, presets, demo; clear errors and safe outputs."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vlprop.cli import main
from vlprop.demo import iou, synthetic_video
from vlprop.io.masks import read_mask, write_mask


@pytest.fixture
def video_folder(tmp_path):
    vid = synthetic_video(num_frames=6, height=128, width=160, seed=1)
    frames = tmp_path / "frames"
    frames.mkdir()
    for t, f in enumerate(vid.frames):
        Image.fromarray(f).save(frames / f"img_{t}.jpg", quality=95)
    write_mask(tmp_path / "first.png", vid.masks[0])
    return tmp_path, vid


def test_propagate_writes_one_palette_png_per_frame_named_after_the_frames(video_folder, capsys):
    root, vid = video_folder
    out = root / "out"
    rc = main(["propagate", str(root / "frames"), "--mask", str(root / "first.png"), "--out", str(out),
               "--weights", "random", "--preset", "crw", "--quiet", "--save-probs",
               "--overlay", str(root / "ov.mp4")])
    assert rc == 0
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == [f"img_{t}.png" for t in range(6)]
    assert Image.open(out / "img_3.png").mode == "P"
    assert np.array_equal(read_mask(out / "img_0.png"), vid.masks[0])
    assert iou(read_mask(out / "img_5.png") == 1, vid.masks[5] == 1) > 0.5
    probs = np.load(out / "probs" / "img_5.npz")
    assert probs["probs"].shape[0] == 3 and list(probs["object_ids"]) == [1, 2]
    assert (root / "ov.mp4").stat().st_size > 0
    assert "wrote 6 masks" in capsys.readouterr().out


def test_annotations_folder_with_an_object_appearing_later(video_folder):
    root, vid = video_folder
    ann = root / "ann"
    write_mask(ann / "img_0.png", np.where(vid.masks[0] == 1, 1, 0))
    write_mask(ann / "img_3.png", np.where(vid.masks[3] == 2, 2, 0))
    out = root / "out"
    assert main(["propagate", str(root / "frames"), "--annotations", str(ann), "--out", str(out),
                 "--weights", "random", "--quiet"]) == 0
    assert 2 not in read_mask(out / "img_1.png")
    assert 2 in read_mask(out / "img_4.png")


def test_non_empty_output_folder_is_refused_unless_forced(video_folder, capsys):
    root, _ = video_folder
    out = root / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    args = ["propagate", str(root / "frames"), "--mask", str(root / "first.png"), "--out", str(out),
            "--weights", "random", "--quiet"]
    assert main(args) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(args + ["--force"]) == 0


def test_a_bad_frame_mid_video_names_it_and_leaves_no_half_written_overlay(video_folder, capsys):
    root, _ = video_folder
    Image.new("RGB", (64, 64)).save(root / "frames" / "img_4.jpg")  # a frame of another size
    overlay = root / "ov.mp4"
    rc = main(["propagate", str(root / "frames"), "--mask", str(root / "first.png"), "--out", str(root / "out"),
               "--weights", "random", "--quiet", "--overlay", str(overlay)])
    err = capsys.readouterr().err
    assert rc == 2 and "img_4.jpg" in err and "Traceback" not in err
    assert not [p.name for p in root.iterdir() if "ov.mp4" in p.name]  # neither the video nor its temporary file
    assert (root / "out" / "img_3.png").exists() and not (root / "out" / "img_4.png").exists()


@pytest.mark.parametrize("case,message", [
    ("missing-source", "not found"),
    ("missing-mask", "mask file not found"),
    ("no-label", "exactly one of --mask"),
    ("bad-set", "--set expects KEY=VALUE"),
    ("bad-preset", "unknown preset"),
    ("bad-weights", "weights"),
])
def test_bad_input_is_one_clear_error_line(video_folder, capsys, case, message):
    root, _ = video_folder
    args = {"missing-source": ["propagate", str(root / "nope"), "--mask", str(root / "first.png")],
            "missing-mask": ["propagate", str(root / "frames"), "--mask", str(root / "nope.png")],
            "no-label": ["propagate", str(root / "frames")],
            "bad-set": ["propagate", str(root / "frames"), "--mask", str(root / "first.png"), "--set", "topk5"],
            "bad-preset": ["propagate", str(root / "frames"), "--mask", str(root / "first.png"), "--preset", "x"],
            "bad-weights": ["propagate", str(root / "frames"), "--mask", str(root / "first.png"),
                            "--weights", str(root / "missing.pt")]}[case]
    rc = main(args + ["--out", str(root / f"out-{case}"), "--quiet"] + ([] if "--weights" in args else
                                                                        ["--weights", "random"]))
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err


def test_presets_lists_every_preset(capsys):
    from vlprop.config import PRESETS

    assert main(["presets"]) == 0
    text = capsys.readouterr().out
    for name in PRESETS:
        assert name in text
    assert "backbone=dino_vits16 layer=last stride=16" in text  # a preset's own backbone is shown
    assert main(["presets", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["crw"]["propagation"]["topk"] == 10 and data["dino"]["propagation"]["context"] == 7


def test_demo_rejects_a_bad_input_scale_before_writing_anything(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--frames", "2", "--weights", "random", "--input-scale", "0",
                 "--quiet"]) == 2
    assert "input_scale must be a positive number" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_python_dash_m_vlprop_is_the_command():
    """``python -m vlprop`` (and so ``torchrun -m vlprop eval vos``) runs the same CLI, errors included."""
    import subprocess
    import sys

    ok = subprocess.run([sys.executable, "-m", "vlprop", "presets", "--json"], capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout)["dul"]["propagation"]["topk"] == 10
    bad = subprocess.run([sys.executable, "-m", "vlprop", "propagate", "/no/such/video.mp4", "--mask", "/no/m.png",
                          "--out", "/tmp/vlprop-never-written"], capture_output=True, text=True)
    assert bad.returncode == 2 and "/no/such/video.mp4" in bad.stderr and "Traceback" not in bad.stderr


def test_demo_runs_and_reports_where_outputs_went(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--frames", "8", "--weights", "random", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "overlay.mp4" in text and "mean IoU" in text
    assert len(list((out / "masks").glob("*.png"))) == 8 and (out / "overlay.mp4").exists()
