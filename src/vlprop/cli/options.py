"""Options shared by the ``vlprop`` verbs: model arguments and ``--set KEY=VALUE`` parsing."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from vlprop.backbones.fusion import PRECISIONS
from vlprop.errors import InputError
from vlprop.model import NAMED_MODELS, ModelSpec


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs, each value coerced to its setting's type (``topk`` an int, ``feature_norm`` a
    bool, ...; :func:`vlprop.config.coerce_setting`): a wrong type or unknown key is an error here, before
    any work."""
    from vlprop.config import coerce_setting

    out = {}
    for item in items or []:
        if "=" not in item:
            raise InputError(f"--set expects KEY=VALUE (e.g. --set topk=5), got {item!r}")
        k, v = item.split("=", 1)
        key = k.strip().replace("-", "_")
        try:
            out[key] = coerce_setting(key, v.strip())
        except InputError as e:
            raise InputError(f"--set {item}: {e}") from None
    return out


def weights_input(weights: str | None) -> str | None:
    """``--weights`` as an input path (a file or run folder), or None for a named / random model."""
    if weights is None or weights in NAMED_MODELS or weights in ("random", "imagenet"):
        return None
    return weights


def guard_outputs(out: str | None, overlay: str | None, force: bool, inputs: dict[str, Any]) -> None:
    """Check ``--out`` / ``--overlay`` before any work: the overlay's suffix and folder, an existing overlay
    (refused unless ``--force``), and that no output is, contains or lies inside an input (``inputs``:
    flag -> path, e.g. ``{"SOURCE": ..., "--mask": ...}``; refused even with ``--force``)."""
    from vlprop.io.paths import check_new_file, check_writable_parent, refuse_overlap
    from vlprop.io.render import check_video_path

    if out is not None:
        if Path(out).exists() and not Path(out).is_dir():
            raise InputError(f"--out {out} exists and is not a folder")
        if Path(out).is_dir():
            if not os.access(out, os.W_OK | os.X_OK):
                raise InputError(f"cannot write in --out {out}: permission denied")
        else:
            check_writable_parent(out, "--out")
    if overlay is not None:
        check_video_path(overlay, ("overlay", "--overlay"))
        check_new_file(overlay, force, "--overlay")
        if out is not None and Path(overlay).resolve() == Path(out).resolve():
            raise InputError(f"--overlay {overlay} is the --out folder; give a video file name")
    refuse_overlap({"--out": out, "--overlay": overlay}, inputs)


def add_model_args(p: argparse.ArgumentParser, default_preset: str | None = None) -> None:
    """``--preset --backbone --weights --layer --stride --input-scale --short-side --size --colorspace --device
    --precision --seed --compat --set``."""
    shown = default_preset or "the named model's (--weights default: see README), a training run's recorded " \
                              "protocol (its method's paper settings), else dul for masks and waldmann-jhmdb " \
                              "for --keypoints"
    p.add_argument("--preset", default=default_preset, help=f"propagation preset (default {shown}; "
                                                            "see `vlprop presets`)")
    p.add_argument("--backbone", default=None,
                   help="backbone name: resnet18, resnet50, mast_resnet18, efficientnet_lite0/1/2, dino_vits16, ... "
                        "(default: the named model's or the preset's, else resnet18)")
    p.add_argument("--weights", default="default",
                   help=f"named model ({', '.join(sorted(NAMED_MODELS))}; default 'default'), 'random' (seeded), "
                        "'imagenet' (weights an installed package ships), or a checkpoint file / training run folder")
    p.add_argument("--layer", default=None, help="feature layer (ResNet: res2|res3|res4|head; EfficientNet-Lite: "
                                                 "stage0..stage6|head; default: the preset's if the backbone has it, "
                                                 "else the backbone's default, e.g. stage4 for EfficientNet-Lite)")
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
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="fp32 (default, exact) or bf16: bfloat16 backbone and propagation matrix products, about "
                        "2x faster on CPUs with AVX512-BF16/AMX and recent GPUs, approximate (masks differ from "
                        "fp32 on a few pixels); an error on hardware without bfloat16")
    p.add_argument("--seed", type=int, default=0, help="seed of a random-init backbone (default 0)")
    p.add_argument("--compat", action="store_true", help="reproduce the reference code's documented quirks")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any propagation/label setting, e.g. --set topk=5 --set radius=8")


def model_spec_from_args(args: argparse.Namespace) -> ModelSpec:
    """The :class:`~vlprop.model.ModelSpec` of parsed model arguments (missing options take defaults)."""
    from vlprop.backbones.extractor import check_device
    from vlprop.backbones.fusion import check_precision

    overrides = parse_sets(getattr(args, "set", None))
    check_device(getattr(args, "device", "cpu"))  # before any work, not deep inside torch
    precision = getattr(args, "precision", None) or "fp32"
    check_precision(precision, getattr(args, "device", "cpu"))  # bf16 on hardware without it: say so now
    # checked here because 0 would otherwise read as "not given" and silently take the preset's value
    for flag, value, ok, rule in (("--stride", getattr(args, "stride", None), lambda v: v >= 1, "an integer >= 1"),
                                  ("--input-scale", getattr(args, "input_scale", None), lambda v: 0 < v <= 16,
                                   "a factor in (0, 16]"),
                                  ("--short-side", getattr(args, "short_side", None), lambda v: v >= 1,
                                   "a positive number of pixels")):
        if value is not None and not ok(value):
            raise InputError(f"{flag} must be {rule}, got {value}")
    for key in ("size", "colorspace"):
        if getattr(args, key, None) is not None:
            overrides[key] = getattr(args, key)
    return ModelSpec(preset=getattr(args, "preset", None), backbone=getattr(args, "backbone", None),
                     weights=getattr(args, "weights", "default"), layer=getattr(args, "layer", None),
                     stride=getattr(args, "stride", None), input_scale=getattr(args, "input_scale", None),
                     short_side=getattr(args, "short_side", None), device=getattr(args, "device", "cpu"),
                     seed=getattr(args, "seed", 0), compat=getattr(args, "compat", False),
                     overrides=tuple(sorted(overrides.items())), precision=precision)
