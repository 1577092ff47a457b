"""The evaluation runner's pieces: labels given to the propagator, sharding, settings hashes, late-object scoring."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from vlprop.demo import synthetic_video
from vlprop.errors import CheckpointError, InputError
from vlprop.eval.datasets import VOSSequence, read_folder
from vlprop.eval.distributed import Ranks, ranks_from_env, shard
from vlprop.eval.runner import (
    ModelSpec,
    _Job,
    _score_late_sequence,
    input_masks,
    label_frames,
    load_sequences,
    run_settings,
    score_predictions,
    settings_hash,
    submission_order,
)
from vlprop.eval.score import score_sequences
from vlprop.io.masks import write_mask


def _write_folder_dataset(root, videos: dict[str, tuple], sparse: dict[str, list[int]] | None = None):
    """``videos``: name -> (frames [T,H,W,3], masks [T,H,W]); ``sparse``: name -> annotated frame indices."""
    for name, (frames, masks) in videos.items():
        (root / "JPEGImages" / name).mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / name).mkdir(parents=True, exist_ok=True)
        for t, img in enumerate(frames):
            Image.fromarray(img).save(root / "JPEGImages" / name / f"{t:05d}.jpg", quality=95)
            if sparse is None or name not in sparse or t in sparse[name]:
                write_mask(root / "Annotations" / name / f"{t:05d}.png", masks[t])


@pytest.fixture
def late_object_folder(tmp_path):
    vid = synthetic_video(num_frames=6, height=48, width=64, seed=3, appear_at={2: 3})
    masks = vid.masks.copy()
    masks[0, :2, :] = 255  # a void strip on the first frame
    _write_folder_dataset(tmp_path, {"late": (vid.frames, masks)})
    return tmp_path, vid, masks


def test_each_object_is_given_on_its_first_frame_only(late_object_folder):
    root, vid, masks = late_object_folder
    (seq,) = load_sequences("folder", root)
    assert dict(seq.objects) == {1: 0, 2: 3}
    assert label_frames(seq, "appearance") == (0, 3)
    given = input_masks(seq, "appearance")
    assert sorted(given) == [0, 3]
    # frame 0: object 1 and the void strip; frame 3: object 2 only (object 1's later GT must not leak in)
    assert np.array_equal(given[0], masks[0])
    assert np.array_equal(given[3], np.where(vid.masks[3] == 2, 2, 0))
    assert given[3].dtype == np.uint8
    # the DAVIS protocol gives the whole first annotated frame and nothing else
    first = input_masks(seq, "first")
    assert sorted(first) == [0] and np.array_equal(first[0], masks[0])


def test_an_object_missing_from_its_announced_first_frame_is_an_error_naming_the_file(late_object_folder):
    root, vid, masks = late_object_folder
    (seq,) = load_sequences("folder", root)
    broken = VOSSequence(seq.name, seq.frames, seq.annotations, {1: 0, 2: 2}, seq.mask_encoding)
    with pytest.raises(InputError, match=r"object\(s\) \[2\].*00002\.png"):
        input_masks(broken, "appearance")
    unannotated = VOSSequence(seq.name, seq.frames, (seq.annotations[0], None) + seq.annotations[2:],
                              {1: 0, 2: 1}, seq.mask_encoding)
    with pytest.raises(InputError, match=r"first appear on frame .*00001\.jpg.*no annotation"):
        input_masks(unannotated, "appearance")


def test_max_frames_cuts_sequences_and_forgets_objects_that_start_later(late_object_folder):
    root, _, _ = late_object_folder
    (seq,) = load_sequences("folder", root, max_frames=3)
    assert len(seq) == 3 and seq.frame_names == ("00000", "00001", "00002")
    assert dict(seq.objects) == {1: 0}
    with pytest.raises(InputError, match="at least 1"):
        load_sequences("folder", root, max_frames=0)
    with pytest.raises(InputError, match="nope.*available: late"):
        load_sequences("folder", root, names=["nope"])


def test_sequences_are_sharded_round_robin_in_dataset_order():
    items = list("abcdefg")
    assert shard(items, Ranks(0, 3)) == ["a", "d", "g"]
    assert shard(items, Ranks(1, 3)) == ["b", "e"]
    assert shard(items, Ranks(2, 3)) == ["c", "f"]
    assert sorted(sum((shard(items, Ranks(r, 3)) for r in range(3)), [])) == items
    assert shard(items, Ranks()) == items


def test_worker_pool_gets_the_longest_sequences_first_ties_in_dataset_order(tmp_path):
    def seq(name, n):
        return VOSSequence(name, tuple(tmp_path / f"{t:05d}.jpg" for t in range(n)), (None,) * n)

    lengths = {"a": 50, "b": 80, "c": 84, "d": 75, "e": 104, "f": 80}
    jobs = [_Job(seq(n, k), "semi", tmp_path, "h", {}, 0) for n, k in lengths.items()]
    assert [j.sequence.name for j in submission_order(jobs)] == ["e", "c", "b", "f", "d", "a"]
    assert [j.sequence.name for j in jobs] == list("abcdef")  # the caller's list is untouched


def test_sequences_are_sharded_by_frame_count_longest_first_to_the_least_loaded_rank():
    cost = {"a": 5, "b": 4, "c": 3, "d": 3, "e": 3}.__getitem__
    items = list("abcde")
    assert shard(items, Ranks(0, 2), cost) == ["a", "d"]         # 5 + 3
    assert shard(items, Ranks(1, 2), cost) == ["b", "c", "e"]    # 4 + 3 + 3 (round robin: 11 vs 7)
    lengths = [50, 80, 84, 75, 104, 60, 52, 50, 49, 80]  # the DAVIS-2016 val-dev videos
    shares = [shard(list(range(10)), Ranks(r, 2), lengths.__getitem__) for r in range(2)]
    assert sorted(shares[0] + shares[1]) == list(range(10))
    # by hand: 104->r0, 84->r1, 80->r1, 80->r0, 75->r1, 60->r0, 52->r1, 50->r0, 50->r1, 49->r0;
    # round robin would give 339 / 345 frames
    assert [sum(lengths[i] for i in s) for s in shares] == [343, 341]
    assert shard(items, Ranks(), cost) == items


def test_rank_layout_comes_from_the_torchrun_environment(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert ranks_from_env() == Ranks()
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    r = ranks_from_env()
    assert (r.rank, r.world_size, r.local_rank, r.local_world_size, r.is_main) == (3, 4, 1, 2, False)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(RuntimeError, match="outside"):
        ranks_from_env()


def test_settings_hash_follows_what_changes_predictions(tmp_path):
    base = run_settings(ModelSpec(preset="crw", weights="random", seed=0), "folder", "appearance", None)
    same = run_settings(ModelSpec(preset="crw", weights="random", seed=0, device="cuda"), "folder", "appearance", None)
    assert settings_hash(base) == settings_hash(same)  # the device does not enter the hash
    for other in (run_settings(ModelSpec(preset="dul", weights="random"), "folder", "appearance", None),
                  run_settings(ModelSpec(preset="crw", weights="random", seed=1), "folder", "appearance", None),
                  run_settings(ModelSpec(preset="crw", weights="random", overrides=(("topk", 5),)), "folder",
                               "appearance", None),
                  run_settings(ModelSpec(preset="crw", weights="random"), "folder", "appearance", 10)):
        assert settings_hash(other) != settings_hash(base)
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"not really a checkpoint, only hashed here")
    rec = ModelSpec(weights=str(ckpt)).weights_record()
    assert rec["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert rec["path"] == str(ckpt.resolve())
    moved = tmp_path / "sub" / "w.pt"
    moved.parent.mkdir()
    moved.write_bytes(ckpt.read_bytes())
    assert settings_hash(run_settings(ModelSpec(weights=str(ckpt)), "folder", "first", None)) == \
        settings_hash(run_settings(ModelSpec(weights=str(moved)), "folder", "first", None))
    with pytest.raises(CheckpointError, match="missing.pt"):
        ModelSpec(weights=str(tmp_path / "missing.pt")).weights_record()


def _random_predictions(pred_root, seq, ids, seed):
    rng = np.random.default_rng(seed)
    for t, name in enumerate(seq.frame_names):
        gt = seq.read_mask(t)
        pred = gt.copy()
        pred[pred == 255] = 0
        # corrupt blocks so J and F are neither 0 nor 1
        for _ in range(4):
            y, x = rng.integers(0, gt.shape[0] - 8), rng.integers(0, gt.shape[1] - 8)
            pred[y:y + 8, x:x + 8] = rng.choice([0] + list(ids))
        write_mask(pred_root / seq.name / f"{name}.png", pred)


def test_late_object_scoring_equals_the_official_protocol_for_first_frame_objects(tmp_path):
    vid = synthetic_video(num_frames=7, height=48, width=64, seed=5)
    _write_folder_dataset(tmp_path / "ds", {"s": (vid.frames, vid.masks)})
    (seq,) = read_folder(tmp_path / "ds")
    _random_predictions(tmp_path / "pred", seq, vid.ids, seed=0)
    official = score_sequences(tmp_path / "pred", [seq]).objects
    ours = _score_late_sequence(tmp_path / "pred", seq, 0.008)
    assert [o.object_id for o in ours] == [o.object_id for o in official] == [1, 2]
    for a, b in zip(ours, official):
        assert a.frames == b.frames == ("00001", "00002", "00003", "00004", "00005")
        np.testing.assert_allclose(a.J, b.J, rtol=0, atol=1e-12)
        np.testing.assert_allclose(a.F, b.F, rtol=0, atol=1e-12)
        assert 0 < a.J.mean() < 1


def test_objects_appearing_later_are_scored_from_their_first_frame_on(late_object_folder, tmp_path):
    root, vid, masks = late_object_folder
    (seq,) = load_sequences("folder", root)
    for t, name in enumerate(seq.frame_names):  # perfect predictions
        write_mask(tmp_path / "pred" / seq.name / f"{name}.png", np.where(masks[t] == 255, 0, masks[t]))
    res = score_predictions(tmp_path / "pred", [seq])
    by_id = {o.object_id: o for o in res.objects}
    assert by_id[1].frames == ("00001", "00002", "00003", "00004")
    assert by_id[2].frames == ("00004",)
    assert res.global_metrics()["J&F-Mean"] == 1.0
    # an empty prediction for object 2 after its appearance scores 0 on its frames only
    write_mask(tmp_path / "pred" / seq.name / "00004.png", np.where(vid.masks[4] == 2, 0, vid.masks[4]))
    res = score_predictions(tmp_path / "pred", [seq])
    by_id = {o.object_id: o for o in res.objects}
    assert by_id[2].J.tolist() == [0.0] and by_id[1].J.min() == 1.0
