"""ResNet trunks with output-stride surgery, layer truncation and reference-checkpoint loading.

The trunks are torchvision ResNets with torchvision parameter names (``conv1``, ``bn1``,
``layer1`` ... ``layer4``), so a torchvision state dict loads without renaming:

* **output stride** ``s``: stride 32 is the classification net; 16 sets layer4's stride to 1;
  8 also sets layer3's (the CRW/DUL/UVC surgery); 4 also removes the max-pool (the MAST
  layout). A stage is made stride-1 by setting the stride of its first block's strided conv
  (``conv1`` of a BasicBlock, ``conv2`` of a torchvision Bottleneck) and of its 1x1 downsample
  to 1; all weights keep their shapes.
* **feature layer**: ``res2``/``res3``/``res4`` = the output of torchvision ``layer2``/``3``/``4``;
  the stages after it (and ``avgpool``/``fc``) are removed. ``head`` = ``res4`` followed by
  the projection head of the arch (DUL's 1x1 MLP for ``resnet18``/``resnet50``; MAST's 3x3
  ``post_convolution`` for ``mast_resnet18``).

Every padded layer is ``same``-padded, so a ``[B, 3, H, W]`` input gives
``[B, D, ceil(H/s), ceil(W/s)]`` for any ``H, W`` (e.g. 480x854 -> 60x107 at stride 8).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from torchvision.models import resnet as tv_resnet

from vlprop.backbones.init import reset_batchnorm_, seeded_generator
from vlprop.backbones.registry import register_backbone
from vlprop.backbones.weights import (
    CheckpointFile,
    load_imagenet_weights,
    load_weights,
    open_checkpoint,
)
from vlprop.errors import CheckpointError, InputError

STAGES = ("res2", "res3", "res4")
LAYERS = (*STAGES, "head")
_LAYER_ALIASES = {"layer2": "res2", "layer3": "res3", "layer4": "res4", "key": "head"}
# Output stride of each stage in the unmodified classification network.
_NATURAL_STRIDE = {"res2": 8, "res3": 16, "res4": 32, "head": 32}
_STRIDES = (4, 8, 16, 32)
_PADDING_MODES = ("zeros", "reflect")


@dataclass(frozen=True)
class ResNetSpec:
    """Static description of one registered ResNet variant."""

    arch: str
    block: type[nn.Module]
    depths: tuple[int, int, int, int]
    head: str                       # "mlp" (DUL 1x1 MLP) or "conv3x3" (MAST post_convolution)
    head_dim: int                   # default output channels of the head
    layer4_planes: int = 512        # MAST narrows layer4 to 256 channels
    default_layer: str = "res3"
    default_stride: int = 8
    imagenet: Callable[[], object] | None = None  # torchvision weights enum member factory

    def max_stride(self, layer: str) -> int:
        """Output stride of ``layer`` in the unmodified network (an upper bound for ``stride``)."""
        if layer in ("res4", "head") and self.layer4_planes == 256:
            return 16  # a same-width layer4 (MAST) has no downsampling block
        return _NATURAL_STRIDE[layer]

    def stage_dim(self, stage: str) -> int:
        expansion = self.block.expansion
        planes = {"res2": 128, "res3": 256, "res4": self.layer4_planes}[stage]
        return planes * expansion


def _normalise_layer(layer: str) -> str:
    name = _LAYER_ALIASES.get(layer, layer)
    if name not in LAYERS:
        raise InputError(f"unknown feature layer {layer!r}; expected one of {', '.join(LAYERS)}")
    return name


class ResNetBackbone(nn.Module):
    """A truncated, stride-modified ResNet: ``[B, 3, H, W] -> [B, out_dim, ceil(H/s), ceil(W/s)]``.

    The input is an already normalised image batch (see :class:`~vlprop.backbones.FeatureExtractor`).
    Attributes: ``arch`` (registered name), ``stride`` (int, input pixels per feature cell),
    ``layer`` (``res2``/``res3``/``res4``/``head``), ``out_dim`` (channels), ``padding_mode``.
    The module is returned in eval mode; parameters are initialised from ``seed`` with a private
    generator (the global RNG is neither used nor advanced).
    """

    def __init__(self, spec: ResNetSpec, stride: int = 8, layer: str = "res3", padding_mode: str = "zeros",
                 head_dim: int | None = None, seed: int = 0) -> None:
        super().__init__()
        layer = _normalise_layer(layer)
        if stride not in _STRIDES:
            raise InputError(f"{spec.arch}: unsupported output stride {stride!r}; expected one of {_STRIDES}")
        if stride > spec.max_stride(layer):
            raise InputError(f"{spec.arch}: layer {layer} has output stride {spec.max_stride(layer)} at most, "
                             f"cannot produce stride {stride}")
        if padding_mode not in _PADDING_MODES:
            raise InputError(f"{spec.arch}: padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}")
        self.spec = spec
        self.arch = spec.arch
        self.layer = layer
        self.stride = int(stride)
        self.padding_mode = padding_mode
        self.head_dim = int(head_dim if head_dim is not None else spec.head_dim) if layer == "head" else None
        last_stage = "res4" if layer == "head" else layer
        self.stages = STAGES[: STAGES.index(last_stage) + 1]

        # Build on the meta device: no memory, no RNG use; real values come from reset_parameters.
        with torch.device("meta"):
            tv = tv_resnet.ResNet(spec.block, list(spec.depths))
            self.conv1, self.bn1, self.relu = tv.conv1, tv.bn1, tv.relu
            self.maxpool = tv.maxpool if stride >= 8 else None
            self.layer1, self.layer2 = tv.layer1, tv.layer2
            if "res3" in self.stages:
                self.layer3 = tv.layer3
            if "res4" in self.stages:
                self.layer4 = tv.layer4 if spec.layer4_planes == 512 else self._narrow_layer4(spec)
            if layer == "head":
                self.head = self._make_head(spec, self.head_dim)
        self.to_empty(device="cpu")

        # Stride surgery: stages whose stride is removed, from the deepest up.
        if stride <= 16 and "res4" in self.stages:
            _make_stage_stride1(self.layer4)
        if stride <= 8 and "res3" in self.stages:
            _make_stage_stride1(self.layer3)
        if padding_mode != "zeros":
            for m in self.modules():
                if isinstance(m, nn.Conv2d) and any(p > 0 for p in m.padding):
                    m.padding_mode = padding_mode
        self.out_dim = spec.stage_dim(last_stage) if layer != "head" else self.head_dim
        self.reset_parameters(seed)
        self.eval()

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _narrow_layer4(spec: ResNetSpec) -> nn.Sequential:
        """MAST's layer4: BasicBlocks 256 -> ``layer4_planes`` at stride 2 (made 1 by surgery)."""
        inplanes = 256 * spec.block.expansion
        planes = spec.layer4_planes
        downsample = None
        if inplanes != planes * spec.block.expansion:
            downsample = nn.Sequential(tv_resnet.conv1x1(inplanes, planes * spec.block.expansion, 2),
                                       nn.BatchNorm2d(planes * spec.block.expansion))
        # Same-width stage: no downsample branch, hence no stride to remove either.
        first_stride = 2 if downsample is not None else 1
        blocks = [spec.block(inplanes, planes, first_stride, downsample)]
        blocks += [spec.block(planes * spec.block.expansion, planes) for _ in range(1, spec.depths[3])]
        return nn.Sequential(*blocks)

    @staticmethod
    def _make_head(spec: ResNetSpec, head_dim: int) -> nn.Module:
        in_dim = spec.stage_dim("res4")
        if spec.head == "mlp":
            # DUL's key projection: names match dense-ulearn-vos ``MLP`` (conv1, bn1, relu, conv2).
            return nn.Sequential(OrderedDict([
                ("conv1", nn.Conv2d(in_dim, in_dim, 1)),
                ("bn1", nn.BatchNorm2d(in_dim)),
                ("relu", nn.ReLU(inplace=True)),
                ("conv2", nn.Conv2d(in_dim, head_dim, 1)),
            ]))
        if spec.head == "conv3x3":
            return nn.Conv2d(in_dim, head_dim, 3, 1, 1)
        raise ValueError(f"unknown head type {spec.head!r}")

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        """Deterministic init from ``seed`` (torchvision's scheme) with a private generator.

        Conv weights: Kaiming-normal (fan_out, ReLU); conv biases 0; BatchNorm weight 1, bias 0,
        running mean 0, running var 1. Same seed and config -> bit-identical parameters.
        """
        gen = seeded_generator(seed)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=gen)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                reset_batchnorm_(m)

    # ------------------------------------------------------------------ geometry
    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Feature grid ``(h, w)`` produced for a ``height x width`` input: ``ceil(. / stride)``."""
        return -(-int(height) // self.stride), -(-int(width) // self.stride)

    def excluded_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of a full checkpoint that this truncated trunk deliberately drops."""
        dropped = ["fc.", "avgpool."]
        for stage, module in (("res3", "layer3."), ("res4", "layer4.")):
            if stage not in self.stages:
                dropped.append(module)
        if self.layer != "head":
            dropped.append("head.")
        return tuple(dropped)

    def config(self) -> dict:
        """The constructor configuration recorded in vlprop checkpoints."""
        cfg = {"arch": self.arch, "layer": self.layer, "stride": self.stride, "padding_mode": self.padding_mode}
        if self.head_dim is not None:
            cfg["head_dim"] = self.head_dim
        return cfg

    def extra_repr(self) -> str:
        return (f"arch={self.arch}, layer={self.layer}, stride={self.stride}, out_dim={self.out_dim}, "
                f"padding_mode={self.padding_mode}")

    # ------------------------------------------------------------------ forward
    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"{self.arch}: expected a normalised image batch [B, 3, H, W], got {shape}")
        if self.padding_mode == "reflect":
            h, w = x.shape[-2:]
            # reflect padding needs every padded map to be larger than its padding
            if min(h, w) < 4 or min(self.grid_size(h, w)) < 2:
                raise InputError(f"{self.arch}: input {h}x{w} is too small for reflect padding at stride "
                                 f"{self.stride} (need at least {max(4, self.stride + 1)} pixels per side)")

    def forward_layers(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """All kept feature maps in one pass: ``{"res2": ..., "res3": ..., "res4": ..., "head": ...}``."""
        self._check_input(x)
        out: dict[str, torch.Tensor] = {}
        x = self.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        out["res2"] = x
        if "res3" in self.stages:
            x = self.layer3(x)
            out["res3"] = x
        if "res4" in self.stages:
            x = self.layer4(x)
            out["res4"] = x
        if self.layer == "head":
            out["head"] = self.head(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, 3, H, W]`` (normalised) -> features ``[B, out_dim, ceil(H/s), ceil(W/s)]``."""
        return self.forward_layers(x)[self.layer]


def _make_stage_stride1(stage: nn.Sequential) -> None:
    """Remove the stride of a ResNet stage in place (weights unchanged)."""
    first = stage[0]
    strided = first.conv2 if isinstance(first, tv_resnet.Bottleneck) else first.conv1
    strided.stride = (1, 1)
    if first.downsample is not None:
        first.downsample[0].stride = (1, 1)
    # Only the first block may be strided in a torchvision stage; guard against other layouts.
    for m in stage.modules():
        if isinstance(m, nn.Conv2d) and m.stride != (1, 1):
            m.stride = (1, 1)


# ---------------------------------------------------------------------- factories
def _build(spec: ResNetSpec, *, stride: int | None, layer: str | None, padding_mode: str | None,
           weights: str | os.PathLike | None, seed: int, weights_format: str | None, head_dim: int | None,
           allow_pickle: bool) -> ResNetBackbone:
    """Resolve the configuration (explicit > recorded in the checkpoint > arch default), build, load."""
    ckpt: CheckpointFile | None = None
    if weights is None or (isinstance(weights, str) and weights == "random"):
        pass
    elif isinstance(weights, str) and weights == "imagenet":
        if spec.imagenet is None:
            raise InputError(f"{spec.arch}: no ImageNet weights exist for this architecture")
        if weights_format not in (None, "torchvision"):
            raise InputError("weights='imagenet' are torchvision weights; weights_format must be None")
    elif isinstance(weights, (str, os.PathLike)):
        ckpt = open_checkpoint(weights, weights_format=weights_format, allow_pickle=allow_pickle)
        recorded = ckpt.recorded_config()
        rec_arch = recorded.get("arch")
        if rec_arch is not None and rec_arch != spec.arch:
            raise CheckpointError(f"{ckpt.path}: checkpoint was saved for arch {rec_arch!r}, "
                                  f"not {spec.arch!r}; use create_backbone({rec_arch!r}, ...)",
                                  cli=f"{ckpt.path}: checkpoint was saved for arch {rec_arch!r}, "
                                      f"not {spec.arch!r}; use --backbone {rec_arch}")
        stride = stride if stride is not None else recorded.get("stride")
        layer = layer if layer is not None else recorded.get("layer")
        padding_mode = padding_mode if padding_mode is not None else recorded.get("padding_mode")
        head_dim = head_dim if head_dim is not None else recorded.get("head_dim")
    else:
        raise InputError(f"weights must be 'random', 'imagenet' or a file path, got {weights!r}")

    net = ResNetBackbone(
        spec,
        stride=stride if stride is not None else spec.default_stride,
        layer=layer if layer is not None else spec.default_layer,
        padding_mode=padding_mode if padding_mode is not None else "zeros",
        head_dim=head_dim,
        seed=seed,
    )
    if ckpt is not None:
        load_weights(net, ckpt)
    elif weights == "imagenet":
        load_imagenet_weights(net, spec.imagenet())
    return net.eval()


def _factory_doc(spec: ResNetSpec) -> str:
    return f"""Build a {spec.arch} trunk (see :class:`ResNetBackbone`).

    Args:
        stride: output stride 4, 8, 16 or 32 (default {spec.default_stride}, or as recorded in a vlprop checkpoint).
        layer: ``res2``/``res3``/``res4``/``head`` (default {spec.default_layer!r}, or as recorded).
        padding_mode: ``zeros`` or ``reflect`` (CRW ``scratch``); default ``zeros`` (``reflect`` for CRW files).
        weights: ``"random"`` (seeded), ``"imagenet"`` (torchvision download) or a checkpoint path
            (torchvision, CRW, DUL, MAST, UVC, MoCo or vlprop layout; see ``vlprop.backbones.weights``).
        seed: seed of the random initialisation (also used for parameters a checkpoint does not cover).
        weights_format: force a checkpoint layout instead of detecting it from the keys.
        head_dim: output channels of the ``head`` layer (default {spec.head_dim}).
        allow_pickle: allow arbitrary pickled objects in the checkpoint (only for trusted files).
    """


def _register(spec: ResNetSpec) -> None:
    def factory(*, stride: int | None = None, layer: str | None = None, padding_mode: str | None = None,
                weights: str | os.PathLike | None = "random", seed: int = 0, weights_format: str | None = None,
                head_dim: int | None = None, allow_pickle: bool = False) -> ResNetBackbone:
        return _build(spec, stride=stride, layer=layer, padding_mode=padding_mode, weights=weights, seed=seed,
                      weights_format=weights_format, head_dim=head_dim, allow_pickle=allow_pickle)

    factory.__name__ = factory.__qualname__ = spec.arch
    factory.__doc__ = _factory_doc(spec)
    factory.spec = spec  # type: ignore[attr-defined]
    factory.layers = (*LAYERS, *_LAYER_ALIASES)  # type: ignore[attr-defined]
    factory.strides = _STRIDES  # type: ignore[attr-defined]
    factory.default_layer = spec.default_layer  # type: ignore[attr-defined]
    factory.default_stride = spec.default_stride  # type: ignore[attr-defined]
    register_backbone(factory)
    globals()[spec.arch] = factory


RESNET18 = ResNetSpec("resnet18", tv_resnet.BasicBlock, (2, 2, 2, 2), head="mlp", head_dim=128,
                      imagenet=lambda: tv_resnet.ResNet18_Weights.IMAGENET1K_V1)
RESNET50 = ResNetSpec("resnet50", tv_resnet.Bottleneck, (3, 4, 6, 3), head="mlp", head_dim=128,
                      imagenet=lambda: tv_resnet.ResNet50_Weights.IMAGENET1K_V1)
# MAST (Lai et al. 2020) / LIIR trunk: ResNet-18 without max-pool, layer3/4 at stride 1,
# layer4 only 256 wide, followed by a 3x3 conv to 64 channels ("post_convolution").
MAST_RESNET18 = ResNetSpec("mast_resnet18", tv_resnet.BasicBlock, (2, 2, 2, 2), head="conv3x3", head_dim=64,
                           layer4_planes=256, default_layer="head", default_stride=4)

for _spec in (RESNET18, RESNET50, MAST_RESNET18):
    _register(_spec)
del _spec

__all__ = ["ResNetBackbone", "ResNetSpec", "STAGES", "LAYERS", "resnet18", "resnet50", "mast_resnet18"]
