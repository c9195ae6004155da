"""Training-step throughput of the cifar-stem ResNet-50 (group "train_step").

    python -m pytest benchmarks/test_train_step.py --benchmark-only

One step = forward + loss + backward + SGD update, through the library's ``TrainStep`` with the
default recipe's optimizer (SGD, Nesterov momentum, weight decay) and loss (label smoothing 0.1),
on augmented batches of real training images from the tensor loader. Variants:

    baseline_eager_fp32       eager, float32, NCHW (the baseline): true fp32 on CUDA, TF32 off for
                              matmuls and cuDNN convolutions alike
    eager_tf32                the same with TF32 on for both (PyTorch's default lets cuDNN use it)
    amp_bf16                  + bf16 autocast (batches arrive in bf16, as the trainer sends them)
    channels_last             + NHWC model and batches
    amp_bf16_channels_last    both, eager
    compile                   + torch.compile, float32 NCHW
    amp_bf16_channels_last_compile   everything together

Each variant's warm-up (its first step compiles, autotunes and allocates) is timed apart and
stored as extra_info["compile_seconds"] (compiled variants) or ["warmup_seconds"] (eager ones);
the timed rounds come after it. CUDA timings end with a synchronize.

A shared CPU makes single timings noisy, so every variant is timed interleaved with the baseline
(pytest-benchmark's ``setup`` hook runs one baseline step before each timed step, and one more
closes the sequence), and extra_info["speedup_vs_baseline"] is the median over rounds of
mean(neighbouring baseline steps) / variant step: both sides of each ratio ran under the same load.

Sizes adapt to the device: batch 512 on CUDA, 16 on the CPU (ResNet-50 needs ~1 s per 16-image
step on two cores). RESNET_CIFAR_BENCH_TRAIN_BATCH, RESNET_CIFAR_BENCH_ROUNDS and
RESNET_CIFAR_BENCH_SKIP_COMPILE=1 (drops the two compiled variants) override them, e.g. for the GPU
script's dry run.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_cifar.data.loader_spec import LoaderSpec
from resnet_cifar.data.sources import list_image_folder_split
from resnet_cifar.data.tensor_loader import TensorLoader
from resnet_cifar.data.types import CifarSplit
from resnet_cifar.engine import (
    Precision,
    TrainStep,
    build_loss,
    build_optimizer,
    make_grad_scaler,
    prepare_model,
    resolve_precision,
    unwrap_model,
)
from resnet_cifar.models import resnet50

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_CUDA = DEVICE.type == "cuda"
BATCH_SIZE = int(os.environ.get("RESNET_CIFAR_BENCH_TRAIN_BATCH", 512 if ON_CUDA else 16))
ROUNDS = int(os.environ.get("RESNET_CIFAR_BENCH_ROUNDS", 20 if ON_CUDA else 9))
SKIP_COMPILE = os.environ.get("RESNET_CIFAR_BENCH_SKIP_COMPILE") == "1"
# Steps after the first (compiling) one and before timing: cuDNN autotuning, allocator growth.
STEADY_WARMUP_STEPS = 3 if ON_CUDA else 1
# Distinct real batches cycled through, so no step reuses the previous step's input.
NUM_BATCHES = 4


@dataclass(frozen=True)
class Variant:
    name: str
    amp: bool
    channels_last: bool
    compile: bool
    # TF32 for fp32 matmuls and convolutions on CUDA; None: PyTorch's defaults (the trainer's).
    tf32: bool | None = None

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.amp else torch.float32


BASELINE = Variant("baseline_eager_fp32", amp=False, channels_last=False, compile=False, tf32=False)
VARIANTS = [
    Variant("eager_tf32", amp=False, channels_last=False, compile=False, tf32=True),
    Variant("amp_bf16", amp=True, channels_last=False, compile=False),
    Variant("channels_last", amp=False, channels_last=True, compile=False),
    Variant("amp_bf16_channels_last", amp=True, channels_last=True, compile=False),
    Variant("compile", amp=False, channels_last=False, compile=True),
    Variant("amp_bf16_channels_last_compile", amp=True, channels_last=True, compile=True),
]
if SKIP_COMPILE:
    VARIANTS = [variant for variant in VARIANTS if not variant.compile]


def synchronize() -> None:
    if ON_CUDA:
        torch.cuda.synchronize()


@contextlib.contextmanager
def tf32_mode(enabled: bool | None) -> Iterator[None]:
    """TF32 on or off for CUDA matmuls and cuDNN convolutions inside the block (None: as it is).
    The flags are global and the variants run interleaved, so each step sets its own."""
    if enabled is None or not ON_CUDA:
        yield
        return
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def decode_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


@pytest.fixture(scope="module")
def real_batches(real_train_dir: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """NUM_BATCHES augmented, normalized float32 batches of real training images on the device.

    Only the images needed are decoded (evenly spaced over the sorted file list, so every class
    appears), which keeps this module quick to run on its own.
    """
    classes, files, labels = list_image_folder_split(real_train_dir)
    picked = np.linspace(0, len(files) - 1, NUM_BATCHES * BATCH_SIZE).round().astype(np.int64)
    images = np.stack([decode_rgb(files[index]) for index in picked])
    split = CifarSplit(images, labels[picked], classes)
    loader = TensorLoader(split, LoaderSpec(batch_size=BATCH_SIZE, train=True, device=DEVICE))
    batches = list(loader)
    assert len(batches) == NUM_BATCHES
    return batches


class TimedStep:
    """One variant's model, optimizer and batches; each call runs one timed, synchronized step."""

    def __init__(self, variant: Variant, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.variant = variant
        torch.manual_seed(0)  # every variant starts from the same weights
        self.precision: Precision = resolve_precision(
            DEVICE, amp=variant.amp, amp_dtype="bf16", channels_last=variant.channels_last
        )
        model = prepare_model(resnet50(num_classes=10), self.precision, compile=variant.compile)
        model.train()
        optimizer = build_optimizer(
            unwrap_model(model), name="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
        )
        self.step = TrainStep(
            model, optimizer, build_loss(0.1), precision=self.precision, scaler=make_grad_scaler(self.precision)
        )
        # As the trainer feeds them: in the autocast dtype and the model's memory format.
        self.batches = [
            (self.precision.prepare_images(images.to(variant.dtype)), labels) for images, labels in batches
        ]
        self.calls = 0
        self.seconds: list[float] = []
        self.first_step_seconds: float | None = None

    def __call__(self) -> None:
        images, labels = self.batches[self.calls % len(self.batches)]
        self.calls += 1
        with tf32_mode(self.variant.tf32):
            start = time.perf_counter()
            self.step(images, labels)
            synchronize()
            self.seconds.append(time.perf_counter() - start)

    def warm_up(self) -> float:
        """Run the first step (compilation happens here) and a few more; returns the first step's seconds."""
        synchronize()
        self()
        self.first_step_seconds = self.seconds[0]
        for _ in range(STEADY_WARMUP_STEPS):
            self()
        self.seconds.clear()
        return self.first_step_seconds


@pytest.fixture(scope="module", autouse=True)
def cudnn_autotuning():
    """cuDNN picks its fastest kernels, as the trainer's non-deterministic mode has it do."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    yield
    torch.backends.cudnn.benchmark = previous


@pytest.fixture(scope="module")
def baseline_step(real_batches) -> TimedStep:
    step = TimedStep(BASELINE, real_batches)
    step.warm_up()
    return step


def record(benchmark, timed: TimedStep, *, warmup_seconds: float, median_seconds: float) -> None:
    variant = timed.variant
    benchmark.extra_info.update(
        images_per_sec=round(BATCH_SIZE / median_seconds, 2),
        device=DEVICE.type,
        device_name=torch.cuda.get_device_name(DEVICE) if ON_CUDA else "cpu",
        dtype=str(variant.dtype).removeprefix("torch."),
        batch_size=BATCH_SIZE,
        compile=variant.compile,
        channels_last=variant.channels_last,
        amp=variant.amp,
        image_size=32,
        stem="cifar",
        threads=torch.get_num_threads(),
        torch_version=torch.__version__,
        # What fp32 work ran as on CUDA: TF32 or true fp32 (None on the CPU, which has no TF32).
        matmul_tf32=_tf32_setting(variant, torch.backends.cuda.matmul.allow_tf32) if ON_CUDA else None,
        cudnn_tf32=_tf32_setting(variant, torch.backends.cudnn.allow_tf32) if ON_CUDA else None,
    )
    key = "compile_seconds" if variant.compile else "warmup_seconds"
    benchmark.extra_info[key] = round(warmup_seconds, 2)


def _tf32_setting(variant: Variant, default: bool) -> bool:
    return default if variant.tf32 is None else variant.tf32


@pytest.mark.benchmark(group="train_step")
def test_train_step_baseline_eager_fp32(benchmark, baseline_step: TimedStep) -> None:
    baseline_step.seconds.clear()
    benchmark.pedantic(baseline_step, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    median = statistics.median(baseline_step.seconds)
    assert baseline_step.first_step_seconds is not None
    record(benchmark, baseline_step, warmup_seconds=baseline_step.first_step_seconds, median_seconds=median)
    benchmark.extra_info["speedup_vs_baseline"] = 1.0
    assert len(baseline_step.seconds) == ROUNDS


def interleaved_speedup(measured: list[float], baseline: list[float]) -> float:
    """Median over rounds of mean(baseline run before, baseline run after) / measured run."""
    assert len(baseline) == len(measured) + 1
    return statistics.median((baseline[i] + baseline[i + 1]) / 2 / measured[i] for i in range(len(measured)))


@pytest.mark.benchmark(group="train_step")
@pytest.mark.parametrize("variant", VARIANTS, ids=[variant.name for variant in VARIANTS])
def test_train_step(benchmark, variant: Variant, baseline_step: TimedStep, real_batches) -> None:
    timed = TimedStep(variant, real_batches)
    warmup_seconds = timed.warm_up()
    baseline_step.seconds.clear()
    # B V B V ... V B: the baseline runs untimed by pytest-benchmark in `setup`, timed by us.
    run_baseline: Callable[[], None] = baseline_step
    benchmark.pedantic(timed, setup=run_baseline, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    baseline_step()
    median = statistics.median(timed.seconds)
    record(benchmark, timed, warmup_seconds=warmup_seconds, median_seconds=median)
    speedup = interleaved_speedup(timed.seconds, baseline_step.seconds)
    benchmark.extra_info["speedup_vs_baseline"] = round(speedup, 3)
    benchmark.extra_info["speedup_vs_baseline_ratio_of_medians"] = round(
        statistics.median(baseline_step.seconds) / median, 3
    )
    # Every step must have trained: the loss is finite (TrainStep raises otherwise) and each
    # timed call was one optimizer step.
    assert timed.step.global_step == STEADY_WARMUP_STEPS + 1 + ROUNDS
    if variant.compile:
        torch._dynamo.reset()  # free the compiled graphs before the next variant
