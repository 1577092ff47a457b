"""MAST: memory-augmented self-supervised tracker (Lai et al., CVPR 2020), training.

Network: ``mast_resnet18`` (ResNet-18 without max-pool, layer3/4 at stride 1, layer4 256 wide, output
stride 4) and the 3x3 ``post_convolution`` to 64 channels; the last BN scale of every block starts at 0.

Sample: ``T = refs + 1`` frames ``g`` apart with ``g`` in {2, 5, 8} (p = 0.4/0.4/0.2), each resized to
``crop x crop`` (256, aspect not kept, no flip or jitter), converted to normalised Lab
``((L-50)/50, a/127, b/127)``; one of a/b is drawn per clip for the channel dropout.

Loss (spec §4.1-4.2): the a/b channel ``c*`` is zeroed in every frame and the input scaled by 3/2; the
last frame (query) reconstructs ``c*`` from the references' ground-truth ``c*`` sampled at the feature
centres (``[::4]``) through the affinity ``A = softmax`` over the ``(2R+1)^2`` window candidates of all
references jointly (dot products, no normalisation, temperature 1; R = 6 in training);
``v_hat`` upsampled bilinearly x4; ``L = mean smooth_l1(20 v_hat, 20 v_q)``.

The two inference bugs of the released code (the last ROI offset reused for every long-range
reference; ``grid_sample`` without ``align_corners=True``) concern the test-time ROI memory, which is
not part of training; propagation uses vlprop's engine (see :meth:`MAST.export`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from vlprop.backbones.preprocessing import LAB
from vlprop.errors import InputError

from ..data import read_clip
from . import TrainingMethod, register_method
from .reconstruction import (
    EmbeddingNet,
    ReconstructionConfig,
    lab_channel_dropout,
    reconstruct,
    reconstruction_loss,
    reconstruction_protocol,
    resize_square,
    sample_pair_indices,
    strided_values,
    window_logits,
    window_values,
    zero_init_last_bn,
)


@dataclass(frozen=True)
class MASTConfig(ReconstructionConfig):
    """MAST training settings (released code / paper defaults): exactly the shared reconstruction settings."""


def check_reconstruction_config(cfg: Any) -> None:
    if cfg.refs < 1:
        raise InputError(f"refs must be >= 1, got {cfg.refs}")
    if cfg.radius < 1:
        raise InputError(f"radius must be >= 1, got {cfg.radius}")
    if len(cfg.gaps) != len(cfg.gap_probs) or not cfg.gaps or min(cfg.gaps) < 1 or min(cfg.gap_probs) < 0 \
            or sum(cfg.gap_probs) <= 0:
        raise InputError(f"gaps {cfg.gaps} and gap_probs {cfg.gap_probs} must be equally long, gaps >= 1, "
                         f"probabilities >= 0 with a positive sum")
    if cfg.crop < 16:
        raise InputError(f"crop must be at least 16 pixels, got {cfg.crop}")


def lab_clip(entry, indices, size: int) -> torch.Tensor:
    """Frames ``indices`` of ``entry`` resized to ``size x size``, in normalised Lab ``[T, 3, size, size]``."""
    from ..augment import normalize

    frames = torch.stack([resize_square(im, size) for im in read_clip(entry, indices, draft=size)])
    return normalize(frames, LAB)


def reconstruction_terms(feats: torch.Tensor, target: torch.Tensor, radius: int, stride: int
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Intra-video reconstruction of the last frame of each clip from the others.

    ``feats`` ``[B, T, C, h, w]``, ``target`` ``[B, T, 1, H, W]`` (dropped channel). Returns
    ``(v_hat [B, 1, h, w], A [B, (T-1)(2R+1)^2, h, w], logits (same shape), values [B, 1, N, h, w])``.
    """
    B, T = feats.shape[:2]
    h, w = feats.shape[-2:]
    q = feats[:, -1]
    logits = torch.cat([window_logits(q, feats[:, k], radius) for k in range(T - 1)], 1)
    vals = torch.cat([window_values(strided_values(target[:, k], stride, (h, w)), radius) for k in range(T - 1)], 2)
    v_hat, A = reconstruct(logits, vals)
    return v_hat, A, logits, vals


def embedding_backbone_kwargs(kw: dict, arch: str, native: str, embed_dim: int) -> dict:
    """``create_backbone`` arguments of a stride-4 embedding method: the paper trunk ``native`` with its
    own 3x3 head (``layer="head"``, ``head_dim``); another family's ``head`` is not that embedding, so
    it trains on its deepest trunk layer (ResNet ``res4``) and :class:`EmbeddingNet` adds the head."""
    kw = dict(kw)
    if arch == native:
        kw["head_dim"] = embed_dim
    elif kw.get("layer") == "head":
        kw.pop("layer")
        from vlprop.backbones.registry import backbone_factory

        if "res4" in (getattr(backbone_factory(arch), "layers", None) or ()):
            kw["layer"] = "res4"
    return kw


@register_method
class MAST(TrainingMethod):
    """MAST training objective (see the module docstring)."""

    name = "mast"
    summary = "MAST: Lab channel-dropout reconstruction through a local affinity (Lai et al., CVPR 2020)"
    Config = MASTConfig
    defaults = {"arch": "mast_resnet18", "batch": 12, "lr": 1e-3, "weight_decay": 0.0}
    stride, layer = 4, "head"

    def validate(self) -> None:
        check_reconstruction_config(self.cfg)

    def min_frames(self) -> int:
        return self.cfg.refs + 1

    def backbone_kwargs(self, arch: str) -> dict:
        return embedding_backbone_kwargs(super().backbone_kwargs(arch), arch, "mast_resnet18", self.cfg.embed_dim)

    def input_preprocessing(self, backbone_preprocessing):
        return LAB  # the paper's input: normalised Lab (needed by the channel dropout)

    def sample(self, entry, rng, preprocessing, train: bool = True) -> dict[str, torch.Tensor]:
        ids = sample_pair_indices(entry.num_frames, self.cfg.refs + 1, self.cfg.gaps, self.cfg.gap_probs, rng)
        lab = lab_clip(entry, ids, self.cfg.crop)
        return {"lab": lab, "drop": torch.tensor(1 + int(rng.integers(2)))}

    def build(self, backbone: nn.Module) -> EmbeddingNet:
        if self.cfg.zero_init_residual:
            zero_init_last_bn(backbone)
        self.feature_stride = int(backbone.stride)
        self.embed_layer = getattr(backbone, "layer", None) != "head"  # another trunk: its head is the run's
        return EmbeddingNet(backbone, self.cfg.embed_dim)

    def loss(self, net: nn.Module, batch) -> dict[str, torch.Tensor]:
        lab, drop = batch["lab"], batch["drop"]
        B, T = lab.shape[:2]
        inp, target = lab_channel_dropout(lab, drop)
        feats = net(inp.flatten(0, 1))
        feats = feats.view(B, T, *feats.shape[1:]).float()
        stride = lab.shape[-1] // feats.shape[-1]
        with torch.autocast(feats.device.type, enabled=False):
            v_hat, _, _, _ = reconstruction_terms(feats, target, self.cfg.radius, stride)
            rec = reconstruction_loss(v_hat, target[:, -1], self.cfg.loss_scale)
        return {"loss": rec, "rec": rec.detach()}

    def export(self) -> dict:
        # MAST test protocol approximated with vlprop's engine: joint softmax (T = 1, no top-k, no L2
        # normalisation) over square windows of radius 12 on the 64-d stride-4 embedding, first frame
        # + 5 previous (the released code uses frames {0, 5, t-1, t-3, t-5} and ROI search beyond 15).
        # Another trunk's stride (e.g. EfficientNet at 8) keeps the window's size in pixels.
        return reconstruction_protocol(12, self)
