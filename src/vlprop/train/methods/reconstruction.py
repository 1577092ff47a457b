"""Colour reconstruction through a local affinity: the building blocks of MAST, LIIR and STT.

Shared by :mod:`.mast`, :mod:`.liir` and :mod:`.stt` (shapes: ``B`` clips, ``C`` feature channels,
``h x w`` feature grid of stride ``s``, ``H x W = s*h x s*w`` pixels, ``R`` window radius in feature cells):

* :func:`lab_channel_dropout` -- MAST's bottleneck: one of the a/b channels is zeroed in every frame of
  the clip and the input scaled by 3/2; the dropped channel is what gets reconstructed;
* :func:`window_logits` / :func:`window_values` -- the ``(2R+1)^2`` candidates of a square window
  around each query cell in a reference map (zero padding: an out-of-frame candidate has logit 0 and
  value 0, as in the reference code's unfold / correlation sampler); candidate ``k`` is the
  displacement ``(dy, dx) = (k // (2R+1) - R, k % (2R+1) - R)``;
* :func:`strided_values` -- reference values sampled at the feature centres by picking pixels
  ``0, s, 2s, ...`` (MAST's image/feature alignment);
* :func:`reconstruction_loss` -- bilinear upsampling of the reconstruction to full resolution and
  ``mean(smooth_l1(20 * v_hat, 20 * v))``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from vlprop.errors import InputError


def field_help(text: str) -> dict:
    """Dataclass field metadata read by the CLI: the option's help text."""
    return {"help": text}


@dataclass(frozen=True)
class ReconstructionConfig:
    """Settings shared by the colour-reconstruction methods (MAST, LIIR): clip sampling, window, head, loss."""

    crop: int = field(default=256, metadata=field_help("frames are resized to crop x crop pixels (paper 256)"))
    refs: int = field(default=1, metadata=field_help("reference frames per clip (released code: 1, pairs)"))
    gaps: tuple[int, ...] = field(default=(2, 5, 8), metadata=field_help("frame gaps to draw from"))
    gap_probs: tuple[float, ...] = field(default=(0.4, 0.4, 0.2), metadata=field_help("their probabilities"))
    radius: int = field(default=6, metadata=field_help("training window radius R in feature cells (13x13)"))
    embed_dim: int = field(default=64, metadata=field_help("embedding channels of the 3x3 head"))
    loss_scale: float = field(default=20.0, metadata=field_help("smooth-L1 on values scaled by this factor"))
    zero_init_residual: bool = field(default=True, metadata=field_help("last BN scale of every block starts at 0"))
    beta1: float = field(default=0.9, metadata=field_help("Adam beta1"))

    def __post_init__(self) -> None:
        object.__setattr__(self, "gaps", tuple(int(g) for g in self.gaps))
        object.__setattr__(self, "gap_probs", tuple(float(p) for p in self.gap_probs))


def lab_channel_dropout(lab: torch.Tensor, drop: torch.Tensor, scale: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """``lab`` normalised Lab clips ``[B, T, 3, H, W]``, ``drop`` long ``[B]`` in {1, 2} (a or b).

    Returns ``(input [B, T, 3, H, W], target [B, T, 1, H, W])``: the input has channel ``drop[b]`` zeroed
    in every frame of clip ``b`` and is multiplied by ``scale`` (3/2, MAST's dropout rescaling); the
    target is the un-dropped ground truth of that channel.
    """
    if lab.dim() != 5 or lab.shape[2] != 3:
        raise InputError(f"expected Lab clips [B, T, 3, H, W], got {tuple(lab.shape)}")
    drop = drop.long().to(lab.device)
    if ((drop < 1) | (drop > 2)).any():
        raise InputError("the dropped Lab channel must be 1 (a) or 2 (b); L is never dropped")
    B, T, _, H, W = lab.shape
    keep = torch.ones(B, 1, 3, 1, 1, dtype=lab.dtype, device=lab.device)
    keep[torch.arange(B, device=lab.device), 0, drop] = 0
    target = lab.gather(2, drop.view(B, 1, 1, 1, 1).expand(B, T, 1, H, W))
    return lab * keep * scale, target


def rgb_channel_dropout(rgb: torch.Tensor, drop: torch.Tensor, preprocessing) -> tuple[torch.Tensor, torch.Tensor]:
    """The channel dropout for a trunk that reads RGB (e.g. an ImageNet EfficientNet-Lite).

    ``rgb`` float sRGB clips ``[B, T, 3, H, W]`` in ``[0, 1]``, ``drop`` long ``[B]`` in {1, 2}. The dropped
    channel is removed in Lab as in :func:`lab_channel_dropout` (set to 0, the neutral colour), the frames
    go back to sRGB (unclipped) and are normalised with ``preprocessing`` (the trunk's own): the network sees a natural
    RGB image with one colour-opponent axis gone, not the Lab input an RGB-trained trunk never saw. No
    3/2 rescaling. ``target`` is the same normalised Lab channel as :func:`lab_channel_dropout`'s.
    """
    from vlprop.backbones.colorspace import LAB_MEAN, LAB_STD, lab_to_rgb
    from vlprop.backbones.preprocessing import LAB

    from ..augment import normalize

    if rgb.dim() != 5 or rgb.shape[2] != 3:
        raise InputError(f"expected RGB clips [B, T, 3, H, W], got {tuple(rgb.shape)}")
    dropped, target = lab_channel_dropout(normalize(rgb, LAB), drop, scale=1.0)
    mean = torch.tensor(LAB_MEAN, dtype=dropped.dtype, device=dropped.device).view(3, 1, 1)
    std = torch.tensor(LAB_STD, dtype=dropped.dtype, device=dropped.device).view(3, 1, 1)
    # not clipped: an image that leaves the sRGB gamut without the channel keeps exactly the other two
    return normalize(lab_to_rgb(dropped * std + mean, clip=False), preprocessing), target


def window_logits(query: torch.Tensor, ref: torch.Tensor, radius: int) -> torch.Tensor:
    """Dot products of each query cell with the ``(2R+1)^2`` reference cells around it.

    ``query``, ``ref`` ``[B, C, h, w]`` -> ``[B, (2R+1)^2, h, w]`` (zero outside the reference frame).
    Computed one displacement at a time: memory ``O(B (2R+1)^2 h w)`` instead of an unfolded
    ``O(B C (2R+1)^2 h w)`` copy of the reference.
    """
    if query.shape != ref.shape:
        raise InputError(f"query {tuple(query.shape)} and reference {tuple(ref.shape)} differ in shape")
    R = int(radius)
    h, w = query.shape[-2:]
    padded = F.pad(ref, (R, R, R, R))
    out = [(query * padded[:, :, R + dy:R + dy + h, R + dx:R + dx + w]).sum(1)
           for dy in range(-R, R + 1) for dx in range(-R, R + 1)]
    return torch.stack(out, 1)


def window_values(values: torch.Tensor, radius: int) -> torch.Tensor:
    """Reference values ``[B, K, h, w]`` at the window candidates -> ``[B, K, (2R+1)^2, h, w]`` (0 outside)."""
    B, K, h, w = values.shape
    n = 2 * int(radius) + 1
    cols = F.unfold(values.float(), kernel_size=n, padding=int(radius))  # [B, K*n*n, h*w]
    return cols.view(B, K, n * n, h, w).to(values.dtype)


def strided_values(values: torch.Tensor, stride: int, size: tuple[int, int]) -> torch.Tensor:
    """Pixels ``0, s, 2s, ...`` of ``values [..., H, W]`` (MAST's alignment: feature cell ``k`` of a
    'same'-padded stride-``s`` network is centred on pixel ``s*k``), cut to the feature grid ``size``."""
    h, w = size
    v = values[..., ::stride, ::stride]
    if v.shape[-2] < h or v.shape[-1] < w:
        raise InputError(f"values {tuple(values.shape[-2:])} do not cover a {h}x{w} grid at stride {stride}")
    return v[..., :h, :w]


def reconstruct(logits: torch.Tensor, values: torch.Tensor, extra_denominator: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``v_hat = sum_j A_j v_j`` with ``A = softmax`` over the candidates (dim 1).

    ``logits`` ``[B, N, h, w]`` (all references' candidates concatenated: one joint softmax),
    ``values`` ``[B, K, N, h, w]``. ``extra_denominator`` ``[B, M, h, w]``: logits that enter only the
    softmax denominator (LIIR's inter-video negatives), so the weights of the ``N`` candidates then sum
    to less than one. Returns ``(v_hat [B, K, h, w], A [B, N, h, w])``.
    """
    if extra_denominator is None:
        A = torch.softmax(logits.float(), 1)
    else:
        both = torch.cat([logits.float(), extra_denominator.float()], 1)
        A = torch.softmax(both, 1)[:, :logits.shape[1]]
    return (A.unsqueeze(1) * values.float()).sum(2), A


def reconstruction_loss(v_hat: torch.Tensor, target: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """``v_hat`` ``[B, K, h, w]`` upsampled bilinearly (align_corners=False) to ``target``'s
    ``[B, K, H, W]`` size; ``mean(smooth_l1(scale * v_hat, scale * target))`` (Huber, beta 1)."""
    up = F.interpolate(v_hat.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
    return F.smooth_l1_loss(scale * up, scale * target.float())


def resize_square(image: Image.Image, size: int) -> torch.Tensor:
    """MAST/LIIR frame preparation: resize to ``size x size`` (bilinear, aspect not kept) -> float
    ``[3, size, size]`` in [0, 1]."""
    im = image.convert("RGB")
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float().div_(255.0)


def sample_pair_indices(num_frames: int, frames: int, gaps: tuple[int, ...], probs: tuple[float, ...],
                        rng: np.random.Generator) -> list[int]:
    """``frames`` frame indices ``start, start+g, ..., start+(frames-1)*g`` with the gap ``g`` drawn from
    ``gaps`` with probabilities ``probs`` (MAST/LIIR: {2, 5, 8} w.p. 0.4/0.4/0.2); gaps too long for
    the video are dropped (renormalised), down to consecutive frames for very short videos."""
    gaps_a = np.asarray(gaps, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    fits = (frames - 1) * gaps_a < num_frames
    if not fits.any():
        g = max(1, (num_frames - 1) // max(1, frames - 1))
    else:
        g = int(rng.choice(gaps_a[fits], p=p[fits] / p[fits].sum()))
    span = (frames - 1) * g
    if span >= num_frames:
        raise InputError(f"video has {num_frames} frames, a clip needs {frames}")
    start = int(rng.integers(0, num_frames - span))
    return [start + k * g for k in range(frames)]


def window_radius_at(radius: int, stride: int, paper_stride: int = 4) -> int:
    """A window radius given in cells of the paper's stride-``paper_stride`` embedding, in cells of a
    stride-``stride`` feature map covering the same pixels (at least 1)."""
    return max(1, int(round(radius * paper_stride / int(stride))))


def reconstruction_protocol(radius: int, method) -> dict:
    """MAST/LIIR's DAVIS protocol in vlprop's engine, what their ``export`` records: one joint softmax (T = 1, no
    top-k, no L2 normalisation) over square windows of ``radius`` cells of the paper's stride-4 embedding, first
    frame + 5 previous. Another trunk's stride (``method.feature_stride``, e.g. EfficientNet at 8) keeps the
    window's size in pixels, and on another trunk (``method.embed_layer``) propagation matches the run's
    trained 64-d head, as the papers do (feature layer ``embed``)."""
    settings = {"topk": 0, "temperature": 1.0, "feature_norm": False, "window": "square",
                "radius": window_radius_at(radius, getattr(method, "feature_stride", method.stride)),
                "window_long_term": True, "context": 5}
    if getattr(method, "embed_layer", False):
        settings["layer"] = "embed"
    return {"preset": "dul", "settings": settings}


class EmbeddingNet(nn.Module):
    """Backbone + embedding head: ``forward(x [B, 3, H, W]) -> f [B, dim, h, w]`` (no normalisation).

    MAST/LIIR's 3x3 ``post_convolution`` to 64 channels; when the backbone already ends in it
    (``mast_resnet18`` built with ``layer="head"``) the head is the identity.
    """

    def __init__(self, backbone: nn.Module, dim: int = 64):
        super().__init__()
        self.backbone = backbone
        if getattr(backbone, "layer", None) == "head":
            self.head: nn.Module = nn.Identity()
            self.key_dim = int(backbone.out_dim)
        else:
            self.head = nn.Conv2d(int(backbone.out_dim), dim, 3, 1, 1)
            self.key_dim = int(dim)
        self.stride = int(backbone.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def zero_init_last_bn(module: nn.Module) -> None:
    """Set the last BatchNorm scale of every residual block to zero (MAST/LIIR initialisation)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, BasicBlock):
                m.bn2.weight.zero_()
            elif isinstance(m, Bottleneck):
                m.bn3.weight.zero_()


__all__ = ["lab_channel_dropout", "window_logits", "window_values", "strided_values", "reconstruct",
           "reconstruction_loss", "resize_square", "sample_pair_indices", "window_radius_at", "reconstruction_protocol",
           "EmbeddingNet", "zero_init_last_bn"]
