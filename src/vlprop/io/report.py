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


# --------------------------------------------------------------------------- the review page
def _b64_jpeg(rgb, width: int) -> str:
    import base64

    import numpy as np
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(rgb))
    h = max(1, round(img.height * width / img.width))
    img = img.resize((width, h), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _colour(obj: int) -> str:
    from .masks import davis_palette

    r, g, b = davis_palette()[obj % 256]
    return f"#{r:02x}{g:02x}{b:02x}"


def confidence_svg(rows: list[dict], num_frames: int, below: float, width: int = 900, height: int = 220) -> str:
    """Inline SVG: confidence (0..1) against frame index, one polyline per object (DAVIS colours), the review
    threshold dashed, labelled frames marked below the axis."""
    from html import escape

    ml, mr, mt, mb = 44, 12, 12, 30
    pw, ph = width - ml - mr, height - mt - mb
    span = max(1, num_frames - 1)

    def x(t: float) -> float:
        return ml + pw * t / span

    def y(c: float) -> float:
        return mt + ph * (1 - c)

    parts = [f'<svg id="confidence-plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="confidence per frame and object">',
             f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#999"/>']
    for c in (0.0, 0.5, 1.0):
        parts.append(f'<text x="{ml - 6}" y="{y(c) + 4:.1f}" font-size="11" text-anchor="end">{c:g}</text>')
    parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y(below):.1f}" y2="{y(below):.1f}" stroke="#555" '
                 f'stroke-dasharray="5,4"><title>review threshold {below:g}</title></line>')
    for t in (0, num_frames - 1):
        parts.append(f'<text x="{x(t):.1f}" y="{height - 10}" font-size="11" text-anchor="middle">{t}</text>')
    parts.append(f'<text x="{ml + pw / 2:.1f}" y="{height - 10}" font-size="11" text-anchor="middle">frame</text>')
    by_obj: dict[int, list[dict]] = {}
    for r in rows:
        by_obj.setdefault(r["object_id"], []).append(r)
    for obj, rs in sorted(by_obj.items()):
        rs = sorted(rs, key=lambda r: r["frame_index"])
        pts = " ".join(f"{x(r['frame_index']):.1f},{y(r['confidence']):.1f}" for r in rs)
        parts.append(f'<polyline class="object-{obj}" points="{pts}" fill="none" stroke="{_colour(obj)}" '
                     f'stroke-width="3"><title>object {obj}</title></polyline>')
        for r in rs:
            if r["annotated"]:
                parts.append(f'<rect x="{x(r["frame_index"]) - 2:.1f}" y="{mt + ph + 2}" width="4" height="6" '
                             f'fill="#333"><title>labelled frame {escape(r["frame"])}</title></rect>')
    parts.append("</svg>")
    return "".join(parts)


def render_report(run: str | Path, rows: list[dict], protocol: dict, names: list[str], masks: list,
                  images: list | None, below: float = 0.5, thumb_width: int = 160, review_count: int = 24) -> str:
    """The self-contained review page (HTML string): summary, confidence timeline (inline SVG), the frames to
    check first (lowest confidence, overlay thumbnails as inline base64 JPEGs), every frame, and the protocol.

    ``masks``: index masks ``[H, W]`` per frame; ``images``: RGB frames ``[H, W, 3]`` or ``None`` (thumbnails then
    show the masks on grey).
    """
    import json as _json
    from html import escape

    import numpy as np

    from .masks import overlay

    n = len(names)
    worst: dict[int, float] = {}
    per_frame: dict[int, list[dict]] = {}
    for r in rows:
        per_frame.setdefault(r["frame_index"], []).append(r)
        worst[r["frame_index"]] = min(worst.get(r["frame_index"], 1.0), r["confidence"])

    def thumb(t: int) -> str:
        base = images[t] if images is not None else np.full(masks[t].shape + (3,), 128, np.uint8)
        return _b64_jpeg(overlay(base, masks[t]), thumb_width)

    def card(t: int) -> str:
        objs = " ".join(f'<span style="color:{_colour(r["object_id"])}">&#9632;</span>{r["object_id"]}: '
                        f'{r["confidence"]:.2f}' for r in sorted(per_frame.get(t, []), key=lambda r: r["object_id"]))
        low = ' class="frame low"' if worst.get(t, 1.0) < below else ' class="frame"'
        label = " (labelled)" if any(r["annotated"] for r in per_frame.get(t, [])) else ""
        return (f'<figure{low} id="frame-{t}"><img alt="frame {t}" src="data:image/jpeg;base64,{thumb(t)}">'
                f'<figcaption>{t} &middot; {escape(names[t])}{label}<br>{objs}</figcaption></figure>')

    review = sorted((t for t in worst if worst[t] < below), key=lambda t: (worst[t], t))[:review_count]
    preset = protocol.get("preset", {})
    summary = {
        "run": str(Path(run).resolve()), "source": protocol.get("source"), "frames": n,
        "objects": sorted({r["object_id"] for r in rows}),
        "model": f'{protocol.get("backbone")} / weights {protocol.get("weights", {}).get("description", "")}',
        "preset": preset.get("name"), "direction": protocol.get("direction"),
        "frames below threshold": f"{sum(1 for v in worst.values() if v < below)} (confidence < {below:g})",
    }
    srows = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>" for k, v in summary.items())
    title = escape(Path(str(protocol.get("source") or run)).name)
    css = ("body{font-family:sans-serif;margin:16px;color:#222}figure{display:inline-block;margin:4px;"
           "font-size:11px;vertical-align:top}figure img{display:block}figure.low img{outline:3px solid #d62728}"
           "table{border-collapse:collapse}th,td{text-align:left;padding:2px 8px;border-bottom:1px solid #ddd;"
           "font-size:13px}pre{font-size:11px;background:#f4f4f4;padding:8px;overflow:auto;max-height:400px}")
    review_html = "".join(card(t) for t in review) or "<p>No frame is below the threshold.</p>"
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>vlprop review: {title}</title>'
        f"<style>{css}</style></head><body>"
        f"<h1>vlprop review: {title}</h1>"
        f'<section id="timeline"><h2>Confidence per frame and object</h2>'
        f"{confidence_svg(rows, n, below)}</section>"
        f'<section id="summary"><table>{srows}</table></section>'
        f'<section id="review"><h2>Frames to check first (lowest confidence)</h2>{review_html}</section>'
        f'<section id="all-frames"><h2>All frames</h2>{"".join(card(t) for t in range(n))}</section>'
        f'<section id="protocol"><h2>Protocol</h2><pre>{escape(_json.dumps(protocol, indent=2, default=str), quote=False)}'
        f"</pre></section></body></html>")
