"""Video writing (PyAV) for overlays: frames are streamed in, the file appears atomically when closed."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import InputError


class VideoWriter:
    """Write RGB uint8 frames ``[H, W, 3]`` to an MP4 (H.264), GIF or other container PyAV supports.

    The output is written to a temporary file next to ``path`` and renamed on :meth:`close`, so an
    interrupted run never leaves a truncated video under the final name. Use as a context manager.
    """

    def __init__(self, path: str | Path, fps: float = 24.0):
        self.path = Path(path)
        self.fps = fps
        self._container = None
        self._stream = None
        self._tmp: Path | None = None

    def _open(self, h: int, w: int) -> None:
        import av

        self.path.parent.mkdir(parents=True, exist_ok=True)
        suffix = self.path.suffix.lower() or ".mp4"
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=suffix, dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        self._container = av.open(str(self._tmp), mode="w")
        if suffix == ".gif":
            self._stream = self._container.add_stream("gif", rate=int(round(self.fps)))
            self._stream.pix_fmt = "rgb8"
        else:
            codec = "libx264" if suffix in (".mp4", ".mkv", ".mov") else "mpeg4"
            self._stream = self._container.add_stream(codec, rate=int(round(self.fps)))
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
            self._open(*frame.shape[:2])
        frame = frame[: self._stream.height, : self._stream.width]
        vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
        for packet in self._stream.encode(vf):
            self._container.mux(packet)

    def close(self) -> None:
        if self._container is None:
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        os.replace(self._tmp, self.path)
        self._container = None

    def abort(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            finally:
                if self._tmp is not None and self._tmp.exists():
                    self._tmp.unlink()
                self._container = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
