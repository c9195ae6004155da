"""The one in-memory form every CIFAR-10 source produces.

Images are uint8 N x 32 x 32 x 3 (HWC, RGB), labels int64 [N] in 0..len(classes)-1. The
official CIFAR-10 class order is also the sorted order of the image-folder class names.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resnet_cifar.config import IMAGE_SIDE
from resnet_cifar.errors import DataError

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
# Per-channel statistics of the 50,000 official training images, in [0, 1] units.
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
IMAGE_SHAPE: tuple[int, int, int] = (IMAGE_SIDE, IMAGE_SIDE, 3)


@dataclass(frozen=True, eq=False)
class CifarSplit:
    """One split (train, val or test): images, labels and the class names they index."""

    images: np.ndarray  # uint8 [N, 32, 32, 3]
    labels: np.ndarray  # int64 [N]
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[1:] != IMAGE_SHAPE:
            raise DataError(
                f"images must be uint8 N x 32 x 32 x 3, got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.dtype != np.int64 or self.labels.ndim != 1:
            raise DataError(f"labels must be int64 [N], got {self.labels.dtype} {tuple(self.labels.shape)}")
        if len(self.labels) != len(self.images):
            raise DataError(f"{len(self.images)} images but {len(self.labels)} labels")
        if not self.classes:
            raise DataError("a split needs at least one class name")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            bad = int(self.labels[(self.labels < 0) | (self.labels >= len(self.classes))][0])
            raise DataError(f"label {bad} is out of range for {len(self.classes)} classes")

    def __len__(self) -> int:
        return len(self.labels)

    def per_class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(count) for name, count in zip(self.classes, counts)}

    def subset(self, indices: np.ndarray) -> CifarSplit:
        return CifarSplit(self.images[indices], self.labels[indices], self.classes)


@dataclass(frozen=True, eq=False)
class CifarSplits:
    """Train and test as read from disk, with the layout they came from."""

    train: CifarSplit
    test: CifarSplit
    layout: str  # "python" | "binary" | "image-folder"
    root: Path

    def fingerprint(self) -> str:
        """sha256 of the content (class names, labels and images of train and test; not where or
        in which layout they were read): the same data anywhere gives the same value. About 0.2 s
        for CIFAR-10's 184 MB of pixels."""
        digest = hashlib.sha256(b"resnet-cifar data fingerprint 1\n")
        for split in (self.train, self.test):
            digest.update(("\0".join(split.classes) + "\n").encode("utf-8", errors="surrogateescape"))
            digest.update(memoryview(np.ascontiguousarray(split.labels)).cast("B"))
            digest.update(memoryview(np.ascontiguousarray(split.images)).cast("B"))
        return digest.hexdigest()
