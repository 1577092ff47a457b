"""Interactive annotation: a stateful session on one video (in the spirit of SAM 2's video predictor).

:class:`AnnotationSession` opens a video once; its features are computed once and cached (:class:`FeatureCache`:
in memory, optionally bounded, and/or on disk keyed by video, model and preset). Masks can be added or replaced
for any object on any frame; propagation runs forward or backward from the labelled frames over any range, and
after a correction at frame ``k`` only the frames it can change are recomputed (forward: frames after ``k``;
backward: frames before ``k``), from the stored state of the run, without recomputing features. The result is
exactly the run that had the correction from the start (tests check it bit for bit).

Each direction is a :class:`_Pass`: the object-group propagation of :class:`~vlprop.session.Propagator` (every
labelled frame starts a group with its own context memory; an object relabelled later moves to the new group)
over a frame order (``0..T-1`` forward, ``T-1..0`` backward). A pass records, per frame, the labels each group
pushed into its memory, so its state before any frame can be rebuilt exactly: the group's labelled frame plus
its last ``context`` pushed frames -- the same memory the streaming engine held.

**Both directions** are merged per frame and per object by the *nearer label* rule: object ``i`` on frame ``t``
takes its probabilities from the direction whose labelled frame of ``i`` (the start of the group that carries
``i``) is nearer to ``t``; ties go to forward; an object labelled on one side only comes from that side. The
background is the product over the two directions of each one's probability of "none of the objects it
carries here" (the same rule that merges object groups in :mod:`vlprop.session`), so with one direction
owning every object the merge is exactly that direction's result.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

from .errors import InputError
from .geometry import GridGeometry
from .io.files import atomic_path
from .io.video import FrameSource, ImageFolderSource, VideoFileSource, open_frames
from .labels.masks import decode_probs, probs_to_mask
from .session import FrameResult, Propagator, _Group, _merge

log = logging.getLogger(__name__)

DIRECTIONS = ("forward", "backward", "both")


# --------------------------------------------------------------------------- features
class _FrameAccess:
    """Random access to the frames of a source (folders: read on demand; videos/arrays: decoded once)."""

    def __init__(self, source: FrameSource):
        self.source = source
        self.names = list(source.names())
        self._frames: list[np.ndarray] | None = None
        if not isinstance(source, ImageFolderSource):
            self._frames = [fr.image for fr in source]
            self.names = [fr for fr in self.names[: len(self._frames)]]
            if len(self._frames) != len(self.names):  # a video whose header count was wrong
                self.names = [f"{i:05d}" for i in range(len(self._frames))]
        self.size: tuple[int, int] = tuple(self.image(0).shape[:2])

    def __len__(self) -> int:
        return len(self.names)

    def image(self, t: int) -> np.ndarray:
        """RGB frame ``[H, W, 3]`` uint8."""
        if self._frames is not None:
            return self._frames[t]
        img = self.source.read(t)
        size = getattr(self, "size", None)
        if size is not None and tuple(img.shape[:2]) != size:
            raise InputError(f"{self.source.files[t]}: frame {t} is {img.shape[1]}x{img.shape[0]} but frame 0 is "
                             f"{size[1]}x{size[0]}; all frames of a video must have the same size")
        return img


def video_identity(source: FrameSource) -> dict[str, Any]:
    """What identifies a video's content cheaply: file names, sizes and times (folders/files) or a hash (arrays)."""
    if isinstance(source, ImageFolderSource):
        return {"kind": "folder", "path": str(source.folder.resolve()),
                "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in source.files]}
    if isinstance(source, VideoFileSource):
        st = source.path.stat()
        return {"kind": "video", "path": str(source.path.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns}
    h = hashlib.sha256()
    for fr in source:
        h.update(np.ascontiguousarray(fr.image).tobytes())
    return {"kind": "array", "sha256": h.hexdigest()}


def model_identity(prop: Propagator) -> dict[str, Any]:
    """What identifies the features: the network's parameters (SHA-256 of every tensor, so a seeded random init
    or a re-trained checkpoint is told apart), its preprocessing and the preset's feature settings."""
    ext = prop.extractor
    net = getattr(ext, "net", None)
    if net is not None:
        h = hashlib.sha256()
        for k, v in net.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        weights = h.hexdigest()
    else:  # a custom extractor: its type and whatever it declares as its identity
        weights = f"{type(ext).__module__}.{type(ext).__qualname__}:{getattr(ext, 'cache_id', '')}"
    return {"backbone": str(prop.backbone), "weights": weights, "features": asdict(prop.preset.features),
            "preprocessing": repr(getattr(ext, "preprocessing", None)), "stride": getattr(ext, "stride", None),
            "input_scale": getattr(ext, "input_scale", None), "short_side": getattr(ext, "short_side", None),
            "dtype": str(getattr(ext, "dtype", ""))}


class FeatureCache:
    """Features ``[D, h, w]`` of every frame of one video, computed once.

    Frames are extracted in aligned blocks of ``batch`` frames (``[b*batch, (b+1)*batch)``), so a block that is
    recomputed after eviction gives bit-identical features. In memory at most ``max_memory_bytes`` are kept
    (least recently used evicted; ``None``: no bound). With ``cache_dir`` every computed frame is also stored
    in ``cache_dir/<key>/`` (``key``: hash of video, model and preset feature settings) and re-read from there,
    also by later sessions; ``max_disk_bytes`` bounds the whole ``cache_dir`` (other keys' folders are removed,
    least recently used first).

    Args:
        frames: random access to the frames.
        extractor: anything with ``extract_batch(list of [H,W,3]) -> [B, D, h, w]`` and ``batch_size``.
        key: the cache key (see :func:`feature_cache_key`); required with ``cache_dir``.
    """

    def __init__(self, frames: _FrameAccess, extractor: Any, key: str | None = None,
                 cache_dir: str | Path | None = None, max_memory_bytes: int | None = None,
                 max_disk_bytes: int | None = None):
        if cache_dir is not None and not key:
            raise InputError("a feature cache folder needs a cache key (video + model identity)")
        self.frames = frames
        self.extractor = extractor
        self.block = max(1, int(getattr(extractor, "batch_size", 4)))
        # features are kept where the extractor makes them (the engine follows them); files hold CPU copies
        self.device = torch.device(getattr(extractor, "device", None) or "cpu")
        self.key = key
        self.dir = Path(cache_dir) / key if cache_dir is not None else None
        self.max_memory_bytes = max_memory_bytes
        self.max_disk_bytes = max_disk_bytes
        self._mem: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self.frames_extracted = 0  # how many frames went through the network (for tests and logs)
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.dir.touch()

    def __len__(self) -> int:
        return len(self.frames)

    def _file(self, t: int) -> Path:
        return self.dir / f"{t:06d}.pt"

    def _remember(self, t: int, f: torch.Tensor) -> None:
        if t in self._mem:
            self._mem.move_to_end(t)
            return
        self._mem[t] = f
        self._bytes += f.numel() * f.element_size()
        while self.max_memory_bytes is not None and self._bytes > self.max_memory_bytes and len(self._mem) > 1:
            _, old = self._mem.popitem(last=False)
            self._bytes -= old.numel() * old.element_size()

    def __getitem__(self, t: int) -> torch.Tensor:
        if not 0 <= t < len(self.frames):
            raise InputError(f"frame {t} is outside the video (0..{len(self.frames) - 1})")
        f = self._mem.get(t)
        if f is not None:
            self._mem.move_to_end(t)
            return f
        if self.dir is not None and self._file(t).is_file():
            f = torch.load(self._file(t), weights_only=True, map_location=self.device)
            self._remember(t, f)
            return f
        b0 = (t // self.block) * self.block
        idx = list(range(b0, min(b0 + self.block, len(self.frames))))
        feats = self.extractor.extract_batch([self.frames.image(i) for i in idx])
        self.frames_extracted += len(idx)
        for i, fi in zip(idx, feats):
            fi = fi.detach().contiguous()
            if self.dir is not None:
                with atomic_path(self._file(i)) as tmp:
                    torch.save(fi.cpu().clone(), tmp)
            self._remember(i, fi)
        if self.dir is not None and self.max_disk_bytes is not None:
            self._trim_disk()
        return feats[t - b0].detach().contiguous() if t not in self._mem else self._mem[t]

    def _trim_disk(self) -> None:
        root = self.dir.parent
        # only folders this cache made (a 24-hex-digit key holding .pt files) are ever removed
        folders = sorted((p for p in root.iterdir() if p.is_dir() and _is_key(p.name)
                          and all(f.suffix == ".pt" for f in p.iterdir())), key=lambda p: p.stat().st_mtime)
        sizes = {p: sum(f.stat().st_size for f in p.glob("*.pt")) for p in folders}
        total = sum(sizes.values())
        for p in folders:
            if total <= self.max_disk_bytes:
                break
            if p == self.dir:
                continue
            shutil.rmtree(p, ignore_errors=True)
            total -= sizes[p]


def _is_key(name: str) -> bool:
    return len(name) == 24 and all(c in "0123456789abcdef" for c in name)


def feature_cache_key(source: FrameSource, prop: Propagator) -> str:
    """Hash of :func:`video_identity` and :func:`model_identity` (hex, 24 characters)."""
    doc = json.dumps({"video": video_identity(source), "model": model_identity(prop)}, sort_keys=True, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()[:24]


# --------------------------------------------------------------------------- one direction
@dataclass
class _GroupRecord:
    """An object group of a pass: its labelled frame and the labels it pushed into memory per frame."""

    uid: int
    start: int
    ids: list[int]
    start_labels: torch.Tensor
    pushed: dict[int, torch.Tensor] = field(default_factory=dict)


@dataclass
class PassResult:
    """One frame of one direction: the :class:`FrameResult` plus each object's labelled frame (its anchor)."""

    result: FrameResult
    anchors: dict[int, int]
    ann_ids: list[int]


class _Pass:
    """The object-group propagation of :class:`~vlprop.session.Propagator` over a frame order, resumable."""

    def __init__(self, order: list[int], session: "AnnotationSession"):
        self.order = order
        self.pos = {t: j for j, t in enumerate(order)}
        self.s = session
        self.results: list[PassResult] = []  # results of order[0 .. done-1]
        # state before processing order[j]: (group uids and their active sets, all_ids)
        self._snapshots: list[tuple[list[tuple[int, frozenset]], list[int]]] = []
        self._records: dict[int, _GroupRecord] = {}
        self._live: list[_Group] = []  # groups with engines, valid for position `done`
        self._live_uid: dict[int, int] = {}  # id(_Group) -> uid
        self._all_ids: list[int] = []
        self._next_uid = 0
        self._engines_valid = True
        self._resume: tuple[list[tuple[int, frozenset]], list[int]] = ([], [])  # state before order[done]

    @property
    def done(self) -> int:
        return len(self.results)

    def invalidate_from(self, frame: int) -> None:
        """Forget results from ``frame`` on (in this pass's order)."""
        j = self.pos[frame]
        if j >= self.done:
            return
        groups, all_ids = self._snapshots[j]
        self._resume = (groups, list(all_ids))
        del self.results[j:]
        del self._snapshots[j:]
        keep = {uid for uid, _ in groups}
        for uid in list(self._records):
            rec = self._records[uid]
            if uid not in keep:
                if self.pos[rec.start] >= j:
                    del self._records[uid]
                continue
            for t in [t for t in rec.pushed if self.pos[t] >= j]:
                del rec.pushed[t]
        self._all_ids = list(all_ids)
        self._engines_valid = False

    def _rebuild(self) -> None:
        """Engines of the groups alive before ``order[done]``: labelled frame + the last ``context`` pushes."""
        j = self.done
        groups, _ = self._resume
        cfg = self.s.preset.propagation
        self._live, self._live_uid = [], {}
        for uid, active in groups:
            rec = self._records[uid]
            eng = self.s.propagator.new_engine(cfg, features=self.s.features[rec.start])
            eng.reset(self.s.features[rec.start], rec.start_labels)
            pushed = [self.order[q] for q in range(self.pos[rec.start] + 1, j)]
            if cfg.context > 0:
                for t in pushed[-cfg.context:]:
                    eng.push(self.s.features[t], rec.pushed[t])
            g = _Group(rec.start, list(rec.ids), eng, set(active))
            self._live.append(g)
            self._live_uid[id(g)] = uid
        self._engines_valid = True

    def _state(self):
        return [(self._live_uid[id(g)], frozenset(g.active)) for g in self._live], list(self._all_ids)

    def step(self) -> PassResult:
        """Process ``order[done]`` and return its result (on an error the pass is left as it was before)."""
        if not self._engines_valid:
            self._rebuild()
        snap = self._state()
        try:
            res = self._step()
        except BaseException:
            self._resume, self._all_ids = (snap[0], list(snap[1])), list(snap[1])
            for rec in self._records.values():  # forget pushes of the failed frame
                rec.pushed.pop(self.order[self.done], None)
            for uid in [u for u, r in self._records.items() if r.start == self.order[self.done]]:
                del self._records[uid]
            self._engines_valid = False
            raise
        self._snapshots.append(snap)
        self.results.append(res)
        return res

    def _step(self) -> PassResult:
        t = self.order[self.done]
        s = self.s
        ann = s._annotations.get(t)
        name = s.names[t]
        if not self._live and (ann is None or not s._ids_in(ann)):
            return PassResult(FrameResult(t, name, np.zeros(s.size, np.uint8), None, []), {}, [])
        f = s.features[t]
        geometry = s.geometry(f)
        cfg = s.preset
        preds = [(g, g.engine.predict(f)) for g in self._live]
        ann_ids: list[int] = []
        if ann is not None:
            ann_ids, ann_labels = s.propagator._take_over(ann, self._all_ids, preds, geometry)
            for g, p in preds:
                self._push(g, t, f, p)
            self._live = [g for g in self._live if g.active]
            if ann_ids:
                ann_labels = ann_labels.to(f.device)
                eng = s.propagator.new_engine(cfg.propagation, features=f)
                eng.reset(f, ann_labels)
                rec = _GroupRecord(self._next_uid, t, list(ann_ids), ann_labels)
                self._records[rec.uid] = rec
                self._next_uid += 1
                g = _Group(t, list(ann_ids), eng, set(ann_ids))
                self._live.append(g)
                self._live_uid[id(g)] = rec.uid
                preds = [(g2, p) for g2, p in preds if g2.active] + [(g, ann_labels)]
            else:
                preds = [(g2, p) for g2, p in preds if g2.active]
        else:
            for g, p in preds:
                self._push(g, t, f, p)
        anchors = {i: g.start for g, _ in preds for i in g.ids if i in g.active}
        if not preds:
            res = PassResult(FrameResult(t, name, np.zeros(s.size, np.uint8), None, list(self._all_ids)), {}, [])
        else:
            probs = _merge(preds, self._all_ids).float().cpu()  # to the CPU only for decoding
            mask = s._decode(probs, list(self._all_ids), geometry, ann, ann_ids)
            res = PassResult(FrameResult(t, name, mask, probs, list(self._all_ids), annotated=ann is not None),
                             anchors, ann_ids)
        return res

    def _push(self, g: _Group, t: int, f: torch.Tensor, p: torch.Tensor) -> None:
        g.engine.push(f, p)
        if self.s.preset.propagation.context > 0:
            self._records[self._live_uid[id(g)]].pushed[t] = p.detach().clone()


# --------------------------------------------------------------------------- the session
class AnnotationSession:
    """A video opened once for interactive labelling: add/replace masks anywhere, propagate, correct, re-propagate.

    Example::

        sess = AnnotationSession("frames/", weights="default")             # or propagator=Propagator(...)
        sess.add_mask(0, "first.png")                                      # index mask: every object in it
        for r in sess.propagate("forward"):                                # FrameResult(index, name, mask, probs)
            ...
        sess.add_mask(40, fixed_bool_mask, obj_id=2)                       # correct object 2 on frame 40
        list(sess.propagate("forward"))                                    # recomputes frames 41.. only
        masks = sess.masks()                                               # [H, W] uint8 per frame

    Args:
        source: frame folder, video file, array ``[T, H, W, 3]`` or a :class:`~vlprop.io.video.FrameSource`.
        propagator: a :class:`~vlprop.session.Propagator` to take the model and preset from; otherwise one is
            built from ``propagator_kwargs`` (``preset=``, ``weights=``, ``backbone=`` ...).
        cache_dir: also keep features on disk under ``cache_dir/<key>`` (key: video, model and preset feature
            settings), so a later session on the same video and model skips the network.
        max_memory_bytes: bound the features kept in memory (``None``: all frames). Evicted frames are re-read
            from ``cache_dir``, or recomputed (bit-identically, in the same aligned blocks).
        max_disk_bytes: bound the whole ``cache_dir`` (other videos' folders removed, oldest first).

    Frames of a video file or an array are decoded once and held in memory (about 1.2 MB per 480p frame);
    frame folders are read on demand.
    """

    def __init__(self, source: Any, propagator: Propagator | None = None, *, cache_dir: str | Path | None = None,
                 max_memory_bytes: int | None = None, max_disk_bytes: int | None = None,
                 **propagator_kwargs: Any):
        self.propagator = propagator if propagator is not None else Propagator(**propagator_kwargs)
        self.preset = self.propagator.preset
        self.void = self.propagator.void
        src = open_frames(source)
        self._frames = _FrameAccess(src)
        self.names: list[str] = self._frames.names
        self.size: tuple[int, int] = self._frames.size
        key = feature_cache_key(src, self.propagator) if cache_dir is not None else None
        self.features = FeatureCache(self._frames, self.propagator.extractor, key=key, cache_dir=cache_dir,
                                     max_memory_bytes=max_memory_bytes, max_disk_bytes=max_disk_bytes)
        self._geometry: GridGeometry | None = None
        self._annotations: dict[int, np.ndarray] = {}
        T = len(self.names)
        self._passes = {"forward": _Pass(list(range(T)), self), "backward": _Pass(list(range(T - 1, -1, -1)), self)}
        self.frames_propagated = 0  # frames computed by propagate() so far (tests: what a correction recomputes)

    # ------------------------------------------------------------------ info
    def __len__(self) -> int:
        return len(self.names)

    @property
    def labelled_frames(self) -> list[int]:
        return sorted(self._annotations)

    def image(self, t: int) -> np.ndarray:
        """RGB frame ``t`` ``[H, W, 3]`` uint8."""
        return self._frames.image(self._frame_index(t))

    def geometry(self, f: torch.Tensor) -> GridGeometry:
        if self._geometry is None:
            H, W = self.size
            geo = self.propagator.extractor.geometry(H, W)
            if (geo.grid_height, geo.grid_width) != tuple(f.shape[1:]):
                raise RuntimeError(f"extractor geometry {geo} does not match features {tuple(f.shape)}")
            self._geometry = geo
        return self._geometry

    def _frame_index(self, frame: int | str) -> int:
        if isinstance(frame, str) and not frame.isdigit():
            if frame not in self.names:
                raise InputError(f"frame {frame!r} is not a frame name of this video")
            return self.names.index(frame)
        t = int(frame)
        if not 0 <= t < len(self.names):
            raise InputError(f"frame {t} is outside the video (0..{len(self.names) - 1})")
        return t

    def _ids_in(self, mask: np.ndarray) -> list[int]:
        return self.propagator._ids_in(mask)

    def _decode(self, probs: torch.Tensor, ids: list[int], geometry: GridGeometry, ann: np.ndarray | None,
                ann_ids: list[int]) -> np.ndarray:
        scores = decode_probs(probs, geometry, self.preset.labels.output_minmax)
        if ann is None:
            return probs_to_mask(scores, ids)
        for i in ann_ids:  # given labels are exact: their objects are nowhere else
            scores[1 + ids.index(i)] = float("-inf")
        mask = probs_to_mask(scores, ids)
        return np.where(np.isin(ann, ann_ids), ann, mask).astype(np.uint8)

    # ------------------------------------------------------------------ labels
    def add_mask(self, frame: int | str, mask: Any, obj_id: int | None = None) -> None:
        """Label ``frame``: an index mask ``[H, W]`` (array or PNG path) replaces the frame's labels; with
        ``obj_id`` a binary mask ``[H, W]`` adds or replaces that one object's label on the frame.

        Results that the label can change are forgotten: forward, the frames from ``frame`` on; backward, the
        frames up to ``frame``.
        """
        from .io.masks import read_mask

        t = self._frame_index(frame)
        m = read_mask(mask) if isinstance(mask, (str, Path)) else np.asarray(mask)
        if m.shape != self.size:
            raise InputError(f"mask for frame {t} is {m.shape[1] if m.ndim > 1 else '?'}x{m.shape[0]} but the frame "
                             f"is {self.size[1]}x{self.size[0]}")
        if obj_id is None:
            if m.dtype != np.uint8:
                if m.size and (m.min() < 0 or m.max() > 255):
                    raise InputError(f"mask for frame {t}: object ids must be in 0..255")
                m = m.astype(np.uint8)
            new = m.copy()
        else:
            obj_id = int(obj_id)
            if not 1 <= obj_id <= 255 or obj_id == self.void:
                raise InputError(f"obj_id must be 1..255 and not the void value {self.void}, got {obj_id}")
            new = self._annotations.get(t, np.zeros(self.size, np.uint8)).copy()
            new[new == obj_id] = 0
            new[m.astype(bool)] = obj_id
        self._annotations[t] = new
        self._invalidate(t)

    def clear_frame(self, frame: int | str) -> None:
        """Remove every label of ``frame``."""
        t = self._frame_index(frame)
        if self._annotations.pop(t, None) is not None:
            self._invalidate(t)

    def _invalidate(self, t: int) -> None:
        for p in self._passes.values():
            p.invalidate_from(t)

    # ------------------------------------------------------------------ propagate
    def propagate(self, direction: str = "forward", start: int | str | None = None, end: int | str | None = None,
                  cancel: threading.Event | Callable[[], bool] | None = None) -> Iterator[FrameResult]:
        """Propagate and yield :class:`FrameResult` records.

        ``forward`` yields frames ``start..end`` (default ``0..T-1``) in increasing order, ``backward``
        ``start..end`` (default ``T-1..0``) in decreasing order, ``both`` every frame of ``start..end`` in
        increasing order (the two directions merged by the nearer-label rule, see the module docstring).
        A direction's frame depends on every label before it in that direction, so frames before ``start`` are
        computed too if they are not yet; frames computed before (and not changed by a label since) are yielded
        from memory. ``cancel`` (an Event or a callable) is checked between frames; when set, propagation stops
        after the current frame and a later call resumes where it stopped.
        """
        if direction not in DIRECTIONS:
            raise InputError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
        if not self._annotations:
            raise InputError("no labels: add_mask(frame, mask) first")
        T = len(self.names)
        stop = (cancel.is_set if hasattr(cancel, "is_set") else cancel) if cancel is not None else (lambda: False)
        if direction == "both":
            a = 0 if start is None else self._frame_index(start)
            b = T - 1 if end is None else self._frame_index(end)
            a, b = min(a, b), max(a, b)
            if not self._run_to("forward", b, stop) or not self._run_to("backward", a, stop):
                return
            for t in range(a, b + 1):
                yield self._merged(t)
            return
        p = self._passes[direction]
        first, last = (0, T - 1) if direction == "forward" else (T - 1, 0)
        a = first if start is None else self._frame_index(start)
        b = last if end is None else self._frame_index(end)
        ja, jb = p.pos[a], p.pos[b]
        if ja > jb:
            raise InputError(f"{direction} propagation from frame {a} cannot end at frame {b}")
        for j in range(ja, jb + 1):
            if j >= p.done:
                if stop():
                    return
                self._step(p)
            yield p.results[j].result

    def _step(self, p: _Pass) -> PassResult:
        r = p.step()
        if r.result.probs is not None:
            self.frames_propagated += 1
        return r

    def _run_to(self, direction: str, frame: int, stop: Callable[[], bool]) -> bool:
        p = self._passes[direction]
        while p.done <= p.pos[frame]:
            if stop():
                return False
            self._step(p)
        return True

    def _merged(self, t: int) -> FrameResult:
        fw = self._passes["forward"].results[self._passes["forward"].pos[t]]
        bw = self._passes["backward"].results[self._passes["backward"].pos[t]]
        return merge_directions(fw, bw, self, t)

    def result(self, frame: int | str, direction: str = "forward") -> FrameResult | None:
        """The current result of ``frame`` in ``direction`` (``None`` if not propagated since the last change)."""
        t = self._frame_index(frame)
        if direction == "both":
            f, b = self._passes["forward"], self._passes["backward"]
            return self._merged(t) if f.pos[t] < f.done and b.pos[t] < b.done else None
        p = self._passes[direction]
        return p.results[p.pos[t]].result if p.pos[t] < p.done else None

    def masks(self, direction: str = "forward") -> list[np.ndarray]:
        """Index masks ``[H, W]`` of every frame (propagating what is missing)."""
        return [r.mask for r in sorted(self.propagate(direction), key=lambda r: r.index)]


def merge_directions(fw: PassResult, bw: PassResult, session: AnnotationSession, t: int) -> FrameResult:
    """Merge one frame's forward and backward results by the nearer-label rule (module docstring)."""
    if fw.result.probs is None:
        return bw.result
    if bw.result.probs is None:
        return fw.result
    ids = list(fw.result.object_ids) + [i for i in bw.result.object_ids if i not in fw.result.object_ids]
    own_f, own_b = set(), set()
    for i in ids:
        df = t - fw.anchors[i] if i in fw.anchors else None
        db = bw.anchors[i] - t if i in bw.anchors else None
        if df is not None and (db is None or df <= db):
            own_f.add(i)
        elif db is not None:
            own_b.add(i)
    preds = [(_Group(0, fw.result.object_ids, None, own_f), fw.result.probs),
             (_Group(0, bw.result.object_ids, None, own_b), bw.result.probs)]
    probs = _merge(preds, ids)
    ann = session._annotations.get(t)
    ann_ids = session._ids_in(ann) if ann is not None else []
    geometry = session.geometry(session.features[t]) if session._geometry is None else session._geometry
    mask = session._decode(probs, ids, geometry, ann, ann_ids)
    return FrameResult(t, fw.result.name, mask, probs, ids, annotated=ann is not None)


def propagate_video(prop: Propagator, source: Any, masks: Mapping | None = None,
                    annotations: str | Path | None = None, direction: str = "forward",
                    max_memory_bytes: int | None = None) -> Iterator[FrameResult]:
    """Propagate labelled frames through a video ``forward``, ``backward`` or ``both`` ways; yields every frame's
    :class:`FrameResult` in frame order (the CLI's ``--direction``). ``forward`` streams (:meth:`Propagator.run`);
    the others hold the frames and features in an :class:`AnnotationSession` (``max_memory_bytes`` bounds the
    features kept; evicted ones are recomputed). The labels are checked when this is called, before the first
    frame is computed, so a bad label fails before anything is written."""
    if direction == "forward":
        return prop.run(source, masks=masks, annotations=annotations)
    if direction not in DIRECTIONS:
        raise InputError(f"--direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    src = open_frames(source)
    given = prop._load_masks(masks, annotations, src)
    sess = AnnotationSession(src, prop, max_memory_bytes=max_memory_bytes)
    for t, m in given.items():
        sess.add_mask(t, m)
    return _session_results(sess, direction)


def _session_results(sess: "AnnotationSession", direction: str) -> Iterator[FrameResult]:
    results = sess.propagate(direction)
    if direction == "backward":
        results = reversed(list(results))  # results are small (masks + grid probabilities); frames in order
    for r in results:
        yield replace(r, image=sess.image(r.index))


__all__ = ["AnnotationSession", "FeatureCache", "feature_cache_key", "merge_directions", "propagate_video",
           "DIRECTIONS", "video_identity", "model_identity"]
