"""``vlprop propagate`` (masks; keypoints are in :mod:`vlprop.cli.keypoints`), ``vlprop presets``, ``vlprop demo``."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from vlprop.cli.options import add_model_args, model_spec_from_args
from vlprop.errors import InputError


# --------------------------------------------------------------------------- propagate
def cmd_propagate(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from vlprop.io.files import atomic_path, prepare_output_dir
    from vlprop.io.masks import overlay, write_mask
    from vlprop.io.render import VideoWriter
    from vlprop.io.video import open_frames

    if getattr(args, "keypoints", None):
        if args.mask is not None or args.annotations is not None:
            raise InputError("give either --keypoints or --mask/--annotations, not both")
        from vlprop.cli.keypoints import run_keypoint_propagate

        return run_keypoint_propagate(args)
    if (args.mask is None) == (args.annotations is None):
        raise InputError("give exactly one of --mask FIRST.png, --annotations DIR or --keypoints FIRST.json")
    if args.preset is None:
        args.preset = "dul"
    src = open_frames(args.source)
    out = Path(args.out)
    prepare_output_dir(out, args.force)
    masks = {args.mask_frame: args.mask} if args.mask else None
    prop = model_spec_from_args(args).build(void=None if args.no_void else args.void)
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

    from vlprop.config import PRESETS

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
        print(f"  features: layer={f.layer} stride={f.stride} input_scale={f.input_scale:g}"
              + (f" short_side={f.short_side}" if f.short_side else "")
              + f"; labels: downsample={p.labels.downsample} output_minmax={p.labels.output_minmax}")
        if f.size or f.colorspace:
            print(f"  input: size={'x'.join(map(str, f.size)) if f.size else 'frame'} "
                  f"colorspace={f.colorspace or 'the weights'}")
        if p.compat_flags:
            print(f"  --compat turns on: {', '.join(p.compat_flags)}")
        print(f"  reference: {p.reference}")
        print(f"  expected weights: {' or '.join(p.expected_weights) if p.expected_weights else 'any'}"
              + (f" ({f.reference_backbone})" if f.reference_backbone else "") + "\n")
    return 0


# --------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from vlprop.demo import iou, synthetic_video
    from vlprop.io.files import prepare_output_dir
    from vlprop.io.masks import overlay, write_mask
    from vlprop.io.render import VideoWriter
    from vlprop.session import Propagator

    out = Path(args.out)
    prepare_output_dir(out, args.force)
    # the model first: a bad option fails before anything is written into --out
    prop = Propagator(preset=args.preset, backbone=args.backbone, weights=args.weights, device=args.device,
                      input_scale=args.input_scale)
    vid = synthetic_video(num_frames=args.frames, height=240, width=320, seed=args.seed)
    frames_dir = out / "frames"
    from PIL import Image

    for t, img in enumerate(vid.frames):
        frames_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(frames_dir / f"{t:05d}.png")
    write_mask(out / "first_mask.png", vid.masks[0])
    print(f"synthesised {len(vid.frames)} frames of moving textured shapes in {frames_dir}")
    print(f"propagating with preset={prop.preset.name} backbone={prop.backbone} weights={prop.weights} "
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


# --------------------------------------------------------------------------- parsers
def add_commands(sub) -> None:
    """Register ``propagate``, ``presets`` and ``demo`` on the ``vlprop`` sub-command parsers."""
    from vlprop.cli.keypoints import add_keypoint_arguments

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
    add_model_args(p)
    add_keypoint_arguments(p)
    p.set_defaults(func=cmd_propagate)

    p = sub.add_parser("presets", help="list the propagation presets and their settings")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("demo", help="synthesise a video of moving shapes and propagate its first mask")
    p.add_argument("--out", default="vlprop-demo", help="output folder (default ./vlprop-demo)")
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--preset", default=None, help="propagation preset (default: the named model's)")
    p.add_argument("--backbone", default=None, help="backbone (default: the named model's)")
    p.add_argument("--weights", default="default", help="named model, random, imagenet, or a checkpoint (default "
                                                         "'default')")
    p.add_argument("--device", default="cpu")
    p.add_argument("--input-scale", type=float, default=2.0,
                   help="resize frames by this factor before the backbone (default 2: the demo's shapes are "
                        "about 100 px wide, 12 cells at stride 8; x2 input gives the grid the detail small "
                        "objects need, as in McKee et al. and Waldmann et al.)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

