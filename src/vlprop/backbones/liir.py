"""LIIR's encoder: MAST's ResNet-18 with a learned 1-D absolute position encoding after the stem.

LIIR (Li et al., CVPR 2022, Eq. 6) adds ``P`` to the output of the first 7x7 conv-BN-ReLU, before
layer1: ``phi(I) = phi_{>conv1}(conv1(I) + P)``. ``P`` ("1DAPE") is a free parameter of
``64 x 128 x 128`` (sized for a 256-pixel input at stride 2), zero at initialisation and resized
bicubically to the actual stem output at every forward, which is how other input sizes (480p test
frames) get a position encoding. The trunk is ``mast_resnet18`` (no max-pool, output stride 4, layer4
256 wide, ``head`` = 3x3 conv to 64 channels).

``pe_shift``: training sets it to per-sample integer shifts ``[n, 2]`` (dy, dx) in stem cells to encode
frames of *other* videos with a circularly shifted, detached ``P`` (LIIR's circular position shifting);
``None`` (always at inference) uses ``P`` as is. The parameter is stored as ``relu.pos_embed`` (the
encoding is applied by the stem's activation module, so the ResNet forward needs no change).
"""
from __future__ import annotations

import dataclasses
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlprop.backbones.registry import register_backbone
from vlprop.backbones.resnet import _STRIDES, LAYERS, MAST_RESNET18, ResNetBackbone, _LAYER_ALIASES
from vlprop.backbones.weights import load_weights, open_checkpoint
from vlprop.errors import CheckpointError, InputError


class StemPositionEncoding(nn.Module):
    """``relu(x) + P`` with ``P`` ``[1, C, S, S]`` resized bicubically to ``x``'s ``h x w``.

    ``pe_shift`` (long ``[n, 2]`` or ``None``): per-sample circular shift (rows, columns) of the resized
    ``P``, with ``P`` detached (no gradient from shifted encodings).
    """

    def __init__(self, channels: int = 64, size: int = 128):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, channels, size, size))
        self.pe_shift: torch.Tensor | None = None

    def encoding(self, h: int, w: int) -> torch.Tensor:
        p = self.pos_embed
        if p.shape[-2:] != (h, w):
            p = F.interpolate(p, size=(h, w), mode="bicubic", align_corners=False)
        return p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        p = self.encoding(*x.shape[-2:]).to(x.dtype)
        shift = self.pe_shift
        if shift is None:
            return x + p
        if shift.shape != (x.shape[0], 2):
            raise InputError(f"pe_shift must be [{x.shape[0]}, 2], got {tuple(shift.shape)}")
        p = p.detach()
        shifted = torch.cat([torch.roll(p, (int(dy), int(dx)), dims=(-2, -1)) for dy, dx in shift.tolist()])
        return x + shifted


class LIIRResNetBackbone(ResNetBackbone):
    """``mast_resnet18`` + :class:`StemPositionEncoding` (see the module docstring)."""

    def __init__(self, *args, pe_size: int = 128, **kw) -> None:
        super().__init__(*args, **kw)
        self.relu = StemPositionEncoding(64, pe_size)

    def config(self) -> dict:
        return {**super().config(), "arch": self.arch}


LIIR_RESNET18 = dataclasses.replace(MAST_RESNET18, arch="liir_resnet18")


def liir_resnet18(*, stride: int | None = None, layer: str | None = None, padding_mode: str | None = None,
                  weights: str | os.PathLike | None = "random", seed: int = 0, weights_format: str | None = None,
                  head_dim: int | None = None, allow_pickle: bool = False) -> LIIRResNetBackbone:
    """LIIR's encoder (default ``layer="head"``, stride 4). ``weights``: ``"random"`` (seeded; ``P`` = 0)
    or a vlprop checkpoint of a LIIR training run. There are no ImageNet weights."""
    ckpt = None
    if weights is None or weights == "random":
        pass
    elif weights == "imagenet":
        raise InputError("liir_resnet18: no ImageNet weights exist for this architecture")
    elif isinstance(weights, (str, os.PathLike)):
        ckpt = open_checkpoint(weights, weights_format=weights_format, allow_pickle=allow_pickle)
        rec = ckpt.recorded_config()
        if rec.get("arch") not in (None, "liir_resnet18"):
            raise CheckpointError(f"{ckpt.path}: checkpoint was saved for arch {rec.get('arch')!r}, not 'liir_resnet18'")
        stride = stride if stride is not None else rec.get("stride")
        layer = layer if layer is not None else rec.get("layer")
        padding_mode = padding_mode if padding_mode is not None else rec.get("padding_mode")
        head_dim = head_dim if head_dim is not None else rec.get("head_dim")
    else:
        raise InputError(f"weights must be 'random' or a file path, got {weights!r}")
    net = LIIRResNetBackbone(LIIR_RESNET18, stride=stride or LIIR_RESNET18.default_stride,
                             layer=layer or LIIR_RESNET18.default_layer, padding_mode=padding_mode or "zeros",
                             head_dim=head_dim, seed=seed)
    if ckpt is not None:
        load_weights(net, ckpt)
    return net.eval()


liir_resnet18.spec = LIIR_RESNET18  # type: ignore[attr-defined]
liir_resnet18.layers = (*LAYERS, *_LAYER_ALIASES)  # type: ignore[attr-defined]
liir_resnet18.strides = _STRIDES  # type: ignore[attr-defined]
register_backbone(liir_resnet18)

__all__ = ["LIIRResNetBackbone", "StemPositionEncoding", "liir_resnet18"]
