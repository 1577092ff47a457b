"""Score saved predictions against DAVIS-style ground truth and write the result tables.

Predictions are ``<pred_dir>/<seq>/<frame>.png`` id maps (palette or greyscale, the frame names of the
GT PNGs). Ground truth is an annotation folder ``<gt_dir>/<seq>/<frame>.png`` (a DAVIS root is also
accepted: its ``Annotations/480p`` or, for the unsupervised task, ``Annotations_unsupervised/480p``
folder is used) or a list of :class:`vlprop.eval.datasets.VOSSequence`.

The numbers are the official DAVIS 2017 ones (see :mod:`vlprop.eval.davis`): the global table has the
official columns ``J&F-Mean, J-Mean, J-Recall, J-Decay, F-Mean, F-Recall, F-Decay`` (means over all
(sequence, object) pairs, ``%.3f``), the per-object table starts with the official
``Sequence, J-Mean, F-Mean`` (rows ``<seq>_<objid>``) and adds the other statistics.

DAVIS-2016-style GT (0/255 masks) is detected per sequence from its first mask; predictions for such a
sequence may use 1 or 255 for the object.
"""
from __future__ import annotations

import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vlprop.errors import InputError
from vlprop.eval.datasets import VOID_LABEL, VOSSequence, read_annotation, read_index_mask
from vlprop.eval.davis import (
    DEFAULT_BOUND_TH,
    MAX_PROPOSALS,
    SemiSupervisedSequence,
    SequenceScores,
    UnsupervisedSequence,
    db_statistics,
)
from vlprop.io.files import atomic_write_text
from vlprop.io.paths import check_name, check_writable_parent, refuse_overlap

__all__ = [
    "GLOBAL_COLUMNS",
    "PER_OBJECT_COLUMNS",
    "ObjectResult",
    "EvalResults",
    "normalize_task",
    "score_folder",
    "score_sequences",
    "format_markdown",
    "write_global_csv",
    "write_per_object_csv",
    "write_markdown",
    "write_json",
    "write_all",
    "main_score",
]

GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
PER_OBJECT_COLUMNS = ("Sequence", "J-Mean", "F-Mean", "J&F-Mean", "J-Recall", "J-Decay", "F-Recall", "F-Decay")
OUTPUT_FILES = {"global_csv": "global_results.csv", "per_object_csv": "per-sequence_results.csv",
                "markdown": "results.md", "json": "results.json"}


def normalize_task(task: str) -> str:
    """``semi`` / ``semi-supervised`` -> ``"semi"``; ``unsupervised`` / ``unsup`` -> ``"unsupervised"``."""
    t = task.lower().replace("_", "-")
    if t in ("semi", "semi-supervised", "semisupervised"):
        return "semi"
    if t in ("unsupervised", "unsup", "un-supervised"):
        return "unsupervised"
    raise InputError(f"unknown task {task!r}; expected 'semi' or 'unsupervised'")


# ---------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ObjectResult:
    """Per-frame J and F ``[n_frames]`` of one GT object of one sequence."""

    sequence: str
    object_id: int
    frames: tuple[str, ...]
    J: np.ndarray
    F: np.ndarray
    proposal: int | None = None  # unsupervised: matched proposal id (0 = none, scored as empty)

    @property
    def name(self) -> str:
        return f"{self.sequence}_{self.object_id}"

    def statistics(self, compat_uint8_decay: bool = False) -> dict[str, float]:
        jm, jr, jd = db_statistics(self.J, compat_uint8_decay)
        fm, fr, fd = db_statistics(self.F, compat_uint8_decay)
        return {"J-Mean": jm, "F-Mean": fm, "J&F-Mean": (jm + fm) / 2, "J-Recall": jr, "J-Decay": jd,
                "F-Recall": fr, "F-Decay": fd}


@dataclass
class EvalResults:
    """All scored (sequence, object) pairs of one evaluation."""

    task: str
    objects: list[ObjectResult]
    compat_uint8_decay: bool = False
    bound_th: float = DEFAULT_BOUND_TH
    sequences: list[str] = field(default_factory=list)

    def per_object(self) -> list[dict[str, Any]]:
        """Rows ``{"Sequence": "<seq>_<id>", "J-Mean": ..., ...}`` in :data:`PER_OBJECT_COLUMNS` order."""
        rows = []
        for obj in self.objects:
            st = obj.statistics(self.compat_uint8_decay)
            rows.append({"Sequence": obj.name, **{c: st[c] for c in PER_OBJECT_COLUMNS[1:]}})
        return rows

    def global_metrics(self) -> dict[str, float]:
        """The official global numbers: means over every (sequence, object) pair."""
        rows = self.per_object()
        if not rows:
            return {c: float("nan") for c in GLOBAL_COLUMNS}
        mean = {c: float(np.mean([r[c] for r in rows])) for c in PER_OBJECT_COLUMNS[1:] if c != "J&F-Mean"}
        out = {"J&F-Mean": (mean["J-Mean"] + mean["F-Mean"]) / 2}
        out.update({c: mean[c] for c in GLOBAL_COLUMNS[1:]})
        return out

    def to_dict(self, per_frame: bool = True) -> dict[str, Any]:
        """JSON-ready summary (NaN -> None)."""
        objects = []
        for obj, row in zip(self.objects, self.per_object()):
            entry: dict[str, Any] = {"name": obj.name, "sequence": obj.sequence, "object_id": obj.object_id,
                                     **{c: _json_float(row[c]) for c in PER_OBJECT_COLUMNS[1:]}}
            if obj.proposal is not None:
                entry["proposal"] = obj.proposal
            if per_frame:
                entry["frames"] = list(obj.frames)
                entry["J"] = [_json_float(v) for v in obj.J.tolist()]
                entry["F"] = [_json_float(v) for v in obj.F.tolist()]
            objects.append(entry)
        return {
            "task": self.task,
            "bound_th": self.bound_th,
            "compat_uint8_decay": self.compat_uint8_decay,
            "num_sequences": len(self.sequences),
            "num_objects": len(self.objects),
            "global": {k: _json_float(v) for k, v in self.global_metrics().items()},
            "objects": objects,
        }


def _json_float(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


# ---------------------------------------------------------------------------------------------------
# Scoring one sequence (runs in worker processes)
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Job:
    name: str
    frame_names: tuple[str, ...]
    gt: tuple[Any, ...]  # per scored-or-reference frame: annotation file(s)
    encoding: str  # "auto" | "index" | "binary255" | "binary"
    pred_dir: Path
    task: str
    bound_th: float
    max_proposals: int


def _read_pred(path: Path, binary255: bool) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"prediction file missing: {path} (every scored GT frame needs a prediction PNG "
                         f"with the same name)")
    pred = read_index_mask(path)
    if binary255:
        pred[pred == VOID_LABEL] = 1  # 0/255 predictions for a 0/255 (single-object) ground truth
    return pred


def _score_job(job: _Job) -> SequenceScores:
    encoding = job.encoding
    if encoding == "auto":
        first = read_index_mask(job.gt[0])
        values = set(np.unique(first).tolist())
        encoding = "binary255" if VOID_LABEL in values and values <= {0, VOID_LABEL} else "index"
    binary255 = encoding == "binary255"
    gt0 = read_annotation(job.gt[0], encoding)
    n = len(job.frame_names)
    if job.task == "semi":
        acc: SemiSupervisedSequence | UnsupervisedSequence = SemiSupervisedSequence(gt0, job.bound_th)
        scored = range(1, n - 1)
    else:
        acc = UnsupervisedSequence(gt0, job.bound_th, job.max_proposals)
        scored = range(n)
    for t in scored:
        gt = gt0 if t == 0 else read_annotation(job.gt[t], encoding)
        pred_path = job.pred_dir / f"{job.frame_names[t]}.png"
        pred = _read_pred(pred_path, binary255)
        if pred.shape != gt.shape:
            raise InputError(f"prediction {pred_path} is {pred.shape[1]}x{pred.shape[0]} but its ground truth "
                             f"{job.gt[t]} is {gt.shape[1]}x{gt.shape[0]} (width x height)")
        try:
            acc.add(gt, pred, job.frame_names[t])
        except InputError as exc:
            raise InputError(f"{pred_path}: {exc}") from None
    return acc.result()


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # the pool already uses the cores


def _run_jobs(jobs: list[_Job], workers: int) -> list[SequenceScores]:
    if workers <= 1 or len(jobs) <= 1:
        return [_score_job(j) for j in jobs]
    # spawn, never fork: a child forked from a process whose OpenCV or torch/OpenMP thread pools have run
    # deadlocks (seen here: cv2.setNumThreads hung in the forked worker). Scripts that call this with
    # workers > 1 need the usual `if __name__ == "__main__":` guard, as for any spawn-based pool.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx, initializer=_init_worker) as pool:
        return list(pool.map(_score_job, jobs))


def _collect(jobs: list[_Job], scores: list[SequenceScores], task: str, compat_uint8_decay: bool,
             bound_th: float) -> EvalResults:
    objects = []
    for job, sc in zip(jobs, scores):
        for k, obj in enumerate(sc.object_ids):
            objects.append(ObjectResult(job.name, obj, tuple(sc.frames), sc.J[k].copy(), sc.F[k].copy(),
                                        sc.proposals[k] if task == "unsupervised" else None))
    if not objects:
        raise InputError("nothing to score: the first GT mask of every sequence is empty (no object ids 1..K)")
    return EvalResults(task, objects, compat_uint8_decay, bound_th, [j.name for j in jobs])


# ---------------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------------
def _resolve_gt_dir(gt_dir: Path, task: str) -> Path:
    """The annotation folder: ``gt_dir`` itself, or the DAVIS annotation folder below a dataset root."""
    def has_sequences(d: Path) -> bool:
        return d.is_dir() and any(sub.is_dir() and any(sub.glob("*.png")) for sub in d.iterdir())

    if has_sequences(gt_dir):
        return gt_dir
    names = ["Annotations_unsupervised/480p", "Annotations_unsupervised"] if task == "unsupervised" else []
    names += ["Annotations/480p", "Annotations"]
    for name in names:
        if has_sequences(gt_dir / name):
            return gt_dir / name
    raise InputError(f"no ground truth in {gt_dir}: expected <seq>/<frame>.png folders there or in its "
                     f"{' or '.join(names)} folder")


def _sequence_names(gt_dir: Path, sequences: Sequence[str] | str | os.PathLike | None) -> list[str]:
    if sequences is None:
        return sorted(d.name for d in gt_dir.iterdir() if d.is_dir() and any(d.glob("*.png")))
    if isinstance(sequences, (str, os.PathLike)):
        path = Path(sequences)
        if not path.is_file():
            raise InputError(f"sequence list {path} not found (give a text file with one name per line, or a list)")
        return [check_name(ln.strip().lstrip("*"), "sequence name", path)
                for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return [check_name(str(s), "sequence name") for s in sequences]


def score_folder(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike, task: str = "semi",
                 sequences: Sequence[str] | str | os.PathLike | None = None, workers: int = 1, *,
                 bound_th: float = DEFAULT_BOUND_TH, compat_uint8_decay: bool = False,
                 mask_encoding: str = "auto", max_proposals: int = MAX_PROPOSALS) -> EvalResults:
    """Score ``<pred_dir>/<seq>/<frame>.png`` against ``<gt_dir>/<seq>/<frame>.png``.

    ``sequences``: names, a list file, or None for every GT sequence folder. Every scored GT frame
    (semi: 1 .. T-2 of the sorted GT PNGs; unsupervised: all) needs a prediction of the same name.
    ``mask_encoding``: ``"auto"`` (0/255 GT -> DAVIS-2016 single object), ``"index"`` or ``"binary255"``.
    ``workers`` > 1 scores sequences in that many processes.
    """
    task = normalize_task(task)
    pred_root, gt_root = Path(pred_dir), Path(gt_dir)
    if not pred_root.is_dir():
        raise InputError(f"prediction folder not found: {pred_root}")
    if not gt_root.is_dir():
        raise InputError(f"ground-truth folder not found: {gt_root}")
    if mask_encoding not in ("auto", "index", "binary255"):
        raise InputError(f"mask_encoding must be 'auto', 'index' or 'binary255', got {mask_encoding!r}")
    gt_root = _resolve_gt_dir(gt_root, task)
    names = _sequence_names(gt_root, sequences)
    if not names:
        raise InputError(f"no sequences to score in {gt_root}")
    missing = [n for n in names if not (pred_root / n).is_dir()]
    if missing:
        shown = f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}"
        raise InputError.about("sequences", "--sequences", lambda a: (
            f"prediction folder {pred_root} lacks {len(missing)} sequence folder(s): {shown} (pass {a} to score "
            f"a subset)"))
    jobs = []
    for n in names:
        seq_dir = gt_root / n
        if not seq_dir.is_dir():
            raise InputError(f"ground-truth sequence folder not found: {seq_dir}")
        gts = sorted(seq_dir.glob("*.png"), key=lambda p: p.name)
        if not gts:
            raise InputError(f"no ground-truth PNGs in {seq_dir}")
        jobs.append(_Job(n, tuple(p.stem for p in gts), tuple(gts), mask_encoding, pred_root / n, task,
                         bound_th, max_proposals))
    return _collect(jobs, _run_jobs(jobs, workers), task, compat_uint8_decay, bound_th)


def score_sequences(pred_dir: str | os.PathLike, sequences: Sequence[VOSSequence], task: str = "semi",
                    workers: int = 1, *, bound_th: float = DEFAULT_BOUND_TH, compat_uint8_decay: bool = False,
                    max_proposals: int = MAX_PROPOSALS) -> EvalResults:
    """Score ``<pred_dir>/<seq>/<frame>.png`` against the annotated frames of dataset sequences.

    The annotated frames play the role of the GT PNG list (semi: the first and last annotated frames
    are not scored), so DAVIS-2016 binary and SegTrackV2 per-object masks are decoded correctly.
    """
    task = normalize_task(task)
    pred_root = Path(pred_dir)
    if not pred_root.is_dir():
        raise InputError(f"prediction folder not found: {pred_root}")
    jobs = []
    for seq in sequences:
        idx = seq.annotated_frames
        if not idx:
            raise InputError(f"{seq.name}: no annotated frame to score against")
        if not (pred_root / seq.name).is_dir():
            raise InputError(f"prediction folder for sequence {seq.name} not found: {pred_root / seq.name}")
        jobs.append(_Job(seq.name, tuple(seq.frames[t].stem for t in idx), tuple(seq.annotations[t] for t in idx),
                         seq.mask_encoding, pred_root / seq.name, task, bound_th, max_proposals))
    return _collect(jobs, _run_jobs(jobs, workers), task, compat_uint8_decay, bound_th)


# ---------------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------------
def _fmt(v: float) -> str:
    return "nan" if v is None or math.isnan(v) else f"{v:.3f}"


def _csv(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    return "\n".join([",".join(header)] + [",".join(r) for r in rows]) + "\n"


def write_global_csv(results: EvalResults, path: str | os.PathLike) -> Path:
    """One-row CSV with the official global columns (``%.3f``), as ``global_results-<set>.csv``."""
    g = results.global_metrics()
    atomic_write_text(path, _csv(GLOBAL_COLUMNS, [[_fmt(g[c]) for c in GLOBAL_COLUMNS]]))
    return Path(path)


def write_per_object_csv(results: EvalResults, path: str | os.PathLike) -> Path:
    """Rows ``<seq>_<objid>`` with J-Mean, F-Mean (the official per-sequence columns) and the other stats."""
    rows = [[r["Sequence"]] + [_fmt(r[c]) for c in PER_OBJECT_COLUMNS[1:]] for r in results.per_object()]
    atomic_write_text(path, _csv(PER_OBJECT_COLUMNS, rows))
    return Path(path)


def format_markdown(results: EvalResults) -> str:
    """Global and per-object markdown tables."""
    g = results.global_metrics()
    task = "semi-supervised" if results.task == "semi" else "unsupervised"
    lines = [f"## DAVIS evaluation ({task}): {len(results.sequences)} sequences, {len(results.objects)} objects",
             "", "| " + " | ".join(GLOBAL_COLUMNS) + " |", "|" + "---:|" * len(GLOBAL_COLUMNS),
             "| " + " | ".join(_fmt(g[c]) for c in GLOBAL_COLUMNS) + " |", "",
             "| " + " | ".join(PER_OBJECT_COLUMNS) + " |", "|---|" + "---:|" * (len(PER_OBJECT_COLUMNS) - 1)]
    for r in results.per_object():
        lines.append("| " + " | ".join([r["Sequence"]] + [_fmt(r[c]) for c in PER_OBJECT_COLUMNS[1:]]) + " |")
    if results.compat_uint8_decay:
        lines += ["", "Decay computed with the original uint8 bin indices (compat mode)."]
    return "\n".join(lines) + "\n"


def write_markdown(results: EvalResults, path: str | os.PathLike) -> Path:
    atomic_write_text(path, format_markdown(results))
    return Path(path)


def write_json(results: EvalResults, path: str | os.PathLike, per_frame: bool = True) -> Path:
    """Everything, per-frame values included (NaN written as null)."""
    atomic_write_text(path, json.dumps(results.to_dict(per_frame), indent=1, allow_nan=False) + "\n")
    return Path(path)


def write_all(results: EvalResults, out_dir: str | os.PathLike) -> dict[str, str]:
    """Write the four result files into ``out_dir``; returns kind -> path."""
    out = Path(out_dir)
    paths = {k: out / v for k, v in OUTPUT_FILES.items()}
    write_global_csv(results, paths["global_csv"])
    write_per_object_csv(results, paths["per_object_csv"])
    write_markdown(results, paths["markdown"])
    write_json(results, paths["json"])
    return {k: str(p) for k, p in paths.items()}


def main_score(pred: str | os.PathLike, gt: str | os.PathLike, task: str = "semi",
               out: str | os.PathLike | None = None, workers: int = 1,
               sequences: Sequence[str] | str | os.PathLike | None = None,
               compat_uint8_decay: bool = False) -> dict[str, Any]:
    """``vlprop eval score --pred DIR --gt DIR [--task semi|unsupervised] [--out DIR] [--workers N]``.

    Returns the summary (``to_dict`` without per-frame values) plus ``"markdown"`` (the tables to
    print) and, when ``out`` is given, ``"files"`` (the written CSV/markdown/JSON paths).
    """
    if out is not None:  # checked before the scoring work, not after it
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise InputError.about("out", "--out", lambda a: f"{a} {out} exists and is not a folder")
        check_writable_parent(out / OUTPUT_FILES["global_csv"], ("out", "--out"))
        if Path(gt).is_dir():
            refuse_overlap({("out", "--out"): out}, {("gt", "--gt"): _resolve_gt_dir(Path(gt), normalize_task(task))})
    results = score_folder(pred, gt, task, sequences, workers, compat_uint8_decay=compat_uint8_decay)
    summary = results.to_dict(per_frame=False)
    summary["markdown"] = format_markdown(results)
    if out is not None:
        summary["files"] = write_all(results, out)
    return summary
