"""Shared fixtures. The real CIFAR-10 JPEGs live in ../shared/data/cifar10-jpeg beside the repo.

Tests that need them fail (never skip) when the folder is missing: CI always has it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA_ROOT = Path(
    os.environ.get("RESNET_CIFAR_TEST_DATA", REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg")
)


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    assert (REAL_DATA_ROOT / "train").is_dir(), f"real CIFAR-10 JPEGs not found at {REAL_DATA_ROOT}"
    return REAL_DATA_ROOT


@pytest.fixture(scope="session")
def real_splits(real_data_root: Path):
    """All 60,000 real images, decoded once per test session."""
    from resnet_cifar.data.sources import load_image_folder

    return load_image_folder(real_data_root)
