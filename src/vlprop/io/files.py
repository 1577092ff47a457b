"""Atomic file output: a result file is either complete or absent, never half-written."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    The temporary file keeps ``path``'s suffix (or ``suffix``) so writers that infer the format
    from the extension (PIL, PyAV, numpy) still work. On error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


INCOMPLETE_MARKER = ".vlprop-incomplete.json"
COMPLETE_MARKER = ".vlprop-complete.json"


def prepare_output_dir(out: str | os.PathLike, force: bool = False) -> Path:
    """Create the output folder ``out``; refuse a file there, or a non-empty folder unless ``force``.

    With ``force``, the files a previous vlprop result set recorded in its marker (see
    :class:`ResultSet`) are removed first, so stale outputs of another video never mix with the new
    ones; files vlprop did not write are left alone. An ``OSError`` (a read-only or missing parent)
    becomes an :class:`~vlprop.errors.InputError` naming the folder.
    """
    from ..errors import InputError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError.about("out", "--out", lambda a: f"{a} {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if not force:
            state = " and holds an incomplete result set (an earlier run stopped)" \
                if (out / INCOMPLETE_MARKER).exists() else ""
            raise InputError(f"output folder {out} is not empty{state}; choose another out or pass force=True "
                             f"to replace vlprop's earlier results",
                             cli=f"output folder {out} is not empty{state}; choose another --out or pass --force "
                                 f"to replace vlprop's earlier results")
        _remove_recorded(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise InputError.about("out", "--out", lambda a: f"cannot create output folder {out} ({a}): "
                                                         f"{reason}") from None
    return out


def _remove_recorded(out: Path) -> None:
    """Delete the files listed in ``out``'s vlprop markers (and the markers); nothing else."""
    from .paths import ensure_inside

    for marker in (out / COMPLETE_MARKER, out / INCOMPLETE_MARKER):
        try:
            files = json.loads(marker.read_text(encoding="utf-8")).get("files", [])
        except (OSError, ValueError, AttributeError):
            continue
        for rel in files if isinstance(files, list) else []:
            if not isinstance(rel, str):
                continue
            try:
                path = ensure_inside(out, out / rel)  # a tampered marker must not delete outside out
            except ValueError:
                continue
            if path.is_file() or path.is_symlink():
                path.unlink()
        for d in {(out / rel).parent for rel in files if isinstance(rel, str)} - {out}:
            with contextlib.suppress(OSError):
                if d.is_dir() and not any(d.iterdir()):
                    d.rmdir()
        marker.unlink(missing_ok=True)


class ResultSet:
    """A folder of results that is either complete or visibly incomplete.

    :meth:`begin` writes ``<out>/.vlprop-incomplete.json`` listing every file the run plans to write
    (before the first one); :meth:`finish` writes the manifest ``<out>/.vlprop-complete.json`` (last)
    and removes the incomplete marker. A run that stops half-way (a corrupt frame, Ctrl-C, SIGTERM)
    thus leaves the incomplete marker, and ``--force`` (:func:`prepare_output_dir`) removes exactly the
    listed files before a new run -- never files the user put there.

    Paths are relative to ``out`` (``"00000.png"``, ``"probs/00000.npz"``).
    """

    def __init__(self, out: str | os.PathLike, tool: str):
        self.out = Path(out)
        self.tool = tool
        self.planned: list[str] = []

    def begin(self, planned: list[str]) -> None:
        from .paths import ensure_inside

        for rel in planned:
            ensure_inside(self.out, self.out / rel)
        self.planned = list(planned)
        atomic_write_text(self.out / INCOMPLETE_MARKER,
                          json.dumps({"tool": self.tool, "status": "incomplete", "files": self.planned}, indent=1))

    def finish(self, written: list[str] | None = None) -> None:
        files = self.planned if written is None else list(written)
        atomic_write_text(self.out / COMPLETE_MARKER,
                          json.dumps({"tool": self.tool, "status": "complete", "files": files}, indent=1))
        (self.out / INCOMPLETE_MARKER).unlink(missing_ok=True)
