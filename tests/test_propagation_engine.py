"""The streaming engine equals a naive dense implementation written here from the spec."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vlprop.config import PRESETS, PropagationConfig, get_preset
from vlprop.errors import InputError
from vlprop.propagation.engine import PropagationEngine, propagate_features


# ---------------------------------------------------------------------------- naive reference
def naive_mask(h, w, window, radius):
    """M[target, ref] from the spec formulas (DINO/WALD square, CRW/DUL strict disk)."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1).double(), xs.reshape(-1).double()
    dy = ys[None, :] - ys[:, None]
    dx = xs[None, :] - xs[:, None]
    if window == "square":
        return torch.maximum(dy.abs(), dx.abs()) <= radius
    return dy ** 2 + dx ** 2 < radius ** 2


def naive_step(cfg: PropagationConfig, q, ctx_feats, ctx_labels, restricted):
    """One propagation step exactly as McKee Alg. 1 / spec §1.3, dense [hw, n*hw] affinity."""
    D, h, w = q.shape
    norm = (lambda f: torch.nn.functional.normalize(f, dim=0)) if cfg.feature_norm else (lambda f: f)
    qf = norm(q).reshape(D, -1).t()
    T = cfg.temperature
    mats, labs = [], []
    for f, lab, r in zip(ctx_feats, ctx_labels, restricted):
        a = qf @ norm(f).reshape(D, -1)  # [hw, hw]
        full = a.clone()
        if r and cfg.window != "none":
            m = naive_mask(h, w, cfg.window, cfg.radius)
            a = a.masked_fill(~m, 0.0 if cfg.compat_mask_before_exp else -math.inf)
        mats.append((a, full))
        labs.append(lab.reshape(lab.shape[0], -1))

    def weights(vals, all_vals):
        if cfg.compat_softmax_zeros:  # WALD: softmax over every candidate, non-top-k entries are 0
            full = torch.zeros(vals.shape[0], all_vals.shape[1], dtype=vals.dtype)
            full[:, : vals.shape[1]] = vals / T
            return torch.softmax(full, 1)[:, : vals.shape[1]]
        if cfg.norm_stage == "topk":
            if cfg.normalizer == "sum":
                return vals / vals.sum(1, keepdim=True)
            return torch.softmax(vals / T, 1)
        if cfg.normalizer == "sum":
            return vals / torch.where(torch.isfinite(all_vals), all_vals, 0 * all_vals).sum(1, keepdim=True)
        return torch.exp(vals / T - torch.logsumexp(all_vals / T, 1, keepdim=True))

    def stage_set(a, full):
        return full if cfg.norm_stage == "before-restriction" else a

    if cfg.aggregation == "overall":
        A = torch.cat([a for a, _ in mats], 1)
        S = torch.cat([stage_set(a, f) for a, f in mats], 1)
        L = torch.cat(labs, 1)
        k = A.shape[1] if cfg.topk == 0 else cfg.topk
        v, i = torch.topk(A, k, 1)
        wts = weights(v, S)
        out = (wts[:, :, None] * L.t()[i]).sum(1)
    else:
        out = 0
        for (a, f), L in zip(mats, labs):
            k = a.shape[1] if cfg.topk == 0 else min(cfg.topk, a.shape[1])
            v, i = torch.topk(a, k, 1)
            wts = weights(v, stage_set(a, f))
            out = out + (wts[:, :, None] * L.t()[i]).sum(1)
        out = out / len(mats)
    return out.t().reshape(-1, h, w)


def naive_label_norm(labels, mode):
    """Spec of ``label_norm``: per channel over space (channels summing to 0 untouched; WALD/UVC) or per
    location over channels (CRW ``--norm_mask``), written with explicit loops."""
    out = labels.clone()
    C, h, w = labels.shape
    if mode == "channel-minmax":
        for c in range(C):
            x = labels[c]
            if float(x.sum()) != 0.0:
                out[c] = (x - x.min()) / (x.max() - x.min())
    elif mode == "pixel-minmax":
        for i in range(h):
            for j in range(w):
                v = labels[:, i, j]
                out[:, i, j] = (v - v.min()) / (v.max() - v.min())
    return out


def naive_one_hot(labels):
    """Hard labels: 1 in the channel of the per-location maximum (first maximum on ties)."""
    C, h, w = labels.shape
    out = torch.zeros_like(labels)
    for i in range(h):
        for j in range(w):
            out[int(torch.argmax(labels[:, i, j])), i, j] = 1.0
    return out


def naive_bilinear(fmap, y, x):
    """Bilinear sample of ``fmap [C, h, w]`` at real (y, x), zero outside the frame (numpy float64)."""
    C, h, w = fmap.shape
    y0, x0 = math.floor(y), math.floor(x)
    out = np.zeros(C)
    for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
        if 0 <= yy < h and 0 <= xx < w:
            out += (1 - abs(y - yy)) * (1 - abs(x - xx)) * fmap[:, yy, xx]
    return out


def naive_union_step(cfg, t, q, ctx_feats, ctx_index, ctx_labels, restricted):
    """MAST/LIIR propagation for target t, from the spec (training-methods.md §1.5, §1.7, §4.4): per context
    frame its candidates (square window, or MAST's predicted window for a reference more than roi_after frames
    back), ONE softmax over the union of all candidates, LIIR's compactness replacement per frame."""
    D, h, w = q.shape
    norm = (lambda f: torch.nn.functional.normalize(f, dim=0)) if cfg.feature_norm else (lambda f: f)
    qn = norm(q).numpy()
    feats = [norm(f).numpy() for f in ctx_feats]
    labs = [lab.numpy() for lab in ctx_labels]
    C = labs[0].shape[0]
    T, R, Rc = cfg.temperature, int(cfg.radius), cfg.roi_radius
    roi = [cfg.localization == "roi" and t - r > cfg.roi_after for r in ctx_index]
    out = np.zeros((C, h, w))
    for y in range(h):
        for x in range(w):
            qv = qn[:, y, x]
            cands = []  # per frame: list of (value, label vector, (py, px))
            offsets = {}
            for n, (f, lab, r) in enumerate(zip(feats, labs, ctx_index)):
                if not roi[n]:
                    cs = []
                    for py in range(h):
                        for px in range(w):
                            inside = max(abs(py - y), abs(px - x)) <= cfg.radius if cfg.window == "square" \
                                else (py - y) ** 2 + (px - x) ** 2 < cfg.radius ** 2
                            if restricted[n] and not inside:
                                continue
                            cs.append((float(qv @ f[:, py, px]), lab[:, py, px], (py, px)))
                    cands.append(cs)
                    continue
                d = min(cfg.roi_max_dilation, (t - r) // cfg.roi_after + 1)
                coarse, deltas = [], []
                for dy in range(-Rc, Rc + 1):
                    for dx in range(-Rc, Rc + 1):
                        py, px = y + d * dy, x + d * dx
                        coarse.append(float(qv @ f[:, py, px]) if 0 <= py < h and 0 <= px < w else 0.0)
                        deltas.append((dy, dx))
                p = np.exp(np.array(coarse) / T - max(coarse) / T)
                p /= p.sum()
                offsets[n] = (d * sum(pi * dd[0] for pi, dd in zip(p, deltas)),
                              d * sum(pi * dd[1] for pi, dd in zip(p, deltas)))
                cands.append(None)
            last = offsets[max(offsets)] if offsets else None
            for n in offsets:
                oy, ox = offsets[n]
                ly, lx = last if cfg.compat_mast_roi else (oy, ox)
                cs = []
                for dy in range(-R, R + 1):
                    for dx in range(-R, R + 1):
                        fy, fx = y + oy + dy, x + ox + dx
                        gy, gx = y + ly + dy, x + lx + dx
                        if cfg.compat_mast_roi:
                            fy, fx = fy * h / (h - 1) - 0.5, fx * w / (w - 1) - 0.5
                            gy, gx = gy * h / (h - 1) - 0.5, gx * w / (w - 1) - 0.5
                        if not (-1 < fy < h and -1 < fx < w):
                            continue
                        cs.append((float(qv @ naive_bilinear(feats[n], fy, fx)), naive_bilinear(labs[n], gy, gx),
                                   None))
                cands[n] = cs
            allv = np.array([c[0] for cs in cands for c in cs])
            if cfg.normalizer == "sum":
                denom = allv.sum()
                weights = [[c[0] / denom for c in cs] for cs in cands]
            else:
                m = allv.max()
                denom = np.exp(allv / T - m / T).sum()
                weights = [[math.exp(c[0] / T - m / T) / denom for c in cs] for cs in cands]
            for n, (cs, ws) in enumerate(zip(cands, weights)):
                if cfg.compactness_k and not roi[n]:
                    order = sorted(range(len(ws)), key=lambda i: -ws[i])[: cfg.compactness_k]
                    top = np.array([ws[i] for i in order])
                    pi = np.exp(top - top.max()) / np.exp(top - top.max()).sum()
                    if top[0] > cfg.compactness_threshold:
                        ws = [sum(pi[m] * math.exp(-4 * math.log(2) * ((c[2][0] - cs[order[m]][2][0]) ** 2
                                                                        + (c[2][1] - cs[order[m]][2][1]) ** 2)
                                                  / cfg.compactness_fwhm ** 2) for m in range(len(order)))
                              for c in cs]
                for c, wt in zip(cs, ws):
                    out[:, y, x] += wt * c[1]
    return torch.from_numpy(out)


def naive_mean_shift(pts, bandwidth, sigma, tol=0.1, max_iter=100):
    mean = pts.mean(0)
    m = pts[int(np.argmin(((pts - mean) ** 2).sum(1)))]
    for _ in range(max_iter):
        num, den = np.zeros(2), 0.0
        for p in pts:
            d2 = float(((p - m) ** 2).sum())
            if d2 <= bandwidth ** 2:
                wt = math.exp(-d2 / (2 * sigma ** 2))
                num += wt * p
                den += wt
        new = num / den
        done = abs(new - m).sum() < tol
        m = new
        if done:
            break
    return m


def naive_cells(box, h, w):
    cy, cx, ry, rx = box
    return [(y, x) for y in range(h) for x in range(w) if abs(y - cy) <= ry and abs(x - cx) <= rx]


def naive_usable(box, h, w):
    if box is None:
        return False
    cells = naive_cells(box, h, w)
    return len({y for y, _ in cells}) >= 3 and len({x for _, x in cells}) >= 3


def naive_track_video(cfg, feats, labels0):
    """UVC "track" from the spec (training-methods.md §3.2, our grid-level reading): boxes (centre, half-extent)
    in cells, initial = tight box of the argmax cells + 60 %, target box = mean-shift mode of the soft-argmax
    target positions of the newest context frame's object cells, +-2 mean-abs-dev, +100 %, half-extent EMA 0.1
    with that frame's box; per-frame softmax over the whole frame, top-k inside the boxes, not renormalised."""
    T_, D, h, w = feats.shape
    Tm = cfg.temperature
    norm = (lambda f: torch.nn.functional.normalize(f, dim=0)) if cfg.feature_norm else (lambda f: f)
    F = [norm(f).reshape(D, -1).numpy() for f in feats]
    C = labels0.shape[0]

    def state(lab, boxes=None):
        hard = lab.reshape(C, -1).numpy().argmax(0)
        mass = {o: int((hard == o).sum()) for o in range(1, C)}
        if boxes is None:
            boxes = {}
            for o in range(1, C):
                cells = np.nonzero(hard == o)[0]
                if len(cells) == 0:
                    boxes[o] = None
                    continue
                ys, xs = cells // w, cells % w
                m = 1 + cfg.track_init_margin
                boxes[o] = ((ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2,
                            ((ys.max() - ys.min()) / 2 + 0.5) * m, ((xs.max() - xs.min()) / 2 + 0.5) * m)
        return hard, mass, boxes

    preds, states, outs = [labels0], [state(labels0)], []
    grid = np.array([(y, x) for y in range(h) for x in range(w)], dtype=np.float64)
    for t in range(1, T_):
        idx, _ = naive_context(cfg, t)
        p = max(idx)
        hard_p, _, boxes_p = states[p]
        boxes_t = {}
        for o in range(1, C):
            cells = np.nonzero(hard_p == o)[0]
            if len(cells) < 2:
                boxes_t[o] = None
                continue
            coords = []
            for c in cells:
                a = F[p][:, c] @ F[t] / Tm
                e = np.exp(a - a.max())
                coords.append((e / e.sum()) @ grid)
            coords = np.array(coords)
            mode = naive_mean_shift(coords, cfg.track_bandwidth, cfg.track_sigma)
            d = np.abs(coords - mode).mean(0)
            ry, rx = cfg.track_mad * d * (1 + cfg.track_margin)
            if boxes_p[o] is not None:
                ry = cfg.track_ema * ry + (1 - cfg.track_ema) * boxes_p[o][2]
                rx = cfg.track_ema * rx + (1 - cfg.track_ema) * boxes_p[o][3]
            boxes_t[o] = (mode[0], mode[1], ry, rx)
        out = np.zeros((C, h * w))
        for r in idx:
            L = preds[r].reshape(C, -1).numpy()
            _, mass_r, boxes_r = states[r]
            A = F[t].T @ F[r]  # [target, ref]
            boxed = {o: (set(naive_cells(boxes_t[o], h, w)), [y * w + x for y, x in naive_cells(boxes_r[o], h, w)])
                     for o in range(1, C) if naive_usable(boxes_t[o], h, w) and mass_r[o] >= 3
                     and naive_usable(boxes_r[o], h, w)}
            for j in range(h * w):
                row = A[j]
                soft = np.exp(row / Tm - (row / Tm).max())
                soft /= soft.sum()
                k = len(row) if cfg.topk == 0 else cfg.topk
                top = np.argsort(-row, kind="stable")[:k]
                plain = (soft[top][None, :] * L[:, top]).sum(1)
                out[:, j] += plain
                for o, (target_cells, ref_cells) in boxed.items():
                    out[o, j] -= plain[o]
                    if (j // w, j % w) not in target_cells:
                        continue
                    sel = sorted(ref_cells, key=lambda i: -row[i])[:k]
                    out[o, j] += sum(soft[i] * L[o, i] for i in sel)
        out = torch.from_numpy(out / len(idx)).reshape(C, h, w)
        out = naive_label_norm(out, cfg.label_norm)
        outs.append(out)
        stored = naive_one_hot(out) if cfg.requantize else out
        preds.append(stored)
        hard_t, mass_t, _ = state(stored)
        states.append((hard_t, mass_t, boxes_t))
    return outs


def naive_context(cfg, t):
    """Context frame indices of target t and whether each is windowed."""
    if cfg.references == "mast":  # {0, 5} U {t-1, t-3, t-5}
        long = [0] + ([5] if t > 5 else [])
        short = [r for r in (t - 5, t - 3, t - 1) if r >= 1 and r not in long]
        return long + short, [cfg.window_long_term] * len(long) + [True] * len(short)
    prev = list(range(max(1, t - cfg.context), t)) if cfg.context else []
    idx = [0] + prev
    restricted = [cfg.window_long_term] + [True] * len(prev)
    if cfg.compat_pad_first and len(prev) < cfg.context:
        pad = cfg.context - len(prev)
        idx = [0] + [0] * pad + prev
        restricted = [cfg.window_long_term] + [True] * (pad + len(prev))
    return idx, restricted


def naive_video(cfg, feats, labels0):
    if cfg.localization == "track":
        return naive_track_video(cfg, feats, labels0)
    return naive_video_plain(cfg, feats, labels0)


def naive_video_plain(cfg, feats, labels0):
    """Propagate through feats [T,D,h,w]: context = first frame + `context` previous frames (or MAST's set). Each
    prediction gets the foreground boost and is label-normalised (returned and stored) and, with ``requantize``,
    stored as one-hot."""
    preds = [labels0]
    outs = []
    for t in range(1, feats.shape[0]):
        idx, restricted = naive_context(cfg, t)
        if cfg.localization == "roi" or cfg.compactness_k:
            out = naive_union_step(cfg, t, feats[t], [feats[i] for i in idx], idx, [preds[i] for i in idx],
                                   restricted)
        else:
            out = naive_step(cfg, feats[t], [feats[i] for i in idx], [preds[i] for i in idx], restricted)
        out = out.clone()
        out[1:] *= cfg.foreground_boost
        out = naive_label_norm(out, cfg.label_norm)
        outs.append(out)
        preds.append(naive_one_hot(out) if cfg.requantize else out)
    return outs


def random_video(T=6, D=16, h=9, w=13, C=3, seed=0, smooth=True):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(D, h, w, generator=g, dtype=torch.float64)
    frames = [base + 0.3 * torch.randn(D, h, w, generator=g, dtype=torch.float64) for _ in range(T)]
    labels = torch.softmax(3 * torch.randn(C, h, w, generator=g, dtype=torch.float64), 0)
    return torch.stack(frames), labels


CONFIGS = {
    **{name: p.propagation for name, p in PRESETS.items()},
    "per-frame-topk-square": PropagationConfig(aggregation="per-frame", topk=4, window="square", radius=2,
                                               context=3, window_long_term=True),
    "overall-after-restriction": PropagationConfig(norm_stage="after-restriction", topk=5, radius=3, context=3),
    "overall-sum": PropagationConfig(normalizer="sum", topk=3, radius=2.5, context=2),
    "per-frame-before-restriction-disk": PropagationConfig(aggregation="per-frame", norm_stage="before-restriction",
                                                           window="disk", radius=3, topk=6, context=2),
    "overall-topk-all": PropagationConfig(topk=0, window="square", radius=2, context=2),
    "union-of-windows": PropagationConfig(topk=0, window="square", radius=3, context=4, window_long_term=True,
                                          temperature=0.1),
    "union-disk-mast-references": PropagationConfig(topk=0, window="disk", radius=2.5, references="mast",
                                                    window_long_term=True, temperature=1.0, feature_norm=False),
    "topk-all-no-window": PropagationConfig(topk=0, window="none", context=3, temperature=0.2),
    "no-window": PropagationConfig(window="none", topk=7, context=4),
    "small-radius": PropagationConfig(window="square", radius=1, topk=20, context=2, window_long_term=True),
    "channel-minmax": PropagationConfig(label_norm="channel-minmax", topk=4, radius=3, context=3),
    "pixel-minmax": PropagationConfig(label_norm="pixel-minmax", topk=4, radius=3, context=3),
    "requantize": PropagationConfig(requantize=True, topk=5, radius=3, context=3),
    "per-frame-channel-minmax-requantize": PropagationConfig(aggregation="per-frame", label_norm="channel-minmax",
                                                             requantize=True, topk=5, window="none", context=2,
                                                             norm_stage="before-restriction", feature_norm=False,
                                                             temperature=1.0),
    "mast-references": PropagationConfig(references="mast", topk=3, window="square", radius=2,
                                         window_long_term=True),
    "compactness": PropagationConfig(compactness_k=2, topk=0, window="square", radius=2, window_long_term=True,
                                     context=3, temperature=0.1, compactness_threshold=0.1),
    "compactness-k1-disk-mast-boost": PropagationConfig(compactness_k=1, topk=0, window="disk", radius=2.5,
                                                        window_long_term=True, references="mast", temperature=0.05,
                                                        compactness_fwhm=1.5, foreground_boost=1.05,
                                                        requantize=True),
    "track": PropagationConfig(localization="track", aggregation="per-frame", norm_stage="before-restriction",
                               window="none", topk=5, context=3, temperature=0.5, feature_norm=False,
                               label_norm="channel-minmax", track_bandwidth=3.0, track_sigma=2.0),
    "track-normed-requantize": PropagationConfig(localization="track", aggregation="per-frame",
                                                 norm_stage="before-restriction", window="none", topk=4, context=2,
                                                 temperature=0.1, requantize=True, track_margin=0.5),
    "roi": PropagationConfig(localization="roi", topk=0, window="square", radius=2, window_long_term=True,
                             references="mast", roi_after=2, roi_radius=2, roi_max_dilation=3, temperature=0.2),
    "roi-compat": PropagationConfig(localization="roi", topk=0, window="square", radius=2, window_long_term=True,
                                    references="mast", roi_after=2, roi_radius=2, roi_max_dilation=3,
                                    temperature=0.2, compat_mast_roi=True, feature_norm=False, requantize=True),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_engine_equals_naive_dense_reference(name):
    cfg = CONFIGS[name]
    feats, labels = random_video(T=6, seed=hash(name) % 1000)
    expected = naive_video(cfg, feats, labels)
    got = [p for _, p in propagate_features(feats, labels, preset=cfg, dtype=torch.float64)]
    assert len(got) == len(expected) == feats.shape[0] - 1
    for t, (g, e) in enumerate(zip(got, expected), start=1):
        assert torch.allclose(g, e, atol=1e-5, rtol=0), f"{name}: frame {t} max err {(g - e).abs().max():.2e}"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_engine_equals_naive_with_compat_quirks(name):
    cfg = get_preset(name, compat=True).propagation
    feats, labels = random_video(T=5, seed=7)
    expected = naive_video(cfg, feats, labels)
    got = [p for _, p in propagate_features(feats, labels, preset=cfg, dtype=torch.float64)]
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cfg", [CONFIGS["no-window"], CONFIGS["per-frame-before-restriction-disk"],
                                 CONFIGS["overall-topk-all"], CONFIGS["topk-all-no-window"],
                                 get_preset("waldmann-davis", compat=True).propagation], ids=str)
def test_dense_matches_in_many_chunks_share_one_buffer_and_equal_the_reference(cfg):
    """Chunks of 7 target rows all land in one workspace per frame (masked in place for the
    restricted-dense paths); stale values of an earlier chunk or context frame must not leak into a later
    one, and the buffer is released after each frame."""
    feats, labels = random_video(T=6, seed=5)
    expected = naive_video(cfg, feats, labels)
    eng = PropagationEngine(cfg, dtype=torch.float64, chunk=7)
    eng.reset(feats[0], labels)
    for t in range(1, feats.shape[0]):
        got = eng.step(feats[t])
        assert torch.allclose(got, expected[t - 1], atol=1e-5, rtol=0), f"frame {t}"
        assert eng._workspace is None


def test_window_tiles_larger_than_grid_and_odd_sizes():
    cfg = PropagationConfig(window="disk", radius=12, topk=10, context=2)
    feats, labels = random_video(T=4, h=5, w=31, seed=3)
    expected = naive_video(cfg, feats, labels)
    got = [p for _, p in propagate_features(feats, labels, preset=cfg, dtype=torch.float64)]
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, atol=1e-5)


@pytest.mark.parametrize("long_term", [True, False])
def test_topk_all_is_one_online_softmax_over_the_windows_without_candidate_lists(monkeypatch, long_term):
    """``topk = 0`` (MAST/LIIR's union of windows) goes through the tile-wise online softmax: no per-location
    window top-k is built, the result equals the naive dense reference on an odd grid smaller than a tile's
    window, with the first frame windowed or dense."""
    import vlprop.propagation.engine as engine_mod

    cfg = PropagationConfig(topk=0, window="square", radius=12, context=3, window_long_term=long_term,
                            temperature=0.07)
    feats, labels = random_video(T=5, h=5, w=31, seed=4)
    expected = naive_video(cfg, feats, labels)

    def no_candidate_lists(*a, **k):
        raise AssertionError("topk=0 built per-location candidate lists")

    monkeypatch.setattr(engine_mod, "window_topk_exact", no_candidate_lists)
    monkeypatch.setattr(engine_mod, "dense_topk", no_candidate_lists)
    got = [p for _, p in propagate_features(feats, labels, preset=cfg, dtype=torch.float64)]
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, atol=1e-5, rtol=0)


def test_float32_engine_matches_float64_reference_closely():
    cfg = get_preset("crw").propagation
    feats, labels = random_video(T=5, D=32, h=12, w=20, seed=11)
    expected = naive_video(cfg, feats, labels)
    got = [p for _, p in propagate_features(feats.float(), labels.float(), preset="crw")]
    for g, e in zip(got, expected):
        assert (g.double() - e).abs().max() < 1e-4


def test_memory_is_bounded_by_context():
    eng = PropagationEngine(PropagationConfig(context=3))
    feats, labels = random_video(T=10)
    eng.reset(feats[0].float(), labels.float())
    for t in range(1, 10):
        eng.step(feats[t].float())
        assert len(eng.context()) <= 1 + 3


def test_mismatched_feature_size_is_a_clear_error():
    eng = PropagationEngine("crw")
    feats, labels = random_video(T=2)
    eng.reset(feats[0].float(), labels.float())
    with pytest.raises(InputError, match="same size"):
        eng.step(torch.zeros(16, 10, 13))
    with pytest.raises(InputError, match="label map"):
        eng.reset(feats[0].float(), labels[:, :5].float())


def test_unknown_preset_and_bad_settings_are_clear_errors():
    with pytest.raises(InputError, match="unknown preset"):
        get_preset("nope")
    with pytest.raises(InputError, match="aggregation"):
        PropagationConfig(aggregation="sideways")
    with pytest.raises(InputError, match="unknown setting"):
        get_preset("crw", topkk=3)


def test_label_norm_and_requantize_change_the_result():
    """The settings are not no-ops on this video (so the reference comparisons above exercise them)."""
    feats, labels = random_video(T=5, seed=2)
    base = [p for _, p in propagate_features(feats, labels, preset=CONFIGS["requantize"], dtype=torch.float64,
                                             requantize=False)]
    for name in ("channel-minmax", "pixel-minmax", "requantize"):
        cfg = CONFIGS[name]
        got = [p for _, p in propagate_features(feats, labels, preset=cfg, dtype=torch.float64)]
        assert max(float((g - b).abs().max()) for g, b in zip(got, base)) > 1e-3, name


def test_channel_minmax_leaves_an_empty_channel_at_zero():
    feats, labels = random_video(T=3, seed=4)
    labels = labels.clone()
    labels[2] = 0.0
    got = [p for _, p in propagate_features(feats, labels, preset=CONFIGS["channel-minmax"], dtype=torch.float64)]
    for g in got:
        assert float(g[2].abs().max()) == 0.0
        assert torch.allclose(g[:2].amax(dim=(1, 2)), torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("name,change", [("roi", dict(localization="window")), ("roi-compat", dict(compat_mast_roi=False)),
                                         ("compactness", dict(compactness_k=0)),
                                         ("compactness-k1-disk-mast-boost", dict(foreground_boost=1.0))])
def test_localisation_settings_are_not_no_ops(name, change):
    """On the test video each variant changes the prediction (the reference comparison exercises its branch)."""
    from dataclasses import replace

    feats, labels = random_video(T=6, seed=hash(name) % 1000)
    a = [p for _, p in propagate_features(feats, labels, preset=CONFIGS[name], dtype=torch.float64)]
    b = [p for _, p in propagate_features(feats, labels, preset=replace(CONFIGS[name], **change),
                                          dtype=torch.float64)]
    assert max(float((x - y).abs().max()) for x, y in zip(a, b)) > 1e-3


def test_mast_reference_set_is_first_fifth_and_t_minus_1_3_5():
    eng = PropagationEngine(PropagationConfig(references="mast", topk=3, window="square", radius=2))
    feats, labels = random_video(T=12)
    eng.reset(feats[0].float(), labels.float())
    for t in range(1, 12):
        assert [e.index for e in eng.context()] == naive_context(eng.cfg, t)[0]
        eng.step(feats[t].float())
    assert [e.index for e in eng.context()] == [0, 5, 7, 9, 11]


def test_localisation_settings_reject_inconsistent_combinations():
    with pytest.raises(InputError, match="union"):
        PropagationConfig(localization="roi", topk=5, window="square", window_long_term=True)
    with pytest.raises(InputError, match="every frame"):
        PropagationConfig(localization="roi", topk=0, window="disk", window_long_term=True)
    with pytest.raises(InputError, match="compactness"):
        PropagationConfig(compactness_k=2, topk=10, window="square", window_long_term=True)
    with pytest.raises(InputError, match="window on every"):
        PropagationConfig(compactness_k=2, topk=0, window="square", window_long_term=False)
    with pytest.raises(InputError, match="compat_mast_roi"):
        PropagationConfig(compat_mast_roi=True)
    with pytest.raises(InputError, match="references"):
        PropagationConfig(references="sparse")


def object_video(T=6, D=16, h=12, w=16, seed=0):
    """Two rectangular objects on a textured background; the texture moves one cell right per frame."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(D, h, w + T, generator=g, dtype=torch.float64)
    frames = torch.stack([base[:, :, T - t: T - t + w] + 0.2 * torch.randn(D, h, w, generator=g, dtype=torch.float64)
                          for t in range(T)])
    labels = torch.zeros(3, h, w, dtype=torch.float64)
    labels[0] = 1
    labels[:, 2:6, 2:7] = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)[:, None, None]
    labels[:, 7:11, 9:14] = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)[:, None, None]
    return frames, labels


@pytest.mark.parametrize("name", ["track", "track-normed-requantize"])
def test_track_equals_naive_on_a_video_with_compact_objects(name):
    cfg = CONFIGS[name]
    feats, labels = object_video(T=6)
    expected = naive_video(cfg, feats, labels)
    got = [p for _, p in propagate_features(feats, labels, preset=cfg, dtype=torch.float64)]
    for t, (g, e) in enumerate(zip(got, expected), start=1):
        assert torch.allclose(g, e, atol=1e-5, rtol=0), f"{name}: frame {t} max err {(g - e).abs().max():.2e}"
    from dataclasses import replace

    plain = [p for _, p in propagate_features(feats, labels, dtype=torch.float64,
                                              preset=replace(cfg, localization="window"))]
    assert max(float((a - b).abs().max()) for a, b in zip(got, plain)) > 1e-3  # the boxes do restrict


def test_track_boxes_follow_the_objects():
    cfg = CONFIGS["track"]
    feats, labels = object_video(T=6)
    eng = PropagationEngine(cfg, dtype=torch.float64)
    eng.reset(feats[0], labels)
    for t in range(1, 6):
        eng.step(feats[t])
        box = eng._short[-1].boxes[1]
        # object 1 starts centred at (3.5, 4) and moves one cell right per frame
        assert abs(box[0] - 3.5) < 1.0 and abs(box[1] - (4 + t)) < 1.0, (t, box)
