"""Mask exports in the formats annotation tools read, each with a reader that decodes it back exactly.

A video's masks are a list of index masks ``[H, W]`` (uint8, 0 = background, object ids 1..254) with one
frame name each. Formats:

* ``coco``  -- SA-V / SAM 2 style masklet JSON: ``masklet[frame][k]`` is a COCO RLE (``pycocotools``,
  ``{"size": [H, W], "counts": str}``) of object ``masklet_id[k]`` on that frame; ``frame_names`` gives the
  frame names (SA-V leaves them implicit). Decode with ``pycocotools.mask.decode``.
* ``cvat``  -- CVAT for video 1.1 XML (``annotations.xml``): one ``<track>`` per object with a ``<mask>`` per
  frame; CVAT's mask RLE is the comma-separated run lengths (first run = 0s) of the object's bounding box
  ``left, top, width, height`` in row-major order.
* ``mots``  -- MOTS PNG as CVAT/Datumaro import it: ``default/instances/<frame>.png`` (16-bit,
  ``1000 * (1 + label index) + object id``; one label ``object`` so value = 1000 + id) and
  ``default/instances/labels.txt``.
* ``ytvos`` -- YouTube-VOS submission layout: ``Annotations/<video>/<frame>.png`` palette PNGs.
* ``davis`` -- DAVIS palette PNGs: ``<video>/<frame>.png``.

Every writer writes files atomically and refuses to overwrite existing files unless ``force``.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import InputError
from .files import atomic_path, atomic_write_text
from .masks import read_mask, write_mask
from .video import natural_key

FORMATS = ("coco", "cvat", "mots", "ytvos", "davis")
MOTS_MAX_INSTANCES = 1000
MOTS_LABEL = "object"


def _check(names: Sequence[str], masks: Sequence[np.ndarray]) -> tuple[int, int]:
    if len(names) != len(masks):
        raise InputError(f"{len(names)} frame names for {len(masks)} masks")
    if not masks:
        raise InputError("no masks to export")
    shape = np.asarray(masks[0]).shape
    for n, m in zip(names, masks):
        if np.asarray(m).shape != shape or len(shape) != 2:
            raise InputError(f"mask of frame {n!r} has shape {np.asarray(m).shape}, expected {shape} like the first")
    return int(shape[0]), int(shape[1])


def object_ids(masks: Sequence[np.ndarray], void: int | None = 255) -> list[int]:
    """Sorted object ids present in any mask (0 and ``void`` excluded)."""
    ids: set[int] = set()
    for m in masks:
        ids.update(int(v) for v in np.unique(m))
    return sorted(i for i in ids if i != 0 and i != void)


def _refuse(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise InputError(f"{path} exists; pass --force to overwrite it")


# --------------------------------------------------------------------------- COCO RLE (SA-V masklets)
def _mask_utils():
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        raise InputError("the coco export needs pycocotools: pip install 'vlprop[annotate]'") from None
    return mask_utils


def rle_encode(binary: np.ndarray) -> dict:
    """Binary mask ``[H, W]`` -> COCO compressed RLE ``{"size": [H, W], "counts": str}`` (pycocotools)."""
    mask_utils = _mask_utils()

    rle = mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_decode(rle: dict) -> np.ndarray:
    """COCO RLE (compressed string or bytes counts) -> bool mask ``[H, W]``."""
    mask_utils = _mask_utils()

    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        counts = mask_utils.frPyObjects(rle, *rle["size"])["counts"]
    elif isinstance(counts, str):
        counts = counts.encode("ascii")
    return mask_utils.decode({"size": list(rle["size"]), "counts": counts}).astype(bool)


def export_coco(path: str | Path, names: Sequence[str], masks: Sequence[np.ndarray], video: str = "video",
                void: int | None = 255, force: bool = False) -> Path:
    """Write an SA-V style masklet JSON (COCO RLE per frame per object) to ``path``."""
    path = Path(path)
    _refuse(path, force)
    H, W = _check(names, masks)
    ids = object_ids(masks, void)
    doc = {
        "format": "vlprop masklets (SA-V layout, pycocotools RLE)",
        "video_id": video, "video_frame_count": len(names), "video_height": H, "video_width": W,
        "frame_names": list(names),
        "masklet_id": ids,
        "masklet": [[rle_encode(np.asarray(m) == i) for i in ids] for m in masks],
        "masklet_num": len(ids),
    }
    atomic_write_text(path, json.dumps(doc))
    return path


def read_coco(path: str | Path) -> tuple[list[str], list[np.ndarray]]:
    """Decode :func:`export_coco` output back to ``(names, index masks)``."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        ids, H, W = doc["masklet_id"], int(doc["video_height"]), int(doc["video_width"])
        names = doc.get("frame_names") or [f"{t:05d}" for t in range(len(doc["masklet"]))]
        out = []
        for per_frame in doc["masklet"]:
            m = np.zeros((H, W), np.uint8)
            for i, rle in zip(ids, per_frame):
                m[rle_decode(rle)] = i
            out.append(m)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"cannot read masklet JSON {path}: {e}") from None
    return list(names), out


# --------------------------------------------------------------------------- CVAT for video 1.1
def cvat_rle(binary: np.ndarray) -> tuple[list[int], int, int, int, int]:
    """CVAT mask RLE of a non-empty bool mask: ``(counts, left, top, width, height)``.

    ``counts`` alternate runs of 0 and 1 over the bounding box ``[top:top+height, left:left+width]`` in
    row-major order, starting with a (possibly empty) run of 0s.
    """
    ys, xs = np.nonzero(binary)
    top, left, bottom, right = int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max())
    flat = binary[top:bottom + 1, left:right + 1].reshape(-1).astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    return [int(r) for r in runs], left, top, right - left + 1, bottom - top + 1


def cvat_rle_decode(counts: Sequence[int], left: int, top: int, width: int, height: int, H: int, W: int) -> np.ndarray:
    """Inverse of :func:`cvat_rle`: a bool mask ``[H, W]``."""
    if sum(counts) != width * height:
        raise InputError(f"CVAT RLE covers {sum(counts)} pixels but its box is {width}x{height}")
    values = np.arange(len(counts)) % 2
    box = np.repeat(values, counts).astype(bool).reshape(height, width)
    out = np.zeros((H, W), bool)
    out[top:top + height, left:left + width] = box
    return out


def export_cvat(path: str | Path, names: Sequence[str], masks: Sequence[np.ndarray], video: str = "video",
                void: int | None = 255, force: bool = False) -> Path:
    """Write CVAT for video 1.1 XML: a track per object, a ``<mask>`` per frame (``outside=1`` where absent)."""
    path = Path(path)
    _refuse(path, force)
    H, W = _check(names, masks)
    ids = object_ids(masks, void)
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    task = ET.SubElement(ET.SubElement(root, "meta"), "task")
    for tag, val in (("name", video), ("size", str(len(names))), ("mode", "interpolation"),
                     ("start_frame", "0"), ("stop_frame", str(len(names) - 1))):
        ET.SubElement(task, tag).text = val
    labels = ET.SubElement(task, "labels")
    lab = ET.SubElement(labels, "label")
    ET.SubElement(lab, "name").text = MOTS_LABEL
    ET.SubElement(lab, "type").text = "mask"
    size = ET.SubElement(task, "original_size")
    ET.SubElement(size, "width").text = str(W)
    ET.SubElement(size, "height").text = str(H)
    frames = ET.SubElement(task, "frames")  # vlprop extension: frame index -> name (CVAT ignores it)
    for t, n in enumerate(names):
        ET.SubElement(frames, "frame", id=str(t), name=str(n))
    for k, i in enumerate(ids):
        track = ET.SubElement(root, "track", id=str(k), label=MOTS_LABEL, source="auto")
        ET.SubElement(track, "attribute", name="vlprop_object_id").text = str(i)
        prev_present = None
        for t, m in enumerate(masks):
            b = np.asarray(m) == i
            present = bool(b.any())
            if present:
                counts, left, top, w, h = cvat_rle(b)
                ET.SubElement(track, "mask", frame=str(t), keyframe="1", outside="0", occluded="0",
                              rle=", ".join(map(str, counts)), left=str(left), top=str(top), width=str(w),
                              height=str(h), z_order="0")
            elif prev_present:  # the object left: an outside key frame, as CVAT writes it
                ET.SubElement(track, "mask", frame=str(t), keyframe="1", outside="1", occluded="0", rle="1",
                              left="0", top="0", width="1", height="1", z_order="0")
            prev_present = present
    ET.indent(root)
    atomic_write_text(path, '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode"))
    return path


def read_cvat(path: str | Path) -> tuple[list[str], list[np.ndarray]]:
    """Decode :func:`export_cvat` output back to ``(names, index masks)``."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
        task = root.find("meta/task")
        n = int(task.findtext("size"))
        W = int(task.findtext("original_size/width"))
        H = int(task.findtext("original_size/height"))
        names = {int(f.get("id")): f.get("name") for f in task.findall("frames/frame")}
        out = [np.zeros((H, W), np.uint8) for _ in range(n)]
        for track in root.findall("track"):
            oid = int(track.findtext("attribute[@name='vlprop_object_id']") or int(track.get("id")) + 1)
            for m in track.findall("mask"):
                if m.get("outside") == "1":
                    continue
                counts = [int(c) for c in m.get("rle").split(",")]
                b = cvat_rle_decode(counts, int(m.get("left")), int(m.get("top")), int(m.get("width")),
                                    int(m.get("height")), H, W)
                out[int(m.get("frame"))][b] = oid
    except (OSError, ET.ParseError, ValueError, TypeError, AttributeError) as e:
        raise InputError(f"cannot read CVAT XML {path}: {e}") from None
    return [names.get(t, f"{t:05d}") for t in range(n)], out


# --------------------------------------------------------------------------- MOTS PNG
def export_mots(out: str | Path, names: Sequence[str], masks: Sequence[np.ndarray], void: int | None = 255,
                force: bool = False) -> Path:
    """Write MOTS PNGs (16-bit, ``1000 * (1 + 0) + id``) under ``out/default/instances``."""
    folder = Path(out) / "default" / "instances"
    _check(names, masks)
    labels = folder / "labels.txt"
    _refuse(labels, force)
    for n, m in zip(names, masks):
        m = np.asarray(m)
        keep = (m != 0) if void is None else ((m != 0) & (m != void))
        val = np.where(keep, MOTS_MAX_INSTANCES * 1 + m.astype(np.uint16), 0).astype(np.uint16)
        p = folder / f"{n}.png"
        _refuse(p, force)
        with atomic_path(p) as tmp:
            Image.fromarray(val).save(tmp, format="PNG")  # uint16 -> PIL mode I;16, a 16-bit grey PNG
    atomic_write_text(labels, MOTS_LABEL + "\n")
    return folder


def read_mots(out: str | Path) -> tuple[list[str], list[np.ndarray]]:
    """Decode :func:`export_mots` output back to ``(names, index masks)`` (object id = value % 1000)."""
    folder = Path(out) / "default" / "instances"
    files = sorted(folder.glob("*.png"), key=lambda p: natural_key(p.name))
    if not files:
        raise InputError(f"no MOTS PNGs in {folder}")
    masks = []
    for p in files:
        with Image.open(p) as img:
            arr = np.asarray(img).astype(np.int64)
        masks.append(np.where(arr // MOTS_MAX_INSTANCES >= 1, arr % MOTS_MAX_INSTANCES, 0).astype(np.uint8))
    return [p.stem for p in files], masks


# --------------------------------------------------------------------------- palette PNG layouts
def export_png_folder(folder: str | Path, names: Sequence[str], masks: Sequence[np.ndarray],
                      force: bool = False) -> Path:
    """DAVIS-palette index PNGs ``folder/<name>.png``."""
    folder = Path(folder)
    _check(names, masks)
    for n, m in zip(names, masks):
        p = folder / f"{n}.png"
        _refuse(p, force)
        write_mask(p, m)
    return folder


def read_png_folder(folder: str | Path) -> tuple[list[str], list[np.ndarray]]:
    """Index masks of ``folder/*.png`` in natural order (values as stored; no 0/255 remapping)."""
    files = sorted(Path(folder).glob("*.png"), key=lambda p: natural_key(p.name))
    if not files:
        raise InputError(f"no mask PNGs in {folder}")
    return [p.stem for p in files], [read_mask(p, binary_255="void") for p in files]


def export_masks(fmt: str, out: str | Path, names: Sequence[str], masks: Sequence[np.ndarray], video: str = "video",
                 void: int | None = 255, force: bool = False) -> Path:
    """Export in ``fmt`` (one of :data:`FORMATS`) under the folder ``out``; returns the main file/folder written.

    Layouts: ``coco`` -> ``out/<video>.json``; ``cvat`` -> ``out/annotations.xml``; ``mots`` ->
    ``out/default/instances/``; ``ytvos`` -> ``out/Annotations/<video>/``; ``davis`` -> ``out/<video>/``.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    if fmt == "coco":
        return export_coco(out / f"{video}.json", names, masks, video=video, void=void, force=force)
    if fmt == "cvat":
        return export_cvat(out / "annotations.xml", names, masks, video=video, void=void, force=force)
    if fmt == "mots":
        return export_mots(out, names, masks, void=void, force=force)
    if fmt == "ytvos":
        return export_png_folder(out / "Annotations" / video, names, masks, force=force)
    if fmt == "davis":
        return export_png_folder(out / video, names, masks, force=force)
    raise InputError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")


def read_export(fmt: str, out: str | Path, video: str = "video") -> tuple[list[str], list[np.ndarray]]:
    """Read back what :func:`export_masks` wrote (for checks and round trips)."""
    out = Path(out)
    readers = {"coco": lambda: read_coco(out / f"{video}.json"), "cvat": lambda: read_cvat(out / "annotations.xml"),
               "mots": lambda: read_mots(out), "ytvos": lambda: read_png_folder(out / "Annotations" / video),
               "davis": lambda: read_png_folder(out / video)}
    if fmt not in readers:
        raise InputError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return readers[fmt]()


__all__ = ["FORMATS", "export_masks", "read_export", "export_coco", "read_coco", "export_cvat", "read_cvat",
           "export_mots", "read_mots", "export_png_folder", "read_png_folder", "rle_encode", "rle_decode",
           "cvat_rle", "cvat_rle_decode", "object_ids"]
