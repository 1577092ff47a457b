"""Inference-time rewrites of a backbone: BatchNorm folding, memory format, precision support.

:func:`fold_batchnorm` merges every eval-mode BatchNorm that directly follows a convolution into that
convolution (``W' = W * g / sqrt(v + eps)``, ``b' = (b - m) * g / sqrt(v + eps) + beta``), which is exact up
to float32 rounding and saves one pass over every activation. The pairs are found by running the network once
on a small probe input (a BatchNorm whose input tensor *is* a convolution's output), so it works for any
module layout (torchvision ResNets, timm EfficientNets with their ``BatchNormAct2d``) without tracing; a
folded network is checked against the original on that probe and the original is kept if they disagree (e.g.
a convolution output also used elsewhere).

:func:`bf16_supported` says whether a device runs bfloat16 natively (``--precision bf16``).
"""
from __future__ import annotations

import copy
import logging

import torch
import torch.nn as nn

from vlprop.errors import InputError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")


class _BNRemainder(nn.Module):
    """What is left of a folded BatchNorm: nothing, or the activation of a timm ``BatchNormAct2d``."""

    def __init__(self, drop: nn.Module | None = None, act: nn.Module | None = None) -> None:
        super().__init__()
        self.drop = drop if drop is not None else nn.Identity()
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(x))


def _conv_bn_pairs(net: nn.Module, probe: torch.Tensor) -> list[tuple[str, str]]:
    """``(conv name, bn name)`` of every BatchNorm fed directly by a convolution's output on ``probe``."""
    names = {m: n for n, m in net.named_modules()}
    produced: dict[int, str] = {}
    calls: dict[str, int] = {}
    pairs: list[tuple[str, str]] = []
    hooks = []

    def conv_hook(mod, inp, out):
        produced[id(out)] = names[mod]
        calls[names[mod]] = calls.get(names[mod], 0) + 1

    def bn_hook(mod, inp):
        src = produced.get(id(inp[0]))
        if src is not None:
            pairs.append((src, names[mod]))

    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.BatchNorm2d):
            hooks.append(m.register_forward_pre_hook(bn_hook))
    try:
        with torch.no_grad():
            net(probe)
    finally:
        for h in hooks:
            h.remove()
    fed = {c: sum(1 for c2, _ in pairs if c2 == c) for c, _ in pairs}
    used = {b: sum(1 for _, b2 in pairs if b2 == b) for _, b in pairs}
    # a conv called twice or feeding two BatchNorms (or a BatchNorm called twice) cannot be folded
    return [(c, b) for c, b in pairs if calls.get(c) == 1 and fed[c] == 1 and used[b] == 1]


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    w = conv.weight.double()
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(mean)
    conv.weight.copy_((w * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype))
    new_bias = ((bias - mean) * scale + beta).to(conv.weight.dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias, requires_grad=conv.weight.requires_grad)
    else:
        conv.bias.copy_(new_bias)


def fold_batchnorm(net: nn.Module, probe_size: tuple[int, int] = (64, 64), inplace: bool = False,
                   check: bool = True) -> nn.Module:
    """``net`` (eval mode) with every conv -> BatchNorm pair merged into the conv.

    Args:
        net: network taking ``[B, 3, H, W]``; must be in eval mode (training BatchNorm uses batch statistics,
            which cannot be folded).
        probe_size: ``(H, W)`` of the probe input that discovers the pairs (any size the network accepts).
        inplace: rewrite ``net`` itself (only when nothing else holds it, e.g. a freshly built network);
            otherwise a deep copy is rewritten and ``net`` is left untouched.
        check: compare the folded network with the original on the probe; on a mismatch (relative error
            above 1e-3) the original is returned and a warning logged.

    Returns:
        the folded network (``net`` itself when ``inplace``), with attribute ``bn_folded`` = number of folds.
    """
    if net.training:
        raise InputError("fold_batchnorm needs a network in eval mode (call .eval())")
    if not any(isinstance(m, nn.BatchNorm2d) for m in net.modules()):  # ViTs: nothing to fold, no probe pass
        net.bn_folded = 0
        return net
    p = next(iter(net.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    gen = torch.Generator().manual_seed(0)
    probe = torch.randn(1, 3, *probe_size, generator=gen).to(device=device, dtype=dtype)
    try:
        pairs = _conv_bn_pairs(net, probe)
    except Exception as e:  # a network that does not take the probe (fixed input size ...): left as it is
        log.warning("BatchNorm folding skipped for %s: the probe pass failed (%s)", type(net).__name__, e)
        pairs = []
    if not pairs:
        net.bn_folded = 0
        return net
    with torch.no_grad():
        ref = net(probe).float() if check else None
    out = net if inplace else copy.deepcopy(net)
    backup = {} if (check and inplace) else None
    for conv_name, bn_name in pairs:
        conv, bn = out.get_submodule(conv_name), out.get_submodule(bn_name)
        if backup is not None:
            backup[conv_name] = copy.deepcopy(conv)
            backup[bn_name] = bn
        _fold_into(conv, bn)
        _set_module(out, bn_name, _BNRemainder(getattr(bn, "drop", None), getattr(bn, "act", None)))
    if check:
        with torch.no_grad():
            got = out(probe).float()
        err = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
        if not err <= 1e-3:
            log.warning("BatchNorm folding changed the output of %s (relative error %.3g); not folding",
                        type(net).__name__, err)
            if backup is not None:
                for name, mod in backup.items():
                    _set_module(out, name, mod)
                out.bn_folded = 0
                return out
            net.bn_folded = 0
            return net
    out.bn_folded = len(pairs)
    return out


def bf16_supported(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` computes in bfloat16 natively (CUDA: ``torch.cuda.is_bf16_supported()``; CPU: oneDNN
    with AVX512-BF16 or AMX, as ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` reports)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type == "cpu":
        if not torch.backends.mkldnn.is_available():
            return False
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # pragma: no cover - old torch
            return False
    return False


def check_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """``precision`` if it is one of :data:`PRECISIONS` and ``device`` supports it; :class:`InputError` otherwise."""
    if precision not in PRECISIONS:
        raise InputError.about("precision", "--precision",
                               lambda a: f"{a} must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" and not bf16_supported(device):
        dev = torch.device(device)
        why = ("this GPU has no bfloat16 support (torch.cuda.is_bf16_supported() is False)" if dev.type == "cuda"
               else "this CPU has no native bfloat16 (oneDNN needs AVX512-BF16 or AMX)" if dev.type == "cpu"
               else f"bfloat16 is not supported on {dev.type}")
        raise InputError.about("precision", "--precision", lambda a: f"{a} bf16 requested but {why}; use {a} fp32")
    return precision


__all__ = ["fold_batchnorm", "bf16_supported", "check_precision", "PRECISIONS"]
