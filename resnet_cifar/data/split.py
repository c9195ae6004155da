"""Carve a validation split from train, and take small subsets, both stratified and seeded.

The test split never enters here: model selection (early stopping, sweeps) sees only val.
"""

from __future__ import annotations

import numpy as np

from resnet_cifar.data.types import CifarSplit
from resnet_cifar.errors import UsageError


def _per_class_take(labels: np.ndarray, num_classes: int, total: int) -> np.ndarray:
    """How many samples of each class a stratified pick of `total` takes.

    Largest-remainder rounding of total * class_share, so the counts sum exactly to `total`
    and every class keeps its share to within one sample.
    """
    counts = np.bincount(labels, minlength=num_classes)
    exact = counts * (total / counts.sum())
    take = np.floor(exact).astype(np.int64)
    remainder = total - int(take.sum())
    # Ties are broken by class id, which keeps the result deterministic.
    order = np.argsort(-(exact - take), kind="stable")
    take[order[:remainder]] += 1
    return np.minimum(take, counts)


def stratified_indices(labels: np.ndarray, num_classes: int, total: int, seed: int) -> np.ndarray:
    """Indices of a seeded, stratified random pick of `total` samples, in ascending order."""
    if not 0 <= total <= len(labels):
        raise UsageError(f"cannot pick {total} samples from a split of {len(labels)}")
    rng = np.random.default_rng(seed)
    take = _per_class_take(labels, num_classes, total)
    picked = [
        rng.permutation(np.flatnonzero(labels == label))[:count] for label, count in enumerate(take) if count
    ]
    return np.sort(np.concatenate(picked)) if picked else np.empty(0, dtype=np.int64)


def train_val_split(train: CifarSplit, val_fraction: float, seed: int) -> tuple[CifarSplit, CifarSplit]:
    """Split train into (train, val): stratified, seeded, val holding `val_fraction` of it."""
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    val_count = round(len(train) * val_fraction)
    if val_count == 0 or val_count == len(train):
        raise UsageError(f"--val-fraction {val_fraction} leaves an empty split of {len(train)} images")
    val_indices = stratified_indices(train.labels, len(train.classes), val_count, seed)
    is_val = np.zeros(len(train), dtype=bool)
    is_val[val_indices] = True
    return train.subset(np.flatnonzero(~is_val)), train.subset(val_indices)


def limit_split(split: CifarSplit, limit: int | None, seed: int) -> CifarSplit:
    """A stratified, seeded subset of at most `limit` samples (the whole split for None)."""
    if limit is None or limit >= len(split):
        return split
    if limit <= 0:
        raise UsageError(f"a sample limit must be positive, got {limit}")
    return split.subset(stratified_indices(split.labels, len(split.classes), limit, seed))
