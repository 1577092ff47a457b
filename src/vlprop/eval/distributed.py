"""Rank layout and the few collectives a sharded evaluation needs (``torchrun``, gloo).

An evaluation launched with ``torchrun --nproc_per_node=N -m vlprop.cli eval vos ...`` runs one
process per rank (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` set by torchrun).
Sequences are sharded deterministically, balanced by frame count (see :func:`shard`); every rank
writes its own predictions and done markers to the shared output folder; the ranks then exchange
one status object each (which doubles as the barrier), and rank 0 scores everything.

Only Python objects are exchanged, so the backend is always gloo (CPU), whatever device the
propagation runs on.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

T = TypeVar("T")

__all__ = ["Ranks", "ranks_from_env", "init_ranks", "shard", "gather_objects", "shutdown"]

DEFAULT_TIMEOUT_S = 24 * 3600.0  # ranks may wait for the slowest shard for a long time


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job; ``world_size == 1`` = a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        if default is None:
            raise RuntimeError(f"environment variable {name} is not set (expected from torchrun)")
        return default
    try:
        return int(raw)
    except ValueError:
        raise RuntimeError(f"environment variable {name}={raw!r} is not an integer") from None


def ranks_from_env() -> Ranks:
    """The layout described by torchrun's environment (single process when ``WORLD_SIZE`` is unset or 1)."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return Ranks()
    rank = _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK", rank)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    if not 0 <= rank < world:
        raise RuntimeError(f"RANK={rank} is outside 0..WORLD_SIZE-1={world - 1}")
    return Ranks(rank, world, local_rank, local_world)


def init_ranks(timeout_s: float = DEFAULT_TIMEOUT_S) -> Ranks:
    """Join the torchrun process group (gloo) if the environment describes one; return the layout."""
    ranks = ranks_from_env()
    if ranks.distributed:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="gloo", rank=ranks.rank, world_size=ranks.world_size,
                                    timeout=datetime.timedelta(seconds=timeout_s))
    return ranks


def shard(items: Sequence[T], ranks: Ranks, cost: Callable[[T], float] | None = None) -> list[T]:
    """This rank's share of ``items``, in their original order.

    Without ``cost``: items ``i`` with ``i % world_size == rank``. With ``cost`` (e.g. a video's frame
    count): longest-processing-time-first balancing -- items by decreasing cost (ties in list order), each
    to the rank with the least total so far (ties to the lower rank) -- so no rank is left with several
    long videos while others idle. Every rank computes the same assignment from the same list.
    """
    n = ranks.world_size
    if cost is None:
        return [x for i, x in enumerate(items) if i % n == ranks.rank]
    costs = [float(cost(x)) for x in items]
    load = [0.0] * n
    owner = [0] * len(items)
    for i in sorted(range(len(items)), key=lambda j: (-costs[j], j)):
        r = min(range(n), key=lambda q: (load[q], q))
        owner[i] = r
        load[r] += costs[i]
    return [x for i, x in enumerate(items) if owner[i] == ranks.rank]


def gather_objects(obj: Any, ranks: Ranks) -> list[Any]:
    """Every rank's picklable ``obj`` in rank order; a synchronisation point for all ranks."""
    if not ranks.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(out, obj)
    return out


def shutdown(ranks: Ranks) -> None:
    """Leave the process group (no-op for single-process runs)."""
    if ranks.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
