"""build_loaders: real data in, three loaders out, val carved from train, limits applied."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
import torch

from resnet_cifar.config import DataConfig
from resnet_cifar.data import build_loaders, resolve_loader_kind
from resnet_cifar.data.augment import NO_AUGMENTATION, Augmentation
from resnet_cifar.errors import UsageError

from helpers import SUBSET_PER_CLASS

CPU = torch.device("cpu")


def installed() -> bool:
    return True


def missing() -> bool:
    return False


def never_asked() -> bool:
    raise AssertionError("DALI was probed where the answer cannot change the loader")


def test_auto_means_dali_only_on_a_gpu_with_dali() -> None:
    assert resolve_loader_kind("auto", torch.device("cuda"), dali_installed=installed) == "dali"
    assert resolve_loader_kind("auto", torch.device("cuda"), dali_installed=missing) == "tensor"
    assert resolve_loader_kind("dali", CPU, dali_installed=installed) == "dali"
    with pytest.raises(UsageError, match="nvidia-dali"):
        resolve_loader_kind("dali", CPU, dali_installed=missing)
    # A CPU run or the tensor loader never pays DALI's import to learn what it would not use.
    assert resolve_loader_kind("auto", CPU, dali_installed=never_asked) == "tensor"
    assert resolve_loader_kind("tensor", torch.device("cuda"), dali_installed=never_asked) == "tensor"
    # The names are DataConfig's to check, naming the flag; the resolver only asserts.
    with pytest.raises(UsageError, match="^--loader must be one of auto, tensor, dali, got 'fast'$"):
        DataConfig(data_dir=Path("."), loader="fast")
    with pytest.raises(AssertionError, match="'fast'"):
        resolve_loader_kind("fast", CPU, dali_installed=installed)


@pytest.mark.parametrize("kind", ["tensor", "dali"])
def test_real_loaders_with_limits(real_data_root: Path, decoded_cache_dir: Path, kind: str) -> None:
    cfg = DataConfig(
        data_dir=real_data_root,
        batch_size=64,
        eval_batch_size=100,
        loader=kind,
        limit_train=640,
        limit_val=250,
        cache_dir=decoded_cache_dir,
        seed=3,
        cutout=8,
    )
    loaders = build_loaders(cfg, CPU, dtype=torch.bfloat16, channels_last=True)
    assert loaders.kind == kind
    # One spec, from the config and the run's facts; evaluation's is the same, unaugmented.
    spec = loaders.train.spec
    assert (spec.batch_size, spec.train, spec.seed, spec.dtype, spec.channels_last) == (64, True, 3, torch.bfloat16, True)
    assert spec.augmentation == Augmentation.from_config(cfg) and spec.augmentation.cutout == 8
    assert loaders.val.spec == loaders.test.spec == spec.for_evaluation(100)
    assert loaders.val.spec.augmentation == NO_AUGMENTATION and not loaders.val.spec.train
    assert loaders.classes[0] == "airplane" and len(loaders.classes) == 10
    assert (len(loaders.train), loaders.train.num_samples) == (10, 640)
    assert loaders.val.num_samples == 250 and len(loaders.val) == 3
    assert loaders.test.num_samples == 10 * SUBSET_PER_CLASS["test"]  # every test image of the subset
    images, labels = next(iter(loaders.train))
    assert images.shape == (64, 3, 32, 32) and images.dtype == torch.bfloat16
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert labels.dtype == torch.int64 and labels.shape == (64,)
    val_labels = torch.cat([labels for _, labels in loaders.val])
    assert torch.bincount(val_labels, minlength=10).tolist() == [25] * 10


def test_val_is_a_tenth_of_train_and_never_test(full_data_root: Path, decoded_cache_dir: Path) -> None:
    cfg = DataConfig(data_dir=full_data_root, loader="tensor", cache_dir=decoded_cache_dir)
    loaders = build_loaders(cfg, CPU)
    assert loaders.train.num_samples == 45_000 - 45_000 % 512
    assert loaders.val.num_samples == 5_000
    assert loaders.test.num_samples == 10_000


def test_batch_larger_than_train_is_a_usage_error(tmp_path: Path) -> None:
    # Only the data can tell: 2 classes x 10 images leave 18 for training after the val split.
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
            for index in range(10):
                pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / name / f"{index}.png")
    cfg = DataConfig(data_dir=tmp_path, batch_size=32, loader="tensor")
    with pytest.raises(UsageError, match="--batch-size 32 is larger than the 18 training images"):
        build_loaders(cfg, CPU)
