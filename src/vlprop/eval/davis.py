"""DAVIS region (J) and boundary (F) metrics, exactly as the official DAVIS 2017 evaluation defines them.

Reference: ``davisvideochallenge/davis2017-evaluation`` (``davis2017/metrics.py``, ``utils.py``,
``evaluation.py``), summarised in ``shared/specs/reference-implementations.md`` section 4. Every number
produced here equals the official tool's, with one deliberate exception behind a flag: the official
decay bins cast their indices to ``uint8``, which wraps around for sequences of more than 256
evaluated frames (empty last bin -> NaN decay, or silently wrong bins). Our default uses integer
indices; ``compat_uint8_decay=True`` reproduces the original.

Conventions
-----------
* Masks are numpy arrays ``[H, W]`` (one frame) or ``[T, H, W]`` (a stack); boolean for binary masks,
  integer for label maps (0 = background, 1..K = object ids, 255 = void in DAVIS-2017 annotations).
* J and F are per-frame floats in [0, 1].
* Semi-supervised task: frames ``1 .. T-2`` are scored (first and last dropped), objects are ids
  ``1..K`` with ``K = max id of GT frame 0``, void pixels count as background, a prediction id > K is
  an error and ids missing from the prediction are scored as empty masks.
* Unsupervised task: all frames, GT void (255) pixels excluded from both masks, at most 20 proposals,
  proposals matched to GT objects by the Hungarian algorithm maximising mean (J + F) / 2.

Speed: F dominates the cost. The boundary of each mask is extracted once per frame on the mask's
bounding box, dilated once with ``cv2.dilate`` on the bounding box of its boundary, and every
precision/recall count is a lookup of boundary coordinates into a dilated crop. This is exact (the
cropped-away region contains no boundary pixel and dilation never reaches further than the kernel
radius) and is tested against a literal full-frame implementation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable, Sequence

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from vlprop.errors import InputError

__all__ = [
    "VOID_LABEL",
    "MAX_PROPOSALS",
    "db_eval_iou",
    "seg2bmap",
    "bound_pix",
    "disk",
    "f_measure",
    "db_eval_boundary",
    "decay_bin_indices",
    "db_statistics",
    "frame_scores",
    "SequenceScores",
    "SemiSupervisedSequence",
    "UnsupervisedSequence",
    "evaluate_semisupervised",
    "evaluate_unsupervised",
]

VOID_LABEL = 255
MAX_PROPOSALS = 20
DEFAULT_BOUND_TH = 0.008


# ---------------------------------------------------------------------------------------------------
# Region similarity J
# ---------------------------------------------------------------------------------------------------
def db_eval_iou(annotation: np.ndarray, segmentation: np.ndarray,
                void_pixels: np.ndarray | None = None) -> float | np.ndarray:
    """Jaccard index ``|S ∩ G \\ V| / |S ∪ G \\ V|`` of binary masks ``[..., H, W]``.

    Returns a float for one frame, an array ``[...]`` for stacks. An empty union (both masks empty
    outside the void) scores 1, as in the official code.
    """
    annotation = np.asarray(annotation).astype(bool)
    segmentation = np.asarray(segmentation).astype(bool)
    if annotation.shape != segmentation.shape:
        raise ValueError(f"annotation {annotation.shape} and segmentation {segmentation.shape} differ in shape")
    valid = None
    if void_pixels is not None:
        void_pixels = np.asarray(void_pixels).astype(bool)
        if void_pixels.shape != annotation.shape:
            raise ValueError(f"annotation {annotation.shape} and void {void_pixels.shape} differ in shape")
        valid = ~void_pixels
    inter = segmentation & annotation
    union = segmentation | annotation
    if valid is not None:
        inter &= valid
        union &= valid
    inters = np.count_nonzero(inter, axis=(-2, -1))
    unions = np.count_nonzero(union, axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        j = np.where(unions == 0, 1.0, inters / np.maximum(unions, 1))
    return float(j) if j.ndim == 0 else j.astype(np.float64)


# ---------------------------------------------------------------------------------------------------
# Boundary F
# ---------------------------------------------------------------------------------------------------
def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel boundary map ``[H, W]`` (bool) of a binary mask, with the official rules.

    A pixel is a boundary pixel if it differs from its east, south or south-east neighbour; on the
    last row only the east neighbour is compared, on the last column only the south neighbour, and the
    bottom-right pixel is never a boundary pixel. (The boundary sits half a pixel towards the origin.)
    """
    seg = np.asarray(seg).astype(bool)
    if seg.ndim != 2:
        raise ValueError(f"seg2bmap expects a 2-D mask, got shape {seg.shape}")
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def bound_pix(height: int, width: int, bound_th: float = DEFAULT_BOUND_TH) -> float:
    """Boundary tolerance in pixels: ``bound_th`` if it is >= 1, else ``ceil(bound_th * diagonal)``.

    ``bound_pix(480, 854) == 8``.
    """
    if bound_th >= 1:
        return float(bound_th)
    return float(np.ceil(bound_th * np.linalg.norm([height, width])))


@lru_cache(maxsize=32)
def _disk_cached(radius: float) -> np.ndarray:
    grid = np.arange(-radius, radius + 1)
    x, y = np.meshgrid(grid, grid)
    out = ((x ** 2 + y ** 2) <= radius ** 2).astype(np.uint8)
    out.setflags(write=False)
    return out


def disk(radius: float) -> np.ndarray:
    """Disk structuring element ``[n, n]`` uint8, identical to ``skimage.morphology.disk(radius)``.

    Points ``(x, y)`` of the grid ``arange(-r, r + 1)`` with ``x² + y² <= r²``. OpenCV's
    ``MORPH_ELLIPSE`` is *not* this shape for r >= 2 (it differs by 16 pixels at r = 8), so the kernel
    is built here and passed to ``cv2.dilate``.
    """
    return _disk_cached(float(radius))


@dataclass
class _Boundary:
    """Boundary pixels of one mask (absolute coordinates) plus its dilation on a crop."""

    ys: np.ndarray
    xs: np.ndarray
    dil: np.ndarray | None = None  # uint8 crop of the dilated boundary
    y0: int = 0
    x0: int = 0

    @property
    def count(self) -> int:
        return int(self.ys.size)


_EMPTY_COORDS = np.zeros(0, dtype=np.intp)


def _boundary(mask: np.ndarray, kernel: np.ndarray) -> _Boundary:
    """Boundary of a bool mask ``[H, W]`` (official seg2bmap rules) and its dilation by ``kernel``."""
    h, w = mask.shape
    row_any = mask.any(axis=1)
    if not row_any.any():
        return _Boundary(_EMPTY_COORDS, _EMPTY_COORDS)
    rows = np.flatnonzero(row_any)
    cols = np.flatnonzero(mask.any(axis=0))
    # Boundary pixels lie in rows [rmin-1, rmax] and cols [cmin-1, cmax]; one extra row/column below and
    # right is included so that every candidate sees its real E/S/SE neighbours. Edge replication then
    # reproduces the official last-row/last-column rules exactly (and is exact inside the image too,
    # where the extra row/column is all background).
    y0, y1 = max(int(rows[0]) - 1, 0), min(int(rows[-1]) + 2, h)
    x0, x1 = max(int(cols[0]) - 1, 0), min(int(cols[-1]) + 2, w)
    sub = np.pad(mask[y0:y1, x0:x1], ((0, 1), (0, 1)), mode="edge")
    c = sub[:-1, :-1]
    b = (c != sub[:-1, 1:]) | (c != sub[1:, :-1]) | (c != sub[1:, 1:])
    flat = np.flatnonzero(b)  # much faster than 2-D np.nonzero
    if flat.size == 0:
        return _Boundary(_EMPTY_COORDS, _EMPTY_COORDS)
    ys, xs = np.divmod(flat, b.shape[1])
    ys += y0
    xs += x0
    # Dilate only the bounding box of the boundary grown by the kernel reach (cv2 anchors the kernel at
    # its centre, size // 2); outside the crop the dilation is empty, as outside the image it is in cv2.
    reach = kernel.shape[0] // 2
    dy0, dy1 = max(int(ys.min()) - reach, 0), min(int(ys.max()) + reach + 1, h)
    dx0, dx1 = max(int(xs.min()) - reach, 0), min(int(xs.max()) + reach + 1, w)
    crop = np.zeros((dy1 - dy0, dx1 - dx0), dtype=np.uint8)
    crop[ys - dy0, xs - dx0] = 1
    dil = cv2.dilate(crop, kernel)
    return _Boundary(ys, xs, dil, dy0, dx0)


def _hits(dilated: _Boundary, points: _Boundary) -> int:
    """Number of ``points`` boundary pixels covered by the dilation of ``dilated``."""
    if dilated.dil is None or points.count == 0:
        return 0
    yy = points.ys - dilated.y0
    xx = points.xs - dilated.x0
    hh, ww = dilated.dil.shape
    inside = (yy >= 0) & (yy < hh) & (xx >= 0) & (xx < ww)
    return int(np.count_nonzero(dilated.dil[yy[inside], xx[inside]]))


def _f_from_boundaries(fg: _Boundary, gt: _Boundary) -> float:
    """F-measure with every official empty-boundary rule."""
    n_fg, n_gt = fg.count, gt.count
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = _hits(gt, fg) / float(n_fg)
        recall = _hits(fg, gt) / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _kernel_for(shape: tuple[int, int], bound_th: float) -> np.ndarray:
    return disk(bound_pix(shape[0], shape[1], bound_th))


def f_measure(foreground_mask: np.ndarray, gt_mask: np.ndarray, void_pixels: np.ndarray | None = None,
              bound_th: float = DEFAULT_BOUND_TH) -> float:
    """Boundary F-measure of one binary prediction ``[H, W]`` against one binary GT ``[H, W]``.

    Void pixels are removed from both masks before boundary extraction. Precision = fraction of
    predicted boundary pixels within ``bound_pix`` (disk) of the GT boundary, recall the converse.
    Empty boundaries: prediction empty & GT not -> 0; GT empty & prediction not -> 0; both -> 1.
    """
    fg = np.asarray(foreground_mask).astype(bool)
    gt = np.asarray(gt_mask).astype(bool)
    if fg.ndim != 2 or fg.shape != gt.shape:
        raise ValueError(f"f_measure expects two 2-D masks of one shape, got {fg.shape} and {gt.shape}")
    if void_pixels is not None:
        valid = ~np.asarray(void_pixels).astype(bool)
        fg = fg & valid
        gt = gt & valid
    kernel = _kernel_for(fg.shape, bound_th)
    return _f_from_boundaries(_boundary(fg, kernel), _boundary(gt, kernel))


def db_eval_boundary(annotation: np.ndarray, segmentation: np.ndarray, void_pixels: np.ndarray | None = None,
                     bound_th: float = DEFAULT_BOUND_TH) -> float | np.ndarray:
    """F for one frame ``[H, W]`` (float) or per frame of a stack ``[T, H, W]`` (array ``[T]``)."""
    annotation = np.asarray(annotation)
    segmentation = np.asarray(segmentation)
    if annotation.shape != segmentation.shape:
        raise ValueError(f"annotation {annotation.shape} and segmentation {segmentation.shape} differ in shape")
    if annotation.ndim == 2:
        return f_measure(segmentation, annotation, void_pixels, bound_th)
    if annotation.ndim != 3:
        raise ValueError(f"db_eval_boundary supports [H, W] or [T, H, W], got {annotation.ndim} dimensions")
    out = np.zeros(annotation.shape[0])
    for t in range(annotation.shape[0]):
        void_t = None if void_pixels is None else void_pixels[t]
        out[t] = f_measure(segmentation[t], annotation[t], void_t, bound_th)
    return out


# ---------------------------------------------------------------------------------------------------
# Per-object statistics
# ---------------------------------------------------------------------------------------------------
def decay_bin_indices(n: int, compat_uint8: bool = False) -> np.ndarray:
    """Edges of the 4 decay bins for ``n`` per-frame values: ``round(linspace(1, n, 5) + 1e-10) - 1``.

    Bin i is ``X[ids[i] : ids[i+1] + 1]`` (edges shared). ``n = 100`` gives ``[0, 25, 50, 74, 99]``.
    With ``compat_uint8`` the indices wrap modulo 256 like the official ``astype(np.uint8)`` does on
    x86 (a float->uint8 cast is undefined in C for out-of-range values; the wrap is emulated through
    int64 so the result is deterministic everywhere).
    """
    ids = np.round(np.linspace(1, n, 5) + 1e-10) - 1
    ids = ids.astype(np.int64)
    if compat_uint8:
        ids = ids % 256
    return ids


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0 or np.all(np.isnan(x)):
        return float("nan")
    return float(np.nanmean(x))


def db_statistics(per_frame_values: Sequence[float] | np.ndarray,
                  compat_uint8_decay: bool = False) -> tuple[float, float, float]:
    """Mean, recall and decay of one object's per-frame scores.

    * mean = nanmean(X); recall = mean(X > 0.5) (strict; a NaN frame counts as a miss, as officially);
    * decay = nanmean(bin 0) - nanmean(bin 3) with the bins of :func:`decay_bin_indices`.
    No frames -> (nan, nan, nan).
    """
    x = np.asarray(per_frame_values, dtype=np.float64).ravel()
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = _nanmean(x)
    recall = float(np.mean(x > 0.5))
    ids = decay_bin_indices(x.size, compat_uint8=compat_uint8_decay)
    bins = [x[ids[i]: ids[i + 1] + 1] for i in range(4)]
    decay = _nanmean(bins[0]) - _nanmean(bins[3])
    return mean, recall, decay


# ---------------------------------------------------------------------------------------------------
# Per-frame scoring of label maps
# ---------------------------------------------------------------------------------------------------
def frame_scores(gt_labels: np.ndarray, pred_labels: np.ndarray, gt_ids: Sequence[int],
                 pred_ids: Sequence[int], void: np.ndarray | None = None,
                 bound_th: float = DEFAULT_BOUND_TH, diagonal: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """J and F between label maps ``[H, W]`` for pairs of (predicted id, GT id) in one frame.

    Returns ``(J, F)`` of shape ``[len(pred_ids), len(gt_ids)]``, or ``[len(gt_ids)]`` pairing
    ``pred_ids[k]`` with ``gt_ids[k]`` when ``diagonal`` (then both lists must have one length). ``void``
    ``[H, W]`` bool marks pixels removed from every mask. Ids are compared as values (non-negative
    integers); an id absent from a map is an empty mask.
    """
    j, f, _, _ = _frame_scores(gt_labels, pred_labels, gt_ids, pred_ids, void, bound_th, diagonal)
    return j, f


def _frame_scores(gt_labels: np.ndarray, pred_labels: np.ndarray, gt_ids: Sequence[int],
                  pred_ids: Sequence[int], void: np.ndarray | None, bound_th: float,
                  diagonal: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`frame_scores` plus, per GT object, its valid area and boundary pixel count."""
    gt_labels = np.asarray(gt_labels)
    pred_labels = np.asarray(pred_labels)
    if gt_labels.shape != pred_labels.shape or gt_labels.ndim != 2:
        raise ValueError(f"label maps must be 2-D of one shape, got {gt_labels.shape} and {pred_labels.shape}")
    gt_ids = [int(i) for i in gt_ids]
    pred_ids = [int(i) for i in pred_ids]
    if min(gt_ids + pred_ids, default=0) < 0:
        raise ValueError("object ids must be non-negative")
    if diagonal and len(gt_ids) != len(pred_ids):
        raise ValueError("diagonal pairing needs as many predicted ids as GT ids")
    n_g, n_p = len(gt_ids), len(pred_ids)

    valid = None if void is None else ~np.asarray(void, dtype=bool)

    def masks(labels: np.ndarray, ids: list[int]) -> list[np.ndarray]:
        out = []
        for obj in ids:
            m = labels == obj
            if valid is not None:
                m &= valid
            out.append(m)
        return out

    # Boolean masks and counts are cheap on uint8 maps (a joint histogram costs more for few objects).
    m_g, m_p = masks(gt_labels, gt_ids), masks(pred_labels, pred_ids)
    area_g = np.array([np.count_nonzero(m) for m in m_g], dtype=np.float64)
    area_p = np.array([np.count_nonzero(m) for m in m_p], dtype=np.float64)

    def jaccard(p: int, g: int) -> float:
        if area_p[p] == 0 or area_g[g] == 0:
            inter = 0.0
        else:
            inter = float(np.count_nonzero(m_p[p] & m_g[g]))
        union = area_p[p] + area_g[g] - inter
        return 1.0 if union == 0 else inter / union

    if diagonal:
        j = np.array([jaccard(k, k) for k in range(n_g)], dtype=np.float64)
    else:
        j = np.array([[jaccard(p, g) for g in range(n_g)] for p in range(n_p)], dtype=np.float64).reshape(n_p, n_g)

    # F: one boundary extraction and one dilation per mask, counts by coordinate lookup.
    kernel = _kernel_for(gt_labels.shape, bound_th)

    empty = _Boundary(_EMPTY_COORDS, _EMPTY_COORDS)
    b_g = [_boundary(m, kernel) if a else empty for m, a in zip(m_g, area_g)]
    b_p = [_boundary(m, kernel) if a else empty for m, a in zip(m_p, area_p)]
    gt_bcount = np.array([b.count for b in b_g], dtype=np.int64)
    if diagonal:
        f = np.array([_f_from_boundaries(b_p[k], b_g[k]) for k in range(n_g)], dtype=np.float64)
        return j, f, area_g, gt_bcount
    f = np.zeros((n_p, n_g), dtype=np.float64)
    for p in range(n_p):
        for g in range(n_g):
            f[p, g] = _f_from_boundaries(b_p[p], b_g[g])
    return j, f, area_g, gt_bcount


# ---------------------------------------------------------------------------------------------------
# Sequences
# ---------------------------------------------------------------------------------------------------
@dataclass
class SequenceScores:
    """Per-frame scores of the GT objects of one sequence.

    ``J[k]``, ``F[k]`` are the per-frame values ``[n_frames]`` of GT object ``object_ids[k]``;
    ``frames`` names the scored frames; ``proposals[k]`` is the matched proposal id (unsupervised
    task, 0 = a zero-padded empty proposal) or ``object_ids[k]`` itself (semi-supervised).
    """

    object_ids: list[int]
    J: np.ndarray
    F: np.ndarray
    frames: list[str]
    proposals: list[int] = field(default_factory=list)

    def statistics(self, compat_uint8_decay: bool = False) -> list[dict[str, float]]:
        """Per object: ``J-Mean, J-Recall, J-Decay, F-Mean, F-Recall, F-Decay``."""
        out = []
        for k in range(len(self.object_ids)):
            jm, jr, jd = db_statistics(self.J[k], compat_uint8_decay)
            fm, fr, fd = db_statistics(self.F[k], compat_uint8_decay)
            out.append({"J-Mean": jm, "J-Recall": jr, "J-Decay": jd, "F-Mean": fm, "F-Recall": fr, "F-Decay": fd})
        return out


def _frame_label(frame: str | int | None) -> str:
    return "" if frame is None else f" (frame {frame})"


def _max_label(labels: np.ndarray) -> int:
    return int(labels.max(initial=0))


class SemiSupervisedSequence:
    """Accumulates the semi-supervised scores of one sequence, frame by frame.

    Create it with GT frame 0 (it fixes ``K = max id`` after void removal, objects ``1..K``), then
    :meth:`add` the *evaluated* frames (1 .. T-2) as (GT, prediction) label maps. Void (255) in the GT
    is background, as in the official semi-supervised evaluation.
    """

    def __init__(self, first_gt: np.ndarray, bound_th: float = DEFAULT_BOUND_TH,
                 object_ids: Sequence[int] | None = None):
        first = np.asarray(first_gt)
        first = np.where(first == VOID_LABEL, 0, first)
        self.num_objects = _max_label(first)
        self.object_ids = list(range(1, self.num_objects + 1)) if object_ids is None else [int(i) for i in object_ids]
        if any(not 0 < i < VOID_LABEL for i in self.object_ids):
            raise ValueError(f"object ids must lie in 1..254, got {self.object_ids}")
        self.bound_th = bound_th
        self._j: list[np.ndarray] = []
        self._f: list[np.ndarray] = []
        self._frames: list[str] = []

    def add(self, gt_labels: np.ndarray, pred_labels: np.ndarray, frame: str | int | None = None) -> None:
        gt = np.asarray(gt_labels)
        pred = np.asarray(pred_labels)
        if gt.shape != pred.shape:
            raise InputError(f"prediction shape {pred.shape} differs from GT shape {gt.shape}{_frame_label(frame)}")
        limit = max(self.object_ids, default=0)
        top = _max_label(pred)
        if top > limit:
            raise InputError(
                f"prediction contains object id {top} but the sequence has {limit} object(s) (ids > K are "
                f"not allowed in the semi-supervised task){_frame_label(frame)}")
        # Void (255) is plain background here; since every object id is < 255 it never matches an object
        # mask, so the GT needs no rewriting.
        j, f = frame_scores(gt, pred, self.object_ids, self.object_ids, None, self.bound_th, diagonal=True)
        self._j.append(j)
        self._f.append(f)
        self._frames.append("" if frame is None else str(frame))

    def result(self) -> SequenceScores:
        k = len(self.object_ids)
        j = np.stack(self._j, axis=1) if self._j else np.zeros((k, 0))
        f = np.stack(self._f, axis=1) if self._f else np.zeros((k, 0))
        return SequenceScores(list(self.object_ids), j, f, list(self._frames), list(self.object_ids))


class UnsupervisedSequence:
    """Accumulates the unsupervised scores of one sequence (all frames, frame 0 included).

    ``K`` = max GT id of frame 0 (void removed); GT void pixels are excluded from every mask; each
    proposal id ``1..N`` (N = max predicted id over all frames, at most ``max_proposals``) is scored
    against every GT object and :meth:`result` matches proposals to objects (Hungarian algorithm on
    ``-(mean J + mean F) / 2``); unmatched objects get an empty proposal.
    """

    def __init__(self, first_gt: np.ndarray, bound_th: float = DEFAULT_BOUND_TH,
                 max_proposals: int = MAX_PROPOSALS):
        first = np.asarray(first_gt)
        self.num_objects = _max_label(np.where(first == VOID_LABEL, 0, first))
        self.object_ids = list(range(1, self.num_objects + 1))
        self.bound_th = bound_th
        self.max_proposals = max_proposals
        self._j: list[np.ndarray] = []  # per frame [n_prop_t, K]
        self._f: list[np.ndarray] = []
        self._j_empty: list[np.ndarray] = []  # per frame [K]: scores of an empty proposal
        self._f_empty: list[np.ndarray] = []
        self._frames: list[str] = []
        self.num_proposals = 0

    def add(self, gt_labels: np.ndarray, pred_labels: np.ndarray, frame: str | int | None = None) -> None:
        gt = np.asarray(gt_labels)
        pred = np.asarray(pred_labels)
        if gt.shape != pred.shape:
            raise InputError(f"prediction shape {pred.shape} differs from GT shape {gt.shape}{_frame_label(frame)}")
        top = _max_label(pred)
        if top > self.max_proposals:
            raise InputError(
                f"prediction contains id {top}, more than the {self.max_proposals} proposals allowed in the "
                f"unsupervised task{_frame_label(frame)}")
        self.num_proposals = max(self.num_proposals, top)
        void = gt == VOID_LABEL
        gt = np.where(void, 0, gt)
        j, f, area_g, gt_bcount = _frame_scores(gt, pred, self.object_ids, list(range(1, top + 1)),
                                                void if void.any() else None, self.bound_th, False)
        # An id absent from this frame (or a zero-padded proposal) is an empty mask, whose scores follow
        # from the empty-mask rules: J = 1 iff the GT is empty too; F = 1 iff the GT boundary is empty.
        self._j_empty.append((area_g == 0).astype(np.float64))
        self._f_empty.append((gt_bcount == 0).astype(np.float64))
        self._j.append(j)
        self._f.append(f)
        self._frames.append("" if frame is None else str(frame))

    def result(self) -> SequenceScores:
        k, t = self.num_objects, len(self._frames)
        n = max(self.num_proposals, k)  # zero-pad proposals up to K, as officially
        jm = np.zeros((n, k, t))
        fm = np.zeros((n, k, t))
        for ti in range(t):
            rows = self._j[ti].shape[0]
            jm[:rows, :, ti] = self._j[ti]
            fm[:rows, :, ti] = self._f[ti]
            jm[rows:, :, ti] = self._j_empty[ti][None, :]
            fm[rows:, :, ti] = self._f_empty[ti][None, :]
        if k == 0:
            return SequenceScores([], np.zeros((0, t)), np.zeros((0, t)), list(self._frames), [])
        with np.errstate(invalid="ignore"):
            score = (jm.mean(axis=2) + fm.mean(axis=2)) / 2 if t else np.zeros((n, k))
        rows, cols = linear_sum_assignment(-score)
        prop_for = dict(zip(cols.tolist(), rows.tolist()))
        order = [prop_for[g] for g in range(k)]
        proposals = [p + 1 if p < self.num_proposals else 0 for p in order]
        return SequenceScores(list(self.object_ids), jm[order, range(k)], fm[order, range(k)],
                              list(self._frames), proposals)


def _as_frames(stack: np.ndarray | Iterable[np.ndarray]) -> list[np.ndarray]:
    if isinstance(stack, np.ndarray):
        if stack.ndim != 3:
            raise ValueError(f"expected a label stack [T, H, W], got shape {stack.shape}")
        return [stack[t] for t in range(stack.shape[0])]
    return [np.asarray(x) for x in stack]


def evaluate_semisupervised(gt: np.ndarray | Sequence[np.ndarray], pred: np.ndarray | Sequence[np.ndarray],
                            bound_th: float = DEFAULT_BOUND_TH,
                            object_ids: Sequence[int] | None = None) -> SequenceScores:
    """Semi-supervised scores of a whole sequence of label maps ``[T, H, W]`` (GT and prediction).

    Frames 1 .. T-2 are scored (the prediction's first and last frames are not read). ``object_ids``
    overrides the official ``1..K`` (e.g. to score objects that appear after frame 0).
    """
    gt_frames, pred_frames = _as_frames(gt), _as_frames(pred)
    if len(gt_frames) != len(pred_frames):
        raise InputError(f"prediction has {len(pred_frames)} frames, GT has {len(gt_frames)}")
    if not gt_frames:
        raise InputError("empty sequence")
    acc = SemiSupervisedSequence(gt_frames[0], bound_th, object_ids)
    for t in range(1, len(gt_frames) - 1):
        acc.add(gt_frames[t], pred_frames[t], t)
    return acc.result()


def evaluate_unsupervised(gt: np.ndarray | Sequence[np.ndarray], pred: np.ndarray | Sequence[np.ndarray],
                          bound_th: float = DEFAULT_BOUND_TH,
                          max_proposals: int = MAX_PROPOSALS) -> SequenceScores:
    """Unsupervised scores of a whole sequence of label maps ``[T, H, W]`` (all frames scored)."""
    gt_frames, pred_frames = _as_frames(gt), _as_frames(pred)
    if len(gt_frames) != len(pred_frames):
        raise InputError(f"prediction has {len(pred_frames)} frames, GT has {len(gt_frames)}")
    if not gt_frames:
        raise InputError("empty sequence")
    acc = UnsupervisedSequence(gt_frames[0], bound_th, max_proposals)
    for t in range(len(gt_frames)):
        acc.add(gt_frames[t], pred_frames[t], t)
    return acc.result()
