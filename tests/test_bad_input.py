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
from vlprop.errors import InputError
from vlprop.io.masks import read_mask, write_mask

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
