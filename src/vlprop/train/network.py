"""The network a training run optimises: a method's network plus an optional auxiliary image head.

``TrainingNetwork(core, aux)``: ``core`` is what :meth:`TrainingMethod.build` returned (it has
``.backbone`` and ``.head``, the parts a vlprop checkpoint stores); ``aux`` is an auxiliary image head on
the backbone output (:mod:`vlprop.train.auxiliary`). Calls go through ``forward`` so that one
``DistributedDataParallel`` wrapper covers every branch:

* ``net(*args, **kw)`` -> ``core(*args, **kw)`` (the method's own forward);
* ``net(aux_images=x)`` -> ``aux(core.backbone(x))`` (auxiliary logits).
"""
from __future__ import annotations

import torch
import torch.nn as nn


class TrainingNetwork(nn.Module):
    def __init__(self, core: nn.Module, aux: nn.Module | None = None):
        super().__init__()
        self.core = core
        self.aux = aux

    @property
    def backbone(self) -> nn.Module:
        return self.core.backbone

    @property
    def head(self) -> nn.Module:
        return self.core.head

    @property
    def key_dim(self) -> int:
        return int(getattr(self.core, "key_dim", 0))

    def forward(self, *args, aux_images: torch.Tensor | None = None, **kw):
        if aux_images is not None:
            if self.aux is None:
                raise RuntimeError("this network has no auxiliary head")
            return self.aux(self.core.backbone(aux_images))
        return self.core(*args, **kw)

    def __getattr__(self, name: str):
        # Methods reach their own modules (e.g. net.pe, net.bank) through the wrapper.
        try:
            return super().__getattr__(name)
        except AttributeError:
            core = super().__getattr__("core")
            return getattr(core, name)
