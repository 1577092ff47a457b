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

from vlprop.cli.options import add_model_args, guard_outputs, model_spec_from_args, weights_input
from vlprop.errors import InputError


# --------------------------------------------------------------------------- propagate
def cmd_propagate(args: argparse.Namespace) -> int:
    """Masks: ``<out>/<frame>.png`` (+ ``probs/<frame>.npz``, the overlay video). Everything is checked before
    the first file is written; the result set is marked incomplete until its last file is written."""
    import numpy as np
    from tqdm import tqdm

    from vlprop.io.files import ResultSet, atomic_path, prepare_output_dir
    from vlprop.annotation import propagate_video
    from vlprop.io.masks import overlay, write_mask
    from vlprop.io.paths import check_name, ensure_inside
    from vlprop.io.render import VideoWriter, check_fps
    from vlprop.io.video import open_frames
    from vlprop.labels.confidence import ConfidenceTracker

    if getattr(args, "keypoints", None):
        if args.mask is not None or args.annotations is not None:
            raise InputError("give either --keypoints or --mask/--annotations, not both")
        from vlprop.cli.keypoints import run_keypoint_propagate

        return run_keypoint_propagate(args)
    if (args.mask is None) == (args.annotations is None):
        raise InputError("give exactly one of --mask FIRST.png, --annotations DIR or --keypoints FIRST.json")
    if args.overlay:
        check_fps(args.fps)
    if not 0 <= args.void <= 255:
        raise InputError(f"--void must be a mask value 0..255, got {args.void}")
    src = open_frames(args.source)
    out = Path(args.out)
    guard_outputs(args.out, args.overlay, args.force,
                  {"SOURCE": args.source, "--mask": args.mask, "--annotations": args.annotations,
                   "--weights": weights_input(args.weights)})
    masks = {args.mask_frame: args.mask} if args.mask else None
    prop = model_spec_from_args(args).build(void=None if args.no_void else args.void)
    direction = getattr(args, "direction", "forward")
    # checks the labels before any write
    results = propagate_video(prop, src, masks=masks, annotations=args.annotations, direction=direction,
                              max_memory_bytes=FEATURE_MEMORY_BYTES)
    names = [check_name(n, "frame name") for n in src.names()]
    planned = [f"{n}.png" for n in names] + ([f"probs/{n}.npz" for n in names] if args.save_probs else [])
    if args.overlay and Path(args.overlay).resolve().parent.is_relative_to(out.resolve()):
        planned.append(str(Path(args.overlay).resolve().relative_to(out.resolve())))
    prepare_output_dir(out, args.force)
    result_set = ResultSet(out, "vlprop propagate")
    result_set.begin(planned)
    probs_dir = out / "probs" if args.save_probs else None
    tracker, confidence = ConfidenceTracker(), []
    t0 = time.perf_counter()
    n = 0
    # the overlay is written to a temporary file and renamed when complete; an error discards it
    with (VideoWriter(args.overlay, fps=args.fps) if args.overlay else contextlib.nullcontext()) as writer, \
            tqdm(total=len(src), unit="frame", desc="propagating", disable=args.quiet) as bar:
        for r in results:
            write_mask(ensure_inside(out, out / f"{check_name(r.name, 'frame name')}.png"), r.mask)
            confidence += tracker.update(r.index, r.name, r.mask, r.probs, r.object_ids, r.annotated)
            if probs_dir is not None and r.probs is not None:
                with atomic_path(probs_dir / f"{r.name}.npz") as tmp:
                    np.savez_compressed(tmp, probs=r.probs.numpy().astype(np.float16),
                                        object_ids=np.array(r.object_ids, dtype=np.int64))
            if writer is not None:
                writer.write(overlay(r.image, r.mask))
            n += 1
            bar.update(1)
    result_set.finish()
    dt = time.perf_counter() - t0
    _write_run_records(args, out, prop, src, confidence, n, dt)
    print(f"wrote {n} masks to {out} ({dt:.1f} s, {n / max(dt, 1e-9):.2f} frames/s)")
    if args.overlay:
        print(f"overlay video: {args.overlay}")
    return 0


# frames/features held by --direction backward|both (evicted features are recomputed, bit-identically)
FEATURE_MEMORY_BYTES = 1 << 30


def _write_run_records(args, out: Path, prop, src, confidence: list, n: int, seconds: float) -> None:
    """``confidence.csv``, ``protocol.json`` (model, preset, settings) and the ``--review-below`` list."""
    import dataclasses
    import platform

    import vlprop
    from vlprop.io.files import atomic_write_text
    from vlprop.io.report import write_confidence_csv
    from vlprop.labels.confidence import frames_to_review

    write_confidence_csv(out / "confidence.csv", [c.row() for c in confidence])
    spec = model_spec_from_args(args)
    source = args.source if not isinstance(args.source, (str, Path)) else str(Path(args.source).resolve())
    protocol = {
        "tool": "vlprop propagate", "command": list(sys.argv), "vlprop_version": vlprop.__version__,
        "python_version": platform.python_version(), "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": source, "frames": n, "frame_size": list(src.size) if src.size else None,
        "labels": {"mask": str(Path(args.mask).resolve()) if args.mask else None, "mask_frame": args.mask_frame,
                   "annotations": str(Path(args.annotations).resolve()) if args.annotations else None},
        "direction": getattr(args, "direction", "forward"),
        "void": None if args.no_void else args.void,
        "preset": {"name": prop.preset.name, "settings": dataclasses.asdict(prop.preset)},
        "backbone": prop.backbone, "weights": spec.weights_record(),
        "precision": spec.precision,
        "model_args": {"preset": args.preset, "backbone": args.backbone, "weights": args.weights,
                       "layer": args.layer, "stride": args.stride, "input_scale": args.input_scale,
                       "short_side": args.short_side, "device": args.device,
                       "precision": spec.precision, "seed": args.seed, "compat": args.compat,
                       "set": dict(spec.overrides)},
        "wall_time_s": round(seconds, 3),
    }
    atomic_write_text(out / "protocol.json", json.dumps(protocol, indent=2, default=str))
    below = getattr(args, "review_below", None)
    if below is not None:
        review = frames_to_review(confidence, below)
        print(f"frames to review (an object's confidence < {below:g}): {len(review)} of {n}")
        for t, name, low in review:
            objs = ", ".join(f"object {c.object_id}: {c.confidence:.3f}" for c in low)
            print(f"  frame {t} ({name}): {objs}")


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
        print(f"  features: " + (f"backbone={f.backbone} " if f.backbone else "")
              + f"layer={f.layer} stride={f.stride} input_scale={f.input_scale:g}"
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
DEMO_MIN_FRAMES, DEMO_MAX_FRAMES = 2, 1000


def cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from vlprop.demo import iou, natural_video
    from vlprop.io.files import ResultSet, prepare_output_dir
    from vlprop.io.masks import overlay, write_mask
    from vlprop.io.render import VideoWriter
    from vlprop.session import Propagator

    if not DEMO_MIN_FRAMES <= args.frames <= DEMO_MAX_FRAMES:
        raise InputError(f"--frames must be between {DEMO_MIN_FRAMES} and {DEMO_MAX_FRAMES} (the first frame is "
                         f"labelled, the IoU is measured on the others), got {args.frames}")
    out = Path(args.out)
    guard_outputs(args.out, None, args.force, {"--weights": weights_input(args.weights)})
    # the model first: a bad option fails before anything is written into --out
    prop = Propagator(preset=args.preset, backbone=args.backbone, weights=args.weights, device=args.device,
                      input_scale=args.input_scale, seed=args.seed)
    prepare_output_dir(out, args.force)
    result_set = ResultSet(out, "vlprop demo")
    names = [f"{t:05d}" for t in range(args.frames)]
    result_set.begin([f"frames/{n}.png" for n in names] + [f"masks/{n}.png" for n in names]
                     + ["first_mask.png", "overlay.mp4"])
    vid = natural_video(num_frames=args.frames, height=240, width=320)
    frames_dir = out / "frames"
    from PIL import Image

    for t, img in enumerate(vid.frames):
        frames_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(frames_dir / f"{t:05d}.png")
    write_mask(out / "first_mask.png", vid.masks[0])
    print(f"synthesised {len(vid.frames)} frames in {frames_dir}: a cat's head (object 1) and a cup (object 2) "
          f"moving over a garage scene, with a camera pan and occlusions (photographs from scikit-image)")
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
    result_set.finish()
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
    p.add_argument("--mask-frame", default=0,
                   help="the frame --mask labels: its name (e.g. 0003) when a frame has that name, else its index "
                        "(default 0); name:X / index:N force one reading")
    p.add_argument("--annotations", help="folder of index-mask PNGs named after the frames; objects may "
                                         "first appear on any frame (YouTube-VOS style)")
    p.add_argument("--out", required=True, help="output folder for the palette PNG masks")
    p.add_argument("--overlay", help="also write an overlay video (e.g. overlay.mp4 or .gif)")
    p.add_argument("--fps", type=float, default=24.0, help="overlay frame rate, 0 < fps <= 1000, fractions kept "
                                                           "(e.g. 29.97; default 24)")
    p.add_argument("--save-probs", action="store_true", help="save grid-resolution probabilities as "
                                                             "probs/<frame>.npz (float16)")
    p.add_argument("--direction", choices=("forward", "backward", "both"), default="forward",
                   help="forward (default, streaming), backward from the labelled frame(s) towards frame 0, or both "
                        "(each object on each frame from the direction whose label of it is nearer; ties: forward)")
    p.add_argument("--review-below", type=float, metavar="X", help="print the frames where an object's confidence "
                   "(confidence.csv) is below X, lowest first")
    p.add_argument("--void", type=int, default=255, help="mask value treated as void/unknown (default 255)")
    p.add_argument("--no-void", action="store_true", help="treat every non-zero value as an object id")
    p.add_argument("--force", action="store_true", help="replace vlprop's earlier results in --out (files it did not "
                                                        "write are kept) and an existing --overlay file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_args(p)
    add_keypoint_arguments(p)
    p.set_defaults(func=cmd_propagate)

    p = sub.add_parser("presets", help="list the propagation presets and their settings")
    p.add_argument("--json", action="store_true", help="print every preset's settings as JSON")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("demo", help="synthesise a video of moving shapes and propagate its first mask")
    p.add_argument("--out", default="vlprop-demo", help="output folder (default ./vlprop-demo)")
    p.add_argument("--frames", type=int, default=40,
                   help=f"length of the synthetic video, {DEMO_MIN_FRAMES}..{DEMO_MAX_FRAMES} frames (default 40)")
    p.add_argument("--preset", default=None, help="propagation preset (default: the named model's or a training run's "
                                                  "recorded protocol; see `vlprop presets`)")
    p.add_argument("--backbone", default=None, help="backbone (default: the named model's)")
    p.add_argument("--weights", default="default", help="named model, random, imagenet, or a checkpoint (default "
                                                         "'default')")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps (default cpu)")
    p.add_argument("--input-scale", type=float, default=2.0,
                   help="resize frames by this factor before the backbone (default 2: the demo's shapes are "
                        "about 100 px wide, 12 cells at stride 8; x2 input gives the grid the detail small "
                        "objects need, as in McKee et al. and Waldmann et al.)")
    p.add_argument("--seed", type=int, default=0, help="seed of a random-init backbone (--weights random)")
    p.add_argument("--force", action="store_true", help="replace an earlier demo's files in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)

