"""Registry of named backbone factories (timm-style).

A factory is any callable returning an ``nn.Module`` that follows the backbone contract
(``forward(x [B,3,H,W]) -> [B, D, h, w]``, attributes ``stride`` and ``out_dim``). Register it
with :func:`register_backbone` and build it by name with :func:`create_backbone`::

    @register_backbone
    def my_net(**kw): ...

    @register_backbone("other-name")
    def _factory(**kw): ...

    net = create_backbone("my_net", stride=8)
"""
from __future__ import annotations

import fnmatch
import importlib
import inspect
from typing import Callable, TypeVar, overload

import torch.nn as nn

from vlprop.errors import InputError

Factory = Callable[..., nn.Module]
F = TypeVar("F", bound=Factory)

_REGISTRY: dict[str, Factory] = {}

# Modules whose import registers the built-in backbones. Imported lazily so that
# ``create_backbone`` works even when only this module was imported.
_BUILTIN_MODULES = ("vlprop.backbones.resnet", "vlprop.backbones.efficientnet", "vlprop.backbones.vit")


def _ensure_builtins() -> None:
    for name in _BUILTIN_MODULES + _TRAINED_LAYOUTS:
        importlib.import_module(name)


# The trunks of the training methods whose layouts differ from the classification ResNets
# (LIIR: position encoding after the stem; STT: stride in layer3 instead of the max-pool).
_TRAINED_LAYOUTS = ("vlprop.backbones.liir", "vlprop.backbones.stt")


@overload
def register_backbone(name_or_fn: F) -> F: ...
@overload
def register_backbone(name_or_fn: str | None = None) -> Callable[[F], F]: ...


def register_backbone(name_or_fn=None):
    """Register a backbone factory under its function name or an explicit name.

    Usable bare (``@register_backbone``) or with a name (``@register_backbone("resnet18")``).
    Registering the same name twice with a different factory raises ``ValueError``.
    """

    def _register(fn: F, name: str | None) -> F:
        key = name or fn.__name__
        existing = _REGISTRY.get(key)
        if existing is not None and existing is not fn:
            raise ValueError(f"backbone {key!r} is already registered ({existing.__module__}.{existing.__name__})")
        _REGISTRY[key] = fn
        return fn

    if callable(name_or_fn):
        return _register(name_or_fn, None)
    return lambda fn: _register(fn, name_or_fn)


def list_backbones(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered backbones, optionally filtered by a glob ``pattern``."""
    _ensure_builtins()
    names = sorted(_REGISTRY)
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return names


def backbone_factory(name: str) -> Factory:
    """The factory registered as ``name``; an unknown name raises :class:`~vlprop.errors.InputError`
    listing the known ones. Factories may advertise the values they accept as ``factory.layers`` and
    ``factory.strides`` (the model layer uses them to tell which of a preset's settings apply)."""
    _ensure_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown backbone {name!r}; known backbones: {', '.join(sorted(_REGISTRY))}") from None


def create_backbone(name: str, **kwargs) -> nn.Module:
    """Build the backbone registered as ``name`` with the factory's keyword arguments.

    Raises :class:`~vlprop.errors.InputError` for an unknown name (the message lists the known
    names) and for keyword arguments the factory does not accept.
    """
    factory = backbone_factory(name)
    try:
        return factory(**kwargs)
    except TypeError as exc:
        # Only translate argument-binding errors of the factory itself; anything else is a bug.
        try:
            inspect.signature(factory).bind(**kwargs)
        except TypeError:
            raise InputError(f"backbone {name!r}: {exc}") from None
        raise


def register_spec_backbone(spec, build: Callable[..., nn.Module], *, doc: str, layers: tuple[str, ...],
                           strides: tuple[int, ...], default_layer: str,
                           default_stride: int | None = None) -> Callable[..., nn.Module]:
    """Register the member ``spec.arch`` of a spec-driven family (EfficientNet-Lite N, ViT variants).

    The factory takes the keyword arguments every such family shares (``stride``, ``layer``, ``weights``,
    ``seed``, ``weights_format``, ``allow_pickle``) and calls ``build(spec, **kwargs)``; it carries the attributes
    the model layer reads (``spec``, ``layers``, ``strides``, ``default_layer`` and, when given,
    ``default_stride``). Returns the factory (for the family module to expose under ``spec.arch``).
    """
    def factory(*, stride: int | None = None, layer: str | None = None, weights="random", seed: int = 0,
                weights_format: str | None = None, allow_pickle: bool = False) -> nn.Module:
        return build(spec, stride=stride, layer=layer, weights=weights, seed=seed, weights_format=weights_format,
                     allow_pickle=allow_pickle)

    factory.__name__ = factory.__qualname__ = spec.arch
    factory.__doc__ = doc
    factory.spec = spec  # type: ignore[attr-defined]
    factory.layers = layers  # type: ignore[attr-defined]
    factory.strides = strides  # type: ignore[attr-defined]
    factory.default_layer = default_layer  # type: ignore[attr-defined]
    if default_stride is not None:
        factory.default_stride = default_stride  # type: ignore[attr-defined]
    return register_backbone(factory)
