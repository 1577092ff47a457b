"""TAP-Vid pickle reader (io/tapvid.py): known content, both layouts, JPEG frames, refused pickles."""
from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from vlprop.errors import InputError
from vlprop.io.tapvid import read_tapvid, safe_load_pickle


def _video(T=3, N=2, H=8, W=16):
    frames = np.arange(T * H * W * 3, dtype=np.int64).reshape(T, H, W, 3).astype(np.uint8)
    points = np.array([[[0.5, 0.25]] * T, [[0.0, 1.0]] * T], dtype=np.float32)[:N]
    occluded = np.array([[False, True, False], [True, True, False]])[:N, :T]
    return {"video": frames, "points": points, "occluded": occluded}


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_davis_layout_dict_of_videos_is_read_with_known_content(tmp_path, protocol):
    v = _video()
    path = tmp_path / "tapvid_davis.pkl"
    path.write_bytes(pickle.dumps({"goat": v, "bear": _video(N=1)}, protocol=protocol))
    videos = read_tapvid(path)
    assert [x.name for x in videos] == ["bear", "goat"]
    goat = videos[1]
    np.testing.assert_array_equal(goat.frames, v["video"])
    np.testing.assert_array_equal(goat.points, v["points"].astype(np.float64))
    assert goat.occluded.tolist() == v["occluded"].tolist()
    assert goat.frame_size() == (16, 8) and goat.num_points == 2 and goat.num_frames == 3
    # normalised (0.5, 0.25) of a 16x8 frame -> raster (8, 2) -> vlprop pixel centres (7.5, 1.5)
    np.testing.assert_allclose(goat.pixel_points()[0, 0], [7.5, 1.5])
    np.testing.assert_allclose(goat.pixel_points((256, 256))[0, 0], [127.5, 63.5])
    assert [x.name for x in read_tapvid(path, names=["goat"])] == ["goat"]


def test_kinetics_layout_list_of_videos_with_jpeg_frames(tmp_path):
    frames = []
    for t in range(3):
        buf = io.BytesIO()
        Image.fromarray(np.full((8, 16, 3), 40 * t, np.uint8)).save(buf, format="PNG")
        frames.append(buf.getvalue())
    v = _video()
    v["video"] = frames
    (tmp_path / "0000_of_0010.pkl").write_bytes(pickle.dumps([v, _video()]))
    (tmp_path / "0001_of_0010.pkl").write_bytes(pickle.dumps([_video()]))
    videos = read_tapvid(tmp_path)
    assert [x.name for x in videos] == ["0000_of_0010/0000", "0000_of_0010/0001", "0001_of_0010/0000"]
    assert len(videos[0].frames) == 3 and videos[0].frame_size() == (16, 8)
    assert videos[0].frames[2].shape == (8, 16, 3) and int(videos[0].frames[2][0, 0, 0]) == 80


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_pickle_with_arbitrary_objects_is_refused_without_running_it(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"v": {"video": _Exploit(), "points": 0, "occluded": 0}}))
    with pytest.raises(InputError, match=r"evil.pkl: refusing to load posix.system|evil.pkl: refusing to load os"):
        read_tapvid(path)
    path.write_bytes(pickle.dumps([np.zeros(2), _Exploit()]))
    with pytest.raises(InputError, match="refusing to load"):
        safe_load_pickle(path)


def test_malformed_tapvid_content_gives_clear_errors(tmp_path):
    bad = _video()
    bad["points"], bad["occluded"] = bad["points"][:, :2], bad["occluded"][:, :2]
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps({"cat": bad}))
    with pytest.raises(InputError, match=r"video 'cat': 3 frames but the tracks have 2 frames"):
        read_tapvid(path)
    path.write_bytes(pickle.dumps({"cat": {"video": bad["video"]}}))
    with pytest.raises(InputError, match="expected a dict with 'video', 'points' and 'occluded'"):
        read_tapvid(path)
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(InputError, match="not a readable pickle"):
        read_tapvid(path)
    with pytest.raises(InputError, match="not found"):
        read_tapvid(tmp_path / "missing.pkl")
