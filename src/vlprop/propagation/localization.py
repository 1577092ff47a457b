"""Localisation variants of the propagation engine beyond the fixed window (DESIGN §4, McKee Tab. 4):
MAST's predicted region of interest (ROI) for long-range references and LIIR's compactness prior.

Conventions: grid positions are ``(y, x)`` in cells of the feature grid (cell ``(i, j)`` sits at ``(i, j)``);
flat indices are ``y * w + x``. Every function works on one context frame and a chunk of target locations, so
memory stays ``O(chunk * h * w)`` whatever the video length.

ROI (MAST ``models/colorizer.py``, read as a specification in shared/specs/training-methods.md §4.4):

Both steps read one affinity block ``a = q_chunk @ ref^T`` ``[n, h*w]`` per chunk of ``n`` targets and reference
(one GEMM, then gathers of scalars): memory ``O(n * h * w)`` per chunk, never a dense ``hw x hw`` affinity and
never ``n * window * D`` gathered feature vectors (4 corners x ``(2R+1)^2`` positions x ``D`` per target was
~30x slower on a 2-core CPU at 480p).

1. coarse match of target location ``i`` against reference ``r`` at dilated offsets
   ``a(i, delta) = <f_t(i), f_r(i + d * delta)>`` for ``delta in [-Rc, Rc]^2`` (0 where ``i + d * delta`` is
   outside the frame, as zero-padded features give), ``p = softmax(a / T)`` over the ``(2Rc+1)^2`` offsets;
2. offset ``o(i) = d * sum_delta p(delta) * delta`` (a soft-argmax, real-valued, in cells);
3. fine window: the ``(2R+1)^2`` positions ``i + o(i) + delta'`` (``delta' in [-R, R]^2``), where the features
   and labels of ``r`` are sampled bilinearly (corners outside the frame count as zero; a position is a
   candidate only if at least one corner is inside). ``compat=True`` maps each position ``p`` to
   ``p * n / (n - 1) - 0.5`` per axis (MAST's ``grid_sample`` without ``align_corners=True``).
"""
from __future__ import annotations

import math

import torch

NEG_INF = float("-inf")


def _offsets(radius: int, dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[(2r+1)^2, 2]`` integer offsets ``(dy, dx)`` in row-major order."""
    d = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    return torch.stack([dy.reshape(-1), dx.reshape(-1)], dim=1)


def _window_cells(ys: torch.Tensor, xs: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cells of a separable window per target, rows ``ys [n, Sy]`` x columns ``xs [n, Sx]``: flat indices
    ``[n, Sy*Sx]`` (clamped into the frame) and whether each cell is inside ``[n, Sy, Sx]``."""
    inside = ((ys >= 0) & (ys < h))[:, :, None] & ((xs >= 0) & (xs < w))[:, None, :]
    idx = ys.clamp(0, h - 1)[:, :, None] * w + xs.clamp(0, w - 1)[:, None, :]
    return idx.reshape(len(ys), -1), inside


def roi_coarse_offset(a: torch.Tensor, rows: torch.Tensor, h: int, w: int, dilation: int, radius: int,
                      temperature: float) -> torch.Tensor:
    """Soft-argmax offset ``o(i)`` ``[n, 2]`` (cells, ``(dy, dx)``) of a chunk of target locations.

    a: ``[n, h*w]`` affinities of the chunk's targets with every reference cell (``q @ ref^T``); rows: ``[n]``
    flat indices of the targets.
    """
    off = _offsets(radius, a.dtype, a.device)  # [P, 2], row-major (dy, dx)
    steps = dilation * torch.arange(-radius, radius + 1, device=rows.device)
    py = torch.div(rows, w, rounding_mode="floor")[:, None] + steps  # [n, 2Rc+1]: separable rows x columns
    px = (rows % w)[:, None] + steps
    idx, inside = _window_cells(py, px, h, w)
    v = torch.gather(a, 1, idx)  # [n, P]
    v = torch.where(inside.reshape(len(rows), -1), v, torch.zeros((), dtype=v.dtype))
    p = torch.softmax(v / temperature, dim=1)
    return dilation * (p @ off)


def roi_positions(rows: torch.Tensor, offset: torch.Tensor, h: int, w: int, radius: int,
                  compat: bool = False) -> torch.Tensor:
    """Sample positions ``[n, (2R+1)^2, 2]`` (``(y, x)``, real-valued cells) of the fine windows."""
    off = _offsets(radius, offset.dtype, offset.device)
    ty = torch.div(rows, w, rounding_mode="floor").to(offset.dtype)
    tx = (rows % w).to(offset.dtype)
    centre = torch.stack([ty, tx], dim=1) + offset  # [n, 2]
    pos = centre[:, None, :] + off[None]
    if compat:  # MAST: (n-1)-normalised coordinates read by grid_sample with align_corners=False
        scale = torch.tensor([h / max(h - 1, 1), w / max(w - 1, 1)], dtype=offset.dtype, device=offset.device)
        pos = pos * scale - 0.5
    return pos


def bilinear_corners(pos: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Corners of bilinear sampling at ``pos [..., 2]``: flat indices ``[..., 4]`` (clamped), weights ``[..., 4]``
    (0 for corners outside the frame: zero padding) and whether the position touches the frame ``[...]``."""
    y, x = pos[..., 0], pos[..., 1]
    y0, x0 = torch.floor(y), torch.floor(x)
    fy, fx = y - y0, x - x0
    idx, wts = [], []
    for dy, dx, wt in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        cy, cx = y0.long() + dy, x0.long() + dx
        inside = (cy >= 0) & (cy < h) & (cx >= 0) & (cx < w)
        idx.append(cy.clamp(0, h - 1) * w + cx.clamp(0, w - 1))
        wts.append(torch.where(inside, wt, torch.zeros((), dtype=wt.dtype)))
    touches = (y > -1) & (y < h) & (x > -1) & (x < w)
    return torch.stack(idx, -1), torch.stack(wts, -1), touches


def roi_values(a: torch.Tensor, pos: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Affinities ``[n, P]`` of the targets with the reference features sampled bilinearly at ``pos [n, P, 2]``
    (``-inf`` for positions that do not touch the frame), from ``a [n, h*w]`` (``q @ ref^T``):
    ``<f_t, sum_c w_c f_r(c)> = sum_c w_c <f_t, f_r(c)>`` over the four corners ``c``."""
    idx, wts, touches = bilinear_corners(pos, h, w)
    n, P = pos.shape[:2]
    v = (torch.gather(a, 1, idx.reshape(n, P * 4)).reshape(n, P, 4) * wts).sum(-1)
    return torch.where(touches, v, torch.full((), NEG_INF, dtype=v.dtype))


class RoiWindow:
    """The bilinear corners of a fine window ``centre + [-R, R]^2`` (exact integer offsets, i.e. not MAST's
    rescaled positions): every position of a target shares the fractional part ``(fy, fx)`` of its centre, so the
    corners of all ``(2R+1)^2`` positions are one integer window of ``S = 2R + 2`` cells per side starting at
    ``floor(centre) - R``. Index arithmetic is separable (rows ``[n, S]`` x columns ``[n, S]``), which is what
    makes it cheap: the general path computes 4 corners for each of the ``(2R+1)^2`` positions.

    Attributes: ``idx [n, S*S]`` flat cells (clamped), ``inside [n, S, S]`` (bool), ``fy, fx [n, 1, 1]``,
    ``touches [n, 2R+1, 2R+1]`` (the position is a candidate: at least one corner inside the frame).
    """

    def __init__(self, rows: torch.Tensor, offset: torch.Tensor, h: int, w: int, radius: int):
        ty = torch.div(rows, w, rounding_mode="floor").to(offset.dtype)
        tx = (rows % w).to(offset.dtype)
        cy, cx = ty + offset[:, 0], tx + offset[:, 1]
        y0, x0 = torch.floor(cy), torch.floor(cx)
        self.fy, self.fx = (cy - y0)[:, None, None], (cx - x0)[:, None, None]
        S = 2 * radius + 2
        steps = torch.arange(-radius, radius + 2, device=rows.device)
        ys = y0.long()[:, None] + steps  # [n, S] corner rows
        xs = x0.long()[:, None] + steps
        self.idx, self.inside = _window_cells(ys, xs, h, w)
        # a position (y0 + d + fy, ...) touches the frame iff -1 < y < h and -1 < x < w
        py, px = ys[:, :-1].to(offset.dtype) + self.fy[:, :, 0], xs[:, :-1].to(offset.dtype) + self.fx[:, :, 0]
        self.touches = ((py > -1) & (py < h))[:, :, None] & ((px > -1) & (px < w))[:, None, :]
        self.S = S

    def values(self, a: torch.Tensor) -> torch.Tensor:
        """:func:`roi_values` for this window: ``[n, (2R+1)^2]`` from ``a [n, h*w]``."""
        n, S = self.idx.shape[0], self.S
        c = torch.gather(a, 1, self.idx).reshape(n, S, S)
        c = torch.where(self.inside, c, torch.zeros((), dtype=c.dtype))
        fy, fx = self.fy.to(c.dtype), self.fx.to(c.dtype)
        top = c[:, :-1, :-1] * (1 - fx) + c[:, :-1, 1:] * fx
        bottom = c[:, 1:, :-1] * (1 - fx) + c[:, 1:, 1:] * fx
        v = top * (1 - fy) + bottom * fy
        v = torch.where(self.touches, v, torch.full((), NEG_INF, dtype=v.dtype))
        return v.reshape(n, -1)

    def label_weights(self, weights: torch.Tensor, hw: int) -> torch.Tensor:
        """:func:`roi_label_weights` for this window: dense ``[n, h*w]`` from ``weights [n, (2R+1)^2]``."""
        n, S = self.idx.shape[0], self.S
        wv = weights.reshape(n, S - 1, S - 1)
        fy, fx = self.fy.to(wv.dtype), self.fx.to(wv.dtype)
        corner = wv.new_zeros(n, S, S)  # each position spreads its weight on its four corners
        corner[:, :-1, :-1] += wv * (1 - fy) * (1 - fx)
        corner[:, :-1, 1:] += wv * (1 - fy) * fx
        corner[:, 1:, :-1] += wv * fy * (1 - fx)
        corner[:, 1:, 1:] += wv * fy * fx
        corner = torch.where(self.inside, corner, torch.zeros((), dtype=corner.dtype))
        dense = weights.new_zeros(n, hw)
        dense.scatter_add_(1, self.idx, corner.reshape(n, S * S))
        return dense


def roi_label_weights(weights: torch.Tensor, pos: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Dense ``[n, h*w]`` weights on the reference's cells equivalent to weighting the bilinear label samples at
    ``pos [n, P, 2]`` with ``weights [n, P]`` (``out = dense @ labels^T``)."""
    idx, wts, _ = bilinear_corners(pos, h, w)
    n, P = pos.shape[:2]
    dense = weights.new_zeros(n, h * w)
    dense.scatter_add_(1, idx.reshape(n, P * 4), (weights[:, :, None] * wts).reshape(n, P * 4))
    return dense


def compactness_weights(weights: torch.Tensor, values: torch.Tensor, index: torch.Tensor, w: int, k: int,
                        threshold: float, fwhm: float) -> torch.Tensor:
    """LIIR's compactness prior on one reference frame's candidates.

    weights: ``[N, K]`` joint weights of the frame's candidates; values: ``[N, K]`` their affinities (``-inf`` =
    not a candidate); index: ``[N, K]`` flat cell indices; ``w``: grid width. Where the frame's largest weight
    exceeds ``threshold``, the weights become ``sum_m pi_m exp(-4 ln2 |p - u_m|^2 / fwhm^2)`` with ``u_m`` the
    cells of the ``k`` largest weights and ``pi = softmax`` of those weights (not renormalised); elsewhere
    they are kept. Returns ``[N, K]``.
    """
    finite = torch.isfinite(values)
    masked = torch.where(finite, weights, torch.full((), NEG_INF, dtype=weights.dtype))
    kk = min(k, weights.shape[1])
    top, sel = torch.topk(masked, kk, dim=1)
    conf = top[:, 0]
    pi = torch.softmax(top, dim=1).nan_to_num(0.0)
    u = torch.gather(index, 1, sel)
    uy, ux = torch.div(u, w, rounding_mode="floor").to(weights.dtype), (u % w).to(weights.dtype)
    py, px = torch.div(index, w, rounding_mode="floor").to(weights.dtype), (index % w).to(weights.dtype)
    d2 = (py[:, :, None] - uy[:, None, :]) ** 2 + (px[:, :, None] - ux[:, None, :]) ** 2  # [N, K, k]
    bumps = (pi[:, None, :] * torch.exp(-4.0 * math.log(2.0) * d2 / fwhm ** 2)).sum(-1)
    bumps = torch.where(finite, bumps, torch.zeros((), dtype=bumps.dtype))
    return torch.where((conf > threshold)[:, None], bumps, weights)


# ----------------------------------------------------------------------------- UVC "track" boxes
# A box is (cy, cx, ry, rx) in grid cells: centre and half-extent; cell (y, x) is inside iff |y - cy| <= ry and
# |x - cx| <= rx. ``None`` = no box (the object propagates over the full frame).
Box = tuple[float, float, float, float]


def box_mask(box: Box, h: int, w: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[h*w]`` bool: the cells inside ``box``."""
    cy, cx, ry, rx = box
    ys = torch.arange(h, dtype=torch.float64, device=device)
    xs = torch.arange(w, dtype=torch.float64, device=device)
    iny = (ys - cy).abs() <= ry
    inx = (xs - cx).abs() <= rx
    return (iny[:, None] & inx[None, :]).reshape(-1)


def box_usable(box: Box | None, h: int, w: int, min_side: int = 3) -> bool:
    """A box covering at least ``min_side`` cells along both axes inside the frame (UVC: smaller = disappeared)."""
    if box is None:
        return False
    cy, cx, ry, rx = box
    ys = torch.arange(h, dtype=torch.float64)
    xs = torch.arange(w, dtype=torch.float64)
    return int(((ys - cy).abs() <= ry).sum()) >= min_side and int(((xs - cx).abs() <= rx).sum()) >= min_side


def tight_box(cells: torch.Tensor, w: int, margin: float) -> Box | None:
    """Box around the flat cell indices ``cells`` (covering them fully), half-extents scaled by ``1 + margin``."""
    if cells.numel() == 0:
        return None
    ys = torch.div(cells, w, rounding_mode="floor").double()
    xs = (cells % w).double()
    y0, y1, x0, x1 = float(ys.min()), float(ys.max()), float(xs.min()), float(xs.max())
    return ((y0 + y1) / 2, (x0 + x1) / 2, ((y1 - y0) / 2 + 0.5) * (1 + margin), ((x1 - x0) / 2 + 0.5) * (1 + margin))


def mean_shift(points: torch.Tensor, bandwidth: float, sigma: float, tol: float = 0.1,
               max_iter: int = 100) -> torch.Tensor:
    """Mode ``[2]`` of ``points [n, 2]``: start at the point nearest their mean, then move to the Gaussian-weighted
    (``sigma``) mean of the points within ``bandwidth`` until the step's L1 length is below ``tol``."""
    pts = points.double()
    m = pts[((pts - pts.mean(0)) ** 2).sum(1).argmin()]
    for _ in range(max_iter):
        d2 = ((pts - m) ** 2).sum(1)
        wts = torch.exp(-d2 / (2 * sigma ** 2)) * (d2 <= bandwidth ** 2)
        new = (wts[:, None] * pts).sum(0) / wts.sum()
        done = float((new - m).abs().sum()) < tol
        m = new
        if done:
            break
    return m


def box_from_coords(coords: torch.Tensor, prev: Box | None, mad: float, margin: float, ema: float,
                    bandwidth: float, sigma: float) -> Box:
    """UVC's target box from the soft-argmax coordinates ``[n, 2]`` of an object's cells: centre ``c`` = mean-shift
    mode, half-extent ``mad * mean|coords - c|`` per axis enlarged by ``1 + margin``, then the half-extent
    smoothed with the previous box's, ``ema * new + (1 - ema) * prev`` (the centre is the new one)."""
    c = mean_shift(coords, bandwidth, sigma)
    d = (coords.double() - c).abs().mean(0)
    ry, rx = float(mad * d[0] * (1 + margin)), float(mad * d[1] * (1 + margin))
    if prev is not None:
        ry = ema * ry + (1 - ema) * prev[2]
        rx = ema * rx + (1 - ema) * prev[3]
    return float(c[0]), float(c[1]), ry, rx
