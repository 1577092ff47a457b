"""McKee et al. Tab. 4 on DAVIS-2016 val-dev: J&F of the spatial localisation variants with the SAME features.

Rows (n = 7 context frames + the first, k = 5 as in McKee Tab. 4, unless the variant itself needs all candidates):

=====================  ============================================================================================
per-frame / none       per context frame softmax over all locations (before restriction), top-k, averaged
per-frame / fixed      the same, disk radius 12 (strict) on the previous frames, first frame exempt (CRW)
per-frame / track      UVC's per-object boxes (``localization=track``)
overall / none         one top-k over all context frames jointly
overall / fixed        the same with the fixed disk window (CRW / McKee's best)
union / window         one softmax over the union of square radius-12 windows on every frame, no top-k
union / ROI            + MAST's predicted window for references more than 15 frames back (here: the first frame)
union / ROI, MAST refs + MAST's sparse reference set {0, 5, t-1, t-3, t-5}
union / compactness    + LIIR's compactness prior (k = 2, FWHM 1 cell, threshold 0.1)
=====================  ============================================================================================

Every row runs ``vlprop eval vos`` (resumable: finished sequences are kept in ``<out>/<row>``) and prints a
markdown table of J&F / J / F means and the propagation time. Example (the lead's command; ~1-3 h on 2 cores)::

    PYTHONPATH=src python benchmarks/localisation_table.py --weights default --out evals/localisation --workers 2

``--rows`` picks a subset, ``--max-frames`` truncates sequences for a quick check, ``--temperature`` sets T of
every row (the features are L2-normalised; 0.05 = CRW/DUL).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from vlprop.eval.runner import evaluate_vos
from vlprop.model import ModelSpec

REPO = Path(__file__).resolve().parents[1]
PER_FRAME = dict(aggregation="per-frame", norm_stage="before-restriction", topk=5, context=7)
OVERALL = dict(aggregation="overall", norm_stage="topk", topk=5, context=7)
UNION = dict(aggregation="overall", norm_stage="topk", topk=0, context=7, window="square", radius=12,
             window_long_term=True)
ROWS = {
    "per-frame/none": dict(PER_FRAME, window="none"),
    "per-frame/fixed": dict(PER_FRAME, window="disk", radius=12, window_long_term=False),
    "per-frame/track": dict(PER_FRAME, window="none", localization="track"),
    "overall/none": dict(OVERALL, window="none"),
    "overall/fixed": dict(OVERALL, window="disk", radius=12, window_long_term=False),
    "union/window": dict(UNION),
    "union/roi": dict(UNION, localization="roi"),
    "union/roi-mast-refs": dict(UNION, localization="roi", references="mast"),
    "union/compactness": dict(UNION, compactness_k=2, compactness_threshold=0.1, compactness_fwhm=1.0),
}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data" / "davis2016")
    ap.add_argument("--split", default="val-dev")
    ap.add_argument("--out", type=Path, default=REPO / "evals" / "localisation")
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--weights", default="default")
    ap.add_argument("--layer", default=None, help="feature layer (default: the named model's / res3)")
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument("--sequences", nargs="*", default=None, help="only these sequences (default: the split)")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args(argv)

    table = []
    for row in args.rows:
        overrides = dict(ROWS[row], temperature=args.temperature, feature_norm=True)
        spec = ModelSpec(preset="crw", backbone=args.backbone, weights=args.weights, layer=args.layer,
                         overrides=tuple(sorted(overrides.items())))
        t0 = time.perf_counter()
        run = evaluate_vos("davis2016", args.root, args.out / row.replace("/", "_"), spec, split=args.split,
                           sequences=args.sequences, max_frames=args.max_frames, workers=args.workers, quiet=True)
        g = run.results.global_metrics() if run.results is not None else {}
        table.append((row, g.get("J&F-Mean"), g.get("J-Mean"), g.get("F-Mean"), time.perf_counter() - t0))
        print(f"{row}: J&F {g.get('J&F-Mean')}", flush=True)
    print(f"\nDAVIS-2016 {args.split}, weights={args.weights}, T={args.temperature}, n=7 (+ first)")
    print("| localisation | J&F | J | F | wall s |\n|---|---|---|---|---|")
    for row, jf, j, f, sec in table:
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"| {row} | {fmt(jf)} | {fmt(j)} | {fmt(f)} | {sec:.0f} |")


if __name__ == "__main__":
    main()
