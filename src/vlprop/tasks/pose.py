"""Keypoint (pose) propagation, optionally joint with box tracking (Waldmann et al. 2022, Sec. 4.1-4.2).

:class:`KeypointPropagator` carries the keypoints of one labelled frame through a video:

1. the labelled frame's keypoints are encoded as ``C = K (+1 background)`` heat maps on the feature grid
   (:class:`vlprop.labels.keypoints.KeypointCodec`, settings from the preset's ``keypoints`` block);
2. the label maps are propagated frame by frame with the preset's
   :class:`~vlprop.propagation.engine.PropagationEngine` (first frame + ring buffer of predictions);
3. every propagated map is decoded back to pixel coordinates (sub-pixel decoder of the preset).

Full-frame mode (``track=False``) extracts features on the whole frame with the preset's feature settings
(``waldmann-jhmdb``: input up-sampled x2; ``crw-jhmdb``: short side 320).

Joint tracking mode (``track=True``, Waldmann Sec. 4.2 / Fig. 1): a correlation-filter tracker
(:class:`vlprop.tasks.tracker.CorrelationTracker`) follows the object's box, starting from the padded box
around the labelled keypoints (or a given box). Every frame is cropped around the current box with context
padding and resampled to a *fixed* crop size (:meth:`CropWindow.crop`), so every frame gives the engine the
same feature grid. Features are extracted on the crop as it is (the crop size *is* the network input size;
the preset's full-frame resize is not applied). The labelled keypoints are encoded in the first crop's
coordinates; propagation runs in crop coordinates, each context frame keeping the labels of its own crop (as
Waldmann's ``TrackingKeypointVideoIO``: previous crops are not re-warped); decoded keypoints are mapped back
with :meth:`CropWindow.from_crop`, the exact inverse of the crop mapping (cell-centre convention throughout).

Visibility: a keypoint that is invisible on the labelled frame encodes to an all-zero channel, which
propagation keeps at zero, and it is reported invisible on every frame (never invented). A visible keypoint
becomes invisible on a frame where its propagated channel mass falls below ``vanish`` times its mass on the
labelled frame (e.g. it left the frame or the crop); it can come back later (the labelled frame stays in the
context).

Coordinates are original-frame pixels, 0-based, x = column, pixel centres at integers; a keypoint is inside
a ``W x H`` frame when ``-0.5 <= x <= W - 0.5`` and ``-0.5 <= y <= H - 0.5``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..config import KeypointConfig, Preset, get_preset
from ..errors import InputError
from ..geometry import GridGeometry
from ..io.keypoints import KeypointSequence
from ..io.video import FrameSource, open_frames, resolve_frame
from ..labels.keypoints import KeypointCodec
from ..model import ModelSpec
from ..propagation.engine import PropagationEngine, engine_dtype_for
from .tracker import Box, CorrelationTracker, CropWindow, box_from_keypoints

log = logging.getLogger(__name__)

#: Crop side used in tracking mode when the preset does not fix a short side (Waldmann's ``scale_size``).
DEFAULT_CROP_SIZE = 480
DEFAULT_KEYPOINT_PRESET = "waldmann-jhmdb"
OUTSIDE_MODES = ("error", "invisible")


@dataclass
class KeypointFrame:
    """Keypoints of one frame.

    ``xy``: ``[K, 2]`` float64 original-frame pixels (x, y), NaN where invisible; ``visible``: ``[K]`` bool;
    ``confidence``: ``[K]`` float64, the peak of the keypoint's propagated heat map (1 on the labelled frame,
    0 where invisible). ``annotated``: the labelled frame (its keypoints are returned as given).
    ``propagated``: False for frames before the labelled frame (nothing is predicted there).
    ``box`` / ``crop``: tracker box ``(x, y, w, h)`` and crop window of this frame (``track=True`` only).
    ``labels``: the propagated label maps ``[C, h, w]`` on this frame's (crop's) feature grid.
    ``image``: the RGB frame ``[H, W, 3]`` uint8 (for overlays).
    ``estimate``: ``[K, 2]`` the decoded position of every keypoint whose channel still carries mass, also
    where it is reported invisible (``vanish``) -- a position guess for point-tracking metrics that score
    positions regardless of the occlusion prediction (TAP-Vid δ_avg); NaN where nothing is left to decode.
    """

    index: int
    name: str
    xy: np.ndarray
    visible: np.ndarray
    confidence: np.ndarray
    annotated: bool = False
    propagated: bool = True
    box: Box | None = None
    crop: CropWindow | None = None
    labels: torch.Tensor | None = None
    image: np.ndarray | None = None
    estimate: np.ndarray | None = None


def _coord(v: float) -> str:
    """A pixel coordinate for a message: one decimal, or short scientific notation when huge (1e308)."""
    return f"{v:.1f}" if abs(v) < 1e6 else f"{v:.3g}"


@dataclass(frozen=True)
class _Start:
    index: int
    xy: np.ndarray        # [K, 2]
    visible: np.ndarray   # [K]
    names: list[str]
    skeleton: list[tuple[int, int]]


def codec_from_config(cfg: KeypointConfig) -> KeypointCodec:
    """The :class:`KeypointCodec` described by a preset's :class:`~vlprop.config.KeypointConfig`."""
    return KeypointCodec(sigma=cfg.sigma, kernel=cfg.kernel, subpixel=cfg.subpixel, background=cfg.background,
                         crw_compat=cfg.crw_compat, decoder=cfg.decoder, k=cfg.decode_k)


def keypoint_preset(preset: str | Preset = DEFAULT_KEYPOINT_PRESET, compat: bool = False, **overrides: Any) -> Preset:
    """A preset with a keypoint codec: presets without one get the default :class:`KeypointConfig`
    (Gaussian sigma 0.5 at the sub-pixel position, top-5 decoding). ``overrides`` may set any propagation,
    label, feature or keypoint setting (``topk=5``, ``sigma=1.0``, ``decoder="fit"`` ...)."""
    base = get_preset(preset)
    if base.keypoints is None:
        base = replace(base, keypoints=KeypointConfig())
    return base.with_overrides(compat=compat, **overrides)


class KeypointPropagator:
    """Propagate keypoints of one labelled frame through a video (full frame or joint with tracking).

    Example::

        kp = KeypointPropagator("waldmann-jhmdb", weights="random", track=True, crop_size=320)
        for r in kp.run("video.mp4", (xy0, visible0)):       # xy0 [K, 2] pixels of frame 0
            print(r.index, r.xy, r.visible, r.confidence)
        seq = kp.propagate_sequence("frames/", read_keypoints("first.json"))

    Args:
        preset: preset name or :class:`~vlprop.config.Preset`; its propagation, feature and keypoint-codec
            settings are used (presets without a codec get the default one).
        backbone, weights, device, seed, batch_size, autocast: as :class:`vlprop.session.Propagator`.
        track: joint tracking + propagation on crops around the tracked box (module docstring).
        crop_size: tracking mode: crop side in network-input pixels (square crops) or the crop's short side
            (aspect kept); default: the preset's ``short_side``, else 480.
        crop_padding: tracking mode: context around the box on each side, as a fraction of the box size
            (window = box * (1 + 2 * crop_padding)).
        crop_square: square crop windows (side = the box's longer side); False keeps the box's aspect.
        box_padding: padding of the initial box around the labelled keypoints (fraction per side).
        tracker: keyword arguments of :class:`CorrelationTracker`.
        vanish: a keypoint is invisible where its channel mass is below ``vanish`` x its labelled mass.
        outside: labelled keypoints outside the frame: ``"error"`` (InputError) or ``"invisible"``.
        extractor: use this feature extractor (anything with ``extract_batch``, ``geometry`` and
            ``batch_size``) instead of building one; in tracking mode it receives the crops.
        layer, stride, input_scale, short_side, compat, overrides: preset overrides (any propagation, label,
            feature or keypoint setting).
    """

    def __init__(self, preset: str | Preset | None = None, backbone: str | None = None, weights: Any = "default",
                 device: str = "cpu", seed: int = 0, track: bool = False, crop_size: int | None = None,
                 crop_padding: float = 0.25, crop_square: bool = True, box_padding: float = 0.15,
                 tracker: dict | None = None, vanish: float = 0.05, outside: str = "error",
                 layer: str | None = None, stride: int | None = None, input_scale: float | None = None,
                 short_side: int | None = None, compat: bool = False, batch_size: int | None = None,
                 autocast: bool = False, extractor: Any = None, model: ModelSpec | None = None,
                 precision: str = "fp32", **overrides: Any):
        from ..backbones.fusion import check_precision

        if model is None:
            model = ModelSpec(preset=preset, backbone=backbone, weights=weights, layer=layer, stride=stride,
                              input_scale=input_scale, short_side=short_side, device=device, seed=seed,
                              compat=compat, overrides=tuple(sorted(overrides.items())), precision=precision)
        self.precision = check_precision(model.precision, model.device)
        self.engine_dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        resolved = model.resolve(default_preset=DEFAULT_KEYPOINT_PRESET, keypoints=True) if extractor is None \
            else None
        if resolved is not None:
            self.preset = resolved.preset
        else:  # features come from the caller: only the propagation and codec settings are resolved
            self.preset = keypoint_preset(model.preset or DEFAULT_KEYPOINT_PRESET, compat=model.compat,
                                          layer=model.layer, stride=model.stride, **dict(model.overrides))
            feats = self.preset.features
            if model.short_side is not None:
                feats = replace(feats, short_side=int(model.short_side),
                                input_scale=1.0 if model.input_scale is None else model.input_scale)
            elif model.input_scale is not None:
                feats = replace(feats, input_scale=float(model.input_scale), short_side=None)
            self.preset = replace(self.preset, features=feats)
        feats = self.preset.features
        self.codec = codec_from_config(self.preset.keypoints)
        if outside not in OUTSIDE_MODES:
            raise InputError(f"outside must be one of {', '.join(OUTSIDE_MODES)}, got {outside!r}")
        if not (0.0 <= vanish < 1.0):
            raise InputError(f"vanish must be in [0, 1), got {vanish}")
        if crop_padding < 0 or box_padding < 0:
            raise InputError(f"crop_padding and box_padding must be >= 0, got {crop_padding}, {box_padding}")
        if crop_size is None:
            crop_size = feats.short_side or (feats.size[0] if feats.size else None) or DEFAULT_CROP_SIZE
        if isinstance(crop_size, bool) or not isinstance(crop_size, (int, np.integer)) or crop_size < 8:
            raise InputError(f"crop_size must be an integer >= 8 (pixels), got {crop_size!r}")
        self.track = bool(track)
        self.crop_size = int(crop_size)
        self.crop_padding = float(crop_padding)
        self.crop_square = bool(crop_square)
        self.box_padding = float(box_padding)
        self.tracker_kwargs = dict(tracker or {})
        try:   # validate the tracker settings now, not mid-video
            CorrelationTracker(**self.tracker_kwargs)
        except TypeError as e:
            raise InputError(f"tracker settings: {e}") from None
        self.vanish = float(vanish)
        self.outside = outside
        self.seed = model.seed
        if resolved is not None:
            self.backbone = resolved.backbone
            self.weights = resolved.weights
            # tracking: the crop is already the network input, so no second resize
            extractor = resolved.extractor(batch_size=batch_size, autocast=autocast, resize=not self.track)
        else:
            self.backbone = backbone
            self.weights = weights
        self.extractor = extractor

    # ------------------------------------------------------------------ description
    def protocol(self) -> dict[str, Any]:
        """Everything that determines the predictions (for result files)."""
        out: dict[str, Any] = {
            "preset": self.preset.as_dict(),
            "backbone": self.backbone,
            "weights": str(self.weights),
            "seed": self.seed,
            "precision": self.precision,
            "track": self.track,
            "vanish": self.vanish,
            "codec": {k: getattr(self.codec, k) for k in ("sigma", "kernel", "subpixel", "background", "truncate",
                                                          "crw_compat", "decoder", "k")},
        }
        if self.track:
            out.update(crop_size=self.crop_size, crop_padding=self.crop_padding, crop_square=self.crop_square,
                       box_padding=self.box_padding, tracker=dict(self.tracker_kwargs))
        return out

    # ------------------------------------------------------------------ inputs
    def _start(self, keypoints: Any, frame_names: list[str], start: int | str | None,
               names: Sequence[str] | None) -> _Start:
        """Resolve the labelled frame index and its keypoints from the accepted input forms."""
        def to_index(fid: int | str, what: str) -> int:
            # one rule for every frame reference (a name when one matches, an index otherwise)
            arg = ("start", "--keypoints-frame") if what == "start frame" else (what, what)
            return resolve_frame(fid, frame_names, arg)

        skeleton: list[tuple[int, int]] = []
        if isinstance(keypoints, KeypointSequence):
            seq = keypoints
            if seq.num_keypoints == 0:
                raise InputError("the keypoint sequence has no keypoints")
            if names is not None and list(names) != seq.names:
                raise InputError(f"names {list(names)} differ from the sequence's names {seq.names}")
            names, skeleton = seq.names, list(seq.skeleton)
            if start is None:
                labelled = [(to_index(f, "keypoint frame"), t) for t, f in enumerate(seq.frames)
                            if seq.visible[t].any()]
                if not labelled:
                    raise InputError("no frame of the keypoint sequence has a visible keypoint")
                idx, t = min(labelled)
            else:
                idx = to_index(start, "start frame")
                pos = [t for t, f in enumerate(seq.frames) if to_index(f, "keypoint frame") == idx]
                if not pos:
                    raise InputError(f"the keypoint sequence has no keypoints for start frame {start!r}")
                t = pos[0]
            xy, vis = seq.xy[t].copy(), seq.visible[t].copy()
        else:
            if isinstance(keypoints, (tuple, list)) and len(keypoints) == 2 and np.ndim(keypoints[0]) == 2:
                xy, vis = keypoints
            else:
                xy, vis = keypoints, None
            if isinstance(xy, torch.Tensor):
                xy = xy.detach().cpu().numpy()
            try:
                xy = np.array(xy, dtype=np.float64)
            except (TypeError, ValueError):
                raise InputError("keypoints must be numbers of shape [K, 2] (x, y)") from None
            if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) == 0:
                raise InputError(f"keypoints must have shape [K, 2] (x, y) with K >= 1, got {tuple(xy.shape)}")
            if vis is None:
                vis = np.isfinite(xy).all(axis=1)
            else:
                if isinstance(vis, torch.Tensor):
                    vis = vis.detach().cpu().numpy()
                vis = np.asarray(vis).reshape(-1)
                if vis.shape[0] != xy.shape[0]:
                    raise InputError(f"visibility has {vis.shape[0]} entries for {xy.shape[0]} keypoints")
                vis = vis.astype(bool)
            if names is None:
                names = [f"joint_{k}" for k in range(len(xy))]
            elif len(names) != len(xy):
                raise InputError(f"{len(names)} keypoint names for {len(xy)} keypoints")
            idx = 0 if start is None else to_index(start, "start frame")
            if (vis & ~np.isfinite(xy).all(axis=1)).any():
                k = int(np.flatnonzero(vis & ~np.isfinite(xy).all(axis=1))[0])
                raise InputError(f"keypoint {names[k]!r} is visible but has no finite coordinates")
        if not vis.any():
            raise InputError(f"no visible keypoint on the labelled frame {idx} ({frame_names[idx]}): "
                             f"nothing to propagate")
        xy = np.where(vis[:, None], xy, np.nan)
        return _Start(idx, xy, vis, list(names), skeleton)

    def _check_inside(self, st: _Start, H: int, W: int, frame_name: str) -> np.ndarray:
        """Visibility after the inside-the-frame check (InputError or drop, per ``outside``)."""
        x, y = st.xy[:, 0], st.xy[:, 1]
        with np.errstate(invalid="ignore"):
            inside = (x >= -0.5) & (x <= W - 0.5) & (y >= -0.5) & (y <= H - 0.5)
        bad = st.visible & ~inside
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            if self.outside == "error":
                raise InputError(f"keypoint {st.names[k]!r} at ({_coord(x[k])}, {_coord(y[k])}) on frame {st.index} "
                                 f"({frame_name}) lies outside the {W}x{H} frame ({int(bad.sum())} keypoint(s) "
                                 f"outside; valid x in [-0.5, {W - 0.5}], y in [-0.5, {H - 0.5}])")
            log.info("frame %s: %d keypoint(s) outside the %dx%d frame are treated as invisible",
                     frame_name, int(bad.sum()), W, H)
        vis = st.visible & inside
        if not vis.any():
            raise InputError(f"no visible keypoint inside the frame on the labelled frame {st.index} ({frame_name})")
        return vis

    # ------------------------------------------------------------------ crops
    def _crop_shape(self, box: Box) -> tuple[int, int]:
        """Fixed crop output size ``(out_w, out_h)`` for a video, from its first box."""
        if self.crop_square:
            return self.crop_size, self.crop_size
        w, h = box[2], box[3]
        if w >= h:
            return max(1, int(round(self.crop_size * w / h))), self.crop_size
        return self.crop_size, max(1, int(round(self.crop_size * h / w)))

    def window(self, box: Box, out_wh: tuple[int, int]) -> CropWindow:
        """Crop window of the tracked ``box`` with the context padding, resampled to ``out_wh``."""
        return CropWindow.from_box(box, out_w=out_wh[0], out_h=out_wh[1], context=1.0 + 2.0 * self.crop_padding,
                                   square=self.crop_square)

    # ------------------------------------------------------------------ run
    def run(self, source: Any, keypoints: Any, *, start: int | str | None = None, box: Box | None = None,
            names: Sequence[str] | None = None, keep_images: bool = True) -> Iterator[KeypointFrame]:
        """Yield a :class:`KeypointFrame` for every frame of ``source``.

        ``keypoints``: a :class:`KeypointSequence` (the labelled frame is ``start`` or its first frame with a
        visible keypoint, in video order; frames may be indices or frame names), or the labelled frame's
        ``(xy [K, 2], visible [K])`` (or just ``xy``; NaN rows are invisible) for frame ``start`` (default 0).
        ``box``: initial tracker box ``(x, y, w, h)`` (default: padded box around the visible keypoints).
        Frames before the labelled frame are yielded with every keypoint invisible (``propagated=False``).
        The source, keypoints, ``start`` and ``box`` are checked when this is called, before the first frame.
        """
        src: FrameSource = open_frames(source)
        frame_names = src.names()
        if not frame_names:
            raise InputError("the video has no frames")
        st = self._start(keypoints, frame_names, start, names)
        if box is not None:
            box = tuple(float(v) for v in box)
            if len(box) != 4 or not all(map(math.isfinite, box)) or box[2] < 1 or box[3] < 1:
                raise InputError(f"box must be finite (x, y, w, h) with w, h >= 1, got {box}")
        return self._run(src, st, box, keep_images)

    def _run(self, src: FrameSource, st: "_Start", box: Box | None, keep_images: bool) -> Iterator[KeypointFrame]:
        K = len(st.names)
        state: dict[str, Any] = {}
        bs = max(1, int(getattr(self.extractor, "batch_size", 4)))
        batch: list = []
        for fr in src:
            if fr.index < st.index:
                yield KeypointFrame(fr.index, fr.name, np.full((K, 2), np.nan), np.zeros(K, bool), np.zeros(K),
                                    propagated=False, image=fr.image if keep_images else None)
                continue
            batch.append(fr)
            if len(batch) == bs:
                yield from self._process(batch, st, box, state, keep_images)
                batch = []
        if batch:
            yield from self._process(batch, st, box, state, keep_images)
        if "engine" not in state:
            raise InputError(f"the video ended before the labelled frame {st.index}")

    def _process(self, frames: list, st: _Start, box: Box | None, state: dict,
                 keep_images: bool) -> Iterator[KeypointFrame]:
        """Features for a batch of frames (crops when tracking), then propagate frame by frame."""
        windows: list[CropWindow | None] = []
        boxes: list[Box | None] = []
        inputs = []
        for fr in frames:
            if fr.index == st.index:
                H, W = fr.image.shape[:2]
                state["visible0"] = self._check_inside(st, H, W, fr.name)
                if self.track:
                    b = box if box is not None else box_from_keypoints(st.xy, state["visible0"],
                                                                       padding=self.box_padding)
                    tracker = CorrelationTracker(**self.tracker_kwargs)
                    tracker.init(fr.image, b)
                    state["tracker"] = tracker
                    state["crop_wh"] = self._crop_shape(b)
            if self.track:
                if fr.index == st.index:
                    b = state["tracker"].box
                else:
                    b = state["tracker"].update(fr.image)
                win = self.window(b, state["crop_wh"])
                boxes.append(b)
                windows.append(win)
                inputs.append(win.crop(fr.image))
            else:
                boxes.append(None)
                windows.append(None)
                inputs.append(fr.image)
        feats = self.extractor.extract_batch(inputs)
        for fr, f, win, b, img in zip(frames, feats, windows, boxes, inputs):
            if "geometry" not in state:
                h, w = img.shape[:2]
                geo: GridGeometry = self.extractor.geometry(h, w)
                if (geo.grid_height, geo.grid_width) != tuple(f.shape[1:]):
                    raise RuntimeError(f"extractor geometry {geo} does not match features {tuple(f.shape)}")
                state["geometry"] = geo
            if fr.index == st.index:
                yield self._first(fr, f, win, b, st, state, keep_images)
                continue
            labels = state["engine"].step(f).float().cpu()  # to the CPU only for decoding
            yield self._decode(fr, labels, win, b, state, keep_images)

    def _first(self, fr, f: torch.Tensor, win: CropWindow | None, b: Box | None, st: _Start, state: dict,
               keep_images: bool) -> KeypointFrame:
        vis0 = state["visible0"]
        xy_enc = st.xy if win is None else win.to_crop(st.xy)
        labels = self.codec.encode(np.where(vis0[:, None], xy_enc, np.nan), vis0, state["geometry"])
        # re-quantisation of keypoint maps re-encodes the decoded keypoints (not a per-cell argmax)
        dtype = engine_dtype_for(self.precision, f.shape[0], f.device) if self.engine_dtype == torch.bfloat16 \
            else self.engine_dtype
        engine = PropagationEngine(self.preset.propagation, dtype=dtype, recode=self.codec.recode)
        engine.reset(f, labels.to(f.device))
        state["engine"] = engine
        mass0 = self._joint_mass(labels)
        state["mass0"] = mass0
        # a keypoint whose kernel falls entirely off the grid cannot be propagated
        lost = vis0 & (mass0 <= 0)
        if lost.any():
            log.warning("%d labelled keypoint(s) fall outside the feature grid/crop and are treated as invisible",
                        int(lost.sum()))
        state["visible0"] = vis0 & (mass0 > 0)
        vis = state["visible0"]
        xy = np.where(vis[:, None], st.xy, np.nan)
        return KeypointFrame(fr.index, fr.name, xy, vis.copy(), vis.astype(np.float64), annotated=True, box=b,
                             crop=win, labels=labels, image=fr.image if keep_images else None, estimate=xy.copy())

    def _joint_mass(self, labels: torch.Tensor) -> np.ndarray:
        m = labels[1:] if self.codec.has_background else labels
        return m.clamp_min(0).sum(dim=(1, 2)).double().numpy()

    def _decode(self, fr, labels: torch.Tensor, win: CropWindow | None, b: Box | None, state: dict,
                keep_images: bool) -> KeypointFrame:
        dec = self.codec.decode(labels, state["geometry"])
        mass = self._joint_mass(labels)
        vis = state["visible0"] & dec.visible & (mass >= self.vanish * state["mass0"]) & (mass > 0)
        xy = dec.xy if win is None else win.from_crop(dec.xy)
        estimate = np.where((state["visible0"] & dec.visible)[:, None], xy, np.nan)
        xy = np.where(vis[:, None], xy, np.nan)
        conf = np.where(vis, dec.confidence, 0.0)
        return KeypointFrame(fr.index, fr.name, xy, vis, conf, box=b, crop=win, labels=labels,
                             image=fr.image if keep_images else None, estimate=estimate)

    # ------------------------------------------------------------------ helpers
    def propagate_sequence(self, source: Any, keypoints: Any, *, start: int | str | None = None,
                           box: Box | None = None, names: Sequence[str] | None = None) -> KeypointSequence:
        """Run on the whole video and return a :class:`KeypointSequence` (frames = indices 0..T-1)."""
        frames, xy, vis, conf = [], [], [], []
        out_names = names
        skeleton: list[tuple[int, int]] = []
        if isinstance(keypoints, KeypointSequence):
            out_names, skeleton = keypoints.names, list(keypoints.skeleton)
        for r in self.run(source, keypoints, start=start, box=box, names=names, keep_images=False):
            frames.append(r.index)
            xy.append(r.xy)
            vis.append(r.visible)
            conf.append(r.confidence)
        K = len(xy[0])
        if out_names is None:
            out_names = [f"joint_{k}" for k in range(K)]
        return KeypointSequence(list(out_names), frames, np.stack(xy), np.stack(vis), np.stack(conf), skeleton)
