"""Shared fixtures for the training tests: synthetic videos with known motion and a tiny backbone.

(No tests here; imported by the ``test_train_*`` modules.)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image


def textured_frames(n: int, size: int = 64, seed: int = 0, speed: tuple[int, int] = (1, 2)) -> list[np.ndarray]:
    """``n`` RGB uint8 frames ``size x size``: a smooth random background texture and a textured
    square moving by ``speed`` (dy, dx) pixels per frame (wrapping around)."""
    rng = np.random.default_rng(seed)
    big = rng.integers(0, 256, size=(size // 4, size // 4, 3), dtype=np.uint8)
    bg = np.asarray(Image.fromarray(big).resize((size, size), Image.BILINEAR))
    patch = rng.integers(0, 256, size=(size // 4, size // 4, 3), dtype=np.uint8)
    s = size // 4
    frames = []
    for t in range(n):
        f = bg.copy()
        y0 = (size // 3 + speed[0] * t) % (size - s)
        x0 = (size // 5 + speed[1] * t) % (size - s)
        f[y0:y0 + s, x0:x0 + s] = patch
        frames.append(f)
    return frames


def write_frame_folder(folder: Path, frames: list[np.ndarray], ext: str = ".png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i:05d}{ext}")
    return folder


def write_video(path: Path, frames: list[np.ndarray], fps: int = 25) -> Path:
    """Encode ``frames`` with PyAV (MPEG-4 part 2, every frame decodable)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        h, w = frames[0].shape[:2]
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        stream.gop_size = 10
        stream.bit_rate = 4_000_000  # near-lossless at these sizes: decoded frames stay identifiable
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def make_dataset(root: Path, videos: int = 4, frames: int = 12, size: int = 64) -> Path:
    """``root/<seq>/*.png`` frame folders of moving textured squares."""
    for v in range(videos):
        write_frame_folder(root / f"seq{v:02d}", textured_frames(frames, size, seed=v, speed=(1 + v % 2, 2 - v % 2)))
    return root


class TinyBackbone(nn.Module):
    """Three stride-2 conv-BN-ReLU blocks: a stride-8 stand-in for ResNet-18 that trains in milliseconds."""

    arch = "tiny"
    layer = "res4"

    def __init__(self, out_dim: int = 32, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.stride, self.out_dim = 8, out_dim
        chans = [3, 16, 32, out_dim]
        layers = []
        for i in range(3):
            conv = nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / (9 * chans[i])) ** 0.5)
                conv.bias.zero_()
            layers += [conv, nn.BatchNorm2d(chans[i + 1]), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
