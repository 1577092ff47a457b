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
