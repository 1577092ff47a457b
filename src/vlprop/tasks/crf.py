"""Fully connected CRF refinement (Krähenbühl & Koltun 2011) with mean-field inference, in PyTorch.

The model is the one of ``pydensecrf`` (``DenseCRF2D``): labels ``l = 0..C-1`` per pixel, a unary energy
``U [C, H, W]`` (negative log probabilities) and Potts pairwise terms with

* a bilateral kernel ``k(i, j) = exp(-|p_i - p_j|^2 / (2 sxy^2) - |I_i - I_j|^2 / (2 srgb^2))``
  (``p`` pixel position in pixels, ``I`` RGB colour in 0..255 units), weight ``compat``;
* optionally a Gaussian (smoothness) kernel ``exp(-|p_i - p_j|^2 / (2 gaussian_sxy^2))``, weight
  ``gaussian_compat``.

One mean-field iteration is ``Q_i(l) ∝ exp(-U_i(l) + Σ_kernels w · m_i(l))`` with the normalised message
``m_i(l) = n_i Σ_{j≠i} k(i, j) n_j Q_j(l)``, ``n_i = 1 / sqrt(Σ_{j≠i} k(i, j))`` (pydensecrf's default
``NORMALIZE_SYMMETRIC``; Potts: ``compat.apply(m) = -w m``, subtracted). Starting from ``Q = softmax(-U)``.

**Approximation (documented, deliberate).** pydensecrf filters with the permutohedral lattice (itself an
approximation). Here the filter is *exact* on a sub-sampled grid: the image and the unary are
area-averaged by an integer factor ``d`` (default ``max(1, round(sxy / 3))``, so the bilateral spatial
sigma spans ~3 cells) and the kernel is summed exactly over every cell within ``truncate · sigma`` (a disk).
Because the messages are normalised averages, they are nearly independent of the sampling density. After
the iterations on the coarse grid, one last mean-field update is made *at full resolution*: every pixel,
with its own colour and unary, receives the (average-normalised) bilateral/Gaussian message of the coarse
``Q`` in the ``(2 final_radius + 1)^2`` coarse cells around it (default 7 x 7 cells = ±28 px for
``sxy = 25``; a truncation of the kernel for speed), which puts the label boundary on the colour edge at pixel precision. With
``d = 1`` (small images, small ``sxy``) all iterations run at full resolution and the result is the exact
dense CRF restricted to the truncation disk.

``backend="pydensecrf"`` runs the same model with the ``pydensecrf2`` package (``pip install
"vlprop[crf]"``; a source distribution that builds with a C++ compiler in ~40 s, no Cython/NumPy pins).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vlprop.errors import InputError

BACKENDS = ("torch", "pydensecrf")


@dataclass(frozen=True)
class CRFParams:
    """Dense CRF settings (pydensecrf units: pixels and 0..255 colour values).

    sxy, srgb, compat: bilateral kernel spatial / colour standard deviations and Potts weight.
    gaussian_sxy, gaussian_compat: optional smoothness kernel (``gaussian_compat = 0``: off, as in WALD).
    iterations: mean-field iterations.
    downsample: sub-sampling factor of the torch backend (``None``: ``max(1, round(sxy / 5))``).
    truncate: kernel support radius in standard deviations (torch backend).
    final_radius: window half-size, in coarse cells, of the full-resolution update (torch backend, ``d > 1``).
    """

    sxy: float = 25.0
    srgb: float = 5.0
    compat: float = 5.0
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 0.0
    iterations: int = 10
    downsample: int | None = None
    truncate: float = 3.0
    final_radius: int = 3

    def __post_init__(self) -> None:
        if not (self.sxy > 0 and self.srgb > 0 and self.gaussian_sxy > 0):
            raise InputError(f"CRF standard deviations must be > 0, got sxy={self.sxy}, srgb={self.srgb}, "
                             f"gaussian_sxy={self.gaussian_sxy}")
        if self.compat < 0 or self.gaussian_compat < 0:
            raise InputError(f"CRF compat weights must be >= 0, got {self.compat}, {self.gaussian_compat}")
        if self.iterations < 0:
            raise InputError(f"CRF iterations must be >= 0, got {self.iterations}")
        if self.downsample is not None and (isinstance(self.downsample, bool) or int(self.downsample) < 1):
            raise InputError(f"CRF downsample must be a positive integer, got {self.downsample!r}")
        if not self.truncate > 0:
            raise InputError(f"CRF truncate must be > 0, got {self.truncate}")
        if isinstance(self.final_radius, bool) or int(self.final_radius) < 1:
            raise InputError(f"CRF final_radius must be a positive integer, got {self.final_radius!r}")

    def factor(self) -> int:
        """The sub-sampling factor the torch backend uses."""
        return int(self.downsample) if self.downsample is not None else max(1, int(round(self.sxy / 3.0)))


def unary_from_probability(prob: np.ndarray | torch.Tensor, limit: float = 0.0) -> torch.Tensor:
    """Two-label unary ``[2, H, W]`` (background, foreground) = ``-log`` of ``(1 - p, p)``.

    ``prob [H, W]`` is the foreground probability; it is clamped to ``[limit, 1 - limit]`` first (WALD's
    ``prb_limit``: no pixel is certain, so the pairwise terms can overrule the coarse map), and always to
    ``[1e-6, 1 - 1e-6]`` so the energy stays finite.
    """
    p = torch.as_tensor(np.asarray(prob) if not isinstance(prob, torch.Tensor) else prob).float()
    if p.dim() != 2:
        raise InputError(f"foreground probability must be [H, W], got shape {tuple(p.shape)}")
    if not 0.0 <= limit < 0.5:
        raise InputError(f"probability limit must be in [0, 0.5), got {limit}")
    lo = max(float(limit), 1e-6)
    p = p.clamp(lo, 1.0 - lo)
    return torch.stack([-torch.log1p(-p), -torch.log(p)])


def _check_inputs(image, unary) -> tuple[torch.Tensor, torch.Tensor]:
    img = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    if img.dim() != 3 or img.shape[-1] != 3:
        raise InputError(f"CRF image must be RGB [H, W, 3] (0..255), got shape {tuple(img.shape)}")
    u = torch.as_tensor(unary).float()
    if u.dim() != 3 or u.shape[0] < 2:
        raise InputError(f"CRF unary must be [C >= 2, H, W], got shape {tuple(u.shape)}")
    if tuple(u.shape[1:]) != tuple(img.shape[:2]):
        raise InputError(f"CRF unary is {u.shape[2]}x{u.shape[1]} but the image is {img.shape[1]}x{img.shape[0]}")
    if not torch.isfinite(u).all():
        raise InputError("CRF unary must be finite (clamp probabilities away from 0 and 1)")
    return img.float().permute(2, 0, 1).contiguous(), u


def dense_crf(image, unary, params: CRFParams = CRFParams(), backend: str = "torch") -> torch.Tensor:
    """Mean-field marginals ``Q [C, H, W]`` of the dense CRF.

    Args:
        image: RGB ``[H, W, 3]``, values 0..255 (uint8 or float).
        unary: ``[C, H, W]`` energies (``-log p``), e.g. :func:`unary_from_probability`.
        params: kernel parameters and iterations (:class:`CRFParams`).
        backend: ``"torch"`` (this module, see the module doc) or ``"pydensecrf"`` (needs ``pydensecrf2``).
    """
    if backend not in BACKENDS:
        raise InputError(f"CRF backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    img, u = _check_inputs(image, unary)
    if backend == "pydensecrf":
        return _pydensecrf(img, u, params)
    d = params.factor()
    if d == 1:
        return _mean_field(img, u, params, params.iterations, spacing=1.0)
    H, W = u.shape[1:]
    hc, wc = -(-H // d), -(-W // d)
    img_c = _area_down(img, d, hc, wc)
    u_c = _area_down(u, d, hc, wc)
    q_c = _mean_field(img_c, u_c, params, max(params.iterations - 1, 0), spacing=float(d))
    if params.iterations == 0:
        return torch.softmax(-u, dim=0)
    return _full_resolution_step(img, u, img_c, q_c, params, d)


def refine_binary(image, prob, params: CRFParams = CRFParams(), limit: float = 0.0,
                  backend: str = "torch") -> np.ndarray:
    """Foreground mask ``[H, W]`` bool: argmax of the CRF on the foreground probability ``prob [H, W]``."""
    q = dense_crf(image, unary_from_probability(prob, limit), params, backend)
    return (q[1] > q[0]).numpy()


# ---------------------------------------------------------------------------------------------------
# torch backend
# ---------------------------------------------------------------------------------------------------
def _area_down(x: torch.Tensor, d: int, hc: int, wc: int) -> torch.Tensor:
    """``[K, H, W]`` -> ``[K, hc, wc]`` means over ``d x d`` blocks (edge blocks: over their pixels)."""
    H, W = x.shape[1:]
    xp = F.pad(x[None], (0, wc * d - W, 0, hc * d - H))
    ones = F.pad(torch.ones(1, 1, H, W), (0, wc * d - W, 0, hc * d - H))
    s = F.avg_pool2d(xp, d, d, divisor_override=1)
    n = F.avg_pool2d(ones, d, d, divisor_override=1)
    return (s / n)[0]


def _offsets(radius_cells: float) -> list[tuple[int, int]]:
    r = int(math.floor(radius_cells))
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)
            if (dy or dx) and dy * dy + dx * dx <= radius_cells * radius_cells]


_CHUNK = 128  # offsets gathered at once (bounds the [C, chunk, N] temporaries)


def _neighbours(h: int, w: int, offsets: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices ``[K, h*w]`` of the cell at each offset from every cell (0 where outside) and validity."""
    ys = torch.arange(h).view(h, 1).expand(h, w).reshape(-1)
    xs = torch.arange(w).view(1, w).expand(h, w).reshape(-1)
    off = torch.tensor(offsets, dtype=torch.long).view(-1, 2) if offsets else torch.zeros(0, 2, dtype=torch.long)
    ny = ys[None] + off[:, :1]
    nx = xs[None] + off[:, 1:]
    valid = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
    return torch.where(valid, ny * w + nx, torch.zeros_like(ny)), valid


def _colour_weight(centre: torch.Tensor, others: torch.Tensor, srgb: float | None) -> torch.Tensor:
    """``exp(-|I_i - I_j|^2 / (2 srgb^2))``: centre ``[3, N]``, others ``[3, K, N]`` -> ``[K, N]``."""
    if srgb is None:
        return torch.ones(others.shape[1:])
    return torch.exp(-((others - centre[:, None]) ** 2).sum(0) / (2 * srgb * srgb))


class _Kernel:
    """Exact truncated kernel on a grid with cell spacing ``spacing`` pixels: weights ``[K, N]`` per offset."""

    def __init__(self, img: torch.Tensor, sxy: float, srgb: float | None, spacing: float, truncate: float):
        h, w = img.shape[1:]
        offsets = _offsets(truncate * sxy / spacing)
        self.idx, valid = _neighbours(h, w, offsets)
        flat = img.reshape(3, -1)
        spatial = torch.tensor([math.exp(-(dy * dy + dx * dx) * spacing * spacing / (2 * sxy * sxy))
                                for dy, dx in offsets], dtype=torch.float32).view(-1, 1)
        self.weights = torch.cat([spatial[k:k + _CHUNK] * valid[k:k + _CHUNK]
                                  * _colour_weight(flat, flat[:, self.idx[k:k + _CHUNK]], srgb)
                                  for k in range(0, len(offsets), _CHUNK)] or [torch.zeros(0, h * w)])
        deg = self.weights.sum(0)
        self.norm = torch.where(deg > 0, deg.clamp_min(1e-20).rsqrt(), torch.zeros_like(deg))
        self.shape = (h, w)

    def message(self, q: torch.Tensor) -> torch.Tensor:
        """Symmetric-normalised message ``n_i Σ_j k_ij n_j q_j``: ``q [C, h, w]`` -> ``[C, h, w]``."""
        qn = q.reshape(q.shape[0], -1) * self.norm
        out = torch.zeros_like(qn)
        for k in range(0, self.idx.shape[0], _CHUNK):
            out += torch.einsum("kn,ckn->cn", self.weights[k:k + _CHUNK], qn[:, self.idx[k:k + _CHUNK]])
        return (out * self.norm).reshape(q.shape)


def _mean_field(img: torch.Tensor, u: torch.Tensor, p: CRFParams, iterations: int, spacing: float) -> torch.Tensor:
    kernels = [(_Kernel(img, p.sxy, p.srgb, spacing, p.truncate), p.compat)] if iterations > 0 else []
    if p.gaussian_compat > 0 and iterations > 0:
        kernels.append((_Kernel(img, p.gaussian_sxy, None, spacing, p.truncate), p.gaussian_compat))
    q = torch.softmax(-u, dim=0)
    for _ in range(iterations):
        energy = -u
        for k, wgt in kernels:
            energy = energy + wgt * k.message(q)
        q = torch.softmax(energy, dim=0)
    return q


def _full_resolution_step(img: torch.Tensor, u: torch.Tensor, img_c: torch.Tensor, q_c: torch.Tensor,
                          p: CRFParams, d: int) -> torch.Tensor:
    """One mean-field update of every full-resolution pixel from the coarse marginals ``q_c``.

    Pixel ``(y, x)`` lies in coarse cell ``(y // d, x // d)`` at sub-position ``(y % d, x % d)``; the
    pixels of one sub-position form a coarse-sized grid, so each of the ``d^2`` groups gathers its
    neighbours from the coarse arrays with one index table. Messages are kernel-weighted averages of the
    neighbours' ``Q`` (a coarse cell stands for ``d^2`` pixels, so the average is the
    resolution-independent form of the normalised message); the spatial distance is measured from the
    pixel to the coarse cell centres.
    """
    C, H, W = u.shape
    hc, wc = q_c.shape[1:]
    terms = [(p.sxy, p.srgb, p.compat)]
    if p.gaussian_compat > 0:
        terms.append((p.gaussian_sxy, None, p.gaussian_compat))
    energy = -u.clone()
    qf = q_c.reshape(C, -1)
    cf = img_c.reshape(3, -1)
    for sxy, srgb, compat in terms:
        r = int(p.final_radius)
        offsets = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
        off = torch.tensor(offsets, dtype=torch.float32)
        idx, valid = _neighbours(hc, wc, offsets)
        for sy in range(d):
            for sx in range(d):
                pix = img[:, sy::d, sx::d]  # [3, gh, gw]; pixel (gy, gx) lies in coarse cell (gy, gx)
                gh, gw = pix.shape[1:]
                if gh == 0 or gw == 0:
                    continue
                cells = (torch.arange(gh).view(-1, 1) * wc + torch.arange(gw).view(1, -1)).reshape(-1)
                dist2 = (off[:, 0] * d + (d - 1) / 2.0 - sy) ** 2 + (off[:, 1] * d + (d - 1) / 2.0 - sx) ** 2
                keep = dist2 <= (p.truncate * sxy) ** 2
                spatial = torch.exp(-dist2[keep] / (2 * sxy * sxy)).view(-1, 1)
                gi, gv = idx[keep][:, cells], valid[keep][:, cells]
                centre = pix.reshape(3, -1)
                num = torch.zeros(C, centre.shape[1])
                den = torch.zeros(centre.shape[1])
                for k in range(0, gi.shape[0], _CHUNK):
                    ik = gi[k:k + _CHUNK]
                    wgt = spatial[k:k + _CHUNK] * gv[k:k + _CHUNK] * _colour_weight(centre, cf[:, ik], srgb)
                    num += torch.einsum("kn,ckn->cn", wgt, qf[:, ik])
                    den += wgt.sum(0)
                msg = num / den.clamp_min(1e-20)
                energy[:, sy::d, sx::d] += compat * msg.reshape(C, gh, gw)
    return torch.softmax(energy, dim=0)


# ---------------------------------------------------------------------------------------------------
# pydensecrf backend
# ---------------------------------------------------------------------------------------------------
def pydensecrf_available() -> bool:
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def _pydensecrf(img: torch.Tensor, u: torch.Tensor, p: CRFParams) -> torch.Tensor:
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        raise InputError('the pydensecrf CRF backend needs the pydensecrf2 package: pip install "vlprop[crf]" '
                         '(or use backend="torch")') from None
    C, H, W = u.shape
    crf = dcrf.DenseCRF2D(W, H, C)
    crf.setUnaryEnergy(np.ascontiguousarray(u.reshape(C, -1).numpy().astype(np.float32)))
    rgb = np.ascontiguousarray(img.permute(1, 2, 0).round().clamp(0, 255).numpy().astype(np.uint8))
    crf.addPairwiseBilateral(sxy=p.sxy, srgb=p.srgb, rgbim=rgb, compat=p.compat)
    if p.gaussian_compat > 0:
        crf.addPairwiseGaussian(sxy=p.gaussian_sxy, compat=p.gaussian_compat)
    q = np.array(crf.inference(p.iterations), dtype=np.float32).reshape(C, H, W)
    return torch.from_numpy(q)


__all__ = ["BACKENDS", "CRFParams", "dense_crf", "refine_binary", "unary_from_probability", "pydensecrf_available"]
