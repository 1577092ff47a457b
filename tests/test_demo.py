"""The demo video: photographs composed with known motion, exact masks, occlusions."""
from __future__ import annotations

import numpy as np

from vlprop.demo import _ellipse, natural_video


def test_natural_video_is_deterministic_with_exact_full_masks_on_the_first_frame():
    a, b = natural_video(num_frames=6), natural_video(num_frames=6)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.masks, b.masks)
    assert a.frames.shape == (6, 240, 320, 3) and a.frames.dtype == np.uint8 and a.ids == [1, 2]
    # frame 0: both objects fully visible, their masks are the cut-out shapes
    ch = int(round(0.42 * 240))
    cw = int(round(0.42 * 240 * 300 / 230))
    d = int(round(0.36 * 240)) | 1
    assert (a.masks[0] == 1).sum() == _ellipse(ch, cw).sum()
    assert (a.masks[0] == 2).sum() == _ellipse(d, d).sum()
    # a natural image, not flat noise: strong local contrast inside the objects and the scene
    assert a.frames[0].std() > 40


def test_natural_video_has_a_camera_pan_and_partial_occlusions():
    v = natural_video(num_frames=40)
    cat = (v.masks == 1).reshape(40, -1).sum(1)
    full = cat[0]
    assert cat.min() < 0.9 * full            # the cup and the post hide part of the cat ...
    assert cat.min() > 0.5 * full            # ... partially
    # the background moves: a pixel column of pure scene shifts by the pan between frames 0 and 1
    row0, row1 = v.frames[0, 5, :, :].astype(int), v.frames[1, 5, :, :].astype(int)
    assert np.abs(row0[2:200] - row1[:198]).mean() < np.abs(row0[:198] - row1[:198]).mean()
    # masks change where the objects move
    assert not np.array_equal(v.masks[0], v.masks[-1])
