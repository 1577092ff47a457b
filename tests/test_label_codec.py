"""Mask codec settings checked against naive implementations written from their definitions:
area / nearest / bilinear encoding onto the feature grid and ``output_minmax`` decoding."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vlprop.geometry import GridGeometry
from vlprop.labels.masks import decode_probs, encode_mask, probs_to_mask


def random_mask(H, W, ids=(1, 2, 5), seed=0):
    rng = np.random.default_rng(seed)
    m = np.zeros((H, W), np.uint8)
    for i in ids:  # a few random rectangles per id
        for _ in range(3):
            y0, x0 = rng.integers(0, H - 2), rng.integers(0, W - 2)
            m[y0:y0 + rng.integers(2, H // 2 + 2), x0:x0 + rng.integers(2, W // 2 + 2)] = i
    return m


def naive_area(mask, ids, stride):
    """Fraction of each cell's in-frame pixels that carry the channel's id (channel 0 = background)."""
    H, W = mask.shape
    h, w = -(-H // stride), -(-W // stride)
    out = np.zeros((1 + len(ids), h, w))
    for gy in range(h):
        for gx in range(w):
            cell = mask[gy * stride:(gy + 1) * stride, gx * stride:(gx + 1) * stride]
            for c, i in enumerate([0, *ids]):
                out[c, gy, gx] = (cell == i).mean()
    return out


def naive_nearest(mask, ids, stride):
    """The pixel nearest to each cell centre ``(g + 0.5) s - 0.5`` (halves round up), clamped to the frame."""
    H, W = mask.shape
    h, w = -(-H // stride), -(-W // stride)
    out = np.zeros((1 + len(ids), h, w))
    for gy in range(h):
        for gx in range(w):
            py = min(int(np.floor((gy + 0.5) * stride - 0.5 + 0.5)), H - 1)
            px = min(int(np.floor((gx + 0.5) * stride - 0.5 + 0.5)), W - 1)
            for c, i in enumerate([0, *ids]):
                out[c, gy, gx] = float(mask[py, px] == i)
    return out


@pytest.mark.parametrize("H,W,stride", [(37, 50, 8), (16, 24, 4), (9, 13, 3)])
def test_area_encoding_is_the_covered_fraction_of_each_cell(H, W, stride):
    mask = random_mask(H, W, seed=H)
    ids = [1, 2, 5]
    got = encode_mask(mask, ids, GridGeometry.for_frame(H, W, stride), mode="area")
    assert np.allclose(got.numpy(), naive_area(mask, ids, stride), atol=1e-6)
    assert np.allclose(got.sum(0).numpy(), 1.0, atol=1e-6)  # fractions of a partition


@pytest.mark.parametrize("H,W,stride", [(37, 50, 8), (16, 24, 4), (9, 13, 3)])
def test_nearest_encoding_picks_the_pixel_at_the_cell_centre(H, W, stride):
    mask = random_mask(H, W, seed=W)
    ids = [1, 2, 5]
    got = encode_mask(mask, ids, GridGeometry.for_frame(H, W, stride), mode="nearest")
    assert np.array_equal(got.numpy(), naive_nearest(mask, ids, stride))


def test_void_pixels_count_for_no_channel_in_area_encoding():
    mask = np.zeros((8, 8), np.uint8)
    mask[:4] = 255  # void top half
    mask[4:, :2] = 1
    got = encode_mask(mask, [1], GridGeometry.for_frame(8, 8, 8), mode="area", void=255)
    assert np.allclose(got[:, 0, 0].numpy(), [24 / 64, 8 / 64])


def naive_decode_minmax(probs, stride, H, W):
    """Bilinear x``stride`` up-sampling (cell centres, align_corners=False), then per channel
    ``(x - min) / (max - min)`` over the frame."""
    C, h, w = probs.shape
    up = np.zeros((C, H, W))
    for y in range(H):
        gy = min(max((y + 0.5) / stride - 0.5, 0.0), h - 1)
        y0 = int(np.floor(gy)); y1 = min(y0 + 1, h - 1); fy = gy - y0
        for x in range(W):
            gx = min(max((x + 0.5) / stride - 0.5, 0.0), w - 1)
            x0 = int(np.floor(gx)); x1 = min(x0 + 1, w - 1); fx = gx - x0
            up[:, y, x] = ((1 - fy) * (1 - fx) * probs[:, y0, x0] + (1 - fy) * fx * probs[:, y0, x1]
                           + fy * (1 - fx) * probs[:, y1, x0] + fy * fx * probs[:, y1, x1])
    mn = up.reshape(C, -1).min(1)[:, None, None]
    mx = up.reshape(C, -1).max(1)[:, None, None]
    return up, (up - mn) / (mx - mn)


def test_output_minmax_rescales_each_channel_before_the_argmax():
    g = torch.Generator().manual_seed(3)
    probs = torch.rand(3, 4, 5, generator=g, dtype=torch.float64)
    probs[1] = 0.2 + 0.1 * probs[1]  # a weak channel that wins only after min-max
    geo = GridGeometry.for_frame(16, 20, 4)
    plain_ref, minmax_ref = naive_decode_minmax(probs.numpy(), 4, 16, 20)
    plain = decode_probs(probs, geo, output_minmax=False)
    scaled = decode_probs(probs, geo, output_minmax=True)
    assert np.allclose(plain.numpy(), plain_ref, atol=1e-5)
    assert np.allclose(scaled.numpy(), minmax_ref, atol=1e-5)
    a = probs_to_mask(plain, [7, 9])
    b = probs_to_mask(scaled, [7, 9])
    assert (a != b).any()  # the setting changes the decision here
    assert np.array_equal(b, np.array([0, 7, 9], np.uint8)[minmax_ref.argmax(0)])


# ----------------------------------------------------------------------------- keypoint re-quantisation
def test_keypoint_recode_is_encode_of_decode():
    from vlprop.labels.keypoints import KeypointCodec, add_background, keypoint_heatmaps

    codec = KeypointCodec(sigma=0.5, decoder="fit")
    geo = GridGeometry.for_frame(80, 96, 8)
    xy = np.array([[20.3, 30.7], [70.1, 12.2], [np.nan, np.nan]])
    clean = codec.encode(xy, None, geo).double()
    assert torch.allclose(codec.recode(clean), clean, atol=1e-6)  # exact decoder: a fixed point
    # a blurred, shifted map: recode draws one clean kernel per keypoint at the decoded grid position
    blurred = 0.6 * clean + 0.4 * torch.roll(clean, shifts=1, dims=2)
    d = codec.decode_grid(blurred.numpy())
    ref = add_background(keypoint_heatmaps(np.where(d.visible[:, None], d.xy, 0), d.visible, (10, 12), 0.5), "binary")
    got = codec.recode(blurred)
    assert np.allclose(got.numpy(), ref, atol=1e-9)
    assert not torch.allclose(got, blurred, atol=1e-3)
    assert float(got[3].abs().max()) == 0.0  # invisible keypoint stays empty


def test_engine_requantizes_keypoint_maps_with_the_codec_not_an_argmax():
    from vlprop.config import PropagationConfig
    from vlprop.labels.keypoints import KeypointCodec
    from vlprop.propagation.engine import PropagationEngine

    codec = KeypointCodec(sigma=0.5, decoder="topk", k=5)
    geo = GridGeometry.for_frame(64, 80, 8)
    labels = codec.encode(np.array([[20.0, 30.0], [50.0, 40.0]]), None, geo).double()
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(4, 8, 8, 10, generator=g, dtype=torch.float64)
    cfg = PropagationConfig(requantize=True, topk=5, window="square", radius=2, context=2)
    eng = PropagationEngine(cfg, dtype=torch.float64, recode=codec.recode)
    eng.reset(feats[0], labels)
    for t in range(1, 4):
        pred = eng.step(feats[t])
        stored = eng._short[-1].labels.reshape(pred.shape)
        assert torch.allclose(stored, codec.recode(pred), atol=1e-12)
        onehot = torch.zeros_like(pred).scatter_(0, pred.argmax(0, keepdim=True), 1.0)
        assert not torch.allclose(stored, onehot)


@pytest.mark.parametrize("C", [1, 2, 3, 7])
def test_channel_argmax_equals_torch_argmax_with_ties_and_minus_inf(C):
    from vlprop.labels.masks import channel_argmax

    g = torch.Generator().manual_seed(C)
    scores = torch.randint(0, 3, (C, 17, 23), generator=g).float()  # many ties: the first maximum wins
    scores[:, 0, :5] = float("-inf")
    if C > 1:
        scores[1, 1, :] = float("-inf")
    assert torch.equal(channel_argmax(scores), scores.argmax(0))
