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


@pytest.fixture(scope="session")
def two_process_run(real_data_root: Path, decoded_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One uninterrupted 2-process job (`torchrun --standalone --nproc_per_node=2 ... train`, 2 epochs,
    --deterministic, --json), trained once for the session: test_distributed checks its run folder and
    output, test_multinode compares its stopped and restarted two-node jobs with it (the same world
    size, so the same training bit for bit). Returns (out, completed process); tests must not change it."""
    import subprocess

    from test_distributed import SMALL, TORCHRUN, console_script, job_env

    out = tmp_path_factory.mktemp("two-process") / "run"
    completed = subprocess.run(
        [*TORCHRUN, "--no-python", console_script(), "train", *SMALL, "--epochs", "2", "--deterministic",
         "--data-dir", str(real_data_root), "--out", str(out), "--json"],
        capture_output=True, text=True, env=job_env(decoded_cache_dir), timeout=600,
    )  # fmt: skip
    return out, completed
