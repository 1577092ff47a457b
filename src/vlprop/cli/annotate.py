"""``vlprop export-masks`` (COCO RLE / CVAT / MOTS / YouTube-VOS / DAVIS) and ``vlprop report`` (review page)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from vlprop.errors import InputError


def _run_masks(run: Path):
    from vlprop.io.exports import read_png_folder

    if not run.is_dir():
        raise InputError(f"run folder not found: {run} (give the --out folder of `vlprop propagate`)")
    if not any(run.glob("*.png")):
        raise InputError(f"run folder {run} holds no mask PNGs (give the --out folder of `vlprop propagate`)")
    return read_png_folder(run)


def _video_name(run: Path, given: str | None) -> str:
    if given:
        return given
    proto = run / "protocol.json"
    if proto.is_file():
        try:
            src = json.loads(proto.read_text()).get("source")
            if src:
                return Path(src).stem or Path(src).name
        except (OSError, ValueError):
            pass
    return run.resolve().name


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def cmd_export_masks(args: argparse.Namespace) -> int:
    from vlprop.io.exports import export_masks

    run, out = Path(args.run), Path(args.out)
    names, masks = _run_masks(run)
    if _inside(out, run):
        raise InputError(f"--out {out} is inside the run folder {run}; write exports elsewhere")
    video = _video_name(run, args.video)
    path = export_masks(args.format, out, names, masks, video=video, void=None if args.no_void else args.void,
                        force=args.force)
    print(f"wrote {len(names)} frames of {video!r} as {args.format}: {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from vlprop.io.files import atomic_write_text
    from vlprop.io.report import read_confidence_csv, render_report
    from vlprop.io.video import open_frames

    run, out = Path(args.run), Path(args.out)
    names, masks = _run_masks(run)
    if _inside(out, run):
        raise InputError(f"--out {out} is inside the run folder {run}; write the report elsewhere")
    if out.exists() and not args.force:
        raise InputError(f"{out} exists; pass --force to overwrite it")
    if not (run / "confidence.csv").is_file():
        raise InputError(f"{run / 'confidence.csv'} not found: the run was not written by `vlprop propagate` "
                         f"(or by an older version); re-run propagate")
    rows = read_confidence_csv(run / "confidence.csv")
    protocol = {}
    if (run / "protocol.json").is_file():
        try:
            protocol = json.loads((run / "protocol.json").read_text())
        except ValueError as e:
            raise InputError(f"cannot read {run / 'protocol.json'}: {e}") from None
    images = None
    source = args.frames or protocol.get("source")
    if source and Path(source).exists():
        src = open_frames(source)
        by_name = {fr.name: fr.image for fr in src}
        if all(n in by_name for n in names):
            images = [by_name[n] for n in names]
    if images is None:
        print(f"frames of {source or 'the run'} not found or not matching the masks: thumbnails show the masks only "
              f"(give --frames)")
    html = render_report(run, rows, protocol, names, masks, images, below=args.below, thumb_width=args.thumb_width,
                         review_count=args.review_count)
    atomic_write_text(out, html)
    print(f"wrote {out} ({len(html) / 1e6:.1f} MB, {len(names)} frames)")
    return 0


def add_commands(sub) -> None:
    """Register ``export-masks`` and ``report``."""
    from vlprop.io.exports import FORMATS

    p = sub.add_parser("export-masks", help="export a propagate run's masks for annotation tools / benchmarks")
    p.add_argument("run", help="the --out folder of `vlprop propagate` (palette PNG masks)")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="coco: SA-V style masklet JSON with pycocotools RLE; cvat: CVAT for video 1.1 XML (mask "
                        "tracks); mots: MOTS PNG (16-bit, 1000 + object id) as CVAT/Datumaro import it; ytvos: "
                        "YouTube-VOS submission layout Annotations/<video>/; davis: DAVIS palette PNGs <video>/")
    p.add_argument("--out", required=True, help="output folder (not inside RUN)")
    p.add_argument("--video", help="video name used in the export (default: the run's source name)")
    p.add_argument("--void", type=int, default=255, help="mask value that is void, left out of coco/cvat/mots "
                                                         "(default 255)")
    p.add_argument("--no-void", action="store_true", help="no void value")
    p.add_argument("--force", action="store_true", help="overwrite existing export files")
    p.set_defaults(func=cmd_export_masks)

    p = sub.add_parser("report", help="write a self-contained HTML review page of a propagate run")
    p.add_argument("run", help="the --out folder of `vlprop propagate` (masks, confidence.csv, protocol.json)")
    p.add_argument("--out", required=True, help="the HTML file to write (e.g. report.html; not inside RUN)")
    p.add_argument("--frames", help="the video / frame folder (default: the source recorded in protocol.json)")
    p.add_argument("--below", type=float, default=0.5, help="confidence below which a frame is listed for review "
                                                            "(default 0.5)")
    p.add_argument("--review-count", type=int, default=24, help="how many low-confidence frames to list first")
    p.add_argument("--thumb-width", type=int, default=160, help="thumbnail width in pixels (default 160)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    p.set_defaults(func=cmd_report)
