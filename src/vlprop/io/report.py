"""Run records of ``vlprop propagate`` for review: ``confidence.csv`` and the self-contained HTML review page.

``confidence.csv`` has one row per frame and object: ``frame_index, frame, object_id, confidence, sharpness,
stability, area, annotated`` (see :mod:`vlprop.labels.confidence`).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterable, Mapping

from ..errors import InputError
from .files import atomic_write_text

CONFIDENCE_FIELDS = ("frame_index", "frame", "object_id", "confidence", "sharpness", "stability", "area", "annotated")


def write_confidence_csv(path: str | Path, rows: Iterable[Mapping]) -> None:
    """Write ``confidence.csv`` atomically (rows are dicts with :data:`CONFIDENCE_FIELDS`)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CONFIDENCE_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r[k] for k in CONFIDENCE_FIELDS})
    atomic_write_text(path, buf.getvalue())


def read_confidence_csv(path: str | Path) -> list[dict]:
    """Rows of a ``confidence.csv`` with numbers parsed."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        out = []
        for r in rows:
            out.append({"frame_index": int(r["frame_index"]), "frame": r["frame"], "object_id": int(r["object_id"]),
                        "confidence": float(r["confidence"]), "sharpness": float(r["sharpness"]),
                        "stability": float(r["stability"]), "area": int(r["area"]),
                        "annotated": bool(int(r["annotated"]))})
    except (OSError, KeyError, ValueError, csv.Error) as e:
        raise InputError(f"cannot read {path}: {e}") from None
    return out
