"""TAP-Vid point-tracking metrics: Average Jaccard, δ_avg (< δ^x_avg) and occlusion accuracy.

The definition is ``compute_tapvid_metrics`` of the public google-deepmind/tapnet repository
(``tapnet/tapvid/evaluation_datasets.py``), which TAP-Net, TAPIR, BootsTAP, CoTracker3 and PIPs++ report.
Per video, over the *evaluation points* (see below), with pixel thresholds ``δ`` in ``(1, 2, 4, 8, 16)``
measured in a 256x256 frame (the benchmark's resolution; use :func:`to_benchmark_pixels`):

* ``within_δ = ||pred - gt||² < δ²`` (strict; a prediction without coordinates is never within);
* ``pts_within_δ = #(within_δ & gt visible) / #(gt visible)`` -- the predicted occlusion is **ignored**:
  a point predicted occluded still counts when its position is within δ;
* ``jaccard_δ = TP / (#gt visible + FP)`` with ``TP = within_δ & gt visible & pred visible`` and
  ``FP = pred visible & (gt occluded | not within_δ)`` -- a visible prediction of an occluded point and a
  visible prediction too far away are false positives; a GT-visible point predicted occluded is a false
  negative (it is in ``#gt visible`` but not in TP);
* ``occlusion_accuracy = #(pred occluded == gt occluded) / #evaluation points``;
* ``average_jaccard`` / ``average_pts_within_thresh`` = the mean over the five thresholds.

Evaluation points: query mode ``first`` (TAP-Vid "query first": every track is queried at its first
visible frame and the frames **after** the query frame are evaluated -- the frames before it are known to
be occluded and are left out); ``strided``: every frame except the query frame. Tracks that are never
visible have no query and are dropped (as ``sample_queries_first``).

Benchmark numbers are the plain mean of the per-video values (fractions here; papers print x100).
A video without a GT-visible evaluation point gives NaN for the position metrics (the reference divides
0/0); :func:`mean_over_videos` skips such NaNs and says how many videos it averaged.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from vlprop.errors import InputError

TAPVID_THRESHOLDS = (1, 2, 4, 8, 16)
TAPVID_SIZE = (256, 256)      # (W, H) of the frame the pixel thresholds refer to
QUERY_MODES = ("first", "strided")
METRIC_KEYS = ("average_jaccard", "average_pts_within_thresh", "occlusion_accuracy")


def query_first_frames(occluded) -> np.ndarray:
    """Query frame of every track in "query first" mode: its first visible frame, ``-1`` when never visible.

    ``occluded``: ``[N, T]`` bool. Returns ``[N]`` int64.
    """
    occ = np.asarray(occluded, dtype=bool)
    if occ.ndim != 2:
        raise InputError(f"occluded must have shape [N, T], got {occ.shape}")
    vis = ~occ
    first = np.argmax(vis, axis=1).astype(np.int64)
    first[~vis.any(axis=1)] = -1
    return first


def evaluation_points(query_frames, num_frames: int, query_mode: str = "first") -> np.ndarray:
    """``[N, T]`` bool: the (track, frame) pairs that are scored (module docstring).

    ``query_frames``: ``[N]`` frame index of each track's query (``-1``: no query, nothing is scored).
    """
    if query_mode not in QUERY_MODES:
        raise InputError(f"unknown TAP-Vid query mode {query_mode!r} (expected one of {QUERY_MODES})")
    q = np.asarray(query_frames, dtype=np.int64).reshape(-1)
    if (q >= num_frames).any():
        raise InputError(f"a query frame ({int(q.max())}) is outside the video's {num_frames} frames")
    t = np.arange(num_frames)[None, :]
    qq = q[:, None]
    ev = t > qq if query_mode == "first" else t != qq
    return ev & (qq >= 0)


def to_benchmark_pixels(xy, frame_size: tuple[int, int], size: tuple[int, int] = TAPVID_SIZE) -> np.ndarray:
    """Map vlprop pixel coordinates ``[..., 2]`` (centres at integers) of a ``(W, H)`` frame to raster
    coordinates of a ``size`` frame as TAP-Vid uses them (``normalised * 256``; pixel ``i`` spans
    ``[i, i + 1)``). Only differences enter the metrics, so the half-pixel offset does not matter; the
    scale per axis does."""
    xy = np.asarray(xy, dtype=np.float64)
    w, h = frame_size
    if w <= 0 or h <= 0:
        raise InputError(f"frame size must be positive, got {frame_size}")
    return (xy + 0.5) * np.array([size[0] / w, size[1] / h])


def tapvid_metrics(gt_xy, gt_occluded, pred_xy, pred_occluded, query_frames=None, *, query_mode: str = "first",
                   evaluate=None, thresholds: Sequence[float] = TAPVID_THRESHOLDS) -> dict[str, float]:
    """TAP-Vid metrics of one video (module docstring), as fractions in [0, 1].

    ``gt_xy`` / ``pred_xy``: ``[N, T, 2]`` (x, y) in benchmark pixels (256x256 frame); ``gt_occluded`` /
    ``pred_occluded``: ``[N, T]`` bool. ``query_frames``: ``[N]`` (default: the first visible frame of each
    track); ``evaluate``: optional ``[N, T]`` bool restricting the scored pairs further (e.g. annotated
    frames of a sparsely annotated video). NaN predicted coordinates are never within a threshold.
    Returns ``occlusion_accuracy``, ``pts_within_<δ>``, ``jaccard_<δ>``, ``average_jaccard``,
    ``average_pts_within_thresh`` and the counts ``num_points`` / ``num_visible``.
    """
    gt = np.asarray(gt_xy, dtype=np.float64)
    pred = np.asarray(pred_xy, dtype=np.float64)
    occ = np.asarray(gt_occluded, dtype=bool)
    pocc = np.asarray(pred_occluded, dtype=bool)
    if gt.ndim != 3 or gt.shape[2] != 2:
        raise InputError(f"ground-truth tracks must have shape [N, T, 2], got {gt.shape}")
    if pred.shape != gt.shape:
        raise InputError(f"predicted tracks have shape {pred.shape}, ground truth {gt.shape}")
    if occ.shape != gt.shape[:2] or pocc.shape != gt.shape[:2]:
        raise InputError(f"occlusion flags must have shape {gt.shape[:2]}, got {occ.shape} and {pocc.shape}")
    if query_frames is None:
        query_frames = query_first_frames(occ)
    ev = evaluation_points(query_frames, gt.shape[1], query_mode)
    if evaluate is not None:
        e = np.asarray(evaluate, dtype=bool)
        if e.shape != ev.shape:
            raise InputError(f"evaluate must have shape {ev.shape}, got {e.shape}")
        ev = ev & e
    visible = ~occ
    pvis = ~pocc
    n_eval = int(ev.sum())
    n_vis = int((visible & ev).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b > 0 else math.nan

    out: dict[str, float] = {"occlusion_accuracy": ratio(int(((pocc == occ) & ev).sum()), n_eval)}
    with np.errstate(invalid="ignore"):
        sq = np.sum((pred - gt) ** 2, axis=-1)
    jac, within_all = [], []
    for thr in thresholds:
        with np.errstate(invalid="ignore"):
            within = sq < float(thr) ** 2          # NaN -> False
        correct = within & visible
        frac = ratio(int((correct & ev).sum()), n_vis)
        tp = int((correct & pvis & ev).sum())
        fp = int((pvis & (~visible | ~within) & ev).sum())
        j = ratio(tp, n_vis + fp)
        out[f"pts_within_{thr:g}"] = frac
        out[f"jaccard_{thr:g}"] = j
        within_all.append(frac)
        jac.append(j)
    out["average_jaccard"] = float(np.mean(jac))
    out["average_pts_within_thresh"] = float(np.mean(within_all))
    out["num_points"] = n_eval
    out["num_visible"] = n_vis
    return out


def mean_over_videos(per_video: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Benchmark value of every metric: the mean over videos (NaN values skipped; ``num_videos`` is the
    number of videos; counts are summed)."""
    if not per_video:
        raise InputError("no video to average")
    keys = [k for k in per_video[0] if k not in ("num_points", "num_visible")]
    out: dict[str, float] = {}
    for k in keys:
        vals = np.array([float(v[k]) for v in per_video], dtype=np.float64)
        ok = np.isfinite(vals)
        out[k] = float(vals[ok].mean()) if ok.any() else math.nan
    out["num_points"] = int(sum(int(v.get("num_points", 0)) for v in per_video))
    out["num_visible"] = int(sum(int(v.get("num_visible", 0)) for v in per_video))
    out["num_videos"] = len(per_video)
    return out
