"""Old vs new propagation engine, per target frame, in one process: window kernels, GEMM backends, bf16.

Usage::

    python benchmarks/engine_speed.py                       # DAVIS-480p grid 60x107, D=112 and 512, crw
    python benchmarks/engine_speed.py --dims 112 --repeats 9 --threads 1

For each feature width D it fills one engine per variant with the same first frame + 20 context frames
(the ``crw`` preset: k=10, disk r<12, the labelled first frame exempt from the window and matched densely)
and times ``predict`` of the same target frame, the variants taking turns (repeat 1 of every variant, then
repeat 2, ...), so that load from other processes on the machine hits all of them alike; the table gives the
median seconds per frame and the ratio to the old engine (``patch`` kernel, MKL). Variants:

* ``old``: the previous engine: window kernel ``patch`` (every cell of each 8x8 tile's (8+2R)^2 patch),
  ``torch.topk`` (``VLPROP_TOPK=torch``), MKL GEMMs (``VLPROP_GEMM=mkl``);
* ``exact-torchtopk``: :func:`~vlprop.propagation.affinity.window_topk_exact` (only the cells some location of
  the tile can see, tiles in cache-sized groups), still ``torch.topk`` and MKL;
* ``exact``: the new default: exact kernel, one joint top-k per location over the windowed frames
  (:func:`~vlprop.propagation.affinity.window_topk_exact_joint`), two-stage top-k
  (:func:`~vlprop.propagation.affinity.block_topk`), GEMM backend measured (``VLPROP_GEMM=auto``);
* ``exact-onednn``: the same with the dense first-frame GEMM forced to oneDNN;
* ``exact-bf16``: ``dtype=torch.bfloat16`` (affinity GEMMs in bf16 -- AMX where the CPU has it; labels and
  softmax in fp32): approximate, so its agreement with the fp32 engine is printed too.

A second table times the dense first-frame match alone (``dense_topk``, 2048-row chunks) per GEMM backend.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from vlprop.config import coerce_setting, get_preset
from vlprop.propagation.affinity import dense_topk, l2_normalize
from vlprop.propagation.engine import PropagationEngine

from end_to_end import engine_env  # noqa: E402  (a sibling script: benchmarks run as `python benchmarks/...`)

VARIANTS = {  # name: (engine keyword arguments, environment)
    "old": ({"window_kernel": "patch"}, {"VLPROP_GEMM": "mkl", "VLPROP_TOPK": "torch"}),
    "exact-torchtopk": ({"window_kernel": "exact"}, {"VLPROP_GEMM": "mkl", "VLPROP_TOPK": "torch"}),
    "exact": ({"window_kernel": "exact"}, {"VLPROP_GEMM": "auto", "VLPROP_TOPK": "block"}),
    "exact-onednn": ({"window_kernel": "exact"}, {"VLPROP_GEMM": "onednn", "VLPROP_TOPK": "block"}),
    "exact-bf16": ({"window_kernel": "exact", "dtype": torch.bfloat16}, {"VLPROP_GEMM": "auto",
                                                                          "VLPROP_TOPK": "block"}),
}


def make_video(D: int, h: int, w: int, n: int, C: int = 4, seed: int = 0):
    """``n`` feature maps that share a structure (a random field + per-frame noise) and labels of frame 0."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(D, h, w, generator=g)
    feats = [base + 0.7 * torch.randn(D, h, w, generator=g) for _ in range(n)]
    labels = torch.softmax(4 * torch.randn(C, h, w, generator=g), 0)
    return feats, labels


def with_env(env: dict, fn):
    """``fn()`` with the engine's environment switches ``env`` set (restored after)."""
    with engine_env(env):
        return fn()


def interleaved(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Median wall and CPU (process) seconds of each callable, the callables taking turns; one warm-up round
    first. On a shared machine the CPU time is the steadier of the two (it leaves out time spent waiting for a
    core, not the slow-down from caches and memory bandwidth shared with the other load)."""
    for fn in fns.values():
        fn()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return ({k: statistics.median(v) for k, v in wall.items()}, {k: statistics.median(v) for k, v in cpu.items()})


def engine_rows(D: int, h: int, w: int, variants: list[str], repeats: int, cfg) -> list[str]:
    feats, labels = make_video(D, h, w, cfg.context + 2)
    engines = {}
    for name in variants:
        kwargs, _ = VARIANTS[name]
        eng = PropagationEngine(cfg, **kwargs)
        eng.reset(feats[0], labels)
        for t in range(1, cfg.context + 1):  # context labels that differ per frame (shifted), so that the
            eng.push(feats[t], labels.roll(t, dims=2))  # agreement column depends on which cells are picked
        engines[name] = eng
    target = feats[-1]
    outs = {name: with_env(VARIANTS[name][1], lambda e=eng: e.predict(target)) for name, eng in engines.items()}
    fns = {name: (lambda e=eng, s=VARIANTS[name][1]: with_env(s, lambda: e.predict(target)))
           for name, eng in engines.items()}
    med, cpu = interleaved(fns, repeats)
    ref_name = variants[0]
    ref = outs[ref_name]
    rows = []
    for name in variants:
        diff = (outs[name] - ref).abs().max().item()
        agree = (outs[name].argmax(0) == ref.argmax(0)).float().mean().item()
        rows.append(f"| {D} | {name} | {med[name]:.3f} | {med[ref_name] / med[name]:.2f} | "
                    f"{med['exact'] / med[name] if 'exact' in med else float('nan'):.2f} | {cpu[name]:.3f} | "
                    f"{cpu[ref_name] / cpu[name]:.2f} | {diff:.1e} | {100 * agree:.2f} |")
    return rows


def dense_rows(D: int, h: int, w: int, repeats: int) -> list[str]:
    g = torch.Generator().manual_seed(1)
    q = l2_normalize(torch.randn(D, h * w, generator=g)).t().contiguous()
    key = l2_normalize(torch.randn(D, h * w, generator=g)).t().contiguous()
    qb, kb = q.bfloat16(), key.bfloat16()
    fns = {
        "mkl": lambda: with_env({"VLPROP_GEMM": "mkl"}, lambda: dense_topk(q, key, 10)),
        "onednn": lambda: with_env({"VLPROP_GEMM": "onednn"}, lambda: dense_topk(q, key, 10)),
        "bf16": lambda: dense_topk(qb, kb, 10),
    }
    med, cpu = interleaved(fns, repeats)
    return [f"| {D} | {name} | {med[name] * 1e3:.0f} | {med['mkl'] / med[name]:.2f} | {cpu[name] * 1e3:.0f} | "
            f"{cpu['mkl'] / cpu[name]:.2f} |" for name in fns]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", default="60x107")
    ap.add_argument("--dims", nargs="+", type=int, default=[112, 512])
    ap.add_argument("--preset", default="crw")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a setting of the preset, e.g. the MAST/LIIR union of windows: --set topk=0 "
                         "--set window=square --set window_long_term=true --set context=7")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = map(int, args.grid.split("x"))
    pairs = (item.split("=", 1) for item in args.set)
    settings = {k.strip(): coerce_setting(k.strip(), v.strip()) for k, v in pairs}
    cfg = get_preset(args.preset, **settings).propagation
    print(f"# engine speed: torch {torch.__version__}, {torch.get_num_threads()} threads, grid {h}x{w}, "
          f"preset {args.preset} {' '.join(args.set)} (1+{cfg.context} context frames, k={cfg.topk}, "
          f"{cfg.window} r={cfg.radius:g}), "
          f"median of {args.repeats} interleaved repeats")
    print(f"| D | variant | wall s/frame | wall speed-up vs {args.variants[0]} | wall speed-up vs exact | "
          f"CPU s/frame | CPU speed-up vs {args.variants[0]} | max |diff| vs {args.variants[0]} | "
          "argmax agreement % |")
    print("|---|---|---|---|---|---|---|---|---|")
    for D in args.dims:
        for row in engine_rows(D, h, w, args.variants, args.repeats, cfg):
            print(row, flush=True)
    print(f"\n# dense first-frame match alone (dense_topk, k=10, {h * w} x {h * w})")
    print("| D | GEMM | wall ms | wall speed-up vs mkl | CPU ms | CPU speed-up vs mkl |")
    print("|---|---|---|---|---|---|")
    for D in args.dims:
        for row in dense_rows(D, h, w, args.repeats):
            print(row, flush=True)


if __name__ == "__main__":
    main()
