"""Image-level auxiliary objectives trained alongside any video method (McKee et al. 2022, §5: "UVC+").

McKee et al. add to the video-trained backbone an auxiliary image branch trained with an image loss
and report a gain with rotation prediction (Gidaris et al.) at weight λ = 0.3 (0.1 for MoCo, 0.05 for
supervised ImageNet). The branch sits on the shared backbone output:

    features [n, D, h, w] -> max-pool 3x3/2 -> 2 ResNet BasicBlocks (512 channels, stride 1; a 1x1
    projection when D != 512) -> global average pool -> linear -> 4 logits (0, 90, 180, 270 degrees)

(the paper names the layers but not the pool size or stage stride; this is the spec's reading).
Every image of the image batch is presented in all four rotations and the loss is the mean
cross-entropy of the rotation class. Total loss: ``L_video + λ · L_rot``.

Images come from the training videos' frames (one random frame per image, random square crop, colour)
or from a folder of images; they are drawn from the training sample's generator, so runs stay exact
to resume and identical across process counts.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torchvision.models.resnet import BasicBlock, conv1x1

from vlprop.errors import InputError

from .data import IMAGE_EXTS, READ_ERRORS, VideoEntry, VideoReadError, read_clip

AUX_OBJECTIVES = ("none", "rotation")
# McKee et al. §5: the auxiliary weight per image objective.
PAPER_WEIGHTS = {"rotation": 0.3}


@dataclass(frozen=True)
class AuxConfig:
    """``objective``: ``none`` or ``rotation``; ``weight``: λ; ``per_clip``: images drawn per video clip
    (McKee: image batch 64 with video batch 40, i.e. 1.6 per clip); ``size``: square image side in
    pixels; ``data``: a folder of images (default: frames of the training videos)."""

    objective: str = "none"
    weight: float = 0.3
    per_clip: int = 2
    size: int = 128
    data: str | None = None

    def validate(self) -> None:
        if self.objective not in AUX_OBJECTIVES:
            raise InputError(f"unknown auxiliary objective {self.objective!r}; choose one of {', '.join(AUX_OBJECTIVES)}")
        if self.objective != "none":
            if self.per_clip < 1:
                raise InputError(f"--aux-per-clip must be >= 1, got {self.per_clip}")
            if self.size < 16:
                raise InputError(f"--aux-size must be at least 16 pixels, got {self.size}")
            if not self.weight >= 0:
                raise InputError(f"--aux-weight must be >= 0, got {self.weight}")


class RotationHead(nn.Module):
    """Rotation classifier on backbone features ``[n, D, h, w]`` -> logits ``[n, 4]`` (see module doc)."""

    def __init__(self, in_dim: int, width: int = 512, classes: int = 4):
        super().__init__()
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        down = None if in_dim == width else nn.Sequential(conv1x1(in_dim, width), nn.BatchNorm2d(width))
        self.stage = nn.Sequential(BasicBlock(in_dim, width, 1, down), BasicBlock(width, width))
        self.fc = nn.Linear(width, classes)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.stage(self.pool(feats))
        return self.fc(x.mean((2, 3)))


def rotations(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All four rotations of square images ``[n, C, s, s]`` -> ``([4n, C, s, s], labels [4n])``;
    block ``k`` is rotated by ``k * 90`` degrees counter-clockwise and labelled ``k``."""
    if images.dim() != 4 or images.shape[-1] != images.shape[-2]:
        raise InputError(f"rotation needs square images [n, C, s, s], got {tuple(images.shape)}")
    rotated = torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(4)])
    labels = torch.arange(4, device=images.device).repeat_interleave(images.shape[0])
    return rotated, labels


def rotation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of rotation logits ``[m, 4]`` against labels ``[m]``."""
    return F.cross_entropy(logits.float(), labels)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted); none is an :class:`InputError`."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"auxiliary image folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise InputError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) under {root}")
    return files


def _square_crop(image: Image.Image, size: int, rng: np.random.Generator) -> torch.Tensor:
    """Resize the smaller side to ``size`` and take a random ``size x size`` crop -> float ``[3, s, s]`` in [0, 1]."""
    w, h = image.size
    s = size / min(w, h)
    nw, nh = max(size, int(round(w * s))), max(size, int(round(h * s)))
    image = image.convert("RGB").resize((nw, nh), Image.BILINEAR)
    top = int(rng.integers(0, nh - size + 1))
    left = int(rng.integers(0, nw - size + 1))
    arr = np.asarray(image)[top:top + size, left:left + size]
    return torch.from_numpy(np.array(arr)).permute(2, 0, 1).float().div_(255.0)


def sample_aux_images(entry: VideoEntry, rng: np.random.Generator, cfg: AuxConfig, preprocessing,
                      images: Sequence[Path] = ()) -> torch.Tensor:
    """``cfg.per_clip`` normalised colour images ``[k, 3, size, size]``: random frames of ``entry`` or,
    when ``images`` is given, random files of that list. ``preprocessing``: the network's input."""
    from .augment import normalize

    out = []
    for _ in range(cfg.per_clip):
        if images:
            path = images[int(rng.integers(len(images)))]
            try:
                im = Image.open(path)
                im.load()
            except READ_ERRORS as exc:
                raise VideoReadError(f"{path}: unreadable auxiliary image ({type(exc).__name__}: {exc})") from exc
        else:
            im = read_clip(entry, [int(rng.integers(entry.num_frames))])[0]
        out.append(_square_crop(im, cfg.size, rng))
    return normalize(torch.stack(out), preprocessing)


__all__ = ["AuxConfig", "AUX_OBJECTIVES", "PAPER_WEIGHTS", "RotationHead", "rotations", "rotation_loss",
           "list_images", "sample_aux_images"]
