"""A decoded cache for image folders: decode 60,000 JPEGs once, load them again in under a second.

An entry lives in CACHE_DIR/<key>/ as train_images.npy, train_labels.npy, test_images.npy,
test_labels.npy and manifest.json (format, key, classes, counts, checksums). The key is a
fingerprint of the folder taken from a stat walk, so any added, removed, renamed or rewritten
image gives a new key. Entries are published with one atomic rename, and every load checks
an entry against its manifest: a corrupt or partial entry is rebuilt, never trusted.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from resnet_cifar.data.sources import load_image_folder, scan_image_folder_split
from resnet_cifar.data.types import CifarSplit, CifarSplits
from resnet_cifar.errors import DataError, UsageError
from resnet_cifar.files import user_cache_dir

CACHE_DIR_ENV = "RESNET_CIFAR_CACHE"
CACHE_FORMAT = 1
MANIFEST_NAME = "manifest.json"
SPLIT_NAMES: tuple[str, ...] = ("train", "test")
_TEMP_PREFIX = ".tmp-"
_STALE_PREFIX = ".stale-"
# Leftovers of a crashed writer older than this are removed; younger ones may still be in use.
_LEFTOVER_AGE_S = 3600.0


def default_cache_dir(environ: Mapping[str, str]) -> Path:
    """$RESNET_CIFAR_CACHE, else $XDG_CACHE_HOME/resnet-cifar/decoded, else
    ~/.cache/resnet-cifar/decoded: the rule of ``default_data_dir``, beside the data folder."""
    explicit = environ.get(CACHE_DIR_ENV, "")
    return Path(explicit) if explicit else user_cache_dir(environ) / "decoded"


def image_folder_fingerprint(root: Path) -> str:
    """The cache key of an image folder: a hash of relative path, size and mtime_ns of every image.

    A stat walk, not a hash of the files' bytes: stat-ing 60,000 files takes a few tenths of a
    second, while reading and hashing them all would alone spend most of the one-second budget
    of a cache hit. The cost: a file rewritten with the same size and a forged mtime goes
    unnoticed.
    """
    digest = hashlib.sha256(f"resnet-cifar decoded image folder, cache format {CACHE_FORMAT}\n".encode())
    for split in SPLIT_NAMES:
        classes, per_class = scan_image_folder_split(root / split)
        lines = [
            # NUL separates fields: it can appear in no file name.
            f"{split}/{class_name}/{entry.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n"
            for class_name, entries in zip(classes, per_class)
            for entry in entries
            for stat in (entry.stat(),)
        ]
        digest.update("".join(lines).encode("utf-8", errors="surrogateescape"))
    return digest.hexdigest()[:32]


def _crc32(array: np.ndarray) -> int:
    # crc32 of 184 MB takes under 0.1 s: cheap enough to check on every hit. It catches
    # accidental damage (truncation, bit flips), which is what a cache has to fear.
    return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"))


def read_cache_entry(entry_dir: Path, key: str) -> tuple[CifarSplit, CifarSplit] | None:
    """The (train, test) stored in entry_dir, or None when it is missing, partial or corrupt."""
    try:
        manifest = json.loads((entry_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
        if manifest["format"] != CACHE_FORMAT or manifest["key"] != key:
            return None
        classes = tuple(manifest["classes"])
        if not all(isinstance(name, str) for name in classes):
            return None
        splits = []
        for split in SPLIT_NAMES:
            expected = manifest["splits"][split]
            # allow_pickle=False: a .npy planted in the cache can hold data, never code.
            # mmap_mode="c" (copy-on-write): pages come straight from the page cache, about twice
            # as fast as reading into fresh memory, and the arrays stay writable and private.
            # Entries are never modified in place (only renamed away and deleted), so a mapping
            # stays valid however the cache changes later. The plain-ndarray views spare callers
            # np.memmap's subclass quirks; they keep the mapping alive.
            images = np.load(entry_dir / f"{split}_images.npy", mmap_mode="c", allow_pickle=False).view(np.ndarray)
            labels = np.load(entry_dir / f"{split}_labels.npy", mmap_mode="c", allow_pickle=False).view(np.ndarray)
            if len(labels) != expected["count"] or len(images) != expected["count"]:
                return None
            if _crc32(images) != expected["images_crc32"] or _crc32(labels) != expected["labels_crc32"]:
                return None
            splits.append(CifarSplit(images, labels, classes))  # validates dtypes, shapes, label range
    except (OSError, ValueError, KeyError, TypeError, EOFError, DataError):
        # Any damage means "no usable entry": the caller rebuilds it from the images.
        return None
    return splits[0], splits[1]


def _remove_entry(path: Path, cache_dir: Path) -> None:
    """Take a directory out of the way atomically (rename), then delete it."""
    try:
        aside = Path(tempfile.mkdtemp(prefix=_STALE_PREFIX, dir=cache_dir))
    except OSError as exc:
        raise UsageError(f"{cache_dir}: cannot use as the decoded cache folder ({exc.strerror or exc})") from None
    try:
        os.replace(path, aside / "entry")
    except FileNotFoundError:
        pass  # another process removed or replaced it first
    shutil.rmtree(aside, ignore_errors=True)


def _remove_leftovers(cache_dir: Path) -> None:
    """Delete old temp and stale directories that crashed writers left behind."""
    now = time.time()
    with os.scandir(cache_dir) as entries:
        for entry in entries:
            if not entry.name.startswith((_TEMP_PREFIX, _STALE_PREFIX)):
                continue
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime > _LEFTOVER_AGE_S:
                    shutil.rmtree(entry.path, ignore_errors=True)
            except FileNotFoundError:
                pass


def write_cache_entry(cache_dir: Path, key: str, splits: CifarSplits) -> Path:
    """Store splits as cache_dir/<key>/, atomically: the entry appears complete or not at all."""
    entry_dir = cache_dir / key
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(cache_dir)
        temp_dir = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=cache_dir))
    except OSError as exc:
        raise UsageError(f"{cache_dir}: cannot use as the decoded cache folder ({exc.strerror or exc})") from None
    try:
        manifest: dict[str, Any] = {
            "format": CACHE_FORMAT,
            "key": key,
            "classes": list(splits.train.classes),
            "splits": {},
        }
        for name, split in zip(SPLIT_NAMES, (splits.train, splits.test)):
            np.save(temp_dir / f"{name}_images.npy", split.images, allow_pickle=False)
            np.save(temp_dir / f"{name}_labels.npy", split.labels, allow_pickle=False)
            manifest["splits"][name] = {
                "count": len(split),
                "images_crc32": _crc32(split.images),
                "labels_crc32": _crc32(split.labels),
            }
        # The manifest goes last: a temp dir without it is never mistaken for an entry.
        (temp_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        try:
            os.rename(temp_dir, entry_dir)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            # Another process published the same key meanwhile: same inputs, same arrays; keep theirs.
            shutil.rmtree(temp_dir, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise UsageError(f"{cache_dir}: cannot write the decoded cache ({exc.strerror or exc})") from None
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return entry_dir


def load_image_folder_cached(root: Path, cache_dir: Path) -> CifarSplits:
    """load_image_folder(root), served from cache_dir when an intact entry for its fingerprint exists."""
    # No class check here: the key covers both splits' class folders, and an entry exists only
    # for a folder that load_image_folder accepted (it checks train and test agree).
    key = image_folder_fingerprint(root)
    entry_dir = cache_dir / key
    cached = read_cache_entry(entry_dir, key)
    if cached is not None:
        return CifarSplits(train=cached[0], test=cached[1], layout="image-folder", root=root)
    if entry_dir.exists():
        _remove_entry(entry_dir, cache_dir)  # damaged: rebuilt below, never trusted
    splits = load_image_folder(root)
    # If an image changed while we decoded, what we hold may match neither fingerprint: don't store it.
    if image_folder_fingerprint(root) == key:
        write_cache_entry(cache_dir, key, splits)
    return splits
