"""Per-frame, per-object confidence of propagated masks: a score in [0, 1] meant to rank frames for review.

For object ``i`` on a frame with grid probabilities ``p = probs[c_i]`` (``[h, w]``) and its hard decision
``d = (argmax_c probs == c_i)`` on the same grid:

* ``sharpness = sum(min(p, d)) / sum(max(p, d))`` -- the soft IoU between the probability map and its own
  decision: 1 when the object's mass is all certain (p = 1 inside, 0 outside), lower when the mass is spread
  or undecided (boundary blur, leaking onto look-alikes). 0 when the object has no mass at all.
* ``stability = min(a_t, a_prev) / max(a_t, a_prev)`` with ``a`` the object's area in the full-resolution mask
  on this frame and the previous frame: sudden growth or shrinkage (drift, loss) lowers it;
  1 if both are 0.
* ``confidence = sharpness * stability``.

Labelled frames get confidence 1 for every object (a person drew them, or saw them while drawing). ``benchmarks/confidence_vs_error.py`` measures how well it ranks frames by
their J on DAVIS (Spearman correlation).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ObjectConfidence:
    """One object on one frame: area in pixels of the full-resolution mask, and the scores (see module)."""

    frame: int
    name: str
    object_id: int
    area: int
    sharpness: float
    stability: float
    confidence: float
    annotated: bool = False

    def row(self) -> dict:
        return {"frame_index": self.frame, "frame": self.name, "object_id": self.object_id,
                "confidence": round(self.confidence, 6), "sharpness": round(self.sharpness, 6),
                "stability": round(self.stability, 6), "area": self.area, "annotated": int(self.annotated)}


def sharpness(probs: torch.Tensor, channel: int) -> float:
    """Soft IoU of channel ``channel`` of ``probs [C, h, w]`` with its own argmax decision (module docstring)."""
    p = probs[channel].clamp(0, 1).double()
    d = (probs.argmax(0) == channel).double()
    den = torch.maximum(p, d).sum()
    return float(torch.minimum(p, d).sum() / den) if den > 0 else 0.0


def stability(area: int, previous: int | None) -> float:
    """``min / max`` of the object's area on this and the previous frame (1 when there is no previous frame)."""
    if previous is None or max(area, previous) == 0:
        return 1.0
    return min(area, previous) / max(area, previous)


class ConfidenceTracker:
    """Feed frames in propagation order; get an :class:`ObjectConfidence` per object per frame.

    ``update(index, name, mask [H, W], probs [1+K, h, w] or None, object_ids, annotated)``. Frames without
    objects (before the first label) give no rows.
    """

    def __init__(self):
        self._prev_area: dict[int, int] = {}

    def update(self, index: int, name: str, mask: np.ndarray, probs: torch.Tensor | None, object_ids: list[int],
               annotated: bool = False) -> list[ObjectConfidence]:
        rows = []
        for c, i in enumerate(object_ids, start=1):
            area = int((mask == i).sum())
            if annotated:  # a person drew (or saw) this frame
                rows.append(ObjectConfidence(index, name, i, area, 1.0, 1.0, 1.0, annotated=True))
            elif probs is not None:
                sh = sharpness(probs, c)
                st = stability(area, self._prev_area.get(i))
                rows.append(ObjectConfidence(index, name, i, area, sh, st, sh * st))
            self._prev_area[i] = area
        return rows


def frames_to_review(rows: list[ObjectConfidence], below: float) -> list[tuple[int, str, list[ObjectConfidence]]]:
    """Frames with an object whose confidence is below ``below``: ``(index, name, low objects)``, lowest first."""
    by_frame: dict[int, list[ObjectConfidence]] = {}
    for r in rows:
        if r.confidence < below:
            by_frame.setdefault(r.frame, []).append(r)
    out = [(t, rs[0].name, sorted(rs, key=lambda r: r.confidence)) for t, rs in by_frame.items()]
    return sorted(out, key=lambda x: (x[2][0].confidence, x[0]))


__all__ = ["ObjectConfidence", "ConfidenceTracker", "sharpness", "stability", "frames_to_review"]
