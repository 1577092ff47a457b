"""Dense CRF (vlprop.tasks.crf): hand-computed mean-field steps, edge snapping, agreement with pydensecrf."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vlprop.errors import InputError
from vlprop.tasks.crf import CRFParams, dense_crf, pydensecrf_available, refine_binary, unary_from_probability


def _dense_reference(img: np.ndarray, unary: np.ndarray, sxy: float, srgb: float, w: float, iters: int) -> np.ndarray:
    """Direct transcription of the mean-field update with the full N x N bilateral kernel (no truncation)."""
    H, W = img.shape[:2]
    C = unary.shape[0]
    ys, xs = np.mgrid[0:H, 0:W]
    pos = np.stack([ys.ravel(), xs.ravel()], 1).astype(np.float64)
    col = img.reshape(-1, 3).astype(np.float64)
    d2p = ((pos[:, None] - pos[None]) ** 2).sum(-1)
    d2c = ((col[:, None] - col[None]) ** 2).sum(-1)
    k = np.exp(-d2p / (2 * sxy ** 2) - d2c / (2 * srgb ** 2))
    np.fill_diagonal(k, 0.0)
    n = 1.0 / np.sqrt(k.sum(1))
    u = unary.reshape(C, -1).astype(np.float64)
    q = np.exp(-u) / np.exp(-u).sum(0)
    for _ in range(iters):
        m = n[None] * ((q * n[None]) @ k.T)
        e = -u + w * m
        q = np.exp(e - e.max(0)) / np.exp(e - e.max(0)).sum(0)
    return q.reshape(C, H, W)


def test_two_pixel_mean_field_step_matches_hand_computation():
    # Two same-colour pixels: k12 = exp(-1/(2 sxy^2)), n1 = n2 = k12^-1/2, so the message to pixel 1 is Q_2.
    img = np.zeros((1, 2, 3), np.uint8)
    prob = np.array([[0.5, 0.9]])
    q = dense_crf(img, unary_from_probability(prob), CRFParams(sxy=3, srgb=5, compat=1.0, iterations=1,
                                                                 downsample=1, truncate=10))
    # pixel 1: Q ∝ 0.5 exp(1 * (0.1, 0.9)) -> fg = 1 / (1 + exp(-0.8))
    assert q[1, 0, 0].item() == pytest.approx(1 / (1 + math.exp(-0.8)), abs=1e-6)
    # pixel 2: Q ∝ (0.1 e^0.5, 0.9 e^0.5) -> unchanged 0.9
    assert q[1, 0, 1].item() == pytest.approx(0.9, abs=1e-6)


def test_mean_field_equals_full_dense_kernel_when_the_window_covers_the_image():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 40, size=(5, 6, 3)).astype(np.uint8)
    unary = -np.log(rng.dirichlet([1, 1, 1], size=(5, 6)).transpose(2, 0, 1))
    got = dense_crf(img, torch.from_numpy(unary).float(),
                    CRFParams(sxy=2.0, srgb=20.0, compat=3.0, iterations=4, downsample=1, truncate=4.5))
    want = _dense_reference(img, unary, 2.0, 20.0, 3.0, 4)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)


def _two_colour(h: int, w: int, edge: int) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :edge] = (200, 40, 40)
    img[:, edge:] = (40, 40, 200)
    return img


@pytest.mark.parametrize("h, w, edge, sxy, down", [(24, 40, 20, 5.0, 1), (40, 90, 47, 25.0, 5)])
def test_crf_snaps_a_blurry_mask_to_the_colour_edge(h, w, edge, sxy, down):
    img = _two_colour(h, w, edge)
    cols = np.arange(w, dtype=np.float64)
    # a blurry ramp whose 0.5 crossing is 6 pixels left of the true edge
    prob = np.clip(0.5 + (cols - (edge - 6)) / (w * 0.8), 0.05, 0.95)[None].repeat(h, 0)
    assert ((prob > 0.5) != (cols >= edge)[None]).sum() > 0  # the input is wrong near the edge
    mask = refine_binary(img, prob, CRFParams(sxy=sxy, srgb=5, compat=5, iterations=10, downsample=down), limit=0.2)
    np.testing.assert_array_equal(mask, np.broadcast_to(cols >= edge, (h, w)))


def test_unary_clamps_probabilities_to_the_limit():
    u = unary_from_probability(np.array([[0.0, 1.0, 0.5]]), limit=0.2)
    np.testing.assert_allclose(torch.exp(-u).numpy()[:, 0], [[0.8, 0.2, 0.5], [0.2, 0.8, 0.5]], atol=1e-6)


def test_bad_crf_inputs_raise_clear_errors():
    with pytest.raises(InputError, match="RGB"):
        dense_crf(np.zeros((4, 4)), torch.zeros(2, 4, 4))
    with pytest.raises(InputError, match="unary is 5x4"):
        dense_crf(np.zeros((4, 4, 3)), torch.zeros(2, 4, 5))
    with pytest.raises(InputError, match="backend"):
        dense_crf(np.zeros((4, 4, 3)), torch.zeros(2, 4, 4), backend="gpu")
    with pytest.raises(InputError, match="limit"):
        unary_from_probability(np.zeros((2, 2)), limit=0.7)


@pytest.mark.skipif(not pydensecrf_available(), reason="pydensecrf2 is not installed (pip install 'vlprop[crf]')")
def test_torch_crf_agrees_with_pydensecrf_on_a_noisy_two_colour_image():
    rng = np.random.default_rng(1)
    h, w, edge = 60, 80, 37
    img = np.clip(_two_colour(h, w, edge).astype(np.int16) + rng.integers(-3, 4, (h, w, 3)), 0, 255).astype(np.uint8)
    cols = np.arange(w)
    prob = np.clip(0.5 + (cols - 30) / 60.0, 0.05, 0.95)[None].repeat(h, 0) + rng.normal(0, 0.1, (h, w))
    prob = np.clip(prob, 0, 1)
    params = CRFParams(sxy=6, srgb=5, compat=5, iterations=10, downsample=1)
    u = unary_from_probability(prob, 0.2)
    ours = dense_crf(img, u, params)
    ref = dense_crf(img, u, params, backend="pydensecrf")
    agree = ((ours[1] > ours[0]) == (ref[1] > ref[0])).float().mean().item()
    assert agree > 0.99
    assert (ours - ref).abs().mean().item() < 0.05
