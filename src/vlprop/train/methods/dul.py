"""DUL: dense unsupervised learning by space-time self-training (Araslanov et al., NeurIPS 2021).

Network: a backbone (ResNet-18, output stride 8, ``res4``, 512-d) and the key head
``Conv1x1(512,512) - BN - ReLU - Conv1x1(512,128)``; the key is L2-normalised over channels.

Loss for a batch of ``B`` clips of ``T`` frames in two views (A = identity, B = flip + zoom-in with
the affine ``theta``: view-B -> view-A normalised coordinates, see :mod:`vlprop.train.augment`):

* **anchors**: on the reference frame (index 0) of view A, one key per cell of an ``N x N`` grid at a
  per-clip random offset -> ``B*N^2`` anchors ``q``;
* **space-time self-training** (``temp``): student = view-A keys of frames ``1..T-1`` warped into
  view-B geometry (``grid_sample`` nearest via ``theta``), logits ``<k, q>/tau`` over *all* anchors of
  the batch (other clips' anchors are negatives); teacher = view-B keys of the same frames (computed
  without gradient), pseudo label = arg-max over the anchors of the *same* clip; cross-entropy
  averaged over all pixels of frames ``1..T-1``;
* **cross-view** (``cross``): on the reference frames, keys at an ``M x M`` jittered grid of
  warped view A (rows) and view B (columns), logits ``/tau`` over all ``B*M^2`` points, target = the
  diagonal (InfoNCE across views);
* total = ``temp + lambda * cross``.

Differences from the reference code (documented fixes): the anchor grid works for feature maps whose
size is not divisible by ``N`` (cells of size ``floor`` / ``ceil``, one random fractional offset per
clip); anchor offsets come from the data sample (``anchor_u``), not a global RNG, so distributed and
resumed runs are reproducible; the student logits are warped by warping the keys (identical for
nearest sampling, ``K/(B*N^2)`` of the cost); the teacher's pseudo labels use only same-clip logits
(identical to softmax -> block mask -> arg-max, without the ``[pixels, B*N^2]`` softmax).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from vlprop.errors import InputError

from ..augment import AugmentConfig, augment_clip
from ..data import read_clip, sample_clip_indices
from ..distributed import gather_cat, is_distributed
from . import TrainingMethod, register_method


def _h(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class DULConfig:
    """DUL hyper-parameters (paper / reference defaults; the crop is the YouTube-VOS 256)."""

    key_dim: int = field(default=128, metadata=_h("key (embedding) channels"))
    tau: float = field(default=0.05, metadata=_h("softmax temperature"))
    grid: int = field(default=8, metadata=_h("anchor grid N per side on the reference frame"))
    grid_ref: int = field(default=4, metadata=_h("cross-view grid M per side"))
    cross_weight: float = field(default=0.1, metadata=_h("lambda of the cross-view term"))
    frames: int = field(default=5, metadata=_h("frames per clip T"))
    gap: int = field(default=5, metadata=_h("DUL FRAME_GAP: clip window gap*T frames"))
    shuffle_frames: bool = field(default=True, metadata=_h("random frame order (reference = a random frame)"))
    crop: int = field(default=256, metadata=_h("square crop in pixels"))
    scale_min: Optional[int] = field(default=None, metadata=_h("smallest-side range lower bound (default crop)"))
    scale_max: Optional[int] = field(default=None, metadata=_h("smallest-side upper bound (default 1.25*crop)"))
    random_crop: bool = field(default=True, metadata=_h("random (else centre) crop"))
    zoom_min: float = field(default=0.5, metadata=_h("view-B zoom s ~ U[zoom_min, 1]"))
    beta1: float = field(default=0.5, metadata=_h("Adam beta1"))

    def to_dict(self) -> dict:
        return asdict(self)

    def augment(self) -> AugmentConfig:
        lo = self.scale_min if self.scale_min is not None else self.crop
        hi = self.scale_max if self.scale_max is not None else max(lo, int(round(1.25 * self.crop)))
        return AugmentConfig(crop=self.crop, smallest_range=(lo, hi), random_crop=self.random_crop,
                             zoom_range=(self.zoom_min, 1.0) if self.zoom_min < 1 else None)


class DULHead(nn.Sequential):
    """Key head ``Conv1x1(d, d) - BN - ReLU - Conv1x1(d, key_dim)`` on backbone features ``[B, d, h, w]``."""

    def __init__(self, in_dim: int = 512, key_dim: int = 128):
        super().__init__()
        self.add_module("conv1", nn.Conv2d(in_dim, in_dim, 1))
        self.add_module("bn1", nn.BatchNorm2d(in_dim))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv2", nn.Conv2d(in_dim, key_dim, 1))


class DULNet(nn.Module):
    """Backbone + key head. ``forward(x [B,3,H,W]) -> L2-normalised keys [B, key_dim, h, w]``.

    ``backbone`` must follow the backbones contract (``stride`` and ``out_dim`` attributes).
    """

    def __init__(self, backbone: nn.Module, key_dim: int = 128):
        super().__init__()
        self.backbone = backbone
        self.head = DULHead(int(backbone.out_dim), key_dim)
        self.stride = int(backbone.stride)
        self.key_dim = int(key_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.backbone(x)), dim=1)


# --------------------------------------------------------------------------- pure functions
def grid_positions(length: int, n: int, u: torch.Tensor) -> torch.Tensor:
    """One position per cell of an ``n``-cell split of ``[0, length)``, at fraction ``u`` of each cell.

    Cells are ``[floor(i*L/n), floor((i+1)*L/n))`` (sizes differ by at most one when ``n`` does not
    divide ``L``). ``u`` ``[b]`` in ``[0, 1)`` (one offset per clip) -> long ``[b, n]``. When ``n``
    divides ``L`` this is DUL's grid ``i*L/n + randint(L/n)``.
    """
    if length < n:
        raise InputError(f"feature map side {length} is smaller than the anchor grid ({n}); "
                         f"use a larger crop or a smaller grid")
    i = torch.arange(n + 1, device=u.device)
    edges = (i * length) // n
    start, width = edges[:-1], edges[1:] - edges[:-1]
    off = torch.floor(u.to(torch.float64)[:, None] * width[None, :]).long()
    return start[None, :] + torch.minimum(off, width[None, :] - 1)


def grid_index(h: int, w: int, n: int, u_y: torch.Tensor, u_x: torch.Tensor) -> torch.Tensor:
    """Flat indices ``y*w + x`` ``[b, n*n]`` of an ``n x n`` jittered grid on an ``h x w`` map (row-major)."""
    ys = grid_positions(h, n, u_y)  # [b, n]
    xs = grid_positions(w, n, u_x)
    return (ys[:, :, None] * w + xs[:, None, :]).flatten(1)


def sample_grid(feats: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Gather ``feats`` ``[b, K, h, w]`` at flat ``index`` ``[b, P]`` -> ``[b*P, K]`` (clip-major)."""
    b, K = feats.shape[:2]
    flat = feats.flatten(2)  # [b, K, hw]
    picked = flat.gather(2, index[:, None, :].expand(b, K, index.shape[1]))  # [b, K, P]
    return picked.transpose(1, 2).reshape(-1, K)


def warp_to_view_b(feats_a: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample view-A maps ``[n, C, h, w]`` into view-B geometry (nearest) with ``theta`` ``[n, 2, 3]``."""
    grid = F.affine_grid(theta.to(feats_a.dtype), list(feats_a.shape), align_corners=False)
    return F.grid_sample(feats_a, grid, mode="nearest", padding_mode="zeros", align_corners=False)


@torch.no_grad()
def pseudo_labels(keys_b: torch.Tensor, anchors: torch.Tensor, first_clip: int = 0) -> torch.Tensor:
    """Teacher labels: for every pixel of view-B keys ``[b, T', K, h, w]`` the index of its most similar
    anchor *of the same clip*; ``anchors`` ``[b, P, K]`` are the clips' own anchors. Returns long
    ``[b, T', h, w]`` indices into the global anchor list (clip ``c`` owns ``(first_clip + c)*P ...``)."""
    b, t, K, h, w = keys_b.shape
    P = anchors.shape[1]
    sim = torch.einsum("bpk,btkn->btpn", anchors.to(keys_b.dtype), keys_b.flatten(3))  # [b, T', P, hw]
    best = sim.argmax(2)  # [b, T', hw]
    clip = torch.arange(b, device=keys_b.device).view(b, 1, 1) + first_clip
    return (best + clip * P).view(b, t, h, w)


def space_time_loss(student: torch.Tensor, pseudo: torch.Tensor, anchors: torch.Tensor, tau: float) -> torch.Tensor:
    """Cross-entropy of student logits ``<k, q>/tau`` against the pseudo labels.

    ``student`` ``[n, K, h, w]`` (view-A keys already warped into view B), ``pseudo`` long ``[n, h, w]``,
    ``anchors`` ``[A, K]`` (all anchors of the batch). Mean over the ``n*h*w`` pixels.
    """
    K = student.shape[1]
    keys = student.permute(0, 2, 3, 1).reshape(-1, K)
    logits = keys @ anchors.t() / tau  # [n*h*w, A]
    return F.cross_entropy(logits, pseudo.reshape(-1))


def cross_view_loss(ref_a: torch.Tensor, ref_b: torch.Tensor, index: torch.Tensor, tau: float,
                    first_point: int = 0, gather=gather_cat) -> torch.Tensor:
    """InfoNCE between aligned reference-frame keys of the two views.

    ``ref_a`` (view A warped into view B) and ``ref_b`` ``[b, K, h, w]``; ``index`` ``[b, P]`` grid
    positions. Rows: the ``b*P`` view-A points of this process; columns: the view-B points of the
    whole batch (``gather``); the target of row ``i`` is column ``first_point + i``.
    """
    ra = sample_grid(ref_a, index)
    rb = gather(sample_grid(ref_b, index))
    logits = ra @ rb.t() / tau
    target = torch.arange(ra.shape[0], device=ra.device) + first_point
    return F.cross_entropy(logits, target)


# --------------------------------------------------------------------------- the method
@register_method
class DUL(TrainingMethod):
    """DUL training objective. ``loss(net, batch)`` -> dict with ``loss`` (to minimise), ``temp``, ``cross``.

    ``net`` maps frames ``[n, 3, H, W]`` to L2-normalised keys (a :class:`DULNet`, possibly wrapped in
    ``DistributedDataParallel``). ``batch``: ``view_a``/``view_b`` ``[b, T, 3, H, W]``, ``theta``
    ``[b, 2, 3]``, ``anchor_u`` ``[b, 4]`` (see :class:`vlprop.train.data.ClipDataset`). Under
    ``torch.distributed`` each process holds ``b`` clips of the global batch in rank order and the
    anchors / cross-view points are gathered, so the loss equals the single-process loss.
    """

    name = "dul"
    summary = "DUL: space-time self-training with two views (Araslanov et al., NeurIPS 2021)"
    Config = DULConfig
    defaults = {"arch": "resnet18", "batch": 8, "lr": 1e-4, "weight_decay": 5e-4}
    stride, layer = 8, "res4"

    def __init__(self, config: DULConfig | None = None):
        super().__init__(config or DULConfig())

    def min_frames(self) -> int:
        return self.cfg.frames

    def validate(self) -> None:
        if self.cfg.frames < 2:
            raise InputError("DUL needs at least 2 frames per clip (--frames)")
        if self.cfg.gap < 1:
            raise InputError(f"gap must be >= 1, got {self.cfg.gap}")
        self.cfg.augment()  # checks crop / scale / zoom

    def sample(self, entry, rng, preprocessing, train: bool = True) -> dict[str, torch.Tensor]:
        """DUL's rule: ``T`` frames ``min(n, gap*T)//T`` apart, shuffled; two views of one shared
        transform (see :func:`vlprop.train.augment.augment_clip`) and 4 anchor-grid offsets."""
        aug = self.cfg.augment()
        if not train:
            aug = replace(aug, random_crop=False)
        ids = sample_clip_indices(entry.num_frames, self.cfg.frames, self.cfg.gap, rng, self.cfg.shuffle_frames)
        images = read_clip(entry, ids, draft=aug.scale_range[1])
        item = augment_clip(images, rng, aug, preprocessing)
        item["anchor_u"] = torch.from_numpy(rng.random(4)).float()
        return item

    def build(self, backbone: nn.Module) -> DULNet:
        return DULNet(backbone, self.cfg.key_dim)

    def parameter_groups(self, net: nn.Module, lr: float, weight_decay: float) -> list[dict]:
        return parameter_groups(net, lr, weight_decay)

    def export(self) -> dict:
        return {"preset": "dul", "settings": {}}

    def loss(self, net: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        va, vb, theta, u = batch["view_a"], batch["view_b"], batch["theta"], batch["anchor_u"]
        b, T = va.shape[:2]
        if T < 2:
            raise InputError("DUL needs clips of at least 2 frames")
        rank = dist.get_rank() if is_distributed() else 0

        # One pass with gradient over view A and the view-B reference frames; the other view-B
        # frames only feed arg-max pseudo labels, so they never need a gradient.
        keys = net(torch.cat([va.flatten(0, 1), vb[:, 0]], 0)).float()
        K, h, w = keys.shape[1:]
        ka = keys[: b * T].view(b, T, K, h, w)
        kb0 = keys[b * T:]
        with torch.no_grad():
            kb = net(vb[:, 1:].flatten(0, 1)).float().view(b, T - 1, K, h, w)

        # The losses run in float32 even inside an AMP region (logits /tau overflow fp16 easily).
        with torch.autocast(keys.device.type, enabled=False):
            n2 = cfg.grid ** 2
            idx = grid_index(h, w, cfg.grid, u[:, 0], u[:, 1])
            q_own = sample_grid(ka[:, 0], idx)  # [b*N^2, K]
            q_all = gather_cat(q_own)
            theta = theta.float()
            theta_t = theta[:, None].expand(b, T - 1, 2, 3).reshape(-1, 2, 3)
            student = warp_to_view_b(ka[:, 1:].flatten(0, 1), theta_t)  # [b(T-1), K, h, w]
            pseudo = pseudo_labels(kb, q_own.detach().view(b, n2, K), first_clip=rank * b)
            temp = space_time_loss(student, pseudo.flatten(0, 1), q_all, cfg.tau)

            m2 = cfg.grid_ref ** 2
            idx_ref = grid_index(h, w, cfg.grid_ref, u[:, 2], u[:, 3])
            ref_a = warp_to_view_b(ka[:, 0], theta)
            cross = cross_view_loss(ref_a, kb0, idx_ref, cfg.tau, first_point=rank * b * m2)

        total = temp + cfg.cross_weight * cross
        return {"loss": total, "temp": temp.detach(), "cross": cross.detach()}


def parameter_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """DUL's optimiser groups: weights (incl. BN scales) at ``lr`` with weight decay; biases at
    ``2*lr`` without weight decay."""
    weights, biases = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (biases if name.endswith("bias") else weights).append(p)
    return [{"params": weights, "lr": lr, "weight_decay": weight_decay, "name": "weights"},
            {"params": biases, "lr": 2 * lr, "weight_decay": 0.0, "name": "biases"}]


def build_optimizer(model: nn.Module, lr: float = 1e-4, weight_decay: float = 5e-4,
                    betas: tuple[float, float] = (0.5, 0.999)) -> torch.optim.Adam:
    """Adam over :func:`parameter_groups` (DUL: beta1 = 0.5; L2 weight decay as in ``torch.optim.Adam``)."""
    return torch.optim.Adam(parameter_groups(model, lr, weight_decay), lr=lr, betas=betas)
