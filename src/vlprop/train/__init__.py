"""Self-supervised training of dense correspondence features from raw video (DUL, MAST, LIIR, STT).

Public API::

    from vlprop.train import TrainConfig, Trainer
    result = Trainer(TrainConfig(data="videos/", out="runs/dul", iters=2000, crop=128)).fit()

Modules: :mod:`.data` (video discovery, clip sampling, reproducible sampler), :mod:`.augment`
(shared clip transform, DUL's two views and their affine), :mod:`.methods` (the method registry:
:mod:`.methods.dul`, :mod:`.methods.mast`, :mod:`.methods.liir`, :mod:`.methods.stt`), :mod:`.auxiliary`
(image-level rotation objective), :mod:`.network`,
:mod:`.trainer` (loop, DDP, checkpoints, CLI), :mod:`.checkpoint`, :mod:`.logs`, :mod:`.validation`,
:mod:`.distributed`.
"""
from vlprop.model import resolve_run_weights

from .methods import TrainingMethod, get_method, method_names, register_method
from .methods.dul import DUL, DULConfig, DULNet
from .trainer import TrainConfig, Trainer, TrainResult
from .validation import (
    HeldOutLossValidator,
    LabelPropagationValidator,
    ValidationContext,
    register_validator_factory,
)

__all__ = ["TrainConfig", "Trainer", "TrainResult", "resolve_run_weights",
           "TrainingMethod", "get_method", "method_names", "register_method",
           "DUL", "DULConfig", "DULNet",
           "ValidationContext", "HeldOutLossValidator", "LabelPropagationValidator", "register_validator_factory"]
