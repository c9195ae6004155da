"""Shared fixtures. The real CIFAR-10 JPEGs live in ../shared/data/cifar10-jpeg beside the repo.

Tests that need them fail (never skip) when the folder is missing: CI always has it.
"""

from __future__ import annotations

import os
from pathlib import Path

# Under pytest-xdist (README's `-n 2`: one worker per core) each worker runs torch on one thread,
# set before torch is first imported: two workers of two OpenMP threads each on two cores spin
# waiting for each other, and the suite then takes as long as with one worker. The children the
# tests start inherit it, as they share the same cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402 (helpers imports torch: after the thread count above)
from helpers import SUBSET_PER_CLASS, link_image_subset  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA_ROOT = Path(
    os.environ.get("RESNET_CIFAR_TEST_DATA", REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg")
)


@pytest.fixture(scope="session")
def full_data_root() -> Path:
    """All 60,000 real JPEGs: for the few tests about the whole dataset (its official sizes, a cache
    entry of all of it). Everything else reads ``real_data_root``."""
    assert (REAL_DATA_ROOT / "train").is_dir(), f"real CIFAR-10 JPEGs not found at {REAL_DATA_ROOT}"
    return REAL_DATA_ROOT


@pytest.fixture(scope="session")
def real_data_root(full_data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real subset, in the same layout: the first SUBSET_PER_CLASS[split] JPEGs of each
    class (by name), linked from the full folder.

    Why not the full folder: every load stats all its files for the decoded cache's key and maps
    and checks the whole cached array, about 0.25 s per run in this process and more in a fresh
    one, paid by hundreds of runs that train on a few hundred images. The subset's key is the
    same in every session (relative paths, and the sizes and times of the files linked to), so a
    kept $RESNET_CIFAR_CACHE serves it without decoding."""
    return link_image_subset(full_data_root, tmp_path_factory.mktemp("cifar10-subset") / "cifar10-jpeg", SUBSET_PER_CLASS)


@pytest.fixture(scope="session")
def decoded_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The decoded-image cache the real-data tests share: $RESNET_CIFAR_CACHE (CI sets a fresh
    one) or a per-session temporary folder, so each folder's JPEGs are decoded once at most."""
    configured = os.environ.get("RESNET_CIFAR_CACHE")
    return Path(configured) if configured else tmp_path_factory.mktemp("decoded-cache")


@pytest.fixture(scope="session")
def real_splits(real_data_root: Path, decoded_cache_dir: Path):
    """The subset's 6,000 real images (CifarSplits: 5,000 train, 1,000 test), decoded once at most."""
    from resnet_cifar.data.load import load_cifar10

    return load_cifar10(real_data_root, cache_dir=decoded_cache_dir)


@pytest.fixture(scope="session")
def full_splits(full_data_root: Path, decoded_cache_dir: Path):
    """All 60,000 real images (CifarSplits), decoded once at most (~20 s)."""
    from resnet_cifar.data.load import load_cifar10

    return load_cifar10(full_data_root, cache_dir=decoded_cache_dir)


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
