"""Speed and memory of the propagation engine vs a naive dense-masked implementation.

Usage::

    python benchmarks/propagation.py                       # DAVIS-sized grid, all rows
    python benchmarks/propagation.py --quick               # small grid, for a smoke run
    python benchmarks/propagation.py --lengths 50 500 5000 --length-grid 30x54

Rows:
1. seconds per frame at a DAVIS-480p-sized grid (60x107, D=256, first frame + 20 context frames, k=10,
   radius 12) for our engine and for a naive implementation that builds the dense (21*HW) x HW affinity,
   applies a dense window mask, takes top-k and normalises (what CRW/WALD do); both in this process, same
   inputs; the outputs are compared (max abs difference);
2. peak memory (RSS high-water mark of a fresh child process, minus its RSS after setup) of both;
3. peak memory of the engine over videos of increasing length (streaming, bounded context).
"""
from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import resource
import sys
import time

import torch

from vlprop.config import get_preset
from vlprop.propagation.engine import PropagationEngine


def naive_dense_step(cfg, q, feats, labels, restricted):
    """Dense (N*HW) x HW affinity, dense mask, top-k, softmax over the k survivors (CRW semantics)."""
    D, h, w = q.shape
    hw = h * w
    qf = torch.nn.functional.normalize(q.reshape(D, hw), dim=0)
    keys = torch.cat([torch.nn.functional.normalize(f.reshape(D, hw), dim=0) for f in feats], 1)  # [D, N*hw]
    A = keys.t() @ qf  # [N*hw, hw]
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1).float(), xs.reshape(-1).float()
    d2 = (ys[:, None] - ys[None, :]) ** 2 + (xs[:, None] - xs[None, :]) ** 2
    if cfg.window == "disk":
        mask = d2 < cfg.radius ** 2
    else:
        mask = torch.maximum((ys[:, None] - ys[None, :]).abs(), (xs[:, None] - xs[None, :]).abs()) <= cfg.radius
    for n, r in enumerate(restricted):
        if r:
            A[n * hw:(n + 1) * hw].masked_fill_(~mask, float("-inf"))
    v, i = torch.topk(A, cfg.topk, dim=0)  # [k, hw]
    wts = torch.softmax(v / cfg.temperature, dim=0)
    L = torch.cat([l_.reshape(l_.shape[0], hw) for l_ in labels], 1)  # [C, N*hw]
    out = (L[:, i] * wts[None]).sum(1)
    return out.reshape(-1, h, w)


def make_inputs(D, h, w, n_ctx, C=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(D, h, w, generator=g)
    feats = [base + 0.5 * torch.randn(D, h, w, generator=g) for _ in range(n_ctx + 2)]
    labels = torch.softmax(4 * torch.randn(C, h, w, generator=g), 0)
    return feats, labels


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def peak_mb() -> float:
    """This process's own RSS high-water mark (VmHWM). Not ``ru_maxrss``: Linux carries that over from the
    parent across fork + exec, so a spawned child would report the parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _engine_setup(preset, D, h, w, n_ctx):
    cfg = get_preset(preset).propagation
    feats, labels = make_inputs(D, h, w, n_ctx)
    eng = PropagationEngine(cfg)
    eng.reset(feats[0], labels)
    prev = labels
    for t in range(1, n_ctx + 1):  # fill the context memory with frames and labels
        eng.push(feats[t], prev)
    return cfg, eng, feats


def _child_memory(kind, preset, D, h, w, n_ctx, q):
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    cfg, eng, feats = _engine_setup(preset, D, h, w, n_ctx)
    base = rss_mb()
    if kind == "engine":
        eng.predict(feats[-1])
    else:
        ctx = eng.context()
        naive_dense_step(cfg, feats[-1], [e.flat.t().reshape(D, h, w) for e in ctx],
                         [e.labels.reshape(-1, h, w) for e in ctx], [e.restricted for e in ctx])
    q.put(peak_mb() - base)


def _child_length(preset, D, h, w, length, q):
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    cfg = get_preset(preset).propagation
    g = torch.Generator().manual_seed(0)
    field = torch.randn(D, h, w + length, generator=g)
    eng = PropagationEngine(cfg)
    eng.reset(field[:, :, :w].contiguous(), torch.softmax(torch.randn(3, h, w, generator=g), 0))
    base = rss_mb()
    t0 = time.perf_counter()
    for t in range(1, length):  # a panning video: no frame is kept anywhere but in the engine
        eng.step(field[:, :, t:t + w].contiguous())
    q.put((peak_mb() - base, (time.perf_counter() - t0) / max(length - 1, 1)))


def in_child(target, *args):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    out = q.get()
    p.join()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", default="60x107", help="feature grid HxW (default 60x107 = DAVIS 480p at stride 8)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--presets", nargs="+", default=["crw", "dino", "waldmann-davis"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lengths", nargs="+", type=int, default=[50, 500, 5000])
    ap.add_argument("--length-grid", default="60x107", help="grid for the video-length rows")
    ap.add_argument("--length-preset", default="crw")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--skip-lengths", action="store_true")
    ap.add_argument("--quick", action="store_true", help="small grid and short videos (smoke run)")
    args = ap.parse_args(argv)
    if args.quick:
        args.grid, args.length_grid, args.lengths, args.repeats = "20x36", "12x20", [20, 60], 1
    h, w = map(int, args.grid.split("x"))
    D = args.dim
    threads = torch.get_num_threads()
    print(f"# vlprop propagation benchmark: torch {torch.__version__}, {threads} threads, grid {h}x{w}, D={D}")
    print("| preset | context | engine s/frame | naive dense s/frame | speed-up | max |diff| | "
          "engine peak MB | naive peak MB |")
    print("|---|---|---|---|---|---|---|---|")
    for preset in args.presets:
        cfg, eng, feats = _engine_setup(preset, D, h, w, get_preset(preset).propagation.context)
        n_ctx = cfg.context
        eng.predict(feats[-1])  # warm-up (caches the window tiling)
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            ours = eng.predict(feats[-1])
        t_ours = (time.perf_counter() - t0) / args.repeats
        mem_ours = in_child(_child_memory, "engine", preset, D, h, w, n_ctx)
        if args.skip_naive:
            print(f"| {preset} | 1+{n_ctx} | {t_ours:.3f} | - | - | - | {mem_ours:.0f} | - |")
            continue
        ctx = eng.context()
        ref_args = (cfg, feats[-1], [e.flat.t().reshape(D, h, w) for e in ctx],
                    [e.labels.reshape(-1, h, w) for e in ctx], [e.restricted for e in ctx])
        t0 = time.perf_counter()
        ref = naive_dense_step(*ref_args)
        t_ref = time.perf_counter() - t0
        if cfg.normalizer == "exp":  # DINO weights exp(a/T)/sum == softmax(a/T): same numbers
            pass
        diff = (ours - ref).abs().max().item()
        mem_ref = in_child(_child_memory, "naive", preset, D, h, w, n_ctx)
        print(f"| {preset} | 1+{n_ctx} | {t_ours:.3f} | {t_ref:.3f} | {t_ref / t_ours:.1f}x | {diff:.1e} | "
              f"{mem_ours:.0f} | {mem_ref:.0f} |")
        sys.stdout.flush()
    if args.skip_lengths:
        return
    lh, lw = map(int, args.length_grid.split("x"))
    print(f"\n# streaming: engine peak memory vs video length ({args.length_preset}, grid {lh}x{lw}, D={D})")
    print("| frames | peak MB above setup | s/frame |")
    print("|---|---|---|")
    for length in args.lengths:
        mem, spf = in_child(_child_length, args.length_preset, D, lh, lw, length)
        print(f"| {length} | {mem:.0f} | {spf:.3f} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
