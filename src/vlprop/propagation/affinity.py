"""Top-k affinity kernels: for every target location, the k best-matching locations of one context frame.

Two exact kernels compute the same thing as a dense ``[HW, HW]`` affinity followed by masking and top-k,
without ever materialising it:

* :func:`dense_topk` -- unrestricted (or compat-masked) frames: target rows in chunks, one GEMM per chunk,
  memory ``O(chunk * HW)``.
* :func:`window_topk` -- spatially restricted frames: the target grid is cut into ``t x t`` tiles; each tile
  is matched by one GEMM against the ``(t+2R) x (t+2R)`` patch of the context frame that holds every window
  of its locations, and an additive bias (0 / -inf) keeps exactly the candidates of each location's window
  inside the frame. Memory ``O(HW * (t+2R)^2 / t^2)`` per band of tiles, i.e. linear in ``HW``. The engine's
  ``window_kernel="patch"``.
* :func:`window_topk_exact` -- the same result, but each tile is matched only against the cells that the window
  of at least one of its locations contains (808 instead of 900 for the crw disk at ``t = 8``), gathered by
  index, a few tiles at a time so that the affinity block stays in cache, with reused buffers. The engine's
  default (``window_kernel="exact"``).

:func:`window_topk_exact_joint` matches several windowed frames and keeps one joint top-k per location (the
engine's ``overall`` aggregation on the CPU, fp32/fp64). Top-k: :func:`block_topk` (exact, two stages) replaces
``torch.topk`` on the CPU. GEMMs of the dense kernel go
through :func:`gemm` (MKL or oneDNN, see ``VLPROP_GEMM``).

Both return raw affinities (dot products) of the survivors, their flat indices in the context frame, and
optionally a per-target statistic of the whole candidate set (log-sum-exp of ``a / T`` or the plain sum),
which normalisers that are not restricted to the k survivors need.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
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


# ---------------------------------------------------------------------------------------------- GEMM backends
# fp32 affinity GEMMs on the CPU can run through MKL (torch.mm) or oneDNN (torch.ops.mkldnn._linear_pointwise,
# which oneDNN's verbose log confirms is a oneDNN matmul in torch 2.x; torch.mm of fp32 goes to MKL sgemm).
# Which is faster depends on the CPU and the shape, so by default (VLPROP_GEMM=auto) the first GEMM of each
# shape in a process times both, alternately, and the faster one is kept for that shape (cached). VLPROP_GEMM=mkl
# or =onednn forces one. Both are exact fp32 GEMMs: results agree to fp32 rounding (summation order).
_GEMM_CHOICE: dict = {}


def gemm_setting() -> str:
    """``VLPROP_GEMM`` (``auto`` | ``mkl`` | ``onednn``), read at every call so tests and benchmarks can switch it."""
    v = os.environ.get("VLPROP_GEMM", "auto").strip().lower() or "auto"
    if v not in ("auto", "mkl", "onednn"):
        raise ValueError(f"VLPROP_GEMM must be auto, mkl or onednn, not {v!r}")
    return v


def _onednn_ok(a: torch.Tensor) -> bool:
    return a.device.type == "cpu" and a.dtype == torch.float32 and torch.backends.mkldnn.is_available() \
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _mm_onednn(a: torch.Tensor, b_t: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    r = torch.ops.mkldnn._linear_pointwise(a.contiguous(), b_t.t().contiguous(), None, "none", [], "")
    if out is None:
        return r
    return out.copy_(r)


def _mm_mkl(a: torch.Tensor, b_t: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    return torch.mm(a, b_t) if out is None else torch.mm(a, b_t, out=out)


def _pick_backend(a: torch.Tensor, b_t: torch.Tensor, out: torch.Tensor | None, repeats: int = 3) -> str:
    import time
    times = {"mkl": [], "onednn": []}
    fns = {"mkl": _mm_mkl, "onednn": _mm_onednn}
    for name, fn in fns.items():  # warm-up (oneDNN builds its primitive on the first call)
        fn(a, b_t, out)
    for _ in range(repeats):  # alternate, so background load hits both alike
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(a, b_t, out)
            times[name].append(time.perf_counter() - t0)
    med = {n: sorted(t)[len(t) // 2] for n, t in times.items()}
    return min(med, key=med.get)


def gemm(a: torch.Tensor, b_t: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``a [n, D] @ b_t [D, m]`` (``b_t`` usually the transpose of a contiguous ``[m, D]`` key) through the
    backend of :func:`gemm_setting`; other devices and dtypes always use ``torch.mm``."""
    setting = gemm_setting()
    if setting == "mkl" or not _onednn_ok(a):
        return _mm_mkl(a, b_t, out)
    if setting == "onednn":
        return _mm_onednn(a, b_t, out)
    key = (tuple(a.shape), tuple(b_t.shape), a.dtype, torch.get_num_threads())
    choice = _GEMM_CHOICE.get(key)
    if choice is None:
        choice = _GEMM_CHOICE[key] = _pick_backend(a, b_t, out)
    return (_mm_onednn if choice == "onednn" else _mm_mkl)(a, b_t, out)


def _reduce_stat(a: torch.Tensor, reduce: str | None, temperature: float) -> torch.Tensor | None:
    """Per-row statistic over the last dim, ignoring -inf entries."""
    if reduce is None:
        return None
    if a.dtype in (torch.bfloat16, torch.float16):  # statistics of low-precision affinities in fp32
        a = a.float()
    if reduce == "lse":
        return torch.logsumexp(a / temperature, dim=-1)
    if reduce == "sum":
        return torch.where(torch.isfinite(a), a, torch.zeros((), dtype=a.dtype)).sum(-1)
    raise ValueError(f"unknown reduction {reduce!r}")


def block_topk(a: torch.Tensor, k: int, block: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(a, k, dim=-1)`` (largest, sorted) computed in two stages, exact.

    The row is cut into blocks of ``block`` columns; the ``k`` largest entries of a row lie in the ``k`` blocks
    with the largest maxima (a block holding one of them has a maximum at least that large, and at most ``k-1``
    entries are larger), so a top-k of the block maxima, then a top-k of those blocks' ``k * block`` entries
    (plus the columns of a last partial block) gives the same values; only equal values may be picked at other
    positions than ``torch.topk`` would. ``torch.topk`` on CPU costs per element of the row, so this does
    about ``n / block + k * block`` instead of ``n``. Falls back to ``torch.topk`` where that is not smaller, and
    everywhere with ``VLPROP_TOPK=torch`` (the previous behaviour, for benchmarks). Block ``b`` holds the columns
    ``b, b + nb, b + 2 nb, ...`` (``nb = n // block``), so its maxima are one vectorised pass over the row.
    """
    n = a.shape[-1]
    nb = n // block
    if k <= 0 or a.device.type != "cpu" or nb <= k or nb + k * block + (n - nb * block) >= n // 2 \
            or os.environ.get("VLPROP_TOPK", "block") == "torch":
        return torch.topk(a, k, dim=-1)
    lead = a.shape[:-1]
    main = a[..., : nb * block]
    bmax = _block_maxima(main, block, nb)  # [..., nb]
    bi = torch.topk(bmax, k, dim=-1).indices  # [..., k]
    cols = (bi.unsqueeze(-1) + nb * torch.arange(block, device=a.device)).reshape(*lead, k * block)
    if nb * block < n:
        tail = torch.arange(nb * block, n, device=a.device).expand(*lead, n - nb * block)
        cols = torch.cat([cols, tail], dim=-1)
    v, j = torch.topk(torch.gather(a, -1, cols), k, dim=-1)
    return v, torch.gather(cols, -1, j)


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


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
    values = torch.empty(n, kk, dtype=query.dtype, device=query.device)
    index = torch.empty(n, kk, dtype=torch.long, device=query.device)
    stat = torch.empty(n, dtype=_stat_dtype(query.dtype), device=query.device) if reduce else None
    key_t = key.t()
    workspace = dense_workspace(workspace, query, key, chunk)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        a = gemm(query[s:e], key_t, out=workspace[: (e - s) * m].view(e - s, m))
        if reduce and reduce_before_mask:
            stat[s:e] = _reduce_stat(a, reduce, temperature)
        if allowed is not None:
            mask = allowed(s, e) if callable(allowed) else allowed[s:e]
            a.masked_fill_(~mask, masked_value)
        if reduce and not reduce_before_mask:
            stat[s:e] = _reduce_stat(a, reduce, temperature)
        v, i = block_topk(a, kk)
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


@lru_cache(maxsize=16)
def _window_geometry_on(h: int, w: int, offsets_key: bytes, side: int, tile: int, device: str) -> WindowGeometry:
    geo = _window_geometry(h, w, offsets_key, side, tile)
    if device == "cpu":
        return geo
    return replace(geo, bias=geo.bias.to(device), ref_index=geo.ref_index.to(device))


def window_geometry(h: int, w: int, offsets: torch.Tensor, tile: int = 8,
                    device: torch.device | str = "cpu") -> WindowGeometry:
    """Tiling of the ``"patch"`` kernel, its tensors on ``device`` (cached per shape and device)."""
    return _window_geometry_on(h, w, offsets.contiguous().cpu().numpy().tobytes(), int(offsets.shape[0]), tile,
                               str(torch.device(device)))


def pad_channels_last(features: torch.Tensor, geo: WindowGeometry) -> torch.Tensor:
    """``[D, h, w]`` -> zero-padded channels-last ``[nty*t + 2R, ntx*t + 2R, D]`` for :func:`window_topk`."""
    D, h, w = features.shape
    R, t = geo.R, geo.tile
    out = features.new_zeros(geo.nty * t + 2 * R, geo.ntx * t + 2 * R, D)
    out[R:R + h, R:R + w] = features.permute(1, 2, 0)
    return out


def _untile(x: torch.Tensor, geo, lead: int) -> torch.Tensor:
    """Per-tile results -> row-major target order: ``x`` holds the ``t*t`` locations of every tile (tiles in
    row-major order) in its first ``lead`` dims (``[nty, ntx, t*t, ...]``, ``[tiles, t*t, ...]`` or
    ``[tiles*t*t, ...]``); returns ``[h*w, ...]`` without the padding locations. ``geo``: a
    :class:`WindowGeometry` or :class:`ExactGeometry`."""
    t = geo.tile
    tail = x.shape[lead:]
    x = x.reshape(geo.nty, geo.ntx, t, t, *tail).transpose(1, 2).reshape(geo.nty * t, geo.ntx * t, *tail)
    return x[: geo.h, : geo.w].reshape(geo.h * geo.w, *tail)


def query_tiles(features: torch.Tensor, geo: WindowGeometry) -> torch.Tensor:
    """``[D, h, w]`` -> ``[nty, ntx, t*t, D]`` (zero rows for padding locations)."""
    D, h, w = features.shape
    t = geo.tile
    q = features.new_zeros(geo.nty * t, geo.ntx * t, D)
    q[:h, :w] = features.permute(1, 2, 0)  # (geo: a WindowGeometry or an ExactGeometry)
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
    index = torch.empty(nty, ntx, t * t, kk, dtype=torch.long, device=qtiles.device)
    stat = torch.empty(nty, ntx, t * t, dtype=_stat_dtype(qtiles.dtype), device=qtiles.device) if reduce else None
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
    stat = _untile(stat, geo, 3) if stat is not None else None
    return TopK(_untile(values, geo, 3), _untile(index, geo, 3), stat)


# ------------------------------------------------------------------------------------ exact-work window kernel
@dataclass
class ExactGeometry:
    """Tiling of the ``"exact"`` window kernel for an ``h x w`` grid and one window (cached per shape, device).

    Each ``t x t`` tile of targets is matched only against the ``M`` context cells that the window of at least
    one of its locations contains (the Minkowski sum of the tile and the window; for the crw disk r<12 at
    ``t = 8``: 808 cells instead of the patch kernel's 30 x 30 = 900), gathered from the flat context features
    by index. Cells outside the frame index a zero row appended to the features and get ``-inf`` from
    ``cell_bias``; cells outside a target's own window get ``-inf`` from ``win_bias`` (the same for every tile).
    """

    h: int
    w: int
    tile: int
    nty: int
    ntx: int
    M: int
    cells: torch.Tensor      # [nty, ntx * M] int64 row of each tile cell in the extended key (h*w = zero row)
    ref_index: torch.Tensor  # [nty, ntx, M] int64 flat index in the frame (0 outside)
    cell_bias: torch.Tensor  # [nty, ntx, 1, M] float 0 / -inf (outside the frame)
    win_bias: torch.Tensor   # [t*t, M] float 0 / -inf (outside the target's window)

    def per_tile(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(cells [T, M], ref_index [T, M], cell_bias [T, 1, M], win_bias [t*t, M])`` over the ``T`` tiles in
        row-major order, the biases in ``dtype`` (the scores' dtype)."""
        n_tiles = self.nty * self.ntx
        return (self.cells.view(n_tiles, self.M), self.ref_index.view(n_tiles, self.M),
                self.cell_bias.view(n_tiles, 1, self.M).to(dtype), self.win_bias.to(dtype))


@lru_cache(maxsize=16)
def _exact_geometry(h: int, w: int, offsets_key: bytes, side: int, tile: int, device: str) -> ExactGeometry:
    offsets = torch.frombuffer(bytearray(offsets_key), dtype=torch.bool).reshape(side, side)
    R = (side - 1) // 2
    t = tile
    P = t + 2 * R
    nty, ntx = -(-h // t), -(-w // t)
    a = torch.arange(t)
    c = torch.arange(P)
    d = c[None, :] - a[:, None]  # [t, P] = offset + R
    ok = (d >= 0) & (d <= 2 * R)
    dc = d.clamp(0, 2 * R)
    rel = offsets[dc[:, None, :, None], dc[None, :, None, :]] & ok[:, None, :, None] & ok[None, :, None, :]
    rel = rel.reshape(t * t, P * P)
    keep = rel.any(0)  # patch cells seen by some location of the tile
    if not bool(keep.any()):  # an empty window (disk of radius <= 0): one cell, -inf for every location
        keep[(P * P) // 2] = True
    cols = keep.nonzero().reshape(-1)
    M = int(cols.numel())
    cy, cx = cols // P, cols % P
    py = (torch.arange(nty) * t)[:, None] + cy[None, :] - R  # [nty, M]
    px = (torch.arange(ntx) * t)[:, None] + cx[None, :] - R  # [ntx, M]
    valid = ((py >= 0) & (py < h))[:, None, :] & ((px >= 0) & (px < w))[None, :, :]  # [nty, ntx, M]
    flat = py.clamp(0, h - 1)[:, None, :] * w + px.clamp(0, w - 1)[None, :, :]
    ref_index = torch.where(valid, flat, torch.zeros((), dtype=flat.dtype))
    cells = torch.where(valid, flat, torch.full((), h * w, dtype=flat.dtype)).reshape(nty, ntx * M)
    cell_bias = torch.zeros(nty, ntx, 1, M).masked_fill_(~valid[:, :, None, :], NEG_INF)
    win_bias = torch.zeros(t * t, M).masked_fill_(~rel[:, cols], NEG_INF)
    return ExactGeometry(h, w, t, nty, ntx, M, cells.to(device), ref_index.to(device), cell_bias.to(device),
                         win_bias.to(device))


def exact_geometry(h: int, w: int, offsets: torch.Tensor, tile: int = 8,
                   device: torch.device | str = "cpu") -> ExactGeometry:
    return _exact_geometry(h, w, offsets.contiguous().cpu().numpy().tobytes(), int(offsets.shape[0]), tile,
                           str(torch.device(device)))


def extend_key(flat: torch.Tensor) -> torch.Tensor:
    """Context features ``[hw, D]`` -> ``[hw + 1, D]`` with a zero row (the target of out-of-frame cells)."""
    return torch.cat([flat, flat.new_zeros(1, flat.shape[1])])


@dataclass
class WindowWorkspace:
    """Buffers of :func:`window_topk_exact`, kept by the engine across context frames and target frames (a
    fresh band buffer of tens of MiB would be zero-filled and faulted in by the kernel at every match)."""

    keys: torch.Tensor | None = None    # [ntx * M, D] gathered context cells of one band of tiles
    scores: torch.Tensor | None = None  # [ntx, t*t, M] affinities of one band

    def get(self, name: str, numel: int, like: torch.Tensor) -> torch.Tensor:
        buf = getattr(self, name)
        if buf is None or buf.numel() < numel or buf.dtype != like.dtype or buf.device != like.device:
            buf = like.new_empty(numel)
            setattr(self, name, buf)
        return buf[:numel]


def window_topk_exact(
    qtiles: torch.Tensor,
    key_ext: torch.Tensor,
    geo: ExactGeometry,
    k: int,
    reduce: str | None = None,
    temperature: float = 1.0,
    workspace: WindowWorkspace | None = None,
    group: int | None = None,
) -> TopK:
    """Exact windowed top-k like :func:`window_topk`, computing only the cells some location of each tile can
    see (see :class:`ExactGeometry`).

    qtiles: ``[nty, ntx, t*t, D]`` from :func:`query_tiles`; key_ext: ``[h*w + 1, D]`` from :func:`extend_key`.
    Tiles are matched ``group`` at a time (default: as many as keep the affinity block near 1 MiB), so that the
    bias, the top-k and the next GEMM find the block still in cache; every buffer is reused (``workspace``).
    Returns values/index ``[h*w, min(k, M)]`` in row-major target order (``-inf`` values, with some in-frame
    index, where a location has fewer candidates than that). ``k <= 0``: all ``M`` cells of each tile's window
    union, not sorted and without a top-k (``-inf`` outside the location's own window).
    """
    t, M = geo.tile, geo.M
    nty, ntx = geo.nty, geo.ntx
    n_tiles = nty * ntx
    tt = t * t
    D = key_ext.shape[1]
    kk = M if k <= 0 else min(k, M)
    dev = qtiles.device
    if group is None:
        group = max(1, min(n_tiles, (1 << 18) // (tt * M)))
    q = qtiles.reshape(n_tiles, tt, D)
    cells, ref_index, cell_bias, win_bias = geo.per_tile(qtiles.dtype)
    values = qtiles.new_empty(n_tiles, tt, kk)
    index = torch.empty(n_tiles, tt, kk, dtype=torch.long, device=dev)
    slot = torch.empty(n_tiles, tt, kk, dtype=torch.long, device=dev) if k > 0 else None
    stat = torch.empty(n_tiles, tt, dtype=_stat_dtype(qtiles.dtype), device=dev) if reduce else None
    ws = workspace if workspace is not None else WindowWorkspace()
    keys_buf = ws.get("keys", group * M * D, key_ext)
    scores_buf = ws.get("scores", group * tt * M, qtiles)
    for s in range(0, n_tiles, group):
        e = min(n_tiles, s + group)
        g = e - s
        keys = torch.index_select(key_ext, 0, cells[s:e].reshape(-1), out=keys_buf[: g * M * D].view(g * M, D))
        # k <= 0: the affinities are the result (written in place, no top-k)
        out = values[s:e] if slot is None else scores_buf[: g * tt * M].view(g, tt, M)
        a = torch.baddbmm(cell_bias[s:e], q[s:e], keys.view(g, M, D).transpose(1, 2), out=out)
        a += win_bias
        if reduce:
            stat[s:e] = _reduce_stat(a, reduce, temperature)
        if slot is not None:
            values[s:e], slot[s:e] = block_topk(a, kk)
    if slot is None:
        index.copy_(ref_index[:, None, :].expand(n_tiles, tt, M))
    else:
        torch.gather(ref_index[:, None, :].expand(n_tiles, tt, M), 2, slot, out=index)

    stat = _untile(stat, geo, 2) if stat is not None else None
    return TopK(_untile(values, geo, 2), _untile(index, geo, 2), stat)

@dataclass
class SoftmaxSum:
    """A softmax-weighted label sum over candidate sets met one after another (the online softmax of flash
    attention): per target location the largest logit ``m`` so far, ``z = sum exp(l - m)`` and
    ``u = sum exp(l - m) * labels``; :meth:`add` folds in another set, :meth:`result` is ``u / z``."""

    m: torch.Tensor  # [N]
    z: torch.Tensor  # [N]
    u: torch.Tensor  # [N, C]

    def add(self, logits: torch.Tensor, labels: torch.Tensor, rows: slice = slice(None)) -> None:
        """Fold in candidates ``logits [..., K]`` (already divided by T; ``-inf`` = none; overwritten) of the
        target rows ``rows`` (as many as ``logits`` has leading entries, in order), with labels that ``logits @
        labels`` weights: ``[K, C]`` shared by every row (a dense context frame) or ``[g, K, C]`` per group of
        rows (a tile's window cells, ``logits [g, t*t, K]``)."""
        lead = logits.shape[:-1]
        m0 = self.m[rows].view(lead)
        m = torch.maximum(m0, logits.amax(-1))
        e = torch.exp_(logits.sub_(m[..., None]))
        scale = torch.exp(m0 - m)
        self.z[rows] = (self.z[rows].view(lead) * scale + e.sum(-1)).reshape(-1)
        self.u[rows] = (self.u[rows].view(*lead, -1) * scale[..., None] + e @ labels).reshape(-1, self.u.shape[1])
        self.m[rows] = m.reshape(-1)

    def result(self) -> torch.Tensor:
        return self.u / self.z[:, None]


def window_attend(
    qtiles: torch.Tensor,
    key_exts: list[torch.Tensor],
    label_exts: list[torch.Tensor],
    geo: ExactGeometry,
    temperature: float,
    label_dtype: torch.dtype = torch.float32,
    workspace: WindowWorkspace | None = None,
) -> SoftmaxSum:
    """One softmax over the windows of every context frame (no top-k: MAST/LIIR's union of windows) and its
    weighted label sum, tile by tile: a tile's ``M`` window cells (see :class:`ExactGeometry`) are gathered once
    for its ``t*t`` locations, with their labels, so no per-location candidate list (``h*w x frames x M`` values
    and indices) is ever built.

    key_exts / label_exts: per frame ``[h*w + 1, D]`` (:func:`extend_key`) and ``[h*w + 1, C]`` (labels
    transposed, a zero last row). Returns the running sums of every target location in row-major order (dense
    context frames can then be folded in with :meth:`SoftmaxSum.add`)."""
    t, M = geo.tile, geo.M
    nty, ntx = geo.nty, geo.ntx
    n_tiles = nty * ntx
    tt = t * t
    D = key_exts[0].shape[1]
    C = label_exts[0].shape[1]
    dev = qtiles.device
    group = max(1, min(n_tiles, (1 << 18) // (tt * M)))
    q = qtiles.reshape(n_tiles, tt, D)
    cells, _, cell_bias, win_bias = geo.per_tile(qtiles.dtype)
    acc = SoftmaxSum(torch.full((n_tiles * tt,), float("-inf"), dtype=label_dtype, device=dev),
                     torch.zeros(n_tiles * tt, dtype=label_dtype, device=dev),
                     torch.zeros(n_tiles * tt, C, dtype=label_dtype, device=dev))
    ws = workspace if workspace is not None else WindowWorkspace()
    keys_buf = ws.get("keys", group * M * D, key_exts[0])
    scores_buf = ws.get("scores", group * tt * M, qtiles)
    inv_t = 1.0 / temperature
    for s in range(0, n_tiles, group):
        e = min(n_tiles, s + group)
        g = e - s
        idx = cells[s:e].reshape(-1)
        rows = slice(s * tt, e * tt)
        for key_ext, lab_ext in zip(key_exts, label_exts):
            keys = torch.index_select(key_ext, 0, idx, out=keys_buf[: g * M * D].view(g * M, D))
            a = torch.baddbmm(cell_bias[s:e], q[s:e], keys.view(g, M, D).transpose(1, 2),
                              out=scores_buf[: g * tt * M].view(g, tt, M))
            a += win_bias
            logits = a.to(label_dtype).mul_(inv_t) if a.dtype != label_dtype else a.mul_(inv_t)
            acc.add(logits, lab_ext.index_select(0, idx).view(g, M, C), rows)

    return SoftmaxSum(_untile(acc.m, geo, 1), _untile(acc.z, geo, 1), _untile(acc.u, geo, 1))


def _block_maxima(a: torch.Tensor, block: int, nb: int) -> torch.Tensor:
    """Maxima of the blocks of :func:`block_topk` (block ``b`` = columns ``b, b + nb, ...``): ``[..., nb]``. In
    bf16/fp16 a running elementwise maximum over the ``block`` column slices (1.8x faster than ``amax`` over the
    strided view on this CPU; in fp32 ``amax`` is the faster)."""
    if a.dtype not in (torch.bfloat16, torch.float16):
        return a[..., : nb * block].unflatten(-1, (block, nb)).amax(-2)
    out = a[..., :nb].clone()
    for j in range(1, block):
        torch.maximum(out, a[..., j * nb:(j + 1) * nb], out=out)
    return out


def window_topk_exact_joint(
    qtiles: torch.Tensor,
    key_exts: list[torch.Tensor],
    geo: ExactGeometry,
    k: int,
    frame_offsets: list[int] | None = None,
    workspace: WindowWorkspace | None = None,
    block: int = 8,
) -> TopK:
    """The ``k`` best candidates of every target location over several windowed context frames at once:
    the same survivors as :func:`window_topk_exact` per frame followed by a top-k of their union (exact), but
    with one two-stage top-k per location instead of one per location and frame (``torch.topk`` on the CPU
    costs about a microsecond per row whatever its length, more than the rest of a windowed match).

    For each tile, the affinities with every frame's ``M`` cells go into one ``[F, t*t, M]`` block; within each
    frame, block ``b`` of a row holds the columns ``b, b + nb, ...`` (``nb = M // block``); the ``k`` blocks
    with the largest maxima over all frames hold the ``k`` best entries (see :func:`block_topk`), so a top-k
    of the ``F * nb`` block maxima, then of those blocks' entries (plus every frame's columns of a last
    partial block) gives them. ``index`` is ``frame_offsets[f] + cell`` (default ``f * h * w``).
    Returns values/index ``[h*w, k]`` in row-major target order.
    """
    F = len(key_exts)
    t, M = geo.tile, geo.M
    nty, ntx = geo.nty, geo.ntx
    n_tiles = nty * ntx
    tt = t * t
    D = key_exts[0].shape[1]
    hw = geo.h * geo.w
    nb = M // block
    kk = min(k, F * M)
    if k <= 0 or nb * F <= kk:
        raise ValueError("window_topk_exact_joint needs 0 < k < frames * (cells // block)")
    dev = qtiles.device
    offs = torch.tensor(frame_offsets if frame_offsets is not None else [f * hw for f in range(F)],
                        dtype=torch.long, device=dev)
    q = qtiles.reshape(n_tiles, tt, D)
    cells, ref_index, cell_bias, win_bias = geo.per_tile(qtiles.dtype)
    values = qtiles.new_empty(n_tiles, tt, kk)
    index = torch.empty(n_tiles, tt, kk, dtype=torch.long, device=dev)
    ws = workspace if workspace is not None else WindowWorkspace()
    keys_buf = ws.get("keys", F * M * D, key_exts[0]).view(F, M, D)
    scores = ws.get("scores", F * tt * M, qtiles).view(F, tt, M)
    # candidate columns of a row, as flat positions in `scores`: k blocks, then every frame's tail columns
    lane = torch.arange(block, device=dev) * nb  # [block]
    tail_cols = torch.arange(nb * block, M, device=dev)
    tails = (torch.arange(F, device=dev)[:, None] * (tt * M) + tail_cols[None, :]).reshape(-1)  # [F * tail]
    row_base = torch.arange(tt, device=dev)[:, None] * M  # [tt, 1]
    bias = win_bias.new_empty(tt, M)
    for i in range(n_tiles):
        for f, key_ext in enumerate(key_exts):
            torch.index_select(key_ext, 0, cells[i], out=keys_buf[f])
        # one batched GEMM over the frames (bf16 on AMX: 2.3x faster than a GEMM per frame; fp32: 1.06x), the
        # tile's frame border and the window in its bias
        torch.add(cell_bias[i], win_bias, out=bias)
        torch.baddbmm(bias, q[i:i + 1].expand(F, tt, D), keys_buf.transpose(1, 2), out=scores)
        bmax = _block_maxima(scores, block, nb)  # [F, tt, nb]
        bmax = bmax.permute(1, 0, 2).reshape(tt, F * nb)
        bi = torch.topk(bmax, kk, dim=1).indices  # [tt, kk]: frame = bi // nb, block = bi % nb
        start = (bi // nb) * (tt * M) + bi % nb  # flat position of the block's first column, minus the row
        cand = (start[:, :, None] + lane).reshape(tt, kk * block)
        if tails.numel():
            cand = torch.cat([cand, tails.expand(tt, -1)], dim=1)
        cand = cand + row_base  # [tt, n_cand] flat positions in scores
        v, j = torch.topk(scores.view(-1)[cand], kk, dim=1)
        pos = torch.gather(cand, 1, j)  # flat positions of the survivors
        frame = torch.div(pos, tt * M, rounding_mode="floor")
        col = pos % M
        values[i] = v
        index[i] = ref_index[i][col] + offs[frame]

    return TopK(_untile(values, geo, 2), _untile(index, geo, 2), None)


def l2_normalize(features: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return F.normalize(features, p=2, dim=dim, eps=1e-12)
