"""Mask exports (SA-V/COCO RLE, CVAT video XML, MOTS PNG, YouTube-VOS, DAVIS) decode back pixel for pixel."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from vlprop.errors import InputError
from vlprop.io.exports import FORMATS, cvat_rle, cvat_rle_decode, export_masks, read_export, rle_decode


def _masks(T=6, H=37, W=53, seed=0):
    """Objects 1, 2 and 7 with random blobs; object 2 absent on frames 2-3, object 7 touches the corners."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(T):
        m = np.zeros((H, W), np.uint8)
        m[rng.random((H, W)) < 0.15] = 1
        if t not in (2, 3):
            m[5 + t:20 + t, 10:30][rng.random((15, 20)) < 0.7] = 2
        m[0, 0] = m[-1, -1] = 7
        m[H // 2, W // 2] = 7  # a single pixel
        out.append(m)
    return [f"{t:05d}" for t in range(T)], out


def _need_coco(fmt: str) -> None:
    if fmt == "coco":
        pytest.importorskip("pycocotools", reason="the coco export needs pycocotools (pip install 'vlprop[annotate]')")


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_then_decode_gives_back_the_same_masks(tmp_path, fmt):
    _need_coco(fmt)
    names, masks = _masks()
    export_masks(fmt, tmp_path, names, masks, video="clip")
    got_names, got = read_export(fmt, tmp_path, video="clip")
    assert got_names == names
    for a, b in zip(masks, got):
        assert np.array_equal(a, b)


def test_coco_json_is_pycocotools_rle_in_the_sa_v_layout(tmp_path):
    _need_coco("coco")
    names, masks = _masks(T=3)
    export_masks("coco", tmp_path, names, masks, video="clip")
    doc = json.loads((tmp_path / "clip.json").read_text())
    assert doc["masklet_id"] == [1, 2, 7] and doc["video_height"] == 37 and doc["video_width"] == 53
    assert len(doc["masklet"]) == 3 and len(doc["masklet"][0]) == 3
    rle = doc["masklet"][0][2]
    assert isinstance(rle["counts"], str) and rle["size"] == [37, 53]
    assert rle_decode(rle).sum() == 3  # object 7: three pixels


def test_cvat_rle_is_row_major_runs_over_the_box_starting_with_zeros():
    m = np.zeros((5, 6), bool)
    m[1, 2] = m[2, 3] = m[2, 4] = True  # box rows 1-2, cols 2-4: [1 0 0 / 0 1 1]
    counts, left, top, w, h = cvat_rle(m)
    assert (left, top, w, h) == (2, 1, 3, 2)
    assert counts == [0, 1, 3, 2]
    assert np.array_equal(cvat_rle_decode(counts, left, top, w, h, 5, 6), m)


def test_mots_png_values_are_1000_plus_object_id_in_16_bit(tmp_path):
    from PIL import Image

    names, masks = _masks(T=2)
    export_masks("mots", tmp_path, names, masks)
    with Image.open(tmp_path / "default" / "instances" / "00000.png") as img:
        arr = np.asarray(img)
        assert img.mode.startswith("I")
    assert set(np.unique(arr).tolist()) == {0, 1001, 1002, 1007}
    assert (tmp_path / "default" / "instances" / "labels.txt").read_text().strip() == "object"


def test_export_refuses_to_overwrite_without_force(tmp_path):
    names, masks = _masks(T=2)
    export_masks("cvat", tmp_path, names, masks, video="clip")
    with pytest.raises(InputError, match="--force"):
        export_masks("cvat", tmp_path, names, masks, video="clip")
    export_masks("cvat", tmp_path, names, masks, video="clip", force=True)
    with pytest.raises(InputError, match="unknown export format"):
        export_masks("png", tmp_path, names, masks)


def test_cli_export_masks_writes_every_format_from_a_run_folder(tmp_path):
    from vlprop.cli import main
    from vlprop.io.masks import write_mask

    names, masks = _masks(T=3)
    run = tmp_path / "run"
    for n, m in zip(names, masks):
        write_mask(run / f"{n}.png", m)
    for fmt in FORMATS:
        if fmt == "coco" and importlib.util.find_spec("pycocotools") is None:
            continue  # covered (and skipped with the reason) by the round-trip test
        assert main(["export-masks", str(run), "--format", fmt, "--out", str(tmp_path / fmt), "--video", "v"]) == 0
        got_names, got = read_export(fmt, tmp_path / fmt, video="v")
        assert got_names == names and all(np.array_equal(a, b) for a, b in zip(masks, got))
    assert main(["export-masks", str(run), "--format", "cvat", "--out", str(tmp_path / "cvat"), "--video", "v"]) == 2
    assert main(["export-masks", str(run), "--format", "cvat", "--out", str(run / "x")]) == 2  # inside the run
    assert main(["export-masks", str(tmp_path / "nope"), "--format", "coco", "--out", str(tmp_path / "y")]) == 2
