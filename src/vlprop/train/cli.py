"""``vlprop train``: the training sub-command, registered by :mod:`vlprop.cli` via :func:`add_train_commands`."""
from __future__ import annotations

import argparse

from .trainer import add_train_arguments, config_from_namespace, run_training


def cmd_train(args: argparse.Namespace) -> int:
    cfg, resume = config_from_namespace(vars(args))
    return run_training(cfg, resume)


def add_train_commands(sub) -> None:
    """Add ``train`` to the ``vlprop`` sub-command parsers ``sub`` (``argparse._SubParsersAction``)."""
    p = sub.add_parser("train", help="self-supervised feature learning from raw video (DUL)",
                       description="Self-supervised training of dense correspondence features. "
                                   "Multi-process: torchrun --nproc_per_node N -m vlprop.train dul ...",
                       argument_default=argparse.SUPPRESS)
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)
    add_export_command(sub)


def cmd_export(args: argparse.Namespace) -> int:
    import json

    from .checkpoint import export_model

    meta = json.loads(args.meta) if args.meta else None
    if meta is not None and not isinstance(meta, dict):
        from vlprop.errors import InputError

        raise InputError("--meta expects a JSON object, e.g. '{\"davis2016_val_dev_JF\": 0.61}'")
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
    p.set_defaults(func=cmd_export)
