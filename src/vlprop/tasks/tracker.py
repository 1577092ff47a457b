"""Correlation-filter box tracker and exact crop/uncrop mappings for joint tracking + propagation.

Waldmann et al. track a small object with a box tracker (LUDT, a DCF tracker), crop a window
around it, propagate keypoints on the up-sampled crop and map the decoded keypoints back. This
module holds the pieces that are not propagation:

* :class:`CropWindow`: an axis-aligned window of the frame resampled to ``out_w x out_h`` with the
  cell-centre convention of :mod:`vlprop.geometry`: image pixel ``p`` <-> crop pixel
  ``q = (p + 0.5 - x0) * out_w / w - 0.5`` (same in y). ``(x0, y0)`` is the window's top-left
  *edge*, so the window covers pixel centres ``x0 .. x0 + w - 1`` for integer values -- the same
  convention as a box ``(x, y, w, h)`` (OpenCV ``Rect``).
* :func:`box_from_keypoints`: the (padded) box around the visible keypoints of a frame.
* :class:`CorrelationTracker`: a KCF/DCF tracker written here (numpy FFT + OpenCV image ops;
  no tracker dependency): Gaussian-kernel or linear correlation in the Fourier domain, cosine
  window, Gaussian regression target, ridge regression with online model interpolation, padding
  around the target, optional 3-scale search, and HOG-like gradient-orientation or grayscale
  features.

Boxes are ``(x, y, w, h)`` floats in original-frame pixels; the box centre is
``(x + (w - 1) / 2, y + (h - 1) / 2)``. Frames are ``H x W`` or ``H x W x 3`` arrays (RGB order
assumed for the grayscale conversion; BGR gives nearly the same features).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from vlprop.errors import InputError

Box = tuple[float, float, float, float]


# --------------------------------------------------------------------- crops


@dataclass(frozen=True)
class CropWindow:
    """Window ``[x0, x0 + w] x [y0, y0 + h]`` (edge coordinates) resampled to ``out_w x out_h``."""

    x0: float
    y0: float
    w: float
    h: float
    out_w: int
    out_h: int

    def __post_init__(self) -> None:
        if not (self.w > 0 and self.h > 0):
            raise InputError(f"crop window must have a positive size, got w={self.w}, h={self.h}")
        if int(self.out_w) < 1 or int(self.out_h) < 1:
            raise InputError(f"crop output size must be >= 1, got {self.out_w}x{self.out_h}")
        object.__setattr__(self, "out_w", int(self.out_w))
        object.__setattr__(self, "out_h", int(self.out_h))

    # --------------------------------------------------------- construction
    @classmethod
    def around(cls, center_xy, size_wh, out_w: int, out_h: int | None = None) -> "CropWindow":
        """Window of ``size_wh`` (w, h) pixels centred on pixel ``center_xy``.

        ``out_h`` defaults to keeping the window's aspect ratio (rounded).
        """
        cx, cy = float(center_xy[0]), float(center_xy[1])
        w, h = float(size_wh[0]), float(size_wh[1])
        if out_h is None:
            out_h = max(1, int(round(out_w * h / w)))
        return cls(cx - (w - 1) / 2, cy - (h - 1) / 2, w, h, out_w, out_h)

    @classmethod
    def from_box(cls, box: Box, out_w: int, out_h: int | None = None, context: float = 1.0,
                 square: bool = False) -> "CropWindow":
        """Window around ``box`` (x, y, w, h), enlarged ``context`` times (``square``: side = max)."""
        x, y, w, h = (float(v) for v in box)
        center = (x + (w - 1) / 2, y + (h - 1) / 2)
        if square:
            w = h = max(w, h)
        return cls.around(center, (w * context, h * context), out_w, out_h)

    # ------------------------------------------------------------- mapping
    @property
    def scale(self) -> tuple[float, float]:
        """Crop pixels per image pixel, (x, y)."""
        return self.out_w / self.w, self.out_h / self.h

    def to_crop(self, xy) -> np.ndarray:
        """Image pixel (x, y) ``[..., 2]`` -> crop pixel, ``(p + 0.5 - x0) * out / w - 0.5``."""
        xy = np.asarray(xy, dtype=np.float64)
        s = np.array(self.scale)
        return (xy + 0.5 - np.array([self.x0, self.y0])) * s - 0.5

    def from_crop(self, xy) -> np.ndarray:
        """Crop pixel (x, y) ``[..., 2]`` -> image pixel (exact inverse of :meth:`to_crop`)."""
        xy = np.asarray(xy, dtype=np.float64)
        s = np.array(self.scale)
        return (xy + 0.5) / s + np.array([self.x0, self.y0]) - 0.5

    def box_from_crop(self, box: Box) -> Box:
        """A box (x, y, w, h) in crop pixels -> the same box in image pixels (edges map exactly)."""
        sx, sy = self.scale
        return (box[0] / sx + self.x0, box[1] / sy + self.y0, box[2] / sx, box[3] / sy)

    def box_to_crop(self, box: Box) -> Box:
        """Inverse of :meth:`box_from_crop`."""
        sx, sy = self.scale
        return ((box[0] - self.x0) * sx, (box[1] - self.y0) * sy, box[2] * sx, box[3] * sy)

    def affine(self) -> np.ndarray:
        """``2 x 3`` matrix mapping image pixels to crop pixels (for ``cv2.warpAffine``)."""
        sx, sy = self.scale
        return np.array([[sx, 0.0, (0.5 - self.x0) * sx - 0.5],
                         [0.0, sy, (0.5 - self.y0) * sy - 0.5]], dtype=np.float64)

    # ------------------------------------------------------------ resample
    def crop(self, frame: np.ndarray, interpolation: int = cv2.INTER_LINEAR, antialias: bool = True) -> np.ndarray:
        """Resample ``frame`` (``H x W`` or ``H x W x C``) to ``out_h x out_w`` with this mapping.

        Outside the frame the border is replicated. With ``antialias``, a Gaussian pre-blur
        (``sigma = (1/scale - 1) / 2`` per axis) is applied when down-sampling; it is symmetric,
        so positions are unchanged. Only the region under the window is touched, so cropping a
        small window of a large frame is cheap.
        """
        frame = np.asarray(frame)
        if frame.ndim not in (2, 3) or frame.shape[0] < 1 or frame.shape[1] < 1:
            raise InputError(f"frame must be an H x W or H x W x C array, got shape {frame.shape}")
        H, W = frame.shape[:2]
        sx, sy = self.scale
        sig_x = max(0.0, (1 / sx - 1) / 2) if antialias else 0.0
        sig_y = max(0.0, (1 / sy - 1) / 2) if antialias else 0.0
        margin = 3 * max(sig_x, sig_y) + 3
        # source region under the window (+ margin), clipped to the frame but never empty
        xa = int(np.clip(math.floor(self.x0 - 0.5 - margin), 0, W - 1))
        xb = int(np.clip(math.ceil(self.x0 + self.w - 0.5 + margin), xa, W - 1)) + 1
        ya = int(np.clip(math.floor(self.y0 - 0.5 - margin), 0, H - 1))
        yb = int(np.clip(math.ceil(self.y0 + self.h - 0.5 + margin), ya, H - 1)) + 1
        sub = frame[ya:yb, xa:xb]
        if sig_x > 0 or sig_y > 0:
            sub = cv2.GaussianBlur(sub, (0, 0), sigmaX=max(sig_x, 1e-6), sigmaY=max(sig_y, 1e-6),
                                   borderType=cv2.BORDER_REPLICATE)
        m = self.affine()
        m[:, 2] += m[:, :2] @ np.array([xa, ya], dtype=np.float64)   # sub-image origin offset
        return cv2.warpAffine(np.ascontiguousarray(sub), m, (self.out_w, self.out_h), flags=interpolation,
                              borderMode=cv2.BORDER_REPLICATE)


def box_from_keypoints(xy, visible=None, padding: float = 0.25, min_size: float = 8.0,
                       square: bool = False) -> Box:
    """Box ``(x, y, w, h)`` around the visible keypoints ``xy [K, 2]``.

    The tight box covers the pixels holding the keypoints (``w = max_x - min_x + 1``); it is
    enlarged by ``padding`` times its size on each side (``w * (1 + 2 padding)``) around the same
    centre, to at least ``min_size`` pixels, and made square (side = max) if ``square``.
    """
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise InputError(f"keypoints must have shape [K, 2], got {xy.shape}")
    vis = np.ones(len(xy), bool) if visible is None else np.asarray(visible, dtype=bool).reshape(-1)
    vis = vis & np.isfinite(xy).all(axis=1)
    if not vis.any():
        raise InputError("cannot build a box: no visible keypoint")
    lo, hi = xy[vis].min(axis=0), xy[vis].max(axis=0)
    center = (lo + hi) / 2
    size = (hi - lo + 1) * (1 + 2 * padding)
    size = np.maximum(size, min_size)
    if square:
        size[:] = size.max()
    x, y = center - (size - 1) / 2
    return float(x), float(y), float(size[0]), float(size[1])


def box_center(box: Box) -> np.ndarray:
    """Pixel centre ``(x + (w - 1) / 2, y + (h - 1) / 2)`` of a box."""
    return np.array([box[0] + (box[2] - 1) / 2, box[1] + (box[3] - 1) / 2], dtype=np.float64)


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


# ------------------------------------------------------------------ features


def _to_gray(patch: np.ndarray) -> np.ndarray:
    """Grayscale float32 in [0, 1] for uint8 input (other dtypes are used as they are)."""
    if patch.dtype not in (np.uint8, np.uint16, np.float32):
        patch = patch.astype(np.float32)   # cv2.cvtColor accepts only these depths
    if patch.ndim == 3 and patch.shape[2] == 3:
        patch = cv2.cvtColor(patch, cv2.COLOR_RGB2GRAY)
    elif patch.ndim == 3 and patch.shape[2] == 1:
        patch = patch[..., 0]
    elif patch.ndim != 2:
        raise InputError(f"frame must have 1 or 3 channels, got shape {patch.shape}")
    g = patch.astype(np.float32)
    return g / 255.0 if patch.dtype == np.uint8 else g


def orientation_features(gray: np.ndarray, cell: int = 4, bins: int = 9, clip: float = 0.2) -> np.ndarray:
    """HOG-like features ``[H/cell, W/cell, bins + 1]`` of a float image ``[H, W]``.

    Unsigned gradient orientation histograms (``bins`` over [0, pi), magnitude-weighted, linear
    vote between the two nearest bins) summed per ``cell x cell`` cell, normalised by the gradient
    energy of the surrounding 3x3 cells and clipped at ``clip`` (HOG block normalisation,
    simplified), plus one channel with the cell's mean intensity (centred at 0).
    """
    H, W = gray.shape
    if H % cell or W % cell:
        raise InputError(f"feature patch {W}x{H} is not a multiple of the cell size {cell}")
    kx = np.array([[-1.0, 0.0, 1.0]], dtype=np.float32)
    gx = cv2.filter2D(gray, cv2.CV_32F, kx, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.filter2D(gray, cv2.CV_32F, kx.T, borderType=cv2.BORDER_REPLICATE)
    mag = np.sqrt(gx * gx + gy * gy)
    ang = np.mod(np.arctan2(gy, gx), np.pi)
    pos = ang / np.pi * bins
    b0 = np.floor(pos).astype(np.int64)
    frac = (pos - b0).astype(np.float32)
    b0 %= bins
    b1 = (b0 + 1) % bins
    hist = np.zeros((H, W, bins), np.float32)
    rows, cols = np.indices((H, W))
    np.add.at(hist, (rows, cols, b0), mag * (1 - frac))
    np.add.at(hist, (rows, cols, b1), mag * frac)
    ch, cw = H // cell, W // cell
    cells = hist.reshape(ch, cell, cw, cell, bins).sum(axis=(1, 3))
    energy = (cells ** 2).sum(axis=2)
    block = cv2.blur(energy, (3, 3), borderType=cv2.BORDER_REPLICATE) * 9
    cells = np.minimum(cells / np.sqrt(block + 1e-6)[..., None], clip)
    mean = gray.reshape(ch, cell, cw, cell).mean(axis=(1, 3)) - 0.5
    return np.concatenate([cells, mean[..., None]], axis=2).astype(np.float32)


def _gaussian_labels(ny: int, nx: int, sigma: float) -> np.ndarray:
    """Gaussian regression target with its peak at (0, 0) (cyclic)."""
    dy = np.arange(ny) - ny // 2
    dx = np.arange(nx) - nx // 2
    g = np.exp(-0.5 * (dy[:, None] ** 2 + dx[None, :] ** 2) / sigma ** 2)
    return np.roll(g, (-(ny // 2), -(nx // 2)), axis=(0, 1))


def _subpixel_peak(r: np.ndarray) -> tuple[float, float, float]:
    """(dy, dx, value) of the response maximum, refined by a cyclic 3-point parabola per axis."""
    ny, nx = r.shape
    iy, ix = np.unravel_index(int(np.argmax(r)), r.shape)
    v = float(r[iy, ix])

    def refine(a, b, c):
        den = a - 2 * b + c
        return float(np.clip(0.5 * (a - c) / den, -0.5, 0.5)) if den < 0 else 0.0

    dy = iy + refine(r[(iy - 1) % ny, ix], v, r[(iy + 1) % ny, ix])
    dx = ix + refine(r[iy, (ix - 1) % nx], v, r[iy, (ix + 1) % nx])
    # cyclic shifts beyond half the patch are negative displacements
    if dy > ny / 2:
        dy -= ny
    if dx > nx / 2:
        dx -= nx
    return dy, dx, v


# ------------------------------------------------------------------- tracker


class CorrelationTracker:
    """KCF/DCF correlation-filter tracker (``init`` on a box, ``update`` per frame).

    Parameters (KCF defaults for HOG features):

    * ``features``: ``"hog"`` (9 orientation bins + intensity per ``cell_size`` cell) or
      ``"gray"`` (mean-removed intensity, cell size 1).
    * ``kernel``: ``"gaussian"`` (kernelised correlation, bandwidth ``kernel_sigma``) or
      ``"linear"`` (multi-channel linear DCF).
    * ``padding``: the search window is ``(1 + padding)`` times the target size.
    * ``template_size``: the window is resampled so that ``sqrt(area)`` is this many pixels.
    * ``lambda_``: ridge regularisation; ``interp_factor``: model update rate;
      ``output_sigma_factor``: regression-target spread relative to ``sqrt(w h)``.
    * ``num_scales`` / ``scale_step`` / ``scale_penalty``: scale search (1 = fixed size);
      ``scale_bounds``: allowed size range relative to the initial box.
    """

    def __init__(self, *, features: str = "hog", kernel: str = "gaussian", padding: float = 1.5,
                 template_size: int = 96, cell_size: int | None = None, kernel_sigma: float | None = None,
                 lambda_: float = 1e-4, interp_factor: float | None = None, output_sigma_factor: float = 0.1,
                 num_scales: int = 3, scale_step: float = 1.03, scale_penalty: float = 0.985,
                 scale_bounds: tuple[float, float] = (0.2, 5.0)) -> None:
        if features not in ("hog", "gray"):
            raise InputError(f"unknown tracker features {features!r} (expected 'hog' or 'gray')")
        if kernel not in ("gaussian", "linear"):
            raise InputError(f"unknown tracker kernel {kernel!r} (expected 'gaussian' or 'linear')")
        if num_scales < 1:
            raise InputError(f"num_scales must be >= 1, got {num_scales}")
        hog = features == "hog"
        self.features = features
        self.kernel = kernel
        self.padding = float(padding)
        self.template_size = int(template_size)
        self.cell_size = int(cell_size if cell_size is not None else (4 if hog else 1))
        self.kernel_sigma = float(kernel_sigma if kernel_sigma is not None else (0.5 if hog else 0.2))
        self.lambda_ = float(lambda_)
        self.interp_factor = float(interp_factor if interp_factor is not None else (0.02 if hog else 0.075))
        self.output_sigma_factor = float(output_sigma_factor)
        self.num_scales = int(num_scales)
        self.scale_step = float(scale_step)
        self.scale_penalty = float(scale_penalty)
        self.scale_bounds = scale_bounds
        self._initialised = False
        self.score = math.nan   # peak response of the last update

    # ----------------------------------------------------------- features
    def _patch_features(self, frame: np.ndarray, center: np.ndarray, window_wh: np.ndarray) -> np.ndarray:
        win = CropWindow.around(center, window_wh, self._tpl_w, self._tpl_h)
        gray = _to_gray(win.crop(frame))
        if self.features == "hog":
            feat = orientation_features(gray, self.cell_size)
        else:
            feat = (gray - gray.mean())[..., None]
        return feat * self._cos_window[..., None]

    # ------------------------------------------------------------ filters
    def _correlation(self, xf: np.ndarray, zf: np.ndarray) -> np.ndarray:
        """Fourier transform of the kernel correlation of x and z (``[ny, nx]``)."""
        n = xf.shape[0] * xf.shape[1] * xf.shape[2]
        cross = np.real(np.fft.ifft2(np.sum(xf * np.conj(zf), axis=2), axes=(0, 1)))
        if self.kernel == "linear":
            return np.fft.fft2(cross / n)
        npx = xf.shape[0] * xf.shape[1]
        xx = np.sum(np.abs(xf) ** 2) / npx     # Parseval: sum of squares in the spatial domain
        zz = np.sum(np.abs(zf) ** 2) / npx
        k = np.exp(-np.maximum(0.0, xx + zz - 2 * cross) / (self.kernel_sigma ** 2 * n))
        return np.fft.fft2(k)

    def _train(self, feat: np.ndarray, rate: float) -> None:
        xf = np.fft.fft2(feat, axes=(0, 1))
        alphaf = self._yf / (self._correlation(xf, xf) + self.lambda_)
        if rate >= 1.0:
            self._model_xf, self._model_alphaf = xf, alphaf
        else:
            self._model_xf = (1 - rate) * self._model_xf + rate * xf
            self._model_alphaf = (1 - rate) * self._model_alphaf + rate * alphaf

    def _respond(self, feat: np.ndarray) -> np.ndarray:
        zf = np.fft.fft2(feat, axes=(0, 1))
        return np.real(np.fft.ifft2(self._model_alphaf * self._correlation(zf, self._model_xf)))

    # ---------------------------------------------------------------- API
    def init(self, frame: np.ndarray, box_xywh) -> None:
        """Start tracking the box ``(x, y, w, h)`` (pixels) in ``frame`` (uint8 ``H x W [x 3]``)."""
        frame = np.asarray(frame)
        if frame.ndim not in (2, 3):
            raise InputError(f"frame must be an H x W or H x W x C array, got shape {frame.shape}")
        x, y, w, h = (float(v) for v in box_xywh)
        if not (w >= 1 and h >= 1) or not all(map(math.isfinite, (x, y, w, h))):
            raise InputError(f"tracker box must be finite with w, h >= 1, got {tuple(box_xywh)}")
        self._center = box_center((x, y, w, h))
        self._base_size = np.array([w, h], dtype=np.float64)
        self._scale = 1.0
        window = self._base_size * (1 + self.padding)
        f = self.template_size / math.sqrt(window[0] * window[1])     # template px per image px
        c = self.cell_size
        nx = max(4, int(round(window[0] * f / c)))
        ny = max(4, int(round(window[1] * f / c)))
        self._tpl_w, self._tpl_h = nx * c, ny * c
        # window matching the template grid exactly (same px per cell on both axes)
        self._base_window = np.array([nx * c / f, ny * c / f])
        self._cos_window = np.outer(np.hanning(ny), np.hanning(nx)).astype(np.float32)
        sigma = math.sqrt(w * h) * f * self.output_sigma_factor / c
        self._yf = np.fft.fft2(_gaussian_labels(ny, nx, sigma))
        self._train(self._patch_features(frame, self._center, self._base_window), 1.0)
        self._initialised = True
        self.score = 1.0

    @property
    def box(self) -> Box:
        """Current box ``(x, y, w, h)``."""
        if not self._initialised:
            raise InputError("tracker used before init(frame, box)")
        w, h = self._base_size * self._scale
        return (float(self._center[0] - (w - 1) / 2), float(self._center[1] - (h - 1) / 2), float(w), float(h))

    @property
    def center(self) -> np.ndarray:
        return self._center.copy()

    def update(self, frame: np.ndarray) -> Box:
        """Locate the target in ``frame``; returns the new box ``(x, y, w, h)``."""
        if not self._initialised:
            raise InputError("tracker used before init(frame, box)")
        frame = np.asarray(frame)
        half = (self.num_scales - 1) / 2
        best = None
        for i in range(self.num_scales):
            s = self._scale * self.scale_step ** (i - half)
            lo, hi = self.scale_bounds
            s = min(max(s, lo), hi)
            window = self._base_window * s
            r = self._respond(self._patch_features(frame, self._center, window))
            dy, dx, v = _subpixel_peak(r)
            score = v * (self.scale_penalty ** abs(i - half))
            if best is None or score > best[0]:
                best = (score, s, dy, dx, v, window)
        _, s, dy, dx, v, window = best
        px_per_cell = window / np.array([self._tpl_w, self._tpl_h]) * self.cell_size
        self._center = self._center + np.array([dx, dy]) * px_per_cell
        self._scale = s
        self.score = v
        self._train(self._patch_features(frame, self._center, window), self.interp_factor)
        return self.box
