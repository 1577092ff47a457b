"""End-to-end speed of ``vlprop propagate`` with the default model, split into decode / backbone / engine / write.

For the default path (named model ``default`` = EfficientNet-Lite1 ImageNet ``stage4`` at stride 8, preset
``crw``) at 480p and 720p, prints seconds per frame for

* ``baseline``: the settings before the speed work -- backbone batch 4, BatchNorm not folded, contiguous memory
  format, fp32, and the engine's old window kernel (``window_kernel="patch"``) when this engine has that knob,
  with ``torch.topk`` per context frame (``VLPROP_TOPK=torch``) and MKL GEMMs (``VLPROP_GEMM=mkl``), and the
  mask decoding's previous ``torch.argmax`` over the channel dimension;
* ``fp32``: today's defaults (measured batch size, folded BatchNorm, measured memory format, the engine's
  default kernel);
* ``bf16``: ``--precision bf16`` (bfloat16 backbone and engine GEMMs) where the CPU supports it;
* the same ``fp32``/``bf16`` rows on CUDA when a GPU is present,

with the ratio to the baseline measured in the same process (settings run alternately, median over
``--repeats``: other jobs on the machine slow every setting alike), the peak memory of each row (RSS high-water
of a fresh child process that runs only that row), and whether the new fp32 masks are pixel-identical to the
baseline's on the real clip (bf16: the fraction of pixels that agree).

Frames: the first ``--frames`` JPEGs of ``../shared/data/davis2016/JPEGImages/480p/<--sequence>`` (854x480) with
its first annotation; 720p = those frames upscaled (bicubic; the mask nearest) and written as JPEG; a synthetic
video when the data is absent. Decoding is real (JPEG files read by vlprop's frame source), writing writes
palette PNGs to a temporary folder.

    python benchmarks/end_to_end.py                       # 480p and 720p, 20 frames, 2 repeats
    python benchmarks/end_to_end.py --frames 10 --sizes 480p --no-memory
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DAVIS = (REPO / ".." / "shared" / "data" / "davis2016").resolve()
SIZES = {"480p": (480, 854), "720p": (720, 1280)}


# ----------------------------------------------------------------------------- inputs
def prepare_frames(root: Path, size: str, n: int, sequence: str) -> tuple[Path, np.ndarray, str]:
    """A folder of ``n`` JPEG frames at ``size`` and the first frame's index mask; the origin as text."""
    from PIL import Image

    from vlprop.io.masks import read_mask

    H, W = SIZES[size]
    folder = root / f"frames-{size}"
    folder.mkdir(parents=True, exist_ok=True)
    src = DAVIS / "JPEGImages" / "480p" / sequence
    if src.is_dir():
        files = sorted(src.glob("*.jpg"))[:n]
        mask = read_mask(DAVIS / "Annotations" / "480p" / sequence / (files[0].stem + ".png"), binary_255="auto")
        for f in files:
            img = Image.open(f).convert("RGB")
            if img.size != (W, H):
                img = img.resize((W, H), Image.BICUBIC)
            img.save(folder / f.name, quality=95)
        if mask.shape != (H, W):
            mask = np.asarray(Image.fromarray(mask).resize((W, H), Image.NEAREST))
        origin = f"DAVIS-2016 {sequence}" + ("" if (H, W) == (480, 854) else " upscaled")
        return folder, mask, origin
    from vlprop.demo import synthetic_video

    vid = synthetic_video(num_frames=n, height=H, width=W, seed=0, speed=3.0)
    for t, f in enumerate(vid.frames):
        Image.fromarray(f).save(folder / f"{t:05d}.jpg", quality=95)
    return folder, vid.masks[0], "synthetic (no DAVIS data)"


# ----------------------------------------------------------------------------- settings
def engine_has_kernel_knob() -> bool:
    from vlprop.propagation.engine import PropagationEngine

    return "window_kernel" in inspect.signature(PropagationEngine.__init__).parameters


def build(setting: str, device: str):
    """A :class:`~vlprop.session.Propagator` for a row: ``baseline``, ``fp32`` or ``bf16``."""
    from vlprop.model import ModelSpec
    from vlprop.session import Propagator

    spec = ModelSpec(weights="default", device=device, precision="bf16" if setting == "bf16" else "fp32")
    if setting == "baseline":
        resolved = spec.resolve()
        ext = resolved.extractor(batch_size=4, fast=False)  # batch 4, BN not folded, contiguous, fp32
        prop = Propagator(model=spec, extractor=ext)
        prop.preset, prop.backbone, prop.weights = resolved.preset, resolved.backbone, resolved.weights
        if engine_has_kernel_knob():
            prop.engine_options = {"window_kernel": "patch"}
        # the engine's other pre-issue behaviour: torch.topk per context frame, MKL for every GEMM
        prop.bench_env = {"VLPROP_TOPK": "torch", "VLPROP_GEMM": "mkl"}
        # and the mask decoding's: torch's argmax over the channel dimension
        prop.bench_argmax = lambda scores: scores.argmax(0)
        return prop
    return Propagator(model=spec)


def describe(prop) -> str:
    ext = prop.extractor
    kernel = prop.engine_options.get("window_kernel", "default")
    return (f"batch {ext.batch_size}, BN folded {'yes' if getattr(ext, 'bn_folded', 0) else 'no'}, "
            f"{getattr(ext, 'memory_format', 'contiguous')}, backbone {str(ext.dtype).replace('torch.', '')}, "
            f"engine {str(prop.engine_dtype).replace('torch.', '')} kernel {kernel}"
            + "".join(f", {k}={v}" for k, v in getattr(prop, "bench_env", {}).items()))


@contextmanager
def engine_env(env: dict):
    """Set the engine's environment switches (read at every call) for one run, restore them after."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ----------------------------------------------------------------------------- one timed run
class Timer:
    def __init__(self, device: str):
        self.t = {"decode": 0.0, "backbone": 0.0, "engine": 0.0, "mask": 0.0, "write": 0.0}
        self.cuda = torch.device(device).type == "cuda"

    @contextmanager
    def part(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            self.t[name] += time.perf_counter() - t0


@contextmanager
def instrumented(prop, timer: Timer):
    """Time the frame source (decode), the extractor (backbone), every engine call (engine) and the decoding of
    grid probabilities to a full-resolution mask (mask: up-sampling and channel argmax)."""
    import vlprop.labels.masks as masks_mod
    import vlprop.session as session
    from vlprop.propagation.engine import PropagationEngine

    mask_fns = {n: getattr(session, n) for n in ("decode_probs", "probs_to_mask")}
    orig_argmax = masks_mod.channel_argmax

    orig_open, orig_extract = session.open_frames, prop.extractor.extract_batch
    originals = {n: getattr(PropagationEngine, n) for n in ("reset", "predict", "push", "step")}

    class TimedSource:
        def __init__(self, src):
            self.src = src

        def __getattr__(self, name):
            return getattr(self.src, name)

        def __iter__(self):
            it = iter(self.src)
            while True:
                with timer.part("decode"):
                    fr = next(it, None)
                if fr is None:
                    return
                yield fr

    def extract(frames):
        with timer.part("backbone"):
            return orig_extract(frames)

    def timed(fn):
        def wrapper(*a, **k):
            with timer.part("engine"):
                return fn(*a, **k)
        return wrapper

    def timed_mask(fn):
        def wrapper(*a, **k):
            with timer.part("mask"):
                return fn(*a, **k)
        return wrapper

    session.open_frames = lambda source: TimedSource(orig_open(source))
    prop.extractor.extract_batch = extract
    for n, fn in originals.items():
        setattr(PropagationEngine, n, timed(fn))
    for n, fn in mask_fns.items():
        setattr(session, n, timed_mask(fn))
    masks_mod.channel_argmax = getattr(prop, "bench_argmax", orig_argmax)
    try:
        yield
    finally:
        session.open_frames = orig_open
        del prop.extractor.extract_batch
        for n, fn in originals.items():
            setattr(PropagationEngine, n, fn)
        for n, fn in mask_fns.items():
            setattr(session, n, fn)
        masks_mod.channel_argmax = orig_argmax


def run_once(prop, folder: Path, mask: np.ndarray, out: Path, device: str) -> tuple[dict, list[np.ndarray]]:
    from vlprop.io.masks import write_mask

    timer = Timer(device)
    masks = []
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with instrumented(prop, timer), engine_env(getattr(prop, "bench_env", {})):
        for r in prop.run(str(folder), masks={0: mask}):
            with timer.part("write"):
                write_mask(out / f"{r.name}.png", r.mask)
            masks.append(r.mask)
    total = time.perf_counter() - t0
    n = len(masks)
    parts = {k: v / n for k, v in timer.t.items()}
    parts["other"] = max(0.0, total / n - sum(parts.values()))
    parts["total"] = total / n
    return parts, masks


# ----------------------------------------------------------------------------- peak memory (child process)
def child(args) -> None:
    prop = build(args.child, args.device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.folder)
        from vlprop.io.masks import read_mask

        mask = read_mask(args.mask)
        run_once(prop, folder, mask, Path(tmp) / "out", args.device)
    print(json.dumps({"rss_mib": _peak_rss_mib(),
                      "cuda_mib": torch.cuda.max_memory_allocated() / 2 ** 20
                      if torch.device(args.device).type == "cuda" else None}))


def _peak_rss_mib() -> float:
    """RSS high-water of this process: ``VmHWM`` (per address space, so a child started by a big parent does not
    inherit the parent's peak as ``ru_maxrss`` does across fork + exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux (bytes on macOS)


def peak_memory(setting: str, device: str, folder: Path, mask_png: Path, threads: int | None) -> dict:
    cmd = [sys.executable, __file__, "--child", setting, "--device", device, "--folder", str(folder),
           "--mask", str(mask_png)] + (["--threads", str(threads)] if threads else [])
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        return {"rss_mib": float("nan"), "cuda_mib": None, "error": res.stderr.strip().splitlines()[-1:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=20, help="frames per video (default 20)")
    p.add_argument("--sizes", default="480p,720p", help="comma-separated: 480p, 720p (default both)")
    p.add_argument("--sequence", default="blackswan", help="DAVIS-2016 sequence (default blackswan)")
    p.add_argument("--repeats", type=int, default=2, help="alternating timed repeats per setting (default 2)")
    p.add_argument("--no-memory", action="store_true", help="skip the child processes that measure peak memory")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--mask", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return 0

    from vlprop.backbones.fusion import bf16_supported
    from vlprop.io.masks import write_mask

    import vlprop

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"vlprop {vlprop.__version__} ({Path(vlprop.__file__).parent}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"bf16 on CPU: {bf16_supported('cpu')}, CUDA: {torch.cuda.is_available()}")
    knob = "window_kernel (the baseline uses 'patch')" if engine_has_kernel_knob() else "absent (one kernel)"
    print(f"engine window-kernel knob: {knob}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
            folder, mask, origin = prepare_frames(tmp, size, args.frames, args.sequence)
            mask_png = tmp / f"mask-{size}.png"
            write_mask(mask_png, mask)
            for device in devices:
                settings = ["baseline", "fp32"] + (["bf16"] if bf16_supported(device) else [])
                props = {s: build(s, device) for s in settings}
                print(f"\n## {size} ({SIZES[size][1]}x{SIZES[size][0]}), {args.frames} frames of {origin}, {device}")
                for s in settings:
                    print(f"  {s:8s}: {describe(props[s])}")
                times = {s: [] for s in settings}
                first_masks = {}
                run_once(props["fp32"], folder, mask, tmp / "warm", device)  # warm-up (allocator, oneDNN caches)
                for rep in range(args.repeats):
                    order = settings if rep % 2 == 0 else settings[::-1]
                    for s in order:
                        parts, masks = run_once(props[s], folder, mask, tmp / f"out-{s}", device)
                        times[s].append(parts)
                        first_masks.setdefault(s, masks)
                mem = {s: (peak_memory(s, device, folder, mask_png, args.threads) if not args.no_memory else None)
                       for s in settings}
                base = statistics.median(t["total"] for t in times["baseline"])
                head = f"  {'setting':8s} {'decode':>7s} {'backbone':>8s} {'engine':>7s} {'mask':>6s} {'write':>6s} " \
                       f"{'other':>6s} " \
                       f"{'total s/fr':>10s} {'vs base':>8s} {'peak RSS':>9s}"
                print(head)
                for s in settings:
                    med = {k: statistics.median(t[k] for t in times[s]) for k in times[s][0]}
                    m = mem[s]
                    rss = "-" if m is None else f"{m['rss_mib']:.0f} MiB"
                    if m is not None and m.get("cuda_mib") is not None:
                        rss += f" (GPU {m['cuda_mib']:.0f})"
                    print(f"  {s:8s} {med['decode']:7.3f} {med['backbone']:8.3f} {med['engine']:7.3f} "
                          f"{med['mask']:6.3f} {med['write']:6.3f} {med['other']:6.3f} {med['total']:10.3f} {base / med['total']:7.2f}x "
                          f"{rss:>9s}")
                ref = first_masks["baseline"]
                for s in settings[1:]:
                    diff = [int((a != b).sum()) for a, b in zip(ref, first_masks[s])]
                    agree = 1 - sum(diff) / sum(a.size for a in ref)
                    same = all(d == 0 for d in diff)
                    print(f"  masks {s} vs baseline: {'pixel-identical' if same else 'NOT identical'} "
                          f"({sum(d > 0 for d in diff)} of {len(diff)} frames differ, {sum(diff)} pixels, "
                          f"agreement {agree:.5f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
