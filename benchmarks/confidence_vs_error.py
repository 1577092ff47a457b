"""Does vlprop's per-frame confidence predict errors? Spearman rank correlation of confidence with per-frame J.

For every sequence of a DAVIS-2016 split, the ground-truth mask of frame 0 is propagated with the chosen model
(default: the shipped model with its preset, as ``vlprop propagate`` uses it); for every later frame we record the
confidence of ``confidence.csv`` (:mod:`vlprop.labels.confidence`: sharpness x area stability, and the two parts
alone) and J (region IoU with the ground truth, :func:`vlprop.eval.davis.db_eval_iou`). Printed: per sequence and
pooled over all frames, the Spearman correlation of J with confidence / sharpness / stability (higher = the
score ranks bad frames first better), and how many of the 10% least confident frames are among the 10% worst J.

Usage::

    python benchmarks/confidence_vs_error.py                                   # val-dev, every frame
    python benchmarks/confidence_vs_error.py --sequences blackswan dog libby --max-frames 40
    python benchmarks/confidence_vs_error.py --weights random --preset crw --csv rows.csv
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def run_sequence(prop, root: Path, seq: str, max_frames: int | None):
    from vlprop.eval.davis import db_eval_iou
    from vlprop.io.masks import read_mask
    from vlprop.labels.confidence import ConfidenceTracker
    from PIL import Image

    frames = sorted((root / "JPEGImages" / "480p" / seq).glob("*.jpg"))
    if max_frames:
        frames = frames[:max_frames]
    gts = [read_mask(root / "Annotations" / "480p" / seq / f"{f.stem}.png") for f in frames]
    tracker = ConfidenceTracker()
    rows = []
    t0 = time.perf_counter()
    images = []
    for f in frames:
        with Image.open(f) as img:
            images.append(np.array(img.convert("RGB")))
    for r in prop.run(images, masks={0: gts[0]}):
        conf = tracker.update(r.index, frames[r.index].stem, r.mask, r.probs, r.object_ids, r.annotated)
        if r.index == 0:
            continue
        c = next((c for c in conf if c.object_id == 1), None)
        j = float(db_eval_iou(gts[r.index] == 1, r.mask == 1))
        rows.append({"sequence": seq, "frame": r.index, "J": j,
                     "confidence": c.confidence if c else 0.0, "sharpness": c.sharpness if c else 0.0,
                     "stability": c.stability if c else 0.0})
    return rows, time.perf_counter() - t0


def summarise(rows, label: str) -> str:
    J = np.array([r["J"] for r in rows])
    cells = [label, str(len(rows)), f"{J.mean():.3f}"]
    for key in ("confidence", "sharpness", "stability"):
        cells.append(f"{spearman([r[key] for r in rows], J):+.3f}")
    n = max(1, len(rows) // 10)
    low_conf = set(np.argsort([r["confidence"] for r in rows], kind="stable")[:n])
    low_j = set(np.argsort(J, kind="stable")[:n])
    cells.append(f"{len(low_conf & low_j)}/{n}")
    return "| " + " | ".join(cells) + " |"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "davis2016"))
    ap.add_argument("--split", default="val-dev")
    ap.add_argument("--sequences", nargs="*", help="default: every sequence of --split")
    ap.add_argument("--max-frames", type=int, default=None, help="first N frames of each sequence")
    ap.add_argument("--weights", default="default")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--csv", help="also write the per-frame rows here")
    args = ap.parse_args(argv)

    import torch

    from vlprop.model import ModelSpec

    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.root)
    seqs = args.sequences or (root / "ImageSets" / f"{args.split}.txt").read_text().split()
    spec = ModelSpec(preset=args.preset, weights=args.weights)
    prop = spec.build(void=255)
    print(f"model: weights={args.weights} preset={prop.preset.name} backbone={prop.backbone}; "
          f"{len(seqs)} sequences of {root}", flush=True)
    all_rows = []
    lines = []
    for seq in seqs:
        rows, dt = run_sequence(prop, root, seq, args.max_frames)
        all_rows += rows
        lines.append(summarise(rows, seq))
        print(f"{seq}: {len(rows) + 1} frames in {dt:.0f} s   {lines[-1]}", flush=True)
        if args.csv:  # rewritten after every sequence, so an interrupted run keeps what it measured
            with open(args.csv, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(all_rows[0]))
                w.writeheader()
                w.writerows(all_rows)
    print("\nSpearman correlation of per-frame J with each score (positive: low score = low J)\n")
    print("| sequence | frames | mean J | confidence | sharpness | stability | 10% least confident in 10% worst J |")
    print("|---|---|---|---|---|---|---|")
    for line in lines:
        print(line)
    print(summarise(all_rows, "**all (pooled)**"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
