"""Spatial-then-Temporal (Li & Liu, CVPR 2023), temporal step: training.

The *spatial step* is image pre-training (the paper: MoCo/DetCo on ImageNet); here it is any weights
spec: the student starts from ``--init`` and a frozen **teacher** (``teacher_arch`` +
``teacher_weights``: ``imagenet``, e.g. the ImageNet EfficientNet-Lite, or any vlprop/reference
checkpoint) supplies the spatial correspondence prior.

Student (:data:`STUDENT_LEVELS`): ``stt_resnet18`` (stage strides (1, 2, 2, 4), no stem pool); levels
(vlprop / paper names): ``res2`` / res3 at stride 4, ``res3`` / res4 at stride 8, ``res4`` / res5 at
stride 32. Or an **EfficientNet-Lite** trunk (``--arch efficientnet_lite1 --init imagenet``, an
ImageNet start as in the paper's spatial step): ``stage1`` (stride 4), ``stage4`` (stride 8, dilated: the
layer vlprop's default model propagates) and ``stage6`` (dilated to stride 8, so the global level is a
32x32 grid for a 256 crop, not 8x8; the teacher is built at the same stride). Input (``input_space``):
``lab`` = normalised Lab with MAST's a/b channel dropout (the paper's, the default for ``stt_resnet18``);
``rgb`` = the same dropout done in Lab, then back to sRGB with the trunk's own normalisation (the default
for other trunks: an RGB-trained trunk never saw Lab, see :func:`.reconstruction.rgb_channel_dropout`).
Teacher input: RGB with the teacher's own preprocessing.

Loss (spec §2.3-2.6; query = frame 2 ``t``, reference = frame 1 ``r``):

* **pyramid reconstruction** (Eq. 4-7) on levels 0 (stride 4, radius 12) and 1 (stride 8, radius 6):
  ``c^l = softmax_j(<F_t(i), F_r(j)> / sqrt(C_l))`` over the square window ``|dy|, |dx| <= r_l``
  (truncated at the borders), ``v_hat = c^l v_r[::s_l]`` upsampled bilinearly to full resolution,
  ``L_rec^l = mean smooth_l1(20 v_hat, 20 v_t)``;
* **local correlation distillation** (Eq. 8-9): pseudo-label ``t`` = ``c^0`` 2x2-average-pooled over
  the reference grid, then over the query grid (detached; rows sum to 1/4 as in the released code,
  ``distill_norm="renorm"`` sums over the reference cells instead); student ``c^1``; entropy selection:
  ``p`` = softmax over the 169 displacements of the raw (unscaled, zero-padded) level-1 cost volume,
  ``H(i) = sum_d -log(p_d + 1e-12)`` (Eq. 8 as written), ``m_i = [H(i) > tau]`` with ``tau`` the
  ``floor(0.7 N)``-th largest ``H`` of the image (the flattened version, not the released per-row bug);
  ``L_lc = sum m_i (c^1_ij - t_ij)^2 / (N_ref sum m_i)``;
* **global correlation distillation** (Eq. 2-3): ``c_g = softmax_j(<F5_t(i), F5_r(j)> / sqrt(C5))`` over
  all reference positions, teacher ``a = softmax_j(<T5_t(i), T5_r(j)> / 0.07)`` (no L2 norm, frozen),
  ``L_gc = mean (c_g - a)^2``;
* ``L = L_rec^0 + L_rec^1 + alpha L_lc + beta L_gc`` with alpha = 1000, beta = 50.

``correlation="cosine"`` (the default for EfficientNet-Lite, a deviation): every level's features and the
teacher's are L2-normalised and each softmax above (and the entropy's) uses ``1 / corr_tau`` (0.07, STT's
evaluation temperature) instead of ``1 / sqrt(C)`` / raw. An ImageNet Lite ``stage4`` has feature norms
near 80: its raw dot products (~6000) make every softmax one-hot, so the reconstruction has no gradient and
every cell's entropy ties, which leaves the entropy selection (``H > tau``) empty.

Sample: two frames ``gap`` (5) raw frames apart, the same RandomResizedCrop (area 0.6-1, aspect 1.5-2)
resized to ``crop x crop`` and horizontal flip (p 0.5) on both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vlprop.backbones.preprocessing import LAB
from vlprop.errors import InputError

from ..data import read_clip
from . import TrainingMethod, register_method
from .reconstruction import (
    lab_channel_dropout,
    reconstruction_loss,
    rgb_channel_dropout,
    strided_values,
    window_logits,
)

# student trunk families: (stride-4 level, stride-8 level = propagation layer, global level), the global
# level's output stride, and the create_backbone layer the student is cut at
STUDENT_LEVELS = {
    "stt_resnet18": (("res2", "res3", "res4"), 32, "res4"),
    "efficientnet_lite": (("stage1", "stage4", "stage6"), 8, "stage6"),
}


def student_family(arch: str) -> str:
    """The :data:`STUDENT_LEVELS` key of ``arch`` (``efficientnet_lite0/1/2`` share one)."""
    if arch in STUDENT_LEVELS:
        return arch
    if arch.startswith("efficientnet_lite"):
        return "efficientnet_lite"
    raise InputError(f"stt trains a student with three pyramid levels: --arch stt_resnet18 or "
                     f"efficientnet_lite0/1/2, got {arch!r} (the teacher can be any backbone: --teacher-arch)")


def _h(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class STTConfig:
    """STT temporal-step settings (released config values)."""

    crop: int = field(default=256, metadata=_h("training frames are crop x crop (paper 256)"))
    gap: int = field(default=5, metadata=_h("raw frames between reference and query"))
    area_min: float = field(default=0.6, metadata=_h("RandomResizedCrop area lower bound"))
    aspect_min: float = field(default=1.5, metadata=_h("RandomResizedCrop aspect ratio range (w/h)"))
    aspect_max: float = field(default=2.0, metadata=_h("upper bound of the aspect ratio"))
    radius0: int = field(default=12, metadata=_h("window radius at stride 4 (level 0)"))
    radius1: int = field(default=6, metadata=_h("window radius at stride 8 (level 1)"))
    rec_weight0: float = field(default=1.0, metadata=_h("weight of the stride-4 reconstruction"))
    rec_weight1: float = field(default=1.0, metadata=_h("weight of the stride-8 reconstruction"))
    alpha: float = field(default=1000.0, metadata=_h("weight of the local correlation distillation"))
    beta: float = field(default=50.0, metadata=_h("weight of the global correlation distillation"))
    keep: float = field(default=0.7, metadata=_h("entropy selection: fraction T of query cells kept"))
    distill_norm: str = field(default="official", metadata=_h("pseudo-label rows: official (sum 1/4) or renorm"))
    teacher_weights: str = field(default="default", metadata=_h(
        "frozen teacher (spatial step): imagenet, a named model (default = vlprop's default model), "
        "a checkpoint or a run folder"))
    teacher_arch: str = field(default="", metadata=_h("teacher backbone (default: the checkpoint's, else resnet18)"))
    teacher_layer: str = field(default="", metadata=_h(
        "teacher layer at the student's global stride (default res4 / stage6)"))
    teacher_tau: float = field(default=0.07, metadata=_h("teacher softmax temperature"))
    loss_scale: float = field(default=20.0, metadata=_h("smooth-L1 on values scaled by this factor"))
    beta1: float = field(default=0.9, metadata=_h("Adam beta1"))
    correlation: str = field(default="auto", metadata=_h(
        "dot (the paper: softmax of raw dot products / sqrt(C), teacher raw / teacher_tau) or cosine "
        "(every level and the teacher L2-normalised, softmax at corr_tau: for trunks whose raw dot products "
        "saturate the softmax, e.g. EfficientNet-Lite); auto = dot for stt_resnet18, cosine otherwise"))
    corr_tau: float = field(default=0.07, metadata=_h("temperature of the cosine correlation"))
    input_space: str = field(default="auto", metadata=_h(
        "student input: lab (the paper: normalised Lab, a/b dropped, x1.5), rgb (the dropout done in Lab, "
        "then back to sRGB with the trunk's normalisation, for RGB-trained trunks); auto = lab for "
        "stt_resnet18, rgb for EfficientNet-Lite"))


# --------------------------------------------------------------------------- pure functions
def window_mask(h: int, w: int, radius: int, device=None) -> torch.Tensor:
    """Bool ``[h*w, h*w]``: reference cell ``j`` lies in query cell ``i``'s square window ``|dy|, |dx| <= r``."""
    y = torch.arange(h, device=device).repeat_interleave(w)
    x = torch.arange(w, device=device).repeat(h)
    return ((y[:, None] - y[None, :]).abs() <= radius) & ((x[:, None] - x[None, :]).abs() <= radius)


def local_correlation(ft: torch.Tensor, fr: torch.Tensor, radius: int | None,
                      scale: float | None = None) -> torch.Tensor:
    """``softmax_j(scale <ft(i), fr(j)>)`` over the window (all positions if ``radius`` is None), ``scale``
    default ``1 / sqrt(C)``. ``ft``, ``fr`` ``[B, C, h, w]`` -> ``[B, h*w, h*w]`` (rows: query cells,
    columns: reference cells)."""
    B, C, h, w = ft.shape
    scale = 1.0 / math.sqrt(C) if scale is None else float(scale)
    S = torch.einsum("bci,bcj->bij", ft.flatten(2).float(), fr.flatten(2).float()) * scale
    if radius is not None:
        S = S.masked_fill(~window_mask(h, w, radius, ft.device), float("-inf"))
    return torch.softmax(S, -1)


def correlation_reconstruction(c: torch.Tensor, v_ref: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``c`` ``[B, hw, hw]`` applied to reference values ``[B, 1, h, w]`` -> ``[B, 1, h, w]``."""
    h, w = size
    return torch.bmm(c, v_ref.flatten(2).transpose(1, 2).float()).transpose(1, 2).view(-1, 1, h, w)


def downsample_correlation(c0: torch.Tensor, h0: int, w0: int, norm: str = "official") -> torch.Tensor:
    """Pseudo-label of the coarse correlation from the fine one: ``c0`` ``[B, h0 w0, h0 w0]`` 2x2-average-
    pooled over the reference grid, then over the query grid -> ``[B, (h0/2)(w0/2), (h0/2)(w0/2)]``.
    ``official``: rows sum to 1/4 (released code); ``renorm``: reference cells summed (rows sum to 1)."""
    B = c0.shape[0]
    x = c0.reshape(B * h0 * w0, 1, h0, w0)
    x = F.avg_pool2d(x, 2)  # over the reference grid
    h1, w1 = x.shape[-2:]
    x = x.view(B, h0, w0, h1 * w1).permute(0, 3, 1, 2)  # [B, ref, h0, w0]
    x = F.avg_pool2d(x, 2)  # over the query grid
    t = x.flatten(2).transpose(1, 2)  # [B, query, ref]
    if norm == "renorm":
        t = t * 4
    elif norm != "official":
        raise InputError(f"distill_norm must be official or renorm, got {norm!r}")
    return t


def entropy_selection(ft: torch.Tensor, fr: torch.Tensor, radius: int, keep: float,
                      scale: float = 1.0) -> torch.Tensor:
    """STT's selection mask ``[B, h*w]`` (float 0/1, detached): ``H(i) = sum_d -log(p_d + 1e-12)`` with
    ``p`` = softmax over the ``(2r+1)^2`` displacements of the zero-padded cost volume times ``scale``
    (1 = the raw one, the paper's); keep ``H(i) > tau``, ``tau`` = the ``floor(keep * N)``-th largest
    value of the image. A saturated softmax (large raw dot products) makes every ``H`` equal and keeps
    no cell: use the cosine correlation (``STTConfig.correlation``) on such features."""
    with torch.no_grad():
        cost = window_logits(ft.float(), fr.float(), radius) * scale  # [B, D, h, w]
        p = torch.softmax(cost, 1)
        H = (-torch.log(p + 1e-12)).sum(1).flatten(1)  # [B, N]
        N = H.shape[1]
        k = max(1, int(math.floor(keep * N)))
        tau = H.sort(1, descending=True).values[:, k - 1:k]
        return (H > tau).float()


def local_distillation_loss(c1: torch.Tensor, t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``sum_i sum_j m_i (c1_ij - t_ij)^2 / (N_ref * sum_i m_i)``; ``c1``, ``t`` ``[B, N, N_ref]``, ``m`` ``[B, N]``."""
    n_ref = c1.shape[-1]
    num = (m[:, :, None] * (c1 - t) ** 2).sum()
    return num / (n_ref * m.sum().clamp_min(1.0))


def global_distillation_loss(st: torch.Tensor, sr: torch.Tensor, tt: torch.Tensor, tr: torch.Tensor,
                             tau: float = 0.07, scale: float | None = None) -> torch.Tensor:
    """``mean (softmax_j(scale <st, sr>) - softmax_j(<tt, tr>/tau))^2`` (``scale`` default ``1/sqrt(C)``);
    student maps ``[B, C, h, w]``, teacher maps ``[B, C', h, w]`` (the teacher side carries no gradient)."""
    cg = local_correlation(st, sr, None, scale)
    with torch.no_grad():
        a = torch.softmax(torch.einsum("bci,bcj->bij", tt.flatten(2).float(), tr.flatten(2).float()) / tau, -1)
    return ((cg - a) ** 2).mean()


# --------------------------------------------------------------------------- network
class STTNet(nn.Module):
    """Student trunk; ``forward(x)`` -> its layers, of which ``levels`` (e.g. ``res2, res3, res4`` = paper
    res3/res4/res5) are the stride-4, stride-8 and global ones. The frozen
    teacher is held outside the module tree (rebuilt from its weights spec: not trained, not saved)."""

    def __init__(self, backbone: nn.Module, teacher: nn.Module,
                 levels: tuple[str, str, str] = ("res2", "res3", "res4")):
        super().__init__()
        self.backbone = backbone
        self.levels = tuple(levels)
        self.head = nn.Identity()
        self.key_dim = 0
        object.__setattr__(self, "teacher", teacher.eval())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.backbone.forward_layers(x)

    @property
    def propagation_backbone(self) -> nn.Module:
        """What label propagation uses during validation: the stride-8 level (``res3`` = paper res4)."""
        return LayerView(self.backbone, self.levels[1], 8)


class LayerView(nn.Module):
    """``forward(x) = trunk.forward_layers(x)[layer]`` with the backbone contract's attributes."""

    def __init__(self, trunk: nn.Module, layer: str, stride: int):
        super().__init__()
        self.trunk = trunk
        self.layer, self.stride = layer, int(stride)
        self.out_dim = int(trunk.spec.stage_dim(layer)) if hasattr(trunk, "spec") else None
        self.preprocessing = getattr(trunk, "preprocessing", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk.forward_layers(x)[self.layer]


def _unwrap(net: nn.Module) -> nn.Module:
    net = getattr(net, "module", net)
    return getattr(net, "core", net)


@register_method
class STT(TrainingMethod):
    """Spatial-then-Temporal temporal step (see the module docstring)."""

    name = "stt"
    summary = "Spatial-then-Temporal: pyramid reconstruction + local/global correlation distillation (CVPR 2023)"
    Config = STTConfig
    defaults = {"arch": "stt_resnet18", "batch": 64, "lr": 5e-5, "weight_decay": 0.0}
    stride, layer = 8, "res4"

    def validate(self) -> None:
        c = self.cfg
        if c.crop % 32:
            raise InputError(f"stt needs --crop to be a multiple of 32 (res5 at stride 32), got {c.crop}")
        if c.gap < 1 or not 0 < c.area_min <= 1 or not 0 < c.aspect_min <= c.aspect_max or not 0 < c.keep <= 1:
            raise InputError("stt: gap >= 1, 0 < area_min <= 1, 0 < aspect_min <= aspect_max, 0 < keep <= 1")
        if c.distill_norm not in ("official", "renorm"):
            raise InputError(f"distill_norm must be official or renorm, got {c.distill_norm!r}")
        if c.correlation not in ("auto", "dot", "cosine") or c.corr_tau <= 0:
            raise InputError(f"correlation must be auto, dot or cosine and corr_tau > 0, got "
                             f"{c.correlation!r}, {c.corr_tau}")
        if c.input_space not in ("auto", "lab", "rgb"):
            raise InputError(f"input_space must be auto, lab or rgb, got {c.input_space!r}")

    def min_frames(self) -> int:
        return 2

    # set by build() from the student's arch (class default: stt_resnet18)
    _family = "stt_resnet18"

    @property
    def levels(self) -> tuple[str, str, str]:
        return STUDENT_LEVELS[self._family][0]

    @property
    def input_space(self) -> str:
        c = self.cfg.input_space
        return c if c != "auto" else ("lab" if self._family == "stt_resnet18" else "rgb")

    @property
    def correlation(self) -> str:
        c = self.cfg.correlation
        return c if c != "auto" else ("dot" if self._family == "stt_resnet18" else "cosine")

    def input_preprocessing(self, backbone_preprocessing):
        return backbone_preprocessing if self.input_space == "rgb" else LAB

    def backbone_kwargs(self, arch: str) -> dict:
        return {"stride": 8, "layer": STUDENT_LEVELS[student_family(arch)][2]}

    def sample(self, entry, rng, preprocessing, train: bool = True) -> dict[str, torch.Tensor]:
        c = self.cfg
        gap = min(c.gap, entry.num_frames - 1)
        start = int(rng.integers(0, entry.num_frames - gap))
        images = read_clip(entry, [start, start + gap])
        W, H = images[0].size
        # RandomResizedCrop (torchvision's rule, 10 attempts, else the whole frame)
        box = (0, 0, W, H)
        for _ in range(10):
            area = W * H * rng.uniform(c.area_min, 1.0)
            ratio = math.exp(rng.uniform(math.log(c.aspect_min), math.log(c.aspect_max)))
            w = int(round(math.sqrt(area * ratio)))
            h = int(round(math.sqrt(area / ratio)))
            if 0 < w <= W and 0 < h <= H:
                top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
                box = (left, top, left + w, top + h)
                break
        flip = bool(rng.random() < 0.5)
        out = []
        for im in images:
            im = im.convert("RGB").crop(box).resize((c.crop, c.crop), resample=2)  # bilinear
            x = torch.from_numpy(np.array(im)).permute(2, 0, 1).float().div_(255.0)
            out.append(x.flip(-1) if flip else x)
        return {"rgb": torch.stack(out), "drop": torch.tensor(1 + int(rng.integers(2)))}

    def build(self, backbone: nn.Module) -> STTNet:
        arch = getattr(backbone, "arch", None) or type(backbone).__name__
        try:
            self._family = student_family(arch)
        except InputError:
            if not hasattr(backbone, "set_layer4_stride"):
                raise
            self._family = "stt_resnet18"  # a custom trunk with stt_resnet18's interface (res2/res3/res4)
        if self._family == "stt_resnet18":
            backbone.set_layer4_stride(4)
        levels, global_stride, _ = STUDENT_LEVELS[self._family]
        return STTNet(backbone, self.build_teacher(global_stride), levels)

    def build_teacher(self, stride: int = 32) -> nn.Module:
        """The frozen teacher at output stride ``stride`` (the student's global level; its deepest ResNet /
        EfficientNet layer by default)."""
        from vlprop.backbones import create_backbone
        from vlprop.backbones.registry import backbone_factory
        from vlprop.model import named_model, recorded_arch, resolve_weights

        c = self.cfg
        nm = named_model(c.teacher_weights) if c.teacher_weights not in ("imagenet", "random") else None
        arch = c.teacher_arch or (nm.backbone if nm else None) or recorded_arch(c.teacher_weights) or "resnet18"
        weights = resolve_weights(c.teacher_weights)
        layers = getattr(backbone_factory(arch), "layers", None)
        strides = getattr(backbone_factory(arch), "strides", None)
        kw = {}
        layer = c.teacher_layer or next((n for n in ("res4", "stage6") if layers is None or n in layers), "")
        if layer:
            kw["layer"] = layer
        if strides is None or stride in strides:
            kw["stride"] = stride
        if weights == "imagenet":
            from ..trainer import _check_imagenet_available

            _check_imagenet_available(arch)
        teacher = create_backbone(arch, weights=weights, **kw)
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher.eval()

    def loss(self, net: nn.Module, batch) -> dict[str, torch.Tensor]:
        from ..augment import normalize

        c = self.cfg
        core = _unwrap(net)
        rgb, drop = batch["rgb"], batch["drop"]
        B = rgb.shape[0]
        if self.input_space == "rgb":
            # the trunk's own normalisation (the trainer records the method's input on the backbone)
            inp, target = rgb_channel_dropout(rgb, drop, core.backbone.preprocessing)
        else:
            inp, target = lab_channel_dropout(normalize(rgb, LAB), drop)
        levels = net(inp.flatten(0, 1))
        with torch.autocast(rgb.device.type, enabled=False):
            f0, f1, f5 = (levels[k].float().view(B, 2, *levels[k].shape[1:]) for k in self.levels)
            cosine = self.correlation == "cosine"
            scale, h_scale = (1.0 / c.corr_tau, 1.0 / c.corr_tau) if cosine else (None, 1.0)
            if cosine:
                f0, f1, f5 = (F.normalize(f, dim=2) for f in (f0, f1, f5))
            out: dict[str, torch.Tensor] = {}
            total = 0.0
            corr = {}
            for lvl, (f, r, wgt) in enumerate(((f0, c.radius0, c.rec_weight0), (f1, c.radius1, c.rec_weight1))):
                h, w = f.shape[-2:]
                s = rgb.shape[-1] // w
                cl = local_correlation(f[:, 1], f[:, 0], r, scale)
                v_hat = correlation_reconstruction(cl, strided_values(target[:, 0], s, (h, w)), (h, w))
                rec = reconstruction_loss(v_hat, target[:, 1], c.loss_scale)
                out[f"rec{lvl}"] = rec.detach()
                total = total + wgt * rec
                corr[lvl] = cl
            t = downsample_correlation(corr[0].detach(), *f0.shape[-2:], norm=c.distill_norm)
            m = entropy_selection(f1[:, 1], f1[:, 0], c.radius1, c.keep, h_scale)
            lc = local_distillation_loss(corr[1], t, m)
            teacher = core.teacher
            tp = next(teacher.parameters())
            if tp.device != rgb.device:
                teacher.to(rgb.device)
            with torch.no_grad():
                tin = normalize(rgb.flatten(0, 1), getattr(teacher, "preprocessing", None))
                tf = teacher(tin).float()
                if cosine:
                    tf = F.normalize(tf, dim=1)
            tf = tf.view(B, 2, *tf.shape[1:])
            if tf.shape[-2:] != f5.shape[-2:]:
                raise InputError(f"teacher grid {tuple(tf.shape[-2:])} differs from the student's global grid "
                                 f"{tuple(f5.shape[-2:])} ({self.levels[2]}); give the teacher the same stride")
            gc = global_distillation_loss(f5[:, 1], f5[:, 0], tf[:, 1], tf[:, 0], c.teacher_tau, scale)
            total = total + c.alpha * lc + c.beta * gc
            out.update(local=lc.detach(), glob=gc.detach())
        out["loss"] = total
        return out

    def export(self) -> dict:
        # STT's DAVIS protocol: res4 (vlprop res3 of stt_resnet18, stride 8), L2-normalised, T = 0.07,
        # top-10, first + 20 previous, square window side 24 (radius 12) on every context frame.
        return {"preset": "dul", "layer": self.levels[1], "settings": {
            "temperature": 0.07, "topk": 10, "context": 20, "window": "square", "radius": 12,
            "window_long_term": True, "feature_norm": True}}
