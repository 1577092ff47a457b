"""Keypoint codec: pixel keypoints <-> soft label maps ``[C, h, w]`` at feature resolution.

Encoding draws one peak-normalised kernel (Gaussian or Cauchy, spread ``sigma`` grid cells) per
keypoint into its own channel; channel 0 is an optional background channel (as for masks). The
kernel centre is the keypoint's *exact* grid position under the cell-centre convention of
:class:`vlprop.geometry.GridGeometry` (``g = (p + 0.5) / s - 0.5``), so encode and the sub-pixel
decoders agree to a small fraction of a cell.

Decoders turn a (propagated) label map back into pixel coordinates, a visibility flag and a
confidence (the channel's peak value). A keypoint whose channel carries no mass (an invisible
keypoint encodes to an all-zero channel, and propagation keeps zero channels at zero) decodes as
invisible with NaN coordinates -- keypoints are never invented.

Round-trip error (encode at 2000 random sub-pixel positions at least 3 cells from the border,
decode; mean / max Euclidean error in grid cells; Gaussian kernel, ``truncate=3``; printed by
``python -m vlprop.labels.keypoints``, bounds asserted in ``tests/test_keypoints.py``):

=============================  ===============  ===============
decoder                        sigma = 0.5      sigma = 1.0
=============================  ===============  ===============
``fit`` / ``gaussian``         0 / 1e-15        0 / 1e-15
``cog3``                       0.027 / 0.037    0.175 / 0.322
``cog5``                       0.027 / 0.037    0.032 / 0.061
``cog7``                       0.027 / 0.037    0.009 / 0.018
``moments`` (threshold 0)      0.027 / 0.037    0.009 / 0.018
``moments`` threshold 0.1      0.030 / 0.079    0.037 / 0.089
``parabolic``                  0.162 / 0.238    0.046 / 0.067
``topk`` k=3 (CRW)             0.079 / 0.227    0.167 / 0.374
``topk`` k=5 (Waldmann)        0.023 / 0.069    0.097 / 0.189
``upsample`` x4 bilinear       0.244 / 0.515    0.244 / 0.515
``upsample`` x8 bicubic        0.182 / 0.353    0.052 / 0.117
``upsample`` x4 bil. top-16    0.166 / 0.311    0.071 / 0.164
``argmax``                     0.381 / 0.692    0.381 / 0.692
=============================  ===============  ===============

At sigma = 0.5 the centroid decoders are limited (~0.03 cell) by sampling a kernel that narrow.
``fit`` linearises the kernel (log for Gaussian, ``-v^(-2/3)`` for Cauchy) and is exact for both
kernels; ``gaussian`` is ``fit`` with the log transform whatever the kernel (Cauchy sigma=0.5:
0.10 / 0.14). For Cauchy encodings the truncated heavy tails bias the centroid decoders (cog/moments
0.13 / 0.16 at sigma = 0.5).
Bilinear up-sampling cannot move a maximum off a sample (a piecewise bilinear surface peaks at a
vertex): ``upsample`` with ``bilinear`` returns the up-sampled pixel next to the maximal cell,
i.e. an integer decode +- ``1 / (2 factor)``; ``bicubic`` interpolates between samples.
``topk`` is the CRW/Waldmann decoder: a weighted mean of the k largest cells, biased towards the
integer peak because the k cells are not symmetric around the true centre; ties are broken by
the lowest flat index (deterministic).

CRW compatibility (``crw_compat=True``): CRW maps pixels to the grid as ``g = p * scale / stride``
(no half-cell offset), rounds the centre (``int(g - 3 sigma) + (6 sigma + 1) // 2``) and pastes an
asymmetric ``ceil(6 sigma + 1)``-wide patch; the CRW Cauchy kernel is ``sigma / (d^2 + sigma^2)^1.5``.
Decoding with ``crw_compat=True`` uses the matching inverse ``p = g * stride / scale``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from vlprop.errors import InputError
from vlprop.geometry import GridGeometry

KERNELS = ("gaussian", "cauchy")
BACKGROUNDS = ("binary", "complement", "none")
DECODERS = ("argmax", "topk", "cog", "parabolic", "gaussian", "fit", "upsample", "moments")
UPSAMPLE_MODES = ("bilinear", "bicubic")


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DecodedKeypoints:
    """Decoded keypoints of one frame.

    ``xy``: ``[K, 2]`` float64 (x = column, y = row), original-frame pixels (or grid cells when
    produced by :func:`decode_keypoints_grid`), NaN where invisible; ``visible``: ``[K]`` bool;
    ``confidence``: ``[K]`` float64, the channel's peak value (0 where invisible).
    """

    xy: np.ndarray
    visible: np.ndarray
    confidence: np.ndarray


# ----------------------------------------------------------------------- helpers


def _as_numpy(x, dtype=np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):  # NumPy has no bfloat16
            x = x.float()
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def _check_xy(xy, visible) -> tuple[np.ndarray, np.ndarray]:
    xy = _as_numpy(xy)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise InputError(f"keypoints must have shape [K, 2] (x, y), got {tuple(xy.shape)}")
    if visible is None:
        vis = np.ones(len(xy), dtype=bool)
    else:
        vis = _as_numpy(visible, dtype=bool).reshape(-1)
        if vis.shape[0] != xy.shape[0]:
            raise InputError(f"visibility has {vis.shape[0]} entries for {xy.shape[0]} keypoints")
    # a keypoint without finite coordinates cannot be drawn: it is invisible
    vis = vis & np.isfinite(xy).all(axis=1)
    return xy, vis


def _crw_scale(geometry: GridGeometry) -> np.ndarray:
    """Original pixels per grid cell under CRW's ``g = p * scale / stride`` mapping, (x, y)."""
    sy, sx = geometry.effective_stride
    return np.array([sx, sy], dtype=np.float64)


def pixel_to_grid(xy, geometry: GridGeometry, crw_compat: bool = False) -> np.ndarray:
    """Pixel (x, y) ``[..., 2]`` -> grid (x, y); cell-centre convention unless ``crw_compat``."""
    if crw_compat:
        return _as_numpy(xy) / _crw_scale(geometry)
    return geometry.pixel_to_grid(torch.as_tensor(_as_numpy(xy))).numpy()


def grid_to_pixel(gxy, geometry: GridGeometry, crw_compat: bool = False) -> np.ndarray:
    """Inverse of :func:`pixel_to_grid`."""
    if crw_compat:
        return _as_numpy(gxy) * _crw_scale(geometry)
    return geometry.grid_to_pixel(torch.as_tensor(_as_numpy(gxy))).numpy()


# ------------------------------------------------------------------------ encode


def keypoint_heatmaps(gxy, visible, grid_size: tuple[int, int], sigma: float = 0.5,
                      kernel: str = "gaussian", truncate: float | None = 3.0) -> np.ndarray:
    """Draw one peak-1 kernel per keypoint at real-valued grid positions.

    ``gxy``: ``[K, 2]`` grid (x, y) (cell ``(i, j)`` has centre ``(x=j, y=i)``); ``visible``: ``[K]``;
    ``grid_size``: ``(h, w)``. Returns ``[K, h, w]`` float64. Gaussian: ``exp(-d^2 / 2 sigma^2)``;
    Cauchy (2-D, peak 1): ``(1 + d^2 / sigma^2)^-1.5``. ``truncate``: zero outside the square
    ``|dx|, |dy| <= truncate * sigma`` (as CRW's patch; keeps the Gaussian separable), ``None`` =
    infinite support. Invisible keypoints give all-zero channels.
    """
    if kernel not in KERNELS:
        raise InputError(f"unknown keypoint kernel {kernel!r} (expected one of {KERNELS})")
    if not sigma > 0:
        raise InputError(f"keypoint kernel spread sigma must be > 0, got {sigma}")
    gxy, vis = _check_xy(gxy, visible)
    h, w = int(grid_size[0]), int(grid_size[1])
    dx = np.arange(w, dtype=np.float64)[None, :] - gxy[:, 0:1]   # [K, w]
    dy = np.arange(h, dtype=np.float64)[None, :] - gxy[:, 1:2]   # [K, h]
    dx = np.where(vis[:, None], dx, 0.0)                         # keep NaN out of the arithmetic
    dy = np.where(vis[:, None], dy, 0.0)
    if truncate is not None:
        lim = truncate * sigma + 1e-9   # inclusive boundary, robust to rounding
        in_x, in_y = np.abs(dx) <= lim, np.abs(dy) <= lim
    else:
        in_x, in_y = np.ones_like(dx, bool), np.ones_like(dy, bool)
    if kernel == "gaussian":
        ax = np.exp(-dx ** 2 / (2 * sigma ** 2)) * in_x
        ay = np.exp(-dy ** 2 / (2 * sigma ** 2)) * in_y
        maps = ay[:, :, None] * ax[:, None, :]
    else:
        d2 = dy[:, :, None] ** 2 + dx[:, None, :] ** 2
        maps = (1.0 + d2 / sigma ** 2) ** -1.5 * (in_y[:, :, None] & in_x[:, None, :])
    maps[~vis] = 0.0
    return maps


def _crw_heatmaps(gxy, visible, grid_size, sigma: float, kernel: str) -> np.ndarray:
    """CRW ``draw_labelmap_np`` semantics: truncated integer placement, asymmetric patch."""
    gxy, vis = _check_xy(gxy, visible)
    h, w = int(grid_size[0]), int(grid_size[1])
    maps = np.zeros((len(gxy), h, w), dtype=np.float64)
    size = 6 * sigma + 1
    n = len(np.arange(0, size, 1))
    c = size // 2
    ii = np.arange(n, dtype=np.float64)
    if kernel == "gaussian":
        patch = np.exp(-((ii[None, :] - c) ** 2 + (ii[:, None] - c) ** 2) / (2 * sigma ** 2))
    else:
        patch = sigma / (((ii[None, :] - c) ** 2 + (ii[:, None] - c) ** 2 + sigma ** 2) ** 1.5)
    for k in np.flatnonzero(vis):
        x, y = gxy[k]
        ul = [int(x - 3 * sigma), int(y - 3 * sigma)]          # int(): truncation towards zero
        br = [int(x + 3 * sigma + 1), int(y + 3 * sigma + 1)]
        if ul[0] >= w or ul[1] >= h or br[0] < 0 or br[1] < 0:
            continue
        px = max(0, -ul[0]), min(br[0], w) - ul[0]
        py = max(0, -ul[1]), min(br[1], h) - ul[1]
        ix = max(0, ul[0]), min(br[0], w)
        iy = max(0, ul[1]), min(br[1], h)
        maps[k, iy[0]:iy[1], ix[0]:ix[1]] = patch[py[0]:py[1], px[0]:px[1]]
    return maps


def add_background(maps: np.ndarray, background: str) -> np.ndarray:
    """Prepend the background channel to joint maps ``[K, h, w]`` -> ``[K+1, h, w]`` (or unchanged).

    ``binary`` (CRW): 1 where every joint channel is exactly 0; ``complement``: ``1 - max_k``
    (clamped to >= 0); ``none``: no background channel.
    """
    if background == "none":
        return maps
    if maps.shape[0] == 0:
        bg = np.ones(maps.shape[1:], dtype=maps.dtype)
    elif background == "binary":
        bg = (maps.sum(axis=0) == 0).astype(maps.dtype)
    elif background == "complement":
        bg = np.clip(1.0 - maps.max(axis=0), 0.0, None)
    else:
        raise InputError(f"unknown keypoint background {background!r} (expected one of {BACKGROUNDS})")
    return np.concatenate([bg[None], maps], axis=0)


def encode_keypoints(xy, visible, geometry: GridGeometry, *, sigma: float = 0.5,
                     kernel: str = "gaussian", subpixel: bool = True, background: str = "binary",
                     truncate: float | None = 3.0, crw_compat: bool = False,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Encode ``K`` pixel keypoints into a label map ``[C, h, w]`` on ``geometry``'s grid.

    ``xy``: ``[K, 2]`` original-frame pixels (0-based, x = column); ``visible``: ``[K]`` bool or
    ``None`` (all visible; non-finite coordinates are always invisible). ``C = K + 1`` with the
    background in channel 0, or ``K`` when ``background="none"``. ``subpixel=False`` centres each
    kernel on the nearest cell (``floor(g + 0.5)``), ``crw_compat=True`` reproduces CRW exactly
    (see module docstring; implies rounding, ignores ``truncate``).
    """
    if background not in BACKGROUNDS:
        raise InputError(f"unknown keypoint background {background!r} (expected one of {BACKGROUNDS})")
    if kernel not in KERNELS:
        raise InputError(f"unknown keypoint kernel {kernel!r} (expected one of {KERNELS})")
    xy, vis = _check_xy(xy, visible)
    grid_size = (geometry.grid_height, geometry.grid_width)
    gxy = pixel_to_grid(np.where(vis[:, None], xy, 0.0), geometry, crw_compat)
    if crw_compat:
        maps = _crw_heatmaps(gxy, vis, grid_size, sigma, kernel)
    else:
        if not subpixel:
            gxy = np.floor(gxy + 0.5)
        maps = keypoint_heatmaps(gxy, vis, grid_size, sigma, kernel, truncate)
    return torch.from_numpy(add_background(maps, background)).to(dtype)


# ------------------------------------------------------------------------ decode


def _joint_maps(maps, background: bool) -> np.ndarray:
    m = _as_numpy(maps)
    if m.ndim != 3:
        raise InputError(f"keypoint label map must have shape [C, h, w], got {tuple(m.shape)}")
    if background:
        if m.shape[0] < 1:
            raise InputError("keypoint label map has no channels but a background channel was expected")
        m = m[1:]
    return m


def _argmax_cells(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = m.reshape(m.shape[0], -1)
    idx = np.argmax(flat, axis=1)          # first maximum: deterministic
    return idx // m.shape[2], idx % m.shape[2]


def _topk_mean(m: np.ndarray, k: int) -> np.ndarray:
    K, h, w = m.shape
    flat = np.clip(m.reshape(K, -1), 0.0, None)
    k = max(1, min(int(k), flat.shape[1]))
    order = np.argsort(-flat, axis=1, kind="stable")[:, :k]   # ties: lowest flat index first
    vals = np.take_along_axis(flat, order, axis=1)
    tot = vals.sum(axis=1, keepdims=True)
    wts = np.divide(vals, tot, out=np.zeros_like(vals), where=tot > 0)
    return np.stack([(wts * (order % w)).sum(1), (wts * (order // w)).sum(1)], axis=1)


def _windows(m: np.ndarray, rows: np.ndarray, cols: np.ndarray, n: int) -> np.ndarray:
    """``[K, n, n]`` windows centred on (rows, cols), zero outside the grid."""
    r = n // 2
    padded = np.pad(m, ((0, 0), (r, r), (r, r)))
    off = np.arange(n)
    K = m.shape[0]
    return padded[np.arange(K)[:, None, None], (rows[:, None] + off)[:, :, None],
                  (cols[:, None] + off)[:, None, :]]


def _cog(m: np.ndarray, window: int) -> np.ndarray:
    if window < 1 or window % 2 == 0:
        raise InputError(f"centre-of-gravity window must be an odd size >= 1, got {window}")
    rows, cols = _argmax_cells(m)
    win = np.clip(_windows(m, rows, cols, window), 0.0, None)
    off = np.arange(window) - window // 2
    tot = win.sum(axis=(1, 2))
    safe = np.where(tot > 0, tot, 1.0)
    dy = (win.sum(2) * off).sum(1) / safe
    dx = (win.sum(1) * off).sum(1) / safe
    return np.stack([cols + dx, rows + dy], axis=1)


def _linearise(v: np.ndarray, kernel: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Map peak values to a quantity that is an exact parabola in the offset for that kernel.

    Gaussian ``c * exp(-d^2 / 2s^2)``: ``log v``; Cauchy ``c * (1 + d^2/s^2)^-1.5``: ``-v^(-2/3)``
    (both are ``a - b * d^2`` along one axis through the peak, whatever the other offset).
    Returns the transformed values and where the transform is defined (``v > 0``).
    """
    if kernel is None:
        return v, np.ones(v.shape, bool)
    ok = v > 0
    safe = np.where(ok, v, 1.0)
    if kernel == "gaussian":
        return np.log(safe), ok
    if kernel == "cauchy":
        return -safe ** (-2.0 / 3.0), ok
    raise InputError(f"unknown keypoint kernel {kernel!r} (expected one of {KERNELS})")


def _peak_offset(vm: np.ndarray, v0: np.ndarray, vp: np.ndarray, kernel: str | None) -> np.ndarray:
    """Vertex of the parabola through (-1, t(vm)), (0, t(v0)), (1, t(vp)); 0 where undefined.

    ``t`` linearises ``kernel`` (:func:`_linearise`); where a neighbour is 0 the transform is
    undefined and the plain parabola through the values is used instead.
    """
    if kernel is not None:
        (tm, okm), (t0, ok0), (tp, okp) = (_linearise(v, kernel) for v in (vm, v0, vp))
        ok = okm & ok0 & okp
        vm, v0, vp = np.where(ok, tm, vm), np.where(ok, t0, v0), np.where(ok, tp, vp)
    den = vm - 2 * v0 + vp
    neg = den < 0
    d = np.where(neg, 0.5 * (vm - vp) / np.where(neg, den, -1.0), 0.0)
    return np.clip(d, -0.5, 0.5)


def _parabolic(m: np.ndarray, kernel: str | None) -> np.ndarray:
    K, h, w = m.shape
    rows, cols = _argmax_cells(m)
    win = _windows(m, rows, cols, 3)
    v0 = win[:, 1, 1]
    dx = _peak_offset(win[:, 1, 0], v0, win[:, 1, 2], kernel)
    dy = _peak_offset(win[:, 0, 1], v0, win[:, 2, 1], kernel)
    # no neighbour on one side (grid border): no information to refine along that axis
    dx = np.where((cols > 0) & (cols < w - 1), dx, 0.0)
    dy = np.where((rows > 0) & (rows < h - 1), dy, 0.0)
    return np.stack([cols + dx, rows + dy], axis=1)


def _upsample(m: np.ndarray, factor: int, mode: str, k: int) -> np.ndarray:
    if mode not in UPSAMPLE_MODES:
        raise InputError(f"unknown up-sampling mode {mode!r} (expected one of {UPSAMPLE_MODES})")
    if int(factor) < 1:
        raise InputError(f"up-sampling factor must be >= 1, got {factor}")
    f = int(factor)
    K, h, w = m.shape
    up = F.interpolate(torch.from_numpy(m)[None], size=(h * f, w * f), mode=mode,
                       align_corners=False)[0].numpy()
    u = _topk_mean(up, k) if k > 1 else np.stack(_argmax_cells(up)[::-1], axis=1).astype(np.float64)
    # up-sampled pixel u has its centre at grid coordinate (u + 0.5) / f - 0.5 (align_corners=False)
    return (u + 0.5) / f - 0.5


def _moments(m: np.ndarray, threshold: float) -> np.ndarray:
    K, h, w = m.shape
    mx = m.reshape(K, -1).max(1)
    wts = np.where(m >= threshold * mx[:, None, None], np.clip(m, 0.0, None), 0.0)
    tot = wts.sum(axis=(1, 2))
    safe = np.where(tot > 0, tot, 1.0)
    x = (wts.sum(1) * np.arange(w)).sum(1) / safe
    y = (wts.sum(2) * np.arange(h)).sum(1) / safe
    return np.stack([x, y], axis=1)


def _parse_method(method: str, window: int) -> tuple[str, int]:
    if method.startswith("cog") and method[3:].isdigit():
        return "cog", int(method[3:])
    if method not in DECODERS:
        raise InputError(f"unknown keypoint decoder {method!r} (expected one of {DECODERS} or cog3/cog5/cog7)")
    return method, window


def decode_keypoints_grid(maps, *, method: str = "topk", k: int = 5, window: int = 3, factor: int = 4,
                          upsample_mode: str = "bilinear", upsample_k: int = 1, moment_threshold: float = 0.0,
                          kernel: str = "gaussian", background: bool = True,
                          min_mass: float = 0.0) -> DecodedKeypoints:
    """Decode ``[C, h, w]`` label maps to grid coordinates (x = column index, y = row index).

    ``background``: channel 0 is background and is dropped. A channel is visible when its total
    mass (sum of positive values) exceeds ``min_mass`` and is finite. Methods: ``argmax``;
    ``topk`` (weighted mean of the ``k`` largest cells; CRW k=3, Waldmann k=5); ``cog`` /
    ``cog3|5|7`` (centre of gravity in a ``window x window`` window around the maximum);
    ``parabolic`` (per-axis 3-point parabola through the values); ``gaussian`` (the same on log
    values; exact for Gaussian peaks); ``fit`` (the same on the values linearised for ``kernel``:
    log for Gaussian, ``-v^(-2/3)`` for Cauchy; exact for either encoding); ``upsample`` (``factor``x ``upsample_mode`` up-sampling with
    ``align_corners=False``, then argmax, or top-``k`` mean when ``k > 1``); ``moments``
    (centroid of the values ``>= moment_threshold * max``; 0 = soft-argmax over the whole map).
    """
    method, window = _parse_method(method, window)
    m = _joint_maps(maps, background)
    K = m.shape[0]
    if K == 0:
        return DecodedKeypoints(np.zeros((0, 2)), np.zeros(0, bool), np.zeros(0))
    finite = np.isfinite(m).all(axis=(1, 2))
    m = np.where(np.isfinite(m), m, 0.0)
    mass = np.clip(m, 0.0, None).sum(axis=(1, 2))
    visible = finite & (mass > min_mass)
    if method == "argmax":
        rows, cols = _argmax_cells(m)
        g = np.stack([cols, rows], axis=1).astype(np.float64)
    elif method == "topk":
        g = _topk_mean(m, k)
    elif method == "cog":
        g = _cog(m, window)
    elif method == "parabolic":
        g = _parabolic(m, None)
    elif method == "gaussian":
        g = _parabolic(m, "gaussian")
    elif method == "fit":
        g = _parabolic(m, kernel)
    elif method == "upsample":
        g = _upsample(m, factor, upsample_mode, upsample_k)
    else:
        g = _moments(m, moment_threshold)
    conf = np.where(visible, m.reshape(K, -1).max(1), 0.0)
    g = np.where(visible[:, None], g, np.nan)
    return DecodedKeypoints(g, visible, conf)


def decode_keypoints(maps, geometry: GridGeometry, *, crw_compat: bool = False, **kwargs) -> DecodedKeypoints:
    """Decode ``[C, h, w]`` label maps on ``geometry``'s grid to original-frame pixel coordinates.

    Keyword arguments are those of :func:`decode_keypoints_grid`. ``crw_compat`` uses CRW's
    ``p = g * stride / scale`` inverse mapping instead of the cell-centre convention.
    """
    m = _as_numpy(maps)
    if m.ndim == 3 and m.shape[-2:] != (geometry.grid_height, geometry.grid_width):
        raise InputError(f"keypoint label map has grid {tuple(m.shape[-2:])}, expected "
                         f"({geometry.grid_height}, {geometry.grid_width}) for this frame geometry")
    d = decode_keypoints_grid(m, **kwargs)
    xy = grid_to_pixel(d.xy, geometry, crw_compat)
    return DecodedKeypoints(np.where(d.visible[:, None], xy, np.nan), d.visible, d.confidence)


# ------------------------------------------------------------------------- codec


@dataclass(frozen=True)
class KeypointCodec:
    """Encoder + decoder settings bundled; see :func:`encode_keypoints` / :func:`decode_keypoints_grid`."""

    sigma: float = 0.5
    kernel: str = "gaussian"
    subpixel: bool = True
    background: str = "binary"
    truncate: float | None = 3.0
    crw_compat: bool = False
    decoder: str = "topk"
    k: int = 5
    window: int = 3
    factor: int = 4
    upsample_mode: str = "bilinear"
    upsample_k: int = 1
    moment_threshold: float = 0.0
    min_mass: float = 0.0

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise InputError(f"unknown keypoint kernel {self.kernel!r} (expected one of {KERNELS})")
        if self.background not in BACKGROUNDS:
            raise InputError(f"unknown keypoint background {self.background!r} (expected one of {BACKGROUNDS})")
        _parse_method(self.decoder, self.window)
        if self.upsample_mode not in UPSAMPLE_MODES:
            raise InputError(f"unknown up-sampling mode {self.upsample_mode!r} (expected one of {UPSAMPLE_MODES})")

    @classmethod
    def crw(cls) -> "KeypointCodec":
        """CRW (videowalk) JHMDB setting: sigma 0.5 Gaussian at the rounded CRW cell, top-3 decode."""
        return cls(sigma=0.5, subpixel=False, crw_compat=True, background="binary", decoder="topk", k=3)

    @classmethod
    def waldmann(cls) -> "KeypointCodec":
        """Waldmann et al. setting: sigma 0.5 sub-pixel Gaussian, top-5 decode."""
        return cls(sigma=0.5, subpixel=True, background="binary", decoder="topk", k=5)

    def with_decoder(self, decoder: str, **kwargs) -> "KeypointCodec":
        return replace(self, decoder=decoder, **kwargs)

    @property
    def has_background(self) -> bool:
        return self.background != "none"

    def num_channels(self, num_keypoints: int) -> int:
        return num_keypoints + (1 if self.has_background else 0)

    def encode(self, xy, visible, geometry: GridGeometry) -> torch.Tensor:
        """``[K, 2]`` pixels + ``[K]`` visibility -> ``[C, h, w]`` float32."""
        return encode_keypoints(xy, visible, geometry, sigma=self.sigma, kernel=self.kernel,
                                subpixel=self.subpixel, background=self.background,
                                truncate=self.truncate, crw_compat=self.crw_compat)

    def decode(self, maps, geometry: GridGeometry) -> DecodedKeypoints:
        """``[C, h, w]`` -> pixel keypoints (NaN + ``visible=False`` for zero-mass channels)."""
        return decode_keypoints(maps, geometry, crw_compat=self.crw_compat, **self._decode_kwargs())

    def decode_grid(self, maps) -> DecodedKeypoints:
        return decode_keypoints_grid(maps, **self._decode_kwargs())

    def recode(self, maps) -> torch.Tensor:
        """Re-quantise a propagated map ``[C, h, w]``: decode its keypoints on the grid and encode them again
        (Waldmann's ``recreate_labels`` = encode(decode(labels))), so the context holds clean kernels at the
        decoded positions instead of a per-cell argmax. Keypoints that decode as invisible stay all-zero.
        Returns ``[C, h, w]`` float32 (the dtype of ``maps`` when it is a tensor)."""
        m = _as_numpy(maps)
        d = self.decode_grid(m)
        gxy = np.where(d.visible[:, None], d.xy, 0.0)
        if self.crw_compat or not self.subpixel:
            gxy = np.floor(gxy + 0.5)  # the encoder's own placement rule: centred on a cell
        heat = keypoint_heatmaps(gxy, d.visible, m.shape[-2:], self.sigma, self.kernel, self.truncate)
        out = torch.from_numpy(add_background(heat, self.background))
        if isinstance(maps, torch.Tensor):  # back where the engine computes, in its dtype
            return out.to(device=maps.device, dtype=maps.dtype)
        return out.to(torch.float32)

    def _decode_kwargs(self) -> dict:
        return dict(method=self.decoder, k=self.k, window=self.window, factor=self.factor,
                    upsample_mode=self.upsample_mode, upsample_k=self.upsample_k,
                    moment_threshold=self.moment_threshold, kernel=self.kernel, background=self.has_background, min_mass=self.min_mass)


def round_trip_errors(sigma: float = 0.5, kernel: str = "gaussian", n: int = 2000, grid: int = 24,
                      seed: int = 0, **decode_kwargs) -> np.ndarray:
    """Euclidean encode->decode errors (grid cells) for ``n`` random sub-pixel points.

    Points are uniform in ``[3, grid - 4]^2`` (away from the border, where windows are clipped).
    Used by the tests and by ``python -m vlprop.labels.keypoints`` to report decoder accuracy.
    """
    rng = np.random.default_rng(seed)
    g = rng.uniform(3, grid - 4, size=(n, 2))
    maps = keypoint_heatmaps(g, None, (grid, grid), sigma, kernel)
    decode_kwargs.setdefault("kernel", kernel)
    d = decode_keypoints_grid(maps, background=False, **decode_kwargs)
    return np.linalg.norm(d.xy - g, axis=1)


DECODER_TABLE = (
    ("fit (kernel-linearised)", {"method": "fit"}),
    ("gaussian", {"method": "gaussian"}),
    ("parabolic", {"method": "parabolic"}),
    ("cog3", {"method": "cog3"}),
    ("cog5", {"method": "cog5"}),
    ("cog7", {"method": "cog7"}),
    ("moments", {"method": "moments"}),
    ("moments t=0.1", {"method": "moments", "moment_threshold": 0.1}),
    ("topk k=3", {"method": "topk", "k": 3}),
    ("topk k=5", {"method": "topk", "k": 5}),
    ("upsample x4 bilinear", {"method": "upsample", "factor": 4}),
    ("upsample x8 bicubic", {"method": "upsample", "factor": 8, "upsample_mode": "bicubic"}),
    ("upsample x4 bilinear top16", {"method": "upsample", "factor": 4, "upsample_k": 16}),
    ("argmax", {"method": "argmax"}),
)


def _main() -> None:  # pragma: no cover - report script
    for kernel in KERNELS:
        for sigma in (0.5, 1.0):
            print(f"kernel={kernel} sigma={sigma}: round-trip error in cells (mean / max over 2000 points)")
            for name, kw in DECODER_TABLE:
                e = round_trip_errors(sigma, kernel, **kw)
                print(f"  {name:28s} {e.mean():.4f} / {e.max():.4f}")


if __name__ == "__main__":  # pragma: no cover
    _main()
