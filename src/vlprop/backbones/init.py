"""Seeded, reproducible parameter initialisation shared by the backbone families (ResNet, EfficientNet-Lite)."""
from __future__ import annotations

import torch
import torch.nn as nn

from vlprop.errors import InputError


def seeded_generator(seed: int) -> torch.Generator:
    """A private CPU generator seeded with ``seed`` (an int; bools and other types are refused)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed must be an int, got {seed!r}")
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    return gen


@torch.no_grad()
def reset_batchnorm_(m: nn.BatchNorm2d) -> None:
    """Identity BatchNorm: weight 1, bias 0, running mean 0, running var 1, no batches tracked."""
    m.weight.fill_(1.0)
    m.bias.zero_()
    m.running_mean.zero_()
    m.running_var.fill_(1.0)
    m.num_batches_tracked.zero_()


__all__ = ["seeded_generator", "reset_batchnorm_"]
