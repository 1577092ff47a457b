"""MAST ROI localisation: time of one reference frame's ROI step (coarse offset + fine bilinear window values)
for every target location of a frame, new (one GEMM per chunk, then scalar gathers; the default path's separable
integer window, and the 4-corners-per-position path that MAST's compat positions need) against the previous
formulation (gathering the D-dim features of every candidate: 4 corners x (2R+1)^2 positions per target), in
the same process, on random features. Checks that both give the same values.

    PYTHONPATH=src python benchmarks/roi_speed.py --grid 60x107 --dim 112 --radius 12 --roi-radius 12
"""
from __future__ import annotations

import argparse
import time

import torch

from vlprop.propagation.localization import (
    RoiWindow,
    _offsets,
    bilinear_corners,
    roi_coarse_offset,
    roi_positions,
    roi_values,
)


def gather_coarse_offset(q, ref, rows, h, w, dilation, radius, temperature):  # the previous formulation
    off = _offsets(radius, q.dtype)
    ty, tx = torch.div(rows, w, rounding_mode="floor"), rows % w
    py = ty[:, None] + dilation * off[None, :, 0].long()
    px = tx[:, None] + dilation * off[None, :, 1].long()
    inside = (py >= 0) & (py < h) & (px >= 0) & (px < w)
    idx = py.clamp(0, h - 1) * w + px.clamp(0, w - 1)
    a = torch.bmm(ref[idx], q[:, :, None])[:, :, 0]
    a = torch.where(inside, a, torch.zeros((), dtype=a.dtype))
    return dilation * (torch.softmax(a / temperature, dim=1) @ off)


def gather_values(q, ref, pos, h, w):  # the previous formulation
    idx, wts, touches = bilinear_corners(pos, h, w)
    n, P = pos.shape[:2]
    a = torch.bmm(ref[idx.reshape(n, P * 4)], q[:, :, None]).reshape(n, P, 4)
    return torch.where(touches, (a * wts).sum(-1), torch.full((), float("-inf")))


def run(q, ref, h, w, args, mode: str):
    out = []
    for s in range(0, h * w, args.chunk):
        rows = torch.arange(s, min(h * w, s + args.chunk))
        qc = q[s:s + len(rows)]
        if mode == "window":
            a = qc @ ref.t()
            o = roi_coarse_offset(a, rows, h, w, 1, args.roi_radius, 0.05)
            out.append(RoiWindow(rows, o, h, w, args.radius).values(a))
        elif mode == "gemm":
            a = qc @ ref.t()
            o = roi_coarse_offset(a, rows, h, w, 1, args.roi_radius, 0.05)
            out.append(roi_values(a, roi_positions(rows, o, h, w, args.radius), h, w))
        else:
            o = gather_coarse_offset(qc, ref, rows, h, w, 1, args.roi_radius, 0.05)
            out.append(gather_values(qc, ref, roi_positions(rows, o, h, w, args.radius), h, w))
    return torch.cat(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", default="60x107")
    ap.add_argument("--dim", type=int, default=112)
    ap.add_argument("--radius", type=int, default=12)
    ap.add_argument("--roi-radius", type=int, default=12)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    h, w = map(int, args.grid.split("x"))
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(h * w, args.dim, generator=g), dim=1)
    ref = torch.nn.functional.normalize(torch.randn(h * w, args.dim, generator=g), dim=1)
    times = {}
    for name, mode in (("gather features (previous)", "gather"),
                       ("GEMM + 4 corners per position (compat path)", "gemm"),
                       ("GEMM + separable integer window (default path)", "window")):
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            v = run(q, ref, h, w, args, mode)
            best = min(best, time.perf_counter() - t0)
        times[name] = (best, v)
    v0 = next(iter(times.values()))[1]
    finite = torch.isfinite(v0)
    err = 0.0
    for _, v1 in times.values():
        assert torch.equal(finite, torch.isfinite(v1))
        err = max(err, (v0[finite] - v1[finite]).abs().max().item())
    base = next(iter(times.values()))[0]
    print(f"grid {h}x{w}, D={args.dim}, R={args.radius}, ROI radius {args.roi_radius}, chunk {args.chunk}, "
          f"{torch.get_num_threads()} threads; max |difference| {err:.2e}")
    print("| formulation | s per reference frame | speed-up |\n|---|---:|---:|")
    for name, (t, _) in times.items():
        print(f"| {name} | {t:.3f} | {base / t:.1f}x |")


if __name__ == "__main__":
    main()
