"""Training clips from raw video: discovery, clip sampling, a reproducible sampler and the loader.

Sources (``discover_videos``):

* a folder of frame folders ``<root>/<seq>/*.jpg|png`` (searched recursively; a sequence is any
  folder holding images, named by its path relative to ``root``);
* DAVIS / YouTube-VOS layouts ``<root>/JPEGImages/[480p/]<seq>/`` (when ``ImageSets/**/train.txt``
  exists only its sequences are used, so a full DAVIS root never leaks val/test sequences);
* video files (``.mp4 .avi .mov .mkv .webm ...``) anywhere under ``root`` or ``root`` itself,
  decoded with PyAV.

A training sample is ``T`` frames of one video (DUL's rule): window ``min(n, gap*T)``, step
``window // T``, a random start, and optionally a random permutation of the ``T`` frames so the
reference frame (index 0) is a random one of them.

Reproducibility: a sample is identified by ``(video index, global sample number g)`` and all of its
randomness (frames, augmentation, anchor offsets) comes from ``numpy.random.default_rng([seed, g])``.
:class:`ClipBatchSampler` maps optimisation step ``s`` to sample numbers ``g``, deterministically and
independently of the number of loader workers or ranks, so a resumed run at step ``s`` draws exactly
the clips the uninterrupted run would have, and ``R`` ranks together draw the same global batch as
one process.

Unreadable (corrupt) and too-short videos never stop a run: they are skipped with a
:class:`SkippedVideoWarning` and reported (discovery returns them; a sample that hits a corrupt
video is replaced by another video and names the skipped one in its ``"skipped"`` field).
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import av
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from vlprop.errors import InputError

from .augment import AugmentConfig, augment_clip

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
VIDEO_EXTS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ogv"})
TRAIN_LISTS = ("ImageSets/train.txt", "ImageSets/2017/train.txt", "ImageSets/2016/train.txt")

# Errors that mean "this file is unreadable", as opposed to a bug in our code.
READ_ERRORS = (OSError, ValueError, RuntimeError, EOFError, SyntaxError, av.error.FFmpegError)


class SkippedVideoWarning(UserWarning):
    """A video was skipped because it is unreadable or too short."""


class VideoReadError(InputError):
    """A video (or one of its frames) could not be decoded."""


@dataclass(frozen=True)
class VideoEntry:
    """One training video: a frame folder (``frames`` = sorted image paths) or a video file."""

    name: str
    path: Path
    num_frames: int
    frames: tuple[Path, ...] = ()

    @property
    def is_file(self) -> bool:
        return not self.frames


@dataclass
class Discovery:
    """Result of :func:`discover_videos`: usable videos and the skipped ones with reasons."""

    entries: list[VideoEntry]
    skipped: list[tuple[str, str]] = field(default_factory=list)


# ----------------------------------------------------------------------------- discovery
def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _train_list(root: Path) -> list[str] | None:
    for rel in TRAIN_LISTS:
        f = root / rel
        if f.is_file():
            names = []
            for line in f.read_text().splitlines():
                tok = line.strip().split()
                if not tok:
                    continue
                # DAVIS-2016 lists frame paths ("/JPEGImages/480p/bear/00000.jpg ..."); 2017 lists names.
                name = Path(tok[0]).parent.name if "/" in tok[0] else tok[0]
                if name not in names:
                    names.append(name)
            return names
    return None


def probe_video_file(path: Path) -> int:
    """Number of frames of a video file (container metadata, else duration*rate, else by decoding).

    Raises :class:`VideoReadError` when the file cannot be opened or has no video stream.
    """
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path}: no video stream")
            stream = container.streams.video[0]
            if stream.frames and stream.frames > 0:
                return int(stream.frames)
            if stream.duration and stream.average_rate and stream.time_base:
                est = int(float(stream.duration * stream.time_base * stream.average_rate))
                if est > 0:
                    return est
            return sum(1 for _ in container.decode(stream))
    except VideoReadError:
        raise
    except READ_ERRORS as exc:
        raise VideoReadError(f"{path}: cannot open video ({type(exc).__name__}: {exc})") from exc


def discover_videos(root: str | os.PathLike, min_frames: int = 1) -> Discovery:
    """Find training videos under ``root`` (see the module docstring for the layouts).

    Videos with fewer than ``min_frames`` frames or that cannot be opened are skipped (warned,
    listed in ``Discovery.skipped``). Raises :class:`InputError` if ``root`` does not exist or holds
    no usable video.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"training data {root} does not exist")
    candidates: list[tuple[str, Path, tuple[Path, ...]]] = []  # (name, path, frames or ())
    if root.is_file():
        if root.suffix.lower() not in VIDEO_EXTS:
            raise InputError(f"training data {root} is a file but not a video ({', '.join(sorted(VIDEO_EXTS))})")
        candidates.append((root.stem, root, ()))
    elif (root / "JPEGImages").is_dir():
        base = root / "JPEGImages" / "480p"
        base = base if base.is_dir() else root / "JPEGImages"
        seqs = sorted(p for p in base.iterdir() if p.is_dir())
        wanted = _train_list(root)
        if wanted is not None:
            known = {p.name for p in seqs}
            seqs = [base / n for n in wanted if n in known]
        candidates += [(p.name, p, tuple(_images_in(p))) for p in seqs]
    else:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "Annotations")
            here = Path(dirpath)
            imgs = sorted(here / f for f in filenames if Path(f).suffix.lower() in IMAGE_EXTS)
            if imgs:
                rel = here.relative_to(root).as_posix()
                candidates.append((rel if rel != "." else root.name, here, tuple(imgs)))
            for f in sorted(filenames):
                if Path(f).suffix.lower() in VIDEO_EXTS:
                    p = here / f
                    candidates.append((p.relative_to(root).with_suffix("").as_posix(), p, ()))
    result = Discovery(entries=[])
    for name, path, frames in candidates:
        if frames:
            n = len(frames)
        else:
            try:
                n = probe_video_file(path)
            except VideoReadError as exc:
                _skip(result, name, str(exc))
                continue
        if n < min_frames:
            _skip(result, name, f"{path}: only {n} frames, a clip needs {min_frames}")
            continue
        result.entries.append(VideoEntry(name=name, path=path, num_frames=n, frames=frames))
    if not result.entries:
        raise InputError(f"no usable training video under {root} "
                         f"({len(result.skipped)} skipped; expected frame folders or video files)")
    return result


def _skip(result: Discovery, name: str, reason: str) -> None:
    warnings.warn(f"skipping video {name!r}: {reason}", SkippedVideoWarning, stacklevel=3)
    result.skipped.append((name, reason))


def split_holdout(entries: Sequence[VideoEntry], holdout: int | Sequence[str], seed: int = 0
                  ) -> tuple[list[VideoEntry], list[VideoEntry]]:
    """Reserve validation videos: ``holdout`` names, or that many drawn with ``seed``.

    Returns ``(train, held_out)``, both sorted by name. At least one training video must remain.
    """
    by_name = {e.name: e for e in entries}
    if isinstance(holdout, int):
        if holdout < 0 or holdout >= len(entries):
            raise InputError(f"cannot hold out {holdout} of {len(entries)} videos "
                             f"(at least one must be left for training)")
        names = sorted(by_name)
        pick = np.random.default_rng([seed, 0x401D]).choice(len(names), size=holdout, replace=False)
        held = {names[i] for i in pick}
    else:
        held = set(holdout)
        missing = held - set(by_name)
        if missing:
            raise InputError(f"hold-out videos not found in the training data: {sorted(missing)}")
        if len(held) >= len(entries):
            raise InputError("the hold-out list covers every training video")
    train = sorted((e for e in entries if e.name not in held), key=lambda e: e.name)
    val = sorted((e for e in entries if e.name in held), key=lambda e: e.name)
    return train, val


# ----------------------------------------------------------------------------- clip sampling
def sample_clip_indices(num_frames: int, length: int, gap: int, rng: np.random.Generator,
                        shuffle: bool = True) -> list[int]:
    """DUL's clip rule: ``length`` frames spaced ``min(num_frames, gap*length) // length`` apart from a
    random start; with ``shuffle`` their order is randomly permuted (index 0 = the reference frame)."""
    if gap < 1 or length < 1:
        raise ValueError(f"gap and length must be >= 1 (got gap={gap}, length={length})")
    if num_frames < length:
        raise VideoReadError(f"video has {num_frames} frames, a clip needs {length}")
    window = min(num_frames, gap * length)
    step = window // length
    offsets = np.arange(length) * step
    start = int(rng.integers(0, num_frames - offsets[-1]))
    ids = offsets + start
    if shuffle:
        ids = ids[rng.permutation(length)]
    return [int(i) for i in ids]


def _open_image(path: Path, draft: int | None) -> Image.Image:
    im = Image.open(path)
    if draft is not None and im.format == "JPEG":
        # DCT-domain downscaling: decode at >= draft pixels on the smaller side (much faster).
        w, h = im.size
        s = draft / min(w, h)
        im.draft("RGB", (int(math.ceil(w * s)), int(math.ceil(h * s))))
    return im.convert("RGB")


def read_video_frames(path: Path, indices: Sequence[int], seek_threshold: int = 300) -> dict[int, Image.Image]:
    """Decode frames ``indices`` (0-based decode order) of a video file with PyAV.

    Short prefixes are decoded sequentially; when the first wanted frame is beyond ``seek_threshold``
    the reader seeks to the preceding key frame and recovers frame numbers from timestamps.
    Raises :class:`VideoReadError` if a frame is missing or the file is corrupt.
    """
    wanted = sorted(set(int(i) for i in indices))
    out: dict[int, Image.Image] = {}
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            tb = stream.time_base
            start_pts = stream.start_time or 0
            if wanted[0] > seek_threshold and rate and tb:
                target = int(Fraction(wanted[0]) / Fraction(rate) / Fraction(tb)) + start_pts
                container.seek(target, backward=True, any_frame=False, stream=stream)

                def index_of(frame) -> int:
                    return int(round(float((frame.pts - start_pts) * tb * rate)))
            else:
                counter = iter(range(1 << 62))

                def index_of(frame) -> int:
                    return next(counter)
            for frame in container.decode(stream):
                if frame.pts is None and wanted[0] > seek_threshold:
                    raise VideoReadError(f"{path}: frames without timestamps, cannot seek")
                i = index_of(frame)
                if i in wanted and i not in out:
                    out[i] = frame.to_image()
                if i >= wanted[-1]:
                    break
    except VideoReadError:
        raise
    except READ_ERRORS as exc:
        raise VideoReadError(f"{path}: decoding failed ({type(exc).__name__}: {exc})") from exc
    missing = [i for i in wanted if i not in out]
    if missing:
        raise VideoReadError(f"{path}: frames {missing[:5]} could not be decoded (video shorter than its metadata?)")
    return out


def read_clip(entry: VideoEntry, indices: Sequence[int], draft: int | None = None) -> list[Image.Image]:
    """The frames ``indices`` of ``entry`` as RGB PIL images (raises :class:`VideoReadError`)."""
    if entry.is_file:
        frames = read_video_frames(entry.path, indices)
        return [frames[i] for i in indices]
    images = []
    for i in indices:
        path = entry.frames[i]
        try:
            images.append(_open_image(path, draft))
        except READ_ERRORS as exc:
            raise VideoReadError(f"{path}: unreadable frame ({type(exc).__name__}: {exc})") from exc
    return images


class ClipDataset(Dataset):
    """Map-style dataset of augmented clips, indexed by ``(video_index, sample_number)``.

    ``sample``: a callable ``(entry, rng) -> dict of tensors`` that reads and augments one training
    sample (a training method's :meth:`~vlprop.train.methods.TrainingMethod.sample`); without it the
    item is DUL's two-view clip of ``frames`` frames (below). Each DUL item is a dict: ``view_a``/``view_b`` float32 ``[T, 3, crop, crop]`` (ImageNet-normalised),
    ``theta`` ``[2, 3]`` (view B -> view A, see :mod:`vlprop.train.augment`), ``anchor_u`` ``[4]`` uniform
    numbers in [0, 1) that fix the anchor-grid offsets of the loss, ``video`` (index actually used)
    and ``skipped`` (names of unreadable videos this item had to replace: one entry per replacement;
    a video found unreadable is remembered by the worker process and not decoded again).
    """

    def __init__(self, entries: Sequence[VideoEntry], frames: int = 5, gap: int = 5, shuffle: bool = True,
                 augment: AugmentConfig | None = None, seed: int = 0, max_retries: int = 10,
                 sample=None, preprocessing=None):
        if not entries:
            raise InputError("no training videos")
        self.entries = list(entries)
        self.frames = int(frames)
        self.gap = int(gap)
        self.shuffle = bool(shuffle)
        self.augment = augment or AugmentConfig()
        self.seed = int(seed)
        self.max_retries = int(max_retries)
        self._bad: set[int] = set()  # per worker process
        self.sample = sample
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.entries)

    def _draft_size(self) -> int:
        # JPEG draft decoding may shrink frames down to (not below) the largest size the clip
        # transform can ask for.
        return self.augment.scale_range[1]

    def load(self, video: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        entry = self.entries[video]
        if self.sample is not None:
            return self.sample(entry, rng)
        ids = sample_clip_indices(entry.num_frames, self.frames, self.gap, rng, self.shuffle)
        images = read_clip(entry, ids, draft=self._draft_size())
        item = augment_clip(images, rng, self.augment, self.preprocessing)
        item["anchor_u"] = torch.from_numpy(rng.random(4)).float()
        return item

    def __getitem__(self, key: tuple[int, int]) -> dict:
        video, g = int(key[0]), int(key[1])
        rng = np.random.default_rng([self.seed, g])
        skipped: list[str] = []
        for attempt in range(self.max_retries + 1):
            if video in self._bad:
                skipped.append(self.entries[video].name)  # known unreadable: replaced without re-reading
            else:
                try:
                    item = self.load(video, rng)
                    item["video"] = video
                    item["skipped"] = skipped
                    return item
                except READ_ERRORS as exc:
                    self._bad.add(video)
                    skipped.append(self.entries[video].name)
                    warnings.warn(f"skipping video {self.entries[video].name!r}: {exc}", SkippedVideoWarning)
            good = [i for i in range(len(self.entries)) if i not in self._bad]
            if not good:
                break
            # Deterministic replacement: drawn from this sample's own generator.
            video = good[int(rng.integers(len(good)))]
        raise InputError(f"could not read a clip after {self.max_retries + 1} attempts; unreadable videos: {skipped}")


def collate_clips(items: list[dict]) -> dict:
    """Stack clip dicts into a batch: every tensor entry is stacked along a new first dimension;
    ``skipped`` becomes one flat list of names."""
    out = {k: torch.stack([it[k] for it in items]) for k, v in items[0].items()
           if torch.is_tensor(v) and k not in ("video", "skipped")}
    out["video"] = torch.tensor([it["video"] for it in items])
    out["skipped"] = [name for it in items for name in it["skipped"]]
    return out


# ----------------------------------------------------------------------------- sampler
class ClipBatchSampler(Sampler[list[tuple[int, int]]]):
    """Reproducible distributed batch sampler over optimisation steps.

    Step ``s`` consumes global sample numbers ``g = s*batch .. s*batch + batch - 1``. Sample ``g``
    belongs to epoch ``e = g // V`` (``V`` videos) and uses video ``perm_e[g % V]`` where ``perm_e`` is
    a seeded permutation -- DUL's "one clip per video per epoch". The global batch is cut into
    ``accum`` micro-batches of ``batch // accum`` samples, each split into ``world_size`` contiguous
    parts; rank ``r`` yields its part of every micro-batch, steps ``start_step .. total_steps - 1``.
    Gathering the ranks' parts in rank order therefore reproduces the single-process micro-batch.
    """

    def __init__(self, num_videos: int, batch: int, total_steps: int, start_step: int = 0, seed: int = 0,
                 rank: int = 0, world_size: int = 1, accum: int = 1):
        if num_videos < 1:
            raise InputError("no training videos")
        if batch % (accum * world_size):
            raise InputError(f"batch {batch} must be divisible by accumulation steps x processes "
                             f"({accum} x {world_size})")
        self.num_videos = int(num_videos)
        self.batch = int(batch)
        self.total_steps = int(total_steps)
        self.start_step = int(start_step)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.accum = int(accum)
        self.local = batch // (accum * world_size)
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    def video_of(self, g: int) -> int:
        epoch, pos = divmod(g, self.num_videos)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch, 0x5A3]).permutation(self.num_videos)
            self._perm_epoch = epoch
        return int(self._perm[pos])

    def micro_batch(self, step: int, micro: int) -> list[tuple[int, int]]:
        """This rank's ``(video, g)`` keys of micro-batch ``micro`` of step ``step``."""
        g0 = step * self.batch + micro * (self.batch // self.accum) + self.rank * self.local
        return [(self.video_of(g), g) for g in range(g0, g0 + self.local)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.total_steps):
            for micro in range(self.accum):
                yield self.micro_batch(step, micro)

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step) * self.accum


def _worker_init(_: int) -> None:
    # Loader workers decode and resize; one intra-op thread each keeps them from fighting the
    # training process for the (few) cores.
    torch.set_num_threads(1)


def build_loader(dataset: ClipDataset, sampler: ClipBatchSampler, workers: int = 2,
                 pin_memory: bool = False) -> DataLoader:
    """DataLoader over ``sampler``'s micro-batches (``workers`` processes, 0 = in-process)."""
    return DataLoader(dataset, batch_sampler=sampler, num_workers=int(workers), collate_fn=collate_clips,
                      pin_memory=pin_memory, worker_init_fn=_worker_init if workers > 0 else None,
                      persistent_workers=False, prefetch_factor=2 if workers > 0 else None)
