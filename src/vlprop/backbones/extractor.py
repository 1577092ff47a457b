"""Frames -> dense features: resize, colour conversion, normalisation, batched inference.

:class:`FeatureExtractor` wraps a backbone (anything with ``forward([B,3,H,W]) -> [B,D,h,w]``
and an integer ``stride``) and turns RGB frames into float32 features on the extractor's device (a GPU
extractor's features stay on the GPU, for the engine that follows them). It owns the one
resize rule of the package, and :meth:`FeatureExtractor.geometry` reports it as a
:class:`~vlprop.geometry.GridGeometry`, so labels are encoded on exactly the grid the network
produced.
"""
from __future__ import annotations

import math
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vlprop.backbones.colorspace import convert_colorspace
from vlprop.backbones.fusion import check_precision, fold_batchnorm
from vlprop.backbones.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from vlprop.errors import InputError
from vlprop.geometry import GridGeometry
# Values of float frames may exceed [0, 1] by this much (rounding of upstream conversions).
_RANGE_TOLERANCE = 1e-3

# Frames per backbone pass when none is given, chosen by measurement (docs/RESULTS.md "End-to-end speed"): the
# default model's backbone alone on 480p inputs, 2-core AVX-512 Xeon shared with other jobs, settings alternated in
# one process, medians of 7 repeats: with BatchNorm folded and channels_last, batch 4 took 1.41 s/frame, batch 2
# 1.48, batch 1 1.70 (bf16: 0.70 / 1.03 / 1.44); unfolded and contiguous, batch 4 2.11 and batch 1 3.01 (5
# repeats). Batch 1 was never faster here, so the CPU default stays 4. On CUDA batches keep the GPU busy: 4.
CPU_BATCH_SIZE = 4
CUDA_BATCH_SIZE = 4
MEMORY_FORMATS = ("contiguous", "channels_last")
# Memory format of the model layer's extractors (measured as CPU_BATCH_SIZE: batch 4 with folded BatchNorm took
# 2.06 s/frame contiguous, 1.41 s/frame channels_last; oneDNN runs NHWC convolutions without reorders).
FAST_MEMORY_FORMAT = "channels_last"


def default_batch_size(device: str | torch.device) -> int:
    """Frames per backbone pass when the caller gives none: :data:`CPU_BATCH_SIZE` on the CPU, else
    :data:`CUDA_BATCH_SIZE`."""
    return CPU_BATCH_SIZE if torch.device(device).type == "cpu" else CUDA_BATCH_SIZE


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def frame_to_tensor(frame, index: int | None = None) -> torch.Tensor:
    """One RGB frame -> float32 ``[3, H, W]`` in ``[0, 1]`` on the CPU.

    Accepted: NumPy ``uint8`` ``[H, W, 3]``; NumPy float ``[H, W, 3]`` in ``[0, 1]``; torch
    ``uint8`` ``[H, W, 3]``; torch float ``[3, H, W]`` in ``[0, 1]`` (torch layout); PIL RGB images.
    Anything else raises :class:`~vlprop.errors.InputError` naming the frame ``index``.
    """
    x = _frame_chw(frame, index)
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def _frame_chw(frame, index: int | None = None) -> torch.Tensor:
    """Validated frame as a CPU ``[3, H, W]`` tensor: ``uint8`` (0-255) or float32 (0-1).

    uint8 frames stay uint8 so they are converted after the (4x smaller) host-to-device copy.
    """
    where = f"frame {index}" if index is not None else "frame"
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        Image = None
    if Image is not None and isinstance(frame, Image.Image):
        if frame.mode != "RGB":
            raise InputError(f"{where}: expected an RGB image, got PIL mode {frame.mode!r}")
        frame = np.asarray(frame)

    if isinstance(frame, np.ndarray):
        if frame.ndim != 3 or frame.shape[-1] != 3:
            raise InputError(f"{where}: expected an RGB array [H, W, 3], got shape {frame.shape}")
        if frame.dtype == np.uint8:
            x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)
        elif frame.dtype in (np.float16, np.float32, np.float64):
            x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float()
            _check_range(x, where)
        else:
            raise InputError(f"{where}: expected uint8 (0-255) or float (0-1) pixels, got dtype {frame.dtype}")
    elif isinstance(frame, torch.Tensor):
        if frame.dtype == torch.uint8:
            if frame.dim() != 3 or frame.shape[-1] != 3:
                raise InputError(f"{where}: expected a uint8 tensor [H, W, 3], got shape {tuple(frame.shape)}")
            x = frame.detach().cpu().permute(2, 0, 1)
        elif frame.is_floating_point():
            if frame.dim() != 3 or frame.shape[0] != 3:
                raise InputError(f"{where}: expected a float tensor [3, H, W] in [0, 1], "
                                 f"got shape {tuple(frame.shape)}")
            x = frame.detach().cpu().float()
            _check_range(x, where)
        else:
            raise InputError(f"{where}: expected a uint8 or float tensor, got dtype {frame.dtype}")
    else:
        raise InputError(f"{where}: expected a NumPy array, torch tensor or PIL image, got {type(frame).__name__}")
    if x.shape[-1] == 0 or x.shape[-2] == 0:
        raise InputError(f"{where}: empty frame {tuple(x.shape[-2:])}")
    return x


def _check_range(x: torch.Tensor, where: str) -> None:
    lo, hi = float(x.min()), float(x.max())
    if lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
        raise InputError(f"{where}: float pixels must be in [0, 1], got [{lo:g}, {hi:g}] "
                         f"(pass uint8 frames or divide by 255)")


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a :class:`torch.device` that this machine has; :class:`InputError` otherwise.

    Checked up front because torch only fails deep inside the first ``.to(device)`` (``Found no NVIDIA
    driver``, ``not linked with support for mps``).
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError.about("device", "--device", lambda a: f"invalid {a} {device!r}; expected cpu, "
                                                               "cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError.about("device", "--device", lambda a: f"{a} {device} requested but CUDA is not "
                                                                   f"available on this machine; use {a} cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            raise InputError.about("device", "--device", lambda a: f"{a} {device}: this machine has {n} CUDA "
                                                                   f"device(s), cuda:0..cuda:{n - 1}")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError.about("device", "--device", lambda a: f"{a} mps requested but this PyTorch build has "
                                                                   f"no available MPS (Apple GPU) support; use "
                                                                   f"{a} cpu")
    elif dev.type != "cpu":
        raise InputError.about("device", "--device", lambda a: f"{a} {device}: unsupported device type "
                                                               f"{dev.type!r}; expected cpu, cuda, cuda:N or mps")
    return dev


class FeatureExtractor:
    """Run a backbone on RGB frames and return float32 features on ``device``.

    Args:
        net: backbone with ``forward([B, 3, H, W]) -> [B, D, h, w]`` and an integer ``stride``.
            It is moved to ``device``/``dtype`` and put in eval mode.
        device: where the network runs (``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...).
        mean, std: per-channel normalisation applied after the colour conversion.
        input_scale: resize factor applied to every frame (e.g. 2.0 for x2 upsampling).
        short_side: resize so the short side equals this many pixels (aspect kept); exclusive
            with ``input_scale != 1``.
        size: resize every frame to this fixed ``(height, width)`` in pixels, aspect NOT kept (CRW JHMDB
            320x320, VIP 560x560); exclusive with ``short_side`` and ``input_scale != 1``.
        batch_size: frames per forward pass (``None``: :func:`default_batch_size` of the device, measured: 4).
        autocast: run under ``torch.autocast`` (float16 on CUDA, bfloat16 on CPU).
        dtype: dtype of the network parameters and inputs (e.g. ``torch.float16`` on GPU).
        precision: ``"fp32"`` (default: ``dtype``/``autocast`` as given) or ``"bf16"``: bfloat16 weights and
            activations (approximate, about 2x faster on CPUs with AVX512-BF16/AMX); an
            :class:`~vlprop.errors.InputError` where the device has no native bfloat16.
        fold_bn: merge every BatchNorm that follows a convolution into it (exact up to float32 rounding,
            :func:`~vlprop.backbones.fusion.fold_batchnorm`). ``net`` is rewritten in place: only for a network
            the extractor owns (the model layer's own builds), never a network still being trained.
        memory_format: ``"contiguous"`` or ``"channels_last"`` (NHWC activations; faster for convnets with
            oneDNN). Features are handed out contiguous either way.
        colorspace: ``rgb`` (default), ``lab`` (MAST/LIIR) or ``lab_l`` (UVC grey); see
            :mod:`vlprop.backbones.colorspace`.
        preprocessing: a :class:`~vlprop.backbones.preprocessing.Preprocessing` (mean, std, colour
            space, size multiple) that replaces ``mean``/``std``/``colorspace``; by default the
            backbone's own ``net.preprocessing`` when it has one (the input its weights expect).

    Resizing is bilinear (``align_corners=False``), antialiased when shrinking, with sizes
    rounded half-up: ``size`` gives ``size`` whatever the frame; ``short_side`` gives ``(S, round(W*S/H))`` for ``H <= W``; ``input_scale``
    gives ``(round(H*k), round(W*k))``. A ``size_multiple`` > 1 (ViT patch size) then rounds each
    side half-up to the nearest multiple.
    """

    def __init__(self, net: nn.Module, device: str | torch.device = "cpu",
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 input_scale: float = 1.0, short_side: int | None = None, batch_size: int | None = None,
                 autocast: bool = False, dtype: torch.dtype = torch.float32, colorspace: str = "rgb",
                 preprocessing: Preprocessing | None = None, size: tuple[int, int] | None = None,
                 precision: str = "fp32", fold_bn: bool = False, memory_format: str = "contiguous") -> None:
        stride = getattr(net, "stride", None)
        if not isinstance(stride, int) or stride < 1:
            raise InputError(f"the backbone must have a positive integer .stride, got {stride!r}")
        if not (isinstance(input_scale, (int, float)) and math.isfinite(input_scale) and input_scale > 0):
            raise InputError(f"input_scale must be a positive number, got {input_scale!r}")
        if short_side is not None:
            if isinstance(short_side, bool) or not isinstance(short_side, int) or short_side < 1:
                raise InputError(f"short_side must be a positive integer, got {short_side!r}")
            if input_scale != 1.0:
                raise InputError("give either short_side or input_scale, not both")
        if size is not None:
            if (not isinstance(size, (tuple, list)) or len(size) != 2
                    or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in size)):
                raise InputError(f"size must be (height, width) in positive integer pixels, got {size!r}")
            if short_side is not None or input_scale != 1.0:
                raise InputError("give one of size, short_side and input_scale, not several")
            size = (int(size[0]), int(size[1]))
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        if memory_format not in MEMORY_FORMATS:
            raise InputError(f"memory_format must be one of {', '.join(MEMORY_FORMATS)}, got {memory_format!r}")
        if preprocessing is None:
            preprocessing = getattr(net, "preprocessing", None)
        if preprocessing is None:
            preprocessing = Preprocessing(mean=tuple(mean), std=tuple(std), colorspace=colorspace,
                                          name="imagenet" if (tuple(mean), tuple(std), colorspace) ==
                                          (IMAGENET_MEAN, IMAGENET_STD, "rgb") else "custom")
        elif not isinstance(preprocessing, Preprocessing):
            raise InputError(f"preprocessing must be a Preprocessing, got {type(preprocessing).__name__}")
        self.device = check_device(device)
        self.precision = check_precision(precision, self.device)
        if precision == "bf16":  # bf16 weights measured faster than bf16 autocast (no per-op casts)
            dtype, autocast = torch.bfloat16, False
        if fold_bn:
            net = fold_batchnorm(net.eval(), inplace=True)
        self.net = net.to(device=self.device, dtype=dtype).eval()
        self.memory_format = memory_format
        if memory_format == "channels_last":
            self.net = self.net.to(memory_format=torch.channels_last)
        self.bn_folded = int(getattr(self.net, "bn_folded", 0) or 0)
        self.stride = stride
        self.dtype = dtype
        self.input_scale = float(input_scale)
        self.short_side = short_side
        self.size = size
        self.batch_size = batch_size if batch_size is not None else default_batch_size(self.device)
        self.autocast = bool(autocast)
        self.preprocessing = preprocessing
        self.colorspace = preprocessing.colorspace
        self._mean = torch.tensor(preprocessing.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(preprocessing.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    @property
    def out_dim(self) -> int | None:
        return getattr(self.net, "out_dim", None)

    # ------------------------------------------------------------------ geometry
    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """Network input size ``(H', W')`` for a ``height x width`` frame."""
        if height < 1 or width < 1:
            raise InputError(f"frame size must be positive, got {height}x{width}")
        if self.size is not None:
            size = self.size
        elif self.short_side is not None:
            scale = self.short_side / min(height, width)
            if height <= width:
                size = self.short_side, max(1, _round_half_up(width * scale))
            else:
                size = max(1, _round_half_up(height * scale)), self.short_side
        elif self.input_scale == 1.0:
            size = int(height), int(width)
        else:
            size = max(1, _round_half_up(height * self.input_scale)), max(1, _round_half_up(width * self.input_scale))
        return self.preprocessing.round_size(*size)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Feature grid ``(h, w)`` for a ``height x width`` frame (after resizing)."""
        rh, rw = self.resized_size(height, width)
        grid_fn = getattr(self.net, "grid_size", None)
        if callable(grid_fn):
            return tuple(int(v) for v in grid_fn(rh, rw))
        return -(-rh // self.stride), -(-rw // self.stride)

    def geometry(self, height: int, width: int) -> GridGeometry:
        """:class:`~vlprop.geometry.GridGeometry` of a ``height x width`` frame through this extractor."""
        return GridGeometry.for_frame(height, width, stride=self.stride, resized=self.resized_size(height, width),
                                      grid=self.grid_size(height, width))

    # ------------------------------------------------------------------ extraction
    def preprocess(self, batch: torch.Tensor) -> torch.Tensor:
        """Float RGB ``[B, 3, H, W]`` in ``[0, 1]`` -> resized, normalised network input on the device."""
        x = batch.to(self.device, non_blocking=True)
        h, w = x.shape[-2:]
        rh, rw = self.resized_size(h, w)
        if (rh, rw) != (h, w):
            x = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False,
                              antialias=rh < h or rw < w)
        x = convert_colorspace(x, self.colorspace)
        x = (x - self._mean) / self._std
        x = x.to(self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.memory_format == "channels_last" else x

    def _run(self, frames: list[torch.Tensor]) -> torch.Tensor:
        """Validated ``[3, H, W]`` frames of one size -> ``[B, D, h, w]`` float32 features on the device."""
        if all(f.dtype == torch.uint8 for f in frames):
            batch = torch.stack(frames).to(self.device, non_blocking=True).float().div_(255.0)
        else:
            batch = torch.stack([f.float().div(255.0) if f.dtype == torch.uint8 else f for f in frames])
        x = self.preprocess(batch)
        with torch.inference_mode():
            if self.autocast:
                amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
                with torch.autocast(device_type=self.device.type, dtype=amp_dtype):
                    y = self.net(x)
            else:
                y = self.net(x)
            # stays on the device: the engine computes where its features are (no copy back per batch)
            y = y.float().contiguous()
        # Inference tensors cannot be modified in place later; hand out ordinary tensors.
        return y.clone() if y.is_inference() else y

    @staticmethod
    def _split(frames) -> tuple[list, bool]:
        """``(per-frame items, was_single)`` for a frame, a list of frames or a stacked video."""
        if isinstance(frames, np.ndarray):
            if frames.ndim == 3:
                return [frames], True
            if frames.ndim == 4:
                return list(frames), False
            raise InputError(f"expected frames [H, W, 3] or [T, H, W, 3], got shape {frames.shape}")
        if isinstance(frames, torch.Tensor):
            if frames.dim() == 3:
                return [frames], True
            if frames.dim() == 4:
                return list(frames.unbind(0)), False
            raise InputError(f"expected a frame tensor with 3 or 4 dims, got shape {tuple(frames.shape)}")
        if isinstance(frames, (list, tuple)):
            if len(frames) == 0:
                raise InputError("no frames given")
            return list(frames), False
        return [frames], True  # PIL image or an unsupported type (reported by frame_to_tensor)

    def extract_batch(self, frames) -> torch.Tensor:
        """Frames (list, ``[T, H, W, 3]`` array, ``[T, 3, H, W]`` float tensor) -> ``[T, D, h, w]``.

        All frames must have the same size; they are processed ``batch_size`` at a time.
        """
        items, _ = self._split(frames)
        if not items:
            raise InputError("no frames given")
        first = None
        for index, item in enumerate(items):
            shape = _frame_hw(item)
            if first is None:
                first = shape
            elif shape is not None and shape != first:
                raise InputError(f"frame {index}: size {shape[0]}x{shape[1]} differs from frame 0 "
                                 f"({first[0]}x{first[1]}); stack only equally sized frames "
                                 f"(or use iter_features)")
        return torch.stack(list(self.iter_features(items)))

    def iter_features(self, frames: Iterable) -> Iterator[torch.Tensor]:
        """Stream features ``[D, h, w]`` for an iterable of frames, ``batch_size`` frames per pass.

        Frames may change size within the stream; a batch is flushed whenever the size changes.
        """
        pending: list[torch.Tensor] = []
        for index, frame in enumerate(frames):
            x = _frame_chw(frame, index)
            if pending and x.shape[-2:] != pending[0].shape[-2:]:
                yield from self._run(pending).unbind(0)
                pending = []
            pending.append(x)
            if len(pending) == self.batch_size:
                yield from self._run(pending).unbind(0)
                pending = []
        if pending:
            yield from self._run(pending).unbind(0)

    def __call__(self, frames) -> torch.Tensor:
        """One frame -> ``[D, h, w]``; several frames (list / 4-D array) -> ``[T, D, h, w]``."""
        items, single = self._split(frames)
        if single:
            return self._run([_frame_chw(items[0])])[0]
        return self.extract_batch(items)


def _frame_hw(frame) -> tuple[int, int] | None:
    """Height and width of a frame without converting it (``None`` if not determinable)."""
    if isinstance(frame, np.ndarray) and frame.ndim == 3:
        return int(frame.shape[0]), int(frame.shape[1])
    if isinstance(frame, torch.Tensor) and frame.dim() == 3:
        if frame.is_floating_point():
            return int(frame.shape[1]), int(frame.shape[2])
        return int(frame.shape[0]), int(frame.shape[1])
    size = getattr(frame, "size", None)
    if isinstance(size, tuple) and len(size) == 2:  # PIL: (W, H)
        return int(size[1]), int(size[0])
    return None
