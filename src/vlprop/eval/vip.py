"""Semantic part propagation on VIP (Video Instance-level Parsing): reader, propagation, parsing metrics and the
instance-level AP^r / AP^r_vol.

VIP layout (``VIP_Fine``)::

    Images/<video>/<frame>.jpg         frames
    Category_ids/<video>/<frame>.png   20-class parsing map (0 = background ... 19 = right shoe); annotated
                                        frames only (every 25th frame)
    Human_ids/<video>/<frame>.png      person instance ids (not read here)
    Instance_ids/<video>/<frame>.png   instance-part ids (one id per (person, part) region, 0 = background) and
    Instance_ids/<video>/<frame>.txt   one line per id: ``<instance-part id> <class id> [...]``
    lists/<split>_videos.txt           video names (``val``: the validation list)

Protocol (CRW ``eval_vip.py``, shared/specs/reference-implementations.md §2.4): the parts of the first annotated
frame are propagated through the video like a multi-object mask (every class id present is one "object");
predictions of the annotated frames are nearest-resized to the ground truth; ONE confusion matrix is accumulated
over all scored frames of all videos (ground-truth ids outside ``[0, 20)`` ignored; predicted ids outside count
as wrong); from it pixel accuracy, mean class accuracy, per-class IoU, mIoU (mean over classes present in the
ground truth or the prediction) and frequency-weighted IoU. The labelled frame itself is not scored unless
``include_first``.

Instance-level AP^r and AP^r_vol -- definition verified from public code
------------------------------------------------------------------------
Sources read (reference only, nothing copied):

* VIP's own evaluation, released with the dataset paper (Zhou et al. 2018, "Adaptive Temporal Encoding Network
  for Video Instance-level Human Parsing"): repository ``HCPLab-SYSU/ATEN``, file
  ``evaluate/test_inst_part_ap.py`` (commit 0c1f3a5 "add evaluation code", unchanged at HEAD 2e4e54e), and the
  writer of its prediction files, ``visualize.py`` ``write_inst_part_result``. The same script (identical
  logic) is CIHP's ``Engineering-Course/CIHP_PGN`` ``evaluation/test_inst_part_ap.py`` (Gong et al. 2018).
* The origin of the name: Hariharan et al. 2014 (SDS), repository ``bharath272/sds_eccv2014``, files
  ``evaluation/run_benchmark.m`` (AP^r at thresholds ``0.1*t``, t = 1..9; ``AP^r_{vol} = mean(ap_vol)``),
  ``evaluation/generalized_det_eval.m`` and ``get_ap.m`` (VOC AP).
* The VIP benchmark page (sysu-hcp.net/lip/video_parsing.php, stored copy): metric "APrvol for instance-level
  human parsing, reported by Holistic, Instance-Level Human Parsing" (Li, Arnab & Torr 2017), submissions as
  an indexed PNG per frame plus a text file whose line k is ``<class_id score>`` of id k -- ATEN's format. We
  found no public code of Li et al. and did not read their evaluation text; the definition below is the code's.
  The released CRW (``eval_vip.py``), UVC (``Liusifei/UVC`` ``eval_vip.py``) and TimeCycle code computes the VIP
  mIoU only: no AP code.

Definition (VIP / ATEN variant, ``matching="vip"``, the default):

* ground-truth instance = one id of ``Instance_ids/<video>/<frame>.png`` (0 = background); its class is given by
  the ``.txt`` next to it (first column id, second column class id), i.e. one (person, part) region;
* predicted instance = one id of a predicted instance-part map with a class and a confidence score (ATEN
  writes ``<frame>.png`` with ids 1..M and ``<frame>.txt`` whose line i is ``<class id> <score>`` of id i; its
  score is the mean parsing probability over the region times the person detection score);
* per class c (1..19, background excluded) and per frame: IoU of every predicted c-instance with every
  ground-truth c-instance of the same frame (pixel counts); a prediction is a true positive at threshold t iff
  its best IoU is ``> t`` (strict), else a false positive -- several predictions may be true positives for the
  same ground truth (no one-to-one assignment, no duplicate rule);
* all predictions of class c over all scored frames are sorted by descending score; precision and recall
  (``TP / number of ground-truth c-instances``) along that order; AP = VOC all-points interpolated area
  (``voc_ap(use_07_metric=False)``: precision envelope, sum of recall steps times precision), not 11-point;
* AP^r at t = mean over the classes of AP_c(t); thresholds 0.1, 0.2, ..., 0.9; **AP^r_vol = mean over the 9
  thresholds** of AP^r(t) ("vol": the volume under the AP-vs-threshold curve, as in SDS).

A consequence of the reference's rule that we keep: when two predictions of a class both overlap one
ground-truth instance by more than t (possible only for t < 0.5 with disjoint regions), both count, recall can
pass 1 and AP_c(t) can exceed 1 (``test_duplicates_count_as_hits_in_the_vip_reference_but_not_in_sds``).

The SDS variant (``matching="sds"``) differs in one point: in each frame the predictions are taken by
descending score and each is assigned to the not-yet-covered ground truth of its class with the largest IoU,
true positive iff that IoU ``> t``; a second prediction of an already covered ground truth is a false
positive. Both agree whenever no two predictions of a class overlap one ground truth by more than t; for the
disjoint regions of a propagated label map that holds for every t >= 0.5.

Our choices where the reference is silent or ill-defined: a class without any ground-truth instance in the
scored frames has no AP (the reference divides by zero: AP 0 when it is not predicted either, NaN otherwise)
and is left out of the class mean (reported under ``classes_without_gt``); equal scores keep the input order
(stable sort; the reference's ``argsort(...)[::-1]`` leaves ties unspecified); only the annotated frames are
scored and a missing prediction is an error (the reference scores the frames it finds predictions for).

Propagation (``propagate_instance_parts``): every ground-truth instance of the first annotated frame is one
object of the multi-object propagation (consecutive object ids, at most 255); in each annotated frame the
predicted instances are the objects present in the output mask, class = the class of the object's first-frame
instance, score = mean over the predicted region of the object's decoded probability (the same scores whose
argmax gives the mask; the analogue of ATEN's mean parsing probability, with no person detector score).
Predictions are written in ATEN's format (``<out>/<video>/<frame>.png`` + ``.txt``), so the reference script
can score them too.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..errors import InputError
from ..io.video import ImageFolderSource, natural_key

VIP_CLASSES = ("background", "hat", "hair", "sun-glasses", "upper-clothes", "dress", "coat", "socks", "pants",
               "gloves", "scarf", "skirt", "torso-skin", "face", "right-arm", "left-arm", "right-leg", "left-leg",
               "right-shoe", "left-shoe")
NUM_CLASSES = len(VIP_CLASSES)
IMAGE_EXTS = (".jpg", ".jpeg", ".png")


@dataclass
class VIPVideo:
    """One VIP video: frame paths in order, and the ground truth of its annotated frames (by frame stem)."""

    name: str
    frames: list[Path]
    categories: dict[str, Path]
    instances: dict[str, Path] = field(default_factory=dict)  # Instance_ids PNGs (instance-part ids) by stem

    @property
    def annotated(self) -> list[int]:
        """Indices (into ``frames``) of the frames with a parsing map, in order."""
        return [i for i, f in enumerate(self.frames) if f.stem in self.categories]


def read_vip(root: str | Path, split: str | None = "val", videos: Sequence[str] | None = None) -> list[VIPVideo]:
    """Videos of a VIP folder: ``split`` names ``lists/<split>_videos.txt`` (or is a list file); ``None`` = every
    video folder under ``Images``. Raises :class:`InputError` for a missing folder, list or annotation."""
    root = Path(root)
    images = root / "Images"
    cats = root / "Category_ids"
    if not images.is_dir() or not cats.is_dir():
        raise InputError(f"{root} is not a VIP folder: it needs Images/ and Category_ids/ sub-folders")
    if videos is None:
        if split is None:
            videos = sorted(p.name for p in images.iterdir() if p.is_dir())
        else:
            lst = Path(split) if Path(split).suffix == ".txt" else root / "lists" / f"{split}_videos.txt"
            if not lst.is_file():
                raise InputError(f"VIP split list not found: {lst}")
            videos = [ln.strip() for ln in lst.read_text().splitlines() if ln.strip()]
    out = []
    for name in videos:
        fdir = images / name
        if not fdir.is_dir():
            raise InputError(f"VIP video {name!r}: no frame folder {fdir}")
        frames = sorted((p for p in fdir.iterdir() if p.suffix.lower() in IMAGE_EXTS), key=lambda p: natural_key(p.name))
        catd = cats / name
        categories = {p.stem: p for p in sorted(catd.glob("*.png"))} if catd.is_dir() else {}
        if not categories:
            raise InputError(f"VIP video {name!r}: no parsing maps in {catd}")
        instd = root / "Instance_ids" / name
        instances = {p.stem: p for p in sorted(instd.glob("*.png"))} if instd.is_dir() else {}
        video = VIPVideo(name, frames, categories, instances)
        if not video.annotated:
            raise InputError(f"VIP video {name!r}: no parsing map is named after a frame of {fdir}")
        out.append(video)
    return out


def read_label_map(path: str | Path) -> np.ndarray:
    """A parsing / prediction PNG as ``[H, W]`` int64 ids (3-channel files: the last channel, as CRW reads)."""
    a = np.asarray(Image.open(path))
    if a.ndim == 3:
        a = a[..., -1]
    return a.astype(np.int64)


def resize_nearest(pred: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an id map to ``(H, W)`` (PIL's nearest, as cv2 INTER_NEAREST)."""
    if pred.shape == tuple(shape):
        return pred
    img = Image.fromarray(pred.astype(np.int32), mode="I")
    return np.asarray(img.resize((shape[1], shape[0]), Image.NEAREST)).astype(np.int64)


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, n: int = NUM_CLASSES) -> np.ndarray:
    """``[n, n + 1]`` counts: row = ground-truth class, column = predicted class (column ``n``: predicted ids
    outside ``[0, n)``). Pixels whose ground truth is outside ``[0, n)`` are ignored."""
    if gt.shape != pred.shape:
        raise InputError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
    keep = (gt >= 0) & (gt < n)
    g = gt[keep]
    p = pred[keep]
    p = np.where((p >= 0) & (p < n), p, n)
    return np.bincount(g * (n + 1) + p, minlength=n * (n + 1)).reshape(n, n + 1)


def parsing_scores(conf: np.ndarray) -> dict[str, Any]:
    """Pixel accuracy, mean class accuracy, per-class IoU, mIoU and fwIoU of a ``[n, n+1]`` confusion matrix.

    class accuracy_c = TP_c / GT_c (mean over classes with ground truth); IoU_c = TP_c / (GT_c + Pred_c - TP_c)
    (mean over classes with GT_c + Pred_c > 0); fwIoU = sum_c GT_c / total * IoU_c over classes with GT_c > 0.
    """
    n = conf.shape[0]
    tp = np.diag(conf[:, :n]).astype(np.float64)
    gt = conf.sum(1).astype(np.float64)
    pr = conf[:, :n].sum(0).astype(np.float64)
    total = gt.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = tp / gt
        iou = tp / (gt + pr - tp)
    freq = gt / total if total > 0 else gt
    present = gt > 0
    return {
        "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
        "mean_class_acc": float(np.nanmean(acc)) if present.any() else float("nan"),
        "iou": [None if np.isnan(v) else float(v) for v in iou],
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "fwiou": float((freq[present] * iou[present]).sum()),
        "pixels": int(total),
    }


# ---------------------------------------------------------------- instance-level AP^r / AP^r_vol
AP_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
AP_MATCHING = ("vip", "sds")


def mask_ious(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU ``[P, G]`` of boolean masks ``pred [P, H, W]`` and ``gt [G, H, W]`` (pixel counts; an empty union
    gives 0)."""
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    p = pred.reshape(len(pred), int(np.prod(pred.shape[1:]))).astype(np.float64)
    g = gt.reshape(len(gt), int(np.prod(gt.shape[1:]))).astype(np.float64)
    inter = p @ g.T
    union = p.sum(1)[:, None] + g.sum(1)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def frame_true_positives(ious: np.ndarray, scores: np.ndarray, thresholds: Sequence[float] = AP_THRESHOLDS,
                         matching: str = "vip") -> np.ndarray:
    """``[P, T]`` true-positive flags of the ``P`` predictions of one class in one frame against its ``G``
    ground-truth instances (``ious [P, G]``), per threshold (strict ``>``).

    ``vip``: a prediction is a TP iff its best IoU exceeds t (ATEN / CIHP ``test_inst_part_ap.py``); ``sds``:
    predictions by descending score each take the uncovered ground truth with the largest IoU, TP iff it exceeds
    t (SDS ``generalized_det_eval.m``)."""
    if matching not in AP_MATCHING:
        raise InputError(f"unknown AP matching {matching!r} (choose from {', '.join(AP_MATCHING)})")
    P = ious.shape[0]
    th = np.asarray(thresholds, dtype=np.float64)
    tp = np.zeros((P, len(th)), dtype=bool)
    if P == 0 or ious.shape[1] == 0:
        return tp
    if matching == "vip":
        return ious.max(1)[:, None] > th[None, :]
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    for k, t in enumerate(th):
        covered = np.zeros(ious.shape[1], dtype=bool)
        for i in order:
            if covered.all():
                break
            cand = np.where(~covered)[0]
            j = cand[np.argmax(ious[i, cand])]
            if ious[i, j] > t:
                tp[i, k] = True
                covered[j] = True
    return tp


def voc_average_precision(scores: Sequence[float], tp: Sequence[bool], n_gt: int) -> float:
    """VOC all-points interpolated AP of detections with ``scores`` and true-positive flags ``tp`` against
    ``n_gt`` ground truths (descending score, stable for ties; ``nan`` when ``n_gt == 0``)."""
    if n_gt <= 0:
        return float("nan")
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return 0.0
    order = np.argsort(-s, kind="stable")
    hit = np.asarray(tp, dtype=np.float64)[order]
    ctp = np.cumsum(hit)
    cfp = np.cumsum(1.0 - hit)
    rec = ctp / float(n_gt)
    prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


@dataclass
class InstanceFrame:
    """The instances of one scored frame: ground-truth masks ``[G, H, W]`` with classes ``[G]``, predicted masks
    ``[P, H, W]`` with classes ``[P]`` and scores ``[P]``."""

    gt_masks: np.ndarray
    gt_classes: np.ndarray
    pred_masks: np.ndarray
    pred_classes: np.ndarray
    pred_scores: np.ndarray

    @classmethod
    def from_maps(cls, gt_ids: np.ndarray, gt_class_of: dict[int, int], pred_ids: np.ndarray,
                  pred_class_of: dict[int, int], pred_score_of: dict[int, float]) -> InstanceFrame:
        """From id maps (0 = background): every id present with a class is one instance."""
        def split(ids, class_of):
            keys = [int(v) for v in np.unique(ids) if v != 0 and int(v) in class_of]
            masks = np.stack([ids == k for k in keys]) if keys else np.zeros((0,) + ids.shape, bool)
            return keys, masks, np.array([class_of[k] for k in keys], dtype=np.int64)

        _, gm, gc = split(gt_ids, gt_class_of)
        pk, pm, pc = split(pred_ids, pred_class_of)
        return cls(gm, gc, pm, pc, np.array([pred_score_of[k] for k in pk], dtype=np.float64))


class InstanceAPAccumulator:
    """Accumulates the instance-level AP^r over frames; :meth:`result` gives AP^r per threshold and AP^r_vol."""

    def __init__(self, classes: Sequence[int] = tuple(range(1, NUM_CLASSES)),
                 thresholds: Sequence[float] = AP_THRESHOLDS, matching: str = "vip"):
        if matching not in AP_MATCHING:
            raise InputError(f"unknown AP matching {matching!r} (choose from {', '.join(AP_MATCHING)})")
        self.classes = [int(c) for c in classes]
        self.thresholds = [float(t) for t in thresholds]
        self.matching = matching
        self.n_gt = {c: 0 for c in self.classes}
        self.scores: dict[int, list[np.ndarray]] = {c: [] for c in self.classes}
        self.tps: dict[int, list[np.ndarray]] = {c: [] for c in self.classes}
        self.frames = 0

    def add(self, frame: InstanceFrame) -> None:
        self.frames += 1
        for c in self.classes:
            g = frame.gt_classes == c
            p = frame.pred_classes == c
            self.n_gt[c] += int(g.sum())
            if not p.any():
                continue
            scores = frame.pred_scores[p]
            ious = mask_ious(frame.pred_masks[p], frame.gt_masks[g])
            self.scores[c].append(scores)
            self.tps[c].append(frame_true_positives(ious, scores, self.thresholds, self.matching))

    def result(self) -> dict[str, Any]:
        T = len(self.thresholds)
        per_class = {}
        for c in self.classes:
            s = np.concatenate(self.scores[c]) if self.scores[c] else np.zeros(0)
            tp = np.concatenate(self.tps[c]) if self.tps[c] else np.zeros((0, T), bool)
            per_class[c] = [voc_average_precision(s, tp[:, k], self.n_gt[c]) for k in range(T)]
        scored = [c for c in self.classes if self.n_gt[c] > 0]
        ap = [float(np.mean([per_class[c][k] for c in scored])) if scored else float("nan") for k in range(T)]
        return {
            "thresholds": self.thresholds,
            "ap_r": ap,
            "ap_r_vol": float(np.mean(ap)) if scored else float("nan"),
            "ap_r_per_class": {str(c): (None if self.n_gt[c] == 0 else [float(v) for v in per_class[c]])
                               for c in self.classes},
            "classes_without_gt": [c for c in self.classes if self.n_gt[c] == 0],
            "gt_instances": int(sum(self.n_gt.values())),
            "pred_instances": int(sum(len(x) for v in self.scores.values() for x in v)),
            "matching": self.matching,
            "frames": self.frames,
        }


def instance_ap(frames: Sequence[InstanceFrame], classes: Sequence[int] = tuple(range(1, NUM_CLASSES)),
                thresholds: Sequence[float] = AP_THRESHOLDS, matching: str = "vip") -> dict[str, Any]:
    """AP^r at every threshold (``ap_r``, mean over the classes with ground truth) and AP^r_vol (``ap_r_vol``,
    mean over the thresholds) of a list of frames; see the module docstring for the definition."""
    acc = InstanceAPAccumulator(classes, thresholds, matching)
    for f in frames:
        acc.add(f)
    return acc.result()


def score_parts(videos: Sequence[VIPVideo], pred_dir: str | Path, include_first: bool = False,
                n: int = NUM_CLASSES) -> dict[str, Any]:
    """Score ``<pred_dir>/<video>/<frame>.png`` against every annotated frame (the first one only with
    ``include_first``); a missing prediction is an :class:`InputError`."""
    conf = np.zeros((n, n + 1), dtype=np.int64)
    frames = 0
    for v in videos:
        idx = v.annotated if include_first else v.annotated[1:]
        for i in idx:
            stem = v.frames[i].stem
            p = Path(pred_dir) / v.name / f"{stem}.png"
            if not p.is_file():
                raise InputError(f"missing prediction {p} for annotated frame {stem} of {v.name}")
            gt = read_label_map(v.categories[stem])
            conf += confusion_matrix(gt, resize_nearest(read_label_map(p), gt.shape), n)
            frames += 1
    res = parsing_scores(conf)
    res["frames"] = frames
    res["videos"] = len(videos)
    return res


def propagate_parts(videos: Sequence[VIPVideo], propagator, out_dir: str | Path, max_frames: int | None = None,
                    log=None) -> None:
    """Propagate each video's first parsing map (every class id present = one object, 0 = background) and write
    the predictions of its annotated frames to ``<out_dir>/<video>/<frame>.png``."""
    from ..io.masks import write_mask

    for v in videos:
        first = v.annotated[0]
        frames = v.frames[: max_frames] if max_frames else v.frames
        mask = read_label_map(v.categories[v.frames[first].stem])
        wanted = {v.frames[i].stem for i in v.annotated}
        out = Path(out_dir) / v.name
        out.mkdir(parents=True, exist_ok=True)
        source = ImageFolderSource(frames[0].parent)
        source.files = list(frames)
        if mask.min() < 0 or mask.max() > 255:
            raise InputError(f"{v.name}: parsing ids must be in 0..255")
        for t, pred in propagator.propagate(source, masks={first: mask.astype(np.uint8)}):
            stem = frames[t].stem
            if stem in wanted:
                write_mask(out / f"{stem}.png", pred)
        if log:
            log(f"{v.name}: {len(frames)} frames")


def read_instance_gt(video: VIPVideo, stem: str) -> tuple[np.ndarray, dict[int, int]]:
    """Ground-truth instance-part map of an annotated frame and the class of each id.

    With ``Instance_ids/<video>/<stem>.txt`` (the official layout, read as ATEN's ``test_inst_part_ap.py`` reads
    it: first column id, second column class) the PNG ids are the instances. Without it, each (instance id,
    ``Category_ids`` class) pair with both non-zero is one instance (renumbered 1..N) -- the same instances when
    the PNG holds instance-part ids, the (person, part) regions when it holds person ids."""
    if stem not in video.instances:
        raise InputError(f"VIP video {video.name!r}: no instance annotation for frame {stem}")
    ids = read_label_map(video.instances[stem])
    txt = video.instances[stem].with_suffix(".txt")
    if txt.is_file():
        class_of = {}
        for ln in txt.read_text().splitlines():
            cols = ln.split()
            if len(cols) >= 2:
                class_of[int(cols[0])] = int(cols[1])
        return ids, class_of
    cats = read_label_map(video.categories[stem])
    if cats.shape != ids.shape:
        raise InputError(f"VIP video {video.name!r} frame {stem}: Instance_ids and Category_ids differ in size")
    keep = (ids > 0) & (cats > 0) & (cats < NUM_CLASSES)
    pairs = np.unique(np.stack([ids[keep], cats[keep]], 1), axis=0) if keep.any() else np.zeros((0, 2), np.int64)
    out = np.zeros_like(ids)
    class_of = {}
    for k, (i, c) in enumerate(pairs, start=1):
        out[keep & (ids == i) & (cats == c)] = k
        class_of[k] = int(c)
    return out, class_of


def has_instance_gt(videos: Sequence[VIPVideo]) -> bool:
    """Whether every annotated frame of ``videos`` has an instance annotation (``Instance_ids/<video>/<frame>.png``)."""
    return bool(videos) and all(v.frames[i].stem in v.instances for v in videos for i in v.annotated)


def write_instance_prediction(path_png: str | Path, ids: np.ndarray, classes: dict[int, int],
                              scores: dict[int, float]) -> None:
    """Write a predicted instance-part map in ATEN's format: ``.png`` with ids renumbered 1..M (M <= 255) and a
    ``.txt`` whose line i is ``<class id> <score>`` of id i."""
    path_png = Path(path_png)
    keys = [int(v) for v in np.unique(ids) if v != 0]
    if len(keys) > 255:
        raise InputError(f"{path_png}: more than 255 predicted instances")
    out = np.zeros(ids.shape, np.uint8)
    lines = []
    for k, key in enumerate(keys, start=1):
        out[ids == key] = k
        lines.append(f"{classes[key]} {scores[key]:.6f}")
    Image.fromarray(out).save(path_png)
    path_png.with_suffix(".txt").write_text("".join(ln + "\n" for ln in lines))


def read_instance_prediction(path_png: str | Path) -> tuple[np.ndarray, dict[int, int], dict[int, float]]:
    """A predicted instance-part map in ATEN's format (see :func:`write_instance_prediction`)."""
    path_png = Path(path_png)
    txt = path_png.with_suffix(".txt")
    if not path_png.is_file() or not txt.is_file():
        raise InputError(f"missing instance prediction {path_png} (+ .txt)")
    ids = read_label_map(path_png)
    classes, scores = {}, {}
    for k, ln in enumerate((ln for ln in txt.read_text().splitlines() if ln.strip()), start=1):
        cols = ln.split()
        classes[k] = int(cols[0])
        scores[k] = float(cols[1])
    return ids, classes, scores


def score_instance_parts(videos: Sequence[VIPVideo], pred_dir: str | Path, include_first: bool = False,
                         matching: str = "vip", thresholds: Sequence[float] = AP_THRESHOLDS) -> dict[str, Any]:
    """AP^r per threshold and AP^r_vol of ``<pred_dir>/<video>/<frame>.png`` (+ ``.txt``, ATEN's format) over the
    annotated frames (the first one only with ``include_first``); predictions are nearest-resized to the ground
    truth."""
    acc = InstanceAPAccumulator(thresholds=thresholds, matching=matching)
    for v in videos:
        idx = v.annotated if include_first else v.annotated[1:]
        for i in idx:
            stem = v.frames[i].stem
            gt, gt_class = read_instance_gt(v, stem)
            ids, classes, scores = read_instance_prediction(Path(pred_dir) / v.name / f"{stem}.png")
            ids = resize_nearest(ids, gt.shape)
            acc.add(InstanceFrame.from_maps(gt, gt_class, ids, classes, scores))
    res = acc.result()
    res["videos"] = len(videos)
    return res


def propagate_instance_parts(videos: Sequence[VIPVideo], propagator, out_dir: str | Path,
                             max_frames: int | None = None, log=None) -> None:
    """Propagate each video's first instance-part map (every (person, part) instance = one object) and write the
    predicted instances of its annotated frames to ``<out_dir>/<video>/<frame>.png`` + ``.txt`` (ATEN's format;
    score = mean decoded probability of the object over its predicted region)."""
    from ..labels.masks import decode_probs

    for v in videos:
        first = v.annotated[0]
        frames = v.frames[: max_frames] if max_frames else v.frames
        gt, class_of = read_instance_gt(v, v.frames[first].stem)
        keys = [int(k) for k in np.unique(gt) if k != 0 and int(k) in class_of]
        if len(keys) > 255:
            raise InputError(f"{v.name}: more than 255 instances in the first annotated frame")
        obj = np.zeros(gt.shape, np.uint8)
        obj_class = {}
        for o, k in enumerate(keys, start=1):
            obj[gt == k] = o
            obj_class[o] = class_of[k]
        wanted = {v.frames[i].stem for i in v.annotated}
        out = Path(out_dir) / v.name
        out.mkdir(parents=True, exist_ok=True)
        if not keys:  # nothing to propagate: no predicted instance in any frame
            for f in frames:
                if f.stem in wanted:
                    write_instance_prediction(out / f"{f.stem}.png", np.zeros(gt.shape, np.uint8), {}, {})
            continue
        source = ImageFolderSource(frames[0].parent)
        source.files = list(frames)
        geometry = None
        for r in propagator.run(source, masks={first: obj}):
            stem = frames[r.index].stem
            if stem not in wanted:
                continue
            present = [int(o) for o in np.unique(r.mask) if o != 0]
            scores = {o: 1.0 for o in present}
            if r.probs is not None and present:
                H, W = r.mask.shape
                if geometry is None or (geometry.height, geometry.width) != (H, W):
                    geometry = propagator.extractor.geometry(H, W)
                dec = decode_probs(r.probs, geometry, propagator.preset.labels.output_minmax).numpy()
                for o in present:
                    scores[o] = float(dec[1 + r.object_ids.index(o)][r.mask == o].mean())
            write_instance_prediction(out / f"{stem}.png", r.mask, obj_class, scores)
        if log:
            log(f"{v.name}: {len(frames)} frames, {len(keys)} instances")


def format_parts_markdown(res: dict[str, Any]) -> str:
    rows = ["| metric | value |", "|---|---|"]
    for key in ("miou", "pixel_acc", "mean_class_acc", "fwiou"):
        rows.append(f"| {key} | {res[key]:.4f} |")
    rows.append(f"| frames scored | {res['frames']} ({res['videos']} videos) |")
    ap = res.get("instance_ap")
    if ap:
        rows.append(f"| AP^r_vol ({ap['matching']}) | {ap['ap_r_vol']:.4f} |")
        for t, v in zip(ap["thresholds"], ap["ap_r"]):
            rows.append(f"| AP^r@{t:.1f} | {v:.4f} |")
        rows.append(f"| instances (GT / predicted) | {ap['gt_instances']} / {ap['pred_instances']} |")
    return "\n".join(rows) + "\n"


def write_results(res: dict[str, Any], out_dir: str | Path) -> Path:
    path = Path(out_dir) / "parts.json"
    path.write_text(json.dumps({**res, "classes": list(VIP_CLASSES)}, indent=2))
    (Path(out_dir) / "parts.md").write_text(format_parts_markdown(res))
    return path
