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
import contextlib
import logging
import os
import signal
import sys
import threading

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
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    propagate_cli.add_commands(sub)
    eval_cli.add_commands(sub)
    train_cli.add_commands(sub)
    zero_shot_cli.add_commands(sub)
    annotate_cli.add_commands(sub)
    return ap


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, Slurm preemption, ``docker stop``), raised like Ctrl-C so that the same
    cleanup runs: temporary files are removed and the incomplete marker stays."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Handle SIGTERM like SIGINT while a command runs (main thread only; restored afterwards)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Run the ``vlprop`` command; returns the exit code (0 ok, 2 bad input, 130 interrupted, 143 terminated).

    Errors are printed as one ``vlprop: error: ...`` line: user errors (:class:`VlpropError`, worded with
    the flags) and operating-system errors on files (a full disk, a read-only folder) alike.
    """
    ap = build_parser()
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        with _sigterm_as_interrupt():
            return int(args.func(args) or 0)
    except VlpropError as e:
        print(f"vlprop: error: {e.cli_message()}", file=sys.stderr)
        return 2
    except Terminated:
        print("vlprop: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("vlprop: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`vlprop presets | head`): not an error; keep Python from complaining at exit
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        print(f"vlprop: error: cannot write or read{where}: {e.strerror or e}", file=sys.stderr)
        return 2


__all__ = ["build_parser", "main", "parse_sets"]
