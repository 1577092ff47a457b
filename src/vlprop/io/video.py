"""Frame sources: a folder of images, a video file (PyAV), or an in-memory array -- streamed one frame at a time.

Every source yields :class:`Frame` records (index, name, RGB uint8 array ``[H, W, 3]``) and knows its
length when that is cheap to know. Problems are reported as :class:`~vlprop.errors.InputError` naming
the file and frame index.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


@dataclass
class Frame:
    index: int
    name: str  # stem used to name outputs (image file stem, or %05d for videos/arrays)
    image: np.ndarray  # [H, W, 3] uint8 RGB


def natural_key(text: str) -> list:
    """Sort key that orders ``frame2`` before ``frame10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def resolve_frame(ref: int | str, names: Sequence[str], arg: tuple[str, str] = ("frame", "frame")) -> int:
    """The index of the frame ``ref`` refers to, among frames named ``names``.

    A frame reference is a frame *name* when one matches, an *index* otherwise; ``name:X`` and
    ``index:N`` force one reading. A string that is both a frame name and the plain spelling of a
    valid index of a *different* frame (frames ``1 2 3``: is ``2`` the second or the third frame?) is
    ambiguous and refused. Zero-padded digits (``0003``) are never read as an index when they name a
    frame, because nobody types an index that way. Ints are always indices.

    ``arg``: the (Python, CLI) name of the argument, for the message (``("masks", "--mask-frame")``).
    """
    T = len(names)
    shown = f"{names[0]!r} ... {names[-1]!r}" if T else "none"

    def index(i: int, text: object) -> int:
        if not 0 <= i < T:
            raise InputError.about(*arg, lambda a: f"{a} {text!r}: no frame {i}, outside the video's {T} frames "
                                                   f"(indices 0..{T - 1}, names {shown})")
        return i

    if isinstance(ref, (int, np.integer)) and not isinstance(ref, bool):
        return index(int(ref), ref)
    if not isinstance(ref, str):
        raise InputError.about(*arg, lambda a: f"{a} {ref!r}: expected a frame index or a frame name")
    text = ref.strip()
    by_name = {n: i for i, n in enumerate(names)}
    if text.startswith("name:"):
        if text[5:] not in by_name:
            raise InputError.about(*arg, lambda a: f"{a} {ref!r}: no frame is named {text[5:]!r} (names {shown})")
        return by_name[text[5:]]
    if text.startswith("index:"):
        if not re.fullmatch(r"\d+", text[6:]):
            raise InputError.about(*arg, lambda a: f"{a} {ref!r}: index:N needs a non-negative integer")
        return index(int(text[6:]), ref)
    as_index = int(text) if re.fullmatch(r"0|[1-9]\d*", text) else None
    if text in by_name:
        i = by_name[text]
        if as_index is not None and as_index != i and as_index < T:
            raise InputError.about(*arg, lambda a: (
                f"{a} {ref!r} is ambiguous: frame {text!r} is index {i}, but index {as_index} is frame "
                f"{names[as_index]!r}; write name:{text} or index:{as_index}"))
        return i
    if as_index is not None:
        return index(as_index, ref)
    raise InputError.about(*arg, lambda a: f"{a} {ref!r} is neither a frame name nor a frame index of this video "
                                           f"({T} frames, names {shown})")


def image_to_rgb(img: Image.Image, where: str = "frame") -> np.ndarray:
    """An image as RGB uint8 ``[H, W, 3]``. 16-bit images are scaled to 8 bits (``>> 8``), not clipped:
    PIL's ``convert("RGB")`` saturates every value above 255, which turns a 16-bit frame white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.int64)
        if arr.min(initial=0) < 0 or arr.max(initial=0) > 65535:
            raise InputError(f"{where}: {img.mode} image with values outside 0..65535; expected 8- or 16-bit frames")
        if img.mode != "I" or arr.max(initial=0) > 255:  # a 32-bit container of 8-bit values stays as it is
            arr = arr >> 8
        grey = arr.astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode == "F":
        raise InputError(f"{where}: floating-point image (mode F); save frames as 8- or 16-bit images")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8)  # writable: torch.from_numpy warns on read-only arrays


class FrameSource:
    """Base class: iterate to get frames in order; ``len()`` is the number of frames."""

    size: tuple[int, int] | None = None  # (H, W) once known

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def names(self) -> list[str]:
        return [f"{i:05d}" for i in range(len(self))]

    def _check_size(self, image: np.ndarray, index: int, where: str) -> None:
        if image.ndim != 3 or image.shape[2] != 3:
            raise InputError(f"{where}: frame {index} has shape {image.shape}, expected [H, W, 3]")
        if self.size is None:
            self.size = image.shape[:2]
        elif image.shape[:2] != tuple(self.size):
            raise InputError(f"{where}: frame {index} is {image.shape[1]}x{image.shape[0]} but earlier frames are "
                             f"{self.size[1]}x{self.size[0]}; all frames of a video must have the same size")


class ImageFolderSource(FrameSource):
    """A folder of images (jpg/png/...), in natural sort order."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.exists():
            raise InputError(f"frame folder not found: {self.folder}")
        self.files = sorted((p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS),
                            key=lambda p: natural_key(p.name))
        if not self.files:
            raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in frame folder {self.folder}")
        self.size = None

    def __len__(self) -> int:
        return len(self.files)

    def names(self) -> list[str]:
        return [p.stem for p in self.files]

    def read(self, index: int) -> np.ndarray:
        path = self.files[index]
        try:
            with Image.open(path) as img:
                img.load()
                return image_to_rgb(img, f"frame {index} ({path})")
        except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
            raise InputError(f"cannot read frame {index} ({path}): {e}") from None

    def __iter__(self) -> Iterator[Frame]:
        for i, path in enumerate(self.files):
            image = self.read(i)
            self._check_size(image, i, str(path))
            yield Frame(i, path.stem, image)


class VideoFileSource(FrameSource):
    """A video file decoded with PyAV, one frame at a time."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"video file not found: {self.path}")
        import av

        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise InputError(f"{self.path} has no video stream")
                stream = container.streams.video[0]
                self._frames = int(stream.frames or 0)
                self.size = (stream.codec_context.height, stream.codec_context.width) if stream.codec_context.height \
                    else None
        except InputError:
            raise
        except Exception as e:  # PyAV raises several error types for unreadable containers
            raise InputError(f"cannot open video {self.path}: {e}") from None
        self._count: int | None = None

    def __len__(self) -> int:
        if self._frames > 0:
            return self._frames
        if self._count is None:  # container without a frame count: decode once to count
            self._count = sum(1 for _ in self._decode())
        return self._count

    def _decode(self) -> Iterator[np.ndarray]:
        import av

        index = -1
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for index, frame in enumerate(container.decode(stream)):
                    yield frame.to_ndarray(format="rgb24")
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"cannot decode frame {index + 1} of video {self.path}: {e}") from None

    def __iter__(self) -> Iterator[Frame]:
        self.size = None
        n = 0
        for i, image in enumerate(self._decode()):
            self._check_size(image, i, str(self.path))
            n += 1
            yield Frame(i, f"{i:05d}", image)
        if n == 0:
            raise InputError(f"video {self.path} contains no decodable frames")
        self._frames = n


class ArraySource(FrameSource):
    """In-memory frames: ``[T, H, W, 3]`` uint8 (or float in [0, 1]), a list of such arrays, or a tensor.

    Tensors ``[T, 3, H, W]`` are accepted too.
    """

    def __init__(self, frames: np.ndarray | torch.Tensor | Sequence[np.ndarray], names: Sequence[str] | None = None):
        if torch.is_tensor(frames):
            frames = frames.detach().cpu()
            if frames.dim() == 4 and frames.shape[1] == 3 and frames.shape[-1] != 3:
                frames = frames.permute(0, 2, 3, 1)
            frames = frames.numpy()
        self.frames = frames
        if len(frames) == 0:
            raise InputError("no frames given (empty array)")
        self._names = list(names) if names is not None else None
        if self._names is not None and len(self._names) != len(frames):
            raise InputError(f"{len(self._names)} names for {len(frames)} frames")
        self.size = None

    def __len__(self) -> int:
        return len(self.frames)

    def names(self) -> list[str]:
        return self._names or super().names()

    def __iter__(self) -> Iterator[Frame]:
        names = self.names()
        for i in range(len(self.frames)):
            img = np.asarray(self.frames[i])
            if img.dtype != np.uint8:
                if np.issubdtype(img.dtype, np.floating):
                    img = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
                else:
                    raise InputError(f"frame {i}: dtype {img.dtype}, expected uint8 or float in [0, 1]")
            if img.ndim == 2:
                img = np.repeat(img[..., None], 3, axis=2)
            self._check_size(img, i, "array input")
            yield Frame(i, names[i], img)


def open_frames(source: str | Path | np.ndarray | torch.Tensor | Sequence | FrameSource) -> FrameSource:
    """Open a folder of images, a video file, or an array as a streaming :class:`FrameSource`."""
    if isinstance(source, FrameSource):
        return source
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise InputError(f"input not found: {path} (expected a folder of images or a video file)")
        if path.is_dir():
            return ImageFolderSource(path)
        if path.suffix.lower() in VIDEO_EXTENSIONS:
            return VideoFileSource(path)
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            raise InputError(f"{path} is a single image; give the folder that holds the frames, or a video file")
        return VideoFileSource(path)  # unknown extension: let PyAV try, with a clear error if it cannot
    return ArraySource(source)
