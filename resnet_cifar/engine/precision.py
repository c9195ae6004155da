"""Device, mixed precision, memory format, compilation and determinism, decided once per run.

The trainer resolves a ``Precision`` from the config and injects it: the step runs its forward
under ``precision.autocast()`` and steps through the scaler from ``make_grad_scaler`` whatever
the settings, so no other module branches on AMP or dtype.

- bf16 autocast needs no loss scaling (bf16 has fp32's exponent range), so its scaler is a
  disabled ``GradScaler`` whose calls are pass-throughs.
- fp16 autocast needs a real ``GradScaler``; it is a CUDA-only choice here. fp16 on the CPU, or
  bf16 on a GPU without bf16, is refused rather than silently replaced by another dtype.
"""

from __future__ import annotations

import contextlib
import os
import random
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from resnet_cifar.choices import bound
from resnet_cifar.config import AMP_DTYPES as AMP_DTYPE_NAMES
from resnet_cifar.config import DEVICES
from resnet_cifar.errors import UsageError

# The torch dtype of each --amp-dtype the config accepts.
AMP_DTYPES: dict[str, torch.dtype] = dict(
    bound({"bf16": torch.bfloat16, "fp16": torch.float16}, AMP_DTYPE_NAMES, "engine.precision AMP dtypes")
)


@dataclass(frozen=True)
class Precision:
    """Where and in which number format the model runs.

    ``amp_dtype`` is ``None`` exactly when ``amp`` is off.
    """

    device: torch.device
    amp: bool
    amp_dtype: torch.dtype | None
    channels_last: bool

    def __post_init__(self) -> None:
        if self.amp != (self.amp_dtype is not None):
            raise UsageError(f"amp={self.amp} needs an amp_dtype exactly when amp is on, got {self.amp_dtype}")

    def autocast(self) -> AbstractContextManager[object]:
        """The context for forward passes: autocast to ``amp_dtype`` when AMP is on, else a no-op."""
        if self.amp:
            return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)
        return contextlib.nullcontext()

    def prepare_images(self, images: Tensor) -> Tensor:
        """Move a batch ``[N, C, H, W]`` to the device, in channels-last layout when that is on."""
        # non_blocking only overlaps anything for pinned host memory; elsewhere it is a plain copy.
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images


def select_device(requested: str) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"`` (which must be available)."""
    if requested not in DEVICES:
        raise UsageError(f"device must be one of {', '.join(DEVICES)}, got {requested!r}")
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda":
        raise UsageError("device 'cuda' was requested but CUDA is not available; use --device cpu or auto")
    return torch.device("cpu")


def resolve_precision(
    device: torch.device, *, amp: bool, amp_dtype: str = "bf16", channels_last: bool | None = None
) -> Precision:
    """Check the AMP request against the device and fill in the defaults.

    ``amp_dtype`` is one of ``AMP_DTYPES`` (``"bf16"``, ``"fp16"``; PrecisionConfig checked it) and
    only matters when ``amp`` is on.
    ``channels_last=None`` means on for CUDA (tensor cores prefer NHWC) and for bf16 autocast on
    the CPU (oneDNN's bf16 convolutions are fastest in NHWC; docs/performance.md), else off.
    """
    assert amp_dtype in AMP_DTYPES, f"unknown AMP dtype {amp_dtype!r}"
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"unsupported device {device}; use cpu or cuda")
    if channels_last is None:
        channels_last = device.type == "cuda" or (amp and amp_dtype == "bf16")
    if not amp:
        return Precision(device=device, amp=False, amp_dtype=None, channels_last=channels_last)
    if amp_dtype == "fp16" and device.type == "cpu":
        raise UsageError("AMP dtype fp16 needs a CUDA device; on the CPU use --amp-dtype bf16")
    if amp_dtype == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError(f"this GPU ({torch.cuda.get_device_name(device)}) has no bf16 support; use --amp-dtype fp16")
    return Precision(device=device, amp=True, amp_dtype=AMP_DTYPES[amp_dtype], channels_last=channels_last)


def make_grad_scaler(precision: Precision) -> torch.amp.GradScaler:
    """A ``GradScaler`` that is enabled only for fp16 AMP; disabled, its calls are pass-throughs."""
    enabled = precision.amp and precision.amp_dtype == torch.float16
    return torch.amp.GradScaler(precision.device.type, enabled=enabled)


def prepare_model(model: nn.Module, precision: Precision, *, compile: bool) -> nn.Module:
    """Move the model to the device, to channels-last if asked, and wrap it in ``torch.compile``.

    Compile BEFORE any DistributedDataParallel wrap (``DDP(prepare_model(...))``): compiling the
    inner module lets DDP's hooks bucket gradients around the compiled graph, which is the order
    PyTorch recommends. The compiled wrapper shares its parameters with the eager module; use
    ``unwrap_model`` for state dicts (whose keys would otherwise gain an ``_orig_mod.`` prefix),
    for the EMA copy and for evaluation, so that switching to eval mode or to another batch size
    never recompiles or evicts the training graph.
    """
    model = model.to(precision.device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if compile:
        model = torch.compile(model)  # type: ignore[assignment]
    return model


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under ``torch.compile`` and/or DDP wrappers (itself if unwrapped)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod  # what torch.compile's OptimizedModule wraps
        else:
            return model


def configure_determinism(deterministic: bool, seed: int) -> None:
    """Seed torch (all devices) and ``random``; with ``deterministic``, make kernels reproducible.

    Deterministic mode raises on ops without a deterministic kernel (``warn_only=False``) rather
    than silently breaking reproducibility, and turns off cuDNN's autotuner, whose kernel choice
    can vary from run to run. Otherwise the autotuner is on (it only affects cuDNN, i.e. CUDA).
    """
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        # cuBLAS is only deterministic with a fixed workspace; it must be set before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.deterministic = False
