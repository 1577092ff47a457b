"""Video object segmentation datasets on disk: DAVIS-2016/2017, YouTube-VOS, SegTrackV2, plain folders.

Every reader returns a list of :class:`VOSSequence` records: the sequence name, its frame files, the
annotation file(s) of each frame (``None`` where a frame is not annotated), the object ids with the
frame index where each first appears, and how its masks are encoded. Readers check the layout up
front (roots, split lists, frames, masks, frame/mask sizes) and raise :class:`vlprop.errors.InputError`
naming the offending file, so a broken dataset fails before any computation starts.

Mask encodings (``VOSSequence.mask_encoding``):

* ``"index"`` - palette (``P``) or greyscale (``L``) PNGs whose pixel values are object ids,
  0 = background, 255 = void (DAVIS-2017, YouTube-VOS, plain folders). RGB colour PNGs are rejected:
  colours are never mapped back to ids.
* ``"binary255"`` - DAVIS-2016 single-object masks stored as 0/255; any non-zero value is object 1.
* ``"binary"`` - SegTrackV2: one binary image per object and frame (any image mode, > 0 = object),
  merged into an index map where later objects overwrite earlier ones.

Layouts (``root`` is the dataset folder):

* DAVIS-2016: ``ImageSets/480p/<split>.txt`` (or ``ImageSets/<split>.txt``) whose lines are either
  path pairs ``/JPEGImages/480p/<seq>/00000.jpg /Annotations/480p/<seq>/00000.png`` or sequence
  names; frames ``JPEGImages/480p/<seq>/*.jpg``, masks ``Annotations/480p/<seq>/<stem>.png`` (every
  frame annotated).
* DAVIS-2017: ``ImageSets/2017/<split>.txt`` (sequence names), ``JPEGImages/480p/<seq>/*.jpg``,
  ``Annotations/480p/<seq>/*.png`` (``Annotations_unsupervised`` for the unsupervised task); frame 0
  must be annotated, later frames may not be (test-dev).
* YouTube-VOS: ``<split>/meta.json`` (``{"videos": {vid: {"objects": {id: {"frames": [stems]}}}}}``),
  ``<split>/JPEGImages/<vid>/*.jpg``, ``<split>/Annotations/<vid>/*.png`` on some frames only; an
  object first appears on the first frame of its ``frames`` list.
* SegTrackV2: ``ImageSets/<split>.txt`` (names, a leading ``*`` ignored), ``ImageSets/<video>.txt``
  (first line a path prefix, then frame stems), frames ``JPEGImages/<prefix>/<stem>.<ext>``, masks
  ``GroundTruth/<prefix>/<stem>.<ext>`` or, for several objects, ``GroundTruth/<prefix>/<k>/...``
  with ``k = 1..K``; extensions (png/bmp) detected per folder.
* Plain folder: ``JPEGImages/<seq>/*.{jpg,jpeg,png,bmp}`` and ``Annotations/<seq>/<stem>.png``.

A split is a list-file name (resolved in the layout's list folder), a path to a list file, or an
explicit list of sequence names.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from vlprop.errors import InputError
from vlprop.io.paths import check_name

__all__ = [
    "VOSSequence",
    "MASK_ENCODINGS",
    "read_index_mask",
    "read_binary_mask",
    "read_annotation",
    "read_davis2016",
    "read_davis2017",
    "read_youtube_vos",
    "read_segtrackv2",
    "read_folder",
    "read_dataset",
    "DATASET_READERS",
]

MASK_ENCODINGS = ("index", "binary255", "binary")
VOID_LABEL = 255
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
_INDEX_MODES = ("P", "L", "1", "I", "I;16", "I;16B", "I;16L")

Annotation = Path | tuple[Path, ...] | None


# ---------------------------------------------------------------------------------------------------
# Mask files
# ---------------------------------------------------------------------------------------------------
def _open_image(path: Path, what: str) -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise InputError(f"cannot read {what} {path}: {exc}") from None


def read_index_mask(path: str | os.PathLike) -> np.ndarray:
    """Object-id map ``[H, W]`` (uint8, or the file's integer type for 16-bit PNGs) of a mask file.

    Accepts palette (``P``: the palette indices are the ids, colours are ignored), greyscale ``L``,
    bilevel ``1`` and 16-bit greyscale images. Colour (RGB/RGBA/LA) images raise :class:`InputError`:
    a colour cannot be turned back into an id reliably.
    """
    path = Path(path)
    with _open_image(path, "mask") as img:
        if img.mode not in _INDEX_MODES:
            raise InputError(
                f"mask {path} is a {img.mode} colour image; masks must be palette ('P') or greyscale ('L') "
                f"PNGs whose pixel values are object ids (0 = background). Convert it, e.g. save "
                f"Image.fromarray(ids.astype(np.uint8)) with a palette, or map each colour to its id first.")
        try:
            arr = np.array(img)
        except OSError as exc:
            raise InputError(f"cannot decode mask {path}: {exc}") from None
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.ndim != 2:
        raise InputError(f"mask {path} has shape {arr.shape}; expected a single-channel [H, W] image")
    return arr


def read_binary_mask(path: str | os.PathLike) -> np.ndarray:
    """Binary mask ``[H, W]`` (bool) of any image: converted to greyscale, non-zero = object."""
    path = Path(path)
    with _open_image(path, "mask") as img:
        try:
            grey = img if img.mode in ("L", "1") else img.convert("L")
            return np.array(grey) > 0
        except OSError as exc:
            raise InputError(f"cannot decode mask {path}: {exc}") from None


def read_annotation(annotation: Path | Sequence[Path], encoding: str) -> np.ndarray:
    """Decode one frame's annotation into an id map ``[H, W]`` (see the module doc for encodings)."""
    if encoding == "index":
        return read_index_mask(annotation)  # type: ignore[arg-type]
    if encoding == "binary255":
        return (read_index_mask(annotation) > 0).astype(np.uint8)  # type: ignore[arg-type]
    if encoding == "binary":
        paths = [annotation] if isinstance(annotation, (str, os.PathLike)) else list(annotation)
        out = None
        for k, p in enumerate(paths, start=1):
            m = read_binary_mask(p)
            if out is None:
                out = np.zeros(m.shape, dtype=np.uint8)
            elif m.shape != out.shape:
                raise InputError(f"mask {p} has size {m.shape[::-1]}, the other objects' masks {out.shape[::-1]}")
            out[m] = k  # later objects overwrite earlier ones
        if out is None:
            raise InputError("an annotation with no mask file")
        return out
    raise ValueError(f"unknown mask encoding {encoding!r}; expected one of {MASK_ENCODINGS}")


def _image_size(path: Path, what: str) -> tuple[int, int]:
    with _open_image(path, what) as img:
        return img.size  # (W, H), header only


# ---------------------------------------------------------------------------------------------------
# The record
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VOSSequence:
    """One video of a VOS dataset.

    ``frames[t]`` is the image file of frame t; ``annotations[t]`` its mask file (a tuple of per-object
    files for the ``"binary"`` encoding) or ``None`` if frame t is not annotated; ``objects`` maps each
    object id to the index of the first frame where it appears (sorted by id).
    """

    name: str
    frames: tuple[Path, ...]
    annotations: tuple[Annotation, ...]
    objects: Mapping[int, int] = field(default_factory=dict)
    mask_encoding: str = "index"

    def __post_init__(self) -> None:
        if len(self.frames) != len(self.annotations):
            raise ValueError(f"{self.name}: {len(self.frames)} frames but {len(self.annotations)} annotation slots")
        if self.mask_encoding not in MASK_ENCODINGS:
            raise ValueError(f"unknown mask encoding {self.mask_encoding!r}")

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def frame_names(self) -> tuple[str, ...]:
        """Frame file stems (``00000`` ...), the names prediction files use."""
        return tuple(p.stem for p in self.frames)

    @property
    def annotated_frames(self) -> tuple[int, ...]:
        return tuple(t for t, a in enumerate(self.annotations) if a is not None)

    @property
    def object_ids(self) -> tuple[int, ...]:
        return tuple(self.objects)

    def read_frame(self, t: int) -> np.ndarray:
        """Frame t as RGB uint8 ``[H, W, 3]``."""
        from vlprop.io.video import image_to_rgb

        with _open_image(self.frames[t], "frame") as img:
            try:
                img.load()
                return image_to_rgb(img, f"frame {self.frames[t]}")  # 16-bit frames scaled, not clipped
            except OSError as exc:
                raise InputError(f"cannot decode frame {self.frames[t]}: {exc}") from None

    def read_mask(self, t: int) -> np.ndarray | None:
        """Id map ``[H, W]`` of frame t (0 = background, 255 = void for index masks), None if unannotated."""
        ann = self.annotations[t]
        return None if ann is None else read_annotation(ann, self.mask_encoding)


# ---------------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------------
def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise InputError(f"{what} not found: {path}")
    return path


def _read_list(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read split list {path}: {exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _checked_names(names: Sequence[str], source: object) -> list[str]:
    """Sequence names of a split list / ``meta.json`` / argument, each checked to be a plain name: a name
    becomes the folder ``<out>/<name>``, so ``../x`` or ``/abs`` would write (and clear) outside ``out``."""
    return [check_name(n, "sequence name", source) for n in names]


def _resolve_split(split: str | os.PathLike | Sequence[str], candidates: Sequence[Path],
                   list_dirs: Sequence[Path]) -> list[str] | Path:
    """A split as an explicit list of names, or the list file it names (first existing candidate)."""
    if not isinstance(split, (str, os.PathLike)):
        names = [str(s) for s in split]
        if not names:
            raise InputError("the split is an empty list of sequences")
        return names
    for c in candidates:
        if c.is_file():
            return c
    direct = Path(split)
    if direct.suffix == ".txt" and direct.is_file():
        return direct
    available = sorted({p.stem for d in list_dirs if d.is_dir() for p in d.glob("*.txt")})
    looked = ", ".join(str(c) for c in candidates)
    raise InputError(f"split {str(split)!r} not found (looked for {looked}); available splits: "
                     f"{', '.join(available) if available else 'none'}")


def _list_images(folder: Path, exts: Sequence[str]) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts]
    return sorted(files, key=lambda p: p.name)


def _match_masks(seq: str, frames: list[Path], mask_dir: Path, required: str) -> list[Path | None]:
    """Masks ``<mask_dir>/<frame stem>.png`` per frame. ``required``: "all" | "first" | "none"."""
    masks = {p.stem: p for p in mask_dir.glob("*.png")} if mask_dir.is_dir() else {}
    stems = {f.stem for f in frames}
    orphans = sorted(set(masks) - stems)
    if orphans:
        raise InputError(f"{seq}: mask {masks[orphans[0]]} has no frame {orphans[0]}.* in {frames[0].parent}"
                         + (f" ({len(orphans)} such masks)" if len(orphans) > 1 else ""))
    out: list[Path | None] = [masks.get(f.stem) for f in frames]
    if required == "all":
        for f, m in zip(frames, out):
            if m is None:
                raise InputError(f"{seq}: mask {mask_dir / (f.stem + '.png')} for frame {f} is missing")
    elif required == "first" and out and out[0] is None:
        raise InputError(f"{seq}: the first frame {frames[0]} has no mask {mask_dir / (frames[0].stem + '.png')}")
    return out


def _check_sizes(seq: str, frames: Sequence[Path], annotations: Sequence[Annotation]) -> None:
    for f, ann in zip(frames, annotations):
        if ann is None:
            continue
        fsize = _image_size(f, "frame")
        for m in (ann if isinstance(ann, tuple) else (ann,)):
            msize = _image_size(m, "mask")
            if msize != fsize:
                raise InputError(f"{seq}: mask {m} is {msize[0]}x{msize[1]} but its frame {f} is "
                                 f"{fsize[0]}x{fsize[1]} (width x height)")


def _scan_objects(annotations: Sequence[Annotation], encoding: str, stop_after_first: bool = False) -> dict[int, int]:
    """Object id -> first frame index where it is present, read from the annotation files."""
    first: dict[int, int] = {}
    for t, ann in enumerate(annotations):
        if ann is None:
            continue
        m = read_annotation(ann, encoding)
        counts = np.bincount(m.ravel())
        for obj in np.flatnonzero(counts).tolist():
            if obj == 0 or (encoding == "index" and obj == VOID_LABEL):
                continue
            first.setdefault(int(obj), t)
        if stop_after_first and first:
            break
    return dict(sorted(first.items()))


def _first_frame_objects(annotations: Sequence[Annotation], encoding: str) -> dict[int, int]:
    for t, ann in enumerate(annotations):
        if ann is not None:
            m = read_annotation(ann, encoding)
            ids = [int(i) for i in np.unique(m) if i != 0 and not (encoding == "index" and i == VOID_LABEL)]
            return {i: t for i in ids}
    return {}


def _make_sequence(name: str, frames: list[Path], annotations: list[Annotation], encoding: str,
                   validate: bool, scan_objects: bool, objects: dict[int, int] | None = None) -> VOSSequence:
    check_name(name, "sequence name")  # it names the output folder <out>/<name> and the done marker
    if validate:
        _check_sizes(name, frames, annotations)
    if objects is None:
        if scan_objects:
            objects = _scan_objects(annotations, encoding, stop_after_first=encoding == "binary255")
        else:
            objects = _first_frame_objects(annotations, encoding)
    return VOSSequence(name, tuple(frames), tuple(annotations), objects, encoding)


# ---------------------------------------------------------------------------------------------------
# DAVIS
# ---------------------------------------------------------------------------------------------------
def _resolution_level(root: Path, resolution: str) -> str:
    """``resolution`` (``480p``) if ``JPEGImages/<resolution>`` exists, else ``""`` for copies that keep
    the sequences directly under ``JPEGImages/`` (e.g. a down-scaled training copy)."""
    if (root / "JPEGImages" / resolution).is_dir() or not (root / "JPEGImages").is_dir():
        return resolution
    return ""


def read_davis2016(root: str | os.PathLike, split: str | os.PathLike | Sequence[str] = "val",
                   resolution: str = "480p", *, validate: bool = True,
                   scan_objects: bool = True) -> list[VOSSequence]:
    """DAVIS-2016 sequences (single object, 0/255 masks -> object 1, every frame annotated)."""
    root = _require_dir(Path(root), "DAVIS-2016 root")
    sets = root / "ImageSets"
    spec = _resolve_split(split, [sets / resolution / f"{split}.txt", sets / f"{split}.txt"]
                          if isinstance(split, (str, os.PathLike)) else [], [sets / resolution, sets])
    names = spec if isinstance(spec, list) else _read_list(spec)
    source = "the split list" if isinstance(spec, list) else str(spec)

    # Path-pair lines give the files explicitly; name lines use the folder layout.
    pairs: dict[str, list[tuple[Path, Path]]] = {}
    seq_names: list[str] = []
    for line in names:
        parts = line.split()
        if len(parts) == 2:
            for part in parts:
                if ".." in Path(part).parts:
                    raise InputError(f"{source}: line {line!r} leaves the dataset root ('..'); expected paths "
                                     f"inside {root}")
            img = root / parts[0].lstrip("/")
            ann = root / parts[1].lstrip("/")
            seq = check_name(img.parent.name, "sequence name", source)
            if seq not in pairs:
                pairs[seq] = []
                seq_names.append(seq)
            pairs[seq].append((img, ann))
        elif len(parts) == 1:
            seq_names.append(check_name(parts[0], "sequence name", source))
        else:
            raise InputError(f"{source}: cannot parse line {line!r}; expected a sequence name or "
                             f"'/JPEGImages/<res>/<seq>/<frame>.jpg /Annotations/<res>/<seq>/<frame>.png'")

    out = []
    for seq in seq_names:
        if seq in pairs:
            frames = [img for img, _ in pairs[seq]]
            anns: list[Annotation] = [ann for _, ann in pairs[seq]]
            for img, ann in pairs[seq]:
                if not img.is_file():
                    raise InputError(f"{seq}: frame {img} listed in {source} does not exist")
                if not ann.is_file():
                    raise InputError(f"{seq}: mask {ann} listed in {source} does not exist")
        else:
            res = _resolution_level(root, resolution)
            frame_dir = _require_dir(root / "JPEGImages" / res / seq, f"{seq}: frame folder")
            frames = _list_images(frame_dir, (".jpg",))
            if not frames:
                raise InputError(f"{seq}: no .jpg frames in {frame_dir}")
            mask_dir = _require_dir(root / "Annotations" / res / seq, f"{seq}: annotation folder")
            anns = list(_match_masks(seq, frames, mask_dir, "all"))
        out.append(_make_sequence(seq, frames, anns, "binary255", validate, scan_objects))
    return out


def read_davis2017(root: str | os.PathLike, split: str | os.PathLike | Sequence[str] = "val",
                   resolution: str = "480p", task: str = "semi-supervised", *, validate: bool = True,
                   scan_objects: bool = True) -> list[VOSSequence]:
    """DAVIS-2017 sequences (palette masks, several objects, 255 = void)."""
    root = _require_dir(Path(root), "DAVIS-2017 root")
    unsup = task.startswith("unsup")
    year = "2019" if unsup and split in ("test-dev", "test-challenge") else "2017"
    sets = root / "ImageSets" / year
    spec = _resolve_split(split, [sets / f"{split}.txt"] if isinstance(split, (str, os.PathLike)) else [],
                          [sets])
    names = _checked_names(spec if isinstance(spec, list) else _read_list(spec),
                           "the split list" if isinstance(spec, list) else spec)
    res = _resolution_level(root, resolution)
    ann_root = root / ("Annotations_unsupervised" if unsup else "Annotations") / res
    _require_dir(ann_root, "DAVIS-2017 annotation folder")
    out = []
    for seq in names:
        frame_dir = _require_dir(root / "JPEGImages" / res / seq, f"{seq}: frame folder")
        frames = _list_images(frame_dir, (".jpg",))
        if not frames:
            raise InputError(f"{seq}: no .jpg frames in {frame_dir}")
        mask_dir = _require_dir(ann_root / seq, f"{seq}: annotation folder")
        anns = list(_match_masks(seq, frames, mask_dir, "first"))
        out.append(_make_sequence(seq, frames, anns, "index", validate, scan_objects))
    return out


# ---------------------------------------------------------------------------------------------------
# YouTube-VOS
# ---------------------------------------------------------------------------------------------------
def read_youtube_vos(root: str | os.PathLike, split: str | os.PathLike | Sequence[str] | None = None, *,
                     validate: bool = True) -> list[VOSSequence]:
    """YouTube-VOS videos; objects and their first frames come from ``meta.json``.

    ``root`` is a split folder (holding ``meta.json``, ``JPEGImages``, ``Annotations``) or the dataset
    folder with ``split`` naming the split folder (``"train"``, ``"valid"``). ``split`` may also be a
    list of video ids or a list file; ``None`` = every video of ``meta.json``.
    """
    root = _require_dir(Path(root), "YouTube-VOS root")
    names: list[str] | None = None
    if isinstance(split, (str, os.PathLike)) and (root / split / "meta.json").is_file():
        root = root / split
    elif split is not None:
        spec = _resolve_split(split, [root / f"{split}.txt", root / "ImageSets" / f"{split}.txt"]
                              if isinstance(split, (str, os.PathLike)) else [], [root, root / "ImageSets"])
        names = spec if isinstance(spec, list) else _read_list(spec)
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise InputError(f"YouTube-VOS meta file not found: {meta_path}")
    try:
        videos = json.loads(meta_path.read_text(encoding="utf-8"))["videos"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"cannot read {meta_path}: expected {{'videos': {{...}}}} ({exc})") from None
    if not isinstance(videos, dict):
        raise InputError(f"cannot read {meta_path}: 'videos' must be an object mapping video ids to their objects")
    names = _checked_names(sorted(videos) if names is None else names, meta_path if names is None else "the split")
    out = []
    for vid in names:
        if vid not in videos:
            raise InputError(f"video {vid} is not in {meta_path}")
        frame_dir = _require_dir(root / "JPEGImages" / vid, f"{vid}: frame folder")
        frames = _list_images(frame_dir, (".jpg", ".jpeg", ".png"))
        if not frames:
            raise InputError(f"{vid}: no frames in {frame_dir}")
        anns = list(_match_masks(vid, frames, root / "Annotations" / vid, "none"))
        index = {f.stem: t for t, f in enumerate(frames)}
        objects: dict[int, int] = {}
        for obj_id, info in videos[vid].get("objects", {}).items():
            stems = info.get("frames") or []
            if not stems:
                raise InputError(f"{meta_path}: object {obj_id} of video {vid} lists no frames")
            if stems[0] not in index:
                raise InputError(f"{vid}: object {obj_id} first appears on frame {stems[0]} (meta.json) but "
                                 f"{frame_dir} has no such frame")
            objects[int(obj_id)] = index[stems[0]]
        out.append(_make_sequence(vid, frames, anns, "index", validate, False, dict(sorted(objects.items()))))
    return out


# ---------------------------------------------------------------------------------------------------
# SegTrackV2
# ---------------------------------------------------------------------------------------------------
def _detect_ext(folder: Path, stem: str, what: str) -> str:
    hits = [p.suffix for p in folder.glob(f"{stem}.*") if p.suffix.lower() in _IMAGE_EXTS]
    if not hits:
        raise InputError(f"{what}: no image {folder / stem}.* (png/bmp/jpg)")
    if len(hits) > 1:
        raise InputError(f"{what}: several files {folder / stem}.* ({', '.join(sorted(hits))}); cannot choose")
    return hits[0]


def read_segtrackv2(root: str | os.PathLike, split: str | os.PathLike | Sequence[str] = "all", *,
                    validate: bool = True, scan_objects: bool = True) -> list[VOSSequence]:
    """SegTrackV2 videos (binary per-object masks, possibly in numbered sub-folders)."""
    root = _require_dir(Path(root), "SegTrackV2 root")
    sets = root / "ImageSets"
    spec = _resolve_split(split, [sets / f"{split}.txt"] if isinstance(split, (str, os.PathLike)) else [], [sets])
    names = _checked_names([n.lstrip("*") for n in (spec if isinstance(spec, list) else _read_list(spec))],
                           "the split list" if isinstance(spec, list) else spec)
    out = []
    for vid in names:
        list_file = sets / f"{vid}.txt"
        if not list_file.is_file():
            raise InputError(f"{vid}: frame list {list_file} not found")
        lines = _read_list(list_file)
        if len(lines) < 2:
            raise InputError(f"{list_file}: expected a path prefix line followed by frame names")
        prefix = lines[0].strip("/")
        if ".." in Path(prefix).parts:
            raise InputError(f"{list_file}: path prefix {lines[0]!r} leaves the dataset root ('..')")
        stems = [check_name(n, "frame name", list_file) for n in lines[1:]]
        frame_dir = _require_dir(root / "JPEGImages" / prefix, f"{vid}: frame folder")
        gt_dir = _require_dir(root / "GroundTruth" / prefix, f"{vid}: ground-truth folder")
        subdirs = [d for d in gt_dir.iterdir() if d.is_dir()]
        if subdirs:
            if not all(d.name.isdigit() for d in subdirs):
                raise InputError(f"{vid}: {gt_dir} mixes object folders with other folders; expected 1..K")
            obj_dirs = sorted(subdirs, key=lambda d: int(d.name))
            if [int(d.name) for d in obj_dirs] != list(range(1, len(obj_dirs) + 1)):
                raise InputError(f"{vid}: object folders in {gt_dir} must be numbered 1..K, got "
                                 f"{[d.name for d in obj_dirs]}")
        else:
            obj_dirs = [gt_dir]
        frame_ext = _detect_ext(frame_dir, stems[0], vid)
        mask_exts = [_detect_ext(d, stems[0], vid) for d in obj_dirs]
        frames = [frame_dir / f"{s}{frame_ext}" for s in stems]
        anns: list[Annotation] = []
        for f, s in zip(frames, stems):
            if not f.is_file():
                raise InputError(f"{vid}: frame {f} listed in {list_file} does not exist")
            files = tuple(d / f"{s}{e}" for d, e in zip(obj_dirs, mask_exts))
            for m in files:
                if not m.is_file():
                    raise InputError(f"{vid}: mask {m} for frame {f} does not exist")
            anns.append(files)
        objects = None if scan_objects else {k: 0 for k in range(1, len(obj_dirs) + 1)}
        out.append(_make_sequence(vid, frames, anns, "binary", validate, scan_objects, objects))
    return out


# ---------------------------------------------------------------------------------------------------
# Plain folders
# ---------------------------------------------------------------------------------------------------
def _detect_encoding(annotations: Sequence[Annotation]) -> str:
    """DAVIS-2016-style 0/255 masks if the first annotated frame holds only 0 and 255, else index ids."""
    for ann in annotations:
        if ann is not None:
            values = np.unique(read_index_mask(ann))  # type: ignore[arg-type]
            return "binary255" if VOID_LABEL in values and set(values.tolist()) <= {0, VOID_LABEL} else "index"
    return "index"


def read_folder(root: str | os.PathLike, split: str | os.PathLike | Sequence[str] | None = None, *,
                mask_encoding: str = "auto", require_annotations: bool = True, validate: bool = True,
                scan_objects: bool = True) -> list[VOSSequence]:
    """Sequences of a plain ``JPEGImages/<seq>``, ``Annotations/<seq>`` folder.

    ``split`` = None takes every folder of ``JPEGImages``. ``mask_encoding="auto"`` treats a sequence
    whose first mask holds only 0 and 255 as DAVIS-2016 binary, otherwise as id maps.
    """
    root = _require_dir(Path(root), "dataset root")
    img_root = _require_dir(root / "JPEGImages", "frame folder")
    ann_root = root / "Annotations"
    if split is None:
        names = sorted(d.name for d in img_root.iterdir() if d.is_dir())
        if not names:
            raise InputError(f"no sequence folders in {img_root}")
    else:
        cands = [root / "ImageSets" / f"{split}.txt", root / f"{split}.txt"] \
            if isinstance(split, (str, os.PathLike)) else []
        spec = _resolve_split(split, cands, [root / "ImageSets", root])
        names = _checked_names(spec if isinstance(spec, list) else _read_list(spec),
                               "the split list" if isinstance(spec, list) else spec)
    if require_annotations:
        _require_dir(ann_root, "annotation folder")
    if mask_encoding != "auto" and mask_encoding not in MASK_ENCODINGS[:2]:
        raise ValueError(f"mask_encoding must be 'auto', 'index' or 'binary255', got {mask_encoding!r}")
    out = []
    for seq in names:
        frame_dir = _require_dir(img_root / seq, f"{seq}: frame folder")
        frames = _list_images(frame_dir, _IMAGE_EXTS)
        if not frames:
            raise InputError(f"{seq}: no frames (jpg/jpeg/png/bmp) in {frame_dir}")
        if require_annotations:
            _require_dir(ann_root / seq, f"{seq}: annotation folder")
        anns = list(_match_masks(seq, frames, ann_root / seq, "none"))
        if require_annotations and all(a is None for a in anns):
            raise InputError(f"{seq}: no mask in {ann_root / seq} matches a frame name of {frame_dir}")
        encoding = _detect_encoding(anns) if mask_encoding == "auto" else mask_encoding
        out.append(_make_sequence(seq, frames, anns, encoding, validate, scan_objects))
    return out


DATASET_READERS: dict[str, Callable[..., list[VOSSequence]]] = {
    "davis2016": read_davis2016,
    "davis2017": read_davis2017,
    "youtube-vos": read_youtube_vos,
    "segtrackv2": read_segtrackv2,
    "folder": read_folder,
}
_ALIASES = {"davis16": "davis2016", "davis17": "davis2017", "ytvos": "youtube-vos", "youtubevos": "youtube-vos",
            "youtube_vos": "youtube-vos", "segtrack": "segtrackv2", "segtrack-v2": "segtrackv2", "plain": "folder"}


def read_dataset(kind: str, root: str | os.PathLike, split: str | os.PathLike | Sequence[str] | None = None,
                 **kwargs) -> list[VOSSequence]:
    """Dispatch to the reader of ``kind`` (``davis2016``, ``davis2017``, ``youtube-vos``, ``segtrackv2``,
    ``folder``); ``split=None`` uses the reader's default."""
    key = _ALIASES.get(kind.lower(), kind.lower())
    if key not in DATASET_READERS:
        raise InputError(f"unknown dataset kind {kind!r}; choose one of {', '.join(DATASET_READERS)}")
    reader = DATASET_READERS[key]
    return reader(root, **kwargs) if split is None and key not in ("youtube-vos", "folder") \
        else reader(root, split, **kwargs)
