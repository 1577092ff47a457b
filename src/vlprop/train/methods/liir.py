"""LIIR: locality-aware inter- and intra-video reconstruction (Li et al., CVPR 2022), training.

Network: ``liir_resnet18`` = MAST's encoder (stride 4, 64-d ``post_convolution``) with a learned 1-D
absolute position encoding ``P`` added after the stem (:mod:`vlprop.backbones.liir`), plus a
moving-average copy of the whole encoder (m = 0.999) that encodes the memory-bank keys.

Sample: as MAST (pairs ``g`` in {2, 5, 8} apart, 256x256, normalised Lab, one of a/b dropped), plus the
random numbers of the bank update (a circular PE shift and 4 key positions for the clip's reference).

Loss (spec §1.2-1.6; ``B`` clips, query = last frame, ``N(i)`` = the ``(2R+1)^2`` window, R = 6):

* **intra** (Eq. 1-3): ``A_ij = softmax_j <f_q(i), f_r(j)>`` jointly over the references' windows,
  ``v_hat = sum A v_r[::4]``, ``L_rec = mean smooth_l1(20 up(v_hat), 20 v_q)``;
* **inter** (Eq. 4-5, stage 2): the bank's keys of *other* videos enter only the softmax denominator,
  ``A+_ij = exp(s_ij) / (sum_N(i) exp(s) + sum_m exp(<f_q(i), n_m>))``, so mass taken by negatives shrinks
  ``v_hat`` and the same ``L_rec`` pushes them down. The bank holds ``bank_frames x bank_points``
  64-d keys: each step the EMA encoder encodes the clips' reference frames with ``P`` circularly
  shifted by a random offset (detached) and pushes ``bank_points`` random positions per frame with
  the frame's video id (FIFO; entries of the query's own video and empty slots are masked out);
* **compactness** (Eq. 7-8, stage 2): per query and reference, on its window slice ``a`` of the
  affinity: ``u_1, u_2`` = top-2 positions of ``a`` (detached), ``pi = softmax(top-2 values)``,
  ``H(p) = sum_k pi_k exp(-4 ln2 |p - u_k|^2 / w^2)`` (w = 1 cell), mask ``m = [max a > 0.5]``,
  ``L_cp = mean smooth_l1(20 a m, 20 H m)`` with weight 1.

Two-stage schedule: steps ``< stage1_iters`` intra only (lr as given, paper 1e-3); then inter +
compactness at ``stage2_lr_factor`` x lr (paper 1e-4). The paper's 30 + 5 epochs give the default
``stage1_iters = 30/35`` of the run. The bank starts filling ``ceil(bank_frames / batch)`` steps before
stage 2 so it is full when the negatives are switched on.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlprop.backbones.preprocessing import LAB

from ..distributed import gather_cat
from . import TrainingMethod, register_method
from .mast import check_reconstruction_config, embedding_backbone_kwargs, lab_clip
from .reconstruction import (
    EmbeddingNet,
    ReconstructionConfig,
    field_help as _h,
    lab_channel_dropout,
    reconstruct,
    reconstruction_loss,
    reconstruction_protocol,
    sample_pair_indices,
    strided_values,
    window_logits,
    window_values,
    zero_init_last_bn,
)


@dataclass(frozen=True)
class LIIRConfig(ReconstructionConfig):
    """LIIR training settings (paper values; reimplementation values where the paper's are lost)."""

    stage1_iters: Optional[int] = field(default=None, metadata=_h(
        "intra-only warm-up steps (default 30/35 of --iters: 30 + 5 epochs)"))
    stage2_lr_factor: float = field(default=0.1, metadata=_h("stage-2 lr multiplier (1e-3 -> 1e-4)"))
    bank_frames: int = field(default=1440, metadata=_h("memory-bank frames of other videos"))
    bank_points: int = field(default=4, metadata=_h("key points stored per bank frame"))
    momentum: float = field(default=0.999, metadata=_h("EMA momentum of the key encoder"))
    pe_shift: bool = field(default=True, metadata=_h("circularly shift the PE for bank keys"))
    compact_weight: float = field(default=1.0, metadata=_h("weight of the compactness loss (0 = off)"))
    compact_k: int = field(default=2, metadata=_h("Gaussians in the mixture (top-k)"))
    compact_threshold: float = field(default=0.5, metadata=_h("confidence above which the prior applies"))
    compact_fwhm: float = field(default=1.0, metadata=_h("Gaussian FWHM in window cells"))


def compactness_prior(a: torch.Tensor, n: int, k: int = 2, fwhm: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """LIIR's mixture-of-Gaussians target for one reference's window affinities.

    ``a`` ``[B, n*n, h, w]`` (probabilities over the ``n x n`` window, row-major). Returns
    ``(H [B, n*n, h, w], conf [B, 1, h, w])``: ``H(p) = sum_k pi_k exp(-4 ln2 |p - u_k|^2 / fwhm^2)`` with
    ``u_k`` the top-``k`` window positions and ``pi = softmax`` of the top-``k`` values; ``conf`` = the
    largest value. Built from detached quantities.
    """
    a = a.detach()
    vals, idx = a.topk(k, dim=1)  # [B, k, h, w]
    pi = torch.softmax(vals, 1)
    uy, ux = (idx // n).to(a.dtype), (idx % n).to(a.dtype)
    pos = torch.arange(n * n, device=a.device)
    py = (pos // n).to(a.dtype).view(1, 1, n * n, 1, 1)
    px = (pos % n).to(a.dtype).view(1, 1, n * n, 1, 1)
    d2 = (py - uy[:, :, None]) ** 2 + (px - ux[:, :, None]) ** 2  # [B, k, n*n, h, w]
    g = torch.exp(-4 * math.log(2) * d2 / fwhm ** 2)
    H = (pi[:, :, None] * g).sum(1)
    return H, vals.max(1, keepdim=True).values


def compactness_loss(A: torch.Tensor, n: int, k: int = 2, threshold: float = 0.5, fwhm: float = 1.0,
                     scale: float = 20.0) -> torch.Tensor:
    """``mean smooth_l1(scale * a * m, scale * H * m)`` over all references' window slices of ``A``
    ``[B, refs*n*n, h, w]``; ``m = [conf > threshold]`` (masked entries count in the mean)."""
    terms = []
    for r in range(A.shape[1] // (n * n)):
        a = A[:, r * n * n:(r + 1) * n * n]
        H, conf = compactness_prior(a, n, k, fwhm)
        m = (conf > threshold).to(a.dtype)
        terms.append(F.smooth_l1_loss(scale * a * m, scale * H * m, reduction="none"))
    return torch.cat(terms, 1).mean()


def negative_logits(query: torch.Tensor, keys: torch.Tensor, key_video: torch.Tensor, video: torch.Tensor
                    ) -> torch.Tensor:
    """Logits of the bank keys for every query cell, ``-inf`` for keys of the query's own video and
    for empty slots (``key_video < 0``). ``query`` ``[B, C, h, w]``, ``keys`` ``[M, C]``, ``key_video``
    ``[M]``, ``video`` ``[B]`` -> ``[B, M, h, w]``."""
    logits = torch.einsum("bchw,mc->bmhw", query.float(), keys.float())
    bad = (key_video[None, :] < 0) | (key_video[None, :] == video[:, None])  # [B, M]
    return logits.masked_fill(bad[:, :, None, None], float("-inf"))


class LIIRNet(EmbeddingNet):
    """Encoder + head, their moving-average copy, and the memory bank (buffers ``bank``, ``bank_video``,
    ``bank_ptr``). ``forward(x)``: online embeddings; ``forward(x, ema=True, pe_shift=s)``: EMA keys."""

    def __init__(self, backbone: nn.Module, dim: int, bank_size: int):
        super().__init__(backbone, dim)
        self.ema = nn.ModuleDict({"backbone": copy.deepcopy(backbone), "head": copy.deepcopy(self.head)})
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.register_buffer("bank", torch.zeros(bank_size, self.key_dim))
        self.register_buffer("bank_video", torch.full((bank_size,), -1, dtype=torch.long))
        self.register_buffer("bank_ptr", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor, ema: bool = False, pe_shift: torch.Tensor | None = None) -> torch.Tensor:
        if not ema:
            return super().forward(x)
        stem = getattr(self.ema["backbone"], "relu", None)
        has_pe = hasattr(stem, "pe_shift")
        self.ema.eval()
        try:
            if has_pe:
                stem.pe_shift = pe_shift
            return self.ema["head"](self.ema["backbone"](x))
        finally:
            if has_pe:
                stem.pe_shift = None

    @torch.no_grad()
    def update_ema(self, momentum: float) -> None:
        online = dict(self.backbone.named_parameters(prefix="backbone"))
        online.update(self.head.named_parameters(prefix="head"))
        for name, p in self.ema.named_parameters():
            p.mul_(momentum).add_(online[name].detach(), alpha=1 - momentum)
        online_b = dict(self.backbone.named_buffers(prefix="backbone"))
        online_b.update(self.head.named_buffers(prefix="head"))
        for name, b in self.ema.named_buffers():
            b.copy_(online_b[name])

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, video: torch.Tensor) -> None:
        """Push ``keys`` ``[n, C]`` with their video ids ``[n]`` (FIFO ring buffer)."""
        size = self.bank.shape[0]
        n = keys.shape[0]
        idx = (self.bank_ptr + torch.arange(n, device=keys.device)) % size
        self.bank[idx] = keys.to(self.bank.dtype)
        self.bank_video[idx] = video.to(self.bank_video.dtype)
        self.bank_ptr.copy_((self.bank_ptr + n) % size)


def _unwrap(net: nn.Module) -> nn.Module:
    net = getattr(net, "module", net)  # DistributedDataParallel
    return getattr(net, "core", net)   # TrainingNetwork


@register_method
class LIIR(TrainingMethod):
    """LIIR training objective (see the module docstring)."""

    name = "liir"
    summary = "LIIR: locality-aware inter- and intra-video reconstruction (Li et al., CVPR 2022)"
    Config = LIIRConfig
    defaults = {"arch": "liir_resnet18", "batch": 12, "lr": 1e-3, "weight_decay": 0.0}
    stride, layer = 4, "head"

    def __init__(self, config: LIIRConfig | None = None):
        super().__init__(config)
        self.iters: int | None = None
        self.batch = 1

    def validate(self) -> None:
        from vlprop.errors import InputError

        check_reconstruction_config(self.cfg)
        if self.cfg.bank_frames < 1 or self.cfg.bank_points < 1:
            raise InputError("bank_frames and bank_points must be >= 1")
        if not 1 <= self.cfg.compact_k <= (2 * self.cfg.radius + 1) ** 2:
            raise InputError(f"compact_k must be in 1..{(2 * self.cfg.radius + 1) ** 2}")

    def min_frames(self) -> int:
        return self.cfg.refs + 1

    def bind_run(self, iters: int, batch: int) -> None:
        self.iters, self.batch = int(iters), int(batch)

    @property
    def stage1_iters(self) -> int:
        if self.cfg.stage1_iters is not None:
            return int(self.cfg.stage1_iters)
        return int(round((self.iters or 0) * 30 / 35))

    def in_stage2(self, step: int) -> bool:
        """``step`` = completed optimiser steps before the one being computed."""
        return step >= self.stage1_iters

    def lr_multiplier(self, step: int) -> float:
        return self.cfg.stage2_lr_factor if self.in_stage2(step) else 1.0

    def backbone_kwargs(self, arch: str) -> dict:
        return embedding_backbone_kwargs(super().backbone_kwargs(arch), arch, "liir_resnet18", self.cfg.embed_dim)

    def input_preprocessing(self, backbone_preprocessing):
        return LAB

    def sample(self, entry, rng, preprocessing, train: bool = True) -> dict[str, torch.Tensor]:
        ids = sample_pair_indices(entry.num_frames, self.cfg.refs + 1, self.cfg.gaps, self.cfg.gap_probs, rng)
        lab = lab_clip(entry, ids, self.cfg.crop)
        return {"lab": lab, "drop": torch.tensor(1 + int(rng.integers(2))),
                "bank_u": torch.from_numpy(rng.random((self.cfg.bank_points + 1, 2))).float()}

    def build(self, backbone: nn.Module) -> LIIRNet:
        if self.cfg.zero_init_residual:
            zero_init_last_bn(backbone)
        self.feature_stride = int(backbone.stride)
        self.embed_layer = getattr(backbone, "layer", None) != "head"  # another trunk: its head is the run's
        return LIIRNet(backbone, self.cfg.embed_dim, self.cfg.bank_frames * self.cfg.bank_points)

    def loss(self, net: nn.Module, batch) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        core = _unwrap(net)
        step = int(getattr(self, "current_step", 0))
        stage2 = self.in_stage2(step)
        lab, drop, video = batch["lab"], batch["drop"], batch["video"]
        B, T = lab.shape[:2]
        inp, target = lab_channel_dropout(lab, drop)
        feats = net(inp.flatten(0, 1))
        feats = feats.view(B, T, *feats.shape[1:]).float()
        h, w = feats.shape[-2:]
        stride = lab.shape[-1] // w
        n = 2 * cfg.radius + 1
        with torch.autocast(feats.device.type, enabled=False):
            q = feats[:, -1]
            logits = torch.cat([window_logits(q, feats[:, k], cfg.radius) for k in range(T - 1)], 1)
            vals = torch.cat([window_values(strided_values(target[:, k], stride, (h, w)), cfg.radius)
                              for k in range(T - 1)], 2)
            neg = None
            if stage2:
                # a copy: the bank is updated in place below, after this step's logits were taken
                neg = negative_logits(q, core.bank.clone(), core.bank_video.clone(), video.to(q.device))
            v_hat, A = reconstruct(logits, vals, extra_denominator=neg)
            rec = reconstruction_loss(v_hat, target[:, -1], cfg.loss_scale)
            out = {"rec": rec.detach()}
            total = rec
            if stage2 and cfg.compact_weight > 0:
                cp = compactness_loss(A, n, cfg.compact_k, cfg.compact_threshold, cfg.compact_fwhm, cfg.loss_scale)
                total = total + cfg.compact_weight * cp
                out["compact"] = cp.detach()
            else:
                out["compact"] = torch.zeros((), device=rec.device)
        fill_from = self.stage1_iters - math.ceil(cfg.bank_frames / max(1, self.batch))
        if core.training and step >= fill_from:
            self._enqueue(net, core, inp[:, 0], batch["bank_u"], video, h, w)
        out["loss"] = total
        return out

    @torch.no_grad()
    def _enqueue(self, net, core: LIIRNet, ref_inp: torch.Tensor, u: torch.Tensor, video: torch.Tensor,
                 h: int, w: int) -> None:
        """EMA keys of the reference frames (PE circularly shifted by ``u[:, 0]``) at ``bank_points``
        positions (``u[:, 1:]``), gathered over ranks so every rank holds the same bank."""
        B = ref_inp.shape[0]
        shift = None
        if self.cfg.pe_shift:
            hs, ws = (ref_inp.shape[-2] + 1) // 2, (ref_inp.shape[-1] + 1) // 2  # stem output (stride 2)
            shift = torch.stack([(u[:, 0, 0] * hs).long().clamp_max(hs - 1),
                                 (u[:, 0, 1] * ws).long().clamp_max(ws - 1)], 1)
        keys = net(ref_inp, ema=True, pe_shift=shift).float()  # [B, C, h, w]
        ys = (u[:, 1:, 0] * h).long().clamp_max(h - 1)
        xs = (u[:, 1:, 1] * w).long().clamp_max(w - 1)
        b = torch.arange(B, device=keys.device)[:, None].expand_as(ys)
        points = keys[b, :, ys, xs].reshape(-1, keys.shape[1])  # [B*P, C]
        vids = video.to(keys.device)[:, None].expand_as(ys).reshape(-1)
        core.enqueue(gather_cat(points.contiguous()), gather_cat(vids.contiguous()))

    def after_step(self, net: nn.Module, step: int) -> None:
        _unwrap(net).update_ema(self.cfg.momentum)

    def export(self) -> dict:
        # LIIR's DAVIS protocol with vlprop's engine: joint softmax (T = 1, no top-k, no L2 norm) over
        # square windows of radius 14 on the stride-4 embedding, first frame + 5 previous (the code uses
        # {0, 5, t-1, t-3, t-5}); the compactness replacement at inference is not in the engine.
        # Another trunk's stride (e.g. EfficientNet at 8) keeps the window's size in pixels.
        return reconstruction_protocol(14, self)
