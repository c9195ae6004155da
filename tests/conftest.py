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
def decoded_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The decoded-image cache the real-data tests share: $RESNET_CIFAR_CACHE (CI sets a fresh
    one) or a per-session temporary folder, so the ~20 s JPEG decode happens once at most."""
    configured = os.environ.get("RESNET_CIFAR_CACHE")
    return Path(configured) if configured else tmp_path_factory.mktemp("decoded-cache")


@pytest.fixture(scope="session")
def real_splits(real_data_root: Path, decoded_cache_dir: Path):
    """All 60,000 real images (CifarSplits), decoded once per test session."""
    from resnet_cifar.data.load import load_cifar10

    return load_cifar10(real_data_root, cache_dir=decoded_cache_dir)
