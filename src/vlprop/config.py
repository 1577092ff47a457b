"""Propagation settings and the named presets that reproduce each reference system.

A :class:`Preset` bundles three things: the propagation algorithm (:class:`PropagationConfig`, the
knobs of McKee et al.'s unified algorithm plus Waldmann et al.'s), how labels are moved between
pixels and the feature grid (:class:`LabelConfig`), and which feature layer / input scale the
reference used (:class:`FeatureConfig`, which may name the backbone the preset runs on by default). The
weights are chosen separately.

Defaults are the *correct* versions of each reference; documented quirks of the reference code are
reproduced only when ``compat=True`` is asked for (see ``Preset.compat_flags``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .errors import InputError

AGGREGATIONS = ("overall", "per-frame")
NORMALIZERS = ("softmax", "exp", "sum")
NORM_STAGES = ("topk", "after-restriction", "before-restriction")
WINDOWS = ("none", "square", "disk")
LOCALIZATIONS = ("window", "track", "roi")
REFERENCE_SETS = ("recent", "mast")
LABEL_NORMS = ("none", "channel-minmax", "pixel-minmax")
LABEL_DOWNSAMPLES = ("area", "bilinear", "nearest")
KEYPOINT_KERNELS = ("gaussian", "cauchy")
KEYPOINT_BACKGROUNDS = ("binary", "complement", "none")
KEYPOINT_DECODERS = ("argmax", "topk", "cog", "parabolic", "gaussian", "fit", "upsample", "moments")
# network input colour spaces (the same names as vlprop.backbones.colorspace.COLORSPACES; a test keeps them equal)
COLORSPACES = ("rgb", "lab", "lab_l")


@dataclass(frozen=True)
class PropagationConfig:
    """All knobs of the propagation algorithm (DESIGN §4).

    For target location ``j`` the candidates are the locations of every context frame, restricted by
    the spatial window. Affinity = dot product of (optionally L2-normalised) features.

    aggregation: ``overall`` = one top-k over the candidates of all context frames jointly (CRW);
        ``per-frame`` = top-k and normalisation per context frame, predictions averaged over frames.
    topk: number of neighbours kept per target location and aggregation group (0 = all).
    normalizer: ``softmax`` = exp(a/T)/sum (max-shifted), ``exp`` = the same weights computed as DINO
        does (exp(a/T) then divide by the sum), ``sum`` = a/sum(a) on raw affinities.
    norm_stage: which set the normaliser's denominator runs over: ``topk`` = the k survivors
        (CRW/DINO); ``after-restriction`` = all candidates inside the window, top-k weights are then
        used without renormalising (MAST/CorrFlow); ``before-restriction`` = all locations of the
        group, window applied afterwards (UVC, McKee Alg. 1 per-frame).
    context: number of preceding frames kept in the short-term memory.
    long_term: number of labelled reference frames kept for good (the first frame(s)).
    window: spatial restriction ``none`` | ``square`` (Chebyshev distance <= radius, DINO/WALD) |
        ``disk`` (Euclidean distance < radius, strict, CRW/DUL), in grid cells.
    window_long_term: also restrict the long-term (first) frame(s); CRW/DUL exempt them.
    feature_norm: L2-normalise features over channels before the dot products.
    label_norm: applied to each propagated label map before it is stored and returned:
        ``channel-minmax`` (per channel over space, WALD/UVC), ``pixel-minmax`` (per location over
        channels, CRW ``--norm_mask``).
    requantize: feed back hard one-hot labels (argmax) instead of soft ones (WALD recreate_labels).
    compat_pad_first: reference quirk of CRW/DUL: before ``context`` frames exist, the short-term
        memory is filled with copies of the first frame (duplicated candidates).
    compat_mask_before_exp: reference quirk of WALD (full + window + dino): out-of-window candidates get
        affinity 0 (weight exp(0)) instead of being excluded.
    compat_softmax_zeros: reference quirk of WALD's softmax normalisers: the softmax runs over *all*
        candidates of all context frames with the non-top-k ones set to 0 (each gets weight exp(0)), so
        mass leaks away from the k survivors.

    Localisation variants (McKee Tab. 4 and the seeds; all tested equal to naive dense implementations):

    references: which earlier frames form the context of target ``t``: ``recent`` = the long-term frame(s) + the
        ``context`` previous frames; ``mast`` = MAST/LIIR's sparse set ``{0, 5} U {t-1, t-3, t-5}`` (frame 5 once
        it exists; frame indices counted from the labelled frame; ``context`` is then unused).
    localization: ``window`` = the fixed ``window`` above (or none); ``roi`` = MAST's predicted region: a
        reference more than ``roi_after`` frames back is matched in a square window of ``radius`` cells centred
        at ``i + o(i)``, where ``o(i) = d * sum_delta p(delta) delta`` is the soft-argmax of a coarse dilated
        correlation (dilation ``d = min(roi_max_dilation, (t - r) // roi_after + 1)``, offsets
        ``delta in [-roi_radius, roi_radius]^2``, features outside the frame 0, ``p = softmax(a / T)``);
        features and labels of that window are sampled bilinearly at the real-valued positions (a sample is a
        candidate when it touches the frame; corners outside count as zero); nearer references use the fixed
        square window. Needs ``aggregation='overall'``, ``topk=0`` and ``norm_stage='topk'`` (one softmax over
        the union of the windows, as MAST). ``track`` = UVC's per-object box (see ``track_*``).
    compat_mast_roi: MAST's two ROI bugs: the labels of every long-range reference are sampled with the offset of
        the last long-range reference computed, and the bilinear sampling maps a grid position ``p`` to
        ``p * n / (n - 1) - 0.5`` (``grid_sample`` without ``align_corners=True`` on ``(n - 1)``-normalised
        coordinates).
    compactness_k: LIIR's spatial compactness prior at inference (0 = off, LIIR 2): per target location and
        reference frame, the joint weights of that frame's window are replaced by a mixture of
        ``compactness_k`` Gaussian bumps ``exp(-4 ln2 |p - u_m|^2 / fwhm^2)`` centred at the frame's top-k
        candidates ``u_m``, mixed by the softmax of their weights, wherever the frame's largest weight exceeds
        ``compactness_threshold`` (LIIR 0.1; not renormalised). Needs ``aggregation='overall'``, ``topk=0``,
        ``norm_stage='topk'`` and a window on every frame (the prior lives on the reference window).
    compactness_fwhm: full width at half maximum of the bumps, in grid cells (LIIR 1).
    foreground_boost: factor on the label channels >= 1 of every prediction before it is returned and stored
        (LIIR's evaluation multiplies reference foreground labels by 1.05; by linearity the same).
    """

    aggregation: str = "overall"
    topk: int = 10
    normalizer: str = "softmax"
    temperature: float = 0.05
    norm_stage: str = "topk"
    context: int = 20
    long_term: int = 1
    window: str = "disk"
    radius: float = 12.0
    window_long_term: bool = False
    feature_norm: bool = True
    label_norm: str = "none"
    requantize: bool = False
    compat_pad_first: bool = False
    compat_mask_before_exp: bool = False
    compat_softmax_zeros: bool = False
    references: str = "recent"
    localization: str = "window"
    roi_after: int = 15
    roi_radius: int = 12
    roi_max_dilation: int = 4
    compat_mast_roi: bool = False
    compactness_k: int = 0
    compactness_threshold: float = 0.1
    compactness_fwhm: float = 1.0
    foreground_boost: float = 1.0
    track_init_margin: float = 0.6
    track_margin: float = 1.0
    track_ema: float = 0.1
    track_bandwidth: float = 5.0
    track_sigma: float = 4.0
    track_mad: float = 2.0

    def __post_init__(self) -> None:
        _check_types(self)
        _check_choice("aggregation", self.aggregation, AGGREGATIONS)
        _check_choice("normalizer", self.normalizer, NORMALIZERS)
        _check_choice("norm_stage", self.norm_stage, NORM_STAGES)
        _check_choice("window", self.window, WINDOWS)
        _check_choice("label_norm", self.label_norm, LABEL_NORMS)
        if self.topk < 0:
            raise InputError(f"topk must be >= 0 (0 keeps all candidates), got {self.topk}")
        if self.temperature <= 0:
            raise InputError(f"temperature must be > 0, got {self.temperature}")
        if self.context < 0 or self.long_term < 1:
            raise InputError(f"context must be >= 0 and long_term >= 1, got {self.context}, {self.long_term}")
        if self.window != "none" and self.radius <= 0:
            raise InputError(f"radius must be > 0 for window {self.window!r}, got {self.radius}")
        if self.compat_softmax_zeros and (self.normalizer != "softmax" or self.norm_stage != "topk"):
            raise InputError("compat_softmax_zeros reproduces WALD's softmax leak; it needs normalizer='softmax' "
                             "and norm_stage='topk'")
        if self.compat_mask_before_exp and self.normalizer != "exp":
            raise InputError("compat_mask_before_exp reproduces WALD's 'dino' order bug; it needs normalizer='exp'")
        _check_choice("references", self.references, REFERENCE_SETS)
        _check_choice("localization", self.localization, LOCALIZATIONS)
        joint = self.aggregation == "overall" and self.topk == 0 and self.norm_stage == "topk"
        if self.localization == "roi":
            if not joint:
                raise InputError("localization='roi' (MAST) takes one softmax over the union of all windows: it needs "
                                 "aggregation='overall', topk=0 and norm_stage='topk'")
            if self.window != "square" or not self.window_long_term:
                raise InputError("localization='roi' needs window='square' on every frame (window_long_term=True): "
                                 "near references use that window, far ones a predicted window of the same radius")
            if self.roi_after < 1 or self.roi_radius < 0 or self.roi_max_dilation < 1:
                raise InputError(f"roi_after and roi_max_dilation must be >= 1 and roi_radius >= 0, got "
                                 f"{self.roi_after}, {self.roi_max_dilation}, {self.roi_radius}")
            if self.compactness_k:
                raise InputError("the compactness prior is defined on fixed windows; LIIR switches the ROI off with "
                                 "it (use localization='window')")
        elif self.compat_mast_roi:
            raise InputError("compat_mast_roi reproduces MAST's ROI bugs; it needs localization='roi'")
        if self.compactness_k < 0:
            raise InputError(f"compactness_k must be >= 0 (0 = off), got {self.compactness_k}")
        if self.compactness_k:
            if not joint:
                raise InputError("the compactness prior (LIIR) replaces the joint weights of each reference window: it "
                                 "needs aggregation='overall', topk=0 and norm_stage='topk'")
            if self.window == "none" or not self.window_long_term:
                raise InputError("the compactness prior needs a window on every context frame (window != 'none', "
                                 "window_long_term=True)")
            if self.compactness_fwhm <= 0:
                raise InputError(f"compactness_fwhm must be > 0 cells, got {self.compactness_fwhm}")
        if self.foreground_boost <= 0:
            raise InputError(f"foreground_boost must be > 0, got {self.foreground_boost}")
        if self.localization == "track":
            if self.aggregation != "per-frame" or self.norm_stage != "before-restriction" or self.window != "none":
                raise InputError("localization='track' (UVC) restricts UVC's per-frame propagation: it needs "
                                 "aggregation='per-frame', norm_stage='before-restriction' and window='none'")
            if not (0 < self.track_ema <= 1) or self.track_bandwidth <= 0 or self.track_sigma <= 0:
                raise InputError("track_ema must be in (0, 1] and track_bandwidth, track_sigma > 0")


@dataclass(frozen=True)
class LabelConfig:
    """How dense labels are moved to the feature grid and back.

    downsample: ``area`` (fraction of the cell covered), ``bilinear`` (point sample at cell centres),
        ``nearest``.
    output_minmax: per-channel min-max of the up-sampled probabilities before argmax (DINO/WALD codec).
    """

    downsample: str = "area"
    output_minmax: bool = False

    def __post_init__(self) -> None:
        _check_types(self)
        _check_choice("downsample", self.downsample, LABEL_DOWNSAMPLES)


@dataclass(frozen=True)
class KeypointConfig:
    """Keypoint label codec: encode K keypoints as K (+1 background) heat maps, decode after propagation.

    sigma: kernel spread in grid cells; kernel: ``gaussian`` | ``cauchy``; subpixel: centre the kernel at
    the exact position (False = CRW's rounding to a cell); decoder: see ``vlprop.labels.keypoints``
    (``topk``, ``cog5``, ``fit``, ``upsample``, ...); decode_k: k of the top-k decoder.
    """

    sigma: float = 0.5
    kernel: str = "gaussian"
    subpixel: bool = True
    background: str = "binary"
    decoder: str = "topk"
    decode_k: int = 5
    crw_compat: bool = False

    def __post_init__(self) -> None:
        _check_types(self)
        _check_choice("kernel", self.kernel, KEYPOINT_KERNELS)
        _check_choice("background", self.background, KEYPOINT_BACKGROUNDS)
        if not (self.decoder in KEYPOINT_DECODERS or (self.decoder.startswith("cog") and self.decoder[3:].isdigit()
                                                      and int(self.decoder[3:]) % 2 == 1)):
            raise InputError(f"decoder must be one of {', '.join(KEYPOINT_DECODERS)} or cogN with an odd N (cog3, "
                             f"cog5, ...); got {self.decoder!r}")
        if not self.sigma > 0:
            raise InputError(f"sigma must be > 0 (grid cells), got {self.sigma}")
        if self.decode_k < 1:
            raise InputError(f"decode_k must be >= 1, got {self.decode_k}")


@dataclass(frozen=True)
class FeatureConfig:
    """Feature extraction used by the reference: backbone, feature layer, stride, input size and colour space.

    backbone: registered backbone the preset runs on when the user does not choose one (``None``: the
        default model's). ``layer`` and ``stride`` are names/values of that backbone: ResNet layers
        ``res2``/``res3``/``res4``/``head``; a ViT has ``layer="last"`` and ``stride`` = its patch size.
    reference_backbone: prose description of the network the reference's numbers were measured with.
    input_scale / short_side / size: how frames are resized before the backbone -- a factor, the short side
        in pixels (aspect kept), or a fixed ``(height, width)`` in pixels (aspect NOT kept: CRW JHMDB 320x320,
        McKee JHMDB 240x240, VIP 560x560). ``size`` excludes the other two. ``--set size=320x320`` (or ``320``
        for a square) parses into a tuple.
    colorspace: the input colour space the reference feeds its network (``rgb``, ``lab`` = normalised Lab for
        MAST/LIIR/STT, ``lab_l`` = Lab lightness replicated for UVC); ``None`` = the weights' own. Weights that
        record their preprocessing win over the preset (a conflict is logged as a warning, see
        :func:`vlprop.model.extractor_for_network`); for weights that do not, the preset's colour space decides
        with its usual normalisation (ImageNet mean/std for ``rgb``/``lab_l``, ``(L-50)/50, a/127, b/127`` for
        ``lab``).
    """

    layer: str = "res3"
    stride: int = 8
    input_scale: float = 1.0
    short_side: int | None = None
    reference_backbone: str = ""
    backbone: str | None = None
    size: tuple[int, int] | None = None
    colorspace: str | None = None

    def __post_init__(self) -> None:
        if self.size is not None:
            object.__setattr__(self, "size", parse_size(self.size))
            if self.short_side is not None or self.input_scale != 1.0:
                raise InputError(f"a fixed input size {self.size[0]}x{self.size[1]} excludes short_side and "
                                 f"input_scale (got short_side={self.short_side}, input_scale={self.input_scale})")
        if self.colorspace is not None:
            _check_choice("colorspace", self.colorspace, COLORSPACES)


def parse_size(value: Any) -> tuple[int, int]:
    """``(H, W)`` from a pair, an int (square) or a string ``"HxW"`` / ``"H,W"`` / ``"S"``; positive integers."""
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
        try:
            nums = [int(p) for p in parts if p.strip() != ""]
        except ValueError:
            raise InputError(f"size must look like HxW (e.g. 320x320), got {value!r}") from None
    elif isinstance(value, (int,)) and not isinstance(value, bool):
        nums = [value]
    elif isinstance(value, (tuple, list)):
        nums = list(value)
    else:
        raise InputError(f"size must be (height, width), an integer or 'HxW', got {value!r}")
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in nums):
        raise InputError(f"size must be two positive integers (height, width), got {value!r}")
    return int(nums[0]), int(nums[1])

    def __post_init__(self) -> None:
        _check_types(self)
        if self.stride < 1:
            raise InputError(f"stride must be an integer >= 1, got {self.stride}")
        if not self.input_scale > 0:
            raise InputError(f"input_scale must be a positive number, got {self.input_scale}")
        if self.short_side is not None and self.short_side < 1:
            raise InputError(f"short_side must be a positive number of pixels (or none), got {self.short_side}")


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    propagation: PropagationConfig
    labels: LabelConfig = field(default_factory=LabelConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    keypoints: KeypointConfig | None = None
    compat_flags: tuple[str, ...] = ()
    reference: str = ""
    expected_weights: tuple[str, ...] = ()
    """Weights the reference's numbers need: kinds ``imagenet``, ``random``, a checkpoint layout (``uvc``, ``mast``,
    ``crw``, ``dul``, ``moco``, ``vlprop``, ``torchvision``) or a named model; empty = any. The model layer warns when
    the preset runs with other weights (the result is then not the reference's)."""

    def with_overrides(self, compat: bool = False, **overrides: Any) -> "Preset":
        """Copy with ``compat`` quirks switched on and any field of the three configs overridden."""
        prop_kw: dict[str, Any] = {f: True for f in self.compat_flags} if compat else {}
        label_kw: dict[str, Any] = {}
        feat_kw: dict[str, Any] = {}
        kp_kw: dict[str, Any] = {}
        names = {
            "keypoints": {f.name for f in fields(KeypointConfig)} if self.keypoints is not None else set(),
            "propagation": {f.name for f in fields(PropagationConfig)},
            "labels": {f.name for f in fields(LabelConfig)},
            "features": {f.name for f in fields(FeatureConfig)},
        }
        for key, value in overrides.items():
            if value is None:
                continue
            if key in _FIELD_TYPES:
                value = coerce_setting(key, value)
            if key in names["propagation"]:
                prop_kw[key] = value
            elif key in names["labels"]:
                label_kw[key] = value
            elif key in names["features"]:
                feat_kw[key] = value
            elif key in names["keypoints"]:
                kp_kw[key] = value
            else:
                known = sorted(names["propagation"] | names["labels"] | names["features"] | names["keypoints"])
                raise InputError(f"unknown setting {key!r}; known settings: {', '.join(known)}")
        # the three resize rules exclude each other: the one given replaces the preset's
        if feat_kw.get("size") is not None:
            if feat_kw.get("short_side") is not None or feat_kw.get("input_scale", 1.0) != 1.0:
                raise InputError("give one of size, short_side and input_scale, not several")
            feat_kw.setdefault("short_side", None)
            feat_kw.setdefault("input_scale", 1.0)
        elif feat_kw.get("short_side") is not None or feat_kw.get("input_scale", 1.0) != 1.0:
            feat_kw["size"] = None
        return replace(
            self,
            propagation=replace(self.propagation, **prop_kw),
            labels=replace(self.labels, **label_kw),
            features=replace(self.features, **feat_kw),
            keypoints=replace(self.keypoints, **kp_kw) if self.keypoints is not None else None,
        )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _field_types() -> dict[str, tuple[str, ...]]:
    """Setting name -> the type names its annotation allows (``("int", "None")``), for every config class."""
    out: dict[str, tuple[str, ...]] = {}
    for cls in (PropagationConfig, LabelConfig, KeypointConfig, FeatureConfig):
        for f in fields(cls):
            out[f.name] = tuple(t.strip() for t in str(f.type).split("|"))
    return out


_KIND = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "text",
         "tuple[int, int]": "a size HxW"}


def coerce_setting(key: str, value: Any) -> Any:
    """``value`` as the type of setting ``key`` (a field of the config classes), or :class:`InputError`.

    Text (``--set topk=5``) is parsed: ints, finite numbers, ``true/false/yes/no/1/0``, ``none`` where the
    setting may be unset. Python values must already have the type (an int is a valid float; a float with
    a fractional part is not a valid int; a bool is not a number). Ranges and choices are checked by the
    config classes themselves.
    """
    import math

    allowed = _FIELD_TYPES.get(key)
    if allowed is None:
        raise InputError(f"unknown setting {key!r}; known settings: {', '.join(sorted(_FIELD_TYPES))}")
    kind = " or ".join(_KIND[t] for t in allowed if t in _KIND) + (" or none" if "None" in allowed else "")

    def bad() -> InputError:
        return InputError(f"{key} must be {kind}, got {value!r}")

    if "tuple[int, int]" in allowed:  # a size: "HxW", "S" (square), an int or a pair
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
            if "None" in allowed:
                return None
            raise bad()
        return parse_size(value)
    if isinstance(value, str):
        text = value.strip()
        if "None" in allowed and text.lower() in ("none", "null", ""):
            return None
        if "bool" in allowed:
            low = text.lower()
            if low in ("true", "yes", "on", "1"):
                return True
            if low in ("false", "no", "off", "0"):
                return False
            raise bad()
        if "int" in allowed:
            try:
                return int(text)
            except ValueError:
                raise bad() from None
        if "float" in allowed:
            try:
                number = float(text)
            except ValueError:
                raise bad() from None
            if not math.isfinite(number):
                raise bad()
            return number
        return text
    if value is None and "None" in allowed:
        return None
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        if "bool" in allowed:
            return bool(value)
        raise bad()
    if "int" in allowed and isinstance(value, (int, float)) and float(value).is_integer():
        return int(value)
    if "float" in allowed and isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    raise bad()


def _check_types(obj: Any) -> None:
    """Raise :class:`InputError` for a config field whose value does not have the field's type (so a wrong
    type fails here, with the setting's name, not as a ``TypeError`` deep inside torch)."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        allowed = _FIELD_TYPES.get(f.name, ())
        ok = (value is None and "None" in allowed) \
            or (isinstance(value, bool) and "bool" in allowed) \
            or (isinstance(value, int) and not isinstance(value, bool) and ("int" in allowed or "float" in allowed)) \
            or (isinstance(value, float) and "float" in allowed) \
            or (isinstance(value, str) and "str" in allowed) \
            or (isinstance(value, tuple) and len(value) == 2 and "tuple[int, int]" in allowed
                and all(isinstance(v, int) and not isinstance(v, bool) for v in value))
        if not ok and allowed:
            kind = " or ".join(_KIND[t] for t in allowed if t in _KIND) + (" or none" if "None" in allowed else "")
            raise InputError(f"{f.name} must be {kind}, got {value!r}")


_FIELD_TYPES: dict[str, tuple[str, ...]] = _field_types()


PRESETS: dict[str, Preset] = {}


def _register(p: Preset) -> Preset:
    PRESETS[p.name] = p
    return p


_register(Preset(
    name="crw",
    description="Contrastive Random Walk (Jabri et al. 2020) test protocol: overall top-10, softmax T=0.05, "
                "first frame + 20 previous, disk radius 12 (strict) not applied to the first frame, res3, native size.",
    propagation=PropagationConfig(aggregation="overall", topk=10, normalizer="softmax", temperature=0.05,
                                  context=20, window="disk", radius=12, window_long_term=False),
    labels=LabelConfig(downsample="bilinear"),
    features=FeatureConfig(layer="res3", stride=8, reference_backbone="resnet18 (CRW pretrained.pth)"),
    compat_flags=("compat_pad_first",),
    reference="ajabri/videowalk test.py --topk 10 --videoLen 20 --radius 12 --temperature 0.05 --cropSize -1; "
              "DAVIS-17 val J&F 67.6",
    expected_weights=("crw",),
))
_register(Preset(
    name="dul",
    description="Dense Unsupervised Learning (Araslanov et al. 2021) inference: CRW propagation on res4 features "
                "(top-10, T=0.05, context 20 + first, disk radius 12 not on the first frame).",
    propagation=PropagationConfig(aggregation="overall", topk=10, normalizer="softmax", temperature=0.05,
                                  context=20, window="disk", radius=12, window_long_term=False),
    labels=LabelConfig(downsample="bilinear"),
    features=FeatureConfig(layer="res4", stride=8, reference_backbone="resnet18 (DUL snapshot)"),
    compat_flags=("compat_pad_first",),
    reference="visinf/dense-ulearn-vos TEST.KNN 10 TEST.RADIUS 12 TEST.TEMP 0.05 TEST.CXT_SIZE 20 TEST.KEY res4; "
              "DAVIS-17 val J&F 65.3-69.4",
))
_register(Preset(
    name="dino",
    description="DINO eval_video_segmentation protocol: overall top-5, weights exp(a/0.1) renormalised, first frame "
                "+ 7 previous, square window radius 12 on every context frame, per-channel min-max before argmax.",
    propagation=PropagationConfig(aggregation="overall", topk=5, normalizer="exp", temperature=0.1, context=7,
                                  window="square", radius=12, window_long_term=True),
    labels=LabelConfig(downsample="nearest", output_minmax=True),
    # eval_video_segmentation.py defaults: --arch vit_small --patch_size 16, last layer's normed patch tokens
    features=FeatureConfig(layer="last", stride=16, backbone="dino_vits16",
                           reference_backbone="vit_small_patch16 / vit_base_patch8 (DINO)"),
    reference="facebookresearch/dino eval_video_segmentation.py --n_last_frames 7 --size_mask_neighborhood 12 --topk 5",
    expected_weights=("imagenet",),  # DINO's self-supervised ViT weights (what --weights imagenet loads for a ViT)
))
_register(Preset(
    name="dinov2",
    description="DINOv2/DINOv3 segmentation-tracking protocol: overall top-5 inside a circle of radius 12 cells "
                "(inclusive) on every context frame, softmax T=0.2 over the survivors, first frame + 7 previous, "
                "L2-normalised last-layer patch tokens, per-channel min-max before argmax; frames at their own "
                "size (the notebook uses short side 960: --short-side 960).",
    # DINOv3's circle keeps offsets with |d| <= 12; on the integer grid that is vlprop's strict disk
    # (|d| < r) for any r in (12, sqrt(145) = 12.042).
    propagation=PropagationConfig(aggregation="overall", topk=5, normalizer="softmax", temperature=0.2,
                                  norm_stage="topk", context=7, long_term=1, window="disk", radius=12.04,
                                  window_long_term=True, feature_norm=True),
    labels=LabelConfig(downsample="nearest", output_minmax=True),
    features=FeatureConfig(layer="last", stride=14, backbone="dinov2_vits14",
                           reference_backbone="dinov3_vitl16 at short side 960 (DINOv3 notebook); no published "
                                              "DINOv2 DAVIS number"),
    reference="facebookresearch/dinov3 notebooks/segmentation_tracking.ipynb: MAX_CONTEXT_LENGTH 7, "
              "NEIGHBORHOOD_SIZE 12, NEIGHBORHOOD_SHAPE circle (norm <= size), TOPK 5, TEMPERATURE 0.2, "
              "softmax over the top-k, nearest-exact mask downsampling, per-mask min-max before argmax",
))
_register(Preset(
    name="waldmann-davis",
    description="Waldmann et al. 2022 DAVIS setting as reported ('DAVIS2017-more-context'): the 'full' (dense) "
                "affinity with a square radius-12 mask on every context frame incl. the first, joint top-5 over first "
                "frame + 20 previous, 'dino' normaliser exp(a/0.1)/sum, soft labels fed back, bilinear label codec "
                "with per-channel min-max before the argmax; ViT-B/8 DINO at short side 480. The reported code masks "
                "after exp (out-of-window candidates weigh exp(0)): --compat reproduces that.",
    propagation=PropagationConfig(aggregation="overall", topk=5, normalizer="exp", temperature=0.1, context=20,
                                  window="square", radius=12, window_long_term=True),
    labels=LabelConfig(downsample="bilinear", output_minmax=True),
    features=FeatureConfig(layer="res3", stride=8, reference_backbone="vit_base_patch8 (DINO) @480"),
    compat_flags=("compat_mask_before_exp",),
    reference="urs-waldmann/improving-unsupervised-label-propagation _reported_configs/DAVIS2017-more-context "
              "(implementation full, affinity_topk 5, affinity_norm dino, neighborhood_size 12, num_context 20, "
              "codec bilinear + minmax)",
    expected_weights=("imagenet",),
))
_register(Preset(
    name="mckee-imagenet",
    description="McKee et al. 2022 best still-image setting: overall top-5, softmax T=1, first frame + 20 previous, "
                "fixed region (disk radius 12, not on the first frame), res3 at stride 8, input up-sampled x2.",
    propagation=PropagationConfig(aggregation="overall", topk=5, normalizer="softmax", temperature=1.0, context=20,
                                  window="disk", radius=12, window_long_term=False),
    labels=LabelConfig(downsample="bilinear"),
    features=FeatureConfig(layer="res3", stride=8, input_scale=2.0,
                           reference_backbone="resnet18 ImageNet, res3 stride-modified and fine-tuned"),
    reference="McKee et al. 2022 Table 6(c) 'ImageNet upsample': DAVIS-17 val J&F 67.8 (65.8 without x2)",
    expected_weights=("imagenet",),  # torchvision ImageNet ResNet-18 (McKee also fine-tune after the stride change)
))
_register(Preset(
    name="uvc-perframe",
    description="UVC / McKee Algorithm 1 'per-frame' aggregation: per context frame softmax over all locations "
                "(T=1) before restriction, top-5 kept without renormalising, predictions averaged over first frame + "
                "7 previous, per-channel min-max of each prediction (UVC norm_mask); raw (not L2-normalised) 512-d "
                "res4 features of the Lab-lightness (grey) input, as UVC is trained. UVC floors the long side to a "
                "multiple of 64 at test (854 -> 832); we keep the native frame size.",
    propagation=PropagationConfig(aggregation="per-frame", topk=5, normalizer="softmax", temperature=1.0, context=7,
                                  norm_stage="before-restriction", window="none", radius=12, window_long_term=False,
                                  feature_norm=False, label_norm="channel-minmax"),
    labels=LabelConfig(downsample="bilinear"),
    features=FeatureConfig(layer="res4", stride=8, colorspace="lab_l",
                           reference_backbone="UVC ResNet-18 (Liusifei/UVC jhmdb/davis checkpoint), layer4 512-d"),
    reference="McKee et al. 2022 Alg. 1, per-frame variant (UVC protocol, Liusifei/UVC test.py --topk 5 pre_num 7); "
              "McKee Tab. 4(d) UVC per-frame, no localisation: J&F 59.4",
    expected_weights=("uvc",),
))

_register(Preset(
    name="waldmann-jhmdb",
    description="Waldmann et al. 2022 JHMDB keypoints: joint top-20 over first frame + 20 previous, softmax of "
                "22.63*cos (T=1/sqrt(512)), square window radius 12 on all frames, Gaussian sigma 0.5 cells at the "
                "exact sub-pixel position, top-5 decoding, input up-sampled x2 (240 -> 480 = their scale_size); UVC "
                "res4 (512-d: the sqrt(512) scale assumes it) on the Lab-lightness input. Their reported config has "
                "label_normalization none (UVC's own per-channel min-max is --set label_norm=channel-minmax).",
    propagation=PropagationConfig(aggregation="overall", topk=20, normalizer="softmax", temperature=512 ** -0.5,
                                  context=20, window="square", radius=12, window_long_term=True),
    labels=LabelConfig(downsample="bilinear"),
    features=FeatureConfig(layer="res4", stride=8, input_scale=2.0, colorspace="lab_l",
                           reference_backbone="UVC ResNet-18 (jhmdb checkpoint), layer4 512-d, grey input @480"),
    keypoints=KeypointConfig(sigma=0.5, kernel="gaussian", subpixel=True, background="binary", decoder="topk",
                             decode_k=5),
    compat_flags=("compat_softmax_zeros",),
    reference="urs-waldmann/improving-unsupervised-label-propagation _reported_configs/JHMDB-default "
              "(affinity_topk 20, uvc+softmax, neighborhood_size 12, num_context 20, label_spread 0.5, "
              "subpix, decode topk 5); x2 input as in their scale ablation",
    expected_weights=("uvc",),
))
_register(Preset(
    name="crw-jhmdb",
    description="CRW JHMDB protocol: overall top-10, softmax T=0.05, first frame + 7 previous, disk radius 12 not "
                "on the first frame, Gaussian sigma 0.5 at the rounded cell, top-3 decoding; frames resized to a "
                "320x320 square (aspect not kept, CRW --cropSize 320).",
    propagation=PropagationConfig(aggregation="overall", topk=10, normalizer="softmax", temperature=0.05, context=7,
                                  window="disk", radius=12, window_long_term=False),
    labels=LabelConfig(downsample="bilinear"),
    features=FeatureConfig(layer="res3", stride=8, size=(320, 320),
                           reference_backbone="resnet18 (CRW pretrained.pth), 320x320 input"),
    keypoints=KeypointConfig(sigma=0.5, kernel="gaussian", subpixel=False, background="binary", decoder="topk",
                             decode_k=3, crw_compat=True),
    compat_flags=("compat_pad_first",),
    reference="ajabri/videowalk test.py --topk 10 --videoLen 7 --radius 12 --temperature 0.05 --cropSize 320 "
              "(community JHMDB command); paper PCK@0.1/0.2 59.3/84.9",
    expected_weights=("crw",),
))
_register(Preset(
    name="stt",
    description="Spatial-then-Temporal (Li & Liu 2023) evaluation: VFS/CRW-style overall top-10 over first frame + "
                "20 previous, softmax T=0.07 over the k survivors, L2-normalised features, square neighbourhood of "
                "side 24 cells (radius 12) on every context frame incl. the first, soft labels fed back; 'res4' of "
                "their naming = torchvision layer3 = our res3 at stride 8, normalised-Lab input, 480p short side.",
    propagation=PropagationConfig(aggregation="overall", topk=10, normalizer="softmax", temperature=0.07, context=20,
                                  window="square", radius=12, window_long_term=True, feature_norm=True),
    labels=LabelConfig(downsample="bilinear"),
    features=FeatureConfig(layer="res3", stride=8, colorspace="lab",
                           reference_backbone="STT ResNet-18 stride 8 (qianduoduolr/Spa-then-Temp), layer3"),
    reference="qianduoduolr/Spa-then-Temp configs/test (neighbor_range 24 at stride 8, topk 10, temperature 0.07, "
              "20 + first); README DAVIS-17 J&F 70.7 (R18 stride 8). JHMDB uses 320x320 and range 10, VIP 560x560 "
              "and range 32 (--size, --set radius=5 / 16)",
    expected_weights=("stt",),  # no loader for STT checkpoints yet: runs always warn
))


_register(Preset(
    name="crw-vip",
    description="CRW VIP semantic-part protocol: overall top-10, softmax T=0.05, first frame + 4 previous, disk "
                "radius 12 not on the first frame, frames resized to a 560x560 square (aspect not kept).",
    propagation=PropagationConfig(aggregation="overall", topk=10, normalizer="softmax", temperature=0.05, context=4,
                                  window="disk", radius=12, window_long_term=False),
    labels=LabelConfig(downsample="bilinear"),
    features=FeatureConfig(layer="res3", stride=8, size=(560, 560),
                           reference_backbone="resnet18 (CRW pretrained.pth), 560x560 input"),
    compat_flags=("compat_pad_first",),
    reference="ajabri/videowalk test.py --videoLen 4 --cropSize 560 (issue #10) + eval_vip.py; paper VIP mIoU 38.6 "
              "(released model 37.12)",
    expected_weights=("crw",),
))
_register(Preset(
    name="uvc-track",
    description="UVC 'track' inference (McKee Tab. 4/6(b)): per-frame aggregation over first frame + 7 previous, "
                "each context frame's softmax over all its locations (T=1, raw 512-d res4 features of the grey "
                "input), top-5 kept without renormalising; each object propagates only from its box in the context "
                "frame to its box in the target frame (background over the full frame). Target box: soft-argmax "
                "target positions of the object's cells in the newest context frame -> mean-shift mode (bandwidth 5, "
                "sigma 4 cells) +- 2 mean-abs-dev, +100 %, half-extent EMA 0.1; initial box = labelled box + 60 %; "
                "full frame when the object disappears (< 3 cells or a box under 3 cells a side). Per-channel "
                "min-max of each prediction. Boxes live on the feature grid; UVC recomputes a stored frame's box "
                "from its own full-resolution prediction (bandwidth 20 px), we keep its target box.",
    propagation=PropagationConfig(aggregation="per-frame", topk=5, normalizer="softmax", temperature=1.0, context=7,
                                  norm_stage="before-restriction", window="none", window_long_term=False,
                                  feature_norm=False, label_norm="channel-minmax", localization="track",
                                  track_init_margin=0.6, track_margin=1.0, track_ema=0.1, track_bandwidth=5.0,
                                  track_sigma=4.0, track_mad=2.0),
    labels=LabelConfig(downsample="bilinear"),
    features=FeatureConfig(layer="res4", stride=8, colorspace="lab_l",
                           reference_backbone="UVC ResNet-18 (Liusifei/UVC davis checkpoint), layer4 512-d"),
    reference="Liusifei/UVC test_with_track.py / libs/track_utils.py (training-methods.md §3.2); McKee Tab. 4(d) "
              "UVC per-frame + track: J&F 60.8 (59.4 without); Tab. 6(b) 59.5 (UVC), 66.0 (UVC+, 10 frames)",
    expected_weights=("uvc",),
))
_register(Preset(
    name="mast",
    description="MAST (Lai et al. 2020) inference: references {0, 5, t-1, t-3, t-5}; near references (<= 15 frames "
                "back) matched in a square window of radius 12 cells, far ones in a predicted window (MAST ROI: "
                "dilated coarse match radius 12, dilation min(4, dt // 15 + 1), soft-argmax offset, bilinear "
                "window); one softmax over the union of all windows on raw dot products (no top-k, T=1, no L2 "
                "norm); hard (argmax) labels fed back. Stride-4 ResNet-18 without max-pool, 64-d head, Lab input.",
    propagation=PropagationConfig(aggregation="overall", topk=0, normalizer="softmax", temperature=1.0,
                                  norm_stage="topk", references="mast", localization="roi", window="square",
                                  radius=12, window_long_term=True, feature_norm=False, requantize=True,
                                  roi_after=15, roi_radius=12, roi_max_dilation=4),
    labels=LabelConfig(downsample="nearest"),
    features=FeatureConfig(layer="head", stride=4, colorspace="lab", backbone="mast_resnet18",
                           reference_backbone="MAST ResNet-18 stride 4, 64-d post_convolution (zlai0/MAST)"),
    compat_flags=("compat_mast_roi",),
    reference="zlai0/MAST benchmark.py / models/colorizer.py (ref=0, R=12, ROI for dt > 15); training-methods.md "
              "§4.4; DAVIS-17 val J&F 65.5 (McKee Tab. 6c). Labels are point-sampled at the cell centre (MAST: "
              "[::4] at offset 0)",
    expected_weights=("mast",),
))
_register(Preset(
    name="liir",
    description="LIIR (Li et al. 2022) inference: references {0, 5, t-1, t-3, t-5}, square window radius 14 cells "
                "on every reference (the ROI is off with the prior), one softmax over the union of the windows on "
                "raw dot products (no top-k, T=1), then the compactness prior: where a reference's largest weight "
                "> 0.1 its weights become 2 Gaussian bumps (FWHM 1 cell) at its top-2 matches mixed by the softmax "
                "of their weights; foreground labels x1.05; hard labels fed back. Stride-4 MAST trunk, Lab input.",
    propagation=PropagationConfig(aggregation="overall", topk=0, normalizer="softmax", temperature=1.0,
                                  norm_stage="topk", references="mast", localization="window", window="square",
                                  radius=14, window_long_term=True, feature_norm=False, requantize=True,
                                  compactness_k=2, compactness_threshold=0.1, compactness_fwhm=1.0,
                                  foreground_boost=1.05),
    labels=LabelConfig(downsample="nearest"),
    features=FeatureConfig(layer="head", stride=4, colorspace="lab", backbone="mast_resnet18",
                           reference_backbone="LIIR ResNet-18 stride 4 + 1-D absolute position encoding, 64-d head"),
    reference="shasha521/LIIR_pytorch evaluate_davis.py (R=14, k=2, threshold 0.1, x1.05); LIIR App. A Tab. A.1 "
              "(k=2 at inference best, 72.1 DAVIS-17 J&F); training-methods.md §1.5, §1.7",
    expected_weights=("liir",),  # no loader for LIIR checkpoints (position encoding) yet: runs always warn
))

# Zero-shot VOS (vlprop.tasks.zero_shot): the first-frame mask comes from an initialiser, not from a label.
_register(Preset(
    name="waldmann-zvos",
    description="Waldmann et al. 2022 zero-shot VOS propagation (single object): joint top-20 over the first frame "
                "+ 1 previous, exp(a/0.1) renormalised, square window radius 12 on all frames, per-channel min-max "
                "decoding; the first mask comes from `vlprop init-mask` (DINO attention or CAM).",
    propagation=PropagationConfig(aggregation="overall", topk=20, normalizer="exp", temperature=0.1, context=1,
                                  window="square", radius=12, window_long_term=True),
    labels=LabelConfig(downsample="bilinear", output_minmax=True),
    features=FeatureConfig(layer="res4", stride=8, reference_backbone="vit_base_patch8 (DINO) @480"),
    compat_flags=("compat_mask_before_exp",),
    reference="urs-waldmann/improving-unsupervised-label-propagation _reported_configs/DAVIS2016val-zvos and "
              "SegTrackV2-zvos (affinity_topk 20, dino, neighborhood_size 12, num_context 1, single-object minmax "
              "codec, so_attention_v4); DAVIS-16 val J&F 59.8, SegTrackV2 J 58.4",
))


def get_preset(name: str | Preset, compat: bool = False, **overrides: Any) -> Preset:
    """Look up a preset by name and apply ``compat`` quirks and overrides."""
    if isinstance(name, Preset):
        base = name
    else:
        if name not in PRESETS:
            raise InputError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
        base = PRESETS[name]
    if compat or overrides:
        return base.with_overrides(compat=compat, **overrides)
    return base
