"""The entry point for reading CIFAR-10: detect which layout a folder holds, read it with its
reader (``sources``), and serve image folders from the decoded cache (``cache``) when one is given.

This module sits above both: ``sources`` only reads files and ``cache`` only stores decoded
arrays, so neither needs to import the other's caller.
"""

from __future__ import annotations

from pathlib import Path

from resnet_cifar.data.cache import load_image_folder_cached
from resnet_cifar.data.sources import (
    BINARY_DIR_NAME,
    BINARY_META_FILE,
    BINARY_TEST_FILE,
    BINARY_TRAIN_FILES,
    PYTHON_DIR_NAME,
    PYTHON_META_FILE,
    PYTHON_TEST_FILE,
    PYTHON_TRAIN_FILES,
    load_binary_release,
    load_image_folder,
    load_python_release,
)
from resnet_cifar.data.types import CifarSplits
from resnet_cifar.errors import UsageError

__all__ = ["EXPECTED_LAYOUTS_TEXT", "LAYOUTS", "detect_layout", "load_cifar10"]

LAYOUTS: tuple[str, ...] = ("python", "binary", "image-folder")

EXPECTED_LAYOUTS_TEXT = (
    f"expected {PYTHON_DIR_NAME}/ (data_batch_1..5, test_batch, batches.meta), "
    f"{BINARY_DIR_NAME}/ (data_batch_1..5.bin, test_batch.bin, batches.meta.txt) "
    "or train/ and test/ image folders"
)


def _holds_any(folder: Path, names: tuple[str, ...]) -> bool:
    return any((folder / name).is_file() for name in names)


def detect_layout(root: Path) -> tuple[str, Path]:
    """Which layout `root` holds, and the folder to read it from.

    Accepts the folder that contains cifar-10-batches-py/ (or -bin/), that folder itself (by
    name or by its files), or a folder with train/ and test/ subfolders. The python release is
    preferred when several are present, because it alone can be checked against official md5s.
    """
    root = Path(root)
    if not root.exists():
        raise UsageError(f"{root}: no such folder")
    if not root.is_dir():
        raise UsageError(f"{root}: not a folder")
    if (root / PYTHON_DIR_NAME).is_dir():
        return "python", root / PYTHON_DIR_NAME
    if root.name == PYTHON_DIR_NAME or _holds_any(root, (*PYTHON_TRAIN_FILES, PYTHON_TEST_FILE, PYTHON_META_FILE)):
        return "python", root
    if (root / BINARY_DIR_NAME).is_dir():
        return "binary", root / BINARY_DIR_NAME
    if root.name == BINARY_DIR_NAME or _holds_any(root, (*BINARY_TRAIN_FILES, BINARY_TEST_FILE, BINARY_META_FILE)):
        return "binary", root
    if (root / "train").is_dir() and (root / "test").is_dir():
        return "image-folder", root
    raise UsageError(f"{root}: not a CIFAR-10 folder; {EXPECTED_LAYOUTS_TEXT}")


def load_cifar10(root: Path, *, verify: bool = True, cache_dir: Path | None = None) -> CifarSplits:
    """Detect the layout of `root` and read it.

    verify: check the python release's files against the official md5s (the binary release
    and image folders have no official list; their structure is always checked).
    cache_dir: for image folders, keep the decoded arrays there so a second load is fast.
    """
    layout, folder = detect_layout(Path(root))
    if layout == "python":
        return load_python_release(folder, verify=verify)
    if layout == "binary":
        return load_binary_release(folder)
    if cache_dir is None:
        return load_image_folder(folder)
    return load_image_folder_cached(folder, Path(cache_dir))
