"""Spatial-then-Temporal's ResNet layout (Li & Liu, CVPR 2023): no stem pooling, stride in the stages.

STT's student has stage strides (1, 2, 2, 4) and no max-pool: layer2 ("res3" in the paper) at stride 4,
layer3 ("res4") at stride 8, layer4 ("res5") at stride 32. Its evaluation network keeps layer3 at
stride 8 the same way (strides (1, 2, 2, 1)), which a standard vlprop ``resnet18`` at stride 8 does
not reproduce (it puts that factor 2 in the max-pool). ``stt_resnet18`` is that layout:

* ``stride=8`` (default): no max-pool, layer2 /2, layer3 /2 (vlprop's ``res3`` = paper's res4), layer4 /1;
* ``stride=4``: no max-pool, layer3 and layer4 at stride 1.

Weights and parameter names are torchvision's, so ImageNet weights load (from the local torch cache).
"""
from __future__ import annotations

import dataclasses
import os

from vlprop.backbones.registry import register_backbone
from vlprop.backbones.resnet import LAYERS, RESNET18, ResNetBackbone, _LAYER_ALIASES, _normalise_layer
from vlprop.backbones.weights import load_imagenet_weights, load_weights, open_checkpoint
from vlprop.errors import CheckpointError, InputError

STT_RESNET18 = dataclasses.replace(RESNET18, arch="stt_resnet18", default_layer="res3", default_stride=8)
STT_STRIDES = (4, 8)


class STTResNetBackbone(ResNetBackbone):
    """``resnet18`` without max-pool whose stride-8 factor sits in layer3 (see the module docstring)."""

    def __init__(self, spec=STT_RESNET18, stride: int = 8, layer: str = "res3", **kw) -> None:
        layer = _normalise_layer(layer)
        if stride not in STT_STRIDES:
            raise InputError(f"stt_resnet18: output stride must be 4 or 8, got {stride!r}")
        if stride == 8 and layer == "res2":
            raise InputError("stt_resnet18: res2 (layer2) has stride 4 in this layout; use stride=4")
        super().__init__(spec, stride=4, layer=layer, **kw)  # no max-pool, layer3/4 at stride 1
        if stride == 8:
            first = self.layer3[0]
            first.conv1.stride = (2, 2)
            first.downsample[0].stride = (2, 2)
            self.stride = 8

    def set_layer4_stride(self, s: int) -> None:
        """Training only: STT's student runs layer4 at stride ``s`` (4: res5 at stride 32)."""
        if "res4" not in self.stages:
            raise InputError("this trunk has no layer4")
        first = self.layer4[0]
        first.conv1.stride = (s, s)
        first.downsample[0].stride = (s, s)


def stt_resnet18(*, stride: int | None = None, layer: str | None = None, padding_mode: str | None = None,
                 weights: str | os.PathLike | None = "random", seed: int = 0, weights_format: str | None = None,
                 head_dim: int | None = None, allow_pickle: bool = False) -> STTResNetBackbone:
    """STT's ResNet-18 layout (default ``layer="res3"``, stride 8). ``weights``: ``"random"``, ``"imagenet"``
    (torchvision weights) or a checkpoint file (any layout the ResNet loader knows)."""
    ckpt = None
    if weights not in (None, "random", "imagenet"):
        ckpt = open_checkpoint(weights, weights_format=weights_format, allow_pickle=allow_pickle)
        rec = ckpt.recorded_config()
        if rec.get("arch") not in (None, "stt_resnet18", "resnet18"):
            raise CheckpointError(f"{ckpt.path}: checkpoint was saved for arch {rec.get('arch')!r}, not 'stt_resnet18'")
        if rec.get("arch") == "stt_resnet18":
            stride = stride if stride is not None else rec.get("stride")
            layer = layer if layer is not None else rec.get("layer")
        padding_mode = padding_mode if padding_mode is not None else rec.get("padding_mode")
    net = STTResNetBackbone(STT_RESNET18, stride=stride or 8, layer=layer or "res3",
                            padding_mode=padding_mode or "zeros", head_dim=head_dim, seed=seed)
    if ckpt is not None:
        if ckpt.meta.get("arch") == "resnet18":
            ckpt.meta["arch"] = "stt_resnet18"  # same parameters; only the stride placement differs
        load_weights(net, ckpt)
    elif weights == "imagenet":
        load_imagenet_weights(net, RESNET18.imagenet())
    return net.eval()


stt_resnet18.spec = STT_RESNET18  # type: ignore[attr-defined]
stt_resnet18.layers = (*LAYERS, *_LAYER_ALIASES)  # type: ignore[attr-defined]
stt_resnet18.strides = STT_STRIDES  # type: ignore[attr-defined]
register_backbone(stt_resnet18)

__all__ = ["STTResNetBackbone", "stt_resnet18", "STT_RESNET18"]
