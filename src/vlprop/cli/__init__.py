"""The ``vlprop`` command. The only package that imports argparse: one module per verb family.

* :mod:`.propagate` — ``propagate`` (masks), ``presets``, ``demo``; :mod:`.keypoints` — ``propagate --keypoints``
* :mod:`.eval` — ``eval vos | score | pose | points``
* :mod:`.train` — ``train``, ``export``
* :mod:`.zero_shot` — ``init-mask``, ``segment``, ``eval zero-shot`` (no label: zero-shot VOS)
* :mod:`.annotate` — ``export-masks``, ``report``
* :mod:`.options` — the shared model arguments (``--preset --backbone --weights ...``) and ``--set`` parsing
"""
from __future__ import annotations

import argparse
import logging
import sys

from vlprop import __version__
from vlprop.cli import annotate as annotate_cli
from vlprop.cli import eval as eval_cli
from vlprop.cli import propagate as propagate_cli
from vlprop.cli import train as train_cli
from vlprop.cli import zero_shot as zero_shot_cli
from vlprop.cli.options import parse_sets
from vlprop.errors import VlpropError


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vlprop", description="Video label propagation with learned dense "
                                                            "correspondence.")
    ap.add_argument("--version", action="version", version=f"vlprop {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = ap.add_subparsers(dest="command", required=True)
    propagate_cli.add_commands(sub)
    eval_cli.add_commands(sub)
    train_cli.add_commands(sub)
    zero_shot_cli.add_commands(sub)
    annotate_cli.add_commands(sub)
    return ap


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


__all__ = ["build_parser", "main", "parse_sets"]
