"""Device selection, AMP resolution, the injected autocast, the scaler, model preparation, determinism."""

from __future__ import annotations

import contextlib
import os
import random

import pytest
import torch
from torch import nn

from resnet_cifar.config import PrecisionConfig
from resnet_cifar.engine.precision import (
    Precision,
    configure_determinism,
    make_grad_scaler,
    prepare_model,
    resolve_precision,
    select_device,
    unwrap_model,
)
from resnet_cifar.errors import UsageError

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # constructing the device needs no GPU; nothing is moved to it here


def _tiny_convnet() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2))


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch):
    """Pretend a CUDA device exists; returns a setter for its bf16 support."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")

    def set_bf16(supported: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: supported)

    set_bf16(True)
    return set_bf16


def test_select_device_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("cpu") == CPU
    assert select_device("auto") == CPU
    with pytest.raises(UsageError, match="CUDA is not available"):
        select_device("cuda")
    with pytest.raises(UsageError, match="'tpu'"):
        select_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto") == CUDA
    assert select_device("cuda") == CUDA
    assert select_device("cpu") == CPU


def test_resolve_precision_on_cpu() -> None:
    plain = resolve_precision(CPU, amp=False)
    assert plain == Precision(device=CPU, amp=False, amp_dtype=None, channels_last=False)
    # The dtype only matters with AMP on: fp16 without AMP is no error.
    assert resolve_precision(CPU, amp=False, amp_dtype="fp16").amp_dtype is None
    bf16 = resolve_precision(CPU, amp=True)
    # bf16 autocast on the CPU runs fastest channels_last (docs/performance.md), so it is the default.
    assert (bf16.amp, bf16.amp_dtype, bf16.channels_last) == (True, torch.bfloat16, True)
    assert resolve_precision(CPU, amp=True, channels_last=False).channels_last is False


def test_fp16_on_cpu_is_refused_not_replaced() -> None:
    with pytest.raises(UsageError, match="fp16 needs a CUDA device"):
        resolve_precision(CPU, amp=True, amp_dtype="fp16")


def test_unknown_amp_dtype_and_device() -> None:
    # The dtype is checked once, by the config, naming the flag; resolve_precision only asserts.
    with pytest.raises(UsageError, match="^--amp-dtype must be one of bf16, fp16, got 'fp8'$"):
        PrecisionConfig(amp_dtype="fp8")
    with pytest.raises(AssertionError, match="'fp8'"):
        resolve_precision(CPU, amp=True, amp_dtype="fp8")
    with pytest.raises(UsageError, match="unsupported device"):
        resolve_precision(torch.device("meta"), amp=False)


def test_resolve_precision_on_cuda(fake_gpu) -> None:
    bf16 = resolve_precision(CUDA, amp=True)
    assert (bf16.amp_dtype, bf16.channels_last) == (torch.bfloat16, True)  # channels-last on by default
    fp16 = resolve_precision(CUDA, amp=True, amp_dtype="fp16", channels_last=False)
    assert (fp16.amp_dtype, fp16.channels_last) == (torch.float16, False)
    fake_gpu(False)
    with pytest.raises(UsageError, match="Fake GPU.*no bf16 support; use --amp-dtype fp16"):
        resolve_precision(CUDA, amp=True, amp_dtype="bf16")
    assert resolve_precision(CUDA, amp=True, amp_dtype="fp16").amp_dtype == torch.float16


def test_precision_rejects_inconsistent_amp_fields() -> None:
    with pytest.raises(UsageError):
        Precision(device=CPU, amp=True, amp_dtype=None, channels_last=False)
    with pytest.raises(UsageError):
        Precision(device=CPU, amp=False, amp_dtype=torch.bfloat16, channels_last=False)


def test_autocast_is_the_only_switch() -> None:
    layer = nn.Linear(4, 4)
    inputs = torch.randn(2, 4)
    amp = resolve_precision(CPU, amp=True)
    with amp.autocast():
        assert layer(inputs).dtype == torch.bfloat16
    plain = resolve_precision(CPU, amp=False)
    context = plain.autocast()
    assert isinstance(context, contextlib.nullcontext)
    with context:
        assert layer(inputs).dtype == torch.float32


def test_grad_scaler_enabled_only_for_fp16() -> None:
    assert not make_grad_scaler(resolve_precision(CPU, amp=False)).is_enabled()
    assert not make_grad_scaler(resolve_precision(CPU, amp=True, amp_dtype="bf16")).is_enabled()
    # An fp16 precision cannot be resolved on the CPU, but torch has a CPU GradScaler to show the switch.
    fp16 = Precision(device=CPU, amp=True, amp_dtype=torch.float16, channels_last=False)
    assert make_grad_scaler(fp16).is_enabled()


def test_prepare_model_channels_last_and_batches() -> None:
    precision = Precision(device=CPU, amp=False, amp_dtype=None, channels_last=True)
    model = prepare_model(_tiny_convnet(), precision, compile=False)
    weight = model[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert not weight.is_contiguous()
    images = precision.prepare_images(torch.randn(2, 3, 4, 4))
    assert images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
    plain = Precision(device=CPU, amp=False, amp_dtype=None, channels_last=False)
    assert prepare_model(_tiny_convnet(), plain, compile=False)[0].weight.is_contiguous()
    assert plain.prepare_images(torch.randn(2, 3, 4, 4)).is_contiguous()


def test_prepare_model_compiles_and_unwrap_returns_the_shared_module() -> None:
    eager = _tiny_convnet()
    precision = resolve_precision(CPU, amp=False)
    compiled = prepare_model(eager, precision, compile=True)  # compilation itself is lazy: no compile here
    assert compiled is not eager
    assert type(compiled).__name__ == "OptimizedModule"
    assert unwrap_model(compiled) is eager
    assert unwrap_model(eager) is eager
    # The wrapper shares the parameters; its state-dict keys gain a prefix, hence unwrap_model for checkpoints.
    assert {id(p) for p in compiled.parameters()} == {id(p) for p in eager.parameters()}
    assert all(key.startswith("_orig_mod.") for key in compiled.state_dict())


@pytest.fixture
def restore_determinism_flags(monkeypatch: pytest.MonkeyPatch):
    # setenv then delenv so that monkeypatch removes whatever the library sets.
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "placeholder")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]


def test_configure_determinism(restore_determinism_flags) -> None:
    configure_determinism(True, seed=7)
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.benchmark is False
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    first = (torch.rand(3), random.random())
    configure_determinism(True, seed=7)
    second = (torch.rand(3), random.random())
    assert torch.equal(first[0], second[0]) and first[1] == second[1]

    configure_determinism(False, seed=8)
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.benchmark is True
    assert not torch.equal(torch.rand(3), first[0])
