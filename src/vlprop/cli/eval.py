"""``vlprop eval``: benchmark a propagator on a VOS dataset (``vos``), on keypoint datasets (``pose``), on VIP
semantic parts (``parts``), or score saved predictions (``score``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from vlprop.cli.keypoints import add_tracking_arguments, propagator_from_args
from vlprop.cli.options import add_model_args, model_spec_from_args
from vlprop.errors import InputError

DIST_TIMEOUT_MIN = 24 * 60.0


def add_commands(sub) -> None:
    """Register ``vlprop eval vos``, ``vlprop eval pose`` and ``vlprop eval score``.

    The runner builds propagators from a picklable :class:`~vlprop.model.ModelSpec` (worker processes rebuild
    them from plain values).
    """
    from vlprop.eval.runner import DATASETS

    p = sub.add_parser("eval", help="evaluate on a VOS benchmark (vos), on keypoint datasets (pose), or score saved "
                                    "predictions (score)",
                       description="Benchmark evaluation: `vlprop eval vos` propagates a dataset's labels, writes "
                                   "the submission PNGs and scores them; `vlprop eval pose` propagates keypoints "
                                   "and scores PCK; `vlprop eval score` scores a folder of predictions like the "
                                   "official DAVIS script.")
    esub = p.add_subparsers(dest="eval_command", required=True, metavar="{vos,pose,score}")

    v = esub.add_parser(
        "vos", help="propagate every sequence of a VOS dataset, write <out>/<seq>/<frame>.png and score them",
        description="Propagate the first-frame labels (DAVIS, SegTrackV2) or each object's first annotation "
                    "(YouTube-VOS, folder) through every sequence, write palette PNGs in the submission layout "
                    "<out>/<seq>/<frame>.png, score the sequences with ground truth (semi-supervised DAVIS "
                    "protocol) and write global_results.csv, per-sequence_results.csv, results.md, results.json "
                    "and protocol.json. Finished sequences are skipped on a rerun. Under torchrun the sequences "
                    "are sharded over the ranks and rank 0 scores.")
    v.add_argument("--dataset", required=True, choices=list(DATASETS), help="dataset layout")
    v.add_argument("--root", required=True, help="dataset folder (YouTube-VOS: the dataset or the split folder)")
    v.add_argument("--split", default=None,
                   help="split list name or .txt file (davis2016/2017: val, segtrackv2: all, ytvos: train|valid; "
                        "default: the reader's default, every sequence for ytvos/folder)")
    v.add_argument("--out", required=True, help="output folder (predictions, result tables, protocol)")
    v.add_argument("--workers", type=int, default=1,
                   help="processes propagating sequences in parallel, each with cores/workers torch threads "
                        "(default 1)")
    v.add_argument("--sequences", default=None, help="comma-separated subset of sequence names")
    v.add_argument("--max-frames", type=int, default=None, help="only the first N frames of every sequence")
    v.add_argument("--force", action="store_true",
                   help="recompute sequences finished with other settings in --out (otherwise refused)")
    v.add_argument("--quiet", action="store_true", help="no progress bars")
    v.add_argument("--dist-timeout", type=float, default=DIST_TIMEOUT_MIN,
                   help=f"torchrun runs: minutes a rank waits for the others (default {DIST_TIMEOUT_MIN:g})")
    add_model_args(v)
    v.set_defaults(func=cmd_eval_vos)

    add_pose_command(esub)
    add_points_command(esub)
    add_parts_command(esub)
    from vlprop.cli.zero_shot import add_eval_command

    add_eval_command(esub)

    s = esub.add_parser(
        "score", help="score <pred>/<seq>/<frame>.png against <gt>/<seq>/<frame>.png (official DAVIS numbers)",
        description="Drop-in replacement for the official DAVIS 2017 evaluation script: J and F per object, "
                    "global J&F table; semi-supervised or unsupervised task.")
    s.add_argument("--pred", required=True, help="folder of <seq>/<frame>.png predictions")
    s.add_argument("--gt", required=True, help="folder of <seq>/<frame>.png ground truth (or a DAVIS root)")
    s.add_argument("--task", default="semi", choices=["semi", "semi-supervised", "unsupervised"],
                   help="semi (first/last frame not scored) or unsupervised (Hungarian matching); default semi")
    s.add_argument("--out", default=None, help="write global_results.csv, per-sequence_results.csv, results.md, "
                                               "results.json here")
    s.add_argument("--workers", type=int, default=1, help="scoring processes (default 1)")
    s.add_argument("--sequences", default=None, help="comma-separated subset, or a list file (default: every GT "
                                                     "sequence folder)")
    s.set_defaults(func=cmd_eval_score)


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise InputError(f"--sequences {text!r} names no sequence")
    return names


def cmd_eval_vos(args: argparse.Namespace) -> int:
    from vlprop.eval.distributed import init_ranks, shutdown
    from vlprop.eval.runner import evaluate_vos, global_table

    if args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    if args.max_frames is not None and args.max_frames < 1:
        raise InputError(f"--max-frames must be at least 1, got {args.max_frames}")
    spec = model_spec_from_args(args)
    ranks = init_ranks(timeout_s=args.dist_timeout * 60.0)
    try:
        run = evaluate_vos(args.dataset, args.root, args.out, spec, split=args.split,
                           sequences=_names(args.sequences), max_frames=args.max_frames, workers=args.workers,
                           force=args.force, quiet=args.quiet, ranks=ranks, command=["vlprop"] + sys.argv[1:])
    finally:
        shutdown(ranks)
    if not ranks.is_main:
        return 0
    proto = run.protocol or {}
    tot = proto.get("total", {})
    print(f"{len(run.sequences)} sequences in {run.out_dir}: {len(run.computed)} propagated"
          + (f" by {ranks.world_size} ranks" if ranks.distributed else "")
          + (f", {len(run.resumed)} already finished" if run.resumed else ""))
    print(f"preset {proto['preset']['name']}, backbone {proto['backbone']}, weights {proto['weights']['description']}"
          f"; {tot.get('frames')} frames, {tot.get('propagation_s'):.1f} s propagation "
          f"({tot.get('fps'):.2f} frames/s)")
    if run.results is None:
        print("no ground truth beyond the given labels: predictions written, nothing scored")
    else:
        print(f"semi-supervised: {len(run.results.sequences)} sequences, {len(run.results.objects)} objects")
        print(global_table(run.results.global_metrics()))
    for kind, path in run.files.items():
        print(f"{kind}: {path}")
    return 0


def cmd_eval_score(args: argparse.Namespace) -> int:
    from vlprop.eval.runner import global_table
    from vlprop.eval.score import main_score

    if args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    sequences: Any = None
    if args.sequences is not None:
        sequences = args.sequences if Path(args.sequences).is_file() else _names(args.sequences)
    summary = main_score(args.pred, args.gt, task=args.task, out=args.out, workers=args.workers,
                         sequences=sequences)
    task = "semi-supervised" if summary["task"] == "semi" else "unsupervised"
    print(f"{task}: {summary['num_sequences']} sequences, {summary['num_objects']} objects")
    print(global_table(summary["global"]))
    for kind, path in summary.get("files", {}).items():
        print(f"{kind}: {path}")
    return 0


def _size_arg(text: str) -> tuple[int, int] | None:
    """``WxH`` (pixels) or ``native``."""
    if text.strip().lower() == "native":
        return None
    parts = text.lower().replace(",", "x").split("x")
    try:
        w, h = (int(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH in pixels (e.g. 512x320) or 'native', got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"width and height must be >= 1, got {text!r}")
    return w, h


def pose_protocol(dataset: str, protocol: str | None) -> str:
    """The scoring protocol of ``eval pose``: BADJA's own for BADJA unless asked otherwise, else JHMDB's."""
    if protocol is None:
        return "badja" if dataset == "badja" else "jhmdb"
    if protocol == "badja" and dataset != "badja":
        raise InputError(f"--protocol badja needs the GT segmentation masks of the BADJA layout (--dataset badja), "
                         f"not --dataset {dataset}")
    return protocol


def add_pose_command(eval_subparsers) -> Any:
    """Register ``vlprop eval pose`` on the ``eval`` sub-command's subparsers; returns the new parser."""
    from vlprop.eval.pck import BADJA_EVAL_SIZE
    from vlprop.eval.pose import DATASETS, PROTOCOLS

    p = eval_subparsers.add_parser(
        "pose", help="propagate keypoints through a dataset (JHMDB, BADJA, folder) and score PCK",
        description="Propagate every video's keypoints from its first annotated frame and report PCK@0.1..0.5 "
                    "(reference and GT-visibility variants, coverage).")
    p.add_argument("--dataset", required=True, choices=DATASETS, help="dataset layout")
    p.add_argument("--root", required=True, help="dataset root folder")
    p.add_argument("--split", default=None,
                   help="jhmdb: all (default) | test | train | a list file; badja/folder: a list file of video names")
    p.add_argument("--split-num", type=int, default=1, help="JHMDB split 1, 2 or 3 (default 1)")
    p.add_argument("--out", required=True, help="output folder (predictions/, pck.csv, pck.md, pck.json)")
    p.add_argument("--max-frames", type=int, default=None,
                   help="propagate at most this many frames per video (quick checks; recorded in the protocol)")
    p.add_argument("--protocol", choices=PROTOCOLS, default=None,
                   help="scoring: jhmdb = PCK@0.1..0.5 of 0.6 x the GT keypoint-box diagonal (CRW/Waldmann); "
                        "badja = correct within 0.2 x sqrt(GT mask area), the BADJA/PIPs protocol "
                        "(default: badja for --dataset badja, else jhmdb)")
    p.add_argument("--badja-size", type=_size_arg, default=BADJA_EVAL_SIZE, metavar="WxH|native",
                   help="BADJA protocol: resolution the mask areas and distances are measured in (default "
                        f"{BADJA_EVAL_SIZE[0]}x{BADJA_EVAL_SIZE[1]}, the PIPs evaluation; native = frame pixels)")
    p.add_argument("--force", action="store_true", help="recompute every video (also with another protocol)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_tracking_arguments(p)
    add_model_args(p, default_preset="waldmann-jhmdb")
    p.set_defaults(func=cmd_eval_pose)
    return p


def add_parts_command(esub) -> argparse.ArgumentParser:
    """``vlprop eval parts``: semantic part propagation on VIP (mIoU, pixel acc., mean class acc., fwIoU) and
    instance-part propagation (AP^r per IoU threshold, AP^r_vol)."""
    p = esub.add_parser(
        "parts", help="propagate VIP part labels (20 classes) and score mIoU",
        description="Propagate the first annotated parsing map of every VIP video (each class id present = one "
                    "object), write <out>/predictions/<video>/<frame>.png for the annotated frames (every 25th) and "
                    "score them: one confusion matrix over all frames of all videos (ground-truth ids outside the 20 "
                    "classes ignored, predictions nearest-resized to the ground truth) -> mIoU, pixel accuracy, "
                    "mean class accuracy, fwIoU (parts.json, parts.md). --score-only scores an existing folder. "
                    "When the instance-part annotations are there (Instance_ids/<video>/<frame>.png + .txt), every "
                    "(person, part) instance of the first annotated frame is also propagated as one object and "
                    "scored with the instance-level AP^r at IoU 0.1..0.9 and AP^r_vol (their mean), as VIP's "
                    "reference evaluation computes them (HCPLab-SYSU/ATEN evaluate/test_inst_part_ap.py: a "
                    "prediction is a hit when its best IoU with a ground-truth instance of its class exceeds the "
                    "threshold, VOC all-points AP per class over all frames, mean over classes, then over "
                    "thresholds); score of a propagated instance = its mean probability over its region. "
                    "Predictions: <out>/instance_part/<video>/<frame>.png + .txt (ATEN's format).")
    p.add_argument("--root", required=True, help="VIP_Fine folder (Images/, Category_ids/, lists/)")
    p.add_argument("--split", default="val", help="list name (lists/<split>_videos.txt) or a .txt file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--videos", default=None, help="comma-separated subset of videos")
    p.add_argument("--max-frames", type=int, default=None, help="propagate only the first N frames of each video")
    p.add_argument("--include-first", action="store_true", help="also score the labelled (first annotated) frame")
    p.add_argument("--score-only", default=None, metavar="PRED_DIR",
                   help="score <PRED_DIR>/<video>/<frame>.png instead of propagating")
    p.add_argument("--instance-pred", default=None, metavar="DIR",
                   help="with --score-only: also score the instance-part predictions <DIR>/<video>/<frame>.png + "
                        ".txt (ATEN's format: line i = '<class> <score>' of id i) with AP^r / AP^r_vol")
    p.add_argument("--ap", choices=("auto", "on", "off"), default="auto",
                   help="instance-level AP^r_vol: auto = when every annotated frame has an Instance_ids map "
                        "(default), on = required, off = skip")
    p.add_argument("--ap-matching", choices=("vip", "sds"), default="vip",
                   help="vip (default): VIP/ATEN reference, a prediction is a hit when its best IoU exceeds the "
                        "threshold; sds: one-to-one greedy assignment by score (Hariharan et al. 2014)")
    add_model_args(p, default_preset="crw")
    p.set_defaults(func=cmd_eval_parts)
    return p


def cmd_eval_parts(args) -> int:
    from vlprop.eval.vip import (format_parts_markdown, has_instance_gt, propagate_instance_parts, propagate_parts,
                                 read_vip, score_instance_parts, score_parts, write_results)

    videos = read_vip(args.root, args.split, args.videos.split(",") if args.videos else None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pred = Path(args.score_only) if args.score_only else out / "predictions"
    inst_pred = Path(args.instance_pred) if args.instance_pred else None
    if inst_pred is not None and not args.score_only:
        raise InputError("--instance-pred goes with --score-only (without it the instances are propagated)")
    have_gt = has_instance_gt(videos)
    if args.ap == "on" and not have_gt:
        raise InputError("--ap on: some annotated frame has no Instance_ids/<video>/<frame>.png")
    if args.ap == "on" and args.score_only and inst_pred is None:
        raise InputError("--ap on with --score-only needs --instance-pred DIR")
    do_ap = args.ap != "off" and have_gt and (inst_pred is not None or not args.score_only)
    if not args.score_only:
        prop = model_spec_from_args(args).build(void=None)
        propagate_parts(videos, prop, pred, max_frames=args.max_frames, log=print)
        if do_ap:
            inst_pred = out / "instance_part"
            propagate_instance_parts(videos, prop, inst_pred, max_frames=args.max_frames, log=print)
    res = score_parts(videos, pred, include_first=args.include_first)
    if do_ap:
        res["instance_ap"] = score_instance_parts(videos, inst_pred, include_first=args.include_first,
                                                  matching=args.ap_matching)
    write_results(res, out)
    print(format_parts_markdown(res), end="")
    return 0


def cmd_eval_pose(args) -> int:
    from vlprop.eval.pck import format_pck_markdown
    from vlprop.eval.pose import evaluate_pose, read_pose_dataset

    from vlprop.eval.pose import prediction_path
    from vlprop.io.paths import refuse_overlap

    protocol = pose_protocol(args.dataset, args.protocol)
    videos = read_pose_dataset(args.dataset, args.root, args.split, args.split_num)
    # the predictions and tables never go into the dataset (its frames and ground-truth keypoints), and a
    # video name from a list file never leads outside --out: both checked before the first video runs
    refuse_overlap({"--out": args.out}, {"--root": args.root})
    for v in videos:
        prediction_path(args.out, v.name)
    prop = propagator_from_args(args, outside="invisible")
    record = model_spec_from_args(args).weights_record()
    dataset = {"name": args.dataset, "root": str(Path(args.root).resolve()), "split": args.split,
               "split_num": args.split_num if args.dataset == "jhmdb" else None,
               "videos": [v.name for v in videos]}
    res = evaluate_pose(videos, prop, args.out, dataset=dataset, max_frames=args.max_frames, force=args.force,
                        progress=not args.quiet, log=print, weights_record=record, protocol=protocol,
                        badja_size=args.badja_size)
    print(format_pck_markdown(res.results), end="")
    print(f"results: {Path(args.out) / 'pck.md'}")
    return 0


def add_points_command(eval_subparsers) -> Any:
    """Register ``vlprop eval points``: keypoint propagation scored with the TAP-Vid metrics (and PCK)."""
    from vlprop.eval.pck import BADJA_EVAL_SIZE
    from vlprop.eval.points import POINT_DATASETS

    p = eval_subparsers.add_parser(
        "points", help="propagate point tracks (TAP-Vid, JHMDB, BADJA, folder) and score AJ / δ_avg / OA",
        description="Every track is queried at its first visible frame (TAP-Vid 'query first') and propagated as "
                    "a keypoint; the propagator's invisible output is the occlusion prediction. Reports Average "
                    "Jaccard, δ_avg and occlusion accuracy in the 256x256 benchmark frame, per video and their "
                    "mean; keypoint datasets also get their own PCK from the same predictions.")
    p.add_argument("--dataset", required=True, choices=POINT_DATASETS, help="dataset layout")
    p.add_argument("--root", required=True, help="tapvid: a TAP-Vid .pkl (or a folder of them); else the dataset root")
    p.add_argument("--split", default=None, help="jhmdb/badja/folder: as `eval pose --split`")
    p.add_argument("--split-num", type=int, default=1, help="JHMDB split 1, 2 or 3 (default 1)")
    p.add_argument("--videos", default=None, help="tapvid: comma-separated subset of video names")
    p.add_argument("--resize", type=_size_arg, default=(256, 256), metavar="WxH|native",
                   help="tapvid: resize frames to this size before propagation (default 256x256, the benchmark's "
                        "input); metrics are always measured in a 256x256 frame")
    p.add_argument("--badja-size", type=_size_arg, default=BADJA_EVAL_SIZE, metavar="WxH|native",
                   help=f"badja: resolution of the BADJA PCK (default {BADJA_EVAL_SIZE[0]}x{BADJA_EVAL_SIZE[1]})")
    p.add_argument("--out", required=True, help="output folder (points.md/csv/json, predictions/, protocol.json)")
    p.add_argument("--max-frames", type=int, default=None, help="only the first N frames of every video")
    p.add_argument("--force", action="store_true", help="write into a non-empty output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_tracking_arguments(p)
    add_model_args(p, default_preset="waldmann-jhmdb")
    p.set_defaults(func=cmd_eval_points)
    return p


def cmd_eval_points(args) -> int:
    from vlprop.eval.points import evaluate_points, points_table, pose_point_videos, tapvid_point_videos

    if args.dataset == "tapvid":
        videos = tapvid_point_videos(args.root, _names(args.videos) if args.videos else None, args.resize)
    else:
        if args.videos:
            raise InputError("--videos selects TAP-Vid videos; use --split LIST_FILE for keypoint datasets")
        videos = pose_point_videos(args.dataset, args.root, args.split, args.split_num)
    prop = propagator_from_args(args, outside="invisible")
    record = model_spec_from_args(args).weights_record()
    dataset = {"name": args.dataset, "root": str(Path(args.root).resolve()), "split": args.split,
               "resize": None if args.dataset != "tapvid" or args.resize is None else list(args.resize),
               "videos": [v.name for v in videos]}
    res = evaluate_points(videos, prop, args.out, kind=args.dataset, dataset=dataset, max_frames=args.max_frames,
                          force=args.force, progress=not args.quiet, log=print, weights_record=record,
                          badja_size=args.badja_size)
    print(points_table(res), end="")
    print(f"results: {Path(args.out) / 'points.md'}")
    return 0
