"""Video writing (PyAV) for overlays: frames are streamed in, the file appears atomically when closed."""
from __future__ import annotations

import contextlib
import math
import os
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..errors import InputError
from .files import _umask

# container suffix -> codec (H.264 where the container takes it; MPEG-4 part 2 for AVI; GIF)
VIDEO_SUFFIXES = {".mp4": "libx264", ".mkv": "libx264", ".mov": "libx264", ".avi": "mpeg4", ".gif": "gif"}
MAX_FPS = 1000.0


def check_video_path(path: str | Path, arg: tuple[str, str] = ("path", "--overlay")) -> Path:
    """Raise :class:`InputError` unless ``path`` has a suffix :class:`VideoWriter` can write and is not a
    folder; ``arg`` is the argument's (Python, CLI) name for the message."""
    p = Path(path)
    if p.is_dir():
        raise InputError.about(*arg, lambda a: f"{a} {p} is a folder; give a video file name such as "
                                               f"{p / 'overlay.mp4'}")
    if p.suffix.lower() not in VIDEO_SUFFIXES:
        raise InputError.about(*arg, lambda a: f"{a} {p}: cannot write a video with suffix {p.suffix or '(none)'!r}; "
                                               f"use one of {', '.join(VIDEO_SUFFIXES)}")
    return p


def check_fps(fps: float, arg: tuple[str, str] = ("fps", "--fps")) -> Fraction:
    """The frame rate as an exact fraction (29.97 stays 2997/100); :class:`InputError` unless 0 < fps <= 1000."""
    try:
        value = float(fps)
    except (TypeError, ValueError):
        value = float("nan")
    if not (math.isfinite(value) and 0 < value <= MAX_FPS):
        raise InputError.about(*arg, lambda a: f"{a} must be a frame rate in (0, {MAX_FPS:g}] frames per second, "
                                               f"got {fps!r}")
    return Fraction(value).limit_denominator(1001)


class VideoWriter:
    """Write RGB uint8 frames ``[H, W, 3]`` to an MP4 (H.264), GIF or other container PyAV supports.

    The output is written to a temporary file next to ``path`` and renamed on :meth:`close`, so an
    interrupted run never leaves a truncated video under the final name. Use as a context manager.
    """

    def __init__(self, path: str | Path, fps: float = 24.0):
        # checked now, not after the whole propagation: a bad suffix or rate must fail before any work
        self.path = check_video_path(path)
        self.rate = check_fps(fps)
        self.fps = fps
        self._container = None
        self._stream = None
        self._tmp: Path | None = None

    def _open(self, h: int, w: int) -> None:
        import av

        self.path.parent.mkdir(parents=True, exist_ok=True)
        suffix = self.path.suffix.lower()
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=suffix, dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)  # from here on abort() removes it, whatever fails next
        self._container = av.open(str(self._tmp), mode="w")
        codec = VIDEO_SUFFIXES[suffix]
        if codec == "gif":
            self._stream = self._container.add_stream("gif", rate=self.rate)
            self._stream.pix_fmt = "rgb8"
        else:
            self._stream = self._container.add_stream(codec, rate=self.rate)
            self._stream.pix_fmt = "yuv420p"
            if codec == "libx264":
                self._stream.options = {"crf": "20", "preset": "veryfast"}
        # H.264 with yuv420p needs even sizes
        self._stream.width = w - (w % 2) if suffix != ".gif" else w
        self._stream.height = h - (h % 2) if suffix != ".gif" else h

    def write(self, frame: np.ndarray) -> None:
        import av

        frame = np.ascontiguousarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise InputError(f"video frames must be [H, W, 3] uint8, got {frame.shape} {frame.dtype}")
        if self._container is None:
            try:
                self._open(*frame.shape[:2])
            except BaseException:
                self.abort()
                raise
        frame = frame[: self._stream.height, : self._stream.width]
        vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
        for packet in self._stream.encode(vf):
            self._container.mux(packet)

    def close(self) -> None:
        if self._container is None:
            return
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            self._container = None
            os.chmod(self._tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
            os.replace(self._tmp, self.path)
            self._tmp = None
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Discard the video: close the container and remove the temporary file (on every failure path)."""
        try:
            if self._container is not None:
                with contextlib.suppress(Exception):
                    self._container.close()
        finally:
            self._container = None
            if self._tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    self._tmp.unlink()
                self._tmp = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
