"""Per-iteration cost of DUL training (ResNet-18, stride 8) on this machine; prints a table.

    python benchmarks/bench_train_dul.py                       # default settings grid
    python benchmarks/bench_train_dul.py --crop 128 --batch 8 --frames 5 --threads 1 2 --iters 3
    python benchmarks/bench_train_dul.py --data ../shared/data/davis2016-train-256   # + data loading

Compute time is one optimiser step (forward with gradient over view A + view-B reference frames,
no-grad view-B pass, losses, backward, Adam) on a fixed synthetic batch; data time is the cost of
producing one batch of clips in one process (decode, resize, crop, two views). With ``W`` loader
workers running beside training, data costs overlap compute but take cores from it on a small CPU.
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path

import torch

from vlprop.backbones import create_backbone
from vlprop.train.augment import AugmentConfig, ViewTransform, view_theta
from vlprop.train.data import ClipDataset, discover_videos
from vlprop.train.methods.dul import DUL, DULConfig, build_optimizer


def synthetic_batch(b: int, T: int, crop: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    theta = view_theta(ViewTransform(True, crop // 8, crop // 4, crop // 2, crop // 2), crop, crop)
    return {"view_a": torch.randn(b, T, 3, crop, crop, generator=g),
            "view_b": torch.randn(b, T, 3, crop, crop, generator=g),
            "theta": theta[None].expand(b, 2, 3).clone(), "anchor_u": torch.rand(b, 4, generator=g)}


def time_compute(crop: int, batch: int, frames: int, threads: int, iters: int, channels_last: bool) -> list[float]:
    torch.set_num_threads(threads)
    method = DUL(DULConfig())
    torch.manual_seed(0)
    net = method.build(create_backbone("resnet18", stride=8, layer="res4")).train()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = build_optimizer(net)
    batch = synthetic_batch(batch, frames, crop)
    if channels_last:
        batch = {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in batch.items()}
    times = []
    for i in range(iters + 1):  # first iteration = warm-up (allocator, oneDNN primitives)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out = method.loss(net, batch)
        out["loss"].backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return times


def time_data(root: Path, crop: int, batch: int, frames: int, gap: int, n_batches: int) -> float:
    torch.set_num_threads(1)
    entries = discover_videos(root, min_frames=frames).entries
    ds = ClipDataset(entries, frames=frames, gap=gap, augment=AugmentConfig(crop=crop), seed=0)
    t0 = time.perf_counter()
    for g in range(batch * n_batches):
        ds[(g % len(ds), g)]
    return (time.perf_counter() - t0) / n_batches


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--crop", type=int, nargs="+", default=[96, 128, 160])
    p.add_argument("--batch", type=int, nargs="+", default=[8])
    p.add_argument("--frames", type=int, nargs="+", default=[5])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--iters", type=int, default=3, help="timed iterations per setting (after one warm-up)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--data", type=Path, help="also time clip loading from this folder")
    p.add_argument("--gap", type=int, default=5)
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads available, channels_last={args.channels_last}")
    print(f"{'crop':>5} {'batch':>5} {'T':>3} {'thr':>4} {'s/it (median)':>14} {'min':>7} {'clips/s':>8}")
    for crop, b, T, thr in itertools.product(args.crop, args.batch, args.frames, args.threads):
        ts = time_compute(crop, b, T, thr, args.iters, args.channels_last)
        med = statistics.median(ts)
        print(f"{crop:>5} {b:>5} {T:>3} {thr:>4} {med:>14.2f} {min(ts):>7.2f} {b / med:>8.2f}", flush=True)
    if args.data is not None:
        print(f"\ndata: one batch of clips in one process (gap {args.gap})")
        for crop, b, T in itertools.product(args.crop, args.batch, args.frames):
            print(f"{crop:>5} {b:>5} {T:>3}  {time_data(args.data, crop, b, T, args.gap, 3):.3f} s/batch", flush=True)


if __name__ == "__main__":
    main()
