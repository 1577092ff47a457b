"""The two DUL views and the recorded affine: theta must map view-B pixels to the right view-A pixels."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlprop.errors import InputError
from vlprop.train.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentConfig,
    ViewTransform,
    apply_view_transform,
    augment_clip,
    resize_smallest_side,
    sample_view_transform,
    view_theta,
)
from vlprop.train.methods.dul import warp_to_view_b


def _warp(img: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    grid = F.affine_grid(theta[None], [1, *img.shape], align_corners=False)
    return F.grid_sample(img[None], grid, mode=mode, padding_mode="border", align_corners=False)[0]


def test_theta_of_a_pure_flip_maps_column_x_to_w_minus_1_minus_x():
    theta = view_theta(ViewTransform(flip=True, top=0, left=0, height=6, width=10), 6, 10)
    torch.testing.assert_close(theta, torch.tensor([[-1.0, 0, 0], [0, 1.0, 0]]))
    img = torch.arange(60.0).view(1, 6, 10)
    torch.testing.assert_close(_warp(img, theta, "nearest"), img.flip(-1))


def test_theta_maps_view_b_pixel_centres_to_the_cropped_view_a_pixels():
    # 2x zoom: crop rows 8..39, cols 16..47 of a 64x64 frame. View-B pixel centre (yb, xb) sits at
    # view-A pixel (top + (yb + 0.5)/2 - 0.5, left + (xb + 0.5)/2 - 0.5).
    H = W = 64
    vt = ViewTransform(flip=False, top=8, left=16, height=32, width=32)
    theta = view_theta(vt, H, W).double()
    for yb, xb in [(0, 0), (10, 63), (63, 5), (31, 32)]:
        nb = torch.tensor([(2 * xb + 1) / W - 1, (2 * yb + 1) / H - 1, 1.0], dtype=torch.float64)
        xa_n, ya_n = theta @ nb
        xa, ya = ((xa_n + 1) * W - 1) / 2, ((ya_n + 1) * H - 1) / 2
        assert float(xa) == pytest.approx(16 + (xb + 0.5) / 2 - 0.5, abs=1e-9)
        assert float(ya) == pytest.approx(8 + (yb + 0.5) / 2 - 0.5, abs=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_warping_view_a_with_theta_reproduces_view_b(seed):
    rng = np.random.default_rng(seed)
    H, W = 48, 64
    a = torch.from_numpy(rng.random((2, 3, H, W))).float()
    cfg = AugmentConfig(crop=48, zoom_range=(0.5, 1.0))
    vt = sample_view_transform(H, W, rng, cfg)
    b = apply_view_transform(a, vt)
    theta = view_theta(vt, H, W)
    for t in range(2):
        warped = _warp(a[t], theta)
        # interpolate() clamps at the crop border where grid_sample reads the neighbouring view-A
        # pixel, so compare away from the one-pixel border.
        torch.testing.assert_close(warped[:, 1:-1, 1:-1], b[t][:, 1:-1, 1:-1], atol=1e-5, rtol=0)


def test_flipped_and_zoomed_view_maps_a_marker_back_to_its_view_a_position():
    H = W = 32
    a = torch.zeros(1, 1, H, W)
    a[0, 0, 10, 20] = 1.0  # marker in view A (flipped column 11, inside the crop)
    vt = ViewTransform(flip=True, top=4, left=6, height=16, width=16)
    theta = view_theta(vt, H, W)
    # Nearest warp of view A into view B and back-projection of the view-B marker position.
    b = warp_to_view_b(a, theta[None])[0, 0]
    ys, xs = torch.nonzero(b, as_tuple=True)
    assert len(ys) == 4  # 2x zoom: the marker covers 2x2 view-B pixels
    for yb, xb in zip(ys.tolist(), xs.tolist()):
        xa = W - 1 - (6 + (xb + 0.5) * 16 / W - 0.5)  # crop in the flipped frame, then unflip
        ya = 4 + (yb + 0.5) * 16 / H - 0.5
        assert round(xa) == 20 and round(ya) == 10


def test_augment_clip_applies_one_transform_to_all_frames_and_normalises():
    rng = np.random.default_rng(3)
    frames = [Image.fromarray(rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)) for _ in range(4)]
    cfg = AugmentConfig(crop=32, smallest_range=(36, 40))
    out = augment_clip(frames, np.random.default_rng(11), cfg)
    assert out["view_a"].shape == out["view_b"].shape == (4, 3, 32, 32)
    assert out["theta"].shape == (2, 3)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    a = out["view_a"] * std + mean
    b = out["view_b"] * std + mean
    assert 0 <= float(a.min()) and float(a.max()) <= 1 + 1e-6
    warped = torch.stack([_warp(a[t], out["theta"]) for t in range(4)])
    torch.testing.assert_close(warped[..., 1:-1, 1:-1], b[..., 1:-1, 1:-1], atol=1e-5, rtol=0)
    # Same seed -> same clip (augmentation is a pure function of the generator).
    again = augment_clip(frames, np.random.default_rng(11), cfg)
    assert torch.equal(again["view_b"], out["view_b"]) and torch.equal(again["theta"], out["theta"])


def test_resize_smallest_side_keeps_aspect_and_config_rejects_zoom_out():
    im = Image.new("RGB", (455, 256))
    assert resize_smallest_side(im, 128).size == (227, 128)
    assert resize_smallest_side(Image.new("RGB", (100, 200)), 50).size == (50, 100)
    with pytest.raises(InputError):
        AugmentConfig(crop=64, zoom_range=(0.5, 1.5))
    with pytest.raises(InputError):
        AugmentConfig(crop=64, smallest_range=(32, 64))
