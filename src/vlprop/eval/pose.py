"""``vlprop eval pose``: propagate keypoints through every video of a dataset and score PCK.

Every video is propagated from its first annotated frame (the first ground-truth frame with a visible
keypoint) with a :class:`~vlprop.tasks.pose.KeypointPropagator`; the predictions are written per video as
vlprop keypoint JSON (``<out>/predictions/<video>.json``, frames = indices into the video's frames) and scored
with :mod:`vlprop.eval.pck` exactly as defined there:

* ``reference``: the CRW / Waldmann definition (visibility read from the predictions), plus coverage c1/c2;
* ``gt-visibility``: GT-visible joints inside the frame count, a missing prediction is a miss.

Only ground-truth frames from the labelled frame on are scored (frame 0 of that range, the labelled frame,
is excluded as in the reference). Result files (atomic): ``pck.csv``, ``pck.md``, ``pck.json`` (with the
protocol: preset settings, backbone, weights, tracking settings, dataset, versions) and ``per_video.csv``.
A rerun with the same protocol reuses the finished prediction files; a different protocol in the same
folder is an error unless ``--force`` (which recomputes everything).

Datasets (``--dataset``):

* ``jhmdb``: ``<root>/Rename_Images/<action>/<video>/%05d.png`` + ``<root>/joint_positions/<action>/<video>/
  joint_positions.mat``. ``--split``: ``all`` (default: every video found), ``test`` / ``train`` (with
  ``--split-num``, read from ``<root>/splits/<action>_test_split<k>.txt``) or a list file (one video per
  line: ``<video>``, ``<video>.avi``, ``<action>/<video>``; an optional second column ``1``/``2`` as in the
  JHMDB split files keeps only ``2`` = test). Actions are visited in Waldmann's order.
* ``badja``: ``<root>/joint_annotations/<video>.json`` with image paths relative to ``<root>``; the video is
  the folder holding the annotated images; only annotated frames are scored.
* ``folder``: ``<root>/<video>/`` with ``keypoints.json`` (or ``keypoints.csv``) and the frames either in
  ``<root>/<video>/frames/`` or directly in ``<root>/<video>/``; keypoint frames are indices or frame names.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputError
from ..io.files import atomic_write_text
from ..io.paths import check_name, ensure_inside
from ..io.keypoints import (
    JHMDB_ACTIONS,
    KeypointSequence,
    jhmdb_video,
    read_badja,
    read_jhmdb_split,
    read_keypoints,
    read_keypoints_json,
    write_keypoints_json,
)
from ..io.video import IMAGE_EXTENSIONS, Frame, FrameSource, natural_key
from .pck import (
    BADJA_ALPHA,
    BADJA_EVAL_SIZE,
    PCK_THRESHOLDS,
    PCKResult,
    badja_correct,
    evaluate_pck_sequences,
    format_pck_csv,
    format_pck_markdown,
    mask_area,
)

DATASETS = ("jhmdb", "badja", "folder")
VARIANTS = ("reference", "gt-visibility")
#: Scoring protocols: ``jhmdb`` = PCK@0.1..0.5 of 0.6 x the GT keypoint box diagonal (CRW/Waldmann);
#: ``badja`` = PCK with threshold 0.2 x sqrt(area of the GT mask) (BADJA; the PIPs evaluation).
PROTOCOLS = ("jhmdb", "badja")


# ----------------------------------------------------------------------------- data


class FileListSource(FrameSource):
    """Frames from an explicit list of image files (in the given order)."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise InputError("no frames given (empty file list)")
        self.size = None

    def __len__(self) -> int:
        return len(self.paths)

    def names(self) -> list[str]:
        return [p.stem for p in self.paths]

    def read(self, index: int) -> np.ndarray:
        path = self.paths[index]
        try:
            with Image.open(path) as img:
                img.load()
                return np.array(img.convert("RGB"), dtype=np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise InputError(f"cannot read frame {index} ({path}): {e}") from None

    def __iter__(self) -> Iterator[Frame]:
        for i, path in enumerate(self.paths):
            image = self.read(i)
            self._check_size(image, i, str(path))
            yield Frame(i, path.stem, image)


@dataclass
class PoseVideo:
    """One evaluation video: ``frames`` (image files, in order) and ground truth ``gt`` whose frame ids are
    indices into ``frames`` (possibly sparse). ``name`` is unique in the dataset (may contain ``/``)."""

    name: str
    frames: list[Path]
    gt: KeypointSequence
    frame_size: tuple[int, int] = field(default=(0, 0))   # (W, H), read from the first frame when 0
    masks: dict[int, Path] = field(default_factory=dict)  # frame index -> GT segmentation (BADJA protocol)

    def __post_init__(self) -> None:
        if self.frame_size == (0, 0):
            try:
                with Image.open(self.frames[0]) as im:
                    self.frame_size = (int(im.size[0]), int(im.size[1]))
            except (OSError, IndexError) as e:
                raise InputError(f"video {self.name}: cannot open its first frame: {e}") from None
        bad = [f for f in self.gt.frames if not isinstance(f, int) or not 0 <= f < len(self.frames)]
        if bad:
            raise InputError(f"video {self.name}: ground-truth frame {bad[0]!r} is not an index of its "
                             f"{len(self.frames)} frames")

    def start(self) -> int:
        """Index of the labelled frame: the first GT frame (in video order) with a visible keypoint."""
        order = sorted(range(self.gt.num_frames), key=lambda t: self.gt.frames[t])
        for t in order:
            if self.gt.visible[t].any():
                return int(self.gt.frames[t])
        raise InputError(f"video {self.name}: no annotated frame has a visible keypoint")

    def clip(self, max_frames: int | None = None) -> tuple[int, list[Path], KeypointSequence]:
        """``(start, frames, gt)``: the labelled frame's index, the frames from it on (at most ``max_frames``)
        and the GT restricted to those frames (frame ids stay indices into :attr:`frames`, sorted)."""
        s = self.start()
        end = len(self.frames) if max_frames is None else min(len(self.frames), s + max_frames)
        keep = [t for t in range(self.gt.num_frames) if s <= self.gt.frames[t] < end]
        keep.sort(key=lambda t: self.gt.frames[t])
        g = self.gt
        gt = KeypointSequence(g.names, [int(g.frames[t]) for t in keep], g.xy[keep], g.visible[keep],
                              g.confidence[keep], g.skeleton)
        return s, self.frames[s:end], gt


def _list_images(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
                  key=lambda p: natural_key(p.name))


def _read_list_file(path: Path) -> list[tuple[str, bool]]:
    """``(name, keep)`` per line of a video list / JHMDB split file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise InputError(f"cannot read split file {path}: {e.strerror or e}") from None
    out = []
    for n, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) > 2 or (len(parts) == 2 and parts[1] not in ("1", "2")):
            raise InputError(f"{path}, line {n}: expected '<video>' or '<video>.avi 1|2', got {line.strip()!r}")
        name = parts[0][:-4] if parts[0].lower().endswith(".avi") else parts[0]
        out.append((name.strip("/"), len(parts) == 1 or parts[1] == "2"))
    return out


def _select(names: list[str], split: str | os.PathLike | None, what: str) -> list[str]:
    """Filter ``names`` (``action/video`` or ``video``) by a list file; ``None``/``all`` keeps all."""
    if split is None or str(split) == "all":
        return names
    path = Path(split)
    if not path.is_file():
        raise InputError(f"{what}: split {str(split)!r} is neither 'all' nor a list file")
    wanted = [(n, keep) for n, keep in _read_list_file(path)]
    by_full = {n: n for n in names}
    by_short = {}
    for n in names:
        by_short.setdefault(n.rsplit("/", 1)[-1], n)
    out = []
    for n, keep in wanted:
        if not keep:
            continue
        full = by_full.get(n) or by_short.get(n)
        if full is None:
            raise InputError(f"{path}: video {n!r} is not in the dataset at {what}")
        if full not in out:
            out.append(full)
    if not out:
        raise InputError(f"{path}: lists no (test) video")
    return out


def jhmdb_videos(root: str | os.PathLike, split: str | os.PathLike | None = "all",
                 split_num: int = 1) -> list[PoseVideo]:
    """JHMDB videos under ``root`` (see module docstring for ``split``)."""
    root = Path(root)
    joints_root, frames_root = root / "joint_positions", root / "Rename_Images"
    for d in (joints_root, frames_root):
        if not d.is_dir():
            raise InputError(f"JHMDB root {root} has no {d.name}/ folder (expected Rename_Images/<action>/<video>/ "
                             f"and joint_positions/<action>/<video>/joint_positions.mat)")
    found = sorted(p.name for p in joints_root.iterdir() if p.is_dir())
    actions = [a for a in JHMDB_ACTIONS if a in found] + [a for a in found if a not in JHMDB_ACTIONS]
    names = []
    for a in actions:
        for v in sorted((joints_root / a).iterdir(), key=lambda p: p.name):
            if (v / "joint_positions.mat").is_file() and (frames_root / a / v.name).is_dir():
                names.append(f"{a}/{v.name}")
    if not names:
        raise InputError(f"no JHMDB video (joint_positions.mat with a frame folder) under {root}")
    if split in ("test", "train"):
        if split_num not in (1, 2, 3):
            raise InputError(f"JHMDB split number must be 1, 2 or 3, got {split_num}")
        chosen = []
        for a in actions:
            f = root / "splits" / f"{a}_test_split{split_num}.txt"
            if not f.is_file():
                raise InputError(f"JHMDB split file not found: {f} (use --split all or a list file)")
            chosen += [f"{a}/{v}" for v in read_jhmdb_split(f)[split] if f"{a}/{v}" in names]
        names = chosen
        if not names:
            raise InputError(f"no {split} video of split {split_num} is present under {root}")
    else:
        names = _select(names, split, f"JHMDB root {root}")
    videos = []
    for n in names:
        action, video = n.split("/", 1)
        jv = jhmdb_video(root, action, video)
        videos.append(PoseVideo(n, list(jv.frame_paths), jv.keypoints()))
    return videos


def badja_videos(root: str | os.PathLike, split: str | os.PathLike | None = None) -> list[PoseVideo]:
    """BADJA videos: ``<root>/joint_annotations/*.json``; frames = the folder of the annotated images."""
    root = Path(root)
    ann_dir = root / "joint_annotations"
    if not ann_dir.is_dir():
        raise InputError(f"BADJA root {root} has no joint_annotations/ folder")
    files = {p.stem: p for p in sorted(ann_dir.glob("*.json"))}
    if not files:
        raise InputError(f"no BADJA annotation file in {ann_dir}")
    videos = []
    for name in _select(sorted(files), split, f"BADJA root {root}"):
        ann = read_badja(files[name], root, clip_to_first_annotation=False)
        folder = ann.image_paths[0].parent
        if not folder.is_dir():
            raise InputError(f"{files[name]}: frame folder {folder} not found")
        frames = _list_images(folder)
        index = {p.name: i for i, p in enumerate(frames)}
        ids = []
        for p in ann.image_paths:
            if p.parent != folder or p.name not in index:
                raise InputError(f"{files[name]}: annotated image {p} is not a frame of {folder}")
            ids.append(index[p.name])
        s = ann.keypoints
        gt = KeypointSequence(s.names, ids, s.xy, s.visible, s.confidence, s.skeleton)
        masks = {i: p for i, p in zip(ids, ann.segmentation_paths) if str(p) not in ("", ".")}
        videos.append(PoseVideo(name, frames, gt, ann.frame_size, masks))
    return videos


def folder_videos(root: str | os.PathLike, split: str | os.PathLike | None = None) -> list[PoseVideo]:
    """``<root>/<video>/{frames/ or images, keypoints.json | keypoints.csv}``."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"dataset folder not found: {root}")
    names = []
    for d in sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name)):
        if (d / "keypoints.json").is_file() or (d / "keypoints.csv").is_file():
            names.append(d.name)
    if not names:
        raise InputError(f"no video folder with keypoints.json (or keypoints.csv) under {root}")
    videos = []
    for name in _select(names, split, f"folder {root}"):
        d = root / name
        kp_file = d / "keypoints.json" if (d / "keypoints.json").is_file() else d / "keypoints.csv"
        frame_dir = d / "frames" if (d / "frames").is_dir() else d
        frames = _list_images(frame_dir)
        if not frames:
            raise InputError(f"no frames ({', '.join(IMAGE_EXTENSIONS)}) in {frame_dir}")
        seq = read_keypoints(kp_file)
        stems = {p.stem: i for i, p in enumerate(frames)}
        ids = []
        for f in seq.frames:
            if isinstance(f, str):
                if f not in stems:
                    raise InputError(f"{kp_file}: frame {f!r} is not a frame name in {frame_dir}")
                ids.append(stems[f])
            else:
                ids.append(int(f))
        gt = KeypointSequence(seq.names, ids, seq.xy, seq.visible, seq.confidence, seq.skeleton)
        videos.append(PoseVideo(name, frames, gt))
    return videos


def read_pose_dataset(kind: str, root: str | os.PathLike, split: str | os.PathLike | None = None,
                      split_num: int = 1) -> list[PoseVideo]:
    """Videos of a keypoint dataset: ``kind`` in ``jhmdb``, ``badja``, ``folder``."""
    if kind == "jhmdb":
        return jhmdb_videos(root, split or "all", split_num)
    if kind == "badja":
        return badja_videos(root, split)
    if kind == "folder":
        return folder_videos(root, split)
    raise InputError(f"unknown keypoint dataset {kind!r} (expected one of {', '.join(DATASETS)})")


# ----------------------------------------------------------------------------- scoring


@dataclass
class PoseEvalResult:
    """Scores of a pose evaluation: one :class:`PCKResult` per variant and per-video PCK rows."""

    results: dict[str, PCKResult]
    per_video: list[dict[str, Any]]
    protocol: dict[str, Any]
    seconds: float = 0.0
    computed: int = 0
    reused: int = 0


def prediction_path(out_dir: str | os.PathLike, video: str) -> Path:
    """``<out>/predictions/<video>.json``; a video name (from a list file; ``class/video`` is allowed) must be
    made of plain names and stay inside ``out``."""
    parts = video.split("/")
    for part in parts:
        check_name(part, "video name")
    return ensure_inside(Path(out_dir), Path(out_dir) / "predictions" / f"{video}.json")


def _aligned(gt: KeypointSequence, pred: KeypointSequence, name: str) -> KeypointSequence:
    if pred.names != gt.names:
        raise InputError(f"video {name}: predicted keypoint names {pred.names} differ from the GT names {gt.names}")
    return pred


def score_pose(videos: Sequence[tuple[str, KeypointSequence, KeypointSequence, tuple[int, int]]],
               thresholds: Sequence[float] = PCK_THRESHOLDS) -> tuple[dict[str, PCKResult], list[dict]]:
    """PCK of ``(name, gt, pred, (W, H))`` per video (GT already restricted to frames from the labelled
    frame on, the labelled frame first). Returns both variants and per-video PCK rows (both variants)."""
    if not videos:
        raise InputError("no video to score")
    names = [v[0] for v in videos]
    gts = [v[1] for v in videos]
    preds = [_aligned(v[1], v[2], v[0]) for v in videos]
    sizes = [tuple(v[3]) for v in videos]
    joint_names = gts[0].names
    for n, g in zip(names, gts):
        if g.names != joint_names:
            raise InputError(f"video {n}: keypoint names {g.names} differ from the first video's {joint_names}")
    results = {
        "reference": evaluate_pck_sequences(gts, preds, thresholds=thresholds, visibility="pred",
                                            frame_size=sizes, with_coverage=True),
        "gt-visibility": evaluate_pck_sequences(gts, preds, thresholds=thresholds, visibility="gt",
                                                frame_size=sizes, with_coverage=True),
    }
    rows = []
    for n, g, p, s in zip(names, gts, preds, sizes):
        row: dict[str, Any] = {"video": n, "frames": g.num_frames}
        for variant, vis in (("reference", "pred"), ("gt-visibility", "gt")):
            r = evaluate_pck_sequences([g], [p], thresholds=thresholds, visibility=vis, frame_size=[s])
            for t, v in zip(r.thresholds, r.pck):
                row[f"{variant} PCK@{t:g}"] = None if not math.isfinite(v) else float(v)
        rows.append(row)
    return results, rows


def read_foreground_mask(path: str | os.PathLike) -> np.ndarray:
    """``[H, W]`` bool foreground of a GT segmentation image: any non-zero label (palette index, grey value
    or RGB colour), i.e. every annotated object counts as the animal."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            a = np.asarray(im)
    except FileNotFoundError:
        raise InputError(f"segmentation mask not found: {path} (the BADJA protocol needs the GT masks the "
                         f"annotations reference; use --protocol jhmdb without them)") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise InputError(f"cannot read segmentation mask {path}: {e}") from None
    if a.ndim == 3:
        a = a[..., :3].max(axis=2)
    return a > 0


def badja_areas(video: PoseVideo, frames: Sequence[int], eval_size: tuple[int, int] | None = BADJA_EVAL_SIZE
                ) -> np.ndarray:
    """Mask area of each frame in ``frames`` (video frame indices), in pixels of ``eval_size`` ``(W, H)``
    (``None``: the video's frame size; a mask of another size, e.g. full-resolution masks with 480p frames,
    is resized to it with nearest neighbour first)."""
    size = tuple(eval_size) if eval_size is not None else tuple(video.frame_size)
    out = []
    for f in frames:
        if f not in video.masks:
            raise InputError(f"video {video.name}: annotated frame {f} has no segmentation mask (the BADJA "
                             f"protocol needs one per annotated frame; use --protocol jhmdb without them)")
        out.append(mask_area(read_foreground_mask(video.masks[f]), size))
    return np.asarray(out, dtype=np.float64)


def score_badja(videos: Sequence[tuple[str, KeypointSequence, KeypointSequence, tuple[int, int], Sequence[float]]],
                eval_size: tuple[int, int] | None = BADJA_EVAL_SIZE, alpha: float = BADJA_ALPHA
                ) -> tuple[dict[str, PCKResult], list[dict]]:
    """BADJA PCK of ``(name, gt, pred, (W, H), areas)`` per video, as the PIPs BADJA evaluation.

    ``gt`` is restricted to frames from the labelled frame on (the labelled frame first; it is not scored);
    ``areas``: the GT mask area of each GT frame in ``eval_size`` pixels (:func:`badja_areas`). Every
    GT-visible joint on a later annotated frame is scored: correct when its prediction lies within
    ``alpha * sqrt(area)`` (strict) after scaling frame pixels to ``eval_size``; a joint predicted
    invisible is a miss. Per video: ``100 * correct / scored``; overall (``pck``): the **mean over videos**
    (PIPs averages its per-video numbers); the pooled value and per-joint PCKs are in ``extra`` /
    ``per_joint``.
    """
    if not videos:
        raise InputError("no video to score")
    rows, per_video, pooled_c, pooled_n = [], [], 0, 0
    names0 = videos[0][1].names
    same = all(v[1].names == names0 for v in videos)
    jc = np.zeros(len(names0))
    jn = np.zeros(len(names0))
    for name, gt, pred, (w, h), areas in videos:
        pred = _aligned(gt, pred, name)
        xy = np.full(gt.xy.shape, np.nan)
        pos = {f: t for t, f in enumerate(pred.frames)}
        for t, f in enumerate(gt.frames):
            if f in pos:
                xy[t] = np.where(pred.visible[pos[f]][:, None], pred.xy[pos[f]], np.nan)
        scale = (1.0, 1.0) if eval_size is None else (eval_size[0] / w, eval_size[1] / h)
        areas = np.asarray(areas, dtype=np.float64)
        if areas.shape != (gt.num_frames,):
            raise InputError(f"video {name}: {areas.size} mask areas for {gt.num_frames} annotated frames")
        correct, scored = badja_correct(gt.xy[1:], xy[1:], gt.visible[1:], areas[1:], scale=scale, alpha=alpha)
        c, n = int(correct.sum()), int(scored.sum())
        pooled_c, pooled_n = pooled_c + c, pooled_n + n
        if same:
            jc += correct.sum(axis=0)
            jn += scored.sum(axis=0)
        v = 100.0 * c / n if n else math.nan
        if n:
            per_video.append(v)
        rows.append({"video": name, "frames": gt.num_frames, "scored": n,
                     f"badja PCK@{alpha:g}": None if not n else float(v)})
    overall = float(np.mean(per_video)) if per_video else math.nan
    per_joint = np.full((len(names0), 1), np.nan)
    ok = jn > 0
    per_joint[ok, 0] = 100.0 * jc[ok] / jn[ok]
    res = PCKResult((float(alpha),), np.array([overall]), per_joint, jn.astype(np.int64), list(names0), "gt",
                    len(videos), extra={"protocol": "badja", "threshold": f"{alpha:g} * sqrt(GT mask area)",
                                        "eval_size": None if eval_size is None else list(eval_size),
                                        "aggregation": "mean over videos of the per-video PCK",
                                        "pooled_pck": None if not pooled_n else 100.0 * pooled_c / pooled_n,
                                        "scored": pooled_n, "videos_scored": len(per_video)})
    return {"badja": res}, rows


def _versions() -> dict[str, str]:
    import torch

    from .. import __version__

    return {"vlprop": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def _comparable(protocol: dict[str, Any]) -> dict[str, Any]:
    """The part of a protocol that changes predictions: no versions, weights reduced to their identity."""
    out = {k: v for k, v in protocol.items() if k not in ("versions", "scoring")}   # scoring reuses predictions
    out.setdefault("precision", "fp32")  # runs recorded before --precision existed were fp32
    w = out.get("weights")
    if isinstance(w, dict):
        out["weights"] = {k: w[k] for k in ("kind", "seed", "sha256") if k in w}
    return out


def _load_prediction(path: Path, gt: KeypointSequence) -> KeypointSequence | None:
    """A finished prediction file for this GT, or None when absent / unreadable / incomplete."""
    if not path.is_file():
        return None
    try:
        pred = read_keypoints_json(path)
    except InputError:
        return None
    if pred.names != gt.names or not set(gt.frames) <= set(pred.frames):
        return None
    return pred


def evaluate_pose(videos: Sequence[PoseVideo], propagator, out_dir: str | os.PathLike, *,
                  dataset: dict[str, Any] | None = None, max_frames: int | None = None, force: bool = False,
                  progress: bool = True, log: Callable[[str], None] | None = None,
                  weights_record: dict[str, Any] | None = None, protocol: str = "jhmdb",
                  badja_size: tuple[int, int] | None = BADJA_EVAL_SIZE) -> PoseEvalResult:
    """Propagate every video (reusing finished prediction files) and write the result files into ``out_dir``.

    ``protocol``: ``jhmdb`` (PCK@0.1..0.5 of the keypoint-box diagonal, both variants) or ``badja``
    (:func:`score_badja`: 0.2 x sqrt(GT mask area), masks measured at ``badja_size`` ``(W, H)``, default
    the PIPs evaluation's 512x320; ``None`` = the frames' pixels). The scoring protocol is recorded under
    ``scoring`` in ``protocol.json``; changing it reuses the prediction files.

    ``propagator``: a :class:`~vlprop.tasks.pose.KeypointPropagator`; ``dataset``: description recorded in the
    protocol; ``max_frames``: propagate at most this many frames per video from the labelled frame (quick
    checks; recorded in the protocol); ``weights_record``: description of the weights for the protocol
    (e.g. :meth:`vlprop.eval.runner.ModelSpec.weights_record`: file path + SHA-256); only its identity
    (kind, seed, SHA-256) has to match on a rerun.
    """
    from tqdm import tqdm

    if not videos:
        raise InputError("the dataset has no video")
    if max_frames is not None and max_frames < 2:
        raise InputError(f"max_frames must be >= 2 (the labelled frame and at least one more), got {max_frames}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"output path {out} exists and is not a folder")
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown keypoint protocol {protocol!r} (expected one of {', '.join(PROTOCOLS)})")
    scoring: dict[str, Any] = {"protocol": protocol}
    if protocol == "badja":
        scoring.update(threshold=f"{BADJA_ALPHA:g} * sqrt(GT mask area)",
                       eval_size=None if badja_size is None else [int(badja_size[0]), int(badja_size[1])],
                       aggregation="mean over videos")
        # every scored frame needs its mask: fail before propagating anything
        clips = {v.name: v.clip(max_frames) for v in videos}
        areas = {v.name: badja_areas(v, clips[v.name][2].frames, badja_size) for v in videos}
    else:
        scoring.update(thresholds=list(PCK_THRESHOLDS), reference_size="0.6 * GT keypoint box diagonal")
    record = {"task": "keypoint propagation + PCK", "dataset": dict(dataset or {}), "max_frames": max_frames,
                    "scoring": scoring, **propagator.protocol()}
    if weights_record is not None:
        record["weights"] = dict(weights_record)
    proto_path = out / "protocol.json"
    if proto_path.is_file() and not force:
        try:
            old = json.loads(proto_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = None
        if not isinstance(old, dict) or _comparable(old) != _comparable(json.loads(json.dumps(record))):
            raise InputError(f"{out} holds results of a different protocol ({proto_path}); choose another --out "
                             f"or pass --force to recompute")
    if force:   # no stale prediction of another protocol may survive an interrupted forced run
        for video in videos:
            prediction_path(out, video.name).unlink(missing_ok=True)
    atomic_write_text(proto_path, json.dumps({**record, "versions": _versions()}, indent=1) + "\n")
    t0 = time.perf_counter()
    scored, computed, reused = [], 0, 0
    bar = tqdm(videos, unit="video", desc="eval pose", disable=not progress)
    for video in bar:
        start, frames, gt = video.clip(max_frames)
        path = prediction_path(out, video.name)
        pred = None if force else _load_prediction(path, gt)
        if pred is None:
            xy0, vis0, _ = gt.at(start)
            rel = propagator.propagate_sequence(FileListSource(frames), (xy0, vis0), start=0, names=gt.names)
            # prediction files use the video's frame indices (the labelled frame is `start`)
            pred = KeypointSequence(gt.names, [start + f for f in rel.frames], rel.xy, rel.visible, rel.confidence,
                                    gt.skeleton)
            write_keypoints_json(path, pred)
            computed += 1
        else:
            reused += 1
        scored.append((video.name, gt, pred, video.frame_size))
    bar.close()
    if scoring["protocol"] == "badja":
        results, rows = score_badja([(*v, areas[v[0]]) for v in scored], badja_size)
    else:
        results, rows = score_pose(scored)
    res = PoseEvalResult(results, rows, {**record, "versions": _versions()}, time.perf_counter() - t0,
                         computed, reused)
    write_pose_results(out, res)
    if log is not None:
        log(f"{len(videos)} videos ({computed} propagated, {reused} reused) in {res.seconds:.1f} s")
    return res


def _per_video_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    if not rows:
        return ""
    cols = list(rows[0])
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow(["" if r[c] is None else (f"{r[c]:.2f}" if isinstance(r[c], float) else r[c]) for c in cols])
    return buf.getvalue()


def _protocol_note(scoring: dict[str, Any]) -> str:
    if scoring.get("protocol") == "badja":
        size = scoring.get("eval_size")
        where = f"{size[0]}x{size[1]} evaluation pixels (PIPs)" if size else "frame pixels"
        return ("BADJA protocol: a GT-visible joint on an annotated frame after the labelled one is correct within "
                f"0.2 * sqrt(area of the GT mask), measured in {where}; a joint predicted invisible is a miss; "
                "`PCK@0.2` = mean over videos of the per-video PCK (compare: PIPs 64.4, FGVC 69.7, RAFT 45.6).")
    return ("JHMDB protocol: `reference` = CRW/Waldmann PCK (0.6 x GT keypoint-box diagonal, visibility from the "
            "predictions), `gt-visibility` = every GT-visible joint inside the frame counts; c1/c2 = coverage (%).")


def write_pose_results(out_dir: str | os.PathLike, res: PoseEvalResult) -> dict[str, Path]:
    """``pck.csv``, ``pck.md``, ``pck.json`` and ``per_video.csv`` in ``out_dir`` (each written atomically)."""
    out = Path(out_dir)
    paths = {k: out / n for k, n in (("csv", "pck.csv"), ("markdown", "pck.md"), ("json", "pck.json"),
                                     ("per_video", "per_video.csv"))}
    atomic_write_text(paths["csv"], format_pck_csv(res.results))
    p = res.protocol
    preset = p.get("preset", {})
    weights = p.get("weights")
    weights = weights.get("description", weights) if isinstance(weights, dict) else weights
    head = (f"# Keypoint propagation: PCK\n\n"
            f"dataset: {p.get('dataset', {}).get('name', '?')} ({len(res.per_video)} videos)  \n"
            f"preset: {preset.get('name', '?')}, backbone: {p.get('backbone')}, weights: {weights}, "
            f"tracking: {'on' if p.get('track') else 'off'}"
            + (f" (crop {p.get('crop_size')}, padding {p.get('crop_padding')})" if p.get("track") else "")
            + (f", max frames {p['max_frames']}" if p.get("max_frames") else "") + "\n\n"
            + _protocol_note(p.get("scoring", {})) + "\n\n")
    atomic_write_text(paths["markdown"], head + format_pck_markdown(res.results, per_joint=True))
    doc = {"protocol": p, "results": {k: r.as_dict() for k, r in res.results.items()}, "videos": res.per_video,
           "seconds": res.seconds}
    atomic_write_text(paths["json"], json.dumps(doc, indent=1) + "\n")
    atomic_write_text(paths["per_video"], _per_video_csv(res.per_video))
    return paths
