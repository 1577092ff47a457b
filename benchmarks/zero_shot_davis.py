"""Zero-shot VOS on DAVIS-2016: first-frame IoU (Tab. 2 protocol) and single-object J&F (Tab. 4 protocol) of mask
initialisers, each beside the centre-prior baseline (a centred ellipse covering a quarter of the frame, through the
same CRF and propagation), measured in the same run. Prints markdown tables.

    # first-frame IoU only (cheap: one CRF per sequence), all val-dev sequences, cam vs centre prior
    python benchmarks/zero_shot_davis.py --root ../shared/data/davis2016 --split val-dev --init-only
    # + ablations of the initialiser (no CRF, no median pre/post filter, CAM input short side 320)
    python benchmarks/zero_shot_davis.py --root ../shared/data/davis2016 --split val-dev --init-only --ablations
    # full zero-shot J&F (propagation of every sequence with waldmann-zvos; ~1 s/frame/initialiser here)
    python benchmarks/zero_shot_davis.py --root ../shared/data/davis2016 --split val-dev --out zvos-runs

Waldmann et al. 2022 (DINO ViT-B/8 attention, DAVIS-2016 val): init IoU mean 50.8 / median 54.7 (Tab. 2),
zero-shot J&F 59.8 (J 61.6, F 58.0; Tab. 4). ``--sources dino --init-weights FILE`` evaluates their initialiser
when a DINO checkpoint is at hand (none is downloaded).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from vlprop.eval.runner import load_sequences
from vlprop.eval.zero_shot import evaluate_zero_shot, merged_foreground
from vlprop.model import ModelSpec
from vlprop.tasks.zero_shot import InitParams, initialise_mask, make_source, mask_iou

PAPER = {"init_mean": 50.8, "init_median": 54.7, "jf": 59.8}


def init_ious(seqs, source, params: InitParams) -> tuple[dict[str, float], float]:
    out = {}
    t0 = time.perf_counter()
    for s in seqs:
        img = s.read_frame(0)
        fg, void = merged_foreground(s.read_mask(0), s.mask_encoding)
        m = initialise_mask(img, source, params).mask > 0
        if void is not None:
            m &= ~void
        out[s.name] = mask_iou(m, fg)
    return out, (time.perf_counter() - t0) / max(len(seqs), 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True, help="DAVIS-2016 folder")
    ap.add_argument("--split", default="val-dev")
    ap.add_argument("--sources", nargs="+", default=["cam"], help="initialisers besides the centre prior")
    ap.add_argument("--init-weights", default=None, help="DINO checkpoint for --sources dino")
    ap.add_argument("--init-only", action="store_true", help="only the first-frame IoU")
    ap.add_argument("--ablations", action="store_true", help="first-frame IoU ablations (Tab. 2 rows)")
    ap.add_argument("--out", default="zvos-runs", help="output root of the J&F runs (one folder per initialiser)")
    ap.add_argument("--weights", default="default", help="propagation weights (default: the shipped model)")
    ap.add_argument("--max-frames", type=int, default=None, help="J&F on the first N frames of each sequence only")
    ap.add_argument("--sequences", nargs="+", default=None, help="a subset of the split's sequences")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the CRF's many small "
                                                            "operations are slower with oversubscribed threads)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    seqs = load_sequences("davis2016", args.root, args.split, args.sequences)
    sources = list(dict.fromkeys([*args.sources, "center"]))
    base = InitParams()
    variants = [("default", base, 480)]
    if args.ablations:
        variants += [("no CRF", replace(base, refine=False), 480),
                     ("no median pre-filter", replace(base, median_before_refine=0), 480),
                     ("no median post-filter", replace(base, median_before_fill=0), 480),
                     ("input short side 320", base, 320)]
    print(f"## First-frame IoU, DAVIS-2016 {args.split} ({len(seqs)} sequences), x100\n")
    print("| initialiser | variant | mean | median | s/frame |")
    print("|---|---|---:|---:|---:|")
    for name in sources:
        for label, params, side in variants:
            if name == "center" and label == "input short side 320":
                continue
            src = make_source(name, weights=args.init_weights if name == "dino" else None, short_side=side)
            ious, spf = init_ious(seqs, src, params)
            v = list(ious.values())
            print(f"| {name} | {label} | {100 * statistics.mean(v):.1f} | {100 * statistics.median(v):.1f} | "
                  f"{spf:.1f} |", flush=True)
            if label == "default":
                print("|  | per sequence: " + ", ".join(f"{k} {100 * x:.0f}" for k, x in ious.items()) + " | | | |")
    print(f"| paper (DINO ViT-B/8, DAVIS-2016 val) | | {PAPER['init_mean']} | {PAPER['init_median']} | |\n")
    if args.init_only:
        return 0
    cut = f", first {args.max_frames} frames of each sequence" if args.max_frames else ""
    print(f"## Zero-shot J&F (single object, frames 1..T-2{cut}), preset waldmann-zvos, weights {args.weights}\n")
    print("| initialiser | init IoU mean | J&F | J | F | wall s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in sources:
        t0 = time.perf_counter()
        run = evaluate_zero_shot("davis2016", args.root, Path(args.out) / name, name,
                                 model=ModelSpec(preset="waldmann-zvos", weights=args.weights),
                                 init_weights=args.init_weights if name == "dino" else None, split=args.split,
                                 sequences=args.sequences, max_frames=args.max_frames,
                                 log=lambda msg: print(f"<!-- {msg} -->", file=sys.stderr))
        g = run.results.global_metrics()
        print(f"| {name} | {100 * run.init_summary()['mean']:.1f} | {100 * g['J&F-Mean']:.1f} | "
              f"{100 * g['J-Mean']:.1f} | {100 * g['F-Mean']:.1f} | {time.perf_counter() - t0:.0f} |", flush=True)
    print(f"| paper (DINO ViT-B/8, DAVIS-2016 val) | {PAPER['init_mean']} | {PAPER['jf']} | 61.6 | 58.0 | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
