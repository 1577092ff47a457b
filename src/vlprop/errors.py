"""User-facing errors. The CLI prints these as one clear message (no traceback).

One mechanism gives the right wording on each path: an error about an argument carries two texts,
the Python one (``str(e)``, naming the function argument, e.g. ``out_dir``) and the command-line one
(``e.cli_message()``, naming the flag, e.g. ``--out``), which ``vlprop.cli.main`` prints.
:meth:`VlpropError.about` builds both from one template.
"""
from __future__ import annotations

from typing import Callable, TypeVar

E = TypeVar("E", bound="VlpropError")


class VlpropError(Exception):
    """Bad input or configuration: the message says which file/frame and what was expected.

    ``cli``: the same message worded for the command line (flags instead of Python arguments);
    ``None`` when the message reads the same on both paths.
    """

    def __init__(self, message: str = "", *, cli: str | None = None):
        super().__init__(message)
        self.cli = cli

    def cli_message(self) -> str:
        """The message as the ``vlprop`` command prints it."""
        return self.cli if self.cli is not None else str(self)

    @classmethod
    def about(cls: type[E], arg: str, flag: str, text: Callable[[str], str]) -> E:
        """An error whose message names an argument: ``text(arg)`` for Python, ``text(flag)`` for the CLI."""
        return cls(text(arg), cli=text(flag))


class InputError(VlpropError, ValueError):
    """An input file, frame, mask or argument is missing, unreadable or inconsistent."""


class CheckpointError(VlpropError, ValueError):
    """A weights file is missing, unreadable, or does not match the architecture."""
