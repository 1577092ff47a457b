"""Semantic part propagation on VIP (Video Instance-level Parsing): reader, propagation, parsing metrics.

VIP layout (``VIP_Fine``)::

    Images/<video>/<frame>.jpg         frames
    Category_ids/<video>/<frame>.png   20-class parsing map (0 = background ... 19 = right shoe); annotated
                                        frames only (every 25th frame)
    Instance_ids/<video>/<frame>.png   person instance ids (read, not scored: see below)
    lists/<split>_videos.txt           video names (``val``: the validation list)

Protocol (CRW ``eval_vip.py``, shared/specs/reference-implementations.md §2.4): the parts of the first annotated
frame are propagated through the video like a multi-object mask (every class id present is one "object");
predictions of the annotated frames are nearest-resized to the ground truth; ONE confusion matrix is accumulated
over all scored frames of all videos (ground-truth ids outside ``[0, 20)`` ignored; predicted ids outside count
as wrong); from it pixel accuracy, mean class accuracy, per-class IoU, mIoU (mean over classes present in the
ground truth or the prediction) and frequency-weighted IoU. The labelled frame itself is not scored unless
``include_first``.

Not implemented: the instance-level AP^r_vol of Li et al. 2017 -- we could not verify its exact definition
from a public implementation, so it is left out rather than guessed.
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
    instances: dict[str, Path] = field(default_factory=dict)

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


def format_parts_markdown(res: dict[str, Any]) -> str:
    rows = ["| metric | value |", "|---|---|"]
    for key in ("miou", "pixel_acc", "mean_class_acc", "fwiou"):
        rows.append(f"| {key} | {res[key]:.4f} |")
    rows.append(f"| frames scored | {res['frames']} ({res['videos']} videos) |")
    return "\n".join(rows) + "\n"


def write_results(res: dict[str, Any], out_dir: str | Path) -> Path:
    path = Path(out_dir) / "parts.json"
    path.write_text(json.dumps({**res, "classes": list(VIP_CLASSES)}, indent=2))
    (Path(out_dir) / "parts.md").write_text(format_parts_markdown(res))
    return path
