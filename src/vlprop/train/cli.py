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
