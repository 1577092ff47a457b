"""Dataset readers on tiny synthetic layouts of every supported format and on the real DAVIS-2016 clips."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlprop.errors import InputError
from vlprop.eval.datasets import (
    VOSSequence,
    read_annotation,
    read_davis2016,
    read_davis2017,
    read_dataset,
    read_folder,
    read_index_mask,
    read_segtrackv2,
    read_youtube_vos,
)

DATA = Path(__file__).resolve().parents[1] / "../shared/data"
DAVIS16 = DATA / "davis2016"
needs_davis16 = pytest.mark.skipif(not (DAVIS16 / "ImageSets").is_dir(),
                                   reason=f"real DAVIS-2016 clips not found at {DAVIS16}")

H, W = 12, 16
PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [200] * (3 * 252)


def frame(path: Path, size=(W, H), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 90, np.uint8)).save(path, format=fmt)


def palette_mask(path: Path, ids: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(ids.astype(np.uint8), mode="L").convert("P")
    img.putpalette(PALETTE)
    img.save(path)


def grey_mask(path: Path, values: np.ndarray, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8)).save(path, format=fmt)


def blob(ids=(1,), size=(H, W)):
    m = np.zeros(size, np.uint8)
    for k, i in enumerate(ids):
        m[1 + 3 * k: 3 + 3 * k, 2:6] = i
    return m


# ---------------------------------------------------------------------------------------------------
# Mask files
# ---------------------------------------------------------------------------------------------------
def test_mask_reading_palette_grey_binary_and_rgb_error(tmp_path):
    ids = blob((1, 2, 3))
    ids[0, 0] = 255
    palette_mask(tmp_path / "p.png", ids)
    grey_mask(tmp_path / "l.png", ids)
    assert np.array_equal(read_index_mask(tmp_path / "p.png"), ids)  # palette indices, colours ignored
    assert np.array_equal(read_index_mask(tmp_path / "l.png"), ids)
    grey_mask(tmp_path / "b.png", (ids > 0) * 255)
    assert set(np.unique(read_annotation(tmp_path / "b.png", "binary255")).tolist()) == {0, 1}
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(InputError, match=r"rgb\.png is a RGB colour image.*palette"):
        read_index_mask(tmp_path / "rgb.png")
    with pytest.raises(InputError, match="missing.png"):
        read_index_mask(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="junk.png"):
        read_index_mask(tmp_path / "junk.png")


# ---------------------------------------------------------------------------------------------------
# DAVIS-2016
# ---------------------------------------------------------------------------------------------------
def make_davis2016(root: Path, pairs: bool):
    seqs = {"alpha": 3, "beta": 4}
    lines = []
    for name, n in seqs.items():
        for t in range(n):
            frame(root / "JPEGImages/480p" / name / f"{t:05d}.jpg")
            m = blob() * 255 if (name == "alpha" or t >= 1) else np.zeros((H, W), np.uint8)
            grey_mask(root / "Annotations/480p" / name / f"{t:05d}.png", m)
            lines.append(f"/JPEGImages/480p/{name}/{t:05d}.jpg /Annotations/480p/{name}/{t:05d}.png")
    if pairs:
        (root / "ImageSets/480p").mkdir(parents=True)
        (root / "ImageSets/480p/val.txt").write_text("\n".join(lines) + "\n")
    else:
        (root / "ImageSets").mkdir(parents=True)
        (root / "ImageSets/val.txt").write_text("alpha\nbeta\n")
    return seqs


@pytest.mark.parametrize("pairs", [True, False], ids=["path-pairs", "names"])
def test_davis2016_layouts(tmp_path, pairs):
    make_davis2016(tmp_path, pairs)
    seqs = read_davis2016(tmp_path, "val")
    assert [s.name for s in seqs] == ["alpha", "beta"]
    alpha, beta = seqs
    assert len(alpha) == 3 and len(beta) == 4
    assert alpha.mask_encoding == "binary255" and alpha.objects == {1: 0}
    assert beta.objects == {1: 1}  # frame 0 of beta is empty
    assert beta.frame_names == ("00000", "00001", "00002", "00003")
    m = alpha.read_mask(0)
    assert m.dtype == np.uint8 and set(np.unique(m).tolist()) == {0, 1}
    assert alpha.read_frame(2).shape == (H, W, 3)
    assert read_davis2016(tmp_path, ["beta"])[0].name == "beta"


def test_davis2016_errors_name_the_file(tmp_path):
    make_davis2016(tmp_path, pairs=True)
    with pytest.raises(InputError, match="not found.*available splits: val"):
        read_davis2016(tmp_path, "train")
    with pytest.raises(InputError, match="root not found"):
        read_davis2016(tmp_path / "nope")
    (tmp_path / "Annotations/480p/beta/00002.png").unlink()
    with pytest.raises(InputError, match=r"beta/00002\.png.*does not exist"):
        read_davis2016(tmp_path, "val")
    grey_mask(tmp_path / "Annotations/480p/beta/00002.png", np.zeros((H + 1, W)))
    with pytest.raises(InputError, match=r"beta/00002\.png is 16x13 but its frame .*00002\.jpg is 16x12"):
        read_davis2016(tmp_path, "val")


def test_davis2016_name_list_needs_every_mask(tmp_path):
    make_davis2016(tmp_path, pairs=False)
    (tmp_path / "Annotations/480p/alpha/00001.png").unlink()
    with pytest.raises(InputError, match=r"alpha/00001\.png .*missing"):
        read_davis2016(tmp_path, "val")


# ---------------------------------------------------------------------------------------------------
# DAVIS-2017
# ---------------------------------------------------------------------------------------------------
def make_davis2017(root: Path):
    (root / "ImageSets/2017").mkdir(parents=True)
    (root / "ImageSets/2017/val.txt").write_text("dogs\n")
    for t in range(4):
        frame(root / "JPEGImages/480p/dogs" / f"{t:05d}.jpg")
        ids = blob((1, 2, 3) if t >= 2 else (1, 2))  # object 3 appears on frame 2
        ids[-1, :] = 255  # void
        if t != 3:  # last frame not annotated (as in test-dev)
            palette_mask(root / "Annotations/480p/dogs" / f"{t:05d}.png", ids)


def test_davis2017_palette_objects_void_and_unannotated_frames(tmp_path):
    make_davis2017(tmp_path)
    (seq,) = read_davis2017(tmp_path, "val")
    assert seq.mask_encoding == "index"
    assert seq.objects == {1: 0, 2: 0, 3: 2}  # void (255) is not an object
    assert seq.annotated_frames == (0, 1, 2) and seq.annotations[3] is None and seq.read_mask(3) is None
    m = seq.read_mask(2)
    assert set(np.unique(m).tolist()) == {0, 1, 2, 3, 255}
    quick = read_davis2017(tmp_path, "val", scan_objects=False)[0]
    assert quick.objects == {1: 0, 2: 0}  # first annotated frame only


def test_davis2017_errors(tmp_path):
    make_davis2017(tmp_path)
    palette_mask(tmp_path / "Annotations/480p/dogs/00009.png", blob())
    with pytest.raises(InputError, match=r"00009\.png has no frame"):
        read_davis2017(tmp_path, "val")
    (tmp_path / "Annotations/480p/dogs/00009.png").unlink()
    (tmp_path / "Annotations/480p/dogs/00000.png").unlink()
    with pytest.raises(InputError, match=r"first frame .*00000\.jpg has no mask"):
        read_davis2017(tmp_path, "val")
    with pytest.raises(InputError, match="annotation folder not found"):
        read_davis2017(tmp_path, "val", task="unsupervised")


# ---------------------------------------------------------------------------------------------------
# YouTube-VOS
# ---------------------------------------------------------------------------------------------------
def make_ytvos(root: Path):
    split = root / "valid"
    stems = [f"{i:05d}" for i in range(0, 20, 5)]  # 00000 00005 00010 00015
    for s in stems:
        frame(split / "JPEGImages/vid1" / f"{s}.jpg")
    palette_mask(split / "Annotations/vid1/00000.png", blob((1,)))
    palette_mask(split / "Annotations/vid1/00010.png", blob((0, 2)))  # object 2 enters mid-video
    meta = {"videos": {"vid1": {"objects": {"1": {"category": "cat", "frames": stems},
                                            "2": {"category": "dog", "frames": stems[2:]}}}}}
    (split / "meta.json").write_text(json.dumps(meta))
    return split


def test_youtube_vos_sparse_annotations_and_mid_video_objects(tmp_path):
    split_dir = make_ytvos(tmp_path)
    for seqs in (read_youtube_vos(tmp_path, "valid"), read_youtube_vos(split_dir)):
        (seq,) = seqs
        assert seq.name == "vid1" and len(seq) == 4
        assert seq.objects == {1: 0, 2: 2}
        assert seq.annotated_frames == (0, 2)
        assert [a is None for a in seq.annotations] == [False, True, False, True]
        assert 2 in np.unique(seq.read_mask(2))


def test_youtube_vos_errors(tmp_path):
    split_dir = make_ytvos(tmp_path)
    with pytest.raises(InputError, match="meta file not found"):
        read_youtube_vos(tmp_path)
    meta = json.loads((split_dir / "meta.json").read_text())
    meta["videos"]["vid1"]["objects"]["2"]["frames"] = ["00012"]
    (split_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="first appears on frame 00012"):
        read_youtube_vos(split_dir)
    with pytest.raises(InputError, match="video nope is not in"):
        read_youtube_vos(split_dir, ["nope"])


# ---------------------------------------------------------------------------------------------------
# SegTrackV2
# ---------------------------------------------------------------------------------------------------
def make_segtrack(root: Path):
    sets = root / "ImageSets"
    sets.mkdir(parents=True)
    (sets / "all.txt").write_text("*birds\nfrog\n")
    (sets / "birds.txt").write_text("birds/\nb_01\nb_02\nb_03\n")
    (sets / "frog.txt").write_text("frog\nf1\nf2\n")
    for s in ("b_01", "b_02", "b_03"):
        frame(root / "JPEGImages/birds" / f"{s}.png")
    one = np.zeros((H, W), np.uint8)
    one[2:6, 2:8] = 255
    two = np.zeros((H, W), np.uint8)
    two[4:9, 6:12] = 1  # overlaps object 1; later objects overwrite earlier
    obj2 = _mk(root / "GroundTruth/birds/2")
    for s in ("b_01", "b_02", "b_03"):
        grey_mask(root / "GroundTruth/birds/1" / f"{s}.png", one)
        rgb = np.stack([two * 200] * 3, -1) if s != "b_01" else np.zeros((H, W, 3), np.uint8)
        Image.fromarray(rgb).save(obj2 / f"{s}.bmp")  # SegTrackV2 ships RGB .bmp masks too
    for s in ("f1", "f2"):
        frame(root / "JPEGImages/frog" / f"{s}.bmp", fmt="BMP")
        grey_mask(root / "GroundTruth/frog" / f"{s}.png", one)


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def test_segtrackv2_multi_object_subfolders_mixed_extensions(tmp_path):
    make_segtrack(tmp_path)
    birds, frog = read_segtrackv2(tmp_path)
    assert birds.name == "birds" and birds.mask_encoding == "binary"
    assert birds.frames[0].name == "b_01.png" and birds.annotations[0][1].name == "b_01.bmp"
    assert birds.objects == {1: 0, 2: 1}  # object 2 is empty on the first frame
    m = birds.read_mask(1)
    assert m[3, 3] == 1 and m[5, 7] == 2 and m[10, 0] == 0  # overlap pixel (5, 7) belongs to object 2
    assert frog.frames[0].suffix == ".bmp" and len(frog.annotations[0]) == 1 and frog.objects == {1: 0}
    assert read_segtrackv2(tmp_path, ["frog"])[0].name == "frog"


def test_segtrackv2_errors(tmp_path):
    make_segtrack(tmp_path)
    (tmp_path / "GroundTruth/birds/2/b_03.bmp").unlink()
    with pytest.raises(InputError, match=r"birds/2/b_03\.bmp"):
        read_segtrackv2(tmp_path)
    (tmp_path / "ImageSets/frog.txt").unlink()
    with pytest.raises(InputError, match=r"frog\.txt"):
        read_segtrackv2(tmp_path, ["frog"])


# ---------------------------------------------------------------------------------------------------
# Plain folders and the dispatcher
# ---------------------------------------------------------------------------------------------------
def test_plain_folder_detects_binary_and_index_masks(tmp_path):
    for t in range(3):
        frame(tmp_path / "JPEGImages/bin" / f"{t:05d}.jpg")
        grey_mask(tmp_path / "Annotations/bin" / f"{t:05d}.png", blob() * 255)
        frame(tmp_path / "JPEGImages/multi" / f"{t:05d}.png", fmt="PNG")
        if t != 1:
            palette_mask(tmp_path / "Annotations/multi" / f"{t:05d}.png", blob((4, 2)))
    binary, multi = read_folder(tmp_path)
    assert binary.mask_encoding == "binary255" and binary.objects == {1: 0}
    assert multi.mask_encoding == "index" and multi.objects == {2: 0, 4: 0}
    assert multi.annotations[1] is None
    assert [s.name for s in read_dataset("folder", tmp_path, ["multi"])] == ["multi"]
    assert isinstance(read_dataset("folder", tmp_path)[0], VOSSequence)
    with pytest.raises(InputError, match="unknown dataset kind"):
        read_dataset("kitti", tmp_path)


def test_plain_folder_errors(tmp_path):
    frame(tmp_path / "JPEGImages/a/00000.jpg")
    with pytest.raises(InputError, match="annotation folder not found"):
        read_folder(tmp_path)
    assert read_folder(tmp_path, require_annotations=False)[0].objects == {}
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(_mk(tmp_path / "Annotations/a") / "00000.png")
    with pytest.raises(InputError, match=r"00000\.png is a RGB colour image"):
        read_folder(tmp_path)


# ---------------------------------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------------------------------
@needs_davis16
def test_real_davis2016_val_dev():
    seqs = read_davis2016(DAVIS16, "val-dev")
    lengths = {s.name: len(s) for s in seqs}
    assert lengths == {"blackswan": 50, "bmx-trees": 80, "breakdance": 84, "car-roundabout": 75, "cows": 104,
                       "dog": 60, "drift-chicane": 52, "kite-surf": 50, "libby": 49, "paragliding-launch": 80}
    for s in seqs:
        assert s.mask_encoding == "binary255" and s.objects == {1: 0}
        assert s.annotated_frames == tuple(range(len(s)))
    m = seqs[0].read_mask(10)
    assert m.shape == (480, 854) and set(np.unique(m).tolist()) == {0, 1}
    assert seqs[0].read_frame(0).shape == (480, 854, 3)
    assert read_dataset("davis16", DAVIS16, ["cows"])[0].name == "cows"


@needs_davis16
def test_real_davis2016_split_listing_absent_sequences_is_an_input_error():
    names = (DAVIS16 / "ImageSets/train.txt").read_text().split() if (DAVIS16 / "ImageSets/train.txt").is_file() else []
    absent = [n for n in names if not (DAVIS16 / "JPEGImages/480p" / n).is_dir()]
    if not absent:
        pytest.skip("every train sequence is present here; nothing missing to report")
    with pytest.raises(InputError, match=f"{absent[0]}: frame folder not found"):
        read_davis2016(DAVIS16, "train")


DAVIS16_TRAIN256 = DAVIS16.parent / "davis2016-train-256"


@pytest.mark.skipif(not (DAVIS16_TRAIN256 / "JPEGImages").is_dir(), reason="../shared/data/davis2016-train-256 absent")
def test_real_davis2016_copy_without_a_resolution_level():
    # the 256p training copy keeps sequences directly under JPEGImages/ and Annotations/
    seq = read_davis2016(DAVIS16_TRAIN256, ["bear"])[0]
    n = len(list((DAVIS16_TRAIN256 / "JPEGImages" / "bear").glob("*.jpg")))
    assert len(seq) == n > 0 and seq.objects == {1: 0}
    assert min(seq.read_frame(0).shape[:2]) == 256
    assert seq.read_mask(0).shape == seq.read_frame(0).shape[:2]
