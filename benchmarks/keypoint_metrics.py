"""Keypoint propagation scored both ways: TAP-Vid point-tracking metrics next to PCK, tracking off and on.

Usage::

    python benchmarks/keypoint_metrics.py                                # JHMDB sample clip + synthetic video
    python benchmarks/keypoint_metrics.py --max-frames 12 --weights default
    python benchmarks/keypoint_metrics.py --jhmdb /data/JHMDB --split test   # the full JHMDB split-1 test set
    python benchmarks/keypoint_metrics.py --tapvid tapvid_davis.pkl          # TAP-Vid-DAVIS (query first)

Rows (one per dataset x tracking setting): AJ, δ_avg, OA (TAP-Vid, query first, 256x256 frame, percent) and
the dataset's own PCK from the same predictions (JHMDB: CRW/Waldmann reference PCK@0.1/0.2), with the
propagation passes and the wall time. Datasets:

* ``jhmdb``: the JHMDB clip in ``../shared/data/jhmdb-sample`` (or ``--jhmdb ROOT``); 15 joints, all
  visible, so OA is 100 unless a joint is wrongly reported invisible;
* ``synthetic``: a 256x256 smooth random texture translating 2 px/frame to the right under a static grey
  occluder (points under the occluder are occluded in the ground truth), 25 points on a grid; written as a
  TAP-Vid pickle to a temporary folder and read back through the TAP-Vid reader;
* ``tapvid``: a TAP-Vid pickle given with ``--tapvid``.

Comparable published numbers: TAP-Vid-DAVIS first (AJ / δ_avg): TAPIR 58.5 / -, BootsTAPIR 62.4 / -,
CoTracker3 - / 76.9; JHMDB PCK@0.1 of label-propagation methods about 59-66. A single JHMDB clip or a
synthetic video is a smoke measurement, not a benchmark result.
"""
from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vlprop.eval.points import evaluate_points, pose_point_videos, tapvid_point_videos
from vlprop.tasks.pose import KeypointPropagator

REPO = Path(__file__).resolve().parents[1]
JHMDB_SAMPLE = (REPO / ".." / "shared" / "data" / "jhmdb-sample").resolve()


def synthetic_tapvid(path: Path, T: int = 16, size: int = 256, step: int = 2, seed: int = 0) -> None:
    """Write the synthetic TAP-Vid pickle described in the module docstring."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    big = gaussian_filter(rng.random((size, size + T * step, 3)), sigma=(3, 3, 0))
    big = (255 * (big - big.min()) / (big.max() - big.min())).astype(np.uint8)
    frames = np.stack([big[:, (T - 1 - t) * step:(T - 1 - t) * step + size] for t in range(T)]).copy()
    x0, x1 = int(0.58 * size), int(0.66 * size)          # static occluder columns
    frames[:, :, x0:x1] = 128
    g = np.linspace(0.2, 0.55, 5) * size
    pts0 = np.array([(x, y) for y in g for x in g])
    xy = pts0[:, None] + np.array([step, 0.0]) * np.arange(T)[None, :, None]
    occluded = (xy[..., 0] >= x0 - 0.5) & (xy[..., 0] < x1 - 0.5)
    points = ((xy + 0.5) / size).astype(np.float32)
    path.write_bytes(pickle.dumps({"synthetic": {"video": frames, "points": points, "occluded": occluded}}))


def run(name: str, videos, kind: str, args, track: bool, tmp: Path) -> dict:
    prop = KeypointPropagator(args.preset, backbone=args.backbone, weights=args.weights, track=track,
                              crop_size=args.crop_size, outside="invisible")
    t0 = time.perf_counter()
    res = evaluate_points(videos, prop, tmp / f"{name}-{'track' if track else 'full'}", kind=kind,
                          max_frames=args.max_frames, progress=False)
    o = res.overall
    return {"dataset": name, "track": "on" if track else "off", "videos": o["videos"],
            "points": sum(r["points"] for r in res.per_video), "passes": sum(r["passes"] for r in res.per_video),
            "AJ": o["AJ"], "δ_avg": o["δ_avg"], "OA": o["OA"], "PCK@0.1": o.get("PCK@0.1"),
            "PCK@0.2": o.get("PCK@0.2"), "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jhmdb", default=str(JHMDB_SAMPLE), help="JHMDB root (default: the shared sample clip)")
    ap.add_argument("--split", default="all", help="JHMDB split: all | test | train | list file")
    ap.add_argument("--tapvid", default=None, help="also run on this TAP-Vid pickle")
    ap.add_argument("--no-synthetic", action="store_true", help="skip the synthetic video")
    ap.add_argument("--weights", default="default")
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--preset", default=None)
    ap.add_argument("--crop-size", type=int, default=None, help="tracking crop side (default: the propagator's)")
    ap.add_argument("--max-frames", type=int, default=None, help="only the first N frames of every video")
    ap.add_argument("--tracking", choices=("both", "off", "on"), default="both")
    args = ap.parse_args(argv)
    tracks = {"both": (False, True), "off": (False,), "on": (True,)}[args.tracking]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        sets = []
        if Path(args.jhmdb).is_dir():
            sets.append(("jhmdb", pose_point_videos("jhmdb", args.jhmdb, args.split), "jhmdb"))
        else:
            print(f"(no JHMDB data at {args.jhmdb}: skipped)", file=sys.stderr)
        if not args.no_synthetic:
            synthetic_tapvid(tmp / "synthetic.pkl")
            sets.append(("synthetic", tapvid_point_videos(tmp / "synthetic.pkl"), "tapvid"))
        if args.tapvid:
            sets.append(("tapvid", tapvid_point_videos(args.tapvid), "tapvid"))
        for name, videos, kind in sets:
            for track in tracks:
                rows.append(run(name, videos, kind, args, track, tmp))
                print(f"done: {name} track {'on' if track else 'off'} ({rows[-1]['seconds']:.0f} s)", file=sys.stderr)
    cols = list(rows[0]) if rows else []
    print(f"weights {args.weights}, backbone {args.backbone or 'default'}, preset {args.preset or 'default'}, "
          f"max frames {args.max_frames or 'all'}")
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join(["---"] * 2 + ["---:"] * (len(cols) - 2)) + "|")
    for r in rows:
        print("| " + " | ".join("" if r[c] is None else f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c])
                                for c in cols) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
