"""Mask PNG I/O: read index masks (palette ``P``, ``L``, DAVIS-2016 0/255), write DAVIS palette PNGs atomically.

Masks are index maps ``[H, W]`` (uint8): 0 = background, object ids 1..254, 255 may be declared void.
Object ids are never recovered from colours: an RGB colour PNG is rejected with an explanation.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputError
from .files import atomic_path


def davis_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC / DAVIS bit-interleaved colour map ``[n, 3]`` uint8 (index 1 = (128, 0, 0))."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def read_mask(path: str | Path, binary_255: str = "auto") -> np.ndarray:
    """Read an index mask ``[H, W]`` uint8.

    binary_255: DAVIS-2016 masks store the object as 255. ``"auto"`` maps a mask whose only values are
    {0, 255} to {0, 1} (object 1); ``"void"`` keeps 255 (declared void by the caller); ``"object"``
    always maps 255 to 1.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"mask file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("P", "L", "1"):
                arr = np.asarray(img.convert("L") if mode == "1" else img, dtype=np.uint8)
                if mode == "1":
                    arr = (arr > 0).astype(np.uint8) * 255
            elif mode in ("I", "I;16", "I;16B"):
                arr = np.asarray(img).astype(np.int64)
                if arr.max() > 255:
                    raise InputError(f"{path}: mask values up to {arr.max()}, expected object ids 0..255")
                arr = arr.astype(np.uint8)
            elif mode in ("LA", "PA"):
                arr = np.asarray(img.getchannel(0), dtype=np.uint8)
            elif mode in ("RGB", "RGBA"):
                rgb = np.asarray(img.convert("RGB"))
                if np.all(rgb[..., 0] == rgb[..., 1]) and np.all(rgb[..., 1] == rgb[..., 2]):
                    arr = rgb[..., 0].copy()
                else:
                    raise InputError(
                        f"{path} is an RGB colour image; vlprop reads object ids from index values, never from "
                        f"colours. Save the mask as a palette ('P') or greyscale ('L') PNG whose pixel values are "
                        f"the object ids (0 = background).")
            else:
                raise InputError(f"{path}: unsupported mask image mode {mode!r}")
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise InputError(f"cannot read mask {path}: {e}") from None
    if binary_255 not in ("auto", "void", "object"):
        raise ValueError(f"binary_255 must be auto, void or object, got {binary_255!r}")
    values = np.unique(arr)
    if binary_255 == "object" or (binary_255 == "auto" and set(values.tolist()) <= {0, 255} and 255 in values):
        arr = np.where(arr == 255, 1, arr).astype(np.uint8)
    return arr


def write_mask(path: str | Path, mask: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write an index mask ``[H, W]`` as a palette PNG (DAVIS colours by default), atomically."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"mask for {path} must be [H, W], got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise InputError(f"mask for {path} has values outside 0..255")
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    pal = davis_palette() if palette is None else np.asarray(palette, dtype=np.uint8)
    img.putpalette(pal.reshape(-1).tolist())
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def mask_to_onehot(mask: np.ndarray, ids: list[int], void: int | None = None) -> np.ndarray:
    """Index mask ``[H, W]`` -> float one-hot ``[1 + len(ids), H, W]`` (channel 0 = background).

    Pixels with ids not in ``ids`` count as background; ``void`` pixels get all-zero labels.
    """
    out = np.zeros((1 + len(ids),) + mask.shape, dtype=np.float32)
    for c, i in enumerate(ids, start=1):
        out[c] = mask == i
    out[0] = 1.0 - out[1:].sum(0)
    if void is not None:
        out[:, mask == void] = 0.0
    return out


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5, palette: np.ndarray | None = None) -> np.ndarray:
    """Blend an index mask over an RGB frame (background left untouched), with dark object outlines."""
    pal = davis_palette() if palette is None else palette
    out = image.astype(np.float32).copy()
    fg = mask > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * pal[mask[fg]].astype(np.float32)
    edge = np.zeros_like(fg)
    edge[:-1] |= mask[:-1] != mask[1:]
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    out[edge] = 0.3 * out[edge]
    return np.clip(out, 0, 255).astype(np.uint8)
