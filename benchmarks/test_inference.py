"""Inference speed of the hand-written ResNet-50 against torchvision's, on CPU, in one run.

Both models compute the same function: torchvision's ResNet-50 gets the cifar stem (3x3 stride-1
conv1, no max-pool) and a copy of our weights, and the outputs are checked equal before timing.
Settings: eval mode, ``torch.inference_mode``, fp32, contiguous 32-pixel inputs, no compile.

A shared CPU makes single timings noisy, so each benchmark interleaves the two models round by
round (pytest-benchmark times one model while its ``setup`` hook runs and times the other) and
compares them round by round (median of per-round ratios, each round against its neighbouring
runs of the other model) as well as by overall medians. The hand-written model must reach at
least 0.97x torchvision's images/s by the per-round measure, in the same run.

Run: ``python -m pytest benchmarks/test_inference.py``
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pytest
import torch
import torchvision
from torch import nn

from resnet_cifar.models import resnet50

BATCH_SIZE = 8
IMAGE_SIZE = 32
ROUNDS = 21
WARMUP_ROUNDS = 2
MIN_SPEED_RATIO = 0.97


def torchvision_cifar_resnet50() -> nn.Module:
    model = torchvision.models.resnet50(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


@pytest.fixture(scope="module")
def models_and_batch() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    ours = resnet50().eval()
    baseline = torchvision_cifar_resnet50().eval()
    baseline.load_state_dict(ours.state_dict())
    images = torch.randn(BATCH_SIZE, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.inference_mode():
        assert torch.equal(ours(images), baseline(images)), "the two models must compute the same function"
        for _ in range(WARMUP_ROUNDS):  # warm-up (allocator, kernel selection) outside any timing
            ours(images)
            baseline(images)
    return ours, baseline, images


def timed_forward(model: nn.Module, images: torch.Tensor, seconds: list[float]) -> Callable[[], None]:
    def forward() -> None:
        with torch.inference_mode():
            start = time.perf_counter()
            model(images)
            seconds.append(time.perf_counter() - start)

    return forward


def run_interleaved(
    benchmark, measured: nn.Module, other: nn.Module, images: torch.Tensor
) -> tuple[float, float, float]:
    """Benchmark ``measured`` with ``other`` run between its rounds: O M O M ... O M O.

    pytest-benchmark's ``setup`` runs ``other`` before each timed round (untimed by it), and one
    more ``other`` run closes the sequence, so every ``measured`` run sits between two ``other``
    runs. Returns the median time of each model and the median over rounds of
    ``mean(neighbouring other runs) / measured run``: each round is compared with runs made under
    the same load, so a neighbour's burst of CPU use shifts both sides of that round's ratio.
    """
    measured_seconds: list[float] = []
    other_seconds: list[float] = []
    run_other = timed_forward(other, images, other_seconds)

    benchmark.pedantic(
        timed_forward(measured, images, measured_seconds), setup=run_other, rounds=ROUNDS, iterations=1, warmup_rounds=0
    )
    run_other()
    ratios = [
        (other_seconds[i] + other_seconds[i + 1]) / 2 / measured_seconds[i] for i in range(len(measured_seconds))
    ]
    return statistics.median(measured_seconds), statistics.median(other_seconds), statistics.median(ratios)


def record(benchmark, median_seconds: float, ratio: float, ratio_of_medians: float) -> None:
    benchmark.extra_info.update(
        images_per_sec=round(BATCH_SIZE / median_seconds, 2),
        device="cpu",
        dtype="float32",
        batch_size=BATCH_SIZE,
        image_size=IMAGE_SIZE,
        stem="cifar",
        compile=False,
        threads=torch.get_num_threads(),
        ours_vs_baseline_speed=round(ratio, 4),
        ours_vs_baseline_ratio_of_medians=round(ratio_of_medians, 4),
    )


@pytest.mark.benchmark(group="inference")
def test_inference_resnet50(benchmark, models_and_batch) -> None:
    ours, baseline, images = models_and_batch
    ours_seconds, baseline_seconds, round_ratio = run_interleaved(benchmark, ours, baseline, images)
    # Speed ratio = our images/s over torchvision's = torchvision's time over ours.
    record(benchmark, ours_seconds, round_ratio, baseline_seconds / ours_seconds)
    assert round_ratio >= MIN_SPEED_RATIO, (
        f"hand-written ResNet-50 runs at {round_ratio:.3f}x torchvision's speed (median of interleaved "
        f"rounds; medians {BATCH_SIZE / ours_seconds:.1f} vs {BATCH_SIZE / baseline_seconds:.1f} img/s)"
    )


@pytest.mark.benchmark(group="inference")
def test_inference_torchvision_resnet50_baseline(benchmark, models_and_batch) -> None:
    ours, baseline, images = models_and_batch
    baseline_seconds, ours_seconds, round_ratio = run_interleaved(benchmark, baseline, ours, images)
    record(benchmark, baseline_seconds, 1 / round_ratio, baseline_seconds / ours_seconds)
