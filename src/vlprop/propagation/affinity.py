"""Top-k affinity kernels: for every target location, the k best-matching locations of one context frame.

Two exact kernels compute the same thing as a dense ``[HW, HW]`` affinity followed by masking and top-k,
without ever materialising it:

* :func:`dense_topk` -- unrestricted (or compat-masked) frames: target rows in chunks, one GEMM per chunk,
  memory ``O(chunk * HW)``.
* :func:`window_topk` -- spatially restricted frames: the target grid is cut into ``t x t`` tiles; each tile
  is matched by one GEMM against the ``(t+2R) x (t+2R)`` patch of the context frame that holds every window
  of its locations, and an additive bias (0 / -inf) keeps exactly the candidates of each location's window
  inside the frame. Memory ``O(HW * (t+2R)^2 / t^2)`` per band of tiles, i.e. linear in ``HW``.

Both return raw affinities (dot products) of the survivors, their flat indices in the context frame, and
optionally a per-target statistic of the whole candidate set (log-sum-exp of ``a / T`` or the plain sum),
which normalisers that are not restricted to the k survivors need.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

NEG_INF = float("-inf")


@dataclass
class TopK:
    """Survivors of one context frame for each of ``N`` target locations."""

    values: torch.Tensor  # [N, k] raw affinities, -inf where fewer than k candidates exist
    index: torch.Tensor   # [N, k] int64 flat index into the context frame (y * w + x)
    stat: torch.Tensor | None = None  # [N] log-sum-exp(a/T) or sum(a) over all candidates, if asked


def window_offsets(window: str, radius: float) -> torch.Tensor:
    """Boolean ``[2R+1, 2R+1]`` table of allowed (dy, dx) offsets, centre at (R, R).

    ``square``: ``max(|dy|, |dx|) <= radius`` (DINO/WALD); ``disk``: ``dy^2 + dx^2 < radius^2`` (strict,
    CRW/DUL ``MaskedAttention``).
    """
    if window == "square":
        r = int(math.floor(radius))
        return torch.ones(2 * r + 1, 2 * r + 1, dtype=torch.bool)
    if window == "disk":
        r = int(math.ceil(radius)) - 1 if float(radius).is_integer() else int(math.floor(radius))
        r = max(r, 0)
        d = torch.arange(-r, r + 1, dtype=torch.float64)
        return (d[:, None] ** 2 + d[None, :] ** 2) < radius ** 2
    raise ValueError(f"no offset table for window {window!r}")


def window_mask_dense(h: int, w: int, offsets: torch.Tensor) -> torch.Tensor:
    """Dense ``[hw, hw]`` boolean mask, ``M[target, ref]`` -- only for tests and small grids."""
    R = (offsets.shape[0] - 1) // 2
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    dy = ys[None, :] - ys[:, None]
    dx = xs[None, :] - xs[:, None]
    inside = (dy.abs() <= R) & (dx.abs() <= R)
    allowed = torch.zeros_like(inside)
    allowed[inside] = offsets[(dy[inside] + R), (dx[inside] + R)]
    return allowed


def _reduce_stat(a: torch.Tensor, reduce: str | None, temperature: float) -> torch.Tensor | None:
    """Per-row statistic over the last dim, ignoring -inf entries."""
    if reduce is None:
        return None
    if reduce == "lse":
        return torch.logsumexp(a / temperature, dim=-1)
    if reduce == "sum":
        return torch.where(torch.isfinite(a), a, torch.zeros((), dtype=a.dtype)).sum(-1)
    raise ValueError(f"unknown reduction {reduce!r}")


def dense_workspace(workspace: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor,
                    chunk: int) -> torch.Tensor:
    """``workspace`` if it fits a :func:`dense_topk` call on these inputs, else a new one that does."""
    numel = min(chunk, query.shape[0]) * key.shape[0]
    fits = workspace is not None and workspace.numel() >= numel and workspace.dtype == query.dtype \
        and workspace.device == query.device
    return workspace if fits else query.new_empty(numel)


def dense_topk(
    query: torch.Tensor,
    key: torch.Tensor,
    k: int,
    allowed: torch.Tensor | None = None,
    masked_value: float = NEG_INF,
    reduce: str | None = None,
    reduce_before_mask: bool = False,
    temperature: float = 1.0,
    chunk: int = 2048,
    workspace: torch.Tensor | None = None,
) -> TopK:
    """Top-k of ``query [N, D] @ key [M, D]^T`` row by row, in chunks of ``chunk`` query rows.

    allowed: optional ``[N, M]`` boolean mask (or a callable ``(start, stop) -> [stop-start, M]``);
        disallowed entries are set to ``masked_value`` (``-inf`` excludes them; ``0`` reproduces WALD's
        mask-before-exp quirk).
    reduce / reduce_before_mask: statistic of the candidate set, computed before or after the mask.
    workspace: optional 1-D buffer for each chunk's affinities (:func:`dense_workspace`; the engine shares
        one among a frame's dense matches); without it, or if it does not fit, one is allocated per call.
        Either way all chunks reuse the same memory: a fresh ``chunk x M`` block per chunk is above glibc's
        mmap threshold, so the kernel would zero-fill and fault in its pages every time (a fifth of the CPU
        time of a 120x214-grid run went to that).
    """
    n, m = query.shape[0], key.shape[0]
    kk = m if k <= 0 else min(k, m)
    values = torch.empty(n, kk, dtype=query.dtype)
    index = torch.empty(n, kk, dtype=torch.long)
    stat = torch.empty(n, dtype=query.dtype) if reduce else None
    key_t = key.t()
    workspace = dense_workspace(workspace, query, key, chunk)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        a = torch.mm(query[s:e], key_t, out=workspace[: (e - s) * m].view(e - s, m))
        if reduce and reduce_before_mask:
            stat[s:e] = _reduce_stat(a, reduce, temperature)
        if allowed is not None:
            mask = allowed(s, e) if callable(allowed) else allowed[s:e]
            a.masked_fill_(~mask, masked_value)
        if reduce and not reduce_before_mask:
            stat[s:e] = _reduce_stat(a, reduce, temperature)
        v, i = torch.topk(a, kk, dim=1)
        values[s:e] = v
        index[s:e] = i
    return TopK(values, index, stat)


@dataclass
class WindowGeometry:
    """Precomputed tiling of an ``h x w`` grid for one window shape (cached per shape)."""

    h: int
    w: int
    R: int
    tile: int
    nty: int
    ntx: int
    bias: torch.Tensor  # [nty, ntx, tile*tile, P] float 0 / -inf (window and frame border)
    ref_index: torch.Tensor  # [nty, ntx, P] flat index in the frame of each patch cell (0 where outside)

    @property
    def patch(self) -> int:
        return self.tile + 2 * self.R


@lru_cache(maxsize=16)
def _window_geometry(h: int, w: int, offsets_key: bytes, side: int, tile: int) -> WindowGeometry:
    offsets = torch.frombuffer(bytearray(offsets_key), dtype=torch.bool).reshape(side, side)
    R = (side - 1) // 2
    nty, ntx = -(-h // tile), -(-w // tile)
    P = tile + 2 * R
    # relative: target (a, b) in tile vs patch cell (c, d): offset (c - a - R, d - b - R)
    a = torch.arange(tile)
    c = torch.arange(P)
    dy = c[None, :] - a[:, None]  # [tile, P] = offset + R
    oky = (dy >= 0) & (dy <= 2 * R)
    rel = torch.zeros(tile, tile, P, P, dtype=torch.bool)
    dyc, dxc = dy.clamp(0, 2 * R), dy.clamp(0, 2 * R)
    rel = offsets[dyc[:, None, :, None], dxc[None, :, None, :]] & oky[:, None, :, None] & oky[None, :, None, :]
    rel = rel.reshape(tile * tile, P * P)
    # absolute positions of patch cells for every tile
    ty = torch.arange(nty) * tile
    tx = torch.arange(ntx) * tile
    py = ty[:, None] + c[None, :] - R  # [nty, P]
    px = tx[:, None] + c[None, :] - R  # [ntx, P]
    vy = (py >= 0) & (py < h)
    vx = (px >= 0) & (px < w)
    valid = vy[:, None, :, None] & vx[None, :, None, :]  # [nty, ntx, P, P]
    ref_index = (py.clamp(0, h - 1)[:, None, :, None] * w + px.clamp(0, w - 1)[None, :, None, :])
    ref_index = torch.where(valid, ref_index, torch.zeros((), dtype=ref_index.dtype))
    valid = valid.reshape(nty, ntx, 1, P * P)
    keep = rel[None, None] & valid
    bias = torch.zeros(keep.shape, dtype=torch.float32).masked_fill_(~keep, NEG_INF)
    return WindowGeometry(h, w, R, tile, nty, ntx, bias, ref_index.reshape(nty, ntx, P * P))


def window_geometry(h: int, w: int, offsets: torch.Tensor, tile: int = 8) -> WindowGeometry:
    return _window_geometry(h, w, offsets.contiguous().numpy().tobytes(), int(offsets.shape[0]), tile)


def pad_channels_last(features: torch.Tensor, geo: WindowGeometry) -> torch.Tensor:
    """``[D, h, w]`` -> zero-padded channels-last ``[nty*t + 2R, ntx*t + 2R, D]`` for :func:`window_topk`."""
    D, h, w = features.shape
    R, t = geo.R, geo.tile
    out = features.new_zeros(geo.nty * t + 2 * R, geo.ntx * t + 2 * R, D)
    out[R:R + h, R:R + w] = features.permute(1, 2, 0)
    return out


def query_tiles(features: torch.Tensor, geo: WindowGeometry) -> torch.Tensor:
    """``[D, h, w]`` -> ``[nty, ntx, t*t, D]`` (zero rows for padding locations)."""
    D, h, w = features.shape
    t = geo.tile
    q = features.new_zeros(geo.nty * t, geo.ntx * t, D)
    q[:h, :w] = features.permute(1, 2, 0)
    return q.view(geo.nty, t, geo.ntx, t, D).permute(0, 2, 1, 3, 4).reshape(geo.nty, geo.ntx, t * t, D)


def band_patches(key_padded: torch.Tensor, geo: WindowGeometry, by: int) -> torch.Tensor:
    """The context patches of tile row ``by``: ``[ntx, P*P, D]`` (a copy; the patches of neighbouring tiles
    overlap), from the padded channels-last key of :func:`pad_channels_last`."""
    t, P = geo.tile, geo.patch
    band = key_padded[by * t: by * t + P]  # [P, Wp, D]
    patches = band.unfold(1, P, t)  # [P, ntx, D, P]
    return patches.permute(1, 0, 3, 2).reshape(geo.ntx, P * P, key_padded.shape[-1])


def window_topk(
    qtiles: torch.Tensor,
    key_padded: torch.Tensor,
    geo: WindowGeometry,
    k: int,
    reduce: str | None = None,
    temperature: float = 1.0,
) -> TopK:
    """Exact windowed top-k for all target locations of a frame.

    qtiles: ``[nty, ntx, t*t, D]`` from :func:`query_tiles`; key_padded: from :func:`pad_channels_last`.
    Returns values/index ``[h*w, k]`` in row-major target order.
    """
    t, P = geo.tile, geo.patch
    nty, ntx = geo.nty, geo.ntx
    kk = P * P if k <= 0 else min(k, P * P)
    values = qtiles.new_empty(nty, ntx, t * t, kk)
    index = torch.empty(nty, ntx, t * t, kk, dtype=torch.long)
    stat = qtiles.new_empty(nty, ntx, t * t) if reduce else None
    bias = geo.bias.to(qtiles.dtype)
    for by in range(nty):
        a = torch.bmm(qtiles[by], band_patches(key_padded, geo, by).transpose(1, 2))  # [ntx, t*t, P*P]
        a += bias[by]
        if reduce:
            stat[by] = _reduce_stat(a, reduce, temperature)
        v, i = torch.topk(a, kk, dim=2)
        values[by] = v
        index[by] = torch.gather(geo.ref_index[by][:, None, :].expand(ntx, t * t, P * P), 2, i)
    # tiles -> row-major locations, dropping padded targets
    def untile(x: torch.Tensor) -> torch.Tensor:
        tail = x.shape[3:]
        x = x.reshape(nty, ntx, t, t, *tail).transpose(1, 2).reshape(nty * t, ntx * t, *tail)
        return x[: geo.h, : geo.w].reshape(geo.h * geo.w, *tail)

    return TopK(untile(values), untile(index), untile(stat) if stat is not None else None)


def l2_normalize(features: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return F.normalize(features, p=2, dim=dim, eps=1e-12)
