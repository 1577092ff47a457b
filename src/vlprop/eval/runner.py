"""Benchmark runs: propagate every sequence of a VOS dataset, write the submission PNGs, score, record.

:func:`evaluate_vos` is ``vlprop eval vos``. For every sequence it gives the propagator the dataset's
labels (``"first"``: the first annotated frame, the DAVIS / SegTrackV2 protocol; ``"appearance"``:
each object's mask on the frame where it first appears, YouTube-VOS and plain folders), writes one
palette PNG per frame to ``<out>/<seq>/<frame name>.png`` (the benchmark's submission layout, the GT
names), and then scores the sequences that have ground truth beyond the given labels with the
semi-supervised DAVIS protocol of :mod:`vlprop.eval.score`.

Resuming. A sequence is finished when its done marker ``<out>/.vlprop-eval/done/<seq>.json`` exists
(written atomically *after* all its PNGs), records the current settings hash, and all its PNGs are
present. Re-running skips finished sequences, so an interrupted run resumes where it stopped; the
markers keep the per-sequence timings, which the protocol file reports. Markers of *different*
settings (another preset, backbone, weights file, dataset kind or ``max_frames``) make the run stop
with an error naming the differences, unless ``force`` (then those sequences are recomputed).

Parallelism. ``workers`` processes share the sequences (spawned, each with its own propagator and
``max(1, cores // (workers * local ranks))`` torch threads; they take the longest sequences first).
Under ``torchrun`` the sequences are also sharded over ranks, balanced by frame count (see
:func:`vlprop.eval.distributed.shard`); after all ranks are done rank 0 scores and writes the tables.

Outputs in ``<out>``: ``global_results.csv`` (the official global columns), ``per-sequence_results.csv``
(rows ``<seq>_<objid>``), ``results.md``, ``results.json`` (per-frame J/F) and ``protocol.json``
(preset and all its settings, backbone, weights with SHA-256, input geometry, versions, device,
per-sequence wall time and frames/s, timestamps).

Objects appearing after the first annotated frame cannot be scored by the DAVIS protocol (its
object set is the first GT frame's). Sequences with such objects are scored here per object on
the annotated frames strictly after the object's first frame and before the sequence's last
annotated frame, which for objects of the first frame is exactly the DAVIS rule (frames 1..T-2).
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import multiprocessing
import os
import platform
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from vlprop.errors import CheckpointError, InputError, VlpropError
from vlprop.eval.datasets import VOID_LABEL, VOSSequence, read_dataset, read_index_mask
from vlprop.eval.davis import DEFAULT_BOUND_TH, frame_scores
from vlprop.eval.distributed import Ranks, gather_objects, shard
from vlprop.eval.score import (
    GLOBAL_COLUMNS,
    OUTPUT_FILES,
    EvalResults,
    ObjectResult,
    format_markdown,
    score_sequences,
    write_global_csv,
    write_json,
    write_per_object_csv,
)
from vlprop.io.files import atomic_write_text
from vlprop.io.paths import check_name, ensure_inside, refuse_overlap
from vlprop.io.video import Frame, FrameSource
from vlprop.model import ModelSpec

log = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "ModelSpec",
    "SequenceFrames",
    "VOSRun",
    "evaluate_vos",
    "global_table",
    "input_masks",
    "label_frames",
    "load_sequences",
    "marker_path",
    "propagate_sequence",
    "resolve_dataset",
    "run_settings",
    "score_predictions",
    "settings_hash",
]

# CLI dataset name -> (reader kind of vlprop.eval.datasets, which annotations are given as labels)
DATASETS: dict[str, tuple[str, str]] = {
    "davis2016": ("davis2016", "first"),
    "davis2017": ("davis2017", "first"),
    "ytvos": ("youtube-vos", "appearance"),
    "segtrackv2": ("segtrackv2", "first"),
    "folder": ("folder", "appearance"),
}
_DATASET_ALIASES = {"youtube-vos": "ytvos", "youtubevos": "ytvos", "davis16": "davis2016", "davis17": "davis2017",
                    "segtrack": "segtrackv2"}

STATE_DIR = ".vlprop-eval"
PROTOCOL_FILE = "protocol.json"
_SETTINGS_FORMAT = 1


def resolve_dataset(name: str) -> tuple[str, str, str]:
    """``(cli name, reader kind, label mode)`` of a dataset name."""
    key = _DATASET_ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return (key,) + DATASETS[key]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _weights_identity(record: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a weights record that changes predictions (not the file's location)."""
    return {k: record[k] for k in ("kind", "seed", "sha256") if k in record}


def run_settings(spec: ModelSpec, dataset: str, mode: str, max_frames: int | None,
                 weights: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The settings that determine the predictions (what the done markers' hash covers).

    The device, worker count, dataset location and split are left out on purpose: moving the data
    or resuming on another machine must not invalidate finished sequences.
    """
    resolved = spec.resolve()
    settings = {
        "format": _SETTINGS_FORMAT,
        "dataset": dataset,
        "labels": mode,
        "max_frames": max_frames,
        "preset": dataclasses.asdict(resolved.preset),
        "backbone": resolved.backbone,
        "weights": _weights_identity(weights if weights is not None else spec.weights_record()),
    }
    if resolved.precision != "fp32":  # approximate predictions; fp32 runs keep their earlier hash
        settings["precision"] = resolved.precision
    return json.loads(json.dumps(settings, default=str))  # as stored in the markers (tuples -> lists)


def settings_hash(settings: Mapping[str, Any]) -> str:
    text = json.dumps(settings, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, Mapping):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _short(v: Any, width: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= width else text[: width - 3] + "..."


def _settings_diff(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 6) -> str:
    """The differing settings (a preset's prose only if nothing else differs)."""
    a, b = _flatten(old), _flatten(new)
    prose = ("preset.description", "preset.reference", "preset.features.reference_backbone")
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    keys = [k for k in keys if k not in prose] or keys
    parts = [f"{k}: {_short(a.get(k))} -> {_short(b.get(k))}" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"... ({len(keys) - limit} more)")
    return "; ".join(parts) if parts else "unknown differences"


# ---------------------------------------------------------------------------------------------------
# Sequences and their labels
# ---------------------------------------------------------------------------------------------------
def _truncate(seq: VOSSequence, n: int) -> VOSSequence:
    if n >= len(seq):
        return seq
    objects = {o: t for o, t in seq.objects.items() if t < n}
    return VOSSequence(seq.name, seq.frames[:n], seq.annotations[:n], objects, seq.mask_encoding)


def load_sequences(dataset: str, root: str | os.PathLike, split: str | None = None,
                   names: Sequence[str] | None = None, max_frames: int | None = None) -> list[VOSSequence]:
    """Read a dataset (``davis2016 | davis2017 | ytvos | segtrackv2 | folder``), keep ``names`` (in the
    dataset's order), and cut every sequence to its first ``max_frames`` frames."""
    _, kind, _ = resolve_dataset(dataset)
    if max_frames is not None and max_frames < 1:
        raise InputError(f"max_frames must be at least 1, got {max_frames}")
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"dataset root not found: {root}")
    seqs = read_dataset(kind, root, split)
    if names:
        known = {s.name for s in seqs}
        unknown = [n for n in names if n not in known]
        if unknown:
            shown = ", ".join(sorted(known)[:20]) + (" ..." if len(known) > 20 else "")
            raise InputError(f"sequence(s) {', '.join(unknown)} not in {dataset} {root} split "
                             f"{split if split is not None else '(default)'}; available: {shown}")
        wanted = set(names)
        seqs = [s for s in seqs if s.name in wanted]
    if not seqs:
        raise InputError(f"no sequences in {dataset} {root} split {split if split is not None else '(default)'}")
    if max_frames is not None:
        seqs = [_truncate(s, max_frames) for s in seqs]
    return seqs


def label_frames(seq: VOSSequence, mode: str) -> tuple[int, ...]:
    """Frames whose annotations are given to the propagator.

    ``"first"``: the first annotated frame (DAVIS, SegTrackV2). ``"appearance"``: every frame where
    an object first appears (YouTube-VOS, folders), so objects can enter mid-video.
    """
    if mode == "first":
        ann = seq.annotated_frames
        if not ann:
            raise InputError(f"{seq.name}: no annotated frame to start from (frames {seq.frames[0].parent})")
        return (ann[0],)
    if mode == "appearance":
        starts = sorted(set(seq.objects.values()))
        if not starts:
            raise InputError(f"{seq.name}: no object is annotated on any frame"
                             + (f" (within the first {len(seq)} frames)" if seq.frames else ""))
        return tuple(starts)
    raise ValueError(f"unknown label mode {mode!r}; expected 'first' or 'appearance'")


def input_masks(seq: VOSSequence, mode: str) -> dict[int, np.ndarray]:
    """Frame index -> id mask ``[H, W]`` uint8 given to :meth:`Propagator.run` (255 = void).

    In ``"appearance"`` mode the mask of frame t keeps only the objects that first appear at t (a
    dataset with GT on later frames must not leak it into the propagation); void is kept on the first
    labelled frame only.
    """
    frames = label_frames(seq, mode)
    out: dict[int, np.ndarray] = {}
    for t in frames:
        ann = seq.annotations[t]
        if ann is None:
            ids = sorted(o for o, f in seq.objects.items() if f == t)
            raise InputError(f"{seq.name}: object(s) {ids} first appear on frame {seq.frames[t]}, but that frame "
                             f"has no annotation file")
        m = seq.read_mask(t)
        if m is None:  # unreachable: ann is not None
            raise InputError(f"{seq.name}: cannot read the annotation of frame {seq.frames[t]}")
        if m.max(initial=0) > 255:
            raise InputError(f"{seq.name}: annotation {ann} has ids up to {int(m.max())}; ids must be 0..255")
        if mode == "appearance":
            ids = [o for o, f in seq.objects.items() if f == t]
            absent = [o for o in ids if not np.any(m == o)]
            if absent:
                raise InputError(f"{seq.name}: object(s) {absent} should first appear on frame {seq.frames[t].name} "
                                 f"but annotation {ann} does not contain them")
            keep = np.isin(m, ids)
            if t == frames[0] and seq.mask_encoding == "index":
                keep |= m == VOID_LABEL
            m = np.where(keep, m, 0)
        out[t] = m.astype(np.uint8)
    return out


def _has_ground_truth(seq: VOSSequence, mode: str) -> bool:
    """True if some frame can be scored: annotated, not given to the propagator, and strictly between the
    first and the last annotated frame (the semi-supervised protocol never scores those two)."""
    ann = seq.annotated_frames
    given = set(label_frames(seq, mode))
    return any(ann[0] < t < ann[-1] and t not in given for t in ann)


class SequenceFrames(FrameSource):
    """The frames of a :class:`VOSSequence`, read one at a time, named by their file stems."""

    def __init__(self, seq: VOSSequence):
        self.seq = seq
        self.size = None

    def __len__(self) -> int:
        return len(self.seq)

    def names(self) -> list[str]:
        return list(self.seq.frame_names)

    def __iter__(self) -> Iterator[Frame]:
        for t, path in enumerate(self.seq.frames):
            image = self.seq.read_frame(t)
            self._check_size(image, t, str(path))
            yield Frame(t, path.stem, image)


# ---------------------------------------------------------------------------------------------------
# One sequence
# ---------------------------------------------------------------------------------------------------
def marker_path(out_dir: str | os.PathLike, name: str) -> Path:
    check_name(name, "sequence name")
    return ensure_inside(Path(out_dir), Path(out_dir) / STATE_DIR / "done" / f"{name}.json")


def _owner_path(out_dir: str | os.PathLike, name: str) -> Path:
    """``<out>/.vlprop-eval/started/<seq>.json``: written before the first PNG of a sequence, it marks
    ``<out>/<seq>/`` as vlprop's, so its PNGs may be cleared on a rerun (and only then)."""
    check_name(name, "sequence name")
    return ensure_inside(Path(out_dir), Path(out_dir) / STATE_DIR / "started" / f"{name}.json")


def _read_marker(out_dir: Path, name: str) -> dict[str, Any] | None:
    path = marker_path(out_dir, name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # markers are atomic; a broken one just means "not finished"
        log.warning("ignoring unreadable done marker %s (%s)", path, exc)
        return None
    return data if isinstance(data, dict) else None


def _is_finished(out_dir: Path, seq: VOSSequence, marker: Mapping[str, Any] | None, digest: str) -> bool:
    if marker is None or marker.get("settings_hash") != digest:
        return False
    if marker.get("frame_names") != list(seq.frame_names):
        return False
    seq_dir = out_dir / seq.name
    return all((seq_dir / f"{n}.png").is_file() for n in seq.frame_names)


def _clear_predictions(out_dir: Path, name: str) -> None:
    """Remove the PNGs of ``<out_dir>/<name>/`` -- only if vlprop wrote that folder (its started or done
    marker exists); PNGs in a folder vlprop did not create are somebody's data and stop the run."""
    seq_dir = ensure_inside(out_dir, out_dir / name)
    if not seq_dir.is_dir():
        return
    pngs = list(seq_dir.glob("*.png"))
    if pngs and not (_owner_path(out_dir, name).is_file() or marker_path(out_dir, name).is_file()):
        raise InputError(f"{seq_dir} holds {len(pngs)} PNG file(s) that vlprop did not write (no "
                         f"{STATE_DIR} record of this sequence); refusing to replace them: choose another --out")
    for p in pngs:
        p.unlink()


def propagate_sequence(prop, seq: VOSSequence, mode: str, out_dir: str | os.PathLike,
                       progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Propagate one sequence and write ``<out_dir>/<seq>/<frame>.png`` for every frame.

    Returns the timing/geometry record stored in the done marker. Old PNGs of the sequence are
    removed first, so a recomputed sequence never mixes two runs.
    """
    from vlprop.io.masks import write_mask

    out_dir = Path(out_dir)
    seq_dir = ensure_inside(out_dir, out_dir / check_name(seq.name, "sequence name"))
    masks = input_masks(seq, mode)
    _clear_predictions(out_dir, seq.name)
    owner = _owner_path(out_dir, seq.name)
    if not owner.is_file():
        atomic_write_text(owner, json.dumps({"sequence": seq.name, "started": _now()}) + "\n")
    seq_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    n = 0
    geometry: dict[str, int] | None = None
    for r in prop.run(SequenceFrames(seq), masks=masks):
        if geometry is None:
            geometry = dataclasses.asdict(prop.extractor.geometry(*r.mask.shape))
        write_mask(seq_dir / f"{r.name}.png", r.mask)
        n += 1
        if progress is not None:
            progress(1)
    dt = time.perf_counter() - t0
    if n != len(seq):
        raise RuntimeError(f"{seq.name}: the propagator returned {n} frames for a {len(seq)}-frame sequence")
    return {"sequence": seq.name, "frames": n, "frame_names": list(seq.frame_names),
            "label_frames": [seq.frame_names[t] for t in sorted(masks)],
            "objects": {str(o): seq.frame_names[t] for o, t in seq.objects.items()},
            "wall_time_s": round(dt, 4), "fps": round(n / max(dt, 1e-9), 4), "geometry": geometry,
            "finished": _now(), "host": platform.node(), "pid": os.getpid()}


def _dataset_folders(seqs: Sequence[VOSSequence]) -> list[Path]:
    """The folders holding the sequences' frames and annotation files (the inputs an output may not touch)."""
    folders: set[Path] = set()
    for s in seqs:
        folders.update(p.parent for p in s.frames)
        for a in s.annotations:
            if a is not None:
                folders.update(p.parent for p in ((a,) if isinstance(a, Path) else a))
    return sorted(folders)


@dataclass(frozen=True)
class _Job:
    sequence: VOSSequence
    mode: str
    out_dir: Path
    digest: str
    settings: Mapping[str, Any]
    rank: int


def _compute(prop, job: _Job, progress: Callable[[int], None] | None) -> dict[str, Any]:
    marker = marker_path(job.out_dir, job.sequence.name)
    marker.unlink(missing_ok=True)  # from here on the sequence is unfinished until the new marker lands
    record = propagate_sequence(prop, job.sequence, job.mode, job.out_dir, progress)
    record.update(settings_hash=job.digest, settings=job.settings, rank=job.rank)
    atomic_write_text(marker, json.dumps(record, indent=1) + "\n")
    return record


# Worker processes: one propagator each, progress sent to the parent through a queue.
_WORKER: dict[str, Any] = {}


def die_with_parent() -> None:
    """In a worker process: be sent SIGTERM when the parent process dies (Linux ``PR_SET_PDEATHSIG``), so a parent
    killed by SIGKILL or the OOM killer leaves no orphaned workers computing on. Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and terminate the worker processes now (``shutdown(wait=False)`` alone lets
    running jobs go on, in processes that outlive the parent)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(timeout=5)


def _init_worker(spec: ModelSpec, threads: int, queue) -> None:
    import torch

    die_with_parent()

    torch.set_num_threads(threads)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    _WORKER.clear()
    _WORKER.update(spec=spec, queue=queue, prop=None)


def _worker_run(job: _Job) -> dict[str, Any]:
    if _WORKER.get("prop") is None:
        _WORKER["prop"] = _WORKER["spec"].build()
    queue = _WORKER["queue"]
    return _compute(_WORKER["prop"], job, queue.put)


# ---------------------------------------------------------------------------------------------------
# Running many sequences
# ---------------------------------------------------------------------------------------------------
def _bars(jobs: list[_Job], quiet: bool, ranks: Ranks):
    from tqdm import tqdm

    prefix = f"rank {ranks.rank}: " if ranks.distributed else ""
    pos = 2 * ranks.local_rank
    seq_bar = tqdm(total=len(jobs), unit="seq", desc=f"{prefix}sequences", disable=quiet, position=pos,
                   dynamic_ncols=True)
    frame_bar = tqdm(total=sum(len(j.sequence) for j in jobs), unit="frame", desc=f"{prefix}frames",
                     disable=quiet, position=pos + 1, leave=False, dynamic_ncols=True)
    return seq_bar, frame_bar


def _run_in_process(jobs: list[_Job], spec: ModelSpec, quiet: bool, ranks: Ranks) -> list[dict[str, Any]]:
    prop = spec.build()
    seq_bar, frame_bar = _bars(jobs, quiet, ranks)
    records = []
    try:
        for job in jobs:
            frame_bar.set_description(f"{'rank %d: ' % ranks.rank if ranks.distributed else ''}{job.sequence.name}")
            records.append(_compute(prop, job, frame_bar.update))
            seq_bar.update(1)
    finally:
        frame_bar.close()
        seq_bar.close()
    return records


def submission_order(jobs: Sequence[_Job]) -> list[_Job]:
    """Jobs longest-first (by frame count; ties keep the dataset order) for the worker pool."""
    return sorted(jobs, key=lambda j: -len(j.sequence))


def _run_pool(jobs: list[_Job], spec: ModelSpec, workers: int, threads: int, quiet: bool,
              ranks: Ranks) -> list[dict[str, Any]]:
    import queue as queue_mod

    # spawn, not fork: forking a process whose torch/OpenMP thread pools have run can deadlock.
    ctx = multiprocessing.get_context("spawn")
    progress = ctx.Queue()
    seq_bar, frame_bar = _bars(jobs, quiet, ranks)
    records: dict[str, dict[str, Any]] = {}

    def drain() -> None:
        while True:
            try:
                frame_bar.update(progress.get_nowait())
            except queue_mod.Empty:
                return

    pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx, initializer=_init_worker,
                               initargs=(spec, threads, progress))
    try:
        # Longest sequences first: workers take jobs in submission order, so a long video submitted last
        # would leave the other workers idle while it runs (LPT scheduling bounds the tail by the
        # shortest videos instead).
        pending: set[Future] = {pool.submit(_worker_run, job) for job in submission_order(jobs)}
        while pending:
            done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            drain()
            for fut in done:
                rec = fut.result()  # re-raises a worker's error (InputError pickles with its message)
                records[rec["sequence"]] = rec
                seq_bar.update(1)
    except BaseException:  # an error, Ctrl-C or SIGTERM: no worker may go on computing
        stop_pool(pool)
        raise
    else:
        pool.shutdown(wait=True)
    finally:
        drain()
        frame_bar.close()
        seq_bar.close()
    return [records[j.sequence.name] for j in jobs]


# ---------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------
def _late_objects(seq: VOSSequence) -> bool:
    ann = seq.annotated_frames
    return bool(ann) and any(t > ann[0] for t in seq.objects.values())


def _score_late_sequence(pred_root: Path, seq: VOSSequence, bound_th: float) -> list[ObjectResult]:
    """Per object: annotated frames strictly after its first frame and before the last annotated frame."""
    ann = seq.annotated_frames
    last = ann[-1]
    frames_of = {o: [t for t in ann if f < t < last] for o, f in sorted(seq.objects.items())}
    values: dict[int, dict[int, tuple[float, float]]] = {o: {} for o in frames_of}
    known = set(seq.objects)
    for t in sorted({t for ts in frames_of.values() for t in ts}):
        objs = [o for o, ts in frames_of.items() if t in ts]
        gt = seq.read_mask(t)
        pred_path = pred_root / seq.name / f"{seq.frame_names[t]}.png"
        if not pred_path.is_file():
            raise InputError(f"prediction file missing: {pred_path}")
        pred = read_index_mask(pred_path)
        if pred.shape != gt.shape:
            raise InputError(f"prediction {pred_path} is {pred.shape[1]}x{pred.shape[0]} but its ground truth "
                             f"{seq.annotations[t]} is {gt.shape[1]}x{gt.shape[0]} (width x height)")
        extra = sorted(set(np.unique(pred).tolist()) - known - {0})
        if extra:
            raise InputError(f"prediction {pred_path} contains object id(s) {extra} that the sequence does not have")
        j, f = frame_scores(gt, pred, objs, objs, None, bound_th, diagonal=True)
        for k, o in enumerate(objs):
            values[o][t] = (float(j[k]), float(f[k]))
    out = []
    for o, ts in frames_of.items():
        out.append(ObjectResult(seq.name, o, tuple(seq.frame_names[t] for t in ts),
                                np.array([values[o][t][0] for t in ts], dtype=np.float64),
                                np.array([values[o][t][1] for t in ts], dtype=np.float64)))
    return out


def score_predictions(pred_dir: str | os.PathLike, sequences: Sequence[VOSSequence], workers: int = 1,
                      bound_th: float = DEFAULT_BOUND_TH) -> EvalResults:
    """Semi-supervised scores of ``<pred_dir>/<seq>/<frame>.png`` for sequences with ground truth.

    Sequences whose objects are all in the first annotated frame go through
    :func:`vlprop.eval.score.score_sequences` (the official DAVIS numbers); sequences with objects
    appearing later are scored per object from their first frame on (see the module doc).
    """
    pred_root = Path(pred_dir)
    regular = [s for s in sequences if not _late_objects(s)]
    per_seq: dict[str, list[ObjectResult]] = {s.name: [] for s in sequences}
    if regular:
        res = score_sequences(pred_root, regular, "semi", workers, bound_th=bound_th)
        for obj in res.objects:
            per_seq[obj.sequence].append(obj)
    for s in sequences:
        if _late_objects(s):
            per_seq[s.name] = _score_late_sequence(pred_root, s, bound_th)
    objects = [o for s in sequences for o in per_seq[s.name]]
    if not objects:
        raise InputError("nothing to score: no sequence has a ground-truth object")
    return EvalResults("semi", objects, False, bound_th, [s.name for s in sequences])


# ---------------------------------------------------------------------------------------------------
# The whole run
# ---------------------------------------------------------------------------------------------------
@dataclass
class VOSRun:
    """Outcome of :func:`evaluate_vos` on this rank (``results``/``protocol`` only on rank 0)."""

    out_dir: Path
    sequences: list[str]
    computed: list[str]  # sequences propagated in this run (rank 0: by all ranks; other ranks: their own)
    resumed: list[str]  # sequences found finished (same convention)
    results: EvalResults | None = None
    protocol: dict[str, Any] | None = None
    files: dict[str, str] = field(default_factory=dict)


def _status_of(exc: BaseException | None) -> dict[str, Any] | None:
    if exc is None:
        return None
    return {"type": type(exc).__name__, "message": str(exc), "user_error": isinstance(exc, VlpropError)}


def evaluate_vos(dataset: str, root: str | os.PathLike, out_dir: str | os.PathLike, model: ModelSpec, *,
                 split: str | None = None, sequences: Sequence[str] | None = None, max_frames: int | None = None,
                 workers: int = 1, force: bool = False, quiet: bool = False, ranks: Ranks | None = None,
                 command: Sequence[str] | None = None) -> VOSRun:
    """Propagate, write, resume, score: ``vlprop eval vos`` (see the module doc).

    ``ranks``: the torchrun layout (:func:`vlprop.eval.distributed.init_ranks`); every rank must call
    this with the same arguments. Raises :class:`InputError` for bad inputs and for an output folder
    holding results of different settings (unless ``force``).
    """
    ranks = ranks or Ranks()
    out = Path(out_dir)
    if workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    started = _now()
    t_start = time.perf_counter()
    error: Exception | None = None
    computed: list[str] = []
    resumed: list[str] = []
    seqs: list[VOSSequence] = []
    try:
        name, _, mode = resolve_dataset(dataset)
        seqs = load_sequences(name, root, split, sequences, max_frames)
        for s in seqs:
            label_frames(s, mode)  # fail early on sequences without labels
        weights = model.weights_record()
        settings = run_settings(model, name, mode, max_frames, weights)
        digest = settings_hash(settings)
        if out.exists() and not out.is_dir():
            raise InputError.about("out_dir", "--out", lambda a: f"{a} {out} exists and is not a folder")
        # the predictions must never land in (and clear) the dataset's own frame or mask folders
        refuse_overlap({("out_dir", "--out"): out},
                       {("root", "--root"): _dataset_folders(seqs)})
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise InputError.about("out_dir", "--out", lambda a: f"cannot create {a} {out}: {reason}") from None
        markers = {s.name: _read_marker(out, s.name) for s in seqs}
        stale = [(n, m) for n, m in markers.items() if m is not None and m.get("settings_hash") != digest]
        if stale and not force:
            first_name, first = stale[0]
            raise InputError(
                f"{out} holds results of other settings for {len(stale)} sequence(s) (e.g. {first_name}, see "
                f"{marker_path(out, first_name)}): {_settings_diff(first.get('settings', {}), settings)}. "
                f"Use another --out, or pass --force to recompute them with the new settings")
        mine = shard(seqs, ranks, cost=len)  # balanced by frame count
        todo = [s for s in mine if not _is_finished(out, s, markers.get(s.name), digest)]
        resumed = [s.name for s in mine if s not in todo]
        if resumed:
            log.info("%d finished sequence(s) skipped: %s", len(resumed), ", ".join(resumed))
        jobs = [_Job(s, mode, out, digest, settings, ranks.rank) for s in todo]
        threads = max(1, _cores() // (workers * ranks.local_world_size))
        if jobs:
            if workers > 1 and len(jobs) > 1:
                _run_pool(jobs, model, workers, threads, quiet, ranks)
            else:
                if ranks.distributed:
                    import torch

                    torch.set_num_threads(threads)
                _run_in_process(jobs, model, quiet, ranks)
        computed = [j.sequence.name for j in jobs]
    except Exception as exc:  # noqa: BLE001 - reported to the other ranks before re-raising
        if not ranks.distributed:
            raise
        error = exc
    # One exchange per rank: also the barrier (every rank has finished its shard past this point).
    statuses = gather_objects({"error": _status_of(error), "computed": computed, "resumed": resumed}, ranks)
    if error is not None:
        raise error
    failed = [(r, st["error"]) for r, st in enumerate(statuses) if st["error"] is not None]
    if failed:
        r, err = failed[0]
        msg = f"rank {r} failed: {err['type']}: {err['message']}"
        raise InputError(msg) if err["user_error"] else RuntimeError(msg)
    if not ranks.is_main:
        return VOSRun(out, [s.name for s in seqs], computed, resumed)
    computed = [n for st in statuses for n in st["computed"]]
    resumed = [n for st in statuses for n in st["resumed"]]
    run = VOSRun(out, [s.name for s in seqs], computed, resumed)

    markers = {s.name: _read_marker(out, s.name) for s in seqs}
    unfinished = [s.name for s in seqs if not _is_finished(out, s, markers[s.name], digest)]
    if unfinished:
        raise RuntimeError(f"sequence(s) {', '.join(unfinished)} have no valid done marker after the run")
    scorable = [s for s in seqs if _has_ground_truth(s, mode)]
    results = score_predictions(out, scorable, workers) if scorable else None
    files: dict[str, str] = {}
    if results is not None:
        files["global_csv"] = str(write_global_csv(results, out / OUTPUT_FILES["global_csv"]))
        files["per_object_csv"] = str(write_per_object_csv(results, out / OUTPUT_FILES["per_object_csv"]))
        files["json"] = str(write_json(results, out / OUTPUT_FILES["json"]))
    protocol = _protocol(model, settings, digest, weights, name, mode, root, split, max_frames, seqs, markers,
                         set(computed), results, workers, ranks, started,
                         time.perf_counter() - t_start, command, scorable)
    files["markdown"] = str(out / OUTPUT_FILES["markdown"])
    files["protocol"] = str(out / PROTOCOL_FILE)
    protocol["files"] = dict(files)
    atomic_write_text(out / OUTPUT_FILES["markdown"], _markdown(protocol, results))
    atomic_write_text(out / PROTOCOL_FILE, json.dumps(protocol, indent=1, allow_nan=False) + "\n")
    run.results, run.protocol, run.files = results, protocol, files
    return run


def _json_float(v: float) -> float | None:
    return None if v is None or v != v else float(v)


def _protocol(model: ModelSpec, settings: Mapping[str, Any], digest: str, weights: Mapping[str, Any], dataset: str,
              mode: str, root, split, max_frames, seqs: list[VOSSequence], markers: Mapping[str, Any],
              computed_here: set[str], results: EvalResults | None, workers: int, ranks: Ranks, started: str,
              elapsed: float, command: Sequence[str] | None, scorable: list[VOSSequence]) -> dict[str, Any]:
    import torch

    import vlprop

    resolved = model.resolve()
    preset = resolved.preset
    scored = {s.name for s in scorable}
    per_seq: dict[str, Any] = {}
    sizes: dict[str, dict[str, Any]] = {}
    for s in seqs:
        m = markers[s.name]
        g = m.get("geometry") or {}
        per_seq[s.name] = {"frames": m["frames"], "wall_time_s": m["wall_time_s"], "fps": m["fps"],
                           "label_frames": m.get("label_frames"), "geometry": g, "finished": m.get("finished"),
                           "rank": m.get("rank", 0), "computed_in_this_run": s.name in computed_here,
                           "scored": s.name in scored}
        key = f"{g.get('height')}x{g.get('width')}"
        entry = sizes.setdefault(key, {"image_hw": [g.get("height"), g.get("width")],
                                       "network_input_hw": [g.get("resized_height"), g.get("resized_width")],
                                       "grid_hw": [g.get("grid_height"), g.get("grid_width")],
                                       "stride": g.get("stride"), "sequences": 0})
        entry["sequences"] += 1
    frames = sum(v["frames"] for v in per_seq.values())
    seconds = sum(v["wall_time_s"] for v in per_seq.values())
    feats = preset.features
    return {
        "tool": "vlprop eval vos",
        "command": list(command) if command is not None else None,
        "started": started,
        "timestamp": _now(),
        "vlprop_version": vlprop.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "host": platform.node(),
        "device": model.device,
        "precision": model.precision,
        "dataset": {"kind": dataset, "root": str(Path(root).resolve()), "split": split, "labels": mode,
                    "max_frames": max_frames, "sequences": [s.name for s in seqs]},
        "preset": {"name": preset.name, "settings": dataclasses.asdict(preset)},
        "model_args": {"preset": model.preset, "layer": model.layer, "input_scale": model.input_scale,
                       "short_side": model.short_side, "compat": model.compat, "seed": model.seed,
                       "overrides": dict(model.overrides)},
        "backbone": resolved.backbone,
        "weights": dict(weights),
        "input": {"layer": feats.layer, "stride": feats.stride, "input_scale": feats.input_scale,
                  "short_side": feats.short_side, "size": list(feats.size) if feats.size else None,
                  "colorspace": feats.colorspace, "sizes": list(sizes.values())},
        "settings_hash": digest,
        "settings": dict(settings),
        "parallel": {"workers": workers, "world_size": ranks.world_size,
                     "torch_threads_per_worker": max(1, _cores() // (workers * ranks.local_world_size))},
        "sequences": per_seq,
        "total": {"sequences": len(seqs), "frames": frames, "propagation_s": round(seconds, 3),
                  "fps": round(frames / max(seconds, 1e-9), 3), "run_wall_time_s": round(elapsed, 3)},
        "scored_sequences": [s.name for s in scorable],
        "unscored_sequences": [s.name for s in seqs if s.name not in scored],
        "task": "semi-supervised",
        "results": None if results is None else
        {k: _json_float(v) for k, v in results.global_metrics().items()},
    }


def _markdown(protocol: Mapping[str, Any], results: EvalResults | None) -> str:
    w = protocol["weights"]
    ds = protocol["dataset"]
    tot = protocol["total"]
    lines = [
        "# vlprop VOS evaluation", "",
        f"- dataset: {ds['kind']} `{ds['root']}` split {ds['split'] if ds['split'] is not None else '(default)'}"
        f", {tot['sequences']} sequences" + (f", first {ds['max_frames']} frames" if ds["max_frames"] else ""),
        f"- preset: {protocol['preset']['name']} (settings hash {protocol['settings_hash']}), backbone "
        f"{protocol['backbone']}, weights {w['description']}" + (f" (sha256 {w['sha256'][:16]}...)" if "sha256" in w
                                                                 else ""),
        f"- device {protocol['device']}; vlprop {protocol['vlprop_version']}, torch {protocol['torch_version']}; "
        f"{protocol['timestamp']}",
        f"- {tot['frames']} frames propagated in {tot['propagation_s']:.1f} s ({tot['fps']:.2f} frames/s)", "",
    ]
    if results is None:
        lines += ["No ground truth beyond the given labels: predictions only, nothing scored.", ""]
    else:
        lines.append(format_markdown(results))
    lines += ["## Timing", "", "| Sequence | frames | wall time (s) | frames/s |", "|---|---:|---:|---:|"]
    for name, v in protocol["sequences"].items():
        lines.append(f"| {name} | {v['frames']} | {v['wall_time_s']:.2f} | {v['fps']:.2f} |")
    return "\n".join(lines) + "\n"


def global_table(metrics: Mapping[str, float | None]) -> str:
    """The official global columns as a markdown table (``%.3f``)."""
    def fmt(v):
        return "nan" if v is None or v != v else f"{v:.3f}"

    return "\n".join(["| " + " | ".join(GLOBAL_COLUMNS) + " |", "|" + "---:|" * len(GLOBAL_COLUMNS),
                      "| " + " | ".join(fmt(metrics.get(c)) for c in GLOBAL_COLUMNS) + " |"])
