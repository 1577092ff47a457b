"""User-facing errors. The CLI prints these as one clear message (no traceback)."""


class VlpropError(Exception):
    """Bad input or configuration: the message says which file/frame and what was expected."""


class InputError(VlpropError, ValueError):
    """An input file, frame, mask or argument is missing, unreadable or inconsistent."""


class CheckpointError(VlpropError, ValueError):
    """A weights file is missing, unreadable, or does not match the architecture."""
