"""Synthetic videos with known motion (moving textured shapes) and the ``vlprop demo`` job.

The generator gives exact ground-truth masks for every frame, so the demo can report how well the
propagated masks match, and tests can use the same videos with known answers.
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


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
