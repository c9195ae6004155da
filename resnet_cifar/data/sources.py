"""Read CIFAR-10 from disk, in every layout users bring, into one in-memory form (CifarSplits).

Layouts: the official python release (cifar-10-batches-py/), the official binary release
(cifar-10-batches-bin/) and image folders (ROOT/train/<class>/*, ROOT/test/<class>/*).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from resnet_cifar.data.types import IMAGE_SHAPE, CifarSplit, CifarSplits
from resnet_cifar.errors import DataError, UsageError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})


def _decode_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            if image.mode != "RGB":
                raise DataError(f"{path}: expected an RGB image, got mode {image.mode}")
            pixels = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None
    if pixels.shape != IMAGE_SHAPE:
        raise DataError(f"{path}: expected a 32 x 32 RGB image, got {pixels.shape[1]} x {pixels.shape[0]}")
    return pixels


def list_image_folder_split(split_dir: Path) -> tuple[tuple[str, ...], list[Path], np.ndarray]:
    """Class names (sorted folder names), image files in a stable order, and their labels."""
    if not split_dir.is_dir():
        raise UsageError(f"{split_dir}: no such folder")
    classes = tuple(sorted(entry.name for entry in split_dir.iterdir() if entry.is_dir()))
    if not classes:
        raise DataError(f"{split_dir}: no class folders")
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        class_files = sorted(
            entry for entry in (split_dir / name).iterdir() if entry.suffix.lower() in IMAGE_SUFFIXES
        )
        if not class_files:
            raise DataError(f"{split_dir / name}: class folder holds no PNG or JPEG images")
        files.extend(class_files)
        labels.extend([label] * len(class_files))
    return classes, files, np.asarray(labels, dtype=np.int64)


def read_image_folder_split(split_dir: Path) -> CifarSplit:
    """Decode every image of ROOT/<split>/<class>/* into one CifarSplit."""
    classes, files, labels = list_image_folder_split(split_dir)
    images = np.empty((len(files), *IMAGE_SHAPE), dtype=np.uint8)
    # PIL releases the GIL while decoding, so a small thread pool uses every core.
    with ThreadPoolExecutor() as pool:
        for index, pixels in enumerate(pool.map(_decode_image, files, chunksize=256)):
            images[index] = pixels
    return CifarSplit(images, labels, classes)


def load_image_folder(root: Path) -> CifarSplits:
    train = read_image_folder_split(root / "train")
    test = read_image_folder_split(root / "test")
    if train.classes != test.classes:
        raise DataError(f"{root}: train and test have different class folders")
    return CifarSplits(train=train, test=test, layout="image-folder", root=root)
