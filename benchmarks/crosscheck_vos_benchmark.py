"""Cross-check vlprop's J and F against the `vos-benchmark` package on a finished ``vlprop eval vos`` run.

Usage::

    pip install vos-benchmark        # not a vlprop dependency: only this check needs it
    python benchmarks/crosscheck_vos_benchmark.py --run evals/dino --gt DAVIS/Annotations/480p

``vos-benchmark`` computes only J-Mean and F-Mean per object (no recall/decay, no void pixels, no
unsupervised task) and treats every non-zero value as an object id, so DAVIS-2016 0/255 ground truth is
first re-written as 0/1 (decoded by vlprop's own reader, ``--encoding binary255``) into a temporary
folder. The script prints both packages' global J&F / J / F and
the largest per-object difference of J-Mean and F-Mean.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from vlprop.eval.datasets import read_annotation
from vlprop.io.masks import write_mask


def copy_ground_truth(gt: Path, sequences: list[str], dst: Path, encoding: str) -> None:
    """Re-write the ground truth as index PNGs, decoded exactly as vlprop's scorer decodes it."""
    for seq in sequences:
        for f in sorted((gt / seq).glob("*.png")):
            write_mask(dst / seq / f.name, read_annotation(f, encoding))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, type=Path, help="output folder of `vlprop eval vos` (has results.json)")
    ap.add_argument("--gt", required=True, type=Path, help="annotation folder with one sub-folder per sequence")
    ap.add_argument("--encoding", default="binary255", choices=["binary255", "index"],
                    help="how the ground truth stores ids (binary255: DAVIS-2016 0/255; index: palette ids)")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    try:
        from vos_benchmark.benchmark import benchmark
    except ImportError as e:
        raise SystemExit(f"this check needs the vos-benchmark package: pip install vos-benchmark ({e})")
    ours = json.loads((args.run / "results.json").read_text())
    objects = {o["name"]: o for o in ours["objects"]}
    sequences = sorted({o["sequence"] for o in ours["objects"]})
    with tempfile.TemporaryDirectory() as tmp:
        gt = Path(tmp) / "gt"
        copy_ground_truth(args.gt, sequences, gt, args.encoding)
        jf, j, f, per = benchmark([str(gt)], [str(args.run)], strict=False, num_processes=args.workers,
                                  verbose=False)
    worst = 0.0
    for name, (iou, bf) in per[0].items():
        for obj in iou:
            mine = objects[f"{name}_{obj}"]
            worst = max(worst, abs(iou[obj] / 100 - mine["J-Mean"]), abs(bf[obj] / 100 - mine["F-Mean"]))
    g = ours["global"]
    print(f"vos-benchmark: J&F {jf[0] / 100:.6f}  J {j[0] / 100:.6f}  F {f[0] / 100:.6f}")
    print(f"vlprop:        J&F {g['J&F-Mean']:.6f}  J {g['J-Mean']:.6f}  F {g['F-Mean']:.6f}")
    print(f"largest per-object |difference| of J-Mean / F-Mean: {worst:.2e} over {len(objects)} objects")


if __name__ == "__main__":
    main()
