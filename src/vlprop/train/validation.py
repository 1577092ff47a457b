"""Validation hooks called by the trainer every ``val_every`` steps (on rank 0, collectives disabled).

A validator is any callable ``validator(ctx: ValidationContext) -> Mapping[str, float]``. The trainer
merges the metrics of all validators, logs them (``val.csv`` / TensorBoard) and keeps ``best.pt`` for
the highest **selection score**: the ``"score"`` metric when a validator reports one (higher is better,
e.g. label-propagation J&F on held-out sequences), otherwise ``-val_loss``.

Built in:

* :class:`HeldOutLossValidator` -- the training loss on fixed clips of the held-out videos with
  BatchNorm in eval mode (DUL's ``validation`` loss); always used when there are held-out videos;
* :class:`LabelPropagationValidator` -- DAVIS J&F of mask propagation with the current ``res4``
  features on held-out sequences that have DAVIS-style annotations (``<root>/Annotations/[480p/]<seq>``),
  using :class:`vlprop.session.Propagator` (preset ``dul``) and :mod:`vlprop.eval.davis`. It reports
  ``score`` (= mean J&F), so it drives ``best.pt`` when present. It is registered as the
  ``"label_propagation"`` factory.

More validators: pass them to ``Trainer(validators=...)`` or :func:`register_validator_factory`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from .data import ClipDataset, VideoEntry, collate_clips
from .distributed import local_only


@dataclass
class ValidationContext:
    """What a validator gets: the network (eval mode, not DDP-wrapped) and the held-out videos.

    ``net.backbone`` is the feature extractor (``res4``, stride 8) that label propagation uses;
    ``net(x)`` gives the L2-normalised DUL keys. Frames must be ImageNet-normalised.
    """

    step: int
    net: nn.Module
    device: torch.device
    holdout: Sequence[VideoEntry]
    run_dir: Path
    config: Mapping[str, Any] = field(default_factory=dict)


class Validator(Protocol):
    def __call__(self, ctx: ValidationContext) -> Mapping[str, float]: ...


ValidatorFactory = Callable[[Sequence[VideoEntry], Mapping[str, Any]], "Validator | None"]
_FACTORIES: dict[str, ValidatorFactory] = {}


def register_validator_factory(name: str, factory: ValidatorFactory) -> None:
    """Register a factory ``(held-out entries, train config dict) -> validator or None``; the trainer's
    default validators are built from every registered factory (None = not applicable, skipped)."""
    _FACTORIES[name] = factory


class HeldOutLossValidator:
    """Mean training loss over ``clips`` fixed clips of the held-out videos (eval-mode BatchNorm).

    The clips are a pure function of ``seed``: every validation sees the same frames and
    augmentations, so the curve is comparable across steps and runs. Reports ``val_loss``,
    ``val_temp``, ``val_cross``.
    """

    def __init__(self, method, dataset: ClipDataset, clips: int = 16, batch: int = 8):
        self.method = method
        self.dataset = dataset
        self.keys = [(i % len(dataset), i) for i in range(int(clips))]
        self.batch = max(1, int(batch))

    @torch.no_grad()
    def __call__(self, ctx: ValidationContext) -> dict[str, float]:
        totals: dict[str, float] = {}
        n = 0
        with local_only():
            for i in range(0, len(self.keys), self.batch):
                keys = self.keys[i:i + self.batch]
                batch = collate_clips([self.dataset[k] for k in keys])
                batch = {k: v.to(ctx.device) if torch.is_tensor(v) else v for k, v in batch.items()}
                out = self.method.loss(ctx.net, batch)
                for k, v in out.items():
                    totals[k] = totals.get(k, 0.0) + float(v) * len(keys)
                n += len(keys)
        return {f"val_{'loss' if k == 'loss' else k}": v / n for k, v in totals.items()}


def selection_score(metrics: Mapping[str, float]) -> float | None:
    """Higher-is-better score used to keep ``best.pt``: ``score`` if reported, else ``-val_loss``."""
    if "score" in metrics:
        return float(metrics["score"])
    if "val_loss" in metrics:
        return -float(metrics["val_loss"])
    return None


def make_validators(holdout: Sequence[VideoEntry], config: Mapping[str, Any]) -> list[Validator]:
    """Validators from the registered factories (e.g. label-propagation J&F); failures to build one
    are warned about and skipped, so a missing optional component never stops training."""
    out = []
    for name, factory in _FACTORIES.items():
        try:
            v = factory(holdout, config)
        except Exception as exc:  # an optional component must not stop a long run
            warnings.warn(f"validator {name!r} unavailable: {type(exc).__name__}: {exc}")
            continue
        if v is not None:
            out.append(v)
    return out


def annotation_dir(entry: VideoEntry) -> Path | None:
    """DAVIS-style ground-truth folder of a frame-folder video, if it exists:
    ``<root>/JPEGImages/[480p/]<seq>`` -> ``<root>/Annotations/[480p/]<seq>``."""
    if entry.is_file:
        return None
    parent = entry.path.parent
    if parent.name == "JPEGImages":
        ann = parent.parent / "Annotations" / entry.path.name
    elif parent.parent.name == "JPEGImages":
        ann = parent.parent.parent / "Annotations" / parent.name / entry.path.name
    else:
        return None
    return ann if ann.is_dir() else None


class LabelPropagationValidator:
    """Semi-supervised VOS on held-out sequences: propagate the first GT mask with the network's
    backbone features (``vlprop.session.Propagator``, preset ``preset``) and score DAVIS J&F
    (``vlprop.eval.davis``). Frames ``0 .. max_frames-1`` of each sequence are used (all if ``None``).

    Reports ``score`` = mean over sequences of (J-Mean + F-Mean)/2 (objects averaged within a sequence),
    ``jf_J`` and ``jf_F``.
    """

    def __init__(self, sequences: Sequence[tuple[VideoEntry, Path]], preset="dul",
                 max_frames: int | None = 30, batch_size: int = 4):
        if not sequences:
            raise ValueError("no annotated held-out sequences")
        self.sequences = list(sequences)
        self.preset = preset
        self.max_frames = max_frames
        self.batch_size = batch_size

    def _sequence(self, entry: VideoEntry, ann: Path) -> tuple[np.ndarray, np.ndarray]:
        from vlprop.io.masks import read_mask

        n = len(entry.frames) if self.max_frames is None else min(self.max_frames, len(entry.frames))
        frames = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in entry.frames[:n]])
        gt = []
        for p in entry.frames[:n]:
            mp = ann / (p.stem + ".png")
            if not mp.is_file():
                raise FileNotFoundError(f"{mp}: ground truth missing for frame {p.name}")
            gt.append(read_mask(mp, binary_255="auto"))
        return frames, np.stack(gt)

    @torch.no_grad()
    def __call__(self, ctx: ValidationContext) -> dict[str, float]:
        from vlprop.config import get_preset
        from vlprop.eval.davis import evaluate_semisupervised
        from vlprop.model import extractor_for_network
        from vlprop.session import Propagator

        # A method may train more than it propagates with (STT: its res3 of a deeper trunk).
        net = getattr(ctx.net, "propagation_backbone", None) or ctx.net.backbone
        extractor = extractor_for_network(net, get_preset(self.preset), device=ctx.device,
                                          batch_size=self.batch_size)
        js, fs = [], []
        for entry, ann in self.sequences:
            frames, gt = self._sequence(entry, ann)
            prop = Propagator(preset=self.preset, extractor=extractor)
            pred = np.stack([m for _, m in prop.propagate(frames, masks={0: gt[0]})])
            stats = evaluate_semisupervised(gt, pred).statistics()
            js.append(float(np.mean([s["J-Mean"] for s in stats])))
            fs.append(float(np.mean([s["F-Mean"] for s in stats])))
        j, f = float(np.mean(js)), float(np.mean(fs))
        return {"score": (j + f) / 2, "jf_J": j, "jf_F": f}


def _label_propagation_factory(holdout: Sequence[VideoEntry], config: Mapping[str, Any]):
    seqs = [(e, a) for e in holdout if (a := annotation_dir(e)) is not None]
    if not seqs:
        return None
    from vlprop.config import get_preset

    # the evaluation protocol of the run's method (its export(): preset + settings)
    preset = get_preset(config.get("val_preset", "dul"), **dict(config.get("val_settings") or {}))
    return LabelPropagationValidator(seqs, preset=preset, max_frames=config.get("val_frames", 30))


register_validator_factory("label_propagation", _label_propagation_factory)
