"""Synthetic videos with known motion and exact masks: the ``vlprop demo`` scene and test videos.

:func:`natural_video` (the demo) composes real photographs that ship inside scikit-image (a garage scene as
the background, a cat's head and a cup of coffee as the moving objects, a wooden post in front of them) with
a slow camera pan, so the video looks natural and the true masks are still known exactly.
:func:`synthetic_video` (tests) moves noise-textured disks and squares over a noise background.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SyntheticVideo:
    frames: np.ndarray  # [T, H, W, 3] uint8
    masks: np.ndarray  # [T, H, W] uint8 object ids (0 = background)
    ids: list[int]


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Low-frequency colour noise ``[h, w, 3]`` in [0, 1] (bilinear up-sampling of a coarse grid)."""
    import cv2

    gh, gw = max(2, h // cell + 2), max(2, w // cell + 2)
    coarse = rng.random((gh, gw, 3)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def synthetic_video(num_frames: int = 32, height: int = 240, width: int = 320, seed: int = 0,
                    speed: float = 2.0, num_objects: int = 2, appear_at: dict[int, int] | None = None) -> SyntheticVideo:
    """Textured shapes moving over a textured background on straight paths with known masks.

    Object ``i`` (ids 1..num_objects) is a disk (odd ids) or square (even ids) with its own texture,
    moving ``speed`` pixels per frame in a fixed direction and bouncing off the borders; later objects are
    drawn on top. ``appear_at`` = {object id: first frame} makes objects appear mid-video.
    """
    rng = np.random.default_rng(seed)
    appear_at = appear_at or {}
    bg = _smooth_noise(rng, height, width, 24) * 0.5 + 0.25
    size = max(8, min(height, width) // 5)
    objs = []
    for i in range(1, num_objects + 1):
        tex = _smooth_noise(rng, 2 * size + 1, 2 * size + 1, 6)
        hue = rng.random(3)
        tex = (0.55 * tex + 0.45 * hue).clip(0, 1)
        stripes = (np.indices((2 * size + 1, 2 * size + 1)).sum(0) // 4) % 2
        tex = tex * (0.75 + 0.25 * stripes[..., None])
        pos = np.array([rng.uniform(size + 2, height - size - 2), rng.uniform(size + 2, width - size - 2)])
        ang = rng.uniform(0, 2 * np.pi)
        vel = speed * np.array([np.sin(ang), np.cos(ang)])
        objs.append(dict(id=i, tex=tex, pos=pos, vel=vel, disk=(i % 2 == 1)))
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    masks = np.zeros((num_frames, height, width), np.uint8)
    yy, xx = np.mgrid[-size:size + 1, -size:size + 1]
    disk = yy ** 2 + xx ** 2 <= size ** 2
    for t in range(num_frames):
        img = bg.copy()
        m = np.zeros((height, width), np.uint8)
        for o in objs:
            if t >= appear_at.get(o["id"], 0):
                cy, cx = int(round(o["pos"][0])), int(round(o["pos"][1]))
                shape = disk if o["disk"] else np.ones_like(disk)
                y0, x0 = cy - size, cx - size
                ys = slice(max(0, y0), min(height, y0 + 2 * size + 1))
                xs = slice(max(0, x0), min(width, x0 + 2 * size + 1))
                sub = shape[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0]
                img[ys, xs][sub] = o["tex"][ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0][sub]
                m[ys, xs][sub] = o["id"]
            o["pos"] = o["pos"] + o["vel"]
            for d, lim in ((0, height), (1, width)):
                if not size + 1 <= o["pos"][d] <= lim - size - 2:
                    o["vel"][d] = -o["vel"][d]
                    o["pos"][d] = np.clip(o["pos"][d], size + 1, lim - size - 2)
        frames[t] = (img * 255).round().astype(np.uint8)
        masks[t] = m
    return SyntheticVideo(frames, masks, list(range(1, num_objects + 1)))


def _photo(name: str) -> np.ndarray:
    """A photograph shipped in scikit-image's ``data`` folder as ``[H, W, 3]`` float32 in [0, 1]."""
    from pathlib import Path

    import skimage
    from PIL import Image

    path = Path(skimage.__file__).parent / "data" / name
    if not path.is_file():
        from .errors import InputError

        raise InputError(f"the demo's photograph {path} is missing; reinstall scikit-image (pip install scikit-image)")
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0


def _resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    import cv2

    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)


def _ellipse(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy - (h - 1) / 2) / (h / 2)) ** 2 + ((xx - (w - 1) / 2) / (w / 2)) ** 2 <= 1.0


def natural_video(num_frames: int = 40, height: int = 240, width: int = 320) -> SyntheticVideo:
    """Two photographed objects moving over a photographed scene, with a camera pan and an occluder.

    * background: scikit-image's ``motorcycle_left.png`` (a garage), scaled to 1.5x the frame height and
      panned right-to-left at 2 px per frame (its right end is reached smoothly, never passed);
    * object 1: the head of ``chelsea.png`` (a cat) cut out as an ellipse 0.42 of the frame height tall,
      moving left to right on a shallow arc;
    * object 2: the cup of ``coffee.png`` cut out as a disk 0.36 of the frame height wide, moving left in front
      of the cat, so it hides the cat's chin while they cross;
    * a wooden post (a strip of the coffee table) standing in the scene in front of everything: it enters with
      the pan and hides the cat's right side in the last frames (the masks exclude hidden pixels).

    Deterministic (no random numbers); masks are exact ``[T, H, W]`` ids 0/1/2.
    """
    if num_frames < 1 or height < 32 or width < 32:
        raise ValueError(f"natural_video needs >= 1 frame of at least 32x32 pixels, got {num_frames}, {height}x{width}")
    scene = _photo("motorcycle_left.png")
    sh = int(round(1.5 * height))
    sw = max(int(round(scene.shape[1] * sh / scene.shape[0])), width + 2)
    scene = _resize(scene, sh, sw)
    cat = _photo("chelsea.png")[20:250, 80:380]          # the head, ears to chin
    ch, cw = int(round(0.42 * height)), int(round(0.42 * height * 300 / 230))
    cat = _resize(cat, ch, cw)
    cat_shape = _ellipse(ch, cw)
    cup = _photo("coffee.png")[5:345, 90:430]            # cup and saucer seen from above
    d = int(round(0.36 * height)) | 1
    cup = _resize(cup, d, d)
    cup_shape = _ellipse(d, d)
    post = _resize(_photo("coffee.png")[0:400, 0:40], sh, max(8, width // 14))   # wood grain of the table

    pan_total = sw - width
    step = min(2.0, pan_total / max(1, num_frames - 1))
    top = (sh - height) // 2
    post_x_world = int(width * 0.93)                     # the post's left edge in scene coordinates

    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    masks = np.zeros((num_frames, height, width), np.uint8)
    for t in range(num_frames):
        u = t / max(1, num_frames - 1)
        x0 = int(round(step * t))
        img = scene[top:top + height, x0:x0 + width].copy()
        m = np.zeros((height, width), np.uint8)
        # object centres move in frame coordinates; (y, x) below are the top-left corners
        cy = int(round(height * (0.36 + 0.12 * np.sin(np.pi * u)) - ch / 2))
        cx = int(round(width * (0.22 + 0.40 * u) - cw / 2))
        ky = int(round(height * (0.76 - 0.06 * u) - d / 2))
        kx = int(round(width * (0.66 - 0.36 * u) - d / 2))
        for oid, tex, shape, y, x in ((1, cat, cat_shape, cy, cx), (2, cup, cup_shape, ky, kx)):
            ys = slice(max(0, y), min(height, y + tex.shape[0]))
            xs = slice(max(0, x), min(width, x + tex.shape[1]))
            if ys.start >= ys.stop or xs.start >= xs.stop:
                continue
            sub = shape[ys.start - y: ys.stop - y, xs.start - x: xs.stop - x]
            img[ys, xs][sub] = tex[ys.start - y: ys.stop - y, xs.start - x: xs.stop - x][sub]
            m[ys, xs][sub] = oid
        px = post_x_world - x0
        xs = slice(max(0, px), min(width, px + post.shape[1]))
        if xs.start < xs.stop:
            img[:, xs] = post[top:top + height, xs.start - px: xs.stop - px]
            m[:, xs] = 0
        frames[t] = (img * 255).round().clip(0, 255).astype(np.uint8)
        masks[t] = m
    return SyntheticVideo(frames, masks, [1, 2])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
