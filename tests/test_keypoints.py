"""Keypoint codec (labels/keypoints.py) and keypoint files (io/keypoints.py)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlprop.errors import InputError
from vlprop.geometry import GridGeometry
from vlprop.io.keypoints import (
    JHMDB_JOINTS, JHMDB_SKELETON, KeypointSequence, jhmdb_split_videos, jhmdb_video, parse_keypoints_csv,
    parse_keypoints_json, read_badja, read_jhmdb_joints, read_jhmdb_split, read_keypoints, rescale_points,
    write_keypoints,
)
from vlprop.labels.keypoints import (
    KeypointCodec, decode_keypoints, decode_keypoints_grid, encode_keypoints, keypoint_heatmaps,
    pixel_to_grid, round_trip_errors,
)

DATA = Path(__file__).resolve().parents[1] / "../shared/data"
JHMDB = DATA / "jhmdb-sample"
JHMDB_VIDEO = ("catch", "Goal_Keeping_Tips_catch_f_cm_np1_fr_med_2")
N = 400  # random points per round-trip measurement (fast; the module reports 2000)


# ------------------------------------------------------------------ codec


@pytest.mark.parametrize("kernel", ["gaussian", "cauchy"])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.5])
def test_fit_decoder_inverts_both_kernels_exactly(kernel, sigma):
    assert round_trip_errors(sigma, kernel, n=N, method="fit").max() < 1e-9


@pytest.mark.parametrize("sigma,kwargs", [
    (0.5, {"method": "gaussian"}), (1.0, {"method": "gaussian"}),
    (0.5, {"method": "cog3"}), (0.5, {"method": "cog5"}), (0.5, {"method": "cog7"}),
    (1.0, {"method": "cog7"}),
    (0.5, {"method": "moments"}), (1.0, {"method": "moments"}),
])
def test_subpixel_decoders_round_trip_below_five_hundredths_of_a_cell(sigma, kwargs):
    err = round_trip_errors(sigma, "gaussian", n=N, **kwargs)
    assert err.max() < 0.05


@pytest.mark.parametrize("sigma,kwargs,lo,hi,max_err", [
    # measured mean error band and max error (see the module docstring): sub-cell decoders that are
    # not as accurate as the fits; the band catches regressions in either direction
    (0.5, {"method": "topk", "k": 5}, 0.015, 0.03, 0.08),
    (1.0, {"method": "topk", "k": 5}, 0.08, 0.12, 0.2),
    (0.5, {"method": "topk", "k": 3}, 0.06, 0.1, 0.24),
    (0.5, {"method": "parabolic"}, 0.14, 0.18, 0.25),
    (1.0, {"method": "parabolic"}, 0.035, 0.055, 0.07),
    (1.0, {"method": "cog5"}, 0.025, 0.04, 0.065),
    (1.0, {"method": "upsample", "factor": 8, "upsample_mode": "bicubic"}, 0.04, 0.065, 0.12),
    (0.5, {"method": "upsample", "factor": 8, "upsample_mode": "bicubic"}, 0.15, 0.21, 0.36),
])
def test_approximate_decoders_have_their_measured_error(sigma, kwargs, lo, hi, max_err):
    err = round_trip_errors(sigma, "gaussian", n=N, **kwargs)
    assert lo < err.mean() < hi and err.max() < max_err


def test_argmax_decodes_the_nearest_cell_exactly():
    rng = np.random.default_rng(1)
    g = rng.uniform(3, 20, size=(50, 2))
    d = decode_keypoints_grid(keypoint_heatmaps(g, None, (24, 24), 0.5), method="argmax", background=False)
    np.testing.assert_array_equal(d.xy, np.floor(g + 0.5))


@pytest.mark.parametrize("factor", [2, 4])
def test_bilinear_upsample_decode_stays_next_to_the_maximal_cell(factor):
    # a piecewise-bilinear surface peaks at a sample, so the decode is the max cell +- 1/(2 factor)
    rng = np.random.default_rng(2)
    g = rng.uniform(3, 20, size=(60, 2))
    maps = keypoint_heatmaps(g, None, (24, 24), 0.7)
    up = decode_keypoints_grid(maps, method="upsample", factor=factor, background=False).xy
    cell = decode_keypoints_grid(maps, method="argmax", background=False).xy
    np.testing.assert_allclose(np.abs(up - cell), 0.5 / factor, atol=1e-12)


def test_subpixel_encode_round_trips_through_a_resizing_geometry():
    # 320x240 frame resized to 480x368 for a stride-8 network: non-integer effective stride
    geo = GridGeometry.for_frame(240, 320, stride=8, resized=(368, 480))
    rng = np.random.default_rng(3)
    xy = rng.uniform([30, 30], [290, 210], size=(15, 2))
    maps = encode_keypoints(xy, None, geo, sigma=0.5)
    assert maps.shape == (16, geo.grid_height, geo.grid_width) and maps.dtype == torch.float32
    d = decode_keypoints(maps, geo, method="fit")
    assert d.visible.all()
    np.testing.assert_allclose(d.xy, xy, atol=1e-3)   # float32 maps; ~1e-4 px


def test_encoded_peak_sits_at_the_cell_centre_convention_position():
    geo = GridGeometry.for_frame(64, 64, stride=8)
    # pixel 3.5 is the centre of cell 0 ((3.5 + 0.5) / 8 - 0.5 = 0); pixel 11.5 of cell 1
    maps = encode_keypoints([[3.5, 11.5]], None, geo, background="none")[0]
    assert maps[1, 0] == 1.0 and torch.argmax(maps) == 1 * 8 + 0
    assert pixel_to_grid([[3.5, 11.5]], geo).tolist() == [[0.0, 1.0]]


def test_rounded_encode_places_the_peak_at_the_rounded_cell():
    geo = GridGeometry.for_frame(240, 320, stride=8)
    rng = np.random.default_rng(4)
    xy = rng.uniform(20, 220, size=(30, 2))
    maps = encode_keypoints(xy, None, geo, subpixel=False, background="none").numpy()
    g = np.floor(pixel_to_grid(xy, geo) + 0.5).astype(int)
    for k in range(len(xy)):
        r, c = np.unravel_index(np.argmax(maps[k]), maps[k].shape)
        assert (c, r) == tuple(g[k]) and maps[k, r, c] == 1.0
        # symmetric around the rounded cell
        assert maps[k, r, c - 1] == maps[k, r, c + 1] == maps[k, r - 1, c] == maps[k, r + 1, c]


def test_crw_compat_encode_reproduces_crw_labelmap():
    # CRW JHMDB: 320x240 frame resized to 320x320, stride 8 -> 40x40 grid, g = p * scale / 8
    geo = GridGeometry.for_frame(240, 320, stride=8, resized=(320, 320))
    xy = np.array([[101.0, 60.0], [50.2, 150.7]])
    maps = encode_keypoints(xy, None, geo, crw_compat=True).numpy()
    g = xy * np.array([320 / 320, 320 / 240]) / 8            # CRW grid coordinates
    peak = (g - 1.5).astype(int) + 2                          # int(g - 3 sigma) + (6 sigma + 1) // 2
    assert maps.shape == (3, 40, 40)
    for k in range(2):
        m = maps[k + 1]
        c, r = peak[k]
        assert np.argmax(m) == r * 40 + c and m[r, c] == 1.0
        assert (c, r) == tuple(np.floor(g[k] + 0.5).astype(int))   # = rounding for g >= 1.5
        # CRW's 4-wide patch is asymmetric: offset -2 holds exp(-8), offset +2 holds nothing
        assert m[r, c - 2] == pytest.approx(math.exp(-8)) and m[r, c + 2] == 0.0
        assert m[r - 1, c] == pytest.approx(math.exp(-2))
        assert np.count_nonzero(m) == 16
    # binary background: 1 exactly where every joint channel is 0
    np.testing.assert_array_equal(maps[0], (maps[1:].sum(0) == 0).astype(np.float32))


def test_crw_top3_decode_has_its_known_tie_bias():
    # peak 1 and four exp(-2) neighbours: top-3 keeps the peak and the first two ties in flat
    # order (the cell above and the cell to the left), pulling the decode up-left by w
    geo = GridGeometry.for_frame(240, 320, stride=8, resized=(320, 320))
    codec = KeypointCodec.crw()
    xy = np.array([[160.0, 120.0]])                           # g = (20, 20) exactly
    d = codec.decode_grid(codec.encode(xy, None, geo))
    w = math.exp(-2) / (1 + 2 * math.exp(-2))
    np.testing.assert_allclose(d.xy, [[20 - w, 20 - w]], atol=1e-6)
    # and back to pixels with CRW's inverse mapping (x * 8 / 1, y * 8 * 240 / 320)
    p = codec.decode(codec.encode(xy, None, geo), geo)
    np.testing.assert_allclose(p.xy, [[(20 - w) * 8, (20 - w) * 6]], atol=1e-5)


def test_invisible_keypoints_stay_invisible_with_every_decoder():
    geo = GridGeometry.for_frame(96, 128, stride=8)
    xy = np.array([[30.0, 40.0], [60.0, 20.0], [np.nan, np.nan], [90.0, 70.0]])
    vis = np.array([True, False, True, True])                  # NaN coordinates: invisible too
    maps = encode_keypoints(xy, vis, geo)
    assert maps[2].abs().sum() == 0 and maps[3].abs().sum() == 0
    for method in ["argmax", "topk", "cog5", "parabolic", "gaussian", "fit", "upsample", "moments"]:
        d = decode_keypoints(maps, geo, method=method)
        np.testing.assert_array_equal(d.visible, [True, False, False, True])
        assert np.isnan(d.xy[1:3]).all() and np.isfinite(d.xy[[0, 3]]).all()
        # confidence = peak cell value: keypoint 0 sits at grid (3.3125, 4.5625), nearest cell (3, 5)
        peak = math.exp(-(0.3125 ** 2 + 0.4375 ** 2) / (2 * 0.5 ** 2))
        assert d.confidence[1] == d.confidence[2] == 0.0 and d.confidence[0] == pytest.approx(peak, rel=1e-6)


def test_channel_propagated_to_zero_mass_decodes_invisible():
    geo = GridGeometry.for_frame(64, 64, stride=8)
    maps = encode_keypoints([[20.0, 20.0], [40.0, 44.0]], None, geo)
    maps[2] = 0.0                                  # the second keypoint lost all its mass
    d = decode_keypoints(maps, geo)
    np.testing.assert_array_equal(d.visible, [True, False])
    maps[2, 3, 3] = 1e-9                           # a trace of mass: visible unless min_mass says no
    assert decode_keypoints(maps, geo).visible[1]
    assert not decode_keypoints(maps, geo, min_mass=1e-6).visible[1]


def test_background_channel_options():
    geo = GridGeometry.for_frame(64, 64, stride=8)
    xy = [[20.0, 20.0], [44.0, 40.0]]
    binary = encode_keypoints(xy, None, geo, background="binary")
    comp = encode_keypoints(xy, None, geo, background="complement")
    none = encode_keypoints(xy, None, geo, background="none")
    assert binary.shape == comp.shape == (3, 8, 8) and none.shape == (2, 8, 8)
    torch.testing.assert_close(binary[1:], none)
    torch.testing.assert_close(binary[0], (none.sum(0) == 0).float())
    torch.testing.assert_close(comp[0], (1 - none.max(0).values).clamp_min(0))
    # decoders drop channel 0 only when told there is a background channel
    assert decode_keypoints(none, geo, background=False).xy.shape == (2, 2)


def test_codec_rejects_bad_arguments_with_input_errors():
    geo = GridGeometry.for_frame(64, 64, stride=8)
    with pytest.raises(InputError, match="shape \\[K, 2\\]"):
        encode_keypoints(np.zeros((3, 3)), None, geo)
    with pytest.raises(InputError, match="visibility"):
        encode_keypoints(np.zeros((3, 2)), [True], geo)
    with pytest.raises(InputError, match="decoder"):
        decode_keypoints_grid(torch.zeros(2, 4, 4), method="nearest")
    with pytest.raises(InputError, match="grid"):
        decode_keypoints(torch.zeros(2, 4, 4), geo)
    with pytest.raises(InputError, match="kernel"):
        KeypointCodec(kernel="laplace")


def test_jhmdb_ground_truth_round_trips_through_the_codecs():
    if not JHMDB.is_dir():
        pytest.skip(f"JHMDB sample not found at {JHMDB}")
    xy = read_jhmdb_joints(JHMDB / "joint_positions" / JHMDB_VIDEO[0] / JHMDB_VIDEO[1] /
                           "joint_positions.mat")[:, :, 0].T
    geo = GridGeometry.for_frame(240, 320, stride=8, resized=(320, 320))  # CRW's 40x40 grid
    exact = KeypointCodec.waldmann().with_decoder("fit")
    np.testing.assert_allclose(exact.decode(exact.encode(xy, None, geo), geo).xy, xy, atol=1e-3)
    crw = KeypointCodec.crw()
    err = np.abs(crw.decode(crw.encode(xy, None, geo), geo).xy - xy)
    # rounding to a cell (8 x 6 px) plus the top-3 tie bias (0.11 cell)
    assert (err <= np.array([8, 6]) * (0.5 + 0.11)).all()


# --------------------------------------------------------------------- I/O


def _sequence() -> KeypointSequence:
    xy = np.array([[[10.5, 20.25], [np.nan, np.nan], [3.0, 4.0]],
                   [[11.0, 21.0], [30.125, 40.0], [5.0, -2.5]]])
    vis = np.array([[True, False, True], [True, True, False]])
    conf = np.array([[1.0, 0.0, 0.5], [0.75, 0.25, 0.0]])
    return KeypointSequence(["head", "tail", "paw"], ["00007", 12], xy, vis, conf, [(0, 1), (1, 2)])


def _assert_same(a: KeypointSequence, b: KeypointSequence, skeleton: bool = True) -> None:
    assert a.names == b.names and a.frames == b.frames
    np.testing.assert_array_equal(a.xy, b.xy)          # NaN == NaN for assert_array_equal
    np.testing.assert_array_equal(a.visible, b.visible)
    np.testing.assert_array_equal(a.confidence, b.confidence)
    if skeleton:
        assert a.skeleton == b.skeleton


def test_json_round_trip_keeps_everything(tmp_path):
    seq = _sequence()
    write_keypoints(tmp_path / "k.json", seq)
    doc = json.loads((tmp_path / "k.json").read_text())
    assert doc["format"] == "vlprop-keypoints" and doc["version"] == 1
    assert doc["frames"][0] == {"frame": "00007", "keypoints": [[10.5, 20.25, True, 1.0], [None, None, False, 0.0],
                                                                [3.0, 4.0, True, 0.5]]}
    _assert_same(read_keypoints(tmp_path / "k.json"), seq)
    assert [p.name for p in tmp_path.iterdir()] == ["k.json"]  # atomic write leaves no temp file


def test_csv_round_trip_keeps_coordinates_visibility_and_frame_ids(tmp_path):
    seq = _sequence()
    write_keypoints(tmp_path / "k.csv", seq)
    lines = (tmp_path / "k.csv").read_text().splitlines()
    assert lines[0] == "frame,name,x,y,visible,confidence" and lines[1] == "00007,head,10.5,20.25,1,1.0"
    back = read_keypoints(tmp_path / "k.csv")
    _assert_same(back, seq, skeleton=False)
    assert back.frames == ["00007", 12]   # "00007" is a name, 12 an index


def test_csv_reader_fills_missing_rows_as_invisible():
    seq = parse_keypoints_csv("frame,name,x,y,visible,confidence\n0,a,1,2,1,0.9\n1,b,3,4,true,\n")
    assert seq.names == ["a", "b"] and seq.frames == [0, 1]
    np.testing.assert_array_equal(seq.visible, [[True, False], [False, True]])
    assert seq.confidence[1, 1] == 1.0 and np.isnan(seq.xy[0, 1]).all()


@pytest.mark.parametrize("text,match", [
    ('{"format": "other"}', "not a vlprop keypoint file"),
    ('{"format": "vlprop-keypoints", "version": 2}', "version"),
    ('{"format": "vlprop-keypoints", "version": 1, "names": ["a", "b"], "frames": '
     '[{"frame": 0, "keypoints": [[1, 2, true]]}]}', "has 1 keypoints, expected 2"),
    ('{"format": "vlprop-keypoints", "version": 1, "names": ["a"], "frames": '
     '[{"frame": 0, "keypoints": [[null, 2, true]]}]}', "visible keypoint needs finite"),
    ('{"format": "vlprop-keypoints", "version": 1, "names": ["a"], "skeleton": [[0, 3]], "frames": []}',
     "skeleton edge"),
    ("{not json", "not valid JSON"),
])
def test_json_reader_errors_name_the_file_and_the_problem(text, match):
    with pytest.raises(InputError, match=match) as e:
        parse_keypoints_json(text, "clip.json")
    assert "clip.json" in str(e.value)


@pytest.mark.parametrize("text,match", [
    ("frame,x,y\n", "header"),
    ("frame,name,x,y,visible,confidence\n0,a,1,2,1,1\n0,a,1,2,1,1\n", "line 3.*appears twice"),
    ("frame,name,x,y,visible,confidence\n0,a,one,2,1,1\n", "line 2.*numbers"),
    ("frame,name,x,y,visible,confidence\n0,a,1,2,maybe,1\n", "visibility"),
])
def test_csv_reader_errors_name_the_line(text, match):
    with pytest.raises(InputError, match=match):
        parse_keypoints_csv(text, "k.csv")


def test_reference_layout_round_trip_marks_invisible_with_minus_one():
    seq = _sequence()
    arr = seq.to_reference_array()
    assert arr.shape == (2, 3, 2)
    assert arr[0, 1, 0] == -1 and arr[1, 2, 1] == -1 and arr[0, 0, 1] == 11.0
    back = KeypointSequence.from_reference_array(arr)
    np.testing.assert_array_equal(back.visible, seq.visible)


def test_jhmdb_reader_on_the_real_sample():
    if not JHMDB.is_dir():
        pytest.skip(f"JHMDB sample not found at {JHMDB}")
    mat = JHMDB / "joint_positions" / JHMDB_VIDEO[0] / JHMDB_VIDEO[1] / "joint_positions.mat"
    pos = read_jhmdb_joints(mat)
    n_images = len(list((JHMDB / "Rename_Images" / JHMDB_VIDEO[0] / JHMDB_VIDEO[1]).glob("*.png")))
    assert pos.shape == (2, 15, n_images) == (2, 15, 40)
    # MATLAB 1-based 286.5 / 106.5 for the neck on frame 1 -> 0-based
    assert pos[0, 0, 0] == 285.5 and pos[1, 0, 0] == 105.5
    video = jhmdb_video(JHMDB, *JHMDB_VIDEO)
    assert len(video.frame_paths) == 40 and video.frame_paths[0].name == "00001.png"
    seq = video.keypoints()
    assert seq.names == list(JHMDB_JOINTS) and seq.skeleton == list(JHMDB_SKELETON) and seq.frames == list(range(40))
    np.testing.assert_array_equal(seq.xy[:, :, 0], pos[0].T)
    # the face is above the neck, the ankles below the hips
    assert (seq.xy[:, 2, 1] < seq.xy[:, 0, 1]).all() and (seq.xy[:, 13, 1] > seq.xy[:, 5, 1]).all()


def test_jhmdb_split_files(tmp_path):
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "pour_test_split1.txt").write_text("a.avi 1\nb.avi 2 \n\nc.avi 2\n")
    (tmp_path / "splits" / "catch_test_split1.txt").write_text("d.avi 2\n")
    assert read_jhmdb_split(tmp_path / "splits" / "pour_test_split1.txt") == {"train": ["a"], "test": ["b", "c"]}
    assert jhmdb_split_videos(tmp_path, 1, "test", actions=("pour", "catch")) == [
        ("pour", "b"), ("pour", "c"), ("catch", "d")]
    (tmp_path / "splits" / "bad_test_split1.txt").write_text("a.avi 3\n")
    with pytest.raises(InputError, match="line 1"):
        read_jhmdb_split(tmp_path / "splits" / "bad_test_split1.txt")


def _badja(tmp_path: Path) -> Path:
    ann = tmp_path / "joint_annotations"
    ann.mkdir(parents=True)
    doc = [  # deliberately out of order; BADJA joints are [row, col] in a 1920x1080 frame
        {"image_path": "extra_videos/cow/rgb/0012.png", "segmentation_path": "extra_videos/cow/seg/0012.png",
         "joints": [[540.0, 960.0], [0.0, 0.0], [1079.0, 1919.0]], "visibility": [1, 0, 1]},
        {"image_path": "extra_videos/cow/rgb/0005.png", "segmentation_path": "extra_videos/cow/seg/0005.png",
         "joints": [[100.0, 200.0], [300.0, 400.0], [500.0, 600.0]], "visibility": [1, 1, 0]},
    ]
    path = ann / "cow.json"
    path.write_text(json.dumps(doc))
    return path


def test_badja_reader_rescales_and_keeps_only_annotated_frames(tmp_path):
    ann = read_badja(_badja(tmp_path), frame_size=(960, 540))
    seq = ann.keypoints
    assert seq.frames == [0, 7] and ann.first_frame == 5 and ann.frame_size == (960, 540)
    assert ann.image_paths[0] == tmp_path / "extra_videos/cow/rgb/0005.png"
    # x = col, y = row, half size with the pixel-centre convention: (p + 0.5) / 2 - 0.5
    np.testing.assert_allclose(seq.xy[0, 0], [(200 + 0.5) / 2 - 0.5, (100 + 0.5) / 2 - 0.5])
    np.testing.assert_allclose(seq.xy[1, 2], [959.25, 539.25])   # pixel 1919 -> 1919.5 / 2 - 0.5
    np.testing.assert_array_equal(seq.visible, [[True, True, False], [True, False, True]])
    # Waldmann's reader drops joints invisible in the first annotation
    dropped = read_badja(_badja(tmp_path / "w"), frame_size=(1920, 1080), drop_joints_invisible_in_first=True,
                         clip_to_first_annotation=False)
    assert dropped.keypoints.names == ["joint_0", "joint_1"] and dropped.keypoints.frames == [5, 12]
    np.testing.assert_allclose(dropped.keypoints.xy[0, 1], [400.0, 300.0])


def test_badja_reader_takes_the_frame_size_from_the_image(tmp_path):
    path = _badja(tmp_path)
    (tmp_path / "extra_videos/cow/rgb").mkdir(parents=True)
    Image.new("RGB", (480, 270)).save(tmp_path / "extra_videos/cow/rgb/0005.png")
    ann = read_badja(path)
    assert ann.frame_size == (480, 270)
    np.testing.assert_allclose(ann.keypoints.xy[1, 0], rescale_points([960.0, 540.0], (1920, 1080), (480, 270)))


def test_badja_reader_without_frame_size_or_images_says_what_to_pass(tmp_path):
    with pytest.raises(InputError, match="frame_size"):
        read_badja(_badja(tmp_path))
