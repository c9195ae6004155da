"""Time loading an image folder cold (decode + write the cache) and warm (a cache hit).

Run by hand; the tests check only correctness:

    python benchmarks/cache_load_time.py [ROOT] [--cache-dir DIR] [--warm-runs 5]

ROOT defaults to ../shared/data/cifar10-jpeg beside the repository. Without --cache-dir a
fresh temporary folder is used (and deleted), so the first load is always cold.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from resnet_cifar.data.cache import image_folder_fingerprint
from resnet_cifar.data.load import load_cifar10

DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg"


def timed(label: str, root: Path, cache_dir: Path):
    start = time.perf_counter()
    splits = load_cifar10(root, cache_dir=cache_dir)
    seconds = time.perf_counter() - start
    print(f"{label:<6} {seconds:7.3f} s  train {len(splits.train):,}  test {len(splits.test):,}")
    return splits, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--warm-runs", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="resnet-cifar-cache-") as temp:
        cache_dir = args.cache_dir or Path(temp)
        cold, _ = timed("cold", args.root, cache_dir)
        warm_times = []
        for _ in range(args.warm_runs):
            warm, seconds = timed("warm", args.root, cache_dir)
            warm_times.append(seconds)
            for name in ("train", "test"):
                assert np.array_equal(getattr(cold, name).images, getattr(warm, name).images)
                assert np.array_equal(getattr(cold, name).labels, getattr(warm, name).labels)
        start = time.perf_counter()
        image_folder_fingerprint(args.root)
        print(f"fingerprint alone {time.perf_counter() - start:.3f} s")
        print(f"warm median {sorted(warm_times)[len(warm_times) // 2]:.3f} s, max {max(warm_times):.3f} s")


if __name__ == "__main__":
    main()
