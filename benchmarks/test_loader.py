"""One augmented epoch over the 50,000 real training images, per loader (group "loader").

    python -m pytest benchmarks/test_loader.py --benchmark-only

Each benchmark times whole epochs (random crop with 4-pixel padding, horizontal flip,
normalize; batch 512, last partial batch dropped; test_tensor_loader_cutout adds a
16-pixel cutout square) after one untimed warm-up epoch, and
records images_per_sec, device, dtype and batch_size in extra_info. The baseline is the
usual torchvision recipe: ImageFolder + transforms + DataLoader(num_workers=2).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
import torch

from resnet_cifar.data.dali_loader import DaliLoader
from resnet_cifar.data.tensor_loader import TensorLoader
from resnet_cifar.data.types import CIFAR10_MEAN, CIFAR10_STD, CifarSplit

BATCH_SIZE = 512
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def run_epoch(loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> int:
    """Consume one epoch; returns the number of images it yielded."""
    count = 0
    for images, labels in loader:
        count += labels.shape[0]
    if DEVICE == "cuda":
        torch.cuda.synchronize()  # GPU work is asynchronous: the epoch ends when it is done
    return count


def measure(benchmark, loader, *, rounds: int, device: str, dtype: torch.dtype) -> None:
    count = benchmark.pedantic(run_epoch, args=(loader,), rounds=rounds, iterations=1, warmup_rounds=1)
    assert count == 50_000 // BATCH_SIZE * BATCH_SIZE
    benchmark.extra_info.update(
        images_per_sec=round(count / benchmark.stats.stats.mean),
        images=count,
        device=device,
        dtype=str(dtype).removeprefix("torch."),
        batch_size=BATCH_SIZE,
    )


@pytest.mark.benchmark(group="loader")
def test_tensor_loader(benchmark, real_train_split: CifarSplit) -> None:
    loader = TensorLoader(real_train_split, batch_size=BATCH_SIZE, train=True, device=DEVICE)
    measure(benchmark, loader, rounds=3, device=DEVICE, dtype=torch.float32)


@pytest.mark.benchmark(group="loader")
def test_tensor_loader_cutout(benchmark, real_train_split: CifarSplit) -> None:
    """The longer recipe's augmentation: crop, flip and a 16-pixel cutout square."""
    loader = TensorLoader(real_train_split, batch_size=BATCH_SIZE, train=True, device=DEVICE, cutout=16)
    measure(benchmark, loader, rounds=3, device=DEVICE, dtype=torch.float32)
    benchmark.extra_info["cutout"] = 16


@pytest.mark.benchmark(group="loader")
def test_dali_loader_in_memory(benchmark, real_train_split: CifarSplit) -> None:
    loader = DaliLoader(real_train_split, batch_size=BATCH_SIZE, train=True, device=DEVICE)
    measure(benchmark, loader, rounds=3, device=DEVICE, dtype=torch.float32)


@pytest.mark.benchmark(group="loader")
def test_dali_loader_from_image_folder(benchmark, real_train_dir: Path) -> None:
    loader = DaliLoader.from_image_folder(real_train_dir, batch_size=BATCH_SIZE, train=True, device=DEVICE)
    measure(benchmark, loader, rounds=2, device=DEVICE, dtype=torch.float32)


@pytest.mark.benchmark(group="loader")
def test_baseline_torchvision_imagefolder_dataloader(benchmark, real_train_dir: Path) -> None:
    from torchvision import datasets, transforms

    augment = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD),
        ]
    )
    dataset = datasets.ImageFolder(str(real_train_dir), transform=augment)
    # persistent_workers: the workers start in the warm-up epoch, as our loaders' setup does.
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=BATCH_SIZE, shuffle=True, drop_last=True, num_workers=2, persistent_workers=True
    )
    # The baseline yields CPU tensors; a GPU run would add the host-to-device copy on top.
    measure(benchmark, loader, rounds=1, device="cpu", dtype=torch.float32)
