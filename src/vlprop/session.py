"""The user-facing session: a video, labels on any frame for any object id, propagated masks out.

:class:`Propagator` ties together a frame source, a backbone's feature extractor, the streaming
:class:`~vlprop.propagation.engine.PropagationEngine` and the mask codec. Objects may be labelled on
any frame (e.g. YouTube-VOS annotations where objects appear mid-video): every frame that brings labels
starts an *object group* with its own context memory (its labelled frame as long-term reference, then
its own predictions), following the DUL scheme; groups are merged per frame. Labelling an object again
on a later frame moves it to the new group, so an object always propagates from its latest label.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from .config import Preset, get_preset
from .errors import InputError
from .geometry import GridGeometry
from .io.masks import read_mask
from .io.video import FrameSource, open_frames, resolve_frame
from .labels.masks import decode_probs, encode_mask, probs_to_mask
from .model import ModelSpec
from .propagation.engine import PropagationEngine, engine_dtype_for

log = logging.getLogger(__name__)


@dataclass
class FrameResult:
    """One output frame: index, name, index mask ``[H, W]`` and grid probabilities ``[1+K, h, w]``."""

    index: int
    name: str
    mask: np.ndarray
    probs: torch.Tensor | None
    object_ids: list[int]
    annotated: bool = False
    image: np.ndarray | None = None  # the RGB frame [H, W, 3] (for overlays); not kept after the step


@dataclass
class _Group:
    start: int
    ids: list[int]
    engine: PropagationEngine
    active: set[int] = field(default_factory=set)


class Propagator:
    """Propagate object masks through a video.

    Example::

        prop = Propagator(preset="dul", backbone="resnet18", weights="random")
        for t, mask in prop.propagate("video.mp4", masks={0: "first.png"}):
            ...  # mask: [H, W] uint8 object ids

    Args:
        preset: name of a preset (``vlprop presets``) or a :class:`~vlprop.config.Preset`.
        backbone: registered backbone name (``resnet18``, ``efficientnet_lite0``, ``dino_vits16`` ...); ``None``:
            the named model's / the preset's (see :mod:`vlprop.model`).
        weights: ``"default"`` (the default model), ``"random"`` (seeded), ``"imagenet"``, a checkpoint file or a
            training run folder.
        layer, stride, input_scale, short_side: override the preset's feature settings.
        compat: reproduce the reference's documented quirks (see the preset's ``compat_flags``).
        void: mask value that marks "unknown" pixels (not background, not an object); None for none.
        overrides: any propagation/label setting (``topk=5``, ``radius=8``, ...).
        model: a :class:`~vlprop.model.ModelSpec` instead of the separate model arguments above.
        extractor: use this feature extractor (anything with ``extract_batch``, ``geometry`` and ``batch_size``)
            instead of building one from the model arguments.
        batch_size: frames per backbone pass (``None``: the device's measured default, 4).
        precision: ``"fp32"`` (default) or ``"bf16"``: bfloat16 backbone and engines created with
            ``dtype=torch.bfloat16`` (approximate, faster where the hardware has bfloat16; an
            :class:`~vlprop.errors.InputError` where it has not). With ``model``, the model's precision.

    Devices: features stay on the extractor's device and go to the engines as they are (the engine computes
    where its features are); only the merged probabilities come to the CPU, as float32, for decoding.
    """

    def __init__(self, preset: str | Preset | None = None, backbone: str | None = None, weights: Any = "default",
                 device: str = "cpu", layer: str | None = None, stride: int | None = None,
                 input_scale: float | None = None, short_side: int | None = None, compat: bool = False,
                 seed: int = 0, batch_size: int | None = None, autocast: bool = False, void: int | None = 255,
                 extractor: Any = None, model: ModelSpec | None = None, precision: str = "fp32", **overrides: Any):
        from .backbones.fusion import check_precision

        self.void = void
        if model is None:
            model = ModelSpec(preset=preset, backbone=backbone, weights=weights, layer=layer, stride=stride,
                              input_scale=input_scale, short_side=short_side, device=device, seed=seed,
                              compat=compat, overrides=tuple(sorted(overrides.items())), precision=precision)
        self.precision = check_precision(model.precision, model.device)
        # the engines' dtype: bfloat16 GEMMs in the bf16 fast mode (PropagationEngine's own dtype argument)
        self.engine_dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        # further PropagationEngine keyword arguments for every engine of this session (benchmarks: an engine
        # version's kernel choice)
        self.engine_options: dict[str, Any] = {}
        if extractor is None:
            resolved = model.resolve(default_preset="dul")
            self.preset = resolved.preset
            self.weights = resolved.weights
            self.backbone = resolved.backbone
            extractor = resolved.extractor(batch_size=batch_size, autocast=autocast)
        else:  # features come from the caller: only the propagation settings are resolved
            self.preset = get_preset(model.preset if model.preset is not None else "dul", compat=model.compat,
                                     layer=model.layer, stride=model.stride, input_scale=model.input_scale,
                                     short_side=model.short_side, **dict(model.overrides))
            self.weights = weights
            self.backbone = backbone
        self.extractor = extractor

    def new_engine(self, config=None, features: torch.Tensor | None = None, **kwargs) -> PropagationEngine:
        """A :class:`~vlprop.propagation.engine.PropagationEngine` for this session's preset (or ``config``) in
        this session's precision; given the ``features`` it will start from, the bf16 mode picks the engine dtype
        measured faster for them (:func:`~vlprop.propagation.engine.engine_dtype_for`)."""
        dtype = self.engine_dtype
        if features is not None and dtype == torch.bfloat16:
            dtype = engine_dtype_for(self.precision, features.shape[0], features.device)
        return PropagationEngine(self.preset.propagation if config is None else config, dtype=dtype,
                                 **{**self.engine_options, **kwargs})

    # ----------------------------------------------------------------- labels
    def _load_masks(self, masks: Mapping | None, annotations: str | Path | None,
                    source: FrameSource) -> dict[int, np.ndarray]:
        """Frame index -> index mask ``[H, W]`` uint8 of every labelled frame.

        Keys of ``masks`` are frame references (:func:`~vlprop.io.video.resolve_frame`: a frame name when
        one matches, an index otherwise). Every PNG of ``annotations`` must be named after a frame: a
        misnamed file would silently drop its objects, so it is refused. At least one label must hold an
        object id (not only background/void).
        """
        names = source.names()
        by_name = {n: i for i, n in enumerate(names)}
        out: dict[int, np.ndarray] = {}
        origin: dict[int, str] = {}
        if annotations is not None:
            folder = Path(annotations)
            if not folder.is_dir():
                raise InputError.about("annotations", "--annotations",
                                       lambda a: f"{a} folder not found: {folder}")
            found = {p.stem: p for p in folder.iterdir() if p.suffix.lower() == ".png"}
            stray = sorted(p.name for stem, p in found.items() if stem not in by_name)
            if stray:
                shown = ", ".join(stray[:5]) + (f" (+{len(stray) - 5} more)" if len(stray) > 5 else "")
                raise InputError(f"{len(stray)} PNG(s) in {folder} are not named after a frame: {shown}; frames are "
                                 f"named like {names[0]!r} ... {names[-1]!r} (rename or move these files, their "
                                 f"objects would be ignored)")
            for stem, path in found.items():
                out[by_name[stem]] = read_mask(path, binary_255="auto")
                origin[by_name[stem]] = str(path)
            if not out:
                raise InputError(f"no PNG in {folder} is named after a frame (frames are named like "
                                 f"{names[0]!r} ... {names[-1]!r}); annotation files must use the frame names")
        for key, value in (masks or {}).items():
            idx = resolve_frame(key, names, ("masks key", "--mask-frame"))
            out[idx] = read_mask(value) if isinstance(value, (str, Path)) else np.asarray(value)
            origin[idx] = str(value) if isinstance(value, (str, Path)) else "the given array"
        if not out:
            raise InputError("no labels given: pass masks={frame: mask} or an annotations folder",
                             cli="no labels given: pass --mask FIRST.png or --annotations DIR")
        for idx, m in out.items():
            if m.ndim != 2:
                raise InputError(f"mask for frame {idx} must be a 2-D index mask [H, W], got shape {m.shape}")
            if m.dtype != np.uint8:
                if m.min() < 0 or m.max() > 255:
                    raise InputError(f"mask for frame {idx}: object ids must be in 0..255")
                out[idx] = m.astype(np.uint8)
        if not any(self._ids_in(m) for m in out.values()):
            idx = min(out)
            void = "" if self.void is None else f"/void {self.void}"
            raise InputError(f"mask for frame {idx} ({origin[idx]}) contains no object ids (only 0{void})"
                             + (f", nor does any of the other {len(out) - 1} labelled frames" if len(out) > 1 else "")
                             + "; object pixels must hold their id 1..254")
        return out

    def _take_over(self, ann: np.ndarray, all_ids: list[int], preds: list, geometry: GridGeometry):
        """A label on this frame: its object ids (appended to ``all_ids``) and its encoded labels ``[1+K, h, w]``
        (``None`` without objects), on the device of the predictions (CPU without any). The new labels win where
        they are: each group in ``preds`` (``(group, prediction)`` pairs) gives up those objects and their area,
        in place."""
        ann_ids = self._ids_in(ann)
        for i in ann_ids:
            if i not in all_ids:
                all_ids.append(i)
        if not ann_ids:
            return ann_ids, None
        ann_labels = encode_mask(ann, ann_ids, geometry, mode=self.preset.labels.downsample, void=self.void)
        if preds:
            ann_labels = ann_labels.to(preds[0][1].device)
        covered = ann_labels[1:].sum(0).clamp(0, 1)
        for g, p in preds:
            g.active -= set(ann_ids)
            p[1:] *= (1 - covered)
            p[0] = 1 - p[1:].sum(0)
        return ann_ids, ann_labels

    def _ids_in(self, mask: np.ndarray) -> list[int]:
        vals = np.unique(mask)
        return [int(v) for v in vals if v != 0 and (self.void is None or v != self.void)]

    # ------------------------------------------------------------- propagate
    def propagate(self, source: Any, masks: Mapping | None = None, annotations: str | Path | None = None,
                  with_probs: bool = False) -> Iterator[tuple]:
        """Yield ``(t, mask)`` (or ``(t, mask, probs)``) for every frame of ``source``.

        ``masks`` maps frame index (or frame name) -> index mask array or PNG path; ``annotations`` is a
        folder of PNGs named after the frames (only some frames need one). Frames before the first label
        get an empty mask. Labelled frames return their given labels.
        """
        results = self.run(source, masks=masks, annotations=annotations)  # checks the inputs now
        return ((r.index, r.mask, r.probs) if with_probs else (r.index, r.mask) for r in results)

    def run(self, source: Any, masks: Mapping | None = None,
            annotations: str | Path | None = None) -> Iterator[FrameResult]:
        """Like :meth:`propagate`, yielding :class:`FrameResult` records.

        The source and the labels are checked when this is called (not at the first frame), so bad input
        fails before a caller has written anything.
        """
        src = open_frames(source)
        given = self._load_masks(masks, annotations, src)
        return self._run(src, given)

    def _run(self, src: FrameSource, given: dict[int, np.ndarray]) -> Iterator[FrameResult]:
        # propagation starts at the first label that holds an object; earlier (empty) labels change nothing
        first = min(i for i, m in given.items() if self._ids_in(m))
        groups: list[_Group] = []
        all_ids: list[int] = []
        geometry: GridGeometry | None = None
        cfg = self.preset
        for frames in _chunks(iter(src), self.extractor.batch_size):
            need = [fr for fr in frames if fr.index >= first]
            feats = self.extractor.extract_batch([fr.image for fr in need]) if need else None
            fidx = {fr.index: j for j, fr in enumerate(need)}
            for fr in frames:
                if fr.index < first:
                    yield FrameResult(fr.index, fr.name, np.zeros(fr.image.shape[:2], np.uint8), None, [],
                                      image=fr.image)
                    continue
                f = feats[fidx[fr.index]]
                if geometry is None:
                    H, W = fr.image.shape[:2]
                    geometry = self.extractor.geometry(H, W)
                    if (geometry.grid_height, geometry.grid_width) != tuple(f.shape[1:]):
                        raise RuntimeError(f"extractor geometry {geometry} does not match features {tuple(f.shape)}")
                ann = given.get(fr.index)
                if ann is not None and ann.shape != fr.image.shape[:2]:
                    raise InputError(f"mask for frame {fr.index} ({fr.name}) is {ann.shape[1]}x{ann.shape[0]} but "
                                     f"the frame is {fr.image.shape[1]}x{fr.image.shape[0]}")
                preds = [(g, g.engine.predict(f)) for g in groups]
                if ann is not None:
                    ann_ids, ann_labels = self._take_over(ann, all_ids, preds, geometry)
                    if ann_labels is not None:
                        ann_labels = ann_labels.to(f.device)
                    for g, p in preds:
                        g.engine.push(f, p)
                    groups = [g for g in groups if g.active]
                    if ann_ids:
                        eng = self.new_engine(cfg.propagation, features=f)
                        eng.reset(f, ann_labels)
                        groups.append(_Group(fr.index, ann_ids, eng, set(ann_ids)))
                        preds = [(g, p) for g, p in preds if g.active] + [(groups[-1], ann_labels)]
                    else:
                        preds = [(g, p) for g, p in preds if g.active]
                else:
                    for g, p in preds:
                        g.engine.push(f, p)
                # the one copy to the CPU: probabilities for decoding and writing (float32 in every precision)
                probs = _merge(preds, all_ids).float().cpu()
                scores = decode_probs(probs, geometry, cfg.labels.output_minmax)
                if ann is not None:  # given labels are exact: their objects are nowhere else
                    ann_ids = self._ids_in(ann)
                    for i in ann_ids:
                        scores[1 + all_ids.index(i)] = float("-inf")
                    mask = probs_to_mask(scores, all_ids)
                    keep = np.isin(ann, ann_ids)
                    mask = np.where(keep, ann, mask).astype(np.uint8)
                else:
                    mask = probs_to_mask(scores, all_ids)
                yield FrameResult(fr.index, fr.name, mask, probs, list(all_ids), annotated=ann is not None,
                                  image=fr.image)


def _merge(preds: list[tuple[_Group, torch.Tensor]], all_ids: list[int]) -> torch.Tensor:
    """Combine per-group predictions into ``[1 + K, h, w]`` over ``all_ids``.

    Each object's score comes from the group that owns it; background is the product over groups of each
    group's background (plus channels of objects it no longer owns). With one group this is exactly that
    group's prediction.
    """
    if not preds:
        raise RuntimeError("no object group to merge")
    h, w = preds[0][1].shape[1:]
    out = torch.zeros(1 + len(all_ids), h, w, dtype=preds[0][1].dtype, device=preds[0][1].device)
    bg = torch.ones(h, w, dtype=out.dtype, device=out.device)
    col = {i: c for c, i in enumerate(all_ids, start=1)}
    for g, p in preds:
        gb = p[0].clone()
        for c, i in enumerate(g.ids, start=1):
            if i in g.active:
                out[col[i]] = p[c]
            else:
                gb += p[c]
        bg *= gb
    out[0] = bg
    return out


def _chunks(it: Iterator, n: int) -> Iterator[list]:
    buf = []
    for x in it:
        buf.append(x)
        if len(buf) >= n:
            yield buf
            buf = []
    if buf:
        yield buf
