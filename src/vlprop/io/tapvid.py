"""TAP-Vid point-tracking datasets (the pickles of google-deepmind/tapnet), read without running any code.

Layout (``tapnet/tapvid`` README and ``evaluation_datasets.py``): a pickle holding either

* a dict ``{video_name: video}`` (TAP-Vid-DAVIS ``tapvid_davis.pkl``), or
* a list of videos (TAP-Vid-Kinetics shards ``*_of_0010.pkl``, RGB-Stacking; a dict of such is read by its
  values too),

where each video is a dict with ``video``: ``[T, H, W, 3]`` uint8 frames (Kinetics: a list of ``T`` JPEG
byte strings), ``points``: ``[N, T, 2]`` float positions normalised to [0, 1] as **(x, y)** (pixel =
``normalised * size``, raster convention), ``occluded``: ``[N, T]`` bool (True = occluded).

Pickles can run arbitrary code when loaded; :func:`safe_load_pickle` only admits plain containers (dict,
list, tuple, str, bytes, numbers) and numpy arrays / scalars / dtypes, and refuses anything else with an
:class:`~vlprop.errors.InputError` naming the file and the refused global.
"""
from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError

# the callables numpy's own pickles refer to, taken from numpy itself (their module paths moved in numpy 2)
_NP_RECONSTRUCT = np.zeros(1).__reduce__()[0]           # multiarray._reconstruct
_NP_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]        # numeric._frombuffer (protocol 5)
_NP_SCALAR = np.float32(0).__reduce__()[0]              # multiarray.scalar


def _allowed_globals() -> dict[tuple[str, str], Any]:
    import codecs

    out: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                       ("_codecs", "encode"): codecs.encode}   # protocol-2 bytes
    for core in ("numpy.core", "numpy._core"):
        out[(f"{core}.multiarray", "_reconstruct")] = _NP_RECONSTRUCT
        out[(f"{core}.multiarray", "scalar")] = _NP_SCALAR
        out[(f"{core}.numeric", "_frombuffer")] = _NP_FROMBUFFER
    return out


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file)
        self._source = source
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise InputError(f"{self._source}: refusing to load {module}.{name} from the pickle (only numpy "
                             f"arrays, dicts, lists, strings, bytes and numbers are allowed)") from None

    def persistent_load(self, pid: Any) -> Any:
        raise InputError(f"{self._source}: refusing a persistent object reference in the pickle")


def safe_load_pickle(path: str | os.PathLike) -> Any:
    """Load a pickle that may only contain plain containers and numpy arrays (never arbitrary objects)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return _SafeUnpickler(io.BytesIO(data), str(path)).load()
    except InputError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise InputError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None


class _JpegFrames(Sequence):
    """Frames stored as JPEG/PNG byte strings, decoded on access (``[H, W, 3]`` uint8 RGB)."""

    def __init__(self, blobs: Sequence[bytes], source: str):
        self.blobs = list(blobs)
        self.source = source

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(self.blobs[i])) as im:
                return np.asarray(im.convert("RGB"), dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as e:
            raise InputError(f"{self.source}: frame {i} is not a decodable image ({e})") from None


@dataclass
class TapVidVideo:
    """One TAP-Vid video: ``frames`` ``[T, H, W, 3]`` uint8 (an array or a lazily decoded sequence),
    ``points`` ``[N, T, 2]`` float64 normalised (x, y) in [0, 1], ``occluded`` ``[N, T]`` bool."""

    name: str
    frames: Any
    points: np.ndarray
    occluded: np.ndarray

    @property
    def num_frames(self) -> int:
        return int(self.points.shape[1])

    @property
    def num_points(self) -> int:
        return int(self.points.shape[0])

    def frame_size(self) -> tuple[int, int]:
        """``(W, H)`` of the stored frames."""
        h, w = np.asarray(self.frames[0]).shape[:2]
        return int(w), int(h)

    def pixel_points(self, size: tuple[int, int] | None = None) -> np.ndarray:
        """``[N, T, 2]`` positions in vlprop pixels (centres at integers) of a ``size`` ``(W, H)`` frame
        (default: the stored frames): ``x = normalised * W - 0.5``."""
        w, h = size if size is not None else self.frame_size()
        return self.points * np.array([w, h], dtype=np.float64) - 0.5


def _video(entry: Any, name: str, source: str) -> TapVidVideo:
    where = f"{source}, video {name!r}"
    if not isinstance(entry, dict) or not {"video", "points", "occluded"} <= set(entry):
        got = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise InputError(f"{where}: expected a dict with 'video', 'points' and 'occluded', got {got}")
    frames = entry["video"]
    if isinstance(frames, (list, tuple, np.ndarray)) and len(frames) and isinstance(frames[0], (bytes, bytearray)):
        frames = _JpegFrames(frames, where)     # a list (or object array) of encoded frames
    else:
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise InputError(f"{where}: 'video' must be [T, H, W, 3] uint8 frames (or JPEG bytes), got "
                             f"{frames.dtype} {frames.shape}")
    try:
        points = np.asarray(entry["points"], dtype=np.float64)
        occluded = np.asarray(entry["occluded"]).astype(bool)
    except (TypeError, ValueError):
        raise InputError(f"{where}: 'points' and 'occluded' must be numeric arrays") from None
    if points.ndim != 3 or points.shape[2] != 2:
        raise InputError(f"{where}: 'points' must have shape [N, T, 2] (normalised x, y), got {points.shape}")
    if occluded.shape != points.shape[:2]:
        raise InputError(f"{where}: 'occluded' has shape {occluded.shape}, expected {points.shape[:2]}")
    if len(frames) != points.shape[1]:
        raise InputError(f"{where}: {len(frames)} frames but the tracks have {points.shape[1]} frames")
    if (~occluded & ~np.isfinite(points).all(axis=2)).any():
        raise InputError(f"{where}: a visible point has non-finite coordinates")
    return TapVidVideo(str(name), frames, points, occluded)


def read_tapvid(path: str | os.PathLike, names: Sequence[str] | None = None) -> list[TapVidVideo]:
    """Videos of a TAP-Vid pickle, or of every ``*.pkl`` in a folder (Kinetics shards), in file order.

    Dict pickles keep their keys as names (sorted); list pickles name videos ``<file stem>/<index>``.
    ``names`` keeps only those videos (InputError for an unknown one).
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.pkl"))
        if not files:
            raise InputError(f"no TAP-Vid pickle (*.pkl) in {path}")
    elif path.is_file():
        files = [path]
    else:
        raise InputError(f"TAP-Vid dataset not found: {path} (expected a .pkl file or a folder of them)")
    videos: list[TapVidVideo] = []
    for f in files:
        data = safe_load_pickle(f)
        if isinstance(data, dict) and data and all(isinstance(v, dict) and "video" in v for v in data.values()):
            items = [(str(k), data[k]) for k in sorted(data, key=str)]
        elif isinstance(data, (list, tuple)):
            items = [(f"{f.stem}/{i:04d}", v) for i, v in enumerate(data)]
        else:
            raise InputError(f"{f}: expected a dict of videos or a list of videos (TAP-Vid layout), got "
                             f"{type(data).__name__}")
        videos += [_video(v, n, str(f)) for n, v in items]
    if not videos:
        raise InputError(f"{path}: the TAP-Vid dataset holds no video")
    if names is not None:
        by_name = {v.name: v for v in videos}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise InputError(f"{path}: no video named {missing[0]!r} (have {', '.join(list(by_name)[:5])} ...)")
        videos = [by_name[n] for n in names]
    return videos
