"""``vlprop propagate SOURCE --keypoints FIRST.json``: keypoint propagation from the command line, and the
tracking options shared with ``vlprop eval pose``."""
from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from vlprop.cli.options import model_spec_from_args
from vlprop.errors import InputError
from vlprop.io.keypoints import KeypointSequence
from vlprop.io.video import open_frames
from vlprop.tasks.pose import DEFAULT_CROP_SIZE, KeypointPropagator


def _add_if_absent(parser, *flags: str, **kwargs: Any) -> None:
    """Add an option unless the parser already has it (the ``propagate`` command defines some already)."""
    if any(f in parser._option_string_actions for f in flags):
        return
    parser.add_argument(*flags, **kwargs)


def _box_arg(text: str) -> tuple[float, float, float, float]:
    parts = text.replace(",", " ").split()
    try:
        box = tuple(float(p) for p in parts)
    except ValueError:
        box = ()
    if len(box) != 4:
        raise argparse.ArgumentTypeError(f"--box expects X,Y,W,H (pixels), got {text!r}")
    return box  # type: ignore[return-value]


def add_tracking_arguments(parser) -> None:
    """Options of the joint tracking mode (shared by ``vlprop propagate --keypoints`` and ``vlprop eval pose``)."""
    _add_if_absent(parser, "--track", action="store_true",
                   help="joint tracking + keypoint propagation: follow the object with a correlation-filter "
                        "tracker and propagate on crops around it (for small objects; Waldmann et al. 2022)")
    _add_if_absent(parser, "--crop-size", type=int, default=None,
                   help="tracking: crop side (or short side with --crop-aspect keep) in network-input pixels "
                        f"(default: the preset's short side, else {DEFAULT_CROP_SIZE})")
    _add_if_absent(parser, "--crop-padding", type=float, default=0.25,
                   help="tracking: context around the box on each side, as a fraction of its size (default 0.25)")
    _add_if_absent(parser, "--crop-aspect", choices=("square", "keep"), default="square",
                   help="tracking: square crops (default) or keep the box's aspect ratio")
    _add_if_absent(parser, "--box-padding", type=float, default=0.15,
                   help="tracking: padding of the initial box around the labelled keypoints (default 0.15)")
    _add_if_absent(parser, "--vanish", type=float, default=0.05,
                   help="a keypoint is invisible where its propagated mass is below this fraction of its "
                        "labelled mass (default 0.05)")


def add_keypoint_arguments(parser) -> None:
    """Options of ``vlprop propagate SOURCE --keypoints FIRST.json --out DIR [--track] [--overlay FILE]``.

    Options the ``propagate`` parser already defines (``--out``, ``--overlay``, ``--fps``, ``--force``,
    ``--quiet``) are reused; the rest are added here.
    """
    _add_if_absent(parser, "--keypoints", default=None,
                   help="keypoints of the labelled frame: vlprop keypoint JSON or CSV (the first frame with a "
                        "visible keypoint is the labelled one, unless --keypoints-frame is given)")
    _add_if_absent(parser, "--keypoints-frame", default=None,
                   help="the labelled frame: its name (e.g. 0003) when a frame has that name, else its index; "
                        "name:X / index:N force one reading (default: the keypoint file's first frame with a "
                        "visible keypoint)")
    _add_if_absent(parser, "--box", type=_box_arg, default=None,
                   help="tracking: initial box X,Y,W,H in pixels (default: padded box around the keypoints; "
                        "write --box=X,Y,W,H when X is negative)")
    _add_if_absent(parser, "--trail", type=int, default=8, help="overlay: trail length in frames (default 8)")
    add_tracking_arguments(parser)
    _add_if_absent(parser, "--overlay", default=None, help="also write an overlay video (e.g. overlay.mp4 or .gif)")
    _add_if_absent(parser, "--fps", type=float, default=24.0, help="overlay frame rate (default 24)")
    _add_if_absent(parser, "--force", action="store_true", help="write into a non-empty output folder")
    _add_if_absent(parser, "--quiet", action="store_true", help="no progress bar")


def propagator_from_args(args, outside: str = "error") -> KeypointPropagator:
    """A :class:`KeypointPropagator` from parsed model + tracking options (missing options take defaults)."""
    return KeypointPropagator(
        model=model_spec_from_args(args), track=getattr(args, "track", False),
        crop_size=getattr(args, "crop_size", None), crop_padding=getattr(args, "crop_padding", 0.25),
        crop_square=getattr(args, "crop_aspect", "square") == "square",
        box_padding=getattr(args, "box_padding", 0.15), vanish=getattr(args, "vanish", 0.05), outside=outside)


def run_keypoint_propagate(args) -> int:
    """``vlprop propagate SOURCE --keypoints FIRST.json --out DIR``: writes ``<out>/keypoints.json`` and
    ``<out>/keypoints.csv`` (+ ``<out>/track.csv`` with ``--track``, the overlay video with ``--overlay``)."""
    import contextlib
    import time
    from pathlib import Path

    from tqdm import tqdm

    from vlprop.cli.options import guard_outputs, weights_input
    from vlprop.io.files import ResultSet, atomic_write_text, prepare_output_dir
    from vlprop.io.keypoints import read_keypoints, write_keypoints_csv, write_keypoints_json
    from vlprop.io.render import VideoWriter, check_fps
    from vlprop.io.render_pose import PoseRenderer

    if not getattr(args, "keypoints", None):
        raise InputError("give the labelled keypoints with --keypoints FIRST.json (vlprop keypoint JSON or CSV)")
    kp_path = Path(args.keypoints)
    if not kp_path.is_file():
        raise InputError(f"keypoint file not found: {kp_path}")
    seq = read_keypoints(kp_path)
    src = open_frames(args.source)
    out = Path(args.out)
    overlay = getattr(args, "overlay", None)
    force = getattr(args, "force", False)
    if overlay:
        check_fps(getattr(args, "fps", 24.0))
    guard_outputs(args.out, overlay, force, {"SOURCE": args.source, "--keypoints": args.keypoints,
                                             "--weights": weights_input(getattr(args, "weights", None))})
    prop = propagator_from_args(args, outside="error")
    planned = ["keypoints.json", "keypoints.csv"] + (["track.csv"] if getattr(args, "track", False) else [])
    if overlay and Path(overlay).resolve().parent.is_relative_to(out.resolve()):
        planned.append(str(Path(overlay).resolve().relative_to(out.resolve())))
    results = prop.run(src, seq, start=getattr(args, "keypoints_frame", None), box=getattr(args, "box", None),
                       keep_images=bool(overlay))  # checks the labelled frame and box before any write
    prepare_output_dir(out, force)
    result_set = ResultSet(out, "vlprop propagate --keypoints")
    result_set.begin(planned)
    renderer = PoseRenderer(seq.num_keypoints, skeleton=seq.skeleton, trail=getattr(args, "trail", 8)) \
        if overlay else None
    frames, xy, vis, conf, track_rows = [], [], [], [], []
    quiet = getattr(args, "quiet", False)
    t0 = time.perf_counter()
    # the overlay is written to a temporary file and renamed when complete; an error discards it
    with (VideoWriter(overlay, fps=getattr(args, "fps", 24.0)) if overlay else contextlib.nullcontext()) as writer, \
            tqdm(total=len(src), unit="frame", desc="propagating keypoints", disable=quiet) as bar:
        for r in results:
            frames.append(r.index)
            xy.append(r.xy)
            vis.append(r.visible)
            conf.append(r.confidence)
            if r.box is not None:
                track_rows.append(f"{r.index},{r.name},{r.box[0]!r},{r.box[1]!r},{r.box[2]!r},{r.box[3]!r}")
            if writer is not None:
                writer.write(renderer.render(r.image, r.xy, r.visible, r.box))
            bar.update(1)
    result = KeypointSequence(seq.names, frames, np.stack(xy), np.stack(vis), np.stack(conf), seq.skeleton)
    write_keypoints_json(out / "keypoints.json", result)
    write_keypoints_csv(out / "keypoints.csv", result)
    if track_rows:
        atomic_write_text(out / "track.csv", "frame,name,x,y,w,h\n" + "\n".join(track_rows) + "\n")
    result_set.finish()
    dt = time.perf_counter() - t0
    n = len(frames)
    print(f"wrote keypoints of {n} frames to {out / 'keypoints.json'} and {out / 'keypoints.csv'} "
          f"({dt:.1f} s, {n / max(dt, 1e-9):.2f} frames/s)")
    if overlay:
        print(f"overlay video: {overlay}")
    return 0
