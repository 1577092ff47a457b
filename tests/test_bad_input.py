"""Every defect case of the bad-input review (shared/reports/bad-input-review.md, D1-D18), through the CLI and,
where there is one, the Python API: a clear one-line error naming the culprit (exit code 2, no traceback) and
nothing broken or overwritten -- or, where the input is valid, the correct result.

Inputs are tiny synthetic videos (64x48, 3-6 frames) and ``--weights random``, so the module runs fast.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlprop.cli import main
from vlprop.errors import CheckpointError, InputError
from vlprop.io.masks import read_mask, write_mask

import vlprop

SRC = str(Path(vlprop.__file__).resolve().parents[1])  # subprocesses run the code under test
W, H = 64, 48
FAST = ["--weights", "random", "--quiet", "--preset", "crw"]


# --------------------------------------------------------------------------- helpers
def _frame(t: int, w: int = W, h: int = H) -> np.ndarray:
    rng = np.random.default_rng(t)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    img[10:30, 8 + 2 * t:28 + 2 * t] = (250, 40, 40)  # a square moving right
    return img


def _square(t: int, obj: int = 1, w: int = W, h: int = H) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[10:30, 8 + 2 * t:28 + 2 * t] = obj
    return m


def make_frames(folder: Path, names: list[str] | int = 4, ext: str = ".png", w: int = W, h: int = H) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{t:05d}" for t in range(names)] if isinstance(names, int) else names
    for t, n in enumerate(names):
        Image.fromarray(_frame(t, w, h)).save(folder / f"{n}{ext}")
    return folder


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def fails(capsys, argv: list[str], *needles: str, rc: int = 2) -> str:
    """Run the CLI, expect exit code ``rc`` and one ``vlprop: error:`` line containing every needle."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == rc, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("vlprop: error:")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): md5(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def clip(tmp_path):
    """4 frames 64x48 in frames/ and the first mask in mask.png."""
    make_frames(tmp_path / "frames", 4)
    write_mask(tmp_path / "mask.png", _square(0))
    return tmp_path


def _davis2016(root: Path, seqs: dict[str, int], listed: list[str] | None = None) -> Path:
    """A tiny DAVIS-2016 root: ``seqs`` name -> frame count, 0/255 masks; val.txt lists ``listed``."""
    (root / "ImageSets" / "480p").mkdir(parents=True)
    (root / "ImageSets" / "480p" / "val.txt").write_text("\n".join(listed if listed is not None else seqs) + "\n")
    (root / "JPEGImages" / "480p").mkdir(parents=True)
    (root / "Annotations" / "480p").mkdir(parents=True)
    for s, n in seqs.items():
        make_frames(root / "JPEGImages" / "480p" / s, n, ext=".jpg")
        for t in range(n):
            write_mask(root / "Annotations" / "480p" / s / f"{t:05d}.png", _square(t) * 255)
    return root


# --------------------------------------------------------------------------- D1, D2: eval vos outputs
def test_D1_sequence_name_with_dotdot_in_a_split_list_is_refused_and_nothing_outside_out_is_touched(tmp_path,
                                                                                                    capsys):
    ds = _davis2016(tmp_path / "DS", {}, listed=["../../../victim"])
    victim = make_frames(tmp_path / "victim", 4, ext=".jpg")
    for t in range(4):
        write_mask(victim / f"{t:05d}.png", _square(t) * 255)
    before = snapshot(victim)
    fails(capsys, ["eval", "vos", "--dataset", "davis2016", "--root", ds, "--split", "val",
                   "--out", tmp_path / "OUT" / "x" / "y", *FAST], "'../../../victim'", "val.txt", "not a plain name")
    assert snapshot(victim) == before
    assert not (tmp_path / "OUT" / "x" / "victim.json").exists()


@pytest.mark.parametrize("name", ["/abs/victim", "a/b", "..", "~user"])
def test_D1_unsafe_names_in_youtube_vos_meta_json_are_refused(tmp_path, name):
    from vlprop.eval.datasets import read_youtube_vos

    (tmp_path / "meta.json").write_text(json.dumps({"videos": {name: {"objects": {}}}}))
    with pytest.raises(InputError, match="not a plain name|empty"):
        read_youtube_vos(tmp_path)


def test_D1_marker_and_sequence_folders_stay_inside_out_on_the_api_path(tmp_path):
    from vlprop.eval.runner import marker_path

    with pytest.raises(InputError, match="not a plain name"):
        marker_path(tmp_path, "../x")


def test_D2_out_inside_the_dataset_annotations_is_refused_and_ground_truth_is_kept(tmp_path, capsys):
    ds = _davis2016(tmp_path / "DAVIS", {"cat": 3})
    before = snapshot(ds)
    fails(capsys, ["eval", "vos", "--dataset", "davis2016", "--root", ds, "--split", "val",
                   "--out", ds / "Annotations" / "480p", *FAST], "--out", "contains the input --root")
    fails(capsys, ["eval", "vos", "--dataset", "davis2016", "--root", ds, "--split", "val",
                   "--out", ds / "Annotations" / "480p" / "cat", *FAST], "--out", "is the input --root")
    assert snapshot(ds) == before


def test_D2_pngs_in_an_out_sequence_folder_vlprop_did_not_write_are_never_deleted(tmp_path, capsys):
    ds = _davis2016(tmp_path / "DAVIS", {"cat": 3})
    out = tmp_path / "out"
    write_mask(out / "cat" / "mine.png", _square(0))
    fails(capsys, ["eval", "vos", "--dataset", "davis2016", "--root", ds, "--split", "val", "--out", out, *FAST],
          "did not write", str(out / "cat"))
    assert (out / "cat" / "mine.png").exists()


def test_D2_api_names_the_python_argument(tmp_path):
    from vlprop.eval.runner import evaluate_vos
    from vlprop.model import ModelSpec

    ds = _davis2016(tmp_path / "DAVIS", {"cat": 3})
    with pytest.raises(InputError, match=r"^out_dir .* the input root"):
        evaluate_vos("davis2016", ds, ds / "JPEGImages", ModelSpec(weights="random"), split="val", quiet=True)


# --------------------------------------------------------------------------- D3, D10, D16: the overlay video
def _propagate(root: Path, *extra) -> list:
    return ["propagate", root / "frames", "--mask", root / "mask.png", "--out", root / "masks", *FAST, *extra]


def _make_video(path: Path, n: int = 4) -> Path:
    from vlprop.io.render import VideoWriter

    with VideoWriter(path, fps=10) as w:
        for t in range(n):
            w.write(_frame(t))
    return path


def test_D3_overlay_equal_to_the_source_video_is_refused_even_with_force(clip, capsys):
    video = _make_video(clip / "clip.mp4")
    before = md5(video)
    for extra in ([], ["--force"]):
        fails(capsys, ["propagate", video, "--mask", clip / "mask.png", "--out", clip / "masks", *FAST,
                       "--overlay", video, *extra], "--overlay", "clip.mp4")
    assert md5(video) == before and not (clip / "masks").exists()


def test_D3_an_existing_overlay_file_is_kept_unless_force(clip, capsys):
    precious = clip / "precious.mp4"
    precious.write_bytes(b"not yours")
    fails(capsys, _propagate(clip, "--overlay", precious), "--overlay", "already exists", "--force")
    assert precious.read_bytes() == b"not yours" and not (clip / "masks").exists()
    assert main([str(a) for a in _propagate(clip, "--overlay", precious, "--force")]) == 0
    assert precious.read_bytes() != b"not yours"


def test_D3_out_or_overlay_inside_an_input_is_refused(clip, capsys):
    before = snapshot(clip / "frames")
    fails(capsys, ["propagate", clip / "frames", "--mask", clip / "mask.png", "--out", clip / "frames", *FAST,
                   "--force"], "--out", "is the input SOURCE")
    fails(capsys, ["propagate", clip / "frames", "--mask", clip / "mask.png", "--out", clip / "frames" / "m", *FAST],
          "--out", "lies inside the input SOURCE")
    fails(capsys, _propagate(clip, "--overlay", clip / "frames" / "ov.mp4"), "--overlay", "lies inside the input")
    fails(capsys, ["propagate", clip / "frames", "--mask", clip / "mask.png", "--out", clip, *FAST, "--force"],
          "--out", "contains the input")
    assert snapshot(clip / "frames") == before


def test_D10_overlay_has_the_users_permissions_and_no_temp_file_survives(clip):
    old = os.umask(0o022)
    try:
        assert main([str(a) for a in _propagate(clip, "--overlay", clip / "ov.mp4")]) == 0
    finally:
        os.umask(old)
    assert (clip / "ov.mp4").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in clip.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("name,needle", [("ov.txt", "suffix '.txt'"), ("odir", "is a folder")])
def test_D10_unusable_overlay_path_fails_before_any_mask_and_leaves_no_temp(clip, capsys, name, needle):
    (clip / "odir").mkdir()
    fails(capsys, _propagate(clip, "--overlay", clip / name), "--overlay", needle)
    assert not (clip / "masks").exists()
    assert [p.name for p in clip.iterdir() if p.name.startswith(".")] == []


def test_D10_video_writer_removes_its_temp_file_when_opening_fails(tmp_path, monkeypatch):
    import av

    from vlprop.io.render import VideoWriter

    def broken(*a, **k):
        raise RuntimeError("codec exploded")

    monkeypatch.setattr(av, "open", broken)
    with pytest.raises(RuntimeError):
        with VideoWriter(tmp_path / "v.mp4") as w:
            w.write(_frame(0))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fps", ["0", "-5", "nan", "inf", "1e9"])
def test_D16_fps_out_of_range_is_refused_with_the_range(clip, capsys, fps):
    fails(capsys, _propagate(clip, "--overlay", clip / "ov.mp4", "--fps", fps), "--fps", "(0, 1000]")
    assert not (clip / "masks").exists()


def test_D16_fractional_fps_is_kept_exactly(tmp_path):
    import av

    from vlprop.io.render import VideoWriter

    with VideoWriter(tmp_path / "v.mp4", fps=29.97) as w:
        for t in range(3):
            w.write(_frame(t))
    with av.open(str(tmp_path / "v.mp4")) as c:
        assert float(c.streams.video[0].average_rate) == pytest.approx(29.97)


def test_D16_fps_api_names_the_python_argument(tmp_path):
    from vlprop.io.render import VideoWriter

    with pytest.raises(InputError, match=r"^fps must be"):
        VideoWriter(tmp_path / "v.mp4", fps=0)


# --------------------------------------------------------------------------- D4: frame references
def test_D4_a_digit_only_frame_name_is_taken_as_a_name(tmp_path, capsys):
    make_frames(tmp_path / "frames", ["0001", "0002", "0003", "0004", "0005"])
    mask = _square(2)
    write_mask(tmp_path / "mask0003.png", mask)
    assert main([str(a) for a in ["propagate", tmp_path / "frames", "--mask", tmp_path / "mask0003.png",
                                  "--mask-frame", "0003", "--out", tmp_path / "masks", *FAST]]) == 0
    assert np.array_equal(read_mask(tmp_path / "masks" / "0003.png"), mask)
    assert not read_mask(tmp_path / "masks" / "0002.png").any()  # frames before the label are empty


def test_D4_a_name_that_is_no_index_of_the_video_is_a_name(tmp_path):
    from vlprop.io.video import resolve_frame

    assert resolve_frame("20", ["10", "20", "30"]) == 1
    assert resolve_frame("3", ["a", "b", "c", "d"]) == 3
    assert resolve_frame(1, ["10", "20", "30"]) == 1


def test_D4_an_ambiguous_frame_reference_is_refused_and_can_be_forced(tmp_path, capsys):
    make_frames(tmp_path / "frames", ["1", "2", "3", "4"])
    write_mask(tmp_path / "mask.png", _square(1))
    line = fails(capsys, ["propagate", tmp_path / "frames", "--mask", tmp_path / "mask.png", "--mask-frame", "2",
                          "--out", tmp_path / "masks", *FAST], "--mask-frame '2' is ambiguous", "name:2", "index:2")
    assert "masks key" not in line
    assert main([str(a) for a in ["propagate", tmp_path / "frames", "--mask", tmp_path / "mask.png",
                                  "--mask-frame", "name:2", "--out", tmp_path / "masks", *FAST]]) == 0
    assert np.array_equal(read_mask(tmp_path / "masks" / "2.png"), _square(1))


def test_D4_keypoints_frame_takes_a_digit_only_frame_name(tmp_path):
    from vlprop.io.keypoints import KeypointSequence
    from vlprop.tasks.pose import KeypointPropagator

    names = ["0001", "0002", "0003", "0004"]
    make_frames(tmp_path / "frames", names)
    xy = np.array([[[20.0, 20.0], [30.0, 25.0]]] * 2)
    seq = KeypointSequence(["a", "b"], ["0002", "0003"], xy, np.ones((2, 2), bool), np.ones((2, 2)))
    prop = KeypointPropagator("waldmann-jhmdb", weights="random", input_scale=1.0)
    results = list(prop.run(tmp_path / "frames", seq, start="0003"))
    assert [r.propagated for r in results] == [False, False, True, True]


def test_D4_keypoints_frame_on_the_cli_takes_a_digit_only_frame_name(tmp_path, capsys):
    make_frames(tmp_path / "frames", ["0001", "0002", "0003", "0004"])
    kp = {"format": "vlprop-keypoints", "version": 1, "names": ["a", "b"],
          "frames": [{"frame": "0002", "keypoints": [[20, 20, 1, 1], [30, 25, 1, 1]]},
                     {"frame": "0003", "keypoints": [[22, 20, 1, 1], [32, 25, 1, 1]]}]}
    (tmp_path / "kp.json").write_text(json.dumps(kp))
    assert main([str(a) for a in ["propagate", tmp_path / "frames", "--keypoints", tmp_path / "kp.json",
                                  "--keypoints-frame", "0003", "--out", tmp_path / "poses", "--weights", "random",
                                  "--quiet", "--set", "input_scale=1"]]) == 0
    out = json.loads((tmp_path / "poses" / "keypoints.json").read_text())
    first = [f for f in out["frames"] if any(k[2] for k in f["keypoints"])][0]
    assert first["frame"] in (2, "0003")
    assert first["keypoints"][0][:2] == [22, 20]


# --------------------------------------------------------------------------- D5, D12: labels
def test_D5_a_mask_without_object_ids_is_a_clear_error(clip, capsys):
    write_mask(clip / "zero.png", np.zeros((H, W), np.uint8))
    fails(capsys, ["propagate", clip / "frames", "--mask", clip / "zero.png", "--out", clip / "masks", *FAST],
          "zero.png", "contains no object ids")
    assert not (clip / "masks").exists()


def test_D5_a_void_only_mask_is_a_clear_error_on_the_api_path(clip):
    from vlprop.session import Propagator

    prop = Propagator(preset="crw", weights="random")
    with pytest.raises(InputError, match=r"frame 0 \(the given array\) contains no object ids \(only 0/void 255\)"):
        prop.run(clip / "frames", masks={0: np.full((H, W), 255, np.uint8)})


def test_D5_an_empty_annotation_before_the_first_object_is_harmless(clip):
    write_mask(clip / "ann" / "00000.png", np.zeros((H, W), np.uint8))
    write_mask(clip / "ann" / "00002.png", _square(2))
    assert main([str(a) for a in ["propagate", clip / "frames", "--annotations", clip / "ann", "--out",
                                  clip / "masks", *FAST]]) == 0
    assert not read_mask(clip / "masks" / "00001.png").any()
    assert read_mask(clip / "masks" / "00003.png").any()


def test_D12_misnamed_annotation_pngs_are_refused_by_name(clip, capsys):
    write_mask(clip / "ann" / "00000.png", _square(0, 1))
    write_mask(clip / "ann" / "0002.png", _square(2, 2))
    fails(capsys, ["propagate", clip / "frames", "--annotations", clip / "ann", "--out", clip / "masks", *FAST],
          "0002.png", "not named after a frame")
    assert not (clip / "masks").exists()


# --------------------------------------------------------------------------- D13, D14: frames
def test_D13_a_decompression_bomb_frame_is_a_clear_error(clip, capsys):
    Image.new("1", (20000, 10000)).save(clip / "frames" / "00002.png")
    fails(capsys, _propagate(clip), "00002.png", "cannot read frame 2")


def test_D13_a_decompression_bomb_mask_is_a_clear_error(clip, capsys):
    Image.new("1", (20000, 10000)).save(clip / "bomb.png")
    fails(capsys, ["propagate", clip / "frames", "--mask", clip / "bomb.png", "--out", clip / "masks", *FAST],
          "bomb.png", "cannot read mask")


def test_D14_16_bit_frames_are_scaled_not_clipped(tmp_path):
    from vlprop.io.video import ImageFolderSource

    ramp = (np.arange(W, dtype=np.uint16)[None, :].repeat(H, 0) * 1000)
    (tmp_path / "f").mkdir()
    Image.fromarray(ramp).save(tmp_path / "f" / "a.png")
    with Image.open(tmp_path / "f" / "a.png") as im:
        assert im.mode.startswith("I")
    img = next(iter(ImageFolderSource(tmp_path / "f"))).image
    assert np.array_equal(img[..., 0], (ramp >> 8).astype(np.uint8))
    assert (img == 255).mean() < 0.01


# --------------------------------------------------------------------------- D8: devices
@pytest.mark.parametrize("device,needle", [("cuda", "CUDA is not available"), ("mps", "mps requested"),
                                           ("banana", "invalid --device")])
def test_D8_an_unavailable_device_is_a_clear_error(clip, capsys, device, needle):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    fails(capsys, _propagate(clip, "--device", device), needle)
    fails(capsys, ["demo", "--out", clip / "demo", "--frames", "2", "--weights", "random", "--quiet",
                   "--device", device], needle)
    ds = _davis2016(clip / "DS", {"cat": 3})
    fails(capsys, ["eval", "vos", "--dataset", "davis2016", "--root", ds, "--out", clip / "vos", *FAST,
                   "--device", device], needle)
    assert not (clip / "masks").exists() and not (clip / "demo").exists()


def test_D8_api_names_the_device_argument():
    from vlprop.session import Propagator

    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(InputError, match=r"^device cuda requested"):
        Propagator(preset="crw", weights="random", device="cuda")


# --------------------------------------------------------------------------- D6: --set values
@pytest.mark.parametrize("item,needle", [
    ("topk=abc", "topk must be an integer, got 'abc'"),
    ("topk=2.5", "topk must be an integer, got '2.5'"),
    ("downsample=foo", "downsample must be one of area, bilinear, nearest"),
    ("feature_norm=maybe", "feature_norm must be true or false"),
    ("temperature=nan", "temperature must be a number"),
    ("topk=-1", "topk must be >= 0"),
    ("nosuch=1", "unknown setting 'nosuch'"),
])
def test_D6_set_values_are_type_and_range_checked_before_any_output(clip, capsys, item, needle):
    fails(capsys, _propagate(clip, "--set", item), needle)
    assert not (clip / "masks").exists()


@pytest.mark.parametrize("item,needle", [("decoder=nope", "decoder must be one of"), ("sigma=0", "sigma must be > 0"),
                                         ("kernel=box", "kernel must be one of")])
def test_D6_keypoint_settings_are_validated(tmp_path, item, needle):
    from vlprop.cli.options import parse_sets
    from vlprop.config import get_preset

    with pytest.raises(InputError, match=needle):
        get_preset("waldmann-jhmdb", **parse_sets([item]))


def test_D6_api_overrides_are_type_checked_too():
    from vlprop.config import PropagationConfig, get_preset

    with pytest.raises(InputError, match=r"topk must be an integer, got 2\.5"):
        get_preset("crw", topk=2.5)
    with pytest.raises(InputError, match="feature_norm must be true or false"):
        PropagationConfig(feature_norm="maybe")
    assert get_preset("crw", topk="7", feature_norm="false").propagation.topk == 7


@pytest.mark.parametrize("args,needle", [(["--void", "300"], "--void must be a mask value 0..255"),
                                         (["--stride", "0"], "--stride must be an integer >= 1"),
                                         (["--input-scale", "nan"], "--input-scale must be a factor in (0, 16]"),
                                         (["--short-side", "-4"], "--short-side must be a positive number")])
def test_other_option_values_are_range_checked_before_any_output(clip, capsys, args, needle):
    fails(capsys, _propagate(clip, *args), needle)
    assert not (clip / "masks").exists()


# --------------------------------------------------------------------------- D7: OS errors on outputs
@pytest.mark.parametrize("where", ["proc", "file"])
def test_D7_an_unusable_out_folder_is_one_line_naming_it(clip, capsys, where):
    (clip / "afile.txt").write_text("x")
    out = "/proc/vlprop-x" if where == "proc" else clip / "afile.txt" / "sub"
    fails(capsys, ["propagate", clip / "frames", "--mask", clip / "mask.png", "--out", out, *FAST], str(out))
    assert (clip / "afile.txt").read_text() == "x"


def test_D7_eval_score_checks_out_before_scoring(tmp_path, capsys, monkeypatch):
    import vlprop.eval.score as score

    ds = _davis2016(tmp_path / "DS", {"cat": 3})
    (tmp_path / "afile.txt").write_text("x")
    monkeypatch.setattr(score, "score_sequences", lambda *a, **k: pytest.fail("scored before checking --out"))
    fails(capsys, ["eval", "score", "--pred", ds / "Annotations" / "480p", "--gt", ds, "--out",
                   tmp_path / "afile.txt"], "--out", "afile.txt", "not a folder")
    fails(capsys, ["eval", "score", "--pred", ds / "Annotations" / "480p", "--gt", ds, "--out",
                   ds / "Annotations" / "480p" / "cat"], "--out", "input --gt")


# --------------------------------------------------------------------------- D9: --force and incomplete sets
def test_D9_force_removes_the_masks_vlprop_wrote_before_and_keeps_user_files(tmp_path, capsys):
    make_frames(tmp_path / "big", 6, w=96, h=64)
    write_mask(tmp_path / "big.png", _square(0, 1, 96, 64))
    make_frames(tmp_path / "small", 3)
    write_mask(tmp_path / "small.png", _square(0))
    out = tmp_path / "masks"
    assert main([str(a) for a in ["propagate", tmp_path / "big", "--mask", tmp_path / "big.png", "--out", out,
                                  *FAST, "--save-probs"]]) == 0
    (out / "notes.txt").write_text("mine")
    assert main([str(a) for a in ["propagate", tmp_path / "small", "--mask", tmp_path / "small.png", "--out", out,
                                  *FAST, "--force"]]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["00000.png", "00001.png", "00002.png"]
    assert not (out / "probs").exists()
    assert (out / "notes.txt").read_text() == "mine"
    manifest = json.loads((out / ".vlprop-complete.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["files"]) == 3
    assert not (out / ".vlprop-incomplete.json").exists()


def test_D9_a_run_stopped_by_a_bad_frame_leaves_an_incomplete_marker(clip, capsys):
    Image.new("RGB", (32, 32)).save(clip / "frames" / "00002.png")  # a frame of another size
    fails(capsys, _propagate(clip), "00002.png")
    marker = json.loads((clip / "masks" / ".vlprop-incomplete.json").read_text())
    assert marker["status"] == "incomplete" and "00003.png" in marker["files"]
    assert not (clip / "masks" / ".vlprop-complete.json").exists()
    fails(capsys, _propagate(clip), "incomplete result set", "--force")
    make_frames(clip / "frames", 4)  # repaired
    assert main([str(a) for a in _propagate(clip, "--force")]) == 0
    assert not (clip / "masks" / ".vlprop-incomplete.json").exists()
    assert len(list((clip / "masks").glob("*.png"))) == 4


def test_D9_a_tampered_marker_cannot_delete_outside_out(clip):
    out = clip / "masks"
    out.mkdir()
    (clip / "victim.txt").write_text("x")
    (out / ".vlprop-complete.json").write_text(json.dumps({"files": ["../victim.txt", "/etc/hostname"]}))
    assert main([str(a) for a in _propagate(clip, "--force")]) == 0
    assert (clip / "victim.txt").read_text() == "x"


# --------------------------------------------------------------------------- D11: SIGTERM
def test_D11_sigterm_is_handled_like_ctrl_c_and_leaves_no_temp_file(tmp_path):
    make_frames(tmp_path / "frames", 40, w=128, h=96)
    write_mask(tmp_path / "mask.png", _square(0, 1, 128, 96))
    out = tmp_path / "masks"
    env = dict(os.environ, PYTHONPATH=SRC)
    proc = subprocess.Popen([sys.executable, "-m", "vlprop", "propagate", str(tmp_path / "frames"), "--mask",
                             str(tmp_path / "mask.png"), "--out", str(out), "--overlay", str(out / "overlay.mp4"),
                             "--weights", "random", "--preset", "crw", "--quiet"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list(out.glob("00001.png")) and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == 143, err
    assert "vlprop: terminated" in err and "Traceback" not in err
    assert [p.name for p in out.iterdir() if p.name.startswith(".") and "overlay" in p.name] == []
    assert (out / ".vlprop-incomplete.json").exists() and not (out / "overlay.mp4").exists()


# --------------------------------------------------------------------------- D15: small tracebacks
@pytest.mark.parametrize("frames", ["0", "1", "-3"])
def test_D15_demo_with_too_few_frames_is_a_clear_error_before_writing(tmp_path, capsys, frames):
    fails(capsys, ["demo", "--out", tmp_path / "demo", "--frames", frames, "--weights", "random", "--quiet"],
          "--frames must be between 2 and 1000")
    assert not (tmp_path / "demo").exists()


def test_D15_export_meta_that_is_not_json_is_a_clear_error(tmp_path, capsys):
    fails(capsys, ["export", tmp_path / "run", "--out", tmp_path / "m.pt", "--meta", "{bad"], "--meta",
          "not valid JSON")


def test_D15_export_never_replaces_its_source_or_an_existing_file(tmp_path, capsys):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"checkpoint")
    fails(capsys, ["export", ckpt, "--out", ckpt, "--force"], "--out", "is the input SOURCE")
    other = tmp_path / "other.pt"
    other.write_bytes(b"keep")
    fails(capsys, ["export", ckpt, "--out", other], "--out", "already exists", "--force")
    assert ckpt.read_bytes() == b"checkpoint" and other.read_bytes() == b"keep"


def test_D15_presets_into_a_closed_pipe_exits_quietly():
    env = dict(os.environ, PYTHONPATH=SRC)
    proc = subprocess.run(f"{sys.executable} -m vlprop presets | head -2", shell=True, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.count("\n") == 2
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


# --------------------------------------------------------------------------- D17: pickled code in checkpoints
class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_D17_a_checkpoint_with_pickled_code_gets_the_intended_message(clip, capsys):
    import torch

    evil = clip / "evil.pt"
    torch.save({"state_dict": {}, "payload": _Evil()}, evil)
    line = fails(capsys, _propagate(clip, "--weights", evil), "evil.pt", "pickled Python objects",
                 "not plain tensors")
    assert "weights_only" not in line and "allow_pickle" not in line and "Re-running" not in line
    line = fails(capsys, ["export", evil, "--out", clip / "m.pt"], "evil.pt", "pickled Python objects")
    assert "Re-running" not in line and "weights_only" not in line
    assert not (clip / "masks").exists() and not (clip / "m.pt").exists()


# --------------------------------------------------------------------------- D18: CLI wording, help
def test_D18_unknown_checkpoint_layout_names_no_python_argument_on_the_cli(clip, capsys):
    import torch

    odd = clip / "odd.pt"
    torch.save({"state_dict": {"foo.bar": torch.zeros(2)}}, odd)
    line = fails(capsys, _propagate(clip, "--weights", odd), "odd.pt", "cannot tell the checkpoint layout")
    assert "pass weights_format=" not in line
    from vlprop.backbones.weights import open_checkpoint

    with pytest.raises(CheckpointError, match="pass weights_format="):
        open_checkpoint(odd)


def test_D18_arch_mismatch_names_the_backbone_flag(clip, capsys):
    from vlprop.backbones import create_backbone
    from vlprop.backbones.weights import save_checkpoint

    save_checkpoint(clip / "r50.pt", create_backbone("resnet50", weights=None, layer="res3"))
    line = fails(capsys, _propagate(clip, "--weights", clip / "r50.pt", "--backbone", "resnet18"),
                 "--backbone resnet50")
    assert "create_backbone" not in line


def test_D18_eval_score_hint_names_the_sequences_flag(tmp_path, capsys):
    ds = _davis2016(tmp_path / "DS", {"cat": 3, "dog": 3})
    pred = tmp_path / "pred"
    (pred / "cat").mkdir(parents=True)
    line = fails(capsys, ["eval", "score", "--pred", pred, "--gt", ds], "dog", "--sequences")
    assert "`sequences`" not in line


def test_D18_eval_without_a_subcommand_lists_them_and_help_is_complete(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval"])
    assert e.value.code == 2 and "{vos,pose,score}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "(pose)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--frames", "--preset", "--weights", "--device", "--seed", "--force", "--quiet"):
        after = text.split(flag, 2)[-1].strip()
        assert not after.startswith("--") and not after.startswith("["), flag  # a help text follows the flag
    with pytest.raises(SystemExit):
        main(["presets", "--help"])
    assert "as JSON" in capsys.readouterr().out


def test_D18_a_huge_keypoint_coordinate_is_printed_short(tmp_path):
    from vlprop.tasks.pose import KeypointPropagator

    make_frames(tmp_path / "frames", 3)
    prop = KeypointPropagator("waldmann-jhmdb", weights="random", input_scale=1.0)
    with pytest.raises(InputError) as e:
        list(prop.run(tmp_path / "frames", np.array([[1e308, 5.0], [10.0, 10.0]])))
    assert "1e+308" in str(e.value) and len(str(e.value)) < 300


# --------------------------------------------------------------------------- the same rules on the other commands
def test_pose_video_names_from_a_list_file_stay_inside_out(tmp_path):
    from vlprop.eval.pose import prediction_path

    assert prediction_path(tmp_path, "catch/video_1") == tmp_path / "predictions" / "catch" / "video_1.json"
    for bad in ("../victim", "a/../../b", "/abs"):
        with pytest.raises(InputError, match="not a plain name|empty"):
            prediction_path(tmp_path, bad)


def test_a_training_run_folder_inside_the_training_data_is_refused(tmp_path, capsys):
    data = make_frames(tmp_path / "data" / "seq", 3).parent
    before = snapshot(data)
    fails(capsys, ["train", "dul", "--data", data, "--out", data / "run", "--iters", "1"], "--out",
          "lies inside the input --data")
    assert snapshot(data) == before


def test_set_input_scale_and_the_input_scale_flag_do_not_collide():
    from vlprop.model import ModelSpec

    both = ModelSpec(weights="random", input_scale=2.0, overrides=(("input_scale", 1.0), ("short_side", 64)))
    assert both.resolve().preset.features.input_scale == 2.0
    only_set = ModelSpec(weights="random", overrides=(("input_scale", 1.5),))
    assert only_set.resolve().preset.features.input_scale == 1.5
