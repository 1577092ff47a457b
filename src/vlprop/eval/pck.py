"""PCK (percentage of correct keypoints) and keypoint coverage, as in the CRW / Waldmann scripts.

Reference definition (CRW ``eval_pck.py`` = Waldmann ``keypoint_eval_utils.py``), ``visibility="pred"``:

* a joint counts on a frame when it is **predicted** visible (the reference reads visibility from
  the predictions: ``pred_x >= 0``);
* per frame, the reference size is ``0.6 * ||max_j gt_j - min_j gt_j||`` over the GT positions of
  those joints (diagonal of the GT keypoint box);
* ``d = ||pred - gt|| / ref``; frame 0 (the given frame) is excluded; all videos are pooled per joint;
* ``PCK@a = mean over joints of 100 * #{d <= a} / #{scored samples}`` (mean of per-joint PCKs, ``<=``).

``visibility="gt"`` is the stricter variant: a joint counts when it is visible in the GT (and, if
``frame_size`` is given, inside the frame); the reference size uses those GT joints; a GT-visible
joint without a prediction is a miss (distance ``inf``). Predictions of GT-invisible joints are
ignored in both variants (when no GT visibility is given every GT joint is visible, which is
the reference behaviour on JHMDB).

Degenerate cases follow numpy arithmetic, like the reference: one counted joint on a frame gives
``ref = 0`` so ``d = inf`` (miss) or ``0/0 = NaN`` (not scored). A joint that is never scored is
left out of the mean over joints (the reference would return NaN).

Layouts: per video ``xy [T, K, 2]`` pixels and visibility ``[T, K]`` bool. For arrays in the
reference layout ``[2, K, T]`` (negative x = invisible) use
:meth:`vlprop.io.keypoints.KeypointSequence.from_reference_array`.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from vlprop.errors import InputError
from vlprop.io.files import atomic_write_text

PCK_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)
VISIBILITY_MODES = ("pred", "gt")


# ------------------------------------------------------------------ primitives


def reference_sizes(gt_xy, mask) -> np.ndarray:
    """``0.6 * diagonal`` of the GT keypoint box over the joints in ``mask``, per frame.

    ``gt_xy``: ``[T, K, 2]``; ``mask``: ``[T, K]`` bool. Returns ``[T]`` (NaN when no joint).
    """
    gt = np.asarray(gt_xy, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    masked = np.where(m[..., None], gt, np.nan)
    out = np.full(gt.shape[0], np.nan)
    has = m.any(axis=1)
    if has.any():
        hi = np.nanmax(masked[has], axis=1)
        lo = np.nanmin(masked[has], axis=1)
        out[has] = 0.6 * np.linalg.norm(hi - lo, axis=1)
    return out


def _check_video(gt, pred, pv, gv, i: int) -> tuple[np.ndarray, ...]:
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    if gt.ndim != 3 or gt.shape[2] != 2:
        raise InputError(f"video {i}: ground truth must have shape [T, K, 2], got {gt.shape}")
    if pred.shape != gt.shape:
        raise InputError(f"video {i}: predictions have shape {pred.shape}, ground truth {gt.shape}")
    if pv is None:
        # reference convention: a prediction with a negative x coordinate is "not predicted"
        pv = np.isfinite(pred).all(axis=2) & (pred[..., 0] >= 0)
    pv = np.asarray(pv, dtype=bool) & np.isfinite(pred).all(axis=2)
    gv = np.ones(gt.shape[:2], bool) if gv is None else np.asarray(gv, dtype=bool)
    if pv.shape != gt.shape[:2] or gv.shape != gt.shape[:2]:
        raise InputError(f"video {i}: visibility must have shape {gt.shape[:2]}")
    return gt, pred, pv, gv


def normalised_distances(gt_xy, pred_xy, pred_visible=None, gt_visible=None, *, visibility: str = "pred",
                         skip_first: bool = True, frame_size: tuple[int, int] | None = None) -> np.ndarray:
    """Distances ``||pred - gt|| / ref`` of one video, ``[K, T']`` (``T' = T - 1`` with ``skip_first``).

    NaN marks samples that are not scored; ``inf`` marks misses (see module docstring).
    ``pred_visible`` defaults to ``x >= 0`` of the predictions (reference); ``gt_visible`` to all.
    ``frame_size`` ``(W, H)``: in ``"gt"`` mode, GT joints outside the frame are not scored.
    """
    if visibility not in VISIBILITY_MODES:
        raise InputError(f"unknown PCK visibility mode {visibility!r} (expected one of {VISIBILITY_MODES})")
    gt, pred, pv, gv = _check_video(gt_xy, pred_xy, pred_visible, gt_visible, 0)
    gv = gv & np.isfinite(gt).all(axis=2)
    if visibility == "pred":
        mask = pv & gv
    else:
        mask = gv
        if frame_size is not None:
            w, h = frame_size
            mask = mask & (gt[..., 0] >= 0) & (gt[..., 0] < w) & (gt[..., 1] >= 0) & (gt[..., 1] < h)
    ref = reference_sizes(gt, mask)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.linalg.norm(pred - gt, axis=2) / ref[:, None]
    d = np.where(mask & ~pv, np.inf, d)       # GT mode: a missing prediction is a miss
    d = np.where(mask, d, np.nan)
    d = d.T                                    # [K, T]
    return d[:, 1:] if skip_first else d


def pck_from_distances(distances, thresholds=PCK_THRESHOLDS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCK from pooled distances ``[K, N]`` (NaN = not scored).

    Returns ``(pck [n_thr], per_joint [K, n_thr], counts [K])``: per-joint
    ``100 * #{d <= a} / #{non-NaN}`` and their mean over joints with at least one sample.
    """
    d = np.asarray(distances, dtype=np.float64)
    thr = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    counts = np.count_nonzero(~np.isnan(d), axis=1)
    with np.errstate(invalid="ignore"):
        correct = np.count_nonzero(d[:, :, None] <= thr[None, None, :], axis=1)   # [K, n]
    per_joint = np.full((d.shape[0], len(thr)), np.nan)
    ok = counts > 0
    per_joint[ok] = 100.0 * correct[ok] / counts[ok, None]
    pck = per_joint[ok].mean(axis=0) if ok.any() else np.full(len(thr), np.nan)
    return pck, per_joint, counts


def keypoint_coverage(gt_xy: Sequence, pred_xy: Sequence, pred_visible: Sequence | None = None,
                      gt_visible: Sequence | None = None,
                      frame_size: tuple[int, int] | Sequence[tuple[int, int]] = (320, 240),
                      weighted: bool = True) -> tuple[float, float]:
    """Coverage ``(c1, c2)`` in percent (Waldmann ``compute_overall_coverage``).

    Per frame ``min(#predicted joints, #GT joints) / #GT joints`` where a joint is present when
    visible with both coordinates ``> 0``; averaged over the video's frames (frame 0 included),
    then over videos weighted by length (``weighted``) or equally. ``c2`` only counts joints whose
    GT lies inside the ``frame_size`` (W, H) frame at t = 0. Frames without GT joints are skipped
    (the reference would produce NaN).
    """
    n = len(gt_xy)
    if len(pred_xy) != n:
        raise InputError(f"{n} ground-truth videos but {len(pred_xy)} predicted videos")
    sizes = [frame_size] * n if isinstance(frame_size, tuple) else list(frame_size)
    if len(sizes) != n:
        raise InputError(f"{len(sizes)} frame sizes for {n} videos")
    vals, weights = [], []
    for i in range(n):
        gt, pred, pv, gv = _check_video(gt_xy[i], pred_xy[i],
                                        None if pred_visible is None else pred_visible[i],
                                        None if gt_visible is None else gt_visible[i], i)
        with np.errstate(invalid="ignore"):
            p_on = pv & (pred > 0).all(axis=2)
            g_on = gv & (gt > 0).all(axis=2)
        w, h = sizes[i]
        g0 = gt[0]
        inside = (g0[:, 0] >= 0) & (g0[:, 0] < w) & (g0[:, 1] >= 0) & (g0[:, 1] < h)
        row = []
        for sel in (np.ones(gt.shape[1], bool), inside):
            pc, gc = p_on[:, sel].sum(1), g_on[:, sel].sum(1)
            frames = gc > 0
            row.append(100.0 * np.mean(np.minimum(pc, gc)[frames] / gc[frames]) if frames.any() else math.nan)
        vals.append(row)
        weights.append(gt.shape[0] if weighted else 1)
    vals, weights = np.asarray(vals, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    out = []
    for c in range(2):
        ok = ~np.isnan(vals[:, c])
        out.append(float((vals[ok, c] * weights[ok]).sum() / weights[ok].sum()) if ok.any() else math.nan)
    return out[0], out[1]


# ------------------------------------------------------------------ BADJA rule

#: BADJA: a keypoint is correct within ``BADJA_ALPHA * sqrt(area of the animal's GT mask)``.
BADJA_ALPHA = 0.2
#: (W, H) the PIPs BADJA evaluation resizes frames, masks and keypoints to before measuring (its published
#: PIPs 64.4 / RAFT 45.6 / DINO numbers, and FGVC's 69.7, use it); ``None`` = the frames' own pixels.
BADJA_EVAL_SIZE = (512, 320)


def resize_nearest(mask, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of ``[H, W]`` to ``size`` ``(W', H')``: output pixel ``i`` takes input pixel
    ``floor(i * H / H')`` (``F.interpolate(mode="nearest")``, as the PIPs evaluation resizes the masks)."""
    m = np.asarray(mask)
    h, w = m.shape[:2]
    ow, oh = size
    rows = np.minimum((np.arange(oh) * (h / oh)).astype(np.int64), h - 1)
    cols = np.minimum((np.arange(ow) * (w / ow)).astype(np.int64), w - 1)
    return m[rows][:, cols]


def mask_area(mask, size: tuple[int, int] | None = None) -> float:
    """Foreground pixels (``mask > 0``) of ``[H, W]`` after a nearest resize to ``size`` ``(W, H)`` if given."""
    m = np.asarray(mask) > 0
    if m.ndim != 2:
        raise InputError(f"a mask must be [H, W], got shape {m.shape}")
    if size is not None and (m.shape[1], m.shape[0]) != tuple(size):
        m = resize_nearest(m, size)
    return float(np.count_nonzero(m))


def badja_thresholds(areas, alpha: float = BADJA_ALPHA) -> np.ndarray:
    """``alpha * sqrt(area)`` per frame (``areas`` in squared evaluation pixels)."""
    a = np.asarray(areas, dtype=np.float64)
    if (a < 0).any():
        raise InputError("mask areas must be >= 0")
    return alpha * np.sqrt(a)


def badja_correct(gt_xy, pred_xy, gt_visible, areas, pred_visible=None, *, scale=(1.0, 1.0),
                  alpha: float = BADJA_ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """BADJA correctness of one video's scored frames: ``(correct [T, K] bool, scored [T, K] bool)``.

    ``gt_xy`` / ``pred_xy``: ``[T, K, 2]`` frame pixels; ``gt_visible``: ``[T, K]``; ``areas``: ``[T]`` mask
    areas in evaluation pixels; ``scale``: evaluation pixels per frame pixel ``(sx, sy)`` (PIPs: 512/W,
    320/H). A GT-visible joint is scored; it is correct when ``||(pred - gt) * scale|| < alpha *
    sqrt(area)`` (strict, as PIPs); a joint predicted invisible (``pred_visible`` False or NaN coordinates)
    is a miss.
    """
    gt = np.asarray(gt_xy, dtype=np.float64)
    pred = np.asarray(pred_xy, dtype=np.float64)
    gv = np.asarray(gt_visible, dtype=bool) & np.isfinite(gt).all(axis=2)
    if pred.shape != gt.shape or gt.ndim != 3 or gt.shape[2] != 2:
        raise InputError(f"BADJA: ground truth {gt.shape} and predictions {pred.shape} must both be [T, K, 2]")
    thr = badja_thresholds(areas, alpha)
    if thr.shape != (gt.shape[0],):
        raise InputError(f"BADJA: {thr.shape[0] if thr.ndim else 1} mask areas for {gt.shape[0]} frames")
    pv = np.isfinite(pred).all(axis=2)
    if pred_visible is not None:
        pv &= np.asarray(pred_visible, dtype=bool)
    with np.errstate(invalid="ignore"):
        d = np.linalg.norm((pred - gt) * np.asarray(scale, dtype=np.float64), axis=2)
        correct = gv & pv & (d < thr[:, None])
    return correct, gv


# ----------------------------------------------------------------- evaluation


@dataclass
class PCKResult:
    """PCK over a set of videos: ``pck[i]`` at ``thresholds[i]`` (percent), per joint and counts."""

    thresholds: tuple[float, ...]
    pck: np.ndarray                  # [n_thr]
    per_joint: np.ndarray            # [K, n_thr], NaN for joints never scored
    counts: np.ndarray               # [K] scored samples per joint
    joint_names: list[str]
    visibility: str
    num_videos: int
    coverage: tuple[float, float] | None = None
    extra: dict = field(default_factory=dict)

    def at(self, threshold: float) -> float:
        for t, v in zip(self.thresholds, self.pck):
            if abs(t - threshold) < 1e-12:
                return float(v)
        raise KeyError(f"PCK was not computed at threshold {threshold} (have {self.thresholds})")

    def as_dict(self) -> dict:
        def num(v):
            return None if v is None or not math.isfinite(v) else float(v)

        d = {
            "visibility": self.visibility,
            "num_videos": self.num_videos,
            "thresholds": [float(t) for t in self.thresholds],
            "pck": {f"{t:g}": num(v) for t, v in zip(self.thresholds, self.pck)},
            "per_joint": {name: {f"{t:g}": num(v) for t, v in zip(self.thresholds, row)}
                          for name, row in zip(self.joint_names, self.per_joint)},
            "counts": {name: int(c) for name, c in zip(self.joint_names, self.counts)},
        }
        if self.coverage is not None:
            d["coverage"] = {"c1": num(self.coverage[0]), "c2": num(self.coverage[1])}
        d.update(self.extra)
        return d


def evaluate_pck(gt_xy: Sequence, pred_xy: Sequence, pred_visible: Sequence | None = None,
                 gt_visible: Sequence | None = None, *, thresholds: Sequence[float] = PCK_THRESHOLDS,
                 visibility: str = "pred", skip_first: bool = True, joint_names: Sequence[str] | None = None,
                 frame_size: tuple[int, int] | Sequence[tuple[int, int]] | None = None,
                 with_coverage: bool = False) -> PCKResult:
    """PCK over videos: lists of ``[T_v, K, 2]`` GT / predictions (+ optional ``[T_v, K]`` visibility).

    ``frame_size`` (one ``(W, H)`` or one per video) restricts GT joints to the frame in ``"gt"``
    mode and is the coverage frame (default 320x240, JHMDB) when ``with_coverage``.
    """
    n = len(gt_xy)
    if len(pred_xy) != n:
        raise InputError(f"{n} ground-truth videos but {len(pred_xy)} predicted videos")
    if n == 0:
        raise InputError("PCK needs at least one video")
    sizes = (None if frame_size is None else
             [frame_size] * n if isinstance(frame_size, tuple) else list(frame_size))
    dists = []
    K = None
    for i in range(n):
        d = normalised_distances(gt_xy[i], pred_xy[i], None if pred_visible is None else pred_visible[i],
                                 None if gt_visible is None else gt_visible[i], visibility=visibility,
                                 skip_first=skip_first, frame_size=None if sizes is None else sizes[i])
        if K is not None and d.shape[0] != K:
            raise InputError(f"video {i} has {d.shape[0]} joints, earlier videos {K}")
        K = d.shape[0]
        dists.append(d)
    pooled = np.concatenate(dists, axis=1)
    thr = tuple(float(t) for t in thresholds)
    pck, per_joint, counts = pck_from_distances(pooled, thr)
    names = list(joint_names) if joint_names is not None else [f"joint_{k}" for k in range(K)]
    if len(names) != K:
        raise InputError(f"{len(names)} joint names for {K} joints")
    cov = None
    if with_coverage:
        cov = keypoint_coverage(gt_xy, pred_xy, pred_visible, gt_visible,
                                frame_size=(320, 240) if sizes is None else sizes)
    return PCKResult(thr, pck, per_joint, counts, names, visibility, n, cov)


def evaluate_pck_sequences(gts: Sequence, preds: Sequence, **kwargs) -> PCKResult:
    """PCK for :class:`~vlprop.io.keypoints.KeypointSequence` pairs, aligned on the GT frames.

    Only GT frames are scored (sparse annotations such as BADJA); a GT frame missing from the
    prediction has no predicted keypoints. GT visibility comes from the GT sequence; names from
    the first GT. Other keyword arguments as :func:`evaluate_pck`.
    """
    if len(gts) != len(preds):
        raise InputError(f"{len(gts)} ground-truth videos but {len(preds)} predicted videos")
    gxy, pxy, pv, gv = [], [], [], []
    for i, (g, p) in enumerate(zip(gts, preds)):
        if p.names != g.names:
            raise InputError(f"video {i}: predicted keypoint names {p.names} differ from the GT names {g.names}")
        xy = np.full(g.xy.shape, np.nan)
        vis = np.zeros(g.visible.shape, bool)
        pos = {f: t for t, f in enumerate(p.frames)}
        for t, f in enumerate(g.frames):
            if f in pos:
                xy[t], vis[t] = p.xy[pos[f]], p.visible[pos[f]]
        gxy.append(g.xy)
        gv.append(g.visible)
        pxy.append(xy)
        pv.append(vis)
    kwargs.setdefault("joint_names", gts[0].names if gts else None)
    return evaluate_pck(gxy, pxy, pv, gv, **kwargs)


# -------------------------------------------------------------------- writers


def _as_mapping(results) -> Mapping[str, PCKResult]:
    if isinstance(results, PCKResult):
        return {"result": results}
    return results


def _cell(v: float) -> str:
    return "" if v is None or not math.isfinite(v) else f"{v:.2f}"


def _columns(results: Mapping[str, PCKResult]) -> tuple[list[float], bool]:
    thr = []
    for r in results.values():
        for t in r.thresholds:
            if t not in thr:
                thr.append(t)
    return thr, any(r.coverage is not None for r in results.values())


def _row(r: PCKResult, thr: list[float], cov: bool) -> list[str]:
    vals = [_cell(r.at(t)) if t in r.thresholds else "" for t in thr]
    if cov:
        vals += [_cell(r.coverage[0]), _cell(r.coverage[1])] if r.coverage is not None else ["", ""]
    return vals


def format_pck_csv(results: PCKResult | Mapping[str, PCKResult]) -> str:
    results = _as_mapping(results)
    thr, cov = _columns(results)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "visibility", "videos"] + [f"PCK@{t:g}" for t in thr] + (["c1", "c2"] if cov else []))
    for name, r in results.items():
        w.writerow([name, r.visibility, r.num_videos] + _row(r, thr, cov))
    return buf.getvalue()


def format_pck_markdown(results: PCKResult | Mapping[str, PCKResult], per_joint: bool = False) -> str:
    """Markdown table (one row per method); ``per_joint`` appends a per-joint table per method."""
    results = _as_mapping(results)
    thr, cov = _columns(results)
    head = ["method", "visibility"] + [f"PCK@{t:g}" for t in thr] + (["c1", "c2"] if cov else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for name, r in results.items():
        lines.append("| " + " | ".join([name, r.visibility] + _row(r, thr, cov)) + " |")
    if per_joint:
        for name, r in results.items():
            lines += ["", f"**{name}** per joint", "",
                      "| joint | n | " + " | ".join(f"PCK@{t:g}" for t in r.thresholds) + " |",
                      "|---|---:|" + "|".join(["---:"] * len(r.thresholds)) + "|"]
            for j, row, c in zip(r.joint_names, r.per_joint, r.counts):
                lines.append(f"| {j} | {int(c)} | " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def format_pck_json(results: PCKResult | Mapping[str, PCKResult]) -> str:
    return json.dumps({k: r.as_dict() for k, r in _as_mapping(results).items()}, indent=1) + "\n"


def write_pck_csv(path: str | os.PathLike, results: PCKResult | Mapping[str, PCKResult]) -> None:
    """One row per method: method, visibility, videos, PCK@..., (c1, c2); written atomically."""
    atomic_write_text(path, format_pck_csv(results))


def write_pck_markdown(path: str | os.PathLike, results: PCKResult | Mapping[str, PCKResult],
                       per_joint: bool = False) -> None:
    atomic_write_text(path, format_pck_markdown(results, per_joint))


def write_pck_json(path: str | os.PathLike, results: PCKResult | Mapping[str, PCKResult]) -> None:
    atomic_write_text(path, format_pck_json(results))
