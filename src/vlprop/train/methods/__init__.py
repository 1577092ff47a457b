"""Registry of self-supervised training methods (``vlprop train METHOD``).

A method owns everything that differs between papers; the trainer (:mod:`vlprop.train.trainer`) owns
what is common (loop, DDP, AMP, accumulation, checkpoints, logs, validation). A method is a subclass of
:class:`TrainingMethod` registered with :func:`register_method`:

* ``Config`` -- a frozen dataclass of its hyper-parameters with the paper's defaults (its fields become
  the ``vlprop train METHOD --help`` options; ``metadata={"help": ...}`` documents them);
* ``defaults`` -- the paper's optimiser and model settings the trainer uses unless given
  (``arch``, ``batch``, ``lr``, ``weight_decay``);
* :meth:`TrainingMethod.sample` -- clip sampling and augmentation of one training sample, all randomness
  drawn from the sample's generator (so resumed and distributed runs see the same clips);
* :meth:`TrainingMethod.build` -- the network it trains around a backbone (heads, position encodings,
  memory banks, teachers); :meth:`TrainingMethod.loss` -- its loss on a batch;
* :meth:`TrainingMethod.after_step` -- updates after each optimiser step (moving averages, queues);
* :meth:`TrainingMethod.export` -- what propagation uses (layer, input preprocessing, preset and settings).

Built-in methods: ``dul`` (:mod:`.dul`), ``mast`` (:mod:`.mast`), ``liir`` (:mod:`.liir`), ``stt``
(:mod:`.stt`). ``get_method(name)`` returns the class.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
import torch.nn as nn

from vlprop.errors import InputError

_REGISTRY: dict[str, type["TrainingMethod"]] = {}
_BUILTIN = ("dul", "mast", "liir", "stt")


class TrainingMethod:
    """Base class of a training method (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Config: ClassVar[type] = object
    # Paper settings used unless the run gives them (arch, batch, lr, weight_decay).
    defaults: ClassVar[dict[str, Any]] = {"arch": "resnet18", "batch": 8, "lr": 1e-4, "weight_decay": 0.0}
    # Backbone surgery the method trains with (create_backbone keyword arguments).
    stride: ClassVar[int] = 8
    layer: ClassVar[str] = "res4"

    def __init__(self, config: Any = None):
        self.cfg = config if config is not None else self.Config()

    # ---- configuration
    @classmethod
    def make_config(cls, options: Mapping[str, Any] | None = None) -> Any:
        """The ``Config`` with ``options`` applied; an unknown option is an :class:`InputError`."""
        options = dict(options or {})
        names = {f.name for f in dataclasses.fields(cls.Config)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise InputError(f"method {cls.name!r} has no option(s) {', '.join(unknown)}; "
                             f"see vlprop train {cls.name} --help")
        return cls.Config(**options)

    def min_frames(self) -> int:
        """Fewest frames a video needs to give one training sample."""
        return 2

    @property
    def crop(self) -> int:
        return int(getattr(self.cfg, "crop", 256))

    # ---- data
    def sample(self, entry, rng: np.random.Generator, preprocessing, train: bool = True) -> dict[str, torch.Tensor]:
        """One training sample of video ``entry`` (tensors only), randomness from ``rng`` only."""
        raise NotImplementedError

    # ---- model
    def backbone_kwargs(self, arch: str) -> dict[str, Any]:
        """``create_backbone`` keyword arguments for ``arch``: the method's stride and layer where the
        family knows them (e.g. a ResNet ``res4``), else the family's default layer."""
        from vlprop.backbones.registry import backbone_factory

        factory = backbone_factory(arch)
        kw: dict[str, Any] = {}
        layers = getattr(factory, "layers", None)
        strides = getattr(factory, "strides", None)
        if layers is None or self.layer in layers:
            kw["layer"] = self.layer
        if strides is None or self.stride in strides:
            kw["stride"] = self.stride
        return kw

    def build(self, backbone: nn.Module) -> nn.Module:
        """The trained network around ``backbone``; it exposes ``.backbone`` and ``.head`` (what a
        vlprop checkpoint stores) and may hold other trained or buffered modules."""
        raise NotImplementedError

    def loss(self, net: nn.Module, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """``{"loss": scalar to minimise, other logged terms (detached)}``."""
        raise NotImplementedError

    def parameter_groups(self, net: nn.Module, lr: float, weight_decay: float) -> list[dict]:
        return [{"params": [p for p in net.parameters() if p.requires_grad], "lr": lr,
                 "weight_decay": weight_decay, "name": "all"}]

    def build_optimizer(self, net: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        """Adam (beta1 from the method config's ``beta1``, default 0.9)."""
        beta1 = float(getattr(self.cfg, "beta1", 0.9))
        return torch.optim.Adam(self.parameter_groups(net, lr, weight_decay), lr=lr, betas=(beta1, 0.999))

    def bind_run(self, iters: int, batch: int) -> None:
        """Told the run's length and global batch before training (e.g. for schedules in fractions)."""

    def lr_multiplier(self, step: int) -> float:
        """Factor on the trainer's learning-rate schedule after ``step`` steps (e.g. LIIR's stage 2)."""
        return 1.0

    def after_step(self, net: nn.Module, step: int) -> None:
        """Called after every optimiser step (``net`` unwrapped): moving averages, queues."""

    def export(self) -> dict[str, Any]:
        """How the trained features are used: ``preset`` and ``settings`` (``--set`` pairs) of the
        evaluation protocol of the paper, recorded in the checkpoint's ``meta["export"]``."""
        return {"preset": "dul", "settings": {}}

    def input_preprocessing(self, backbone_preprocessing):
        """The input the method feeds the backbone (default: the backbone's own preprocessing)."""
        return backbone_preprocessing


def register_method(cls: type[TrainingMethod]) -> type[TrainingMethod]:
    """Class decorator: register ``cls`` under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"training method {cls.name!r} is already registered ({existing.__module__})")
    _REGISTRY[cls.name] = cls
    return cls


def _ensure_builtins() -> None:
    for name in _BUILTIN:
        try:
            importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise


def method_names() -> tuple[str, ...]:
    """Registered method names, built-ins in their documented order first."""
    _ensure_builtins()
    return tuple(sorted(_REGISTRY, key=lambda n: (_BUILTIN.index(n) if n in _BUILTIN else len(_BUILTIN), n)))


def get_method(name: str) -> type[TrainingMethod]:
    """The method class registered as ``name`` (unknown name -> :class:`InputError` listing the known ones)."""
    _ensure_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown training method {name!r}; available: {', '.join(method_names())}") from None


__all__ = ["TrainingMethod", "register_method", "get_method", "method_names"]
