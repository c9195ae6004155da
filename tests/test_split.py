from __future__ import annotations

import numpy as np
import pytest

from resnet_cifar.data.split import limit_split, stratified_indices, train_val_split
from resnet_cifar.data.types import CifarSplit
from resnet_cifar.errors import UsageError


def make_split(counts: list[int]) -> CifarSplit:
    labels = np.concatenate([np.full(count, label, dtype=np.int64) for label, count in enumerate(counts)])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(len(labels), 32, 32, 3), dtype=np.uint8)
    # Tag each image with its index so tests can check that samples are neither lost nor duplicated.
    images[:, 0, 0, 0] = np.arange(len(labels)) % 256
    images[:, 0, 0, 1] = np.arange(len(labels)) // 256
    return CifarSplit(images, labels, tuple(f"c{label}" for label in range(len(counts))))


def sample_ids(split: CifarSplit) -> set[int]:
    return set((split.images[:, 0, 0, 0].astype(int) + 256 * split.images[:, 0, 0, 1].astype(int)).tolist())


def test_val_split_is_stratified_disjoint_and_complete() -> None:
    train = make_split([500] * 10)
    fit, val = train_val_split(train, 0.1, seed=3)
    assert len(val) == 500 and len(fit) == 4500
    assert set(val.per_class_counts().values()) == {50}
    assert sample_ids(fit).isdisjoint(sample_ids(val))
    assert sample_ids(fit) | sample_ids(val) == set(range(5000))


def test_val_split_keeps_class_shares_when_unbalanced() -> None:
    train = make_split([300, 100, 50])
    _, val = train_val_split(train, 0.2, seed=0)
    assert val.per_class_counts() == {"c0": 60, "c1": 20, "c2": 10}


def test_val_split_is_seeded() -> None:
    train = make_split([100] * 4)
    first = train_val_split(train, 0.25, seed=7)[1]
    again = train_val_split(train, 0.25, seed=7)[1]
    other = train_val_split(train, 0.25, seed=8)[1]
    assert np.array_equal(first.images, again.images)
    assert sample_ids(first) != sample_ids(other)


def test_rounding_sums_exactly() -> None:
    labels = np.repeat(np.arange(3, dtype=np.int64), [7, 7, 7])
    picked = stratified_indices(labels, 3, 10, seed=0)
    assert len(picked) == 10 and len(set(picked.tolist())) == 10
    assert sorted(np.bincount(labels[picked]).tolist()) == [3, 3, 4]


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_bad_val_fraction_is_a_usage_error(fraction: float) -> None:
    with pytest.raises(UsageError, match="--val-fraction"):
        train_val_split(make_split([10, 10]), fraction, seed=0)


def test_limit_split_is_stratified_and_bounded() -> None:
    split = make_split([100] * 10)
    small = limit_split(split, 200, seed=1)
    assert len(small) == 200 and set(small.per_class_counts().values()) == {20}
    assert limit_split(split, None, seed=1) is split
    assert limit_split(split, 5000, seed=1) is split
    with pytest.raises(UsageError):
        limit_split(split, 0, seed=1)
