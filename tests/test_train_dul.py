"""DUL loss terms on hand-checkable tensors, the anchor grid, gradients and parameter groups."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from test_train_support import TinyBackbone
from vlprop.errors import InputError
from vlprop.train.augment import ViewTransform, view_theta
from vlprop.train.methods.dul import (
    DUL,
    DULConfig,
    build_optimizer,
    cross_view_loss,
    grid_index,
    grid_positions,
    parameter_groups,
    pseudo_labels,
    sample_grid,
    space_time_loss,
    warp_to_view_b,
)


def _unit(*shape, seed=0, dim=1):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=dim)


# ------------------------------------------------------------------ anchor grid
def test_grid_positions_equal_dul_grid_when_divisible():
    u = torch.tensor([0.0, 0.3, 0.999])
    pos = grid_positions(32, 8, u)  # step 4: DUL samples i*4 + randint(0, 4)
    expected = torch.arange(0, 32, 4)[None] + torch.floor(u[:, None] * 4).long()
    assert torch.equal(pos, expected)


@pytest.mark.parametrize("length,n", [(10, 4), (13, 8), (9, 8), (7, 7)])
def test_grid_positions_cover_one_cell_each_for_sizes_not_divisible_by_n(length, n):
    edges = [(i * length) // n for i in range(n + 1)]
    for u in (0.0, 0.25, 0.5, 0.75, 0.9999):
        pos = grid_positions(length, n, torch.tensor([u]))[0].tolist()
        assert len(set(pos)) == n
        for i, p in enumerate(pos):
            assert edges[i] <= p < edges[i + 1]
    assert grid_positions(length, n, torch.tensor([0.0]))[0].tolist() == edges[:-1]
    assert grid_positions(length, n, torch.tensor([0.9999]))[0].tolist() == [e - 1 for e in edges[1:]]


def test_grid_smaller_than_map_is_a_clear_error():
    with pytest.raises(InputError, match="smaller than the anchor grid"):
        grid_positions(4, 8, torch.tensor([0.5]))


def test_sample_grid_picks_features_at_the_flat_indices():
    feats = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    index = grid_index(4, 5, 2, torch.tensor([0.0, 0.99]), torch.tensor([0.0, 0.99]))
    # clip 0 at cell starts (rows 0,2; cols 0,2); clip 1 at cell ends (rows 1,3; cols 1,4)
    assert index.tolist() == [[0, 2, 10, 12], [6, 9, 16, 19]]
    picked = sample_grid(feats, index)
    assert picked.shape == (8, 3)
    assert torch.equal(picked[5], feats[1, :, 1, 4])  # clip 1, second point: (y=1, x=4)


# ------------------------------------------------------------------ losses
def test_space_time_loss_matches_hand_computed_cross_entropy():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # two anchors (two clips, one anchor each)
    student = torch.tensor([[1.0, 0.0], [0.6, 0.8]]).t().reshape(1, 2, 1, 2)  # 2 pixels
    pseudo = torch.tensor([[[0, 1]]])
    tau = 0.5
    # pixel 0: logits (2, 0), target 0; pixel 1: logits (1.2, 1.6), target 1
    expected = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(1.2 - 1.6))) / 2
    assert float(space_time_loss(student, pseudo, anchors, tau)) == pytest.approx(expected, rel=1e-6)


def test_pseudo_labels_equal_argmax_of_block_masked_softmax_over_all_anchors():
    b, t, K, h, w, P = 3, 2, 8, 4, 5, 4
    keys_b = _unit(b, t, K, h, w, seed=1, dim=2)
    anchors = _unit(b, P, K, seed=2, dim=2)
    got = pseudo_labels(keys_b, anchors)
    # Reference (DUL, Eq. 2): softmax over all b*P anchors, multiplied by the same-clip block mask.
    all_anchors = anchors.reshape(b * P, K)
    logits = torch.einsum("btkhw,ak->bthwa", keys_b, all_anchors) / 0.05
    mask = torch.zeros(b, 1, 1, 1, b * P)
    for c in range(b):
        mask[c, ..., c * P:(c + 1) * P] = 1
    expected = (logits.softmax(-1) * mask).argmax(-1)
    assert torch.equal(got, expected)
    assert got.min() >= 0 and got.max() < b * P
    # Labels always point at anchors of the pixel's own clip; ``first_clip`` shifts them (distributed).
    assert all(((got[c] // P) == c).all() for c in range(b))
    assert torch.equal(pseudo_labels(keys_b, anchors, first_clip=2), got + 2 * P)


def test_cross_view_loss_is_minimal_when_views_match_under_the_recorded_transform():
    b, K, h, w = 2, 32, 8, 8
    ref_a = _unit(b, K, h, w, seed=3)
    vt = ViewTransform(flip=True, top=1, left=2, height=6, width=6)
    theta = view_theta(vt, h, w)[None].expand(b, 2, 3)
    # view-B features equivariant to the transform: exactly view A resampled with theta
    ref_b = warp_to_view_b(ref_a, theta)
    aligned_a = warp_to_view_b(ref_a, theta)
    index = grid_index(h, w, 4, torch.tensor([0.3, 0.7]), torch.tensor([0.5, 0.1]))
    matched = float(cross_view_loss(aligned_a, ref_b, index, tau=0.05))
    # Same view-B features compared with *unaligned* view A, or with a wrong transform.
    unaligned = float(cross_view_loss(ref_a, ref_b, index, tau=0.05))
    wrong_theta = view_theta(ViewTransform(False, 1, 2, 6, 6), h, w)[None].expand(b, 2, 3)
    wrong = float(cross_view_loss(warp_to_view_b(ref_a, wrong_theta), ref_b, index, tau=0.05))
    assert matched < 1e-3  # diagonal logit 1/tau = 20 vs ~N(0, 1/sqrt(32))/tau off-diagonal
    assert unaligned > 1.0 and wrong > 1.0
    # Hand check of the formula (float64): CE with diagonal targets over the 2*16 grid points.
    a64, b64 = aligned_a.double(), ref_b.double()
    ra, rb = sample_grid(a64, index), sample_grid(b64, index)
    logits = ra @ rb.t() / 0.05
    expected = -(logits.diag() - logits.logsumexp(1)).mean()
    assert float(cross_view_loss(a64, b64, index, tau=0.05)) == pytest.approx(float(expected), rel=1e-9)


def _batch(b=2, T=3, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    va = torch.randn(b, T, 3, size, size, generator=g)
    vt = ViewTransform(flip=True, top=8, left=16, height=40, width=40)
    theta = view_theta(vt, size, size)
    vb = torch.stack([F.grid_sample(va[i], F.affine_grid(theta[None].expand(T, 2, 3), [T, 3, size, size],
                                                         align_corners=False), align_corners=False)
                      for i in range(b)])
    return {"view_a": va, "view_b": vb, "theta": theta[None].expand(b, 2, 3).clone(),
            "anchor_u": torch.rand(b, 4, generator=g)}


def test_dul_loss_gradient_reaches_view_a_and_reference_but_not_stop_grad_frames():
    method = DUL(DULConfig(key_dim=16, grid=4, grid_ref=2))
    torch.manual_seed(0)
    net = method.build(TinyBackbone()).train()
    batch = _batch()
    batch["view_a"].requires_grad_(True)
    batch["view_b"].requires_grad_(True)
    out = method.loss(net, batch)
    assert set(out) == {"loss", "temp", "cross"}
    total = float(out["loss"].detach())
    assert total == pytest.approx(float(out["temp"]) + 0.1 * float(out["cross"]), rel=1e-6)
    out["loss"].backward()
    gb = batch["view_b"].grad
    assert gb[:, 1:].abs().max() == 0  # regularising branch, frames 1..T-1: no gradient
    assert gb[:, 0].abs().max() > 0    # reference frame of view B: cross-view term
    assert batch["view_a"].grad.abs().max() > 0


def test_dul_loss_runs_on_feature_maps_not_divisible_by_the_grid():
    # 56x72 input -> 7x9 features; N=4 (DUL's index arithmetic crashes here).
    method = DUL(DULConfig(key_dim=16, grid=4, grid_ref=3))
    torch.manual_seed(0)
    net = method.build(TinyBackbone()).train()
    g = torch.Generator().manual_seed(1)
    batch = {"view_a": torch.randn(2, 2, 3, 56, 72, generator=g), "view_b": torch.randn(2, 2, 3, 56, 72, generator=g),
             "theta": torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3),
             "anchor_u": torch.rand(2, 4, generator=g)}
    out = method.loss(net, batch)
    assert torch.isfinite(out["loss"])
    # 2 clips x 16 anchors: the loss starts near the uniform value, within a factor of a few.
    assert 0.1 < float(out["temp"]) < 10 * math.log(32)


def test_parameter_groups_double_lr_for_biases_without_weight_decay():
    method = DUL(DULConfig(key_dim=16))
    net = method.build(TinyBackbone())
    groups = parameter_groups(net, lr=1e-4, weight_decay=5e-4)
    weights, biases = groups
    assert (weights["lr"], weights["weight_decay"]) == (1e-4, 5e-4)
    assert (biases["lr"], biases["weight_decay"]) == (2e-4, 0.0)
    names = {id(p): n for n, p in net.named_parameters()}
    assert all(names[id(p)].endswith("bias") for p in biases["params"])
    assert all(not names[id(p)].endswith("bias") for p in weights["params"])
    assert "head.bn1.weight" in {names[id(p)] for p in weights["params"]}  # BN scales are decayed
    assert len(weights["params"]) + len(biases["params"]) == len(list(net.parameters()))
    opt = build_optimizer(net)
    assert opt.defaults["betas"] == (0.5, 0.999)
