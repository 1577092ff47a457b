"""Path safety: names read from files never escape the output folder, outputs never overlap inputs.

Every name that comes from a file (a sequence name in a split list or ``meta.json``, a frame or
annotation name, a keypoint name) goes through :func:`check_name` before it becomes part of a
path, and every output path built from such a name goes through :func:`ensure_inside`. Before a
command writes anything, :func:`refuse_overlap` checks that no output (``--out``, ``--overlay``,
exports, run folders) is, contains or lies inside an input (frames, annotations, ground truth,
weights): a wrong argument must never destroy the data it was meant to read.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

from ..errors import InputError

# Windows drive letters and separators are refused on every OS: a dataset list written on one
# machine must not become a path somewhere else on another.
_BAD_CHARS = ("/", "\\", "\0", ":")


def check_name(name: object, what: str, source: str | os.PathLike | None = None) -> str:
    """Return ``name`` if it is safe as one path component; raise :class:`InputError` otherwise.

    Safe: a non-empty string without a path separator, NUL or drive colon, not ``.``/``..``, and not
    starting with ``~``. ``what`` names the kind of name (``"sequence name"``) and ``source`` the file
    it came from, for the message.
    """
    where = f" in {source}" if source is not None else ""
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{what} {name!r}{where} is empty or not text; expected a plain name")
    bad = [c for c in _BAD_CHARS if c in name]
    if bad or name in (".", "..") or name.startswith("~") or name != name.strip():
        raise InputError(f"{what} {name!r}{where} is not a plain name (no path separators, '..', leading '~' or "
                         f"surrounding spaces); it would write outside the output folder")
    return name


def ensure_inside(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Return ``path`` if, resolved (symlinks followed), it lies inside the resolved ``root``.

    Raises :class:`InputError` when it does not (a name with ``..`` or a symlink pointing out).
    """
    r = Path(root).resolve()
    p = Path(path).resolve()
    if p != r and r not in p.parents:
        raise InputError(f"output path {path} resolves to {p}, outside the output folder {root}")
    return Path(path)


def _related(a: Path, b: Path) -> str | None:
    """How ``a`` relates to ``b`` (both resolved): ``"is"``, ``"contains"``, ``"lies inside"`` or None."""
    if a == b:
        return "is"
    if a in b.parents:
        return "contains"
    if b in a.parents:
        return "lies inside"
    return None


def _names(name: str | tuple[str, str]) -> tuple[str, str]:
    """(Python wording, CLI wording) of an argument name given as ``"x"`` or ``("out_dir", "--out")``."""
    return (name, name) if isinstance(name, str) else (name[0], name[1])


def refuse_overlap(outputs: Mapping[str | tuple[str, str], str | os.PathLike | None],
                   inputs: Mapping[str | tuple[str, str],
                                   str | os.PathLike | Iterable[str | os.PathLike] | None]) -> None:
    """Raise :class:`InputError` if an output is, contains or lies inside an input.

    ``outputs`` / ``inputs`` map an argument's name -- ``"frames"`` or a pair ``("out_dir", "--out")`` of
    its Python and command-line names (see :meth:`vlprop.errors.VlpropError.about`) -- to a path
    (``None`` = not given); an input may be a list of paths (for example every sequence folder of a
    dataset). Paths are compared resolved, so ``./a/../b`` and symlinks cannot hide an overlap. Inputs
    that do not exist are skipped (their own check reports them).
    """
    res_in: list[tuple[str, Path, Path]] = []
    for name, value in inputs.items():
        if value is None:
            continue
        values = [value] if isinstance(value, (str, os.PathLike)) else list(value)
        for v in values:
            if v is None or not Path(v).exists():
                continue
            res_in.append((name, Path(v), Path(v).resolve()))
    for oname, ovalue in outputs.items():
        if ovalue is None:
            continue
        o = Path(ovalue).resolve()
        for iname, ipath, i in res_in:
            how = _related(o, i)
            if how is not None:
                (opy, ocli), (ipy, icli) = _names(oname), _names(iname)

                def text(o_arg: str, i_arg: str) -> str:
                    return (f"{o_arg} {ovalue} {how} the input {i_arg} {ipath}; outputs are kept apart from inputs "
                            f"so that nothing you read is overwritten: choose another {o_arg}")

                raise InputError(text(opy, ipy), cli=text(ocli, icli))


def check_new_file(path: str | os.PathLike, force: bool, arg: str | tuple[str, str] = ("path", "--out"),
                   force_arg: tuple[str, str] = ("force=True", "--force")) -> Path:
    """Check that an output *file* ``path`` can be written before any work starts: not a folder, its
    nearest existing parent a writable folder, and not an existing file unless ``force``.

    ``arg`` / ``force_arg``: the argument names (Python, CLI) for the message.
    """
    p = Path(path)
    (apy, acli), (fpy, fcli) = _names(arg), _names(force_arg)
    if p.is_dir():
        raise InputError.about(apy, acli, lambda a: f"{a} {p} is a folder; give a file name")
    if p.exists() and not force:
        raise InputError(f"{apy} {p} already exists; choose another name or pass {fpy} to replace it",
                         cli=f"{acli} {p} already exists; choose another name or pass {fcli} to replace it")
    check_writable_parent(p, arg)
    return p


def check_writable_parent(path: str | os.PathLike, arg: str | tuple[str, str] = "output") -> None:
    """Raise :class:`InputError` unless ``path``'s nearest existing ancestor is a folder we may write in
    (so creating ``path`` and its missing parents will not fail half-way with an ``OSError``)."""
    p = Path(path)
    apy, acli = _names(arg)
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError.about(apy, acli, lambda a: f"cannot create {a} {p}: {parent} is a file, not a "
                                                            f"folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise InputError.about(apy, acli, lambda a: f"cannot create {a} {p}: no permission to write in "
                                                            f"{parent}")
            return
