"""What reusing one chunk buffer saves in the dense (unrestricted first-frame) match.

Usage::

    python benchmarks/dense_workspace.py                    # 120x214 (DAVIS 480p at x2 input) and 60x107
    python benchmarks/dense_workspace.py --grids 60x107 --k 10 --repeats 5

``dense_topk`` matches the target rows in chunks of 2,048 against all ``M`` context cells. A chunk's
affinities (``2048 x M`` float32: 52 MB at 60x107, 210 MB at 120x214) are above glibc's largest mmap
threshold (32 MiB), so a buffer allocated fresh for each chunk is a new anonymous mapping whose pages the
kernel zero-fills and faults in on first touch, and unmaps again when it is freed. For each grid this times,
in the same process and on the same inputs,

* ``fresh``: a new buffer per chunk (``query[s:e] @ key.T`` then top-k: what the engine did before),
* ``reused``: ``dense_topk`` with one workspace for all chunks (what the engine does now),

and prints seconds per dense match, the ratio, the minor page faults and system CPU time of each, and the
largest difference between their outputs (they compute the same numbers).
"""
from __future__ import annotations

import argparse
import resource
import time

import torch

from vlprop.propagation.affinity import dense_topk, dense_workspace, l2_normalize


def fresh_chunks(query: torch.Tensor, key: torch.Tensor, k: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline: one newly allocated affinity block per chunk."""
    values, index = [], []
    key_t = key.t()
    for s in range(0, query.shape[0], chunk):
        a = query[s:s + chunk] @ key_t
        v, i = torch.topk(a, k, dim=1)
        values.append(v)
        index.append(i)
    return torch.cat(values), torch.cat(index)


def measure(fn, repeats: int) -> tuple[float, int, float, object]:
    out = fn()  # warm-up
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    dt = (time.perf_counter() - t0) / repeats
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return dt, (r1.ru_minflt - r0.ru_minflt) // repeats, (r1.ru_stime - r0.ru_stime) / repeats, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grids", nargs="+", default=["120x214", "60x107"])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    print(f"# dense match, fresh chunk buffers vs one reused workspace: torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, D={args.dim}, k={args.k}, chunk={args.chunk}, {args.repeats} repeats")
    print("| grid | chunk MB | fresh s | reused s | fresh / reused | fresh faults | reused faults | "
          "fresh sys s | reused sys s | max |diff| |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for grid in args.grids:
        h, w = (int(x) for x in grid.split("x"))
        n = h * w
        query = l2_normalize(torch.randn(n, args.dim, generator=g), dim=1)
        key = l2_normalize(torch.randn(n, args.dim, generator=g), dim=1)
        t_f, f_f, s_f, (v_f, _) = measure(lambda: fresh_chunks(query, key, args.k, args.chunk), args.repeats)

        def reused():
            ws = dense_workspace(None, query, key, args.chunk)  # one per frame, as the engine does
            return dense_topk(query, key, args.k, chunk=args.chunk, workspace=ws)

        t_r, f_r, s_r, top = measure(reused, args.repeats)
        diff = (v_f - top.values).abs().max().item()
        mb = min(args.chunk, n) * n * 4 / 2**20
        print(f"| {grid} | {mb:.0f} | {t_f:.3f} | {t_r:.3f} | {t_f / t_r:.2f}x | {f_f} | {f_r} | {s_f:.2f} | "
              f"{s_r:.2f} | {diff:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
