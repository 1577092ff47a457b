"""Keypoint files: vlprop JSON / CSV (read + atomic write), JHMDB and BADJA readers.

All coordinates are original-frame **pixels, 0-based, x = column, y = row**, pixel centres at
integers (the :mod:`vlprop.geometry` convention).

vlprop JSON (``*.json``)::

    {"format": "vlprop-keypoints", "version": 1,
     "names": ["neck", "belly", ...],            # K keypoint names (unique)
     "skeleton": [[0, 1], [0, 2], ...],          # optional edges between keypoint indices
     "frames": [{"frame": 0,                     # frame index (int) or frame name (str)
                 "keypoints": [[x, y, visible, confidence], ...]},   # K entries, names' order
                ...]}

``visible`` is ``true``/``false`` (or 1/0); ``x``/``y`` may be ``null`` for invisible keypoints;
``confidence`` is optional per entry (default 1). Frames need not be consecutive (sparse
annotations). Unknown top-level keys are ignored.

CSV (``*.csv``): header ``frame,name,x,y,visible,confidence``, one row per (frame, keypoint);
keypoints missing from a frame are invisible. Frame values that are canonical integers are read as
indices, anything else as names. The skeleton is not stored in CSV.

In memory a sequence is a :class:`KeypointSequence` (``xy [T, K, 2]``, ``visible [T, K]``,
``confidence [T, K]``). The reference evaluation layout ``[2, K, T]`` with negative coordinates
for invisible keypoints (CRW / Waldmann ``.dat`` / ``.npy`` files) is available through
:meth:`KeypointSequence.to_reference_array` / :meth:`KeypointSequence.from_reference_array`.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from vlprop.errors import InputError
from vlprop.io.files import atomic_write_text

FORMAT_NAME = "vlprop-keypoints"
FORMAT_VERSION = 1
CSV_HEADER = ("frame", "name", "x", "y", "visible", "confidence")

#: JHMDB joint order (``pos_img[:, j]``), 0-based.
JHMDB_JOINTS = (
    "neck", "belly", "face", "right_shoulder", "left_shoulder", "right_hip", "left_hip",
    "right_elbow", "left_elbow", "right_knee", "left_knee", "right_wrist", "left_wrist",
    "right_ankle", "left_ankle",
)
#: JHMDB skeleton (the parent links used by the CRW/UVC visualisation), 0-based joint indices.
JHMDB_SKELETON = (
    (0, 1), (0, 2), (0, 3), (0, 4), (1, 5), (1, 6), (3, 7), (4, 8),
    (5, 9), (6, 10), (7, 11), (8, 12), (9, 13), (10, 14),
)
#: The 21 JHMDB action classes in the order Waldmann's evaluation iterates them (fixes video order).
JHMDB_ACTIONS = (
    "swing_baseball", "pour", "pullup", "stand", "golf", "jump", "kick_ball", "pick", "sit", "walk",
    "shoot_ball", "catch", "wave", "throw", "shoot_bow", "climb_stairs", "clap", "brush_hair", "run",
    "shoot_gun", "push",
)
JHMDB_FRAME_SIZE = (320, 240)   # (width, height)
BADJA_SOURCE_SIZE = (1920, 1080)  # (width, height) the BADJA annotations are declared in

FrameId = int | str


# ------------------------------------------------------------------ in memory


@dataclass
class KeypointSequence:
    """Keypoints of ``K`` named points on ``T`` frames (frames may be sparse, e.g. annotations).

    ``xy``: ``[T, K, 2]`` float64 pixels (NaN allowed where invisible); ``visible``: ``[T, K]``
    bool; ``confidence``: ``[T, K]`` float64; ``frames``: ``T`` frame ids (index or name);
    ``skeleton``: edges ``(i, j)`` between keypoint indices.
    """

    names: list[str]
    frames: list[FrameId]
    xy: np.ndarray
    visible: np.ndarray
    confidence: np.ndarray = None  # type: ignore[assignment]
    skeleton: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.names = [str(n) for n in self.names]
        self.frames = list(self.frames)
        self.xy = np.asarray(self.xy, dtype=np.float64)
        T, K = len(self.frames), len(self.names)
        if self.xy.shape != (T, K, 2):
            raise InputError(f"keypoint coordinates must have shape [T={T}, K={K}, 2], got {self.xy.shape}")
        self.visible = np.asarray(self.visible, dtype=bool)
        if self.visible.shape != (T, K):
            raise InputError(f"keypoint visibility must have shape [T={T}, K={K}], got {self.visible.shape}")
        if self.confidence is None:
            self.confidence = self.visible.astype(np.float64)
        self.confidence = np.asarray(self.confidence, dtype=np.float64)
        if self.confidence.shape != (T, K):
            raise InputError(f"keypoint confidence must have shape [T={T}, K={K}], got {self.confidence.shape}")
        if len(set(self.names)) != K:
            raise InputError(f"keypoint names must be unique, got {self.names}")
        if len(set(self.frames)) != T:
            raise InputError("frame ids must be unique within a keypoint sequence")
        self.skeleton = [(int(a), int(b)) for a, b in self.skeleton]
        for a, b in self.skeleton:
            if not (0 <= a < K and 0 <= b < K):
                raise InputError(f"skeleton edge ({a}, {b}) refers to a keypoint outside 0..{K - 1}")
        if (self.visible & ~np.isfinite(self.xy).all(axis=2)).any():
            t, k = np.argwhere(self.visible & ~np.isfinite(self.xy).all(axis=2))[0]
            raise InputError(f"keypoint {self.names[k]!r} on frame {self.frames[t]!r} is visible but has "
                             f"no finite coordinates")

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    def index_of(self, frame: FrameId) -> int:
        """Position of ``frame`` in :attr:`frames` (InputError when absent)."""
        try:
            return self.frames.index(frame)
        except ValueError:
            raise InputError(f"frame {frame!r} has no keypoints in this sequence") from None

    def at(self, frame: FrameId) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(xy [K, 2], visible [K], confidence [K])`` of one frame."""
        t = self.index_of(frame)
        return self.xy[t], self.visible[t], self.confidence[t]

    def to_reference_array(self) -> np.ndarray:
        """``[2, K, T]`` (x row 0, y row 1) with ``-1`` for invisible keypoints (CRW/Waldmann layout)."""
        out = np.transpose(self.xy, (2, 1, 0)).copy()
        out[:, ~self.visible.T] = -1.0
        return out

    @classmethod
    def from_reference_array(cls, array, names: Sequence[str] | None = None,
                             frames: Sequence[FrameId] | None = None,
                             skeleton: Sequence[tuple[int, int]] = ()) -> "KeypointSequence":
        """From ``[2, K, T]``; keypoints with a negative x are invisible (reference convention)."""
        a = np.asarray(array, dtype=np.float64)
        if a.ndim != 3 or a.shape[0] != 2:
            raise InputError(f"reference keypoint array must have shape [2, K, T], got {a.shape}")
        K, T = a.shape[1], a.shape[2]
        xy = np.transpose(a, (2, 1, 0)).copy()
        visible = (xy[..., 0] >= 0) & np.isfinite(xy).all(axis=2)
        xy[~visible] = np.nan
        return cls(list(names) if names is not None else [f"joint_{k}" for k in range(K)],
                   list(frames) if frames is not None else list(range(T)), xy, visible,
                   visible.astype(np.float64), list(skeleton))


# ---------------------------------------------------------------- vlprop JSON


def _num(v: float) -> float | None:
    v = float(v)
    return None if not math.isfinite(v) else v


def keypoints_to_json(seq: KeypointSequence) -> str:
    """Serialise ``seq`` to the vlprop JSON text (see module docstring)."""
    frames = []
    for t, frame in enumerate(seq.frames):
        kps = [[_num(seq.xy[t, k, 0]), _num(seq.xy[t, k, 1]), bool(seq.visible[t, k]),
                _num(seq.confidence[t, k])] for k in range(seq.num_keypoints)]
        frames.append({"frame": frame if isinstance(frame, str) else int(frame), "keypoints": kps})
    doc = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "names": seq.names,
           "skeleton": [list(e) for e in seq.skeleton], "frames": frames}
    return json.dumps(doc, indent=1) + "\n"


def write_keypoints_json(path: str | os.PathLike, seq: KeypointSequence) -> None:
    """Write ``seq`` as vlprop JSON, atomically."""
    atomic_write_text(path, keypoints_to_json(seq))


def _bool(v, where: str) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return v.strip().lower() in ("true", "1", "yes")
    raise InputError(f"{where}: visibility must be true/false or 1/0, got {v!r}")


def _coord(v, where: str) -> float:
    if v is None:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InputError(f"{where}: coordinate must be a number or null, got {v!r}")
    return float(v)


def parse_keypoints_json(text: str, source: str = "<string>") -> KeypointSequence:
    """Parse vlprop JSON text; ``source`` names the file in error messages."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{source}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise InputError(f"{source}: not a vlprop keypoint file (expected \"format\": \"{FORMAT_NAME}\")")
    if doc.get("version") != FORMAT_VERSION:
        raise InputError(f"{source}: unsupported vlprop-keypoints version {doc.get('version')!r} "
                         f"(this reader understands version {FORMAT_VERSION})")
    names = doc.get("names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InputError(f"{source}: \"names\" must be a list of strings")
    K = len(names)
    skeleton = doc.get("skeleton", [])
    if not isinstance(skeleton, list) or not all(
            isinstance(e, list) and len(e) == 2 and all(isinstance(i, int) and not isinstance(i, bool) for i in e)
            for e in skeleton):
        raise InputError(f"{source}: \"skeleton\" must be a list of [i, j] index pairs")
    frames_doc = doc.get("frames")
    if not isinstance(frames_doc, list):
        raise InputError(f"{source}: \"frames\" must be a list")
    frames, xy, vis, conf = [], np.full((len(frames_doc), K, 2), np.nan), np.zeros((len(frames_doc), K), bool), \
        np.zeros((len(frames_doc), K))
    for t, fr in enumerate(frames_doc):
        if not isinstance(fr, dict) or "frame" not in fr or "keypoints" not in fr:
            raise InputError(f"{source}: frames[{t}] must be an object with \"frame\" and \"keypoints\"")
        fid = fr["frame"]
        if isinstance(fid, bool) or not isinstance(fid, (int, str)):
            raise InputError(f"{source}: frames[{t}].frame must be an integer index or a name, got {fid!r}")
        frames.append(fid)
        kps = fr["keypoints"]
        if not isinstance(kps, list) or len(kps) != K:
            raise InputError(f"{source}: frame {fid!r} has {len(kps) if isinstance(kps, list) else 'no'} "
                             f"keypoints, expected {K} (one per name)")
        for k, kp in enumerate(kps):
            where = f"{source}: frame {fid!r}, keypoint {names[k]!r}"
            if not isinstance(kp, list) or len(kp) not in (3, 4):
                raise InputError(f"{where}: expected [x, y, visible] or [x, y, visible, confidence], got {kp!r}")
            xy[t, k] = _coord(kp[0], where), _coord(kp[1], where)
            vis[t, k] = _bool(kp[2], where)
            c = _coord(kp[3], where) if len(kp) == 4 else 1.0
            conf[t, k] = 0.0 if math.isnan(c) else c
            if vis[t, k] and not np.isfinite(xy[t, k]).all():
                raise InputError(f"{where}: visible keypoint needs finite x and y")
    if len(set(frames)) != len(frames):
        raise InputError(f"{source}: a frame appears more than once")
    try:
        return KeypointSequence(names, frames, xy, vis, conf, [tuple(e) for e in skeleton])
    except InputError as e:
        raise InputError(f"{source}: {e}") from None


def read_keypoints_json(path: str | os.PathLike) -> KeypointSequence:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read keypoint file {path}: {e.strerror or e}") from None
    return parse_keypoints_json(text, str(path))


# ------------------------------------------------------------------------ CSV


def _fmt(v: float) -> str:
    return "" if not math.isfinite(v) else repr(float(v))


def keypoints_to_csv(seq: KeypointSequence) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_HEADER)
    for t, frame in enumerate(seq.frames):
        for k, name in enumerate(seq.names):
            w.writerow([frame, name, _fmt(seq.xy[t, k, 0]), _fmt(seq.xy[t, k, 1]),
                        int(bool(seq.visible[t, k])), _fmt(seq.confidence[t, k])])
    return buf.getvalue()


def write_keypoints_csv(path: str | os.PathLike, seq: KeypointSequence) -> None:
    """Write ``seq`` as CSV (``frame,name,x,y,visible,confidence``), atomically."""
    atomic_write_text(path, keypoints_to_csv(seq))


def _frame_id(s: str) -> FrameId:
    s = s.strip()
    if re.fullmatch(r"-?[1-9]\d*|0", s):
        return int(s)
    return s


def parse_keypoints_csv(text: str, source: str = "<string>", names: Sequence[str] | None = None,
                        skeleton: Sequence[tuple[int, int]] = ()) -> KeypointSequence:
    """Parse keypoint CSV text. Name/frame order = first appearance unless ``names`` is given."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or tuple(c.strip().lower() for c in rows[0]) != CSV_HEADER:
        raise InputError(f"{source}: keypoint CSV must start with the header {','.join(CSV_HEADER)}")
    name_list = list(names) if names is not None else []
    frames: list[FrameId] = []
    entries: dict[tuple[FrameId, str], tuple[float, float, bool, float]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(CSV_HEADER):
            raise InputError(f"{source}, line {line}: expected {len(CSV_HEADER)} columns "
                             f"({','.join(CSV_HEADER)}), got {len(row)}")
        fid, name = _frame_id(row[0]), row[1].strip()
        where = f"{source}, line {line}"
        try:
            x = float(row[2]) if row[2].strip() else math.nan
            y = float(row[3]) if row[3].strip() else math.nan
            c = float(row[5]) if row[5].strip() else 1.0
        except ValueError:
            raise InputError(f"{where}: x, y and confidence must be numbers, got {row[2:4] + row[5:6]}") from None
        v = _bool(row[4].strip(), where)
        if v and not (math.isfinite(x) and math.isfinite(y)):
            raise InputError(f"{where}: visible keypoint needs finite x and y")
        if (fid, name) in entries:
            raise InputError(f"{where}: keypoint {name!r} on frame {fid!r} appears twice")
        if name not in name_list:
            if names is not None:
                raise InputError(f"{where}: unknown keypoint name {name!r} (expected one of {name_list})")
            name_list.append(name)
        if fid not in frames:
            frames.append(fid)
        entries[(fid, name)] = (x, y, v, c)
    T, K = len(frames), len(name_list)
    xy = np.full((T, K, 2), np.nan)
    vis = np.zeros((T, K), bool)
    conf = np.zeros((T, K))
    fidx = {f: t for t, f in enumerate(frames)}
    kidx = {n: k for k, n in enumerate(name_list)}
    for (fid, name), (x, y, v, c) in entries.items():
        t, k = fidx[fid], kidx[name]
        xy[t, k] = x, y
        vis[t, k], conf[t, k] = v, c
    return KeypointSequence(name_list, frames, xy, vis, conf, list(skeleton))


def read_keypoints_csv(path: str | os.PathLike, names: Sequence[str] | None = None,
                       skeleton: Sequence[tuple[int, int]] = ()) -> KeypointSequence:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read keypoint file {path}: {e.strerror or e}") from None
    return parse_keypoints_csv(text, str(path), names, skeleton)


def read_keypoints(path: str | os.PathLike) -> KeypointSequence:
    """Read vlprop JSON (``.json``) or CSV (``.csv``) keypoints."""
    suffix = Path(path).suffix.lower()
    if suffix == ".json":
        return read_keypoints_json(path)
    if suffix == ".csv":
        return read_keypoints_csv(path)
    raise InputError(f"{path}: unknown keypoint file type {suffix!r} (expected .json or .csv)")


def write_keypoints(path: str | os.PathLike, seq: KeypointSequence) -> None:
    """Write vlprop JSON (``.json``) or CSV (``.csv``) keypoints, atomically."""
    suffix = Path(path).suffix.lower()
    if suffix == ".json":
        write_keypoints_json(path, seq)
    elif suffix == ".csv":
        write_keypoints_csv(path, seq)
    else:
        raise InputError(f"{path}: unknown keypoint file type {suffix!r} (expected .json or .csv)")


# ---------------------------------------------------------------------- JHMDB


def read_jhmdb_joints(path: str | os.PathLike) -> np.ndarray:
    """``joint_positions.mat['pos_img']`` as ``[2, 15, T]`` float64, **0-based** pixels (x row 0).

    JHMDB stores MATLAB 1-based pixel coordinates; 1 is subtracted (as CRW and Waldmann do).
    Joints may lie outside the 320x240 frame; JHMDB has no per-joint visibility.
    """
    from scipy.io import loadmat

    path = Path(path)
    try:
        mat = loadmat(str(path))
    except (OSError, ValueError, TypeError) as e:
        raise InputError(f"cannot read JHMDB joint file {path}: {e}") from None
    if "pos_img" not in mat:
        raise InputError(f"{path}: no 'pos_img' field (is this a JHMDB joint_positions.mat?)")
    pos = np.asarray(mat["pos_img"], dtype=np.float64)
    if pos.ndim != 3 or pos.shape[:2] != (2, len(JHMDB_JOINTS)):
        raise InputError(f"{path}: 'pos_img' has shape {pos.shape}, expected [2, 15, T]")
    return pos - 1.0


def read_jhmdb_keypoints(path: str | os.PathLike, num_frames: int | None = None) -> KeypointSequence:
    """JHMDB joints as a :class:`KeypointSequence` (frames ``0..T-1``, all joints visible).

    ``num_frames``: keep only the first ``num_frames`` annotated frames (InputError if fewer).
    """
    pos = read_jhmdb_joints(path)
    T = pos.shape[2]
    if num_frames is not None:
        if num_frames > T:
            raise InputError(f"{path}: {T} annotated frames, but {num_frames} were requested")
        T = num_frames
        pos = pos[:, :, :T]
    xy = np.transpose(pos, (2, 1, 0))
    vis = np.ones((T, len(JHMDB_JOINTS)), bool)
    return KeypointSequence(list(JHMDB_JOINTS), list(range(T)), xy, vis, vis.astype(np.float64),
                            list(JHMDB_SKELETON))


@dataclass(frozen=True)
class JhmdbVideo:
    """One JHMDB video: its frame files (``Rename_Images``) and joints (``joint_positions``)."""

    action: str
    name: str
    frame_paths: tuple[Path, ...]
    joints_path: Path

    def keypoints(self) -> KeypointSequence:
        """Joints for the video's frames (``len(frame_paths)`` frames)."""
        return read_jhmdb_keypoints(self.joints_path, len(self.frame_paths))


def jhmdb_video(root: str | os.PathLike, action: str, name: str) -> JhmdbVideo:
    """Locate a JHMDB video under ``root`` (``Rename_Images/<action>/<name>/%05d.png`` + joints).

    The video length is the number of annotated frames; extra images (two JHMDB videos have
    them) are ignored, fewer images than annotations is an error.
    """
    root = Path(root)
    frame_dir = root / "Rename_Images" / action / name
    joints = root / "joint_positions" / action / name / "joint_positions.mat"
    if not frame_dir.is_dir():
        raise InputError(f"JHMDB frame folder not found: {frame_dir}")
    if not joints.is_file():
        raise InputError(f"JHMDB joint file not found: {joints}")
    frames = sorted(p for p in frame_dir.iterdir() if re.fullmatch(r"\d{5}\.png", p.name))
    T = read_jhmdb_joints(joints).shape[2]
    if len(frames) < T:
        raise InputError(f"{frame_dir}: {len(frames)} frames but {joints} annotates {T}")
    return JhmdbVideo(action, name, tuple(frames[:T]), joints)


def read_jhmdb_split(path: str | os.PathLike) -> dict[str, list[str]]:
    """Parse ``<action>_test_split<k>.txt`` (lines ``"<video>.avi 1|2"``; 1 = train, 2 = test).

    Returns ``{"train": [...], "test": [...]}`` with video names without ``.avi``, in file order.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise InputError(f"cannot read JHMDB split file {path}: {e.strerror or e}") from None
    out: dict[str, list[str]] = {"train": [], "test": []}
    for n, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("1", "2"):
            raise InputError(f"{path}, line {n}: expected \"<video>.avi 1|2\", got {line.strip()!r}")
        video = parts[0][:-4] if parts[0].lower().endswith(".avi") else parts[0]
        out["train" if parts[1] == "1" else "test"].append(video)
    return out


def jhmdb_split_videos(root: str | os.PathLike, split: int = 1, subset: str = "test",
                       actions: Sequence[str] = JHMDB_ACTIONS) -> list[tuple[str, str]]:
    """``(action, video)`` pairs of a JHMDB split (files ``<root>/splits/<action>_test_split<k>.txt``).

    ``split`` in 1..3, ``subset`` ``"train"`` or ``"test"``; order = ``actions`` then file order
    (split-1 test has 268 videos).
    """
    if split not in (1, 2, 3):
        raise InputError(f"JHMDB split must be 1, 2 or 3, got {split}")
    if subset not in ("train", "test"):
        raise InputError(f"JHMDB subset must be 'train' or 'test', got {subset!r}")
    root = Path(root)
    out = []
    for action in actions:
        out += [(action, v) for v in read_jhmdb_split(root / "splits" / f"{action}_test_split{split}.txt")[subset]]
    return out


# ---------------------------------------------------------------------- BADJA


@dataclass(frozen=True)
class BadjaAnnotations:
    """BADJA annotations of one video: ``keypoints`` on the annotated frames only.

    ``keypoints.frames`` are frame numbers parsed from the image file names (relative to the first
    annotated frame when read with ``clip_to_first_annotation``); ``image_paths`` align with them.
    """

    keypoints: KeypointSequence
    image_paths: tuple[Path, ...]
    segmentation_paths: tuple[Path, ...]
    frame_size: tuple[int, int]  # (width, height) the coordinates refer to
    first_frame: int             # frame number of the first annotation in the file names


def rescale_points(xy, src_size: tuple[int, int], dst_size: tuple[int, int]) -> np.ndarray:
    """Map pixel (x, y) ``[..., 2]`` between frame sizes ``(W, H)`` (pixel-centre convention)."""
    xy = np.asarray(xy, dtype=np.float64)
    s = np.array([dst_size[0] / src_size[0], dst_size[1] / src_size[1]])
    return (xy + 0.5) * s - 0.5


def _frame_number(p: str, where: str) -> int:
    stem = Path(p).stem
    m = re.search(r"(\d+)$", stem)
    if not m:
        raise InputError(f"{where}: cannot read a frame number from {p!r}")
    return int(m.group(1))


def read_badja(path: str | os.PathLike, root: str | os.PathLike | None = None, *,
               source_size: tuple[int, int] = BADJA_SOURCE_SIZE,
               frame_size: tuple[int, int] | None = None, clip_to_first_annotation: bool = True,
               drop_joints_invisible_in_first: bool = False,
               names: Sequence[str] | None = None) -> BadjaAnnotations:
    """Read a BADJA ``joint_annotations/<video>.json``.

    The file is a list of ``{"image_path", "segmentation_path", "joints": [[row, col], ...],
    "visibility": [...]}`` entries for the annotated frames only. Coordinates are declared in a
    ``source_size`` (W, H) frame (1920x1080 for BADJA) and rescaled to ``frame_size``; when
    ``frame_size`` is None it is read from the first annotated image (``root / image_path``,
    ``root`` defaulting to the folder above ``joint_annotations``). ``drop_joints_invisible_in_first``
    reproduces Waldmann's reader (joints invisible in the first annotation are removed).
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(f"cannot read BADJA annotation file {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, list) or not doc:
        raise InputError(f"{path}: expected a non-empty JSON list of BADJA frame annotations")
    root = Path(root) if root is not None else path.resolve().parent.parent
    entries = []
    K = None
    for i, e in enumerate(doc):
        where = f"{path}, entry {i}"
        if not isinstance(e, dict) or not {"image_path", "joints", "visibility"} <= set(e):
            raise InputError(f"{where}: expected keys image_path, segmentation_path, joints, visibility")
        try:
            joints = np.asarray(e["joints"], dtype=np.float64)
            vis = np.asarray([_bool(v, where) for v in e["visibility"]], dtype=bool)
        except (TypeError, ValueError):
            raise InputError(f"{where}: joints must be [[row, col], ...] numbers") from None
        if joints.ndim != 2 or joints.shape[1] != 2:
            raise InputError(f"{where}: joints must have shape [K, 2] ([row, col]), got {joints.shape}")
        if K is None:
            K = len(joints)
        if len(joints) != K or len(vis) != K:
            raise InputError(f"{where}: {len(joints)} joints / {len(vis)} visibility flags, expected {K}")
        entries.append((_frame_number(e["image_path"], where), e["image_path"],
                        e.get("segmentation_path", ""), joints[:, ::-1].copy(), vis))
    entries.sort(key=lambda x: x[0])
    numbers = [x[0] for x in entries]
    if len(set(numbers)) != len(numbers):
        raise InputError(f"{path}: a frame is annotated more than once")
    if frame_size is None:
        first_image = root / entries[0][1]
        try:
            from PIL import Image

            with Image.open(first_image) as im:
                frame_size = im.size
        except OSError:
            raise InputError(f"{path}: cannot open {first_image} to get the frame size; pass frame_size=(W, H) "
                             f"or the dataset root") from None
    keep = np.ones(K, bool)
    if drop_joints_invisible_in_first:
        keep = entries[0][4].copy()
    xy = np.stack([rescale_points(x[3], source_size, frame_size) for x in entries])[:, keep]
    vis = np.stack([x[4] for x in entries])[:, keep]
    first = numbers[0]
    frames = [n - first for n in numbers] if clip_to_first_annotation else numbers
    if names is None:
        names = [f"joint_{k}" for k in np.flatnonzero(keep)]
    elif len(names) != int(keep.sum()):
        raise InputError(f"{path}: {len(names)} names given for {int(keep.sum())} joints")
    seq = KeypointSequence(list(names), frames, xy, vis, vis.astype(np.float64))
    return BadjaAnnotations(seq, tuple(root / x[1] for x in entries),
                            tuple(root / x[2] if x[2] else Path() for x in entries),
                            (int(frame_size[0]), int(frame_size[1])), first)
