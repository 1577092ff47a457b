"""``vlprop train`` (self-supervised training) and ``vlprop export`` (a run's model as a weights file).

``python -m vlprop.train ...`` / ``torchrun -m vlprop.train ...`` run :func:`train_main`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from typing import Any, Sequence

from vlprop.errors import InputError
from vlprop.train.auxiliary import AUX_OBJECTIVES
from vlprop.train.methods import get_method, method_names
from vlprop.train.trainer import TrainConfig, config_from_namespace, run_training


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
    p = sub.add_parser("train", help="self-supervised feature learning from raw video (" + ", ".join(method_names()) + ")",
                       description="Self-supervised training of dense correspondence features: vlprop train METHOD "
                                   "--data DIR --out RUN (see vlprop train METHOD --help for its paper defaults). "
                                   "Multi-process: torchrun --nproc_per_node N -m vlprop.train METHOD ...",
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


def _option_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _field_type(tp: Any) -> tuple[Any, bool, str | None]:
    """(argparse type, is_bool, nargs) of a Config field annotation (``Optional[X]`` -> X,
    ``tuple[X, ...]`` -> one or more X)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        tp = args[0]
    if typing.get_origin(tp) is tuple:
        elem = typing.get_args(tp)[0]
        return (elem if elem in (int, float, str) else str), False, "+"
    if tp is bool:
        return None, True, None
    if tp in (int, float, str):
        return tp, False, None
    return str, False, None


def add_method_options(p: argparse.ArgumentParser, method) -> None:
    """One ``--option`` per field of ``method.Config`` (help text from the field's metadata and its
    paper default); booleans get ``--x`` / ``--no-x``."""
    g = p.add_argument_group(f"{method.name} options (paper defaults)")
    hints = typing.get_type_hints(method.Config)
    common = {a for act in p._actions for a in act.option_strings}
    for f in dataclasses.fields(method.Config):
        opt = _option_name(f.name)
        if opt in common:
            continue
        tp, is_bool, nargs = _field_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = f.metadata.get("help", "") + ("" if default in (None, "") else f" (default {default})")
        if is_bool:
            g.add_argument(opt, dest=f.name, default=argparse.SUPPRESS, action=argparse.BooleanOptionalAction,
                           help=text)
        else:
            g.add_argument(opt, dest=f.name, default=argparse.SUPPRESS, type=tp, nargs=nargs, help=text)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The ``vlprop train METHOD`` arguments: one sub-parser per registered method with the common
    options and the method's own (from its ``Config``). Options default to SUPPRESS (absent from the
    namespace unless given) so a resumed run can tell the user's explicit settings from its saved ones."""
    sub = p.add_subparsers(dest="method", metavar="METHOD", required=True,
                           help="training method: " + ", ".join(method_names()))
    for name in method_names():
        method = get_method(name)
        m = sub.add_parser(name, help=method.summary, description=method.summary,
                           argument_default=argparse.SUPPRESS)
        _add_common_arguments(m, method)
        add_method_options(m, method)


def _add_common_arguments(p: argparse.ArgumentParser, method) -> None:
    d = TrainConfig()
    md = method.defaults
    S = argparse.SUPPRESS
    p.add_argument("--data", default=S, help="training videos: frame folders, DAVIS/YouTube-VOS root, or video files")
    p.add_argument("--out", default=S, help="run directory (checkpoints, logs)")
    p.add_argument("--resume", default=S, help="continue a run: its directory or a last.pt checkpoint")
    g = p.add_argument_group("schedule")
    g.add_argument("--iters", default=S, type=int, help=f"optimiser steps (default {d.iters})")
    g.add_argument("--time-budget", default=S, dest="time_budget", type=_duration,
                   help="stop (and checkpoint) after this much iteration time: seconds or 30m / 2h (default none)")
    g.add_argument("--batch", default=S, type=int, help=f"global clips per step (paper default {md['batch']})")
    g.add_argument("--accum", default=S, type=int, help="gradient-accumulation micro-batches per step (default 1)")
    g.add_argument("--lr", default=S, type=float, help=f"base learning rate (paper default {md['lr']})")
    g.add_argument("--weight-decay", default=S, dest="weight_decay", type=float,
                   help=f"(paper default {md['weight_decay']})")
    g.add_argument("--lr-schedule", default=S, dest="lr_schedule", choices=("constant", "cosine", "step"))
    g.add_argument("--lr-step", default=S, dest="lr_step", type=int)
    g.add_argument("--lr-gamma", default=S, dest="lr_gamma", type=float)
    g.add_argument("--warmup", default=S, type=int, help="linear warm-up steps (default 0)")
    g.add_argument("--holdout", default=S, type=int, help=f"videos held out for validation (default {d.holdout})")
    g = p.add_argument_group("model")
    g.add_argument("--arch", default=S, help=f"backbone, any registered name (paper default {md['arch']})")
    g.add_argument("--init", default=S,
                   help="backbone initialisation: random, imagenet (never downloaded) or a checkpoint (default random)")
    g = p.add_argument_group("image auxiliary objective (McKee et al. 2022, UVC+)")
    g.add_argument("--aux", default=S, choices=AUX_OBJECTIVES, help="auxiliary image objective (default none)")
    g.add_argument("--aux-weight", default=S, dest="aux_weight", type=float,
                   help=f"lambda (paper: 0.3 for rotation; default {d.aux_weight})")
    g.add_argument("--aux-per-clip", default=S, dest="aux_per_clip", type=int,
                   help=f"images per video clip (paper: image batch 64 / video batch 40; default {d.aux_per_clip})")
    g.add_argument("--aux-size", default=S, dest="aux_size", type=int, help=f"image side in pixels (default {d.aux_size})")
    g.add_argument("--aux-data", default=S, dest="aux_data",
                   help="folder of images for the auxiliary objective (default: frames of the training videos)")
    g = p.add_argument_group("system")
    g.add_argument("--workers", default=S, type=int, help=f"data loader processes (default {d.workers})")
    g.add_argument("--device", default=S, help="auto, cpu, cuda or cuda:N (default auto)")
    g.add_argument("--threads", default=S, type=int, help="torch intra-op threads")
    g.add_argument("--no-amp", default=S, dest="amp", action="store_false", help="disable mixed precision on CUDA")
    g.add_argument("--no-sync-bn", default=S, dest="sync_bn", action="store_false")
    g.add_argument("--freeze-bn", default=S, dest="freeze_bn", action="store_true",
                   help="keep the backbone's BatchNorm statistics of the initialisation (eval mode; affine weights "
                        "still train): fine-tuning --init imagenet with small batches (default off)")
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


def _duration(text: str) -> float:
    """``"7200"``, ``"90s"``, ``"30m"`` or ``"2h"`` -> seconds."""
    t = text.strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(t[-1:], None)
    try:
        value = float(t[:-1] if scale else t) * (scale or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (e.g. 7200, 30m, 2h)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"duration must be positive, got {text!r}")
    return value


def train_main(argv: Sequence[str] | None = None) -> int:
    """``python -m vlprop.train <method> ...`` / ``torchrun -m vlprop.train ...`` entry point."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    cfg, resume = config_from_namespace(vars(args))
    _guard_run_folder(cfg)
    return run_training(cfg, resume)
