"""Network input colour spaces: sRGB, CIE Lab (MAST/LIIR) and Lab lightness only (UVC).

All functions take float images ``[..., 3, H, W]`` with sRGB values in ``[0, 1]``. The Lab
conversion uses the formulas of OpenCV's float ``COLOR_RGB2Lab`` (sRGB gamma, D65 white, the
0.008856 / 7.787 / 903.3 constants), so ``L`` is in ``[0, 100]`` and ``a``, ``b`` roughly in
``[-127, 127]``; OpenCV itself evaluates them through lookup tables, so its output differs by up
to about 0.5 units (0.08 on average).
"""
from __future__ import annotations

import torch

COLORSPACES = ("rgb", "lab", "lab_l")
# MAST / LIIR input normalisation of Lab: (L - 50) / 50, a / 127, b / 127.
LAB_MEAN = (50.0, 0.0, 0.0)
LAB_STD = (50.0, 127.0, 127.0)

# sRGB (linear) -> XYZ, rows pre-divided by the D65 white point (Xn = 0.950456, Zn = 1.088754).
_RGB_TO_XYZ = torch.tensor([
    [0.412453, 0.357580, 0.180423],
    [0.212671, 0.715160, 0.072169],
    [0.019334, 0.119193, 0.950227],
], dtype=torch.float64) / torch.tensor([0.950456, 1.0, 1.088754], dtype=torch.float64)[:, None]
_EPS = 0.008856


def _srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.04045, x / 12.92, ((x.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4)


def _f(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > _EPS, t.clamp_min(_EPS) ** (1.0 / 3.0), 7.787 * t + 16.0 / 116.0)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB ``[..., 3, H, W]`` in ``[0, 1]`` -> Lab ``[..., 3, H, W]`` (L in [0, 100]), same dtype."""
    if rgb.dim() < 3 or rgb.shape[-3] != 3:
        raise ValueError(f"expected an image [..., 3, H, W], got {tuple(rgb.shape)}")
    lin = _srgb_to_linear(rgb.float())
    m = _RGB_TO_XYZ.to(device=rgb.device, dtype=torch.float32)
    xyz = torch.einsum("ij,...jhw->...ihw", m, lin)
    fx, fy, fz = _f(xyz[..., 0, :, :]), _f(xyz[..., 1, :, :]), _f(xyz[..., 2, :, :])
    y = xyz[..., 1, :, :]
    lightness = torch.where(y > _EPS, 116.0 * fy - 16.0, 903.3 * y)
    lab = torch.stack([lightness, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-3)
    return lab.to(rgb.dtype)


def _linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    # below 0.0031308 (and for negative, out-of-gamut values) the linear branch, as _srgb_to_linear's
    return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp_min(0.0031308) ** (1.0 / 2.4) - 0.055)


def _f_inv(f: torch.Tensor) -> torch.Tensor:
    return torch.where(f > _EPS ** (1.0 / 3.0), f ** 3, (f - 16.0 / 116.0) / 7.787)


def lab_to_rgb(lab: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """Lab ``[..., 3, H, W]`` (L in [0, 100]) -> sRGB, same dtype: the inverse of :func:`rgb_to_lab` (its
    piecewise formulas inverted branch by branch). ``clip``: clip to ``[0, 1]``; without it a colour outside
    the sRGB gamut keeps values outside ``[0, 1]`` and :func:`rgb_to_lab` maps it back exactly."""
    if lab.dim() < 3 or lab.shape[-3] != 3:
        raise ValueError(f"expected an image [..., 3, H, W], got {tuple(lab.shape)}")
    x = lab.float()
    lightness, a, b = x[..., 0, :, :], x[..., 1, :, :], x[..., 2, :, :]
    y_lin = lightness / 903.3
    fy = torch.where(lightness > 903.3 * _EPS, (lightness + 16.0) / 116.0, 7.787 * y_lin + 16.0 / 116.0)
    y = torch.where(lightness > 903.3 * _EPS, fy ** 3, y_lin)
    xyz = torch.stack([_f_inv(fy + a / 500.0), y, _f_inv(fy - b / 200.0)], dim=-3)
    m = torch.linalg.inv(_RGB_TO_XYZ).to(device=lab.device, dtype=torch.float32)
    lin = torch.einsum("ij,...jhw->...ihw", m, xyz)
    out = _linear_to_srgb(lin)
    return (out.clamp(0.0, 1.0) if clip else out).to(lab.dtype)


def convert_colorspace(rgb: torch.Tensor, colorspace: str) -> torch.Tensor:
    """Map sRGB ``[..., 3, H, W]`` in ``[0, 1]`` to the network's input space (before mean/std).

    ``rgb``: unchanged. ``lab``: ``(L, a, b)`` as :func:`rgb_to_lab` (MAST/LIIR normalise with
    :data:`LAB_MEAN` / :data:`LAB_STD`). ``lab_l``: the lightness ``L/100`` replicated to
    three channels (UVC's grey input, normalised with the ImageNet mean/std).
    """
    if colorspace == "rgb":
        return rgb
    if colorspace == "lab":
        return rgb_to_lab(rgb)
    if colorspace == "lab_l":
        lightness = rgb_to_lab(rgb)[..., :1, :, :] / 100.0
        return lightness.expand(*lightness.shape[:-3], 3, *lightness.shape[-2:]).contiguous()
    raise ValueError(f"unknown colorspace {colorspace!r}; expected one of {COLORSPACES}")
