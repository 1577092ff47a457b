"""``vlprop train`` (self-supervised training) and ``vlprop export`` (a run's model as a weights file).

``python -m vlprop.train ...`` / ``torchrun -m vlprop.train ...`` run :func:`train_main`.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from vlprop.errors import InputError
from vlprop.train.trainer import METHODS, TrainConfig, config_from_namespace, run_training


def _guard_run_folder(cfg: TrainConfig) -> None:
    """The run folder (checkpoints, logs) must not be, contain or lie inside the training data."""
    from vlprop.io.paths import refuse_overlap

    data = cfg.data if isinstance(cfg.data, str) else None
    refuse_overlap({"--out": cfg.out or None}, {"--data": data or None})


def cmd_train(args: argparse.Namespace) -> int:
    cfg, resume = config_from_namespace(vars(args))
    _guard_run_folder(cfg)
    return run_training(cfg, resume)


def add_commands(sub) -> None:
    """Add ``train`` and ``export`` to the ``vlprop`` sub-command parsers ``sub`` (``argparse._SubParsersAction``)."""
    p = sub.add_parser("train", help="self-supervised feature learning from raw video (DUL)",
                       description="Self-supervised training of dense correspondence features. "
                                   "Multi-process: torchrun --nproc_per_node N -m vlprop.train dul ...",
                       argument_default=argparse.SUPPRESS)
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)
    add_export_command(sub)


def cmd_export(args: argparse.Namespace) -> int:
    from vlprop.io.paths import check_new_file, refuse_overlap
    from vlprop.train.checkpoint import export_model

    try:
        meta = json.loads(args.meta) if args.meta else None
    except ValueError as exc:
        raise InputError(f"--meta is not valid JSON ({exc}); expected an object, e.g. "
                         "'{\"davis2016_val_dev_JF\": 0.61}'") from None
    if meta is not None and not isinstance(meta, dict):
        raise InputError("--meta expects a JSON object, e.g. '{\"davis2016_val_dev_JF\": 0.61}'")
    # the export never replaces its own source (a checkpoint, or a file inside the run folder) nor, without
    # --force, any existing file
    refuse_overlap({"--out": args.out}, {"SOURCE": args.source})
    check_new_file(args.out, args.force, "--out")
    path = export_model(args.source, args.out, half=not args.fp32, meta=meta)
    size = path.stat().st_size / 2**20
    print(f"wrote {path} ({size:.1f} MiB, {'float32' if args.fp32 else 'float16'}); use it with --weights {path}")
    return 0


def add_export_command(sub) -> None:
    """``vlprop export RUN_DIR|CKPT --out MODEL.pt [--fp32] [--meta JSON]``."""
    p = sub.add_parser("export", help="write a training run's model as a compact (float16) weights file",
                       description="Strip the training state from a run's best.pt/last.pt (or a checkpoint file) "
                                   "and store the weights as float16: the file vlprop ships and --weights loads.")
    p.add_argument("source", help="training run directory (best.pt, else last.pt) or a vlprop checkpoint file")
    p.add_argument("--out", required=True, help="output model file (.pt), written atomically")
    p.add_argument("--fp32", action="store_true", help="keep float32 weights (twice the size)")
    p.add_argument("--meta", default=None, help="JSON object of extra metadata to record (metrics, data, command)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=cmd_export)


def build_parser(prog: str = "vlprop train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Self-supervised training of dense correspondence features.",
                                argument_default=argparse.SUPPRESS)
    add_train_arguments(p)
    return p


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The ``vlprop train`` arguments. Options default to SUPPRESS (absent from the namespace unless
    given) so a resumed run can tell the user's explicit settings from its saved ones."""
    d = TrainConfig()
    S = argparse.SUPPRESS
    p.add_argument("method", choices=METHODS, help="training method")
    p.add_argument("--data", default=S, help="training videos: frame folders, DAVIS/YouTube-VOS root, or video files")
    p.add_argument("--out", default=S, help="run directory (checkpoints, logs)")
    p.add_argument("--resume", default=S, help="continue a run: its directory or a last.pt checkpoint")
    g = p.add_argument_group("schedule")
    g.add_argument("--iters", default=S, type=int, help=f"optimiser steps (default {d.iters})")
    g.add_argument("--batch", default=S, type=int, help=f"global clips per step (default {d.batch})")
    g.add_argument("--accum", default=S, type=int, help="gradient-accumulation micro-batches per step (default 1)")
    g.add_argument("--lr", default=S, type=float, help=f"base learning rate (default {d.lr})")
    g.add_argument("--weight-decay", default=S, dest="weight_decay", type=float, help=f"(default {d.weight_decay})")
    g.add_argument("--lr-schedule", default=S, dest="lr_schedule", choices=("constant", "cosine", "step"))
    g.add_argument("--lr-step", default=S, dest="lr_step", type=int)
    g.add_argument("--lr-gamma", default=S, dest="lr_gamma", type=float)
    g.add_argument("--warmup", default=S, type=int, help="linear warm-up steps (default 0)")
    g = p.add_argument_group("clips")
    g.add_argument("--frames", default=S, type=int, help=f"frames per clip T (default {d.frames})")
    g.add_argument("--gap", default=S, type=int, help=f"DUL frame gap (default {d.gap})")
    g.add_argument("--no-shuffle-frames", default=S, dest="shuffle_frames", action="store_false",
                   help="keep temporal order (reference = first frame)")
    g.add_argument("--crop", default=S, type=int, help=f"square crop size in pixels (default {d.crop})")
    g.add_argument("--scale-min", default=S, dest="scale_min", type=int,
                   help="smallest-side range for the clip rescale (default crop .. 1.25*crop)")
    g.add_argument("--scale-max", default=S, dest="scale_max", type=int)
    g.add_argument("--center-crop", default=S, dest="random_crop", action="store_false")
    g.add_argument("--zoom-min", default=S, dest="zoom_min", type=float,
                   help=f"view-B zoom lower bound (default {d.zoom_min})")
    g.add_argument("--holdout", default=S, type=int, help=f"videos held out for validation (default {d.holdout})")
    g = p.add_argument_group("model")
    g.add_argument("--arch", default=S, help=f"backbone (default {d.arch})")
    g.add_argument("--init", default=S,
                   help="backbone initialisation: random, imagenet or a checkpoint (default random)")
    g.add_argument("--key-dim", default=S, dest="key_dim", type=int)
    g.add_argument("--tau", default=S, type=float)
    g.add_argument("--grid", default=S, type=int, help="anchor grid N (default 8)")
    g.add_argument("--grid-ref", default=S, dest="grid_ref", type=int, help="cross-view grid M (default 4)")
    g.add_argument("--cross-weight", default=S, dest="cross_weight", type=float, help="lambda (default 0.1)")
    g = p.add_argument_group("system")
    g.add_argument("--workers", default=S, type=int, help=f"data loader processes (default {d.workers})")
    g.add_argument("--device", default=S, help="auto, cpu, cuda or cuda:N (default auto)")
    g.add_argument("--threads", default=S, type=int, help="torch intra-op threads")
    g.add_argument("--no-amp", default=S, dest="amp", action="store_false", help="disable mixed precision on CUDA")
    g.add_argument("--no-sync-bn", default=S, dest="sync_bn", action="store_false")
    g.add_argument("--seed", default=S, type=int)
    g.add_argument("--val-every", default=S, dest="val_every", type=int,
                   help="validate every K steps (default 0: never)")
    g.add_argument("--val-clips", default=S, dest="val_clips", type=int,
                   help="held-out clips for the validation loss (16)")
    g.add_argument("--val-frames", default=S, dest="val_frames", type=int,
                   help="frames per held-out sequence for label-propagation J&F (30)")
    g.add_argument("--ckpt-every", default=S, dest="ckpt_every", type=int, help=f"(default {d.ckpt_every})")
    g.add_argument("--log-every", default=S, dest="log_every", type=int, help=f"(default {d.log_every})")
    g.add_argument("--no-progress", default=S, dest="progress", action="store_false")
    g.add_argument("--no-tensorboard", default=S, dest="tensorboard", action="store_false")


def train_main(argv: Sequence[str] | None = None) -> int:
    """``python -m vlprop.train <method> ...`` / ``torchrun -m vlprop.train ...`` entry point."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    cfg, resume = config_from_namespace(vars(args))
    _guard_run_folder(cfg)
    return run_training(cfg, resume)
