"""Zero-shot mask initialisation (vlprop.tasks.zero_shot): head selection, mass threshold, planted attention
and planted CAM evidence, the centre prior, and zero-shot propagation of a synthetic video."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from vlprop.backbones.preprocessing import HALF
from vlprop.errors import InputError
from vlprop.tasks.zero_shot import (
    AttentionSource,
    CamSource,
    CenterPrior,
    InitParams,
    initialise_from_maps,
    initialise_mask,
    make_source,
    mask_iou,
    mass_threshold,
    select_heads,
    upsample_map,
)

RED = (200, 40, 40)
GREY = (128, 128, 128)
# The planted maps are flat over the object, so the DINO threshold needs a high mass fraction to cover it
# (real heads are peaked on object parts); everything else is the default (WALD) setting.
PLANTED = InitParams(percentage=0.9)


def _square_image(h=160, w=240, box=(40, 120, 80, 176)) -> tuple[np.ndarray, np.ndarray]:
    img = np.empty((h, w, 3), np.uint8)
    img[:] = GREY
    y0, y1, x0, x1 = box
    img[y0:y1, x0:x1] = RED
    gt = np.zeros((h, w), bool)
    gt[y0:y1, x0:x1] = True
    return img, gt


def test_mass_threshold_keeps_the_smallest_set_holding_the_fraction():
    a = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])  # sum 10; sorted ascending cumsum 0.1, 0.3, 0.6, 1.0
    np.testing.assert_array_equal(mass_threshold(a, 0.5)[0].numpy(), [[True, True], [False, False]])
    np.testing.assert_array_equal(mass_threshold(a, 0.3)[0].numpy(), [[True, False], [False, False]])
    np.testing.assert_array_equal(mass_threshold(a, 0.85)[0].numpy(), [[True, True], [True, False]])
    assert mass_threshold(a, 0.95).all()  # three values hold only 90%
    assert not mass_threshold(torch.zeros(1, 2, 2), 0.5).any()


def test_head_selection_keeps_concentrated_heads_and_drops_diffuse_ones():
    focused = torch.zeros(4, 4)
    focused[1:3, 1:3] = 0.25  # 4 tokens hold all the attention: median inside its mask 0.25
    uniform = torch.full((4, 4), 1 / 16)  # mask = 8 tokens of 1/16: median 0.0625
    half = torch.zeros(4, 4)
    half[:2] = 1 / 8  # mask = 4 tokens of 1/8: median 0.125
    keep = select_heads(torch.stack([uniform, focused, half, uniform]), quantile=0.5, percentage=0.5)
    # medians (0.0625, 0.25, 0.125, 0.0625): the 0.5 quantile is 0.09375
    assert keep.tolist() == [False, True, True, False]
    assert select_heads(torch.stack([uniform, focused, half]), quantile=1.0).tolist() == [False, True, False]
    assert select_heads(torch.stack([uniform, focused]), quantile=0.0).tolist() == [True, True]


class _PlantedViT(nn.Module):
    """ViT-like: patch keys = mean normalised colour of each 8x8 patch plus a positional term, per-head CLS
    query planted; the CLS attention is a real softmax over the patch tokens. Heads 0-1 look for red
    near the middle of the frame (peaked on the object, as DINO heads are), heads 2-3 are diffuse."""

    stride = 8
    patch_size = 8
    preprocessing = HALF

    def __init__(self):
        super().__init__()
        self.q = torch.tensor([[6.0, -6.0, -6.0, 3.0], [4.0, -4.0, -4.0, 2.0], [0.0, 0.0, 0.0, 0.0],
                               [-0.3, 0.3, 0.3, 0.0]])

    def last_attention(self, x: torch.Tensor) -> torch.Tensor:
        k = F.avg_pool2d(x, 8)  # [B, 3, h, w]
        b, _, h, w = k.shape
        gy = (torch.arange(h) - (h - 1) / 2) / h
        gx = (torch.arange(w) - (w - 1) / 2) / w
        centre = torch.exp(-(gy[:, None] ** 2 + gx[None] ** 2) / (2 * 0.15 ** 2))  # a positional "embedding"
        k = torch.cat([k, centre.expand(b, 1, h, w)], 1)
        logits = torch.einsum("sc,bchw->bshw", self.q, k)
        return logits.flatten(2).softmax(-1).view(b, -1, h, w)


def test_planted_attention_head_recovers_its_region_through_the_whole_pipeline():
    img, gt = _square_image()
    src = AttentionSource(_PlantedViT(), short_side=None)
    maps = src(img)
    assert tuple(maps.shape) == (4, 20, 30)
    res = initialise_mask(img, src, PLANTED)
    assert res.kept_heads == [0, 1]
    assert mask_iou(res.mask, gt) > 0.99
    # the CRF is what puts the coarse map on the object's edges
    coarse = initialise_from_maps(img, maps, "attention", InitParams(percentage=0.9, refine=False))
    assert mask_iou(coarse.mask, gt) < 0.9


def test_attention_source_rejects_a_network_without_last_attention():
    with pytest.raises(InputError, match="last_attention"):
        AttentionSource(nn.Conv2d(3, 4, 1))


class _PlantedClassifier(nn.Module):
    """Classifier whose only evidence for class 7 is channel 0 = redness of each 8x8 patch."""

    stride = 8
    preprocessing = HALF

    def __init__(self):
        super().__init__()
        w = torch.zeros(10, 3)
        w[7, 0] = 10.0  # class 7 <- red evidence
        w[3, 1] = 1.0  # class 3 <- a constant channel (no spatial evidence)
        self.fc_weight = w
        self.fc_bias = torch.zeros(10)

    def forward_all(self, x):
        p = F.avg_pool2d(x, 8)
        red = (p[:, :1] - p[:, 1:2]).clamp_min(0)  # R - G of the normalised colour
        feats = torch.cat([red, torch.ones_like(red), torch.zeros_like(red)], 1)
        return feats, feats.mean((2, 3)) @ self.fc_weight.T + self.fc_bias


def test_cam_of_the_top_class_recovers_the_planted_evidence():
    img, gt = _square_image()
    src = CamSource(_PlantedClassifier(), topk=2, short_side=None)
    cam = src(img)
    assert tuple(cam.shape) == (1, 20, 30)
    assert src.last_info["classes"] == [7, 3]
    # combined map by hand: p7 * 10 * red + p3 * 1, normalised by p7 + p3
    x = (torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255 - 0.5) / 0.5
    red = F.avg_pool2d(x, 8)[0, 0] - F.avg_pool2d(x, 8)[0, 1]
    logits = torch.zeros(10)
    logits[7] = 10 * red.clamp_min(0).mean()
    logits[3] = 1.0
    p = logits.softmax(0)
    want = (p[7] * 10 * red.clamp_min(0) + p[3]) / (p[7] + p[3])
    np.testing.assert_allclose(cam[0].numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
    res = initialise_mask(img, src, PLANTED)
    assert mask_iou(res.mask, gt) > 0.99


def test_center_prior_is_a_centred_ellipse_covering_a_quarter_of_the_frame():
    m = CenterPrior()(np.zeros((480, 854, 3), np.uint8))
    assert tuple(m.shape) == (1, 480, 854)
    assert m.mean().item() == pytest.approx(0.25, abs=0.002)
    ys, xs = np.nonzero(m[0].numpy())
    assert ys.mean() == pytest.approx(239.5, abs=0.5) and xs.mean() == pytest.approx(426.5, abs=0.5)


def test_upsampling_uses_cell_centres():
    g = np.array([[0.0, 1.0]])
    up = upsample_map(g, 1, 4, order=1)  # pixel centres at grid x = -0.25, 0.25, 0.75, 1.25
    np.testing.assert_allclose(up[0], [0.0, 0.25, 0.75, 1.0])


def test_bad_initialiser_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(InputError, match="unknown mask initialiser"):
        make_source("sam")
    with pytest.raises(InputError, match="DINO checkpoint"):
        make_source("dino")
    with pytest.raises(InputError, match="not found"):
        make_source("dino", weights=tmp_path / "missing.pth")
    with pytest.raises(InputError, match="percentage"):
        InitParams(percentage=0)
    with pytest.raises(InputError, match="non-negative"):
        mass_threshold(-torch.ones(1, 2, 2), 0.5)
    with pytest.raises(InputError, match="RGB uint8"):
        initialise_from_maps(np.zeros((4, 4)), torch.ones(1, 2, 2), "attention")
