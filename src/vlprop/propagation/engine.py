"""Streaming label propagation over feature maps (the unified algorithm of McKee et al. + Waldmann et al.).

:class:`PropagationEngine` carries one label map ``[C, h, w]`` through a stream of feature maps
``[D, h, w]``. It keeps a bounded context memory -- the labelled reference frame(s) plus a ring buffer
of the last ``context`` frames with their predicted labels -- so memory does not grow with video length.
Every step is exact: the result equals a dense ``(context * hw) x hw`` affinity with masking, top-k
and normalisation (tests check this against a naive implementation written from the spec).
"""
from __future__ import annotations

import collections
import os
from dataclasses import dataclass
from typing import Iterator

import torch

from ..config import PropagationConfig, Preset, get_preset
from ..errors import InputError
from .localization import (
    RoiWindow,
    box_from_coords,
    box_mask,
    box_usable,
    compactness_weights,
    roi_coarse_offset,
    roi_label_weights,
    roi_positions,
    roi_values,
    tight_box,
)
from .affinity import (
    SoftmaxSum,
    TopK,
    WindowWorkspace,
    dense_topk,
    dense_workspace,
    exact_geometry,
    extend_key,
    l2_normalize,
    pad_channels_last,
    query_tiles,
    window_attend,
    window_geometry,
    window_mask_dense,
    window_offsets,
    window_topk,
    window_topk_exact,
    window_topk_exact_joint,
)

WINDOW_KERNELS = ("auto", "exact", "patch")
LOW_PRECISION = (torch.bfloat16, torch.float16)


def default_window_kernel() -> str:
    """``VLPROP_WINDOW_KERNEL`` (``auto`` | ``exact`` | ``patch``), default ``auto``."""
    v = os.environ.get("VLPROP_WINDOW_KERNEL", "auto").strip().lower() or "auto"
    if v not in WINDOW_KERNELS:
        raise InputError(f"VLPROP_WINDOW_KERNEL must be one of {', '.join(WINDOW_KERNELS)}, not {v!r}")
    return v


@dataclass
class _Entry:
    """A context frame: features (flat and, lazily, padded for the window kernel) and its labels."""

    flat: torch.Tensor  # [hw, D]
    labels: torch.Tensor  # [C, hw]
    padded: torch.Tensor | None = None  # "patch" kernel: padded channels-last; "exact": flat + a zero row
    restricted: bool = True
    index: int = 0  # frame index counted from the (first) labelled frame
    boxes: dict | None = None  # UVC track: object channel -> Box | None
    mass: dict | None = None  # UVC track: object channel -> number of cells where it is the argmax


# ``--precision bf16`` and the engine on the CPU: with one GEMM per tile and frame the bfloat16 joint top-k was slower
# than float32 at D = 112 (0.297 vs 0.207 s/frame end to end). Since it runs one batched GEMM per tile over the
# frames, with the window in the GEMM's bias and bf16 block maxima as a running maximum, bfloat16 is faster at every
# width measured (benchmarks/engine_speed.py, 480p grid, crw, one thread: 1.38x at D = 64, 1.36x at 112, 1.6x at
# 512). Below this many channels (tiny test networks; not measured) the bf16 mode keeps float32 affinities; on GPUs
# bfloat16 is used whenever asked for.
BF16_ENGINE_MIN_CHANNELS_CPU = 64


def engine_dtype_for(precision: str, channels: int, device: str | torch.device = "cpu") -> torch.dtype:
    """The engine dtype of a run in ``precision`` (``fp32`` | ``bf16``) on ``channels``-dim features on ``device``."""
    if precision != "bf16":
        return torch.float32
    if torch.device(device).type == "cpu" and channels < BF16_ENGINE_MIN_CHANNELS_CPU:
        return torch.float32
    return torch.bfloat16


class PropagationEngine:
    """Propagate one soft label map through a stream of feature maps.

    Usage::

        eng = PropagationEngine(get_preset("crw").propagation)
        eng.reset(features0, labels0)          # [D,h,w], [C,h,w]
        for f in later_features:
            labels = eng.step(f)               # [C,h,w]

    ``dtype`` (default float32) is the precision of the features and affinities; float64 is supported, and so
    are bfloat16 / float16 (*approximate*: the affinity GEMMs run in that precision -- AMX on CPUs that have
    it -- while labels, the top-k values handed to the softmax, the normalisation statistics and the label
    aggregation stay float32; outputs are close to the float32 engine's, not equal).
    The engine runs on the device of the features of the labelled frame (``reset``): CPU, CUDA or MPS; later
    features and labels are moved there, nothing is copied back, and its buffers live there too.
    ``window_kernel``: ``"exact"`` matches each tile of target locations only against the context cells that
    some location's window contains (:func:`~vlprop.propagation.affinity.window_topk_exact`), ``"patch"`` the
    previous kernel (the whole square patch around each tile, :func:`~vlprop.propagation.affinity.window_topk`);
    both are exact and agree to fp32 rounding. ``"auto"`` (the default, or ``$VLPROP_WINDOW_KERNEL``) = exact.
    With ``exact``, ``overall`` aggregation and top-k normalisation in fp32/fp64 on the CPU, the windowed frames
    share one joint top-k per location (:meth:`_joint_windowed`); ``VLPROP_TOPK=torch`` turns that and the
    two-stage top-k off (the previous behaviour, for benchmarks). Dense GEMMs: ``VLPROP_GEMM``
    (:func:`~vlprop.propagation.affinity.gemm`).
    ``recode``: with ``requantize``, the function that turns a predicted ``[C,h,w]`` map into the hard labels
    remembered as context (default: one-hot of the per-location argmax, right for masks; keypoint heat maps
    re-encode their decoded keypoints, Waldmann's ``recreate_labels``, see
    :meth:`vlprop.labels.keypoints.KeypointCodec.recode`).
    """

    def __init__(self, config: PropagationConfig | Preset | str = "crw", dtype: torch.dtype = torch.float32,
                 tile: int = 8, chunk: int = 2048, recode=None, window_kernel: str | None = None):
        if isinstance(config, (str, Preset)):
            config = get_preset(config).propagation
        self.cfg = config
        self.dtype = dtype
        # labels, weights and their sums: float32 under a low-precision feature dtype
        self.label_dtype = torch.float32 if dtype in LOW_PRECISION else dtype
        kernel = default_window_kernel() if window_kernel is None else window_kernel
        if kernel not in WINDOW_KERNELS:
            raise InputError(f"window_kernel must be one of {', '.join(WINDOW_KERNELS)}, not {kernel!r}")
        self.window_kernel = "exact" if kernel == "auto" else kernel
        self._window_ws = WindowWorkspace()  # the exact kernel's buffers, reused across frames
        self.device: torch.device | None = None
        self.recode = recode
        self.tile = tile
        self.chunk = chunk
        self._offsets = window_offsets(config.window, config.radius) if config.window != "none" else None
        self._shape: tuple[int, int, int] | None = None
        self._long: list[_Entry] = []
        short_len = 5 if config.references == "mast" else max(config.context, 0)
        self._short: collections.deque[_Entry] = collections.deque(maxlen=short_len or None)
        self._t = 0  # index of the newest frame in memory (the labelled frame is 0)
        self._pending_boxes: dict | None = None  # UVC track: the boxes of the frame last predicted
        self._num_channels = 0
        self._workspace: torch.Tensor | None = None  # chunk buffer of the frame's dense matches

    # ------------------------------------------------------------------ memory
    @property
    def grid_shape(self) -> tuple[int, int] | None:
        return None if self._shape is None else self._shape[1:]

    def _prepare(self, features: torch.Tensor, what: str) -> torch.Tensor:
        if not torch.is_tensor(features) or features.dim() != 3:
            raise InputError(f"{what}: expected a feature map [D, h, w], got "
                             f"{tuple(features.shape) if torch.is_tensor(features) else type(features).__name__}")
        if self._shape is not None and tuple(features.shape) != self._shape:
            raise InputError(f"{what}: feature map has shape {tuple(features.shape)} but this video's features are "
                             f"{self._shape}; all frames of a video must have the same size")
        f = features.detach()
        if self.device is not None:
            f = f.to(self.device)
        if self.cfg.feature_norm:  # normalised in at least float32, then rounded to the engine's dtype
            f = l2_normalize(f.to(self.label_dtype), dim=0)
        return f.to(self.dtype)

    def _entry(self, f: torch.Tensor, labels: torch.Tensor, restricted: bool, index: int = 0) -> _Entry:
        D, h, w = f.shape
        return _Entry(flat=f.reshape(D, h * w).t().contiguous(), labels=labels.reshape(labels.shape[0], h * w),
                      restricted=restricted, index=index)

    def reset(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Start a new video with a labelled reference frame: features ``[D,h,w]``, labels ``[C,h,w]``. The
        engine works on the device of these features."""
        self._shape = None
        self.device = features.device if torch.is_tensor(features) else None
        self._long.clear()
        self._short.clear()
        self._t = 0
        self.add_reference(features, labels)

    def add_reference(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a labelled frame to the long-term memory (oldest dropped beyond ``long_term``)."""
        f = self._prepare(features, "reference frame")
        labels = self._check_labels(labels, f.shape[1:], "reference labels")
        if self._shape is None:
            self._shape = tuple(f.shape)
            self._num_channels = labels.shape[0]
        entry = self._entry(f, labels, restricted=self.cfg.window_long_term, index=self._t)
        if self.cfg.localization == "track":
            self._track_state(entry, None, self.cfg.track_init_margin)
        self._long.append(entry)
        if len(self._long) > self.cfg.long_term:
            self._long.pop(0)

    def _check_labels(self, labels: torch.Tensor, hw: tuple[int, int], what: str) -> torch.Tensor:
        if not torch.is_tensor(labels) or labels.dim() != 3 or tuple(labels.shape[1:]) != tuple(hw):
            raise InputError(f"{what}: expected a label map [C, {hw[0]}, {hw[1]}] at feature resolution, got "
                             f"{tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__}")
        if self._num_channels and labels.shape[0] != self._num_channels:
            raise InputError(f"{what}: {labels.shape[0]} channels, but this video has {self._num_channels}")
        return labels.detach().to(self.device if self.device is not None else labels.device, self.label_dtype)

    def context(self) -> list[_Entry]:
        """Context entries of the next target frame: long-term first, then short-term oldest to newest."""
        if self.cfg.references == "mast":  # {0, 5} U {t-1, t-3, t-5} for target t
            t = self._t + 1
            entries = [e for e in self._long if e.index < t]
            have = {e.index for e in entries}
            return entries + [e for e in self._short if t - e.index in (1, 3, 5) and e.index not in have]
        entries = list(self._long)
        short = list(self._short)
        if self.cfg.compat_pad_first and len(short) < self.cfg.context:
            pad = [_Entry(e.flat, e.labels, None, True, e.index, e.boxes, e.mass)
                   for e in self._long[:1]] * (self.cfg.context - len(short))
            short = pad + short
        return entries + short

    # ------------------------------------------------------------------ step
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Labels ``[C,h,w]`` for a target frame from the current context (memory unchanged)."""
        if not self._long:
            raise InputError("no labelled reference frame: call reset(features, labels) first")
        q = self._prepare(features, "target frame")
        return self._propagate(q, self.context())

    def push(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Append a frame with its (predicted) labels to the short-term memory (re-quantised if configured)."""
        if self.cfg.context == 0 and self.cfg.references != "mast":
            self._t += 1
            return
        f = self._prepare(features, "context frame")
        labels = self._check_labels(labels, f.shape[1:], "context labels")
        self._remember(f, self._postprocess_for_memory(labels))

    def _remember(self, f: torch.Tensor, stored: torch.Tensor) -> None:
        self._t += 1
        entry = self._entry(f, stored, restricted=True, index=self._t)
        if self.cfg.localization == "track":
            self._track_state(entry, self._pending_boxes, self.cfg.track_init_margin)
        self._pending_boxes = None
        if self.cfg.references == "mast" and self._t == 5:  # MAST/LIIR keep frame 5 for good
            entry.restricted = self.cfg.window_long_term
            self._long.append(entry)
            return
        self._short.append(entry)

    def step(self, features: torch.Tensor) -> torch.Tensor:
        """Predict the labels of the next frame and remember them as context. Returns ``[C,h,w]``."""
        q = self._prepare(features, "target frame")
        if not self._long:
            raise InputError("no labelled reference frame: call reset(features, labels) first")
        labels = self._propagate(q, self.context())
        if self.cfg.context > 0 or self.cfg.references == "mast":
            self._remember(q, self._postprocess_for_memory(labels))
        else:
            self._t += 1
        return labels

    def _postprocess_for_memory(self, labels: torch.Tensor) -> torch.Tensor:
        if self.cfg.requantize and self.recode is not None:
            hard = torch.as_tensor(self.recode(labels))
            if tuple(hard.shape) != tuple(labels.shape):
                raise InputError(f"recode returned shape {tuple(hard.shape)} for labels {tuple(labels.shape)}")
            return hard.to(labels.dtype)
        if self.cfg.requantize:
            hard = torch.zeros_like(labels)
            hard.scatter_(0, labels.argmax(0, keepdim=True), 1.0)
            return hard
        return labels

    # ------------------------------------------------------------------ core
    def _frame_topk(self, q: torch.Tensor, qt: torch.Tensor | None, entry: _Entry, k: int,
                    reduce: str | None) -> TopK:
        cfg = self.cfg
        D, h, w = q.shape
        qflat = q.reshape(D, h * w).t()
        restricted = entry.restricted and self._offsets is not None
        before = cfg.norm_stage == "before-restriction"
        if not restricted or before or cfg.compat_mask_before_exp:
            # one chunk buffer for every dense match of this frame (see dense_topk's `workspace`)
            self._workspace = dense_workspace(self._workspace, qflat, entry.flat, self.chunk)
            if not restricted:
                return dense_topk(qflat, entry.flat, k, reduce=reduce, temperature=cfg.temperature,
                                  chunk=self.chunk, workspace=self._workspace)
            mask = self._dense_mask(h, w, q.device)
            return dense_topk(qflat, entry.flat, k, allowed=lambda s, e: mask[s:e],
                              masked_value=0.0 if cfg.compat_mask_before_exp else float("-inf"),
                              reduce=reduce, reduce_before_mask=before, temperature=cfg.temperature,
                              chunk=self.chunk, workspace=self._workspace)
        # the dense (long-term) matches come first in context(); their buffer is not needed any more, so the
        # windowed matches do not add their own peak to it
        self._workspace = None
        if self.window_kernel == "exact":
            geo = exact_geometry(h, w, self._offsets, self.tile, q.device)
            if entry.padded is None:
                entry.padded = extend_key(entry.flat)
            return window_topk_exact(qt, entry.padded, geo, k, reduce=reduce, temperature=cfg.temperature,
                                     workspace=self._window_ws)
        geo = window_geometry(h, w, self._offsets, self.tile, q.device)
        if entry.padded is None:
            entry.padded = pad_channels_last(entry.flat.t().reshape(D, h, w), geo)
        return window_topk(qt, entry.padded, geo, k, reduce=reduce, temperature=cfg.temperature)

    def _joint_windowed(self, q: torch.Tensor, qt: torch.Tensor | None, entries: list[_Entry], k: int,
                        reduce: str | None) -> tuple[set, TopK | None]:
        """``overall`` aggregation without a statistic: the windowed frames' survivors in one joint top-k per
        location (:func:`~vlprop.propagation.affinity.window_topk_exact_joint`; exact, and one top-k per location
        instead of one per location and frame). Returns the positions in ``entries`` it covers and its result;
        ``(set(), None)`` where it does not apply (``patch`` kernel, a statistic, fewer than two windowed
        frames, ``VLPROP_TOPK=torch``, a non-CPU device, where ``torch.topk`` has no per-row overhead to save)."""
        cfg = self.cfg
        if self.window_kernel != "exact" or reduce is not None or k <= 0 or qt is None or q.device.type != "cpu" \
                or cfg.norm_stage == "before-restriction" or cfg.compat_mask_before_exp \
                or os.environ.get("VLPROP_TOPK", "block") == "torch":
            return set(), None
        pos = [i for i, e in enumerate(entries) if e.restricted and self._offsets is not None]
        D, h, w = q.shape
        geo = exact_geometry(h, w, self._offsets, self.tile, q.device)
        if len(pos) < 2 or (geo.M // 8) * len(pos) <= k:
            return set(), None
        for i in pos:
            if entries[i].padded is None:
                entries[i].padded = extend_key(entries[i].flat)
        self._workspace = None
        tk = window_topk_exact_joint(qt, [entries[i].padded for i in pos], geo, k,
                                     frame_offsets=[i * h * w for i in pos], workspace=self._window_ws)
        return set(pos), tk

    def _tiles(self, q: torch.Tensor) -> torch.Tensor:
        """The target frame cut into the window kernel's tiles."""
        D, h, w = q.shape
        return query_tiles(q, window_geometry(h, w, self._offsets, self.tile))

    def _dense_mask(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        key = (h, w, str(device))
        cache = getattr(self, "_mask_cache", None)
        if cache is None or cache[0] != key:
            self._mask_cache = (key, window_mask_dense(h, w, self._offsets).to(device))
        return self._mask_cache[1]

    def _weights(self, values: torch.Tensor, stat: torch.Tensor | None) -> torch.Tensor:
        """Normalised weights ``[N, k]`` for survivor affinities ``values [N, k]`` (-inf = no candidate)."""
        cfg = self.cfg
        values = values.to(self.label_dtype)  # low-precision affinities: softmax and sums in float32
        stat = None if stat is None else stat.to(self.label_dtype)
        finite = torch.isfinite(values)
        if cfg.normalizer == "sum":
            v = torch.where(finite, values, torch.zeros((), dtype=values.dtype))
            denom = v.sum(1, keepdim=True) if stat is None else stat[:, None]
            return torch.nan_to_num(v / denom, nan=0.0, posinf=0.0, neginf=0.0)
        if stat is not None:  # restricted / full denominators
            return torch.exp(values / cfg.temperature - stat[:, None])
        if cfg.normalizer == "exp":  # DINO numerics: exp first, then divide by the sum
            e = torch.exp(values / cfg.temperature)
            return torch.nan_to_num(e / e.sum(1, keepdim=True), nan=0.0)
        return torch.softmax(values / cfg.temperature, dim=1).nan_to_num(0.0)

    def _leaky_softmax(self, values: torch.Tensor, total: int) -> torch.Tensor:
        """WALD quirk: softmax over ``total`` candidates where all but the k survivors are 0 (weight exp(0))."""
        z = values.to(self.label_dtype) / self.cfg.temperature
        m = torch.clamp(z.max(1, keepdim=True).values, min=0.0)
        e = torch.exp(z - m)
        zeros = (total - values.shape[1]) * torch.exp(-m)
        return e / (e.sum(1, keepdim=True) + zeros)

    def _propagate(self, q: torch.Tensor, entries: list[_Entry]) -> torch.Tensor:
        try:
            return self._aggregate(q, entries)
        finally:
            # the dense matches of one frame share one chunk buffer (dropped earlier, before the first windowed
            # match, in _frame_topk); it is never kept between frames
            self._workspace = None

    def _aggregate(self, q: torch.Tensor, entries: list[_Entry]) -> torch.Tensor:
        cfg = self.cfg
        D, h, w = q.shape
        reduce = None
        if cfg.norm_stage != "topk":
            reduce = "sum" if cfg.normalizer == "sum" else "lse"
        if cfg.localization == "roi" or cfg.compactness_k:
            return self._finish(self._aggregate_union(q, entries), h, w)
        need_tiles = self._offsets is not None and cfg.norm_stage != "before-restriction" \
            and not cfg.compat_mask_before_exp and any(e.restricted for e in entries)
        qt = self._tiles(q) if need_tiles else None
        k = cfg.topk
        C = entries[0].labels.shape[0]
        hw = h * w
        if cfg.localization == "track":
            return self._finish(self._aggregate_track(q, entries), h, w)
        if cfg.aggregation == "per-frame":
            out = torch.zeros(h * w, C, dtype=self.label_dtype, device=q.device)
            for e in entries:
                tk = self._frame_topk(q, qt, e, k, reduce)
                wts = self._leaky_softmax(tk.values, hw) if cfg.compat_softmax_zeros else \
                    self._weights(tk.values, tk.stat)
                out += _gather_weighted(e.labels, tk.index, wts)
            out /= len(entries)
            return self._finish(out, h, w)
        if k <= 0 and reduce is None and cfg.normalizer == "softmax" and not cfg.compat_softmax_zeros \
                and self.window_kernel == "exact":
            return self._finish(self._attend(q, qt, entries), h, w)
        # overall: per-frame survivors then one joint top-k (exact: the joint top-k lies in their union)
        joint = self._joint_windowed(q, qt, entries, k, reduce)
        per = [self._frame_topk(q, qt, e, k, reduce) for i, e in enumerate(entries) if i not in joint[0]]
        offsets = [i * hw for i in range(len(entries)) if i not in joint[0]]
        if joint[1] is not None:
            per.append(joint[1])
            offsets.append(0)  # its index already counts the frames' positions
        values = torch.cat([p.values for p in per], dim=1)
        index = torch.cat([p.index + o for o, p in zip(offsets, per)], dim=1)
        stat = None
        if reduce == "lse":
            stat = torch.logsumexp(torch.stack([p.stat for p in per], 1), dim=1)
        elif reduce == "sum":
            stat = torch.stack([p.stat for p in per], 1).sum(1)
        if k > 0 and values.shape[1] > k:
            values, sel = torch.topk(values, k, dim=1)
            index = torch.gather(index, 1, sel)
        if cfg.compat_softmax_zeros:
            wts = self._leaky_softmax(values, total=len(entries) * hw)
        else:
            wts = self._weights(values, stat)
        labels = torch.cat([e.labels for e in entries], dim=1)  # [C, n*hw]
        out = _gather_weighted(labels, index, wts)
        return self._finish(out, h, w)

    def _attend(self, q: torch.Tensor, qt: torch.Tensor | None, entries: list[_Entry]) -> torch.Tensor:
        """``overall``, ``topk = 0``, softmax: one softmax over every candidate of every context frame (the
        windowed frames' windows, the dense frames' every location) and the weighted label sum, without
        per-location candidate lists: windowed frames tile by tile (:func:`window_attend`), dense frames in
        chunks of target rows, merged as an online softmax (:class:`SoftmaxSum`). Returns ``[hw, C]``."""
        cfg = self.cfg
        D, h, w = q.shape
        hw = h * w
        C = entries[0].labels.shape[0]
        ldt = self.label_dtype
        win = [e for e in entries if e.restricted and self._offsets is not None]
        if win:
            geo = exact_geometry(h, w, self._offsets, self.tile, q.device)
            for e in win:
                if e.padded is None:
                    e.padded = extend_key(e.flat)
            labels = [torch.cat([e.labels.t(), e.labels.new_zeros(1, C)]).to(ldt) for e in win]
            acc = window_attend(qt, [e.padded for e in win], labels, geo, cfg.temperature, ldt, self._window_ws)
        else:
            acc = SoftmaxSum(torch.full((hw,), float("-inf"), dtype=ldt, device=q.device),
                             torch.zeros(hw, dtype=ldt, device=q.device),
                             torch.zeros(hw, C, dtype=ldt, device=q.device))
        windowed = {id(e) for e in win}
        qflat = q.reshape(D, hw).t()
        for e in entries:
            if id(e) in windowed:
                continue
            lab = e.labels.t().to(ldt)
            for s in range(0, hw, self.chunk):
                rows = slice(s, min(hw, s + self.chunk))
                acc.add((qflat[rows] @ e.flat.t()).to(ldt) / cfg.temperature, lab, rows)
        return acc.result()

    def _aggregate_union(self, q: torch.Tensor, entries: list[_Entry]) -> torch.Tensor:
        """One softmax over the union of every context frame's candidates (MAST/LIIR, ``topk=0``), with MAST's
        predicted windows for far references and LIIR's compactness prior. Returns ``[hw, C]``.

        Window candidates come from the tiled window kernel (``[hw, window cells]`` per frame); the predicted
        windows of far references are gathered per chunk of targets (bilinear corners), memory
        ``O(chunk * window * D)``; the softmax, the prior and the label sums run per chunk."""
        cfg = self.cfg
        D, h, w = q.shape
        hw = h * w
        t = self._t + 1
        qflat = q.reshape(D, hw).t()
        R = int(cfg.radius)
        roi = [cfg.localization == "roi" and t - e.index > cfg.roi_after for e in entries]
        # window candidates of every location at once with the tiled window kernel (k = 0: all cells of each
        # tile's window union, unsorted; -inf outside the location's window and the frame)
        qt = self._tiles(q) if not all(roi) else None
        windowed = [None if r else self._frame_topk(q, qt, e, 0, None) for e, r in zip(entries, roi)]
        last_roi = max((i for i, r in enumerate(roi) if r), default=None)
        C = entries[0].labels.shape[0]
        out = torch.zeros(hw, C, dtype=self.label_dtype, device=q.device)
        step = max(1, self.chunk // 8)
        for s in range(0, hw, step):
            rows = torch.arange(s, min(hw, s + step), device=q.device)
            qc = qflat[s:s + len(rows)]
            blocks = []  # (entry, values [n, K], index [n, K] | None, roi label positions | None)
            offsets, windows = {}, {}
            for i, e in enumerate(entries):
                if not roi[i]:
                    tk = windowed[i]
                    blocks.append((e, tk.values[s:s + len(rows)], tk.index[s:s + len(rows)], None))
                    continue
                dil = min(cfg.roi_max_dilation, (t - e.index) // cfg.roi_after + 1)
                a = qc @ e.flat.t()  # [n, hw]: both ROI steps gather from this one GEMM
                o = roi_coarse_offset(a, rows, h, w, dil, cfg.roi_radius, cfg.temperature)
                offsets[i] = o
                if cfg.compat_mast_roi:  # rescaled positions: the general bilinear path
                    pos = roi_positions(rows, o, h, w, R, True)
                    blocks.append((e, roi_values(a, pos, h, w), None, i))
                else:
                    windows[i] = RoiWindow(rows, o, h, w, R)
                    blocks.append((e, windows[i].values(a), None, i))
            values = torch.cat([b[1] for b in blocks], dim=1)
            wts = self._weights(values, None)
            col = 0
            for e, v, index, roi_i in blocks:
                wb = wts[:, col:col + v.shape[1]]
                col += v.shape[1]
                if index is not None:
                    if cfg.compactness_k:
                        wb = compactness_weights(wb, v, index, w, cfg.compactness_k, cfg.compactness_threshold,
                                                 cfg.compactness_fwhm)
                    out[s:s + len(rows)] += _gather_weighted(e.labels, index, wb)
                    continue
                # MAST bug 1 (compat): every far reference's labels are read with the last offset computed
                if cfg.compat_mast_roi:
                    pos = roi_positions(rows, offsets[last_roi], h, w, R, True)
                    dense = roi_label_weights(wb, pos, h, w)
                else:
                    dense = windows[roi_i].label_weights(wb, hw)
                out[s:s + len(rows)] += dense @ e.labels.t()
        return out

    # ------------------------------------------------------------------ UVC track
    def _track_state(self, entry: _Entry, boxes: dict | None, margin: float) -> None:
        """Per-object cell counts of a context frame and its boxes (given, else tight boxes + ``margin``)."""
        hard = entry.labels.argmax(0)
        w = self._shape[2]
        entry.mass = {o: int((hard == o).sum()) for o in range(1, entry.labels.shape[0])}
        if boxes is None:
            boxes = {o: tight_box((hard == o).nonzero().reshape(-1), w, margin) for o in entry.mass}
        entry.boxes = dict(boxes)

    def _target_boxes(self, q: torch.Tensor, entries: list[_Entry]) -> dict:
        """UVC: each object's box in the target frame from the soft-argmax target positions of its cells in the
        newest context frame (softmax over target locations of their affinities / T), size-smoothed with that
        frame's box. ``None`` when the object has fewer than 2 cells there."""
        cfg = self.cfg
        D, h, w = q.shape
        ref = max(entries, key=lambda e: e.index)
        qflat_t = q.reshape(D, h * w)
        grid = torch.stack(torch.meshgrid(torch.arange(h, dtype=self.label_dtype, device=q.device),
                                          torch.arange(w, dtype=self.label_dtype, device=q.device),
                                          indexing="ij"), -1).reshape(-1, 2)
        hard = ref.labels.argmax(0)
        boxes = {}
        for o in range(1, ref.labels.shape[0]):
            cells = (hard == o).nonzero().reshape(-1)
            if cells.numel() < 2:
                boxes[o] = None
                continue
            coords = torch.cat([torch.softmax((ref.flat[cells[s:s + self.chunk]] @ qflat_t).to(self.label_dtype)
                                              / cfg.temperature, 1) @ grid
                                for s in range(0, cells.numel(), self.chunk)])
            boxes[o] = box_from_coords(coords, ref.boxes.get(o) if ref.boxes else None, cfg.track_mad,
                                       cfg.track_margin, cfg.track_ema, cfg.track_bandwidth, cfg.track_sigma)
        return boxes

    def _aggregate_track(self, q: torch.Tensor, entries: list[_Entry]) -> torch.Tensor:
        """UVC ``track``: per context frame, a softmax over all its locations (before restriction); background
        from the whole frame, each object from the top-k of its box in that frame for the targets in its box in
        the target frame (0 elsewhere), weights not renormalised; plain full-frame top-k for an object without a
        target box or that disappeared in that frame (fewer than 3 cells or a box under 3 cells a side);
        predictions averaged over the context frames. Returns ``[hw, C]``."""
        cfg = self.cfg
        D, h, w = q.shape
        hw = h * w
        boxes_t = self._target_boxes(q, entries)
        self._pending_boxes = boxes_t
        qflat = q.reshape(D, hw).t()
        C = entries[0].labels.shape[0]
        k = hw if cfg.topk == 0 else min(cfg.topk, hw)
        target_in = {o: box_mask(b, h, w, q.device) for o, b in boxes_t.items() if box_usable(b, h, w)}
        out = torch.zeros(hw, C, dtype=self.label_dtype, device=q.device)
        for e in entries:
            mass, boxes = e.mass or {}, e.boxes or {}
            restrict = {o: box_mask(boxes[o], h, w, q.device) for o in target_in
                        if mass.get(o, 0) >= 3 and box_usable(boxes.get(o), h, w)}
            for s in range(0, hw, self.chunk):
                a = (qflat[s:s + self.chunk] @ e.flat.t()).to(self.label_dtype)
                lse = torch.logsumexp(a / cfg.temperature, dim=1, keepdim=True)
                v, i = torch.topk(a, k, dim=1)
                plain = _gather_weighted(e.labels, i, torch.exp(v / cfg.temperature - lse))
                part = out[s:s + self.chunk]
                part += plain
                for o, ref_in in restrict.items():
                    v, i = torch.topk(a.masked_fill(~ref_in[None, :], float("-inf")), k, dim=1)
                    wo = torch.exp(v / cfg.temperature - lse)
                    val = (wo * e.labels[o][i]).sum(1)
                    part[:, o] += torch.where(target_in[o][s:s + self.chunk], val, torch.zeros((), dtype=val.dtype)) \
                        - plain[:, o]
        return out / len(entries)

    def _finish(self, out: torch.Tensor, h: int, w: int) -> torch.Tensor:
        labels = out.t().reshape(-1, h, w).contiguous()
        if self.cfg.foreground_boost != 1.0 and labels.shape[0] > 1:
            labels[1:] *= self.cfg.foreground_boost
        return normalize_labels(labels, self.cfg.label_norm)


def _gather_weighted(labels: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``out[j, c] = sum_k weights[j,k] * labels[c, index[j,k]]`` -> ``[N, C]``.

    One flat gather per channel: gathering ``[N*k]`` rows of ``C`` values (``index_select`` of ``labels.t()``)
    costs per row, 4.7x slower for 2 channels at 6420 x 6464 candidates, and not faster up to 64 channels
    (measured on this 2-core Xeon, one thread)."""
    return torch.stack([(weights * ch.take(index)).sum(1) for ch in labels], 1)


def normalize_labels(labels: torch.Tensor, mode: str) -> torch.Tensor:
    """Label normalisation of a ``[C,h,w]`` map: ``channel-minmax`` / ``pixel-minmax`` / ``none``."""
    if mode == "none":
        return labels
    if mode == "channel-minmax":
        flat = labels.reshape(labels.shape[0], -1)
        mn = flat.min(1, keepdim=True).values
        mx = flat.max(1, keepdim=True).values
        active = flat.sum(1, keepdim=True) != 0  # WALD/UVC skip empty channels
        normed = (flat - mn) / (mx - mn).clamp_min(torch.finfo(flat.dtype).tiny)
        return torch.where(active, normed, flat).reshape(labels.shape)
    if mode == "pixel-minmax":
        mn = labels.min(0, keepdim=True).values
        mx = labels.max(0, keepdim=True).values
        return (labels - mn) / (mx - mn).clamp_min(torch.finfo(labels.dtype).tiny)
    raise InputError(f"unknown label normalisation {mode!r}")


def propagate_features(
    features: torch.Tensor,
    labels: torch.Tensor,
    preset: str | Preset | PropagationConfig = "crw",
    dtype: torch.dtype = torch.float32,
    compat: bool = False,
    **overrides,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Researchers' entry point: propagate ``labels [C,h,w]`` of frame 0 through ``features [T,D,h,w]``.

    Yields ``(t, probs [C,h,w])`` for ``t = 1 .. T-1``. ``features`` may also be any iterable of
    ``[D,h,w]`` maps (streaming). ``overrides`` set any :class:`PropagationConfig` field.
    """
    if isinstance(preset, PropagationConfig):
        from dataclasses import replace
        cfg = replace(preset, **overrides) if overrides else preset
    else:
        cfg = get_preset(preset, compat=compat, **overrides).propagation
    engine = PropagationEngine(cfg, dtype=dtype)
    it = iter(features)
    try:
        first = next(it)
    except StopIteration:
        raise InputError("propagate_features: no frames given") from None
    engine.reset(first, labels)
    for t, f in enumerate(it, start=1):
        yield t, engine.step(f)
