"""A trunk followed by the 3x3 embedding convolution a training method put on it: feature layer ``embed``.

MAST and LIIR train a ``post_convolution`` (3x3 conv to 64 channels) on their encoder and match *its* output
at test time. On their own ResNet (``mast_resnet18``) that head is the backbone's ``head`` layer. On another
family's trunk (e.g. ``vlprop train mast --arch efficientnet_lite1``) the run file stores the trunk's weights
with the head next to them (``obj["head"] = {"weight": [D, C, 3, 3], "bias": [D]}``); ``layer="embed"`` asks
for the trunk (at the layer and stride it was trained at, as the file records) followed by that convolution::

    net = embedded_backbone(create_backbone("efficientnet_lite1", weights=run_file), run_file)

The model layer does this when ``--layer embed`` (or a run's recorded protocol) names it.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn as nn

from ..errors import CheckpointError

EMBED_LAYER = "embed"


def conv_head_state(obj: Mapping[str, Any] | None) -> dict[str, torch.Tensor] | None:
    """The ``{"weight", "bias"}`` of a vlprop checkpoint's single-convolution head (MAST/LIIR's 3x3
    ``post_convolution``), or ``None`` when the file has no such head (e.g. DUL's 1x1 MLP, or none)."""
    head = (obj or {}).get("head")
    if not isinstance(head, Mapping) or set(head) != {"weight", "bias"}:
        return None
    w, b = head["weight"], head["bias"]
    if not (isinstance(w, torch.Tensor) and isinstance(b, torch.Tensor) and w.dim() == 4 and b.dim() == 1
            and w.shape[0] == b.shape[0] and w.shape[2] == w.shape[3] and w.shape[2] % 2 == 1):
        return None
    return {"weight": w, "bias": b}


class EmbeddedBackbone(nn.Module):
    """``head(trunk(x))``: the trunk's attributes (``arch``, ``stride``, ``preprocessing``, ``grid_size``) with
    ``layer = "embed"`` and ``out_dim`` = the head's output channels."""

    def __init__(self, trunk: nn.Module, head: nn.Conv2d):
        super().__init__()
        self.trunk = trunk
        self.head = head
        self.arch = getattr(trunk, "arch", type(trunk).__name__)
        self.layer = EMBED_LAYER
        self.trunk_layer = getattr(trunk, "layer", None)
        self.stride = int(trunk.stride)
        self.out_dim = int(head.out_channels)

    @property
    def preprocessing(self):
        return getattr(self.trunk, "preprocessing", None)

    @preprocessing.setter
    def preprocessing(self, value) -> None:
        self.trunk.preprocessing = value

    @property
    def weights_format(self):
        return getattr(self.trunk, "weights_format", None)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        return self.trunk.grid_size(height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))

    def extra_repr(self) -> str:
        return f"arch={self.arch}, trunk layer={self.trunk_layer}, stride={self.stride}, out_dim={self.out_dim}"


def embedded_backbone(trunk: nn.Module, obj: Mapping[str, Any], source: Any = "checkpoint") -> EmbeddedBackbone:
    """``trunk`` followed by the convolution head stored in the vlprop checkpoint ``obj`` (read from ``source``,
    named in errors). Raises :class:`~vlprop.errors.CheckpointError` when the file has no such head or its input
    channels are not the trunk's."""
    state = conv_head_state(obj)
    if state is None:
        raise CheckpointError(f"{source}: has no 3x3 embedding head (a MAST/LIIR run on another family's trunk "
                              f"stores one); layer {EMBED_LAYER!r} needs it -- use the trunk layer instead")
    w = state["weight"]
    out_c, in_c, k, _ = w.shape
    if in_c != int(trunk.out_dim):
        raise CheckpointError(f"{source}: its embedding head takes {in_c} channels but the trunk "
                              f"{getattr(trunk, 'arch', '?')} layer {getattr(trunk, 'layer', '?')} gives "
                              f"{int(trunk.out_dim)}")
    head = nn.Conv2d(in_c, out_c, k, 1, k // 2)
    with torch.no_grad():
        head.weight.copy_(w)
        head.bias.copy_(state["bias"])
    return EmbeddedBackbone(trunk, head).eval()


__all__ = ["EMBED_LAYER", "EmbeddedBackbone", "conv_head_state", "embedded_backbone"]
