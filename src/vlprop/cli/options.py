"""Options shared by the ``vlprop`` verbs: model arguments and ``--set KEY=VALUE`` parsing."""
from __future__ import annotations

import argparse
from typing import Any

from vlprop.errors import InputError
from vlprop.model import NAMED_MODELS, ModelSpec


def _parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise InputError(f"--set expects KEY=VALUE (e.g. --set topk=5), got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = _parse_value(v.strip())
    return out


def add_model_args(p: argparse.ArgumentParser, default_preset: str | None = None) -> None:
    """``--preset --backbone --weights --layer --stride --input-scale --short-side --size --colorspace --device --seed
    --compat --set``."""
    shown = default_preset or "the named model's (--weights default: see README), else dul for masks and " \
                              "waldmann-jhmdb for --keypoints"
    p.add_argument("--preset", default=default_preset, help=f"propagation preset (default {shown}; "
                                                            "see `vlprop presets`)")
    p.add_argument("--backbone", default=None,
                   help="backbone name: resnet18, resnet50, mast_resnet18, efficientnet_lite0/1/2, dino_vits16, ... "
                        "(default: the named model's or the preset's, else resnet18)")
    p.add_argument("--weights", default="default",
                   help=f"named model ({', '.join(sorted(NAMED_MODELS))}; default 'default'), 'random' (seeded), "
                        "'imagenet' (weights an installed package ships), or a checkpoint file / training run folder")
    p.add_argument("--layer", default=None, help="feature layer (ResNet: res2|res3|res4|head; default: the preset's "
                                                 "if the backbone has it, else the backbone's default)")
    p.add_argument("--stride", type=int, default=None, help="output stride of the features (default: the preset's)")
    p.add_argument("--input-scale", type=float, default=None, help="resize frames by this factor before the "
                                                                    "backbone (e.g. 2 = x2 up-sampling)")
    p.add_argument("--short-side", type=int, default=None, help="resize frames so the short side has this length")
    p.add_argument("--size", default=None, metavar="HxW",
                   help="resize every frame to this fixed size, aspect not kept (e.g. 320x320 as CRW on JHMDB); "
                        "replaces the preset's short side / scale")
    p.add_argument("--colorspace", default=None, choices=("rgb", "lab", "lab_l"),
                   help="network input colour space when the weights do not fix one (lab: MAST/LIIR/STT, "
                        "lab_l: UVC grey); default: the preset's")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of a random-init backbone (default 0)")
    p.add_argument("--compat", action="store_true", help="reproduce the reference code's documented quirks")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any propagation/label setting, e.g. --set topk=5 --set radius=8")


def model_spec_from_args(args: argparse.Namespace) -> ModelSpec:
    """The :class:`~vlprop.model.ModelSpec` of parsed model arguments (missing options take defaults)."""
    overrides = parse_sets(getattr(args, "set", None))
    for key in ("size", "colorspace"):
        if getattr(args, key, None) is not None:
            overrides[key] = getattr(args, key)
    return ModelSpec(preset=getattr(args, "preset", None), backbone=getattr(args, "backbone", None),
                     weights=getattr(args, "weights", "default"), layer=getattr(args, "layer", None),
                     stride=getattr(args, "stride", None), input_scale=getattr(args, "input_scale", None),
                     short_side=getattr(args, "short_side", None), device=getattr(args, "device", "cpu"),
                     seed=getattr(args, "seed", 0), compat=getattr(args, "compat", False),
                     overrides=tuple(sorted(overrides.items())))
