"""Training data: discovery of layouts, DUL's clip rule, video decoding, skipping, reproducible sampling."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from test_train_support import make_dataset, textured_frames, write_frame_folder, write_video
from vlprop.errors import InputError
from vlprop.train.augment import AugmentConfig
from vlprop.train.data import (
    ClipBatchSampler,
    ClipDataset,
    SkippedVideoWarning,
    build_loader,
    discover_videos,
    read_video_frames,
    sample_clip_indices,
    split_holdout,
)

SHARED = Path(__file__).resolve().parents[1] / "../shared/data"


def test_discovers_frame_folders_nested_and_video_files(tmp_path):
    write_frame_folder(tmp_path / "a", textured_frames(6, 32))
    write_frame_folder(tmp_path / "group" / "b", textured_frames(7, 32), ext=".jpg")
    write_video(tmp_path / "group" / "c.mp4", textured_frames(9, 32))
    found = discover_videos(tmp_path)
    assert {(e.name, e.num_frames, e.is_file) for e in found.entries} == {
        ("a", 6, False), ("group/b", 7, False), ("group/c", 9, True)}
    assert found.skipped == []
    single = discover_videos(tmp_path / "group" / "c.mp4")
    assert [(e.name, e.num_frames) for e in single.entries] == [("c", 9)]
    item = ClipDataset(single.entries, frames=3, gap=2, augment=AugmentConfig(crop=32), seed=0)[(0, 0)]
    assert item["view_a"].shape == (3, 3, 32, 32) and item["skipped"] == []


def test_davis_layout_uses_only_the_train_list(tmp_path):
    for name in ("bear", "boat", "blackswan"):
        write_frame_folder(tmp_path / "JPEGImages" / "480p" / name, textured_frames(5, 32))
    (tmp_path / "ImageSets").mkdir()
    (tmp_path / "ImageSets" / "train.txt").write_text("bear\nboat\n")
    found = discover_videos(tmp_path)
    assert [e.name for e in found.entries] == ["bear", "boat"]  # val sequence never used for training


@pytest.mark.skipif(not (SHARED / "davis2016-train-256").is_dir(), reason="shared DAVIS-2016 train-256 data absent")
def test_real_davis_train_256_has_30_sequences_and_gives_clips():
    found = discover_videos(SHARED / "davis2016-train-256", min_frames=5)
    assert len(found.entries) == 30 and found.skipped == []
    bear = next(e for e in found.entries if e.name == "bear")
    assert bear.num_frames == 82
    ds = ClipDataset([bear], frames=5, gap=5, augment=AugmentConfig(crop=128), seed=0)
    item = ds[(0, 0)]
    assert item["view_a"].shape == (5, 3, 128, 128) and item["skipped"] == []


def test_corrupt_and_short_videos_are_skipped_and_counted(tmp_path):
    write_frame_folder(tmp_path / "good", textured_frames(8, 32))
    write_frame_folder(tmp_path / "short", textured_frames(2, 32))
    write_video(tmp_path / "short_video.mp4", textured_frames(2, 32))
    (tmp_path / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    broken = tmp_path / "broken"  # frame folder whose files are not images: found, unreadable later
    broken.mkdir()
    for i in range(8):
        (broken / f"{i:05d}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.warns(SkippedVideoWarning):
        found = discover_videos(tmp_path, min_frames=3)
    assert sorted(n for n, _ in found.skipped) == ["corrupt", "short", "short_video"]
    assert sorted(e.name for e in found.entries) == ["broken", "good"]
    ds = ClipDataset(found.entries, frames=3, augment=AugmentConfig(crop=32), seed=0)
    ibroken = [e.name for e in ds.entries].index("broken")
    with pytest.warns(SkippedVideoWarning, match="broken"):
        item = ds[(ibroken, 0)]
    assert item["skipped"] == ["broken"] and ds.entries[item["video"]].name == "good"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # remembered as unreadable: replaced again, no second decode
        assert ds[(ibroken, 1)]["skipped"] == ["broken"]


def test_only_unreadable_videos_is_a_clear_error(tmp_path):
    (tmp_path / "x.mp4").write_bytes(b"garbage")
    with pytest.warns(SkippedVideoWarning), pytest.raises(InputError, match="no usable training video"):
        discover_videos(tmp_path)


def test_clip_indices_follow_dul_gap_rule():
    rng = np.random.default_rng(0)
    for _ in range(20):
        ids = sample_clip_indices(100, 5, 5, rng, shuffle=False)  # window 25, step 5
        assert np.diff(ids).tolist() == [5] * 4 and 0 <= ids[0] <= 100 - 21
        short = sample_clip_indices(12, 5, 5, rng, shuffle=False)  # window 12, step 2
        assert np.diff(short).tolist() == [2] * 4 and 0 <= short[0] <= 3
    shuffled = [tuple(sample_clip_indices(100, 5, 5, rng, shuffle=True)) for _ in range(30)]
    assert all(np.diff(sorted(s)).tolist() == [5] * 4 for s in shuffled)
    assert len({s.index(min(s)) for s in shuffled}) > 1  # the reference frame is not always the earliest


def test_video_file_frames_by_sequential_decode_and_by_seeking_agree(tmp_path):
    src = textured_frames(40, 64, seed=4, speed=(1, 1))  # square positions do not repeat within 40 frames
    path = write_video(tmp_path / "v.mp4", src)
    wanted = [21, 27, 39]
    seq = read_video_frames(path, wanted, seek_threshold=10_000)
    seek = read_video_frames(path, wanted, seek_threshold=0)
    for i in wanted:
        a, b = np.asarray(seq[i]).astype(float), np.asarray(seek[i]).astype(float)
        assert np.array_equal(a, b)
        errors = [np.abs(a - f).mean() for f in src]
        assert int(np.argmin(errors)) == i  # decoded frame i is source frame i (lossy codec)


def test_sampler_splits_the_global_batch_over_ranks_and_resumes_mid_run():
    V, B, steps = 7, 4, 6
    single = list(ClipBatchSampler(V, B, steps, seed=3))
    r0 = list(ClipBatchSampler(V, B, steps, seed=3, rank=0, world_size=2))
    r1 = list(ClipBatchSampler(V, B, steps, seed=3, rank=1, world_size=2))
    assert [a + b for a, b in zip(r0, r1)] == single
    acc = list(ClipBatchSampler(V, B, steps, seed=3, accum=2))
    assert [acc[2 * s] + acc[2 * s + 1] for s in range(steps)] == single
    assert list(ClipBatchSampler(V, B, steps, start_step=4, seed=3)) == single[4:]
    flat = [k for batch in single for k in batch]
    assert [g for _, g in flat] == list(range(B * steps))
    for e in range(len(flat) // V):  # every video exactly once per epoch
        assert sorted(v for v, _ in flat[e * V:(e + 1) * V]) == list(range(V))
    with pytest.raises(InputError):
        ClipBatchSampler(V, 6, steps, world_size=4)


def test_loader_with_workers_gives_the_same_clips_as_in_process(tmp_path):
    make_dataset(tmp_path, videos=3, frames=8, size=48)
    entries = discover_videos(tmp_path).entries
    ds = ClipDataset(entries, frames=3, augment=AugmentConfig(crop=32), seed=5)
    ref = [ds[k] for k in ClipBatchSampler(len(ds), 2, 2, seed=5).micro_batch(1, 0)]
    loader = build_loader(ds, ClipBatchSampler(len(ds), 2, 2, start_step=1, seed=5), workers=2)
    (batch,) = list(loader)
    assert torch.equal(batch["view_b"], torch.stack([r["view_b"] for r in ref]))
    assert torch.equal(batch["anchor_u"], torch.stack([r["anchor_u"] for r in ref]))


def test_holdout_is_deterministic_and_disjoint(tmp_path):
    make_dataset(tmp_path, videos=6, frames=4, size=32)
    entries = discover_videos(tmp_path).entries
    train, val = split_holdout(entries, 2, seed=1)
    assert len(val) == 2 and not {e.name for e in train} & {e.name for e in val}
    assert split_holdout(entries, 2, seed=1) == (train, val)
    train2, val2 = split_holdout(entries, ["seq03"])
    assert [e.name for e in val2] == ["seq03"] and len(train2) == 5
    with pytest.raises(InputError):
        split_holdout(entries, 6)
