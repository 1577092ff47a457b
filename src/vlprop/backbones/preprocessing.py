"""What a network expects as input: normalisation, colour space and the input-size rule.

A :class:`Preprocessing` travels with a backbone's weights (``net.preprocessing``), so a checkpoint is
always fed the input it was trained on: torchvision/CRW/DUL ResNets use ImageNet mean/std on sRGB,
timm's TF-ported EfficientNet-Lite uses mean = std = 0.5, MAST/LIIR use normalised Lab, UVC the Lab
lightness, and ViTs need input sides that are multiples of their patch size (a ViT silently drops the
right/bottom remainder otherwise, a known evaluation bug). :class:`~vlprop.backbones.FeatureExtractor`
applies it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from vlprop.backbones.colorspace import COLORSPACES, LAB_MEAN, LAB_STD
from vlprop.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TensorFlow-ported EfficientNet-Lite (timm tf_efficientnet_lite*): inputs scaled to [-1, 1].
HALF_MEAN = (0.5, 0.5, 0.5)
HALF_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Preprocessing:
    """Input normalisation of a network.

    mean, std: per-channel normalisation applied after the colour conversion (in the colour space's units).
    colorspace: ``rgb``, ``lab`` (MAST/LIIR) or ``lab_l`` (UVC grey), see :mod:`vlprop.backbones.colorspace`.
    size_multiple: the resized input's height and width are rounded to the nearest multiple of this
        (at least one multiple): the patch size of a ViT, 1 for convolutional networks.
    name: short description recorded in protocols (e.g. ``"imagenet"``).
    """

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    colorspace: str = "rgb"
    size_multiple: int = 1
    name: str = "imagenet"

    def __post_init__(self) -> None:
        if self.colorspace not in COLORSPACES:
            raise InputError(f"colorspace must be one of {', '.join(COLORSPACES)}, got {self.colorspace!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(not (s > 0) for s in self.std):
            raise InputError(f"mean and std need 3 values with std > 0, got mean={self.mean!r}, std={self.std!r}")
        if isinstance(self.size_multiple, bool) or not isinstance(self.size_multiple, int) or self.size_multiple < 1:
            raise InputError(f"size_multiple must be a positive integer, got {self.size_multiple!r}")

    def round_size(self, height: int, width: int) -> tuple[int, int]:
        """``(height, width)`` rounded half-up to the nearest multiple of ``size_multiple`` (>= 1 multiple)."""
        m = self.size_multiple
        if m == 1:
            return height, width
        return (max(m, m * int(math.floor(height / m + 0.5))), max(m, m * int(math.floor(width / m + 0.5))))


IMAGENET = Preprocessing()
HALF = Preprocessing(mean=HALF_MEAN, std=HALF_STD, name="inception (mean=std=0.5)")
LAB = Preprocessing(mean=LAB_MEAN, std=LAB_STD, colorspace="lab", name="lab (MAST/LIIR)")
LAB_L = Preprocessing(colorspace="lab_l", name="lab lightness, imagenet mean/std (UVC)")

__all__ = ["Preprocessing", "IMAGENET", "HALF", "LAB", "LAB_L", "IMAGENET_MEAN", "IMAGENET_STD", "HALF_MEAN", "HALF_STD"]
