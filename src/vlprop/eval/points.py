"""``vlprop eval points``: keypoint propagation scored as point tracking (TAP-Vid metrics), next to PCK.

Every ground-truth track is a "keypoint" queried at its **first visible annotated frame** (TAP-Vid
"query first"); it is propagated from there with a :class:`~vlprop.tasks.pose.KeypointPropagator`, and the
propagator's "invisible" output is the occlusion prediction. Tracks sharing a query frame are propagated
together; each distinct query frame is one propagation pass over the rest of the video (features are
recomputed per pass -- videos whose points start on many different frames cost one pass per such frame).
Positions for δ_avg are the decoded positions even where a point is reported invisible
(:attr:`KeypointFrame.estimate`), because the reference scores positions regardless of the occlusion flag.

Scores (:mod:`vlprop.eval.tapvid`): Average Jaccard, δ_avg and occlusion accuracy per video in the 256x256
benchmark frame (coordinates scaled per axis), on the annotated frames after each track's query frame, and
their mean over videos. Keypoint datasets also get their own PCK from the same predictions (JHMDB/folder:
the CRW/Waldmann ``reference`` PCK@0.1/0.2; BADJA: the BADJA protocol, see :func:`vlprop.eval.pose.score_badja`).

Datasets: ``tapvid`` (a TAP-Vid pickle or a folder of them, :mod:`vlprop.io.tapvid`; frames are resized to
``resize`` = 256x256 before propagation by default, as the benchmark feeds models), ``jhmdb``, ``badja``,
``folder`` (the layouts of :mod:`vlprop.eval.pose`, propagated at their own resolution).

Output files (atomic): ``points.csv`` / ``points.md`` / ``points.json`` (per video and overall, with the
protocol), ``protocol.json`` and ``predictions/<video>.npz`` (``frames``, ``xy`` ``[N, F, 2]`` frame
pixels, ``occluded`` ``[N, F]``, ``query`` ``[N]``).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import InputError
from ..io.files import atomic_path, atomic_write_text, prepare_output_dir
from ..io.keypoints import KeypointSequence
from ..io.tapvid import read_tapvid
from ..io.video import ArraySource, FrameSource
from .pck import BADJA_EVAL_SIZE
from .pose import FileListSource, PoseVideo, _versions, badja_areas, read_pose_dataset, score_badja, score_pose
from .tapvid import TAPVID_SIZE, mean_over_videos, query_first_frames, tapvid_metrics, to_benchmark_pixels

POINT_DATASETS = ("tapvid", "jhmdb", "badja", "folder")
#: columns of the tables: (key in the metric dicts, header)
COLUMNS = (("average_jaccard", "AJ"), ("average_pts_within_thresh", "δ_avg"), ("occlusion_accuracy", "OA"))


# ----------------------------------------------------------------------------- data


class _Window(Sequence):
    """Frames ``start .. end-1`` of an indexable frame sequence, without copying or decoding them."""

    def __init__(self, frames: Sequence, start: int, end: int):
        self.frames, self.start, self.end = frames, start, end

    def __len__(self) -> int:
        return self.end - self.start

    def __getitem__(self, i):  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.frames[self.start + i]


class _Resized(Sequence):
    """Frames resized to ``size`` ``(W, H)`` on access (bilinear)."""

    def __init__(self, frames: Sequence, size: tuple[int, int]):
        self.frames, self.size = frames, size

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i):  # type: ignore[override]
        from PIL import Image

        img = np.asarray(self.frames[i])
        if (img.shape[1], img.shape[0]) == tuple(self.size):
            return img
        return np.asarray(Image.fromarray(img).resize(tuple(self.size), Image.BILINEAR))


@dataclass
class PointVideo:
    """Ground-truth point tracks of one video.

    ``frames``: the video's frames (image paths, or an indexable sequence of ``[H, W, 3]`` uint8 images) of
    size ``frame_size`` ``(W, H)``; ``annotated``: ``F`` sorted frame indices with ground truth;
    ``xy``: ``[N, F, 2]`` frame pixels (centres at integers, NaN allowed where occluded); ``occluded``:
    ``[N, F]`` bool; ``pose``: the keypoint-dataset video (for its PCK), if any.
    """

    name: str
    frames: Sequence
    frame_size: tuple[int, int]
    annotated: list[int]
    xy: np.ndarray
    occluded: np.ndarray
    names: list[str]
    pose: PoseVideo | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        N, F = self.occluded.shape
        if self.xy.shape != (N, F, 2) or len(self.annotated) != F or len(self.names) != N:
            raise InputError(f"video {self.name}: tracks {self.xy.shape}, occlusion {self.occluded.shape}, "
                             f"{len(self.annotated)} annotated frames and {len(self.names)} names disagree")
        if list(self.annotated) != sorted(set(self.annotated)):
            raise InputError(f"video {self.name}: annotated frame indices must be increasing")

    def source(self, start: int, end: int | None = None) -> FrameSource:
        """Frames ``start .. end - 1`` as a streaming frame source."""
        end = len(self.frames) if end is None else end
        if len(self.frames) and isinstance(self.frames[0], (str, Path)):
            return FileListSource(list(self.frames)[start:end])
        return ArraySource(_Window(self.frames, start, end))

    def truncated(self, max_frames: int | None) -> "PointVideo":
        """The first ``max_frames`` frames (tracks cut to the annotated frames among them)."""
        if max_frames is None or max_frames >= len(self.frames):
            return self
        keep = [i for i, f in enumerate(self.annotated) if f < max_frames]
        return PointVideo(self.name, _Window(self.frames, 0, max_frames), self.frame_size,
                          [self.annotated[i] for i in keep], self.xy[:, keep], self.occluded[:, keep], self.names,
                          self.pose, self.info)


def tapvid_point_videos(root: str | os.PathLike, names: Sequence[str] | None = None,
                        resize: tuple[int, int] | None = TAPVID_SIZE) -> list[PointVideo]:
    """TAP-Vid videos as point tracks; frames resized to ``resize`` (default 256x256, the benchmark's input;
    ``None`` keeps the stored frames), points in pixels of that size."""
    out = []
    for v in read_tapvid(root, names):
        frames: Sequence = v.frames
        size = v.frame_size()
        if resize is not None and tuple(resize) != size:
            frames, size = _Resized(frames, resize), (int(resize[0]), int(resize[1]))
        xy = v.pixel_points(size)
        occ = v.occluded.copy()
        out.append(PointVideo(v.name, frames, size, list(range(v.num_frames)), xy, occ,
                              [f"point_{i}" for i in range(v.num_points)], info={"stored_size": list(v.frame_size())}))
    return out


def pose_point_videos(kind: str, root: str | os.PathLike, split: str | os.PathLike | None = None,
                      split_num: int = 1) -> list[PointVideo]:
    """Videos of a keypoint dataset (``jhmdb``, ``badja``, ``folder``) as point tracks (one per joint)."""
    out = []
    for v in read_pose_dataset(kind, root, split, split_num):
        g = v.gt
        order = sorted(range(g.num_frames), key=lambda t: g.frames[t])
        xy = np.transpose(g.xy[order], (1, 0, 2)).copy()
        occ = ~np.transpose(g.visible[order])
        out.append(PointVideo(v.name, list(v.frames), tuple(v.frame_size), [int(g.frames[t]) for t in order], xy, occ,
                              list(g.names), pose=v))
    return out


# ----------------------------------------------------------------------------- propagation


@dataclass
class PointPrediction:
    """Predictions on a video's annotated frames: ``xy`` ``[N, F, 2]`` frame pixels (the decoded position,
    also where occluded; NaN where nothing was predicted), ``occluded`` ``[N, F]``, ``query`` ``[N]``
    (index into the annotated frames, -1 = never visible, not propagated), ``passes`` propagation passes."""

    xy: np.ndarray
    occluded: np.ndarray
    query: np.ndarray
    passes: int = 0


def propagate_points(video: PointVideo, propagator) -> PointPrediction:
    """Propagate every track from its first visible annotated frame (one pass per distinct query frame)."""
    N, F = video.occluded.shape
    query = query_first_frames(video.occluded)
    xy = np.full((N, F, 2), np.nan)
    occ = np.ones((N, F), bool)
    pos = {f: i for i, f in enumerate(video.annotated)}
    passes = 0
    for q in sorted(set(int(x) for x in query if x >= 0)):
        group = np.flatnonzero(query == q)
        start = video.annotated[q]
        xy0 = video.xy[group, q]
        names = [video.names[i] for i in group]
        for r in propagator.run(video.source(start), (xy0, np.ones(len(group), bool)), start=0, names=names,
                                keep_images=False):
            i = pos.get(start + r.index)
            if i is None:
                continue
            est = r.estimate if r.estimate is not None else r.xy
            xy[group, i] = est
            occ[group, i] = ~r.visible
        passes += 1
    return PointPrediction(xy, occ, query, passes)


# ----------------------------------------------------------------------------- scoring


def score_points(video: PointVideo, pred: PointPrediction) -> dict[str, float]:
    """TAP-Vid metrics of one video (fractions), in the 256x256 benchmark frame, query-first."""
    gt = to_benchmark_pixels(video.xy, video.frame_size)
    pr = to_benchmark_pixels(pred.xy, video.frame_size)
    return tapvid_metrics(gt, video.occluded, pr, pred.occluded, pred.query, query_mode="first")


def _pose_prediction(video: PointVideo, pred: PointPrediction, start: int) -> KeypointSequence:
    """The predictions as a keypoint sequence on the GT frames from ``start`` on (visible = not occluded)."""
    keep = [i for i, f in enumerate(video.annotated) if f >= start]
    vis = ~pred.occluded[:, keep].T
    xy = np.where(vis[..., None], np.transpose(pred.xy[:, keep], (1, 0, 2)), np.nan)
    vis &= np.isfinite(xy).all(axis=2)
    return KeypointSequence(video.names, [video.annotated[i] for i in keep], xy, vis)


def pose_scores(videos: Sequence[PointVideo], preds: Sequence[PointPrediction], kind: str,
                badja_size: tuple[int, int] | None = BADJA_EVAL_SIZE) -> tuple[dict[str, Any], list[dict]]:
    """The keypoint dataset's own PCK from the same predictions: BADJA protocol for ``badja``, else the
    CRW/Waldmann reference PCK (only GT frames from each video's labelled frame on; that frame is not scored,
    nor is the query frame of a track first visible later)."""
    scored, areas = [], {}
    for v, p in zip(videos, preds):
        # the GT of the frames that were propagated (a video cut by max_frames keeps len(v.frames) frames)
        start, _, gt = v.pose.clip(max(1, len(v.frames) - v.pose.start()))
        # a track queried after the labelled frame is given on its query frame: that frame is not scored
        t_of = {f: t for t, f in enumerate(gt.frames)}
        gvis = gt.visible.copy()
        for n, q in enumerate(p.query):
            if q >= 0 and v.annotated[q] > start and v.annotated[q] in t_of:
                gvis[t_of[v.annotated[q]], n] = False
        gt = KeypointSequence(gt.names, gt.frames, gt.xy, gvis, gt.confidence, gt.skeleton)
        scored.append((v.name, gt, _pose_prediction(v, p, start), tuple(v.frame_size)))
        if kind == "badja":
            areas[v.name] = badja_areas(v.pose, gt.frames, badja_size)
    if kind == "badja":
        results, rows = score_badja([(*s, areas[s[0]]) for s in scored], badja_size)
        r = results["badja"]
        return {"badja PCK@0.2": float(r.pck[0])}, [{"badja PCK@0.2": row["badja PCK@0.2"]} for row in rows]
    results, rows = score_pose(scored)
    r = results["reference"]
    keys = ("reference PCK@0.1", "reference PCK@0.2")
    return ({"PCK@0.1": r.at(0.1), "PCK@0.2": r.at(0.2)},
            [{k.replace("reference ", ""): row[k] for k in keys} for row in rows])


@dataclass
class PointsEvalResult:
    overall: dict[str, Any]
    per_video: list[dict[str, Any]]
    protocol: dict[str, Any]
    seconds: float = 0.0


def _pct(v: Any) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else 100.0 * float(v)


def evaluate_points(videos: Sequence[PointVideo], propagator, out_dir: str | os.PathLike, *, kind: str,
                    dataset: dict[str, Any] | None = None, max_frames: int | None = None, force: bool = False,
                    progress: bool = True, log: Callable[[str], None] | None = None,
                    weights_record: dict[str, Any] | None = None,
                    badja_size: tuple[int, int] | None = BADJA_EVAL_SIZE) -> PointsEvalResult:
    """Propagate and score every video; write the result files into ``out_dir`` (module docstring).

    ``kind``: the dataset kind (``tapvid`` has no PCK); ``max_frames``: only the first frames of every
    video (quick checks; recorded). ``out_dir`` must be empty unless ``force``.
    """
    from tqdm import tqdm

    if kind not in POINT_DATASETS:
        raise InputError(f"unknown point dataset {kind!r} (expected one of {', '.join(POINT_DATASETS)})")
    if not videos:
        raise InputError("the dataset has no video")
    if max_frames is not None and max_frames < 2:
        raise InputError(f"max_frames must be >= 2, got {max_frames}")
    out = prepare_output_dir(out_dir, force)
    protocol: dict[str, Any] = {
        "task": "point tracking by keypoint propagation (TAP-Vid metrics)", "dataset": dict(dataset or {}),
        "max_frames": max_frames, "query_mode": "first", "metric_frame": list(TAPVID_SIZE),
        "thresholds_px": [1, 2, 4, 8, 16], "occlusion_prediction": "the propagator's invisible output",
        "pck": None if kind == "tapvid" else ("badja" if kind == "badja" else "jhmdb reference"),
        **propagator.protocol()}
    if kind == "badja":
        protocol["badja_eval_size"] = None if badja_size is None else list(badja_size)
    if weights_record is not None:
        protocol["weights"] = dict(weights_record)
    protocol["versions"] = _versions()
    atomic_write_text(out / "protocol.json", json.dumps(protocol, indent=1) + "\n")
    t0 = time.perf_counter()
    videos = [v.truncated(max_frames) for v in videos]
    metrics, preds, rows = [], [], []
    for v in tqdm(videos, unit="video", desc="eval points", disable=not progress):
        t1 = time.perf_counter()
        p = propagate_points(v, propagator)
        m = score_points(v, p)
        preds.append(p)
        metrics.append(m)
        with atomic_path(out / "predictions" / f"{v.name}.npz") as tmp:
            np.savez(tmp, frames=np.asarray(v.annotated), xy=p.xy, occluded=p.occluded, query=p.query)
        rows.append({"video": v.name, "points": int((p.query >= 0).sum()), "passes": p.passes,
                     "scored": m["num_points"], "visible": m["num_visible"],
                     **{h: _pct(m[k]) for k, h in COLUMNS}, "seconds": time.perf_counter() - t1})
    overall_m = mean_over_videos(metrics)
    overall: dict[str, Any] = {h: _pct(overall_m[k]) for k, h in COLUMNS}
    overall.update({f"J@{t}": _pct(overall_m[f"jaccard_{t}"]) for t in (1, 2, 4, 8, 16)})
    overall.update({f"<{t}px": _pct(overall_m[f"pts_within_{t}"]) for t in (1, 2, 4, 8, 16)})
    overall.update(videos=overall_m["num_videos"], scored=overall_m["num_points"], visible=overall_m["num_visible"])
    if kind != "tapvid":
        pck, pck_rows = pose_scores(videos, preds, kind, badja_size)
        overall.update(pck)
        for r, pr in zip(rows, pck_rows):
            r.update(pr)
    res = PointsEvalResult(overall, rows, protocol, time.perf_counter() - t0)
    write_points_results(out, res)
    if log is not None:
        log(f"{len(videos)} videos in {res.seconds:.1f} s")
    return res


# ----------------------------------------------------------------------------- writers


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.2f}"
    return str(v)


def points_table(res: PointsEvalResult) -> str:
    """Markdown: one row per video and the overall mean (percent)."""
    extra = [k for k in res.overall if "PCK" in k]
    head = ["video", "points", "AJ", "δ_avg", "OA"] + extra
    lines = ["| " + " | ".join(head) + " |", "|---|" + "|".join(["---:"] * (len(head) - 1)) + "|"]
    for r in res.per_video:
        lines.append("| " + " | ".join([r["video"], str(r["points"])] + [_fmt(r.get(k)) for k in head[2:]]) + " |")
    o = res.overall
    lines.append("| **mean** | " + " | ".join([str(sum(r["points"] for r in res.per_video))]
                                              + [_fmt(o.get(k)) for k in head[2:]]) + " |")
    return "\n".join(lines) + "\n"


def write_points_results(out_dir: str | os.PathLike, res: PointsEvalResult) -> dict[str, Path]:
    """``points.md``, ``points.csv``, ``points.json`` in ``out_dir`` (atomic)."""
    out = Path(out_dir)
    p = res.protocol
    w = p.get("weights")
    w = w.get("description", w) if isinstance(w, dict) else w
    pck_note = {None: "", "badja": " `badja PCK@0.2`: the BADJA protocol (0.2 x sqrt(GT mask area)).",
                "jhmdb reference": " `PCK@a`: the CRW/Waldmann JHMDB PCK (0.6 x GT keypoint-box diagonal)."}
    md = (f"# Keypoint propagation as point tracking (TAP-Vid metrics)\n\n"
          f"dataset: {p.get('dataset', {}).get('name', '?')} ({len(res.per_video)} videos), preset: "
          f"{p.get('preset', {}).get('name', '?')}, backbone: {p.get('backbone')}, weights: {w}, tracking: "
          f"{'on' if p.get('track') else 'off'}" + (f", max frames {p['max_frames']}" if p.get("max_frames") else "")
          + "\n\nTAP-Vid query-first protocol in a 256x256 frame (percent): AJ = Average Jaccard, δ_avg = points "
          "within 1/2/4/8/16 px, OA = occlusion accuracy (compare with TAP-Vid-DAVIS first: TAPIR AJ 58.5, "
          "BootsTAPIR 62.4; CoTracker3 δ_avg 76.9)." + pck_note.get(p.get("pck"), "") + "\n\n" + points_table(res))
    atomic_write_text(out / "points.md", md)
    buf = io.StringIO()
    cols = list(res.per_video[0]) if res.per_video else []
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(cols)
    for r in res.per_video:
        wr.writerow([_fmt(r.get(c)) for c in cols])
    wr.writerow(["mean", sum(r["points"] for r in res.per_video)] + [_fmt(res.overall.get(c)) for c in cols[2:]])
    atomic_write_text(out / "points.csv", buf.getvalue())
    doc = {"protocol": p, "overall": res.overall, "videos": res.per_video, "seconds": res.seconds}
    atomic_write_text(out / "points.json", json.dumps(doc, indent=1) + "\n")
    return {"markdown": out / "points.md", "csv": out / "points.csv", "json": out / "points.json"}
