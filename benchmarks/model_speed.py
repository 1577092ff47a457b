"""Seconds per frame and peak memory of model configurations on one real clip, each in a fresh process.

The val-dev J&F runs (``benchmarks/select_default.py``) are long and usually share the machine, so their
timings are not comparable. This script times the SAME propagation (``Propagator.run`` on the first ``--frames``
frames of one DAVIS sequence, first-frame mask given) for each configuration, one after the other, each in a
fresh child process (so the peak RSS is that configuration's alone), with ``--threads`` torch threads. It
prints a markdown table: model-build time, seconds per frame (the whole ``run`` -- decode, backbone, engine,
decoding of the masks; not writing -- divided by the frames, labelled first frame included), frames/s, peak RSS, and the ratio of each row's
s/frame to the first row's (the baseline, measured in the same invocation). Run it on an otherwise idle
machine and say what else ran.

    PYTHONPATH=src python benchmarks/model_speed.py --root ../shared/data/davis2016 --sequence dog --frames 30 \\
        --config "default:--weights default" \\
        --config "dul:--weights vlprop-dul-r18"
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path


def _child(args_str: str, frames_dir: str, mask_path: str, threads: int, queue) -> None:
    try:
        import numpy as np
        import torch
        from PIL import Image

        from vlprop.cli.options import add_model_args, model_spec_from_args
        from vlprop.session import Propagator

        torch.set_num_threads(threads)
        p = argparse.ArgumentParser()
        add_model_args(p)
        ns = p.parse_args(shlex.split(args_str))
        t0 = time.perf_counter()
        prop = Propagator(model=model_spec_from_args(ns))
        build = time.perf_counter() - t0
        mask = np.array(Image.open(mask_path))
        mask = (mask > 0).astype(np.uint8) if mask.ndim == 2 else (mask[..., 0] > 0).astype(np.uint8)
        times = []
        t = time.perf_counter()
        n = 0
        for _ in prop.run(frames_dir, masks={0: mask}):
            now = time.perf_counter()
            times.append(now - t)
            t = now
            n += 1
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        # results arrive in backbone batches, so per-result times are lumpy: total run time / frames
        queue.put({"ok": True, "build_s": build, "frames": n, "s_per_frame": sum(times) / max(1, n),
                   "first_s": times[0], "peak_rss_mb": rss, "preset": prop.preset.name,
                   "backbone": str(prop.backbone)})
    except Exception as e:  # report, never hang the parent
        queue.put({"ok": False, "error": f"{type(e).__name__}: {e}"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="DAVIS-2016 folder (JPEGImages/480p, Annotations/480p)")
    ap.add_argument("--sequence", default="dog")
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--config", action="append", required=True, help="NAME:ARGS (vlprop propagate model args)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    a = ap.parse_args()
    root = Path(a.root)
    src = root / "JPEGImages" / "480p" / a.sequence
    frames = sorted(src.glob("*.jpg"))[: a.frames]
    if not frames:
        sys.exit(f"no frames in {src}")
    mask_path = root / "Annotations" / "480p" / a.sequence / (frames[0].stem + ".png")
    ctx = mp.get_context("spawn")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for f in frames:
            os.symlink(f.resolve(), Path(tmp) / f.name)
        for spec in a.config:
            name, _, args_str = spec.partition(":")
            q = ctx.Queue()
            proc = ctx.Process(target=_child, args=(args_str, tmp, str(mask_path), a.threads, q))
            proc.start()
            res = q.get()
            proc.join()
            res.update(name=name, args=args_str)
            rows.append(res)
            print(json.dumps(res), file=sys.stderr, flush=True)
    base = next((r["s_per_frame"] for r in rows if r.get("ok")), None)
    print(f"\n{a.sequence}, first {len(frames)} frames at 480p, {a.threads} torch threads, one fresh process per row\n")
    print("| config | args | build s | s/frame | frames/s | peak RSS MB | vs first row |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        if not r.get("ok"):
            print(f"| {r['name']} | `{r['args']}` | failed: {r['error']} | | | | |")
            continue
        print(f"| {r['name']} | `{r['args']}` | {r['build_s']:.1f} | {r['s_per_frame']:.3f} | "
              f"{1 / r['s_per_frame']:.2f} | {r['peak_rss_mb']:.0f} | {r['s_per_frame'] / base:.2f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
