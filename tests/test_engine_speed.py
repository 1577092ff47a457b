"""The engine's speed work: the exact-work window kernel, device-following buffers, bf16 affinities, GEMM backends.

Every kernel is compared with a naive dense computation (or with the previous kernel) on inputs where the
answer is known; the device tests run the engine on the "meta" device (and on CUDA when present).
"""
from __future__ import annotations

import math

import pytest
import torch
from torch.overrides import TorchFunctionMode

from vlprop.config import PRESETS, PropagationConfig, get_preset
from vlprop.errors import InputError
from vlprop.propagation import affinity
from vlprop.propagation.affinity import (
    WindowWorkspace,
    dense_topk,
    exact_geometry,
    extend_key,
    pad_channels_last,
    query_tiles,
    window_geometry,
    window_offsets,
    window_topk,
    window_topk_exact,
)
from vlprop.propagation.engine import PropagationEngine, propagate_features


def spec_mask(h, w, window, radius):
    """M[target, ref] straight from the spec formulas (square: Chebyshev <= r; disk: strict d^2 < r^2)."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1).double(), xs.reshape(-1).double()
    dy = ys[None, :] - ys[:, None]
    dx = xs[None, :] - xs[:, None]
    if window == "square":
        return torch.maximum(dy.abs(), dx.abs()) <= radius
    return dy ** 2 + dx ** 2 < radius ** 2


def exact_topk(q, key, window, radius, k, tile=8, reduce=None, group=None):
    D, h, w = q.shape
    geo = exact_geometry(h, w, window_offsets(window, radius), tile)
    key_ext = extend_key(key.reshape(D, h * w).t().contiguous())
    return window_topk_exact(query_tiles(q, geo), key_ext, geo, k, reduce=reduce, temperature=0.07, group=group)


def check_against_dense(got, q, key, window, radius, k, reduce=None):
    """Same survivors as a dense masked top-k: equal values; equal indices where a candidate exists."""
    D, h, w = q.shape
    mask = spec_mask(h, w, window, radius)
    a = q.reshape(D, -1).t() @ key.reshape(D, -1)
    a = a.masked_fill(~mask, -math.inf)
    kk = min(k, h * w)
    v, i = torch.topk(a, kk, dim=1)
    n = min(got.values.shape[1], kk)  # the kernel may return more columns than cells exist (all -inf)
    assert not torch.isfinite(v[:, n:]).any(), "dropped a finite candidate"
    assert not torch.isfinite(got.values[:, n:]).any()
    gv, gi = got.values[:, :n], got.index[:, :n]
    assert torch.equal(torch.isfinite(gv), torch.isfinite(v[:, :n]))
    fin = torch.isfinite(v[:, :n])
    assert torch.allclose(gv[fin], v[:, :n][fin], atol=1e-12, rtol=0)
    assert torch.equal(gi[fin], i[:, :n][fin])
    assert ((got.index >= 0) & (got.index < h * w)).all()
    if reduce == "lse":
        assert torch.allclose(got.stat, torch.logsumexp(a / 0.07, 1), atol=1e-9)
    if reduce == "sum":
        assert torch.allclose(got.stat, torch.where(mask, a, torch.zeros(())).sum(1), atol=1e-9)


def rand_maps(D, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(D, h, w, generator=g, dtype=torch.float64), torch.randn(D, h, w, generator=g,
                                                                                dtype=torch.float64)


@pytest.mark.parametrize("window", ["disk", "square"])
@pytest.mark.parametrize("radius", list(range(0, 13)))
def test_exact_kernel_equals_dense_masked_topk(window, radius):
    h, w = (13, 17) if radius % 2 else (9, 23)  # odd sizes, not multiples of the tile
    q, key = rand_maps(6, h, w, seed=radius)
    got = exact_topk(q, key, window, radius, k=10)
    check_against_dense(got, q, key, window, radius, k=10)


@pytest.mark.parametrize("window,radius", [("disk", 2.5), ("disk", 1), ("square", 1), ("square", 3), ("disk", 12)])
def test_exact_kernel_topk_larger_than_window(window, radius):
    """k above the window's cell count: every in-window candidate survives, the rest is -inf."""
    q, key = rand_maps(5, 11, 15, seed=3)
    n_window = int(window_offsets(window, radius).sum())
    for k in (n_window, n_window + 7, 1000):
        got = exact_topk(q, key, window, radius, k=k)
        check_against_dense(got, q, key, window, radius, k=k)


@pytest.mark.parametrize("reduce", ["lse", "sum"])
@pytest.mark.parametrize("tile,group", [(8, None), (8, 1), (5, 3), (4, 100)])
def test_exact_kernel_statistics_tiles_and_groups(reduce, tile, group):
    q, key = rand_maps(7, 19, 21, seed=tile)
    got = exact_topk(q, key, "disk", 4, k=6, tile=tile, reduce=reduce, group=group)
    check_against_dense(got, q, key, "disk", 4, k=6, reduce=reduce)


def test_exact_kernel_agrees_with_patch_kernel_in_float32_and_computes_fewer_cells():
    g = torch.Generator().manual_seed(0)
    D, h, w = 32, 30, 41
    q, key = torch.randn(D, h, w, generator=g), torch.randn(D, h, w, generator=g)
    off = window_offsets("disk", 12)
    pg = window_geometry(h, w, off, 8)
    old = window_topk(query_tiles(q, pg), pad_channels_last(key, pg), pg, 10)
    new = exact_topk(q, key, "disk", 12, k=10)
    assert torch.allclose(old.values, new.values, atol=1e-5, rtol=0)
    assert (old.index == new.index).float().mean() > 0.999
    eg = exact_geometry(h, w, off, 8)
    assert eg.M == 808 < pg.patch ** 2 == 900  # crw disk r<12: cells seen by an 8x8 tile vs its square patch


def _crw_video(T=6, D=24, h=14, w=19, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(D, h, w, generator=g)
    feats = torch.stack([base + 0.3 * torch.randn(D, h, w, generator=g) for _ in range(T)]).to(dtype)
    labels = torch.softmax(3 * torch.randn(3, h, w, generator=g), 0).to(dtype)
    return feats, labels


@pytest.mark.parametrize("name", ["crw", "dul", "dino", "waldmann-davis", "mast", "liir"])
def test_engine_exact_and_patch_kernels_give_the_same_video(name):
    """First-frame-exempt (crw/dul), windowed-first-frame (dino/waldmann) and union (mast/liir) configs."""
    feats, labels = _crw_video(seed=len(name))
    cfg = get_preset(name).propagation
    a = [p for _, p in propagate_features(feats, labels, preset=cfg)]
    eng = PropagationEngine(cfg, window_kernel="patch")
    eng.reset(feats[0], labels)
    b = [eng.step(f) for f in feats[1:]]
    for x, y in zip(a, b):
        assert torch.allclose(x, y, atol=1e-5, rtol=0)
        assert torch.equal(x.argmax(0), y.argmax(0))


def test_window_kernel_setting(monkeypatch):
    assert PropagationEngine("crw").window_kernel == "exact"
    assert PropagationEngine("crw", window_kernel="patch").window_kernel == "patch"
    monkeypatch.setenv("VLPROP_WINDOW_KERNEL", "patch")
    assert PropagationEngine("crw").window_kernel == "patch"
    with pytest.raises(InputError, match="window_kernel"):
        PropagationEngine("crw", window_kernel="fast")
    monkeypatch.setenv("VLPROP_WINDOW_KERNEL", "nope")
    with pytest.raises(InputError, match="VLPROP_WINDOW_KERNEL"):
        PropagationEngine("crw")


def test_window_buffers_are_reused_across_frames():
    feats, labels = _crw_video(T=5, h=20, w=27)
    eng = PropagationEngine("crw")
    eng.reset(feats[0], labels)
    eng.step(feats[1])  # crw: the first frame only, matched densely
    eng.step(feats[2])  # the first windowed match
    ws = eng._window_ws
    ptrs = (ws.keys.data_ptr(), ws.scores.data_ptr())
    for f in feats[3:]:
        eng.step(f)
    assert (ws.keys.data_ptr(), ws.scores.data_ptr()) == ptrs


# ------------------------------------------------------------------------------------------------- devices
class _OffDevice(TorchFunctionMode):
    """Records every torch call that returns a non-scalar tensor off ``device``."""

    def __init__(self, device, allowed=()):
        super().__init__()
        self.device, self.allowed, self.bad = torch.device(device), allowed, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if torch.is_tensor(t) and t.device != self.device and t.dim() > 0 \
                    and not any(t is a for a in self.allowed):
                self.bad.append(getattr(func, "__name__", str(func)))
        return out


# uvc-track reads its boxes back to the host (data-dependent), which the meta device cannot do
META_PRESETS = sorted(p for p in PRESETS if p != "uvc-track")


@pytest.mark.parametrize("kernel", ["exact", "patch"])
@pytest.mark.parametrize("name", META_PRESETS)
def test_engine_takes_its_device_from_the_inputs(name, kernel):
    """On the meta device nothing can be computed on the CPU by mistake: a buffer made without ``device=``
    either fails to mix with meta tensors or is caught by the recorder (after two steps, which may build the
    cached CPU tables of a grid once and move them)."""
    cfg = get_preset(name).propagation
    feats = torch.empty(7, 16, 11, 13, device="meta")
    labels = torch.empty(3, 11, 13, device="meta")
    eng = PropagationEngine(cfg, window_kernel=kernel)
    eng.reset(feats[0], labels)
    eng.step(feats[1])
    eng.step(feats[2])
    with _OffDevice("meta", allowed=(eng._offsets,)) as rec:
        outs = [eng.step(f) for f in feats[3:]]
        eng.predict(feats[0])
    assert rec.bad == []
    assert all(o.device.type == "meta" for o in outs)
    for e in eng.context():
        assert e.flat.device.type == "meta" and e.labels.device.type == "meta"


def test_device_recorder_catches_a_cpu_buffer(monkeypatch):
    """The recorder above fails when a buffer is created without ``device=``."""
    real_zeros = torch.zeros

    def cpu_zeros(*shape, **kw):
        kw.pop("device", None)
        return real_zeros(*shape, **kw)

    monkeypatch.setattr(torch, "zeros", cpu_zeros)
    feats = torch.empty(4, 8, 9, 10, device="meta")
    eng = PropagationEngine("uvc-perframe")
    eng.reset(feats[0], torch.empty(2, 9, 10, device="meta"))
    with _OffDevice("meta", allowed=(eng._offsets,)) as rec:
        try:
            eng.step(feats[1])
        except RuntimeError as e:  # mixing the CPU buffer with meta tensors may also fail later in the step
            assert "device" in str(e)
    assert rec.bad


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@cuda
@pytest.mark.parametrize("name", ["crw", "dino", "waldmann-davis", "mast", "uvc-track"])
@pytest.mark.parametrize("kernel", ["exact", "patch"])
def test_cuda_engine_equals_cpu_engine(name, kernel):
    feats, labels = _crw_video(T=6, D=32, h=20, w=27, seed=1)
    cfg = get_preset(name).propagation
    cpu = PropagationEngine(cfg, window_kernel=kernel)
    gpu = PropagationEngine(cfg, window_kernel=kernel)
    cpu.reset(feats[0], labels)
    gpu.reset(feats[0].cuda(), labels.cuda())
    for f in feats[1:]:
        a = cpu.step(f)
        b = gpu.step(f.cuda())
        assert b.device.type == "cuda"
        assert torch.allclose(a, b.cpu(), atol=1e-4, rtol=0)
        assert (a.argmax(0) == b.cpu().argmax(0)).float().mean() > 0.999


# ------------------------------------------------------------------------------------------------ bf16
def _textured_video(T=6, D=64, h=30, w=40, seed=0):
    """Objects with distinct feature signatures moving over a textured background (a case with a right answer)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(4, D, generator=g)
    feats, labels = [], None
    for t in range(T):
        ids = torch.zeros(h, w, dtype=torch.long)
        ids[5:15, 4 + t:16 + t] = 1
        ids[17:27, 30 - t:38 - t] = 2
        ids[2:8, 25:33] = 3
        f = protos[ids].permute(2, 0, 1) + 0.8 * torch.randn(D, h, w, generator=g)
        feats.append(f)
        if t == 0:
            labels = torch.nn.functional.one_hot(ids, 4).permute(2, 0, 1).float()
    return torch.stack(feats), labels


@pytest.mark.parametrize("name", ["crw", "dino", "mast"])
def test_bf16_engine_is_close_to_fp32(name):
    feats, labels = _textured_video()
    cfg = get_preset(name).propagation
    ref = PropagationEngine(cfg)
    low = PropagationEngine(cfg, dtype=torch.bfloat16)
    ref.reset(feats[0], labels)
    low.reset(feats[0], labels)
    agree = []
    for f in feats[1:]:
        a, b = ref.step(f), low.step(f)
        assert b.dtype == torch.float32 and torch.isfinite(b).all()
        agree.append((a.argmax(0) == b.argmax(0)).float().mean().item())
        assert (a - b).abs().max() < 0.25
    assert min(agree) > 0.99, agree
    # the affinities really ran in bf16: context features are stored in bf16, labels in fp32
    e = low.context()[-1]
    assert e.flat.dtype == torch.bfloat16 and e.labels.dtype == torch.float32
    assert not torch.equal(ref.step(feats[-1]), low.step(feats[-1]))


def test_bf16_topk_values_are_softmaxed_in_fp32():
    """Temperatures like crw's 0.05 make a bf16 softmax of a/T visibly coarse; weights must come out of fp32."""
    eng = PropagationEngine("crw", dtype=torch.bfloat16)
    v = torch.tensor([[0.9140625, 0.91015625, 0.90625]], dtype=torch.bfloat16)
    wts = eng._weights(v, None)
    assert wts.dtype == torch.float32
    assert torch.allclose(wts, torch.softmax(v.float() / eng.cfg.temperature, 1), atol=1e-7)


# ------------------------------------------------------------------------------------------- GEMM backends
@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_gemm_backends_agree_and_auto_caches_its_choice(monkeypatch):
    g = torch.Generator().manual_seed(0)
    q, key = torch.randn(300, 48, generator=g), torch.randn(500, 48, generator=g)
    results = {}
    for setting in ("mkl", "onednn", "auto"):
        monkeypatch.setenv("VLPROP_GEMM", setting)
        results[setting] = dense_topk(q, key, 7, chunk=128)
    for r in results.values():
        assert torch.allclose(r.values, results["mkl"].values, atol=1e-5, rtol=0)
        assert (r.index == results["mkl"].index).float().mean() > 0.999
    choices = {k: v for k, v in affinity._GEMM_CHOICE.items() if k[0] == (128, 48)}
    assert choices and set(choices.values()) <= {"mkl", "onednn"}
    monkeypatch.setenv("VLPROP_GEMM", "cublas")
    with pytest.raises(ValueError, match="VLPROP_GEMM"):
        dense_topk(q, key, 7)


def test_onednn_backend_is_really_called(monkeypatch):
    calls = []
    real = affinity._mm_onednn

    def spy(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(affinity, "_mm_onednn", spy)
    monkeypatch.setenv("VLPROP_GEMM", "onednn")
    q = torch.randn(40, 16)
    dense_topk(q, torch.randn(50, 16), 3, chunk=16)
    assert len(calls) == (3 if affinity._onednn_ok(q) else 0)


# -------------------------------------------------------------------------------------------- two-stage top-k
@pytest.mark.parametrize("n,k,block", [(808, 10, 8), (6420, 10, 8), (203, 5, 8), (1000, 1, 4), (97, 12, 8)])
def test_block_topk_equals_torch_topk(n, k, block):
    g = torch.Generator().manual_seed(n)
    a = torch.randn(3, 50, n, generator=g, dtype=torch.float64)
    a[0, :7] = -math.inf  # rows with no candidate
    a[1, :5, : n - 3] = -math.inf  # rows with fewer than k candidates, all in the last partial block
    a[2] = a[2].masked_fill(torch.rand(50, n, generator=g) < 0.9, -math.inf)  # sparse candidates
    v, i = affinity.block_topk(a, k, block)
    rv, ri = torch.topk(a, k, dim=-1)
    assert torch.equal(v, rv)
    fin = torch.isfinite(rv)
    assert torch.equal(i[fin], ri[fin])
    assert torch.equal(torch.gather(a, -1, i), v)  # -inf survivors point at -inf cells


def test_block_topk_can_be_switched_off(monkeypatch):
    calls = []
    real = torch.topk
    monkeypatch.setattr(torch, "topk", lambda *a, **kw: calls.append(a[0].shape[-1]) or real(*a, **kw))
    a = torch.randn(4, 808)
    affinity.block_topk(a, 10)
    assert calls == [101, 80]
    calls.clear()
    monkeypatch.setenv("VLPROP_TOPK", "torch")
    affinity.block_topk(a, 10)
    assert calls == [808]


@pytest.mark.parametrize("window,radius,frames,k", [("disk", 12, 4, 10), ("disk", 3.5, 3, 6), ("square", 2, 5, 7),
                                                    ("square", 4, 2, 30)])
def test_joint_window_topk_equals_dense_top_k_over_all_frames(window, radius, frames, k):
    """One top-k per location over several windowed frames = the dense masked top-k of their concatenation."""
    g = torch.Generator().manual_seed(frames)
    D, h, w = 5, 13, 18
    q = torch.randn(D, h, w, generator=g, dtype=torch.float64)
    keys = [torch.randn(D, h, w, generator=g, dtype=torch.float64) for _ in range(frames)]
    geo = exact_geometry(h, w, window_offsets(window, radius), 8)
    offsets = [(2 * f + 1) * h * w for f in range(frames)]  # frames at odd positions of a longer context
    got = affinity.window_topk_exact_joint(query_tiles(q, geo), [extend_key(x.reshape(D, -1).t().contiguous())
                                                                 for x in keys], geo, k, frame_offsets=offsets)
    mask = spec_mask(h, w, window, radius)
    a = torch.full((h * w, offsets[-1] + h * w), -math.inf, dtype=torch.float64)
    for o, x in zip(offsets, keys):
        a[:, o:o + h * w] = (q.reshape(D, -1).t() @ x.reshape(D, -1)).masked_fill(~mask, -math.inf)
    v, i = torch.topk(a, k, dim=1)
    assert torch.equal(torch.isfinite(got.values), torch.isfinite(v))
    fin = torch.isfinite(v)
    assert torch.allclose(got.values[fin], v[fin], atol=1e-12, rtol=0)
    assert torch.equal(got.index[fin], i[fin])


def test_engine_joint_top_k_equals_per_frame_top_k(monkeypatch):
    feats, labels = _crw_video(T=7, seed=4)
    joint = [p for _, p in propagate_features(feats, labels, preset="crw")]
    monkeypatch.setenv("VLPROP_TOPK", "torch")  # per-frame top-k (and torch.topk)
    per = [p for _, p in propagate_features(feats, labels, preset="crw")]
    for a, b in zip(joint, per):
        assert torch.allclose(a, b, atol=1e-6, rtol=0) and torch.equal(a.argmax(0), b.argmax(0))
