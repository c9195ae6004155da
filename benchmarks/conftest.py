"""Fixtures for the benchmarks: the real CIFAR-10 JPEGs beside the repo (../shared/data/cifar10-jpeg).

Like tests/conftest.py, RESNET_CIFAR_TEST_DATA overrides the location, and a missing folder
fails (never skips) the benchmarks that need it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from resnet_cifar.data.types import CifarSplit

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA_ROOT = Path(
    os.environ.get("RESNET_CIFAR_TEST_DATA", REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg")
)


@pytest.fixture(scope="session")
def real_train_dir() -> Path:
    train_dir = REAL_DATA_ROOT / "train"
    assert train_dir.is_dir(), f"real CIFAR-10 JPEGs not found at {REAL_DATA_ROOT}"
    return train_dir


@pytest.fixture(scope="session")
def real_train_split(real_train_dir: Path) -> CifarSplit:
    """The 50,000 real training images, decoded once per session."""
    from resnet_cifar.data.sources import read_image_folder_split

    return read_image_folder_split(real_train_dir)
