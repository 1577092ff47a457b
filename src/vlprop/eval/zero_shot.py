"""Zero-shot VOS evaluation (Waldmann et al. 2022 Tab. 2, 4, 5): no label is given, the first mask is initialised.

:func:`evaluate_zero_shot` is ``vlprop eval zero-shot``. For every sequence of a VOS dataset it initialises
frame 0 with a saliency source (:mod:`vlprop.tasks.zero_shot`: ``dino``, ``cam`` or the ``center`` baseline),
propagates it with the ``waldmann-zvos`` preset (or the given model), writes ``<out>/<seq>/<frame>.png``
(object 1) and scores in WALD's **single-object mode** (Tab. 5 caption): every GT object is merged into
one foreground (GT void 255 is excluded from both masks), J and F are the DAVIS measures on the annotated
frames strictly between the first and the last one (WALD ``evaluate_segmentation_dataset.py``, frames
1..T-2), per sequence mean/recall/decay as DAVIS, dataset means over sequences. The first-frame mask is
scored on its own as in Tab. 2: IoU of the initialised mask with the merged GT of frame 0, mean and median
over sequences.

Outputs in ``<out>``: ``global_results.csv``, ``per-sequence_results.csv``, ``results.md``, ``results.json``
(:mod:`vlprop.eval.score` writers), ``init_iou.csv`` (per-sequence first-frame IoU, the top classes of a
CAM source), ``zero_shot.json`` (protocol: initialiser settings, preset, weights, per-sequence timings,
first-frame IoU mean/median, J&F). A sequence is finished when its done marker exists with the same
settings hash; reruns skip it, other settings are refused unless ``force``.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vlprop.errors import InputError
from vlprop.eval.datasets import VOID_LABEL, VOSSequence, read_index_mask
from vlprop.eval.davis import DEFAULT_BOUND_TH, frame_scores
from vlprop.eval.runner import SequenceFrames, load_sequences, marker_path, resolve_dataset, settings_hash
from vlprop.eval.score import EvalResults, ObjectResult, format_markdown, write_all
from vlprop.io.files import atomic_write_text
from vlprop.model import ModelSpec
from vlprop.tasks.zero_shot import InitParams, make_source, mask_iou, segment

ZERO_SHOT_PRESET = "waldmann-zvos"
INIT_FILE = "init_iou.csv"
PROTOCOL_FILE = "zero_shot.json"
_FORMAT = 1


def merged_foreground(mask: np.ndarray, encoding: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Single-object GT: ``(foreground [H, W] bool, void [H, W] bool or None)`` of a decoded annotation."""
    m = np.asarray(mask)
    void = (m == VOID_LABEL) if encoding == "index" else None
    fg = m > 0
    if void is not None:
        fg &= ~void
        if not void.any():
            void = None
    return fg, void


def score_single_object(pred_dir: str | os.PathLike, sequences: Sequence[VOSSequence],
                        bound_th: float = DEFAULT_BOUND_TH) -> EvalResults:
    """J/F of ``<pred_dir>/<seq>/<frame>.png`` (any id > 0 = foreground) against the merged GT on the annotated
    frames strictly between the first and last annotated frame; one row ``<seq>_1`` per sequence."""
    root = Path(pred_dir)
    objects = []
    for seq in sequences:
        ann = seq.annotated_frames
        frames = [t for t in ann if ann[0] < t < ann[-1]]
        if not frames:
            raise InputError(f"{seq.name}: fewer than 3 annotated frames, nothing to score")
        J, Fm = [], []
        for t in frames:
            gt, void = merged_foreground(seq.read_mask(t), seq.mask_encoding)
            path = root / seq.name / f"{seq.frame_names[t]}.png"
            if not path.is_file():
                raise InputError(f"prediction file missing: {path}")
            pred = read_index_mask(path) > 0
            if pred.shape != gt.shape:
                raise InputError(f"prediction {path} is {pred.shape[1]}x{pred.shape[0]} but its ground truth is "
                                 f"{gt.shape[1]}x{gt.shape[0]}")
            j, f = frame_scores(gt.astype(np.uint8), pred.astype(np.uint8), [1], [1], void, bound_th, diagonal=True)
            J.append(float(j[0]))
            Fm.append(float(f[0]))
        objects.append(ObjectResult(seq.name, 1, tuple(seq.frame_names[t] for t in frames),
                                    np.array(J, dtype=np.float64), np.array(Fm, dtype=np.float64)))
    return EvalResults("unsupervised", objects, False, bound_th, [s.name for s in sequences])


@dataclass
class ZeroShotRun:
    out_dir: Path
    sequences: list[str]
    computed: list[str]
    resumed: list[str]
    results: EvalResults | None = None
    init_iou: dict[str, float] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)

    def init_summary(self) -> dict[str, float]:
        v = np.array(list(self.init_iou.values()), dtype=np.float64)
        return {"mean": float(v.mean()), "median": float(np.median(v))} if len(v) else {}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def evaluate_zero_shot(dataset: str, root: str | os.PathLike, out_dir: str | os.PathLike, init: str = "cam", *,
                       model: ModelSpec | None = None, params: InitParams = InitParams(),
                       init_weights: str | os.PathLike | None = None, init_arch: str | None = None,
                       init_short_side: int | None = 480, split: str | None = None,
                       sequences: Sequence[str] | None = None, max_frames: int | None = None, force: bool = False,
                       command: Sequence[str] | None = None, log=print) -> ZeroShotRun:
    """Initialise, propagate, write and score every sequence (see the module doc)."""
    name, _, _ = resolve_dataset(dataset)
    model = model if model is not None else ModelSpec(preset=ZERO_SHOT_PRESET)
    if model.preset is None:
        model = dataclasses.replace(model, preset=ZERO_SHOT_PRESET)
    seqs = load_sequences(name, root, split, sequences, max_frames)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"output path {out} exists and is not a folder")
    source = make_source(init, weights=init_weights, arch=init_arch, device=model.device,
                         short_side=init_short_side)
    resolved = model.resolve(default_preset=ZERO_SHOT_PRESET)
    weights = model.weights_record()
    settings = json.loads(json.dumps({
        "format": _FORMAT, "dataset": name, "max_frames": max_frames, "init": init, "init_arch": init_arch,
        "init_short_side": init_short_side, "init_params": params.as_dict(),
        "init_weights": None if init_weights is None else str(Path(init_weights).resolve()),
        "preset": dataclasses.asdict(resolved.preset), "backbone": resolved.backbone,
        "weights": {k: weights[k] for k in ("kind", "seed", "sha256") if k in weights}}, default=str))
    if resolved.precision != "fp32":  # approximate predictions; fp32 runs keep their earlier hash
        settings["precision"] = resolved.precision
    digest = settings_hash(settings)
    out.mkdir(parents=True, exist_ok=True)
    computed, resumed = [], []
    records: dict[str, dict[str, Any]] = {}
    for seq in seqs:
        marker = marker_path(out, seq.name)
        old = None
        if marker.is_file():
            try:
                old = json.loads(marker.read_text(encoding="utf-8"))
            except ValueError:
                old = None
        if old is not None and old.get("settings_hash") == digest and \
                all((out / seq.name / f"{n}.png").is_file() for n in seq.frame_names):
            records[seq.name] = old
            resumed.append(seq.name)
            continue
        if old is not None and old.get("settings_hash") != digest and not force:
            raise InputError(f"{out} holds zero-shot results of other settings for {seq.name} ({marker}); use "
                             f"another --out or --force")
        records[seq.name] = _run_sequence(seq, source, params, model, out, digest, settings)
        computed.append(seq.name)
        r = records[seq.name]
        log(f"{seq.name}: first-frame IoU {r['init_iou']:.3f}, {r['frames']} frames in {r['wall_time_s']:.1f} s")
    run = ZeroShotRun(out, [s.name for s in seqs], computed, resumed,
                      init_iou={n: float(records[n]["init_iou"]) for n in records})
    scorable = [s for s in seqs if len(s.annotated_frames) >= 3]
    if scorable:
        run.results = score_single_object(out, scorable)
        write_all(run.results, out)
    rows = ["sequence,init_iou,classes"] + [
        f"{n},{records[n]['init_iou']:.6f},{' '.join(map(str, records[n].get('init_info', {}).get('classes', [])))}"
        for n in run.sequences]
    atomic_write_text(out / INIT_FILE, "\n".join(rows) + "\n")
    summary = run.init_summary()
    run.protocol = {
        "tool": "vlprop eval zero-shot", "command": list(command) if command else None, "timestamp": _now(),
        "host": platform.node(), "dataset": {"kind": name, "root": str(Path(root).resolve()), "split": split,
                                             "sequences": run.sequences, "max_frames": max_frames},
        "mode": "single-object (all GT objects merged; frames 1..T-2 scored)",
        "init": {"source": init, "arch": init_arch, "short_side": init_short_side, "params": params.as_dict(),
                 "weights": settings["init_weights"]},
        "first_frame_iou": {"mean": summary.get("mean"), "median": summary.get("median"),
                            "per_sequence": run.init_iou},
        "preset": resolved.preset.name, "backbone": resolved.backbone, "weights": dict(weights),
        "precision": resolved.precision, "settings_hash": digest, "computed": computed, "resumed": resumed,
        "sequences": {n: {k: records[n][k] for k in ("frames", "wall_time_s", "init_time_s", "init_iou")}
                      for n in run.sequences},
        "results": None if run.results is None else run.results.global_metrics(),
    }
    atomic_write_text(out / PROTOCOL_FILE, json.dumps(run.protocol, indent=1, default=str) + "\n")
    md = [f"# Zero-shot VOS ({init} initialiser), {name}", "",
          f"First-frame IoU (Tab. 2 protocol): mean {summary.get('mean', float('nan')):.3f}, "
          f"median {summary.get('median', float('nan')):.3f} over {len(run.init_iou)} sequences", ""]
    if run.results is not None:
        md.append(format_markdown(run.results))
    atomic_write_text(out / "results.md", "\n".join(md) + "\n")
    return run


def _run_sequence(seq: VOSSequence, source, params: InitParams, model: ModelSpec, out: Path, digest: str,
                  settings: dict[str, Any]) -> dict[str, Any]:
    from vlprop.io.masks import write_mask

    marker = marker_path(out, seq.name)
    marker.unlink(missing_ok=True)
    seq_dir = out / seq.name
    if seq_dir.is_dir():
        for p in seq_dir.glob("*.png"):
            p.unlink()
    seq_dir.mkdir(parents=True, exist_ok=True)
    gt0 = seq.read_mask(0)
    if gt0 is None:
        raise InputError(f"{seq.name}: frame 0 ({seq.frames[0].name}) has no annotation to score the initial mask")
    fg0, void0 = merged_foreground(gt0, seq.mask_encoding)
    t0 = time.perf_counter()
    n = 0
    init_iou = float("nan")
    init_time = 0.0
    info: dict[str, Any] = {}
    for r in segment(SequenceFrames(seq), source, params, model):
        if r.index == 0:
            init_time = time.perf_counter() - t0
            pred0 = r.mask > 0
            if void0 is not None:
                pred0 = pred0 & ~void0
            init_iou = mask_iou(pred0, fg0)
            info = dict(r.init.info)  # type: ignore[attr-defined]
        write_mask(seq_dir / f"{r.name}.png", r.mask)
        n += 1
    dt = time.perf_counter() - t0
    record = {"sequence": seq.name, "frames": n, "wall_time_s": round(dt, 3), "init_time_s": round(init_time, 3),
              "init_iou": init_iou, "init_info": info, "settings_hash": digest, "settings": settings,
              "finished": _now()}
    atomic_write_text(marker, json.dumps(record, indent=1, default=str) + "\n")
    return record


__all__ = ["evaluate_zero_shot", "score_single_object", "merged_foreground", "ZeroShotRun", "ZERO_SHOT_PRESET"]
