"""The ``vlprop`` command: propagate | presets | demo | eval | train."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from . import __version__
from .errors import InputError, VlpropError


def _parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise InputError(f"--set expects KEY=VALUE (e.g. --set topk=5), got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = _parse_value(v.strip())
    return out




def _add_model_args(p: argparse.ArgumentParser, default_preset: str | None = "dul") -> None:
    shown = default_preset or "dul for masks, waldmann-jhmdb for --keypoints"
    p.add_argument("--preset", default=default_preset, help=f"propagation preset (default {shown}; "
                                                            "see `vlprop presets`)")
    p.add_argument("--backbone", default="resnet18", help="backbone name (default resnet18)")
    p.add_argument("--weights", default="default",
                   help="'default' (shipped model), 'random' (seeded), 'imagenet' (torchvision download), "
                        "or a checkpoint file / training run directory")
    p.add_argument("--layer", default=None, help="feature layer res2|res3|res4|head (default: the preset's)")
    p.add_argument("--input-scale", type=float, default=None, help="resize frames by this factor before the "
                                                                    "backbone (e.g. 2 = x2 up-sampling)")
    p.add_argument("--short-side", type=int, default=None, help="resize frames so the short side has this length")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of a random-init backbone (default 0)")
    p.add_argument("--compat", action="store_true", help="reproduce the reference code's documented quirks")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any propagation/label setting, e.g. --set topk=5 --set radius=8")


def _make_propagator(args: argparse.Namespace, void: int | None = 255):
    from .eval.runner import ModelSpec

    return ModelSpec.from_args(args).build(void=void)


# --------------------------------------------------------------------------- propagate
def cmd_propagate(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from .io.files import atomic_path, prepare_output_dir
    from .io.masks import overlay, write_mask
    from .io.render import VideoWriter
    from .io.video import open_frames

    if getattr(args, "keypoints", None):
        if args.mask is not None or args.annotations is not None:
            raise InputError("give either --keypoints or --mask/--annotations, not both")
        from .tasks.pose import run_keypoint_propagate

        return run_keypoint_propagate(args)
    if (args.mask is None) == (args.annotations is None):
        raise InputError("give exactly one of --mask FIRST.png, --annotations DIR or --keypoints FIRST.json")
    if args.preset is None:
        args.preset = "dul"
    src = open_frames(args.source)
    out = Path(args.out)
    prepare_output_dir(out, args.force)
    masks = {args.mask_frame: args.mask} if args.mask else None
    prop = _make_propagator(args, void=None if args.no_void else args.void)
    probs_dir = out / "probs" if args.save_probs else None
    t0 = time.perf_counter()
    n = 0
    # the overlay is written to a temporary file and renamed when complete; an error discards it
    with (VideoWriter(args.overlay, fps=args.fps) if args.overlay else contextlib.nullcontext()) as writer, \
            tqdm(total=len(src), unit="frame", desc="propagating", disable=args.quiet) as bar:
        for r in prop.run(src, masks=masks, annotations=args.annotations):
            write_mask(out / f"{r.name}.png", r.mask)
            if probs_dir is not None and r.probs is not None:
                with atomic_path(probs_dir / f"{r.name}.npz") as tmp:
                    np.savez_compressed(tmp, probs=r.probs.numpy().astype(np.float16),
                                        object_ids=np.array(r.object_ids, dtype=np.int64))
            if writer is not None:
                writer.write(overlay(r.image, r.mask))
            n += 1
            bar.update(1)
    dt = time.perf_counter() - t0
    print(f"wrote {n} masks to {out} ({dt:.1f} s, {n / max(dt, 1e-9):.2f} frames/s)")
    if args.overlay:
        print(f"overlay video: {args.overlay}")
    return 0


# --------------------------------------------------------------------------- presets
def cmd_presets(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .config import PRESETS

    if args.json:
        print(json.dumps({k: asdict(v) for k, v in PRESETS.items()}, indent=2))
        return 0
    for name, p in PRESETS.items():
        c = p.propagation
        win = "none" if c.window == "none" else f"{c.window} r={c.radius:g}" + ("" if c.window_long_term else
                                                                                  " (first frame exempt)")
        print(f"{name}\n  {p.description}")
        print(f"  aggregation={c.aggregation} topk={c.topk} normalizer={c.normalizer} T={c.temperature:g} "
              f"norm_stage={c.norm_stage} context={c.long_term}+{c.context} window={win} "
              f"feature_norm={c.feature_norm} label_norm={c.label_norm}")
        f = p.features
        print(f"  features: " + (f"backbone={f.backbone} " if f.backbone else "")
              + f"layer={f.layer} stride={f.stride} input_scale={f.input_scale:g}"
              + (f" short_side={f.short_side}" if f.short_side else "")
              + f"; labels: downsample={p.labels.downsample} output_minmax={p.labels.output_minmax}")
        if p.compat_flags:
            print(f"  --compat turns on: {', '.join(p.compat_flags)}")
        print(f"  reference: {p.reference}\n")
    return 0


# --------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from .demo import iou, synthetic_video
    from .io.files import prepare_output_dir
    from .io.masks import overlay, write_mask
    from .io.render import VideoWriter
    from .session import Propagator

    out = Path(args.out)
    prepare_output_dir(out, args.force)
    # the model first: a bad option fails before anything is written into --out
    prop = Propagator(preset=args.preset, weights=args.weights, device=args.device, input_scale=args.input_scale)
    vid = synthetic_video(num_frames=args.frames, height=240, width=320, seed=args.seed)
    frames_dir = out / "frames"
    from PIL import Image

    for t, img in enumerate(vid.frames):
        frames_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(frames_dir / f"{t:05d}.png")
    write_mask(out / "first_mask.png", vid.masks[0])
    print(f"synthesised {len(vid.frames)} frames of moving textured shapes in {frames_dir}")
    print(f"propagating with preset={args.preset} backbone=resnet18 weights={prop.weights} "
          f"input x{args.input_scale:g}")
    masks_dir = out / "masks"
    ious = {i: [] for i in vid.ids}
    t0 = time.perf_counter()
    with VideoWriter(out / "overlay.mp4", fps=12) as writer:
        for t, mask in tqdm(prop.propagate(str(frames_dir), masks={0: str(out / "first_mask.png")}),
                            total=len(vid.frames), unit="frame", disable=args.quiet):
            write_mask(masks_dir / f"{t:05d}.png", mask)
            writer.write(overlay(vid.frames[t], mask))
            if t > 0:
                for i in vid.ids:
                    ious[i].append(iou(mask == i, vid.masks[t] == i))
    dt = time.perf_counter() - t0
    print(f"masks:   {masks_dir}\noverlay: {out / 'overlay.mp4'}")
    print(f"speed:   {len(vid.frames) / dt:.2f} frames/s on {args.device}")
    for i in vid.ids:
        print(f"object {i}: mean IoU with the true masks {np.mean(ious[i]):.3f} (last frame {ious[i][-1]:.3f})")
    return 0


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vlprop", description="Video label propagation with learned dense "
                                                            "correspondence.")
    ap.add_argument("--version", action="version", version=f"vlprop {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("propagate", help="propagate first-frame masks (or keypoints) through a video")
    p.add_argument("source", help="a folder of frames (jpg/png) or a video file (mp4/avi/mov/mkv)")
    p.add_argument("--mask", help="index-mask PNG of the labelled frame (palette/L/0-255)")
    p.add_argument("--mask-frame", default=0, type=lambda s: int(s) if s.isdigit() else s,
                   help="index or name of the frame --mask labels (default 0)")
    p.add_argument("--annotations", help="folder of index-mask PNGs named after the frames; objects may "
                                         "first appear on any frame (YouTube-VOS style)")
    p.add_argument("--out", required=True, help="output folder for the palette PNG masks")
    p.add_argument("--overlay", help="also write an overlay video (e.g. overlay.mp4 or .gif)")
    p.add_argument("--fps", type=float, default=24.0, help="overlay frame rate (default 24)")
    p.add_argument("--save-probs", action="store_true", help="save grid-resolution probabilities as "
                                                             "probs/<frame>.npz (float16)")
    p.add_argument("--void", type=int, default=255, help="mask value treated as void/unknown (default 255)")
    p.add_argument("--no-void", action="store_true", help="treat every non-zero value as an object id")
    p.add_argument("--force", action="store_true", help="write into a non-empty output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_model_args(p, default_preset=None)
    _add_keypoint_options(p)
    p.set_defaults(func=cmd_propagate)

    p = sub.add_parser("presets", help="list the propagation presets and their settings")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("demo", help="synthesise a video of moving shapes and propagate its first mask")
    p.add_argument("--out", default="vlprop-demo", help="output folder (default ./vlprop-demo)")
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--preset", default="dul")
    p.add_argument("--weights", default="default")
    p.add_argument("--device", default="cpu")
    p.add_argument("--input-scale", type=float, default=2.0,
                   help="resize frames by this factor before the backbone (default 2: the demo's shapes are "
                        "about 100 px wide, 12 cells at stride 8; x2 input gives the grid the detail small "
                        "objects need, as in McKee et al. and Waldmann et al.)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    _add_optional_commands(sub)
    return ap


def _add_keypoint_options(p: argparse.ArgumentParser) -> None:
    try:
        from .tasks.pose import add_keypoint_arguments
    except ImportError:
        return
    add_keypoint_arguments(p)


def _add_optional_commands(sub) -> None:
    """Commands implemented in other subpackages (evaluation, training)."""
    try:
        from .eval.cli import add_eval_commands
    except ImportError:
        pass
    else:
        add_eval_commands(sub, _add_model_args, _make_propagator)
    try:
        from .train.cli import add_train_commands
    except ImportError:
        pass
    else:
        add_train_commands(sub)


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except VlpropError as e:
        print(f"vlprop: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vlprop: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
