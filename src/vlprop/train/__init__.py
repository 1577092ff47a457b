"""Self-supervised training of dense correspondence features (DUL) from raw video.

Public API::

    from vlprop.train import TrainConfig, Trainer
    result = Trainer(TrainConfig(data="videos/", out="runs/dul", iters=2000, crop=128)).fit()

Modules: :mod:`.data` (video discovery, clip sampling, reproducible sampler), :mod:`.augment`
(shared clip transform, DUL's two views and their affine), :mod:`.methods.dul` (network and losses),
:mod:`.trainer` (loop, DDP, checkpoints, CLI), :mod:`.checkpoint`, :mod:`.logs`, :mod:`.validation`,
:mod:`.distributed`.
"""
from vlprop.model import resolve_run_weights

from .methods.dul import DUL, DULConfig, DULNet
from .trainer import TrainConfig, Trainer, TrainResult
from .validation import (
    HeldOutLossValidator,
    LabelPropagationValidator,
    ValidationContext,
    register_validator_factory,
)

__all__ = ["TrainConfig", "Trainer", "TrainResult", "resolve_run_weights",
           "DUL", "DULConfig", "DULNet",
           "ValidationContext", "HeldOutLossValidator", "LabelPropagationValidator", "register_validator_factory"]
