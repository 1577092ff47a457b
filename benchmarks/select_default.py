"""Measure candidate default models on DAVIS-2016 val-dev: J&F, J, F, seconds per frame, peak memory.

Each configuration is one ``vlprop eval vos`` run (resumable: re-running the script skips finished sequences
and finished configurations) in its own wrapper process, so the peak RSS read from ``RUSAGE_CHILDREN`` is the
largest worker of that run alone. Seconds per frame = summed per-sequence wall time / frames (from the run's
``protocol.json``), i.e. per worker, one torch thread each.

    python benchmarks/select_default.py --root ../shared/data/davis2016 --out evals/select \
        --config "dul-shipped:--preset dul --weights default" \
        --config "lite0-crw:--backbone efficientnet_lite0 --weights imagenet --preset crw"

Prints a markdown table and writes ``<out>/table.json``. Choose the default on val-dev only.
"""
from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

_WRAPPER = r"""
import resource, subprocess, sys, json
rc = subprocess.call(sys.argv[1:])
print(json.dumps({"rc": rc, "maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def run_config(name: str, args: list[str], root: str, split: str, out: Path, workers: int) -> dict:
    run_dir = out / name
    cmd = [sys.executable, "-m", "vlprop", "eval", "vos", "--dataset", "davis2016", "--root", root, "--split", split,
           "--out", str(run_dir), "--workers", str(workers), "--quiet", *args]
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], capture_output=True, text=True)
    wall = time.time() - t0
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
    info = json.loads(last)
    if info.get("rc") != 0:
        raise SystemExit(f"{name} failed (rc {info.get('rc')}):\n{proc.stderr[-2000:]}")
    with open(run_dir / "global_results.csv") as f:
        g = next(csv.DictReader(f))
    proto = json.loads((run_dir / "protocol.json").read_text())
    per_seq = proto["sequences"] if "sequences" in proto else proto.get("per_sequence", {})
    frames = sum(v["frames"] for v in per_seq.values())
    seconds = sum(v["wall_time_s"] for v in per_seq.values())
    return {"name": name, "args": " ".join(args), "J&F": float(g["J&F-Mean"]), "J": float(g["J-Mean"]),
            "F": float(g["F-Mean"]), "frames": frames, "s_per_frame_per_worker": seconds / max(frames, 1),
            "peak_rss_mb": info["maxrss_kb"] / 1024, "wall_s_this_call": wall,
            "computed_now": [k for k, v in per_seq.items() if v.get("computed_in_this_run")]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True)
    ap.add_argument("--split", default="val-dev")
    ap.add_argument("--out", required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--config", action="append", required=True, help="NAME:ARGS (vlprop eval vos model args)")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    table_path = out / "table.json"
    rows = json.loads(table_path.read_text()) if table_path.exists() else {}
    for item in a.config:
        name, _, args = item.partition(":")
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {args}", flush=True)
        row = run_config(name, shlex.split(args), a.root, a.split, out, a.workers)
        if name in rows and not row["computed_now"]:
            row["s_per_frame_per_worker"] = rows[name]["s_per_frame_per_worker"]
            row["peak_rss_mb"] = rows[name]["peak_rss_mb"]  # a resumed no-op run measures nothing new
        rows[name] = row
        table_path.write_text(json.dumps(rows, indent=2))
        print(f"    J&F {row['J&F']:.3f}  s/frame/worker {row['s_per_frame_per_worker']:.2f}  "
              f"peak {row['peak_rss_mb']:.0f} MB", flush=True)
    print("\n| config | model arguments | J&F | J | F | s/frame/worker | peak RSS MB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in sorted(rows.values(), key=lambda r: -r["J&F"]):
        print(f"| {r['name']} | `{r['args']}` | {r['J&F']:.3f} | {r['J']:.3f} | {r['F']:.3f} | "
              f"{r['s_per_frame_per_worker']:.2f} | {r['peak_rss_mb']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
