"""Process-group helpers for data-parallel training (``torchrun``; gloo on CPU, NCCL on CUDA).

Besides set-up, this module holds the two collectives that make an ``R``-process run compute the
*same* loss and gradients as one process with the same global batch:

* :func:`gather_cat` -- a differentiable all-gather (DUL's losses contrast every clip of the global
  batch against every other, so anchors and cross-view points are gathered from all ranks);
* :class:`SyncBatchNormCPU` -- batch norm with statistics over the global batch on CPU (PyTorch's
  ``SyncBatchNorm`` only runs on accelerators).
"""
from __future__ import annotations

import contextlib
import datetime
import os
import threading
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class DistInfo:
    """Rank layout of this process; ``world_size == 1`` means single-process training."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str = "cpu", timeout_s: float = 600.0) -> DistInfo:
    """Join the process group described by the ``torchrun`` environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); without it, return a single-process layout.

    The backend is NCCL for CUDA devices and gloo otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank)


_local = threading.local()


def is_distributed() -> bool:
    """True inside a multi-process group, unless collectives are disabled (:func:`local_only`)."""
    if getattr(_local, "disabled", False):
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Run code on one rank without collectives (e.g. validation on rank 0 while others wait):
    :func:`gather_cat`, :func:`all_reduce_sum` and :class:`SyncBatchNormCPU` act locally inside."""
    prev = getattr(_local, "disabled", False)
    _local.disabled = True
    try:
        yield
    finally:
        _local.disabled = prev


class _GatherCat(torch.autograd.Function):
    """All-gather along dim 0; backward sums the gradients of all ranks and keeps this rank's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.rank = dist.get_rank()
        ctx.n = x.shape[0]
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` ``[n, ...]`` of all ranks in rank order -> ``[R*n, ...]`` (identity when not
    distributed). Gradients flow back to the rank that produced each slice."""
    if not is_distributed():
        return x
    return _GatherCat.apply(x)


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.contiguous().clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        g = grad.contiguous().clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        return g


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Differentiable sum over ranks (identity when not distributed)."""
    if not is_distributed():
        return x
    return _AllReduceSum.apply(x)


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """Average of a (detached) tensor over ranks, for logging."""
    x = x.detach().clone()
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= dist.get_world_size()
    return x


class SyncBatchNormCPU(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training-mode statistics are computed over all ranks' batches.

    Same parameters, buffers and state-dict keys as ``BatchNorm2d``. Two-pass statistics (global mean,
    then global mean squared deviation) through differentiable all-reduces, so forward *and* backward
    match a single process that sees the concatenated batch. Outside distributed training it is
    exactly ``BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        self._check_input_dim(x)
        C = x.shape[1]
        dims = (0, 2, 3)
        count = torch.tensor([x.numel() / C], dtype=x.dtype, device=x.device)
        n = all_reduce_sum(count)
        mean = all_reduce_sum(x.sum(dims)) / n
        centred = x - mean.view(1, C, 1, 1)
        var = all_reduce_sum(centred.pow(2).sum(dims)) / n  # biased, used to normalise
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (n / (n - 1).clamp_min(1))
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach(), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(1, C, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, C, 1, 1) + self.bias.view(1, C, 1, 1)
        return y


def convert_sync_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """Replace every ``BatchNorm2d`` by a synchronised one (in place; returns ``module``).

    CUDA uses PyTorch's ``SyncBatchNorm``; CPU uses :class:`SyncBatchNormCPU`. Parameters and buffers
    are kept (the same tensors), so optimiser state and checkpoints are unaffected.
    """
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in list(module.named_children()):
        if type(child) is nn.BatchNorm2d:
            new = SyncBatchNormCPU(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats, device=child.weight.device if child.affine else None)
            if child.affine:
                new.weight = child.weight
                new.bias = child.bias
            if child.track_running_stats:
                new.running_mean = child.running_mean
                new.running_var = child.running_var
                new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_sync_batchnorm(child, device_type)
    return module


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """Send a picklable object from ``src`` to all ranks (identity when not distributed)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj) -> list:
    """Every rank's ``obj`` in rank order (``[obj]`` when not distributed)."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
