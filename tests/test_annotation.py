"""The annotation session: corrections re-anchor exactly, backward/both propagation, cancellation, feature cache."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from vlprop import Propagator
from vlprop.annotation import AnnotationSession
from vlprop.demo import iou, synthetic_video
from vlprop.errors import InputError
from vlprop.geometry import GridGeometry

STRIDE = 8


class PanningFeatures:
    """Synthetic features with known motion: a random field panning left one cell per frame (wrapping).

    Frame ``t`` of the video is an image whose pixel (0, 0) holds ``t``; the extractor returns the field rolled
    by ``t`` cells, so correct propagation moves a mask exactly one cell (8 px) per frame, in either direction.
    """

    batch_size = 4
    stride = STRIDE

    def __init__(self, D=32, h=8, w=24, seed=0):
        self.field = torch.randn(D, h, w, generator=torch.Generator().manual_seed(seed))
        self.calls = 0

    def geometry(self, H, W):
        return GridGeometry.for_frame(H, W, stride=STRIDE)

    def extract_batch(self, frames):
        self.calls += len(frames)
        return torch.stack([torch.roll(self.field, -int(f[0, 0, 0]), dims=2) for f in frames])


def panning_video(T=8, h=8, w=24):
    frames = np.zeros((T, h * STRIDE, w * STRIDE, 3), np.uint8)
    masks = np.zeros((T, h * STRIDE, w * STRIDE), np.uint8)
    for t in range(T):
        frames[t, 0, 0, 0] = t
        cells = np.zeros((h, w), np.uint8)
        cells[2:6, 14:20] = 1
        cells = np.roll(cells, -t, axis=1)
        masks[t] = np.kron(cells, np.ones((STRIDE, STRIDE), np.uint8))
    return frames, masks


def _session(frames, **kw):
    prop = Propagator(preset="crw", extractor=PanningFeatures())
    return AnnotationSession(frames, prop, **kw)


def test_backward_propagation_recovers_the_mask_of_a_video_with_known_motion():
    frames, masks = panning_video()
    sess = _session(frames)
    sess.add_mask(7, masks[7])
    out = {r.index: r.mask for r in sess.propagate("backward")}
    assert sorted(out) == list(range(8))
    for t in range(7):
        assert iou(out[t] == 1, masks[t] == 1) > 0.95, t


def test_both_directions_take_each_frame_from_the_nearer_label():
    frames, masks = panning_video()
    wrong_end = np.roll(masks[7], 24, axis=0)  # a deliberately different label at the end: who wins shows
    sess = _session(frames)
    sess.add_mask(0, masks[0])
    sess.add_mask(7, wrong_end)
    fw = {r.index: r.mask for r in sess.propagate("forward")}
    bw = {r.index: r.mask for r in sess.propagate("backward")}
    both = {r.index: r for r in sess.propagate("both")}
    for t in range(8):
        expected = fw[t] if t - 0 <= 7 - t else bw[t]  # ties (none here: 7 frames apart) go forward
        assert np.array_equal(both[t].mask, expected), t
    assert not np.array_equal(fw[5], bw[5])  # the two directions really disagree there


def test_correction_changes_no_earlier_frame_and_equals_the_run_labelled_from_the_start():
    frames, masks = panning_video()
    prop = Propagator(preset="crw", extractor=PanningFeatures())
    sess = AnnotationSession(frames, prop)
    wrong = masks[0].copy()
    wrong[:16, :16] = 2  # object 2 labelled in the wrong place
    sess.add_mask(0, wrong)
    before = [r for r in sess.propagate("forward")]
    extracted = sess.features.frames_extracted
    assert sess.frames_propagated == 8 and extracted == 8
    k = 4
    fixed = np.zeros_like(masks[k], dtype=bool)
    fixed[40:56, 0:24] = True
    sess.add_mask(k, fixed, obj_id=2)  # correct object 2 on frame 4
    after = list(sess.propagate("forward"))
    assert sess.frames_propagated == 8 + (8 - k)  # only frames k.. were recomputed
    assert sess.features.frames_extracted == extracted  # no feature recomputed
    for t in range(k):
        assert after[t] is before[t]
    assert not np.array_equal(after[k + 1].mask, before[k + 1].mask)
    ann_k = np.where(fixed, 2, 0).astype(np.uint8)
    fresh = AnnotationSession(frames, prop)
    fresh.add_mask(0, wrong)
    fresh.add_mask(k, ann_k)
    ref = list(fresh.propagate("forward"))
    # ... and the streaming Propagator, with both labels from the start, gives the same run
    stream = list(prop.run(frames, masks={0: wrong, k: ann_k}))
    for a, b, c in zip(after, ref, stream):
        assert np.array_equal(a.mask, b.mask) and np.array_equal(a.mask, c.mask)
        assert a.object_ids == b.object_ids == c.object_ids
        assert torch.equal(a.probs, b.probs) and torch.equal(a.probs, c.probs)
    assert iou(after[7].mask == 2, np.roll(fixed, -8 * 3, axis=1)) > 0.95  # the corrected object moves on


def test_backward_correction_recomputes_only_earlier_frames():
    frames, masks = panning_video()
    sess = _session(frames)
    sess.add_mask(7, masks[7])
    first = list(sess.propagate("backward"))
    n = sess.frames_propagated
    sess.add_mask(4, masks[4])
    again = list(sess.propagate("backward"))
    assert sess.frames_propagated == n + 5  # frames 4, 3, ..., 0
    for a, b in zip(first[:3], again[:3]):  # frames 7..5 untouched
        assert a is b


def test_cancel_stops_between_frames_and_a_later_call_resumes_to_the_same_result():
    frames, masks = panning_video()
    ref = _session(frames)
    ref.add_mask(0, masks[0])
    expected = [r.mask for r in ref.propagate("forward")]
    sess = _session(frames)
    sess.add_mask(0, masks[0])
    stop = threading.Event()
    got = []
    for r in sess.propagate("forward", cancel=stop):
        got.append(r.mask)
        if len(got) == 3:
            stop.set()
    assert len(got) == 3
    rest = [r.mask for r in sess.propagate("forward")]
    assert all(np.array_equal(a, b) for a, b in zip(rest, expected))
    assert sess.frames_propagated == 8


def test_features_are_cached_on_disk_by_video_and_model(tmp_path):
    vid = synthetic_video(num_frames=4, height=48, width=64, seed=1, num_objects=1)
    prop = Propagator(preset="crw", weights="random", seed=0)
    a = AnnotationSession(vid.frames, prop, cache_dir=tmp_path, max_memory_bytes=1)
    a.add_mask(0, vid.masks[0])
    ma = a.masks()
    assert a.features.frames_extracted == 4
    b = AnnotationSession(vid.frames, prop, cache_dir=tmp_path)
    b.add_mask(0, vid.masks[0])
    assert all(np.array_equal(x, y) for x, y in zip(ma, b.masks()))
    assert b.features.frames_extracted == 0  # read from disk
    other = AnnotationSession(vid.frames, Propagator(preset="crw", weights="random", seed=1), cache_dir=tmp_path)
    assert other.features.key != a.features.key


def test_session_errors_name_the_problem():
    frames, masks = panning_video(T=3)
    sess = _session(frames)
    with pytest.raises(InputError, match="no labels"):
        list(sess.propagate())
    with pytest.raises(InputError, match="outside the video"):
        sess.add_mask(7, masks[0])
    with pytest.raises(InputError, match="direction"):
        sess.add_mask(0, masks[0]) or list(sess.propagate("sideways"))
    with pytest.raises(InputError, match="but the frame is"):
        sess.add_mask(1, masks[0][:8])


def test_an_error_mid_propagation_leaves_the_session_resumable():
    class FailsOnce(PanningFeatures):
        failed = False

        def extract_batch(self, frames):
            if not self.failed and any(int(f[0, 0, 0]) == 5 for f in frames):
                FailsOnce.failed = True
                raise OSError("disk hiccup")
            return super().extract_batch(frames)

    frames, masks = panning_video()
    ref = _session(frames)
    ref.add_mask(0, masks[0])
    expected = [r for r in ref.propagate("forward")]
    sess = AnnotationSession(frames, Propagator(preset="crw", extractor=FailsOnce()))
    sess.add_mask(0, masks[0])
    with pytest.raises(OSError):
        list(sess.propagate("forward"))
    got = list(sess.propagate("forward"))
    for a, b in zip(got, expected):
        assert np.array_equal(a.mask, b.mask) and torch.equal(a.probs, b.probs)


def test_disk_cache_is_bounded_and_removes_only_its_own_folders(tmp_path):
    frames, masks = panning_video(T=4)
    keep = tmp_path / "notes"
    keep.mkdir()
    (keep / "x.txt").write_text("mine")
    sizes = []
    for seed in (0, 1, 2):
        prop = Propagator(preset="crw", extractor=PanningFeatures(seed=seed))
        prop.extractor.cache_id = f"panning-{seed}"
        sess = AnnotationSession(frames, prop, cache_dir=tmp_path, max_disk_bytes=1)
        sess.add_mask(0, masks[0])
        sess.masks()
        sizes.append(sorted(p.name for p in tmp_path.iterdir()))
    assert all(len(s) == 2 and "notes" in s for s in sizes)  # the newest key folder + the user's folder
    assert (keep / "x.txt").read_text() == "mine"
