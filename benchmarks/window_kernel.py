"""Where the time of one windowed match goes, and how far it is from this machine's GEMM peak.

Usage::

    python benchmarks/window_kernel.py                     # crw window (disk r<12), tiles 8/10/12
    python benchmarks/window_kernel.py --window square --radius 12 --tiles 6 8 12 16

For one target frame against one context frame on a DAVIS-480p grid (60x107, D=256) it times

* ``window_topk`` as the engine calls it (GEMM + bias + top-k + index gather),
* the patch extraction alone (the copy of each band's overlapping patches),
* the patch GEMMs alone (``bmm`` of the query tiles against the patches),
* ``topk`` alone on a tensor of the same shape as the affinities,

* ``window_topk_exact`` (the engine's default ``"exact"`` kernel: each tile matched only against the M cells
  that some location's window contains, gathered by index; timed alternately with ``window_topk``),

and prints the GEMM FLOPs of the tiling, the GEMM rate reached, the peak rate of a large square-ish fp32
GEMM in the same process, and for a whole target frame (the unrestricted first frame matched densely, as in
crw/dul/mckee, plus ``--context`` windowed frames) the measured time and the GEMM-at-peak lower bound.
"""
from __future__ import annotations

import argparse
import time

import torch

from vlprop.propagation.affinity import (
    WindowWorkspace, band_patches, dense_topk, exact_geometry, extend_key, l2_normalize, pad_channels_last,
    query_tiles, window_geometry, window_offsets, window_topk, window_topk_exact,
)


def timed(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after two warm-up calls."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", default="60x107")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--window", default="disk", choices=["disk", "square"])
    ap.add_argument("--radius", type=float, default=12)
    ap.add_argument("--topk", type=int, default=10)
    ap.add_argument("--context", type=int, default=20, help="windowed context frames per target frame (default 20)")
    ap.add_argument("--no-dense-first", action="store_true",
                    help="the first frame is windowed too (dino/waldmann); default: it is matched densely (crw/dul)")
    ap.add_argument("--tiles", nargs="+", type=int, default=[8, 10, 12])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    h, w = map(int, args.grid.split("x"))
    D = args.dim
    g = torch.Generator().manual_seed(0)
    q = l2_normalize(torch.randn(D, h, w, generator=g))
    key = l2_normalize(torch.randn(D, h, w, generator=g))
    offsets = window_offsets(args.window, args.radius)

    a, b = torch.randn(2048, 256, generator=g), torch.randn(256, 2048, generator=g)
    peak = 2 * 2048 * 2048 * 256 / timed(lambda: a @ b, args.repeats) / 1e9
    dense_s, dense_flops = 0.0, 0.0
    if not args.no_dense_first:  # CRW/DUL/McKee: the labelled first frame is exempt from the window
        qf, kf = q.reshape(D, h * w).t().contiguous(), key.reshape(D, h * w).t().contiguous()
        dense_s = timed(lambda: dense_topk(qf, kf, args.topk), max(1, args.repeats // 2))
        dense_flops = 2.0 * (h * w) ** 2 * D
    print(f"# window kernel: torch {torch.__version__}, {torch.get_num_threads()} threads, grid {h}x{w}, D={D}, "
          f"{args.window} r={args.radius:g}, top-{args.topk}; fp32 GEMM peak here {peak:.0f} GFLOP/s")
    if dense_s:
        print(f"# dense first frame: {dense_s * 1e3:.0f} ms, {dense_flops / 1e9:.3g} GFLOP "
              f"({dense_flops / dense_s / 1e9:.0f} GFLOP/s); included in the per-frame columns")
    print("| tile | patch | GFLOP/ctx frame | window_topk ms | patch copy ms | GEMM ms | GEMM GFLOP/s | top-k ms | "
          f"frame total s (1 dense + {args.context} windowed) | GEMM-at-peak bound s/frame | exact: cells/tile | "
          "exact GFLOP/ctx frame | exact ms | patch/exact time |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for tile in args.tiles:
        geo = window_geometry(h, w, offsets, tile)
        P, nty, ntx = geo.patch, geo.nty, geo.ntx
        kp = pad_channels_last(key, geo)
        qt = query_tiles(q, geo)

        bands = [band_patches(kp, geo, by) for by in range(nty)]

        def copy_only():
            for by in range(nty):
                band_patches(kp, geo, by)

        def gemm_only():
            for by in range(nty):
                torch.bmm(qt[by], bands[by].transpose(1, 2))

        scores = torch.randn(ntx, tile * tile, P * P, generator=g)

        def topk_only():
            for _ in range(nty):
                torch.topk(scores, min(args.topk, P * P), dim=2)

        full = timed(lambda: window_topk(qt, kp, geo, args.topk), args.repeats)
        eg = exact_geometry(h, w, offsets, tile)
        ke = extend_key(key.reshape(D, h * w).t().contiguous())
        ws = WindowWorkspace()
        pair = {"patch": lambda: window_topk(qt, kp, geo, args.topk),
                "exact": lambda: window_topk_exact(qt, ke, eg, args.topk, workspace=ws)}
        alt = {"patch": [], "exact": []}
        for fn in pair.values():
            fn()
        for _ in range(args.repeats):  # alternately: other load on the machine hits both alike
            for name, fn in pair.items():
                t0 = time.perf_counter()
                fn()
                alt[name].append(time.perf_counter() - t0)
        med = {name: sorted(v)[len(v) // 2] for name, v in alt.items()}
        exact_flops = 2 * nty * ntx * tile * tile * eg.M * D
        t_copy = timed(copy_only, args.repeats)
        t_gemm = timed(gemm_only, args.repeats)
        t_topk = timed(topk_only, args.repeats)
        flops = 2 * nty * ntx * tile * tile * P * P * D
        print(f"| {tile} | {P}x{P} | {flops / 1e9:.3g} | {full * 1e3:.1f} | {t_copy * 1e3:.1f} | {t_gemm * 1e3:.1f} | "
              f"{flops / t_gemm / 1e9:.0f} | {t_topk * 1e3:.1f} | {dense_s + full * args.context:.2f} | "
              f"{(dense_flops + args.context * flops) / (peak * 1e9):.2f} | {eg.M} | {exact_flops / 1e9:.3g} | "
              f"{med['exact'] * 1e3:.1f} | {med['patch'] / med['exact']:.2f} |")


if __name__ == "__main__":
    main()
