"""Frame sources and mask I/O: formats, ordering, and clear errors for bad input."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vlprop.errors import InputError
from vlprop.io.files import atomic_path
from vlprop.io.masks import davis_palette, mask_to_onehot, read_mask, write_mask
from vlprop.io.render import VideoWriter
from vlprop.io.video import ArraySource, ImageFolderSource, VideoFileSource, natural_key, open_frames


def _frames(n=5, h=24, w=32):
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, size=(n, h, w, 3), dtype=np.uint8)


def test_image_folder_is_read_in_natural_order(tmp_path):
    frames = _frames(12)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(tmp_path / f"frame{i}.png")
    src = open_frames(tmp_path)
    assert isinstance(src, ImageFolderSource) and len(src) == 12
    got = list(src)
    assert [g.name for g in got] == [f"frame{i}" for i in range(12)]
    assert all(np.array_equal(g.image, f) for g, f in zip(got, frames))
    assert sorted(["a10", "a2", "a1"], key=natural_key) == ["a1", "a2", "a10"]


def test_video_file_streams_all_frames(tmp_path):
    from vlprop.demo import synthetic_video

    frames = synthetic_video(num_frames=10, height=48, width=64).frames
    path = tmp_path / "clip.mp4"
    with VideoWriter(path, fps=10) as w:
        for f in frames:
            w.write(f)
    src = open_frames(path)
    assert isinstance(src, VideoFileSource)
    got = list(src)
    assert len(got) == 10 and got[3].image.shape == (48, 64, 3) and got[3].name == "00003"
    # lossy codec: decoded frames are close to the originals on average
    assert np.abs(got[5].image.astype(int) - frames[5].astype(int)).mean() < 8


def test_array_and_tensor_sources():
    import torch

    frames = _frames(3)
    assert len(list(ArraySource(frames))) == 3
    t = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    got = list(open_frames(t))
    assert np.abs(got[1].image.astype(int) - frames[1].astype(int)).max() <= 1


def test_missing_empty_and_corrupt_inputs_give_clear_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        open_frames(tmp_path / "nope")
    with pytest.raises(InputError, match="no images"):
        open_frames(tmp_path)
    Image.fromarray(_frames(1)[0]).save(tmp_path / "00000.jpg")
    (tmp_path / "00001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(InputError, match=r"frame 1 .*00001\.jpg"):
        list(open_frames(tmp_path))
    (tmp_path / "00001.jpg").unlink()
    Image.fromarray(_frames(1, 30, 30)[0]).save(tmp_path / "00002.jpg")
    with pytest.raises(InputError, match="same size"):
        list(open_frames(tmp_path))
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(InputError, match="broken.mp4"):
        list(open_frames(bad))


def test_palette_png_round_trip_and_davis_colours(tmp_path):
    mask = np.zeros((20, 30), np.uint8)
    mask[2:8, 3:9] = 1
    mask[10:15, 10:25] = 3
    write_mask(tmp_path / "m.png", mask)
    img = Image.open(tmp_path / "m.png")
    assert img.mode == "P"
    assert np.array_equal(read_mask(tmp_path / "m.png"), mask)
    pal = davis_palette()
    assert tuple(pal[1]) == (128, 0, 0) and tuple(pal[2]) == (0, 128, 0) and tuple(pal[3]) == (128, 128, 0)
    assert tuple(pal[255]) == (224, 224, 192)


def test_davis2016_binary_masks_map_255_to_object_1(tmp_path):
    m = np.zeros((10, 10), np.uint8)
    m[3:6, 3:6] = 255
    Image.fromarray(m, mode="L").save(tmp_path / "b.png")
    assert set(np.unique(read_mask(tmp_path / "b.png")).tolist()) == {0, 1}
    assert 255 in read_mask(tmp_path / "b.png", binary_255="void")


def test_rgb_colour_masks_are_rejected_with_advice(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[2:4, 2:4] = (128, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    with pytest.raises(InputError, match="never from colours"):
        read_mask(tmp_path / "c.png")


def test_onehot_with_explicit_ids_and_void():
    m = np.array([[0, 5, 255], [2, 5, 0]], np.uint8)
    oh = mask_to_onehot(m, [5, 2], void=255)
    assert oh.shape == (3, 2, 3)
    assert oh[1, 0, 1] == 1 and oh[2, 1, 0] == 1 and oh[0, 0, 0] == 1
    assert oh[:, 0, 2].sum() == 0  # void pixel carries no label


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out.txt") as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
