"""Corruption throughput against the model's evaluation throughput, on this machine, in one run.

`eval --corruptions` corrupts every image once per corruption and severity and evaluates it once,
so robustness evaluation costs at most twice a clean evaluation of the same images when the
corruptions run at least as fast, per image, as the model evaluates (issue 28). Measured here:
one round corrupts a batch of real test images with every computed corruption at every severity
(images/s = corrupted images over the seconds), interleaved round by round with the default
ResNet-50 (cifar stem, fp32, eval, ``torch.inference_mode``) evaluating the same batch; the ratio
is the median over rounds of corruption images/s over evaluation images/s, each round against its
neighbouring evaluation runs. Goal: at least 1.

Run: ``python -m pytest benchmarks/test_corruptions.py``
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from resnet_cifar.choices.corruptions import AVAILABLE, SEVERITIES
from resnet_cifar.data.load import load_cifar10
from resnet_cifar.data.types import CIFAR10_MEAN, CIFAR10_STD
from resnet_cifar.evaluation.corruptions import corrupt
from resnet_cifar.models import resnet50

from conftest import REAL_DATA_ROOT

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BATCH_SIZE = int(os.environ.get("RESNET_CIFAR_BENCH_CORRUPT_BATCH", 128))
ROUNDS = int(os.environ.get("RESNET_CIFAR_BENCH_CORRUPT_ROUNDS", 3))
MIN_RATIO = 1.0


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    cache = os.environ.get("RESNET_CIFAR_CACHE")
    splits = load_cifar10(REAL_DATA_ROOT, cache_dir=Path(cache) if cache else None)
    return torch.from_numpy(splits.test.images[:BATCH_SIZE].copy()).to(DEVICE)


def timed(work: Callable[[], None], seconds: list[float]) -> Callable[[], None]:
    def run() -> None:
        synchronize()
        start = time.perf_counter()
        work()
        synchronize()
        seconds.append(time.perf_counter() - start)

    return run


def corrupt_everything(images: torch.Tensor) -> Callable[[], None]:
    def work() -> None:
        for name in AVAILABLE:
            for severity in SEVERITIES:
                corrupt(images, name, severity, torch.Generator(device=DEVICE).manual_seed(severity))

    return work


def evaluate_once(images: torch.Tensor) -> Callable[[], None]:
    torch.manual_seed(0)
    model = resnet50().eval().to(DEVICE)
    mean = torch.tensor(CIFAR10_MEAN, device=DEVICE).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, device=DEVICE).view(1, 3, 1, 1)

    def work() -> None:
        with torch.inference_mode():
            model((images.permute(0, 3, 1, 2).float() / 255 - mean) / std).argmax(dim=1)

    return work


@pytest.mark.benchmark(group="corruptions")
def test_corruption_throughput_vs_evaluation(benchmark, batch: torch.Tensor) -> None:
    corrupt_seconds: list[float] = []
    eval_seconds: list[float] = []
    run_eval = timed(evaluate_once(batch), eval_seconds)
    run_eval()  # warm-up, discarded
    eval_seconds.clear()
    passes = len(AVAILABLE) * len(SEVERITIES)
    benchmark.pedantic(
        timed(corrupt_everything(batch), corrupt_seconds), setup=run_eval, rounds=ROUNDS, iterations=1, warmup_rounds=0
    )
    run_eval()
    # Per round: corrupted images/s over the neighbouring evaluations' images/s.
    ratios = [
        (passes * BATCH_SIZE / corrupt_seconds[i]) / (BATCH_SIZE / ((eval_seconds[i] + eval_seconds[i + 1]) / 2))
        for i in range(len(corrupt_seconds))
    ]
    ratio = statistics.median(ratios)
    corrupt_rate = passes * BATCH_SIZE / statistics.median(corrupt_seconds)
    eval_rate = BATCH_SIZE / statistics.median(eval_seconds)
    benchmark.extra_info.update(
        images_per_sec=round(corrupt_rate, 1),
        eval_images_per_sec=round(eval_rate, 1),
        corruption_vs_eval_speed=round(ratio, 3),
        corruptions=len(AVAILABLE),
        severities=len(SEVERITIES),
        batch_size=BATCH_SIZE,
        device=DEVICE.type,
        threads=torch.get_num_threads(),
    )
    assert ratio >= MIN_RATIO, (
        f"corruptions run at {ratio:.2f}x the model's evaluation speed ({corrupt_rate:.0f} vs {eval_rate:.0f} img/s)"
    )
