"""One augmented epoch over the 50,000 real training images, per loader (group "loader").

    python -m pytest benchmarks/test_loader.py --benchmark-only

Each benchmark times whole epochs over every image of RESNET_CIFAR_TEST_DATA's train/ folder (the
GPU run's dry run points it at a few images per class, RESNET_CIFAR_BENCH_LOADER_BATCH at a batch
that fits them) (random crop with 4-pixel padding, horizontal flip,
normalize; batch 512, last partial batch dropped; test_tensor_loader_cutout adds a
16-pixel cutout square) after one untimed warm-up epoch, and
records images_per_sec, device, dtype and batch_size in extra_info. The baseline is the
usual torchvision recipe: ImageFolder + transforms + DataLoader(num_workers=2).

The per-sample policies (issue 16): test_tensor_loader_policy[<policy>] adds AutoAugment,
RandAugment or TrivialAugment Wide (and test_tensor_loader_trivialaugment_cutmix batch cutmix)
to crop and flip; each is compared (extra_info "baseline", the summary's x base) with
test_torchvision_autoaugment_dataloader: the same images in memory through torchvision v2's
RandomCrop + RandomHorizontalFlip + AutoAugment(CIFAR10) + ToDtype + Normalize per sample in a
DataLoader(num_workers=2), so the ratio is the cost of augmenting, not of decoding JPEGs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from resnet_cifar.data.augment import Augmentation
from resnet_cifar.data.dali_loader import DaliLoader
from resnet_cifar.data.loader_spec import LoaderSpec
from resnet_cifar.data.tensor_loader import TensorLoader
from resnet_cifar.data.types import CIFAR10_MEAN, CIFAR10_STD, CifarSplit

BATCH_SIZE = int(os.environ.get("RESNET_CIFAR_BENCH_LOADER_BATCH", 512))
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Every benchmark's loader: a training epoch on the device (crop and flip, the default augmentation).
TRAIN = LoaderSpec(batch_size=BATCH_SIZE, train=True, device=torch.device(DEVICE))


def run_epoch(loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> int:
    """Consume one epoch; returns the number of images it yielded."""
    count = 0
    for images, labels in loader:
        count += labels.shape[0]
    if DEVICE == "cuda":
        torch.cuda.synchronize()  # GPU work is asynchronous: the epoch ends when it is done
    return count


@pytest.fixture(scope="module")
def train_images(real_train_dir: Path) -> int:
    """How many training images the folder holds (50,000 in the full data)."""
    return sum(1 for _ in real_train_dir.glob("*/*.jpg"))


def measure(benchmark, loader, *, rounds: int, device: str, dtype: torch.dtype, images: int) -> None:
    count = benchmark.pedantic(run_epoch, args=(loader,), rounds=rounds, iterations=1, warmup_rounds=1)
    assert count == images // BATCH_SIZE * BATCH_SIZE  # every full batch of the epoch, each image once
    if benchmark.stats is None:  # under --benchmark-disable: one untimed run, no figures
        return
    benchmark.extra_info.update(
        images_per_sec=round(count / benchmark.stats.stats.mean),
        images=count,
        device=device,
        dtype=str(dtype).removeprefix("torch."),
        batch_size=BATCH_SIZE,
    )


@pytest.mark.benchmark(group="loader")
def test_tensor_loader(benchmark, train_images: int, real_train_split: CifarSplit) -> None:
    loader = TensorLoader(real_train_split, TRAIN)
    measure(benchmark, loader, rounds=3, device=DEVICE, dtype=torch.float32, images=train_images)


@pytest.mark.benchmark(group="loader")
def test_tensor_loader_cutout(benchmark, train_images: int, real_train_split: CifarSplit) -> None:
    """The longer recipe's augmentation: crop, flip and a 16-pixel cutout square."""
    loader = TensorLoader(real_train_split, replace(TRAIN, augmentation=Augmentation(cutout=16)))
    measure(benchmark, loader, rounds=3, device=DEVICE, dtype=torch.float32, images=train_images)
    benchmark.extra_info["cutout"] = 16


@pytest.mark.benchmark(group="loader")
def test_dali_loader_in_memory(benchmark, train_images: int, real_train_split: CifarSplit) -> None:
    loader = DaliLoader(real_train_split, TRAIN)
    measure(benchmark, loader, rounds=3, device=DEVICE, dtype=torch.float32, images=train_images)


@pytest.mark.benchmark(group="loader")
def test_dali_loader_from_image_folder(benchmark, train_images: int, real_train_dir: Path) -> None:
    loader = DaliLoader.from_image_folder(real_train_dir, TRAIN)
    measure(benchmark, loader, rounds=2, device=DEVICE, dtype=torch.float32, images=train_images)


@pytest.mark.benchmark(group="loader")
def test_baseline_torchvision_imagefolder_dataloader(benchmark, train_images: int, real_train_dir: Path) -> None:
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
    measure(benchmark, loader, rounds=1, device="cpu", dtype=torch.float32, images=train_images)


AUGMENT_REFERENCE = "test_torchvision_autoaugment_dataloader"


@pytest.mark.benchmark(group="loader")
@pytest.mark.parametrize("policy", ["autoaugment", "randaugment", "trivialaugment"])
def test_tensor_loader_policy(benchmark, train_images: int, real_train_split: CifarSplit, policy: str) -> None:
    """Crop, flip and the policy, batched on the device (RandAugment at torchvision's N=2, M=9)."""
    augmentation = Augmentation(policy=policy)
    loader = TensorLoader(real_train_split, replace(TRAIN, augmentation=augmentation))
    measure(benchmark, loader, rounds=3, device=DEVICE, dtype=torch.float32, images=train_images)
    benchmark.extra_info.update(augment=policy, baseline=AUGMENT_REFERENCE)


@pytest.mark.benchmark(group="loader")
def test_tensor_loader_trivialaugment_cutmix(benchmark, train_images: int, real_train_split: CifarSplit) -> None:
    """TrivialAugment Wide then cutmix (alpha 1) on every batch: soft targets [N, 10]."""
    augmentation = Augmentation(policy="trivialaugment", cutmix=1.0)
    loader = TensorLoader(real_train_split, replace(TRAIN, augmentation=augmentation))
    measure(benchmark, loader, rounds=3, device=DEVICE, dtype=torch.float32, images=train_images)
    benchmark.extra_info.update(augment="trivialaugment", cutmix=1.0, baseline=AUGMENT_REFERENCE)


class _InMemoryDataset(torch.utils.data.Dataset):
    """uint8 CHW tensors through a torchvision v2 transform, one sample at a time (the usual recipe)."""

    def __init__(self, split: CifarSplit, transform) -> None:
        self.images = torch.from_numpy(split.images).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.from_numpy(split.labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[index]), self.labels[index]


@pytest.mark.benchmark(group="loader")
def test_torchvision_autoaugment_dataloader(benchmark, train_images: int, real_train_split: CifarSplit) -> None:
    """The reference of the policy benchmarks (not named "baseline": the group keeps one)."""
    from torchvision.transforms import v2

    transform = v2.Compose(
        [
            v2.RandomCrop(32, padding=4),
            v2.RandomHorizontalFlip(),
            v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(CIFAR10_MEAN, CIFAR10_STD),
        ]
    )
    loader = torch.utils.data.DataLoader(
        _InMemoryDataset(real_train_split, transform),
        batch_size=BATCH_SIZE,
        shuffle=True,
        drop_last=True,
        num_workers=2,
        persistent_workers=True,
    )
    measure(benchmark, loader, rounds=1, device="cpu", dtype=torch.float32, images=train_images)
    benchmark.extra_info["augment"] = "torchvision v2 AutoAugment(CIFAR10)"
