"""Clip augmentation for self-supervised training: the shared clip transform and DUL's two views.

A clip is ``T`` RGB frames of one video. :func:`augment_clip` applies, in this order (DUL's
``daugm_video``):

1. **shared** transform, identical for all frames: scale so the smallest side is ``S ~ U[lo, hi]``
   pixels (integer), random (or centre) crop of ``crop`` pixels, random horizontal flip;
2. **view A** = the shared result (identity);
3. **view B** = a guided transform, identical for all frames: random horizontal flip, then a
   zoom-in: a crop of ``round(s*H) x round(s*W)`` pixels with ``s ~ U[zoom_min, zoom_max]`` at a random
   position, resized back to ``H x W`` (bilinear, cell-centre convention).

The guided transform is recorded as an affine ``theta`` ``[2, 3]`` that maps **view-B normalised
coordinates to view-A normalised coordinates** in the ``align_corners=False`` convention of
:func:`torch.nn.functional.affine_grid`, so ``grid_sample(view_a, affine_grid(theta, view_b.shape))``
reproduces view B, and the same call on view-A *features* aligns them with view-B features (the
feature grid shares the normalised coordinates when the crop is a multiple of the stride).

All randomness comes from the ``numpy.random.Generator`` passed in, so a clip is a pure function of
its seed (what makes resumed and distributed runs reproducible).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vlprop.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class AugmentConfig:
    """Parameters of :func:`augment_clip` (defaults: DUL's YouTube-VOS configuration scaled to ``crop``).

    ``smallest_range`` defaults to ``(crop, round(1.25 * crop))`` (DUL: 256..320 for a 256 crop).
    ``zoom_range`` is the view-B crop fraction ``s``; ``None`` disables the zoom (view B is then
    only flipped). Zoom-out (``s > 1``) is not supported: it would need invalid-pixel handling.
    """

    crop: int = 256
    smallest_range: tuple[int, int] | None = None
    random_crop: bool = True
    hflip: bool = True
    guided_hflip: bool = True
    zoom_range: tuple[float, float] | None = (0.5, 1.0)

    def __post_init__(self) -> None:
        if self.crop < 8:
            raise InputError(f"crop must be at least 8 pixels, got {self.crop}")
        lo, hi = self.scale_range
        if lo < self.crop or hi < lo:
            raise InputError(f"smallest_range {self.scale_range} must satisfy crop ({self.crop}) <= lo <= hi")
        if self.zoom_range is not None:
            zlo, zhi = self.zoom_range
            if not (0 < zlo <= zhi <= 1):
                raise InputError(f"zoom_range {self.zoom_range} must satisfy 0 < lo <= hi <= 1 (zoom-in only)")

    @property
    def scale_range(self) -> tuple[int, int]:
        if self.smallest_range is not None:
            return int(self.smallest_range[0]), int(self.smallest_range[1])
        return self.crop, int(round(1.25 * self.crop))


@dataclass(frozen=True)
class ViewTransform:
    """View B relative to view A: optional h-flip of A, then crop ``[top:top+height, left:left+width]``
    of the (flipped) frame, resized back to the full frame size."""

    flip: bool
    top: int
    left: int
    height: int
    width: int


def resize_smallest_side(image: Image.Image, size: int) -> Image.Image:
    """Resize so that the smaller side is ``size`` pixels, keeping the aspect ratio (DUL rounding:
    the other side is ``int(size * aspect)``). PIL's bilinear filter antialiases when shrinking."""
    w, h = image.size
    if w >= h:
        new = (max(size, int(size * w / h)), size)
    else:
        new = (size, max(size, int(size * h / w)))
    if new == (w, h):
        return image
    return image.resize(new, Image.BILINEAR)


def sample_view_transform(height: int, width: int, rng: np.random.Generator, cfg: AugmentConfig) -> ViewTransform:
    """Draw the guided view-B transform for frames of ``height x width`` pixels."""
    flip = bool(cfg.guided_hflip and rng.random() < 0.5)
    if cfg.zoom_range is None:
        return ViewTransform(flip, 0, 0, height, width)
    s = float(rng.uniform(*cfg.zoom_range))
    ch = min(height, max(1, int(round(s * height))))
    cw = min(width, max(1, int(round(s * width))))
    top = int(rng.integers(0, height - ch + 1))
    left = int(rng.integers(0, width - cw + 1))
    return ViewTransform(flip, top, left, ch, cw)


def apply_view_transform(frames: torch.Tensor, vt: ViewTransform) -> torch.Tensor:
    """Apply ``vt`` to float frames ``[T, C, H, W]``: flip, crop, bilinear resize back to ``H x W``."""
    if frames.dim() != 4:
        raise ValueError(f"expected frames [T, C, H, W], got {tuple(frames.shape)}")
    H, W = frames.shape[-2:]
    x = frames.flip(-1) if vt.flip else frames
    x = x[..., vt.top:vt.top + vt.height, vt.left:vt.left + vt.width]
    if (vt.height, vt.width) != (H, W):
        x = F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)
    return x.contiguous()


def view_theta(vt: ViewTransform, height: int, width: int) -> torch.Tensor:
    """Affine ``[2, 3]`` mapping view-B normalised coords (x, y) to view-A normalised coords.

    With ``align_corners=False`` a normalised coordinate ``u`` of a ``W``-pixel axis is the pixel-edge
    position ``(u + 1) * W / 2``. View-B edge position ``e_B`` is flipped-A edge position
    ``left + e_B * width / W``, hence ``u_flipA = u_B * width/W + (2*left + width)/W - 1`` and a flip
    negates ``u``. The y axis is the same without the flip.
    """
    sx = vt.width / width
    tx = (2 * vt.left + vt.width) / width - 1
    sy = vt.height / height
    ty = (2 * vt.top + vt.height) / height - 1
    f = -1.0 if vt.flip else 1.0
    return torch.tensor([[f * sx, 0.0, f * tx], [0.0, sy, ty]], dtype=torch.float32)


def normalize(frames: torch.Tensor, preprocessing=None) -> torch.Tensor:
    """Network input from float sRGB frames ``[..., 3, H, W]`` in ``[0, 1]``: the colour conversion and
    mean/std of ``preprocessing`` (a :class:`vlprop.backbones.Preprocessing`, i.e. the backbone's
    ``net.preprocessing``); ``None`` = ImageNet mean/std on RGB."""
    if preprocessing is None:
        mean_v, std_v = IMAGENET_MEAN, IMAGENET_STD
    else:
        from vlprop.backbones.colorspace import convert_colorspace

        frames = convert_colorspace(frames, preprocessing.colorspace)
        mean_v, std_v = preprocessing.mean, preprocessing.std
    mean = torch.tensor(mean_v, dtype=frames.dtype, device=frames.device).view(3, 1, 1)
    std = torch.tensor(std_v, dtype=frames.dtype, device=frames.device).view(3, 1, 1)
    return (frames - mean) / std


def shared_transform(images: list[Image.Image], rng: np.random.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """Shared clip transform: smallest side ``S ~ U[lo, hi]``, crop, h-flip.

    Returns float ``[T, 3, crop, crop]`` in [0, 1].
    """
    if not images:
        raise ValueError("empty clip")
    lo, hi = cfg.scale_range
    size = lo + int((hi - lo) * rng.random())
    resized = [resize_smallest_side(im, size) for im in images]
    sizes = {im.size for im in resized}
    if len(sizes) != 1:
        raise InputError(f"frames of one clip differ in size: {sorted(sizes)}")
    w, h = resized[0].size
    c = cfg.crop
    if cfg.random_crop:
        top = int(rng.integers(0, h - c + 1))
        left = int(rng.integers(0, w - c + 1))
    else:
        top, left = (h - c) // 2, (w - c) // 2
    arr = np.stack([np.asarray(im.convert("RGB"))[top:top + c, left:left + c] for im in resized])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)
    if cfg.hflip and rng.random() < 0.5:
        x = x.flip(-1)
    return x.contiguous()


def augment_clip(images: list[Image.Image], rng: np.random.Generator, cfg: AugmentConfig,
                 preprocessing=None) -> dict[str, torch.Tensor]:
    """Build DUL's two views of a clip.

    Returns ``view_a`` and ``view_b`` (float32 ``[T, 3, crop, crop]`` normalised by :func:`normalize`
    with ``preprocessing``, default ImageNet) and
    ``theta`` (float32 ``[2, 3]``, view-B -> view-A normalised coordinates).
    """
    a = shared_transform(images, rng, cfg)
    vt = sample_view_transform(cfg.crop, cfg.crop, rng, cfg)
    b = apply_view_transform(a, vt)
    return {"view_a": normalize(a, preprocessing), "view_b": normalize(b, preprocessing), "theta": view_theta(vt, cfg.crop, cfg.crop)}
