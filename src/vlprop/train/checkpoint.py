"""Training checkpoints: the vlprop model format and the resumable training state.

A run directory holds

* ``last.pt`` -- the vlprop model **plus** a ``"training"`` entry (optimiser, scheduler, AMP scaler,
  step, per-rank RNG states, configuration, best score) from which a run resumes exactly;
* ``best.pt`` -- the vlprop model with the best validation score so far (when validation runs).

The vlprop model format (readable by ``vlprop.backbones.create_backbone(arch, weights=path)``)::

    {"format": "vlprop", "version": 1, "arch": "resnet18", "layer": "res4", "stride": 8,
     "padding_mode": "zeros", "head_dim": 128,
     "state_dict": {backbone weights, torchvision names ("conv1.weight", "layer4.1.bn2.bias", ...),
                    and the key head under "head.*"},
     "head": {head weights: "conv1.*", "bn1.*", "conv2.*"},
     "meta": {"method": "dul", "step": ..., "config": {...}, ...}}

The head appears twice on purpose: under ``"head"`` as specified for training checkpoints, and under
``"head.*"`` in ``state_dict`` so the backbones loader can also build the ``layer="head"`` (key)
network from the same file; a ``res4`` backbone ignores those keys. Every entry is a plain Python
value or a tensor, so the file loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import dataclasses
import os
import random
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn

from vlprop.backbones.weights import blocked_pickle_object, pickled_code_message
from vlprop.errors import CheckpointError
from vlprop.io.files import atomic_path
from vlprop.model import RUN_BEST, RUN_LAST, resolve_run_weights

LAST = RUN_LAST
BEST = RUN_BEST
FORMAT_VERSION = 1


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def model_checkpoint(net: nn.Module, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The vlprop-format dict of a backbone + key head network (e.g. :class:`~vlprop.train.methods.dul.DULNet`).

    ``net.backbone`` must carry ``arch``, ``stride`` (and ideally ``layer``); its state-dict keys are
    written unchanged (vlprop ResNets use torchvision names).
    """
    backbone, head = net.backbone, net.head
    state = _cpu_state(backbone)
    head_state = _cpu_state(head)
    state.update({f"head.{k}": v for k, v in head_state.items()})
    arch = getattr(backbone, "arch", type(backbone).__name__)
    obj: dict[str, Any] = {
        "format": "vlprop",
        "version": FORMAT_VERSION,
        "arch": arch,
        # the layer propagation uses (a method may train deeper layers than it exports, e.g. STT)
        "layer": (dict(meta or {}).get("export") or {}).get("layer") or getattr(backbone, "layer", "res4"),
        "stride": int(backbone.stride),
        "padding_mode": getattr(backbone, "padding_mode", "zeros"),
        "head_dim": int(getattr(net, "key_dim", 0)) or None,
        "state_dict": state,
        "head": head_state,
        "meta": dict(meta or {}),
    }
    if obj["head_dim"] is None:
        del obj["head_dim"]
    pre = getattr(backbone, "preprocessing", None)
    if pre is not None:  # the input the weights were trained on (read back by the backbones loader)
        obj["preprocessing"] = dataclasses.asdict(pre)
    return obj


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy (global) and torch (CPU + CUDA) generator states as plain values/tensors."""
    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, obj: Mapping[str, Any]) -> Path:
    """Write a checkpoint dict atomically (complete file or none)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(dict(obj), tmp)
    return path


def resolve_resume(path: str | os.PathLike) -> Path:
    """A run directory -> its ``last.pt``; a file -> itself. Raises :class:`CheckpointError` if absent."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / LAST
    if not p.is_file():
        raise CheckpointError(f"no training checkpoint at {p} (expected a run directory with {LAST} or a .pt file)")
    return p


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a vlprop training or model checkpoint (tensors and plain values only)."""
    p = Path(path)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated / not a torch file / foreign pickles
        blocked = blocked_pickle_object(exc)
        if blocked is not None:  # never repeat torch's advice to re-run with weights_only=False
            raise CheckpointError(pickled_code_message(p, blocked)) from None
        raise CheckpointError(f"cannot read checkpoint {p}: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict) or obj.get("format") != "vlprop":
        raise CheckpointError(f"{p} is not a vlprop checkpoint (missing format='vlprop')")
    return obj


def load_model_weights(net: nn.Module, obj: Mapping[str, Any], source: str = "checkpoint") -> None:
    """Load a vlprop-format dict into ``net`` (backbone + head), strictly."""
    state = obj["state_dict"]
    backbone_state = {k: v for k, v in state.items() if not k.startswith("head.")}
    head_state = obj.get("head") or {k[5:]: v for k, v in state.items() if k.startswith("head.")}
    for part, sd in (("backbone", backbone_state), ("head", head_state)):
        module = getattr(net, part)
        try:
            module.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{source}: {part} weights do not match the model: {exc}") from None


def training_meta(method: str, step: int, config: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    return {"method": method, "step": int(step), "config": dict(config),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}


def export_model(src: str | os.PathLike, out: str | os.PathLike, *, half: bool = True,
                 meta: Mapping[str, Any] | None = None) -> Path:
    """Write the model of a run directory / checkpoint as a compact vlprop model file (atomically).

    Keeps the vlprop model entries (no optimiser or training state, so the file is what a user ships);
    ``half`` stores floating-point tensors as float16 (loaders cast back to the network's dtype, so the
    file halves in size at a relative rounding error of about 5e-4 per weight). ``meta`` entries (plain
    values: metrics, data, command) are merged into the file's ``meta``.
    """
    src_path = resolve_run_weights(src)
    obj = load_checkpoint(src_path)

    def conv(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: (v.half() if half and v.is_floating_point() else v).clone() for k, v in sd.items()}

    model = {k: v for k, v in obj.items() if k != "training"}
    model["state_dict"] = conv(obj["state_dict"])
    if isinstance(obj.get("head"), Mapping):
        model["head"] = conv(obj["head"])
    info = dict(obj.get("meta") or {})
    info.update({"exported_from": str(src_path), "dtype": "float16" if half else "float32"})
    info.update(dict(meta or {}))
    model["meta"] = info
    return save_checkpoint(out, model)
