"""Pose overlays: keypoints (one colour per joint), skeleton edges and fading trails drawn onto frames.

Coordinates are original-frame pixels (x = column, pixel centres at integers, the package convention);
they are drawn with sub-pixel precision (OpenCV ``shift`` of 4 bits) and anti-aliasing. Invisible keypoints
(``visible`` False or non-finite coordinates) are not drawn, nor are edges or trail segments that touch one.

* :func:`joint_colors` -- ``K`` well separated RGB colours;
* :func:`draw_pose` -- one frame, no memory;
* :class:`PoseRenderer` -- frame after frame, remembering the last ``trail`` positions of every joint and
  drawing them as a polyline whose opacity fades with age;
* :func:`write_pose_video` -- frames + keypoints -> MP4/GIF via :class:`vlprop.io.render.VideoWriter`
  (written atomically).
"""
from __future__ import annotations

import collections
import colorsys
import math
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from ..errors import InputError
from .render import VideoWriter

_SHIFT = 4            # fractional bits of OpenCV drawing coordinates
_ONE = 1 << _SHIFT

Box = tuple[float, float, float, float]


def joint_colors(num: int, saturation: float = 0.9, value: float = 1.0) -> np.ndarray:
    """``[num, 3]`` uint8 RGB colours with hues spread evenly around the colour wheel."""
    if num < 0:
        raise InputError(f"number of colours must be >= 0, got {num}")
    cols = [colorsys.hsv_to_rgb((i / max(num, 1)) % 1.0, saturation, value) for i in range(num)]
    return (np.asarray(cols, dtype=np.float64).reshape(num, 3) * 255).round().astype(np.uint8)


def _check_frame(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"overlay frames must be RGB uint8 [H, W, 3], got {image.shape} {image.dtype}")
    return image


def _check_points(xy, visible, num: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise InputError(f"keypoints must have shape [K, 2] (x, y), got {xy.shape}")
    if num is not None and xy.shape[0] != num:
        raise InputError(f"{xy.shape[0]} keypoints given, the renderer was set up for {num}")
    vis = np.ones(len(xy), bool) if visible is None else np.asarray(visible, dtype=bool).reshape(-1)
    if vis.shape[0] != xy.shape[0]:
        raise InputError(f"visibility has {vis.shape[0]} entries for {xy.shape[0]} keypoints")
    # far-away points would overflow OpenCV's fixed-point coordinates; they are not drawable anyway
    return xy, vis & np.isfinite(xy).all(axis=1) & (np.abs(xy) < 1e6).all(axis=1)


def _fixed(p) -> tuple[int, int]:
    return int(round(p[0] * _ONE)), int(round(p[1] * _ONE))


def _sizes(image: np.ndarray, radius: float | None, thickness: int | None) -> tuple[float, int]:
    short = min(image.shape[:2])
    r = radius if radius is not None else max(2.0, short / 110)
    t = thickness if thickness is not None else max(1, int(round(short / 240)))
    return float(r), int(t)


def _color(c) -> tuple[int, int, int]:
    return int(c[0]), int(c[1]), int(c[2])


def _draw_edges(canvas: np.ndarray, xy: np.ndarray, vis: np.ndarray, skeleton: Sequence[tuple[int, int]],
                colors: np.ndarray, thickness: int) -> None:
    for a, b in skeleton:
        if vis[a] and vis[b]:
            # an edge takes the colour halfway between its joints
            col = (colors[a].astype(np.int32) + colors[b].astype(np.int32)) // 2
            cv2.line(canvas, _fixed(xy[a]), _fixed(xy[b]), _color(col), thickness, cv2.LINE_AA, _SHIFT)


def _draw_points(canvas: np.ndarray, xy: np.ndarray, vis: np.ndarray, colors: np.ndarray, radius: float,
                 outline: bool) -> None:
    r = max(1, int(round(radius * _ONE)))
    for k in np.flatnonzero(vis):
        if outline:  # a dark rim keeps light joints visible on light backgrounds
            cv2.circle(canvas, _fixed(xy[k]), r + _ONE, (0, 0, 0), -1, cv2.LINE_AA, _SHIFT)
        cv2.circle(canvas, _fixed(xy[k]), r, _color(colors[k]), -1, cv2.LINE_AA, _SHIFT)


def _draw_box(canvas: np.ndarray, box: Box, thickness: int, color=(255, 255, 255)) -> None:
    x, y, w, h = (float(v) for v in box)
    if not all(map(math.isfinite, (x, y, w, h))):
        return
    # the box covers pixel centres x .. x + w - 1: draw its outline through the outer pixel centres
    p0, p1 = (x, y), (x + w - 1, y + h - 1)
    cv2.rectangle(canvas, _fixed(p0), _fixed(p1), color, thickness, cv2.LINE_AA, _SHIFT)


def draw_pose(image: np.ndarray, xy, visible=None, *, skeleton: Sequence[tuple[int, int]] = (),
              colors: np.ndarray | None = None, radius: float | None = None, thickness: int | None = None,
              box: Box | None = None, outline: bool = True) -> np.ndarray:
    """Draw keypoints ``xy [K, 2]`` (+ ``skeleton`` edges, optional tracker ``box``) on a copy of ``image``.

    ``image``: RGB uint8 ``[H, W, 3]``; ``visible``: ``[K]`` bool (default: finite coordinates);
    ``colors``: ``[K, 3]`` RGB (default :func:`joint_colors`); ``radius`` in pixels and line ``thickness``
    default to sizes that scale with the frame. Returns a new ``[H, W, 3]`` uint8 image.
    """
    image = _check_frame(image)
    xy, vis = _check_points(xy, visible)
    colors = joint_colors(len(xy)) if colors is None else np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    if len(colors) < len(xy):
        raise InputError(f"{len(colors)} colours for {len(xy)} keypoints")
    _check_skeleton(skeleton, len(xy))
    r, t = _sizes(image, radius, thickness)
    out = image.copy()
    if box is not None:
        _draw_box(out, box, t)
    _draw_edges(out, xy, vis, skeleton, colors, t)
    _draw_points(out, xy, vis, colors, r, outline)
    return out


def _check_skeleton(skeleton: Sequence[tuple[int, int]], num: int) -> None:
    for e in skeleton:
        if len(e) != 2 or not all(0 <= int(i) < num for i in e):
            raise InputError(f"skeleton edge {tuple(e)} refers to a keypoint outside 0..{num - 1}")


class PoseRenderer:
    """Draw a pose sequence frame by frame with fading trails of the last ``trail`` positions.

    ``render(image, xy, visible, box=None)`` returns the overlay of one frame and remembers the positions.
    A trail segment between the positions ``a`` and ``a + 1`` frames ago is blended with opacity
    ``1 - a / (trail + 1)`` (the newest segment is the most opaque); segments with an invisible end are
    skipped. ``trail=0`` draws no trails.
    """

    def __init__(self, num_keypoints: int, skeleton: Sequence[tuple[int, int]] = (), colors: np.ndarray | None = None,
                 trail: int = 8, radius: float | None = None, thickness: int | None = None, draw_box: bool = True,
                 outline: bool = True) -> None:
        if num_keypoints < 1:
            raise InputError(f"a pose needs at least one keypoint, got {num_keypoints}")
        if trail < 0:
            raise InputError(f"trail length must be >= 0, got {trail}")
        _check_skeleton(skeleton, num_keypoints)
        self.num_keypoints = int(num_keypoints)
        self.skeleton = [(int(a), int(b)) for a, b in skeleton]
        self.colors = joint_colors(num_keypoints) if colors is None else \
            np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
        if len(self.colors) < num_keypoints:
            raise InputError(f"{len(self.colors)} colours for {num_keypoints} keypoints")
        self.trail = int(trail)
        self.radius = radius
        self.thickness = thickness
        self.draw_box = draw_box
        self.outline = outline
        self._history: collections.deque = collections.deque(maxlen=self.trail + 1)

    def reset(self) -> None:
        """Forget the trails (start of a new video)."""
        self._history.clear()

    def render(self, image: np.ndarray, xy, visible=None, box: Box | None = None) -> np.ndarray:
        image = _check_frame(image)
        xy, vis = _check_points(xy, visible, self.num_keypoints)
        self._history.append((xy, vis))
        r, t = _sizes(image, self.radius, self.thickness)
        out = image.copy()
        if self.draw_box and box is not None:
            _draw_box(out, box, t)
        hist = list(self._history)  # oldest first, current last
        for age in range(len(hist) - 1, 0, -1):   # oldest segments first, newer ones drawn over them
            (p_old, v_old), (p_new, v_new) = hist[-age - 1], hist[-age]
            both = v_old & v_new
            if not both.any():
                continue
            layer = out.copy()
            for k in np.flatnonzero(both):
                cv2.line(layer, _fixed(p_old[k]), _fixed(p_new[k]), _color(self.colors[k]), t, cv2.LINE_AA, _SHIFT)
            alpha = 1.0 - (age - 1) / (self.trail + 1)
            cv2.addWeighted(layer, alpha, out, 1.0 - alpha, 0.0, dst=out)
        _draw_edges(out, xy, vis, self.skeleton, self.colors, t)
        _draw_points(out, xy, vis, self.colors, r, self.outline)
        return out


def write_pose_video(path: str | Path, frames: Iterable[np.ndarray], poses: Iterable, *, fps: float = 24.0,
                     skeleton: Sequence[tuple[int, int]] = (), trail: int = 8, boxes: Iterable | None = None,
                     **renderer_kwargs) -> Path:
    """Write an overlay video (MP4/GIF by extension) of ``frames`` with ``poses``.

    ``poses``: per frame ``(xy [K, 2], visible [K])`` (or a :class:`~vlprop.io.keypoints.KeypointSequence`
    aligned with the frames); ``boxes``: optional per-frame tracker boxes (or None entries). The file
    appears only when complete (:class:`VideoWriter`).
    """
    from .keypoints import KeypointSequence

    if isinstance(poses, KeypointSequence):
        if not skeleton:
            skeleton = poses.skeleton
        poses = list(zip(poses.xy, poses.visible))
    renderer = None
    box_iter = iter(boxes) if boxes is not None else None
    path = Path(path)
    n = 0
    with VideoWriter(path, fps=fps) as writer:
        for image, pose in zip(frames, poses):
            xy, vis = pose
            if renderer is None:
                renderer = PoseRenderer(len(np.asarray(xy)), skeleton=skeleton, trail=trail, **renderer_kwargs)
            box = next(box_iter, None) if box_iter is not None else None
            writer.write(renderer.render(image, xy, vis, box))
            n += 1
        if n == 0:
            raise InputError(f"no frames to write to {path}")
    return path
