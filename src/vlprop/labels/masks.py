"""Mask label codec: index masks <-> soft label maps ``[1 + K, h, w]`` on the feature grid.

Channel 0 is background, channel ``c >= 1`` is object ``ids[c - 1]``: ids are explicit, never colours.
"""
from __future__ import annotations

import numpy as np
import torch

from ..geometry import GridGeometry
from ..io.masks import mask_to_onehot


def encode_mask(mask: np.ndarray, ids: list[int], geometry: GridGeometry, mode: str = "area",
                void: int | None = None) -> torch.Tensor:
    """Index mask ``[H, W]`` -> label map ``[1 + len(ids), h, w]`` (float32) on the grid of ``geometry``."""
    onehot = torch.from_numpy(mask_to_onehot(mask, ids, void=void))
    return geometry.encode(onehot, mode=mode)


def decode_probs(probs: torch.Tensor, geometry: GridGeometry, output_minmax: bool = False) -> torch.Tensor:
    """Grid probabilities ``[C, h, w]`` -> full-resolution scores ``[C, H, W]`` (bilinear, cell centres).

    ``output_minmax`` rescales each channel to [0, 1] over the frame before the argmax (DINO/WALD codec).
    """
    up = geometry.decode(probs)
    if output_minmax:
        flat = up.reshape(up.shape[0], -1)
        mn = flat.min(1, keepdim=True).values
        mx = flat.max(1, keepdim=True).values
        up = ((flat - mn) / (mx - mn).clamp_min(1e-12)).reshape(up.shape)
    return up


def probs_to_mask(scores: torch.Tensor, ids: list[int]) -> np.ndarray:
    """Full-resolution scores ``[1 + K, H, W]`` -> index mask ``[H, W]`` uint8 (argmax, channel -> id)."""
    lut = np.array([0] + list(ids), dtype=np.uint8)
    return lut[channel_argmax(scores).numpy()]


def channel_argmax(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmax(0)`` (first maximum wins) for ``[C, H, W]`` scores without NaN, as one running comparison
    per channel: torch's CPU reduction over the outer dimension took 0.13 s for 2 x 480 x 854 scores, this 6 ms
    (one thread, this 2-core Xeon); int64 ``[H, W]``."""
    best = scores[0].clone()
    index = torch.zeros(scores.shape[1:], dtype=torch.long, device=scores.device)
    for c in range(1, scores.shape[0]):
        better = scores[c] > best
        index.masked_fill_(better, c)
        torch.maximum(best, scores[c], out=best)
    return index
