"""The decoded image-folder cache: a hit returns identical arrays without decoding, a changed
folder gets a new key, and a damaged or half-written entry is rebuilt, never trusted.

Timing (a hit on the real 60,000 JPEGs in under a second) is measured by hand with
benchmarks/cache_load_time.py; here only correctness is asserted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet_cifar.data import cache
from resnet_cifar.data.cache import (
    MANIFEST_NAME,
    image_folder_fingerprint,
    load_image_folder_cached,
    read_cache_entry,
    write_cache_entry,
)
from resnet_cifar.data.load import load_cifar10
from resnet_cifar.data.sources import load_image_folder
from resnet_cifar.data.types import CifarSplits
from resnet_cifar.errors import DataError, UsageError

CLASSES = ("cat", "dog", "frog")


def write_image_folder(root: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", 3), ("test", 2)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for index in range(per_class):
                pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels, "RGB").save(root / split / name / f"{index:04d}.png")


def assert_same_splits(actual: CifarSplits, expected: CifarSplits) -> None:
    for split in ("train", "test"):
        got, want = getattr(actual, split), getattr(expected, split)
        np.testing.assert_array_equal(got.images, want.images)
        np.testing.assert_array_equal(got.labels, want.labels)
        assert got.classes == want.classes
        assert got.images.dtype == np.uint8 and got.labels.dtype == np.int64


def entries(cache_dir: Path) -> list[str]:
    return sorted(path.name for path in cache_dir.iterdir()) if cache_dir.exists() else []


def forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(root: Path) -> CifarSplits:
        raise AssertionError(f"decoded {root} although the cache should have served it")

    monkeypatch.setattr(cache, "load_image_folder", fail)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_image_folder(tmp_path / "images")
    return tmp_path / "images"


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def test_a_hit_returns_identical_arrays_without_decoding(folder: Path, cache_dir: Path, monkeypatch) -> None:
    expected = load_image_folder(folder)
    cold = load_cifar10(folder, cache_dir=cache_dir)
    key = image_folder_fingerprint(folder)
    assert entries(cache_dir) == [key]
    assert sorted(path.name for path in (cache_dir / key).iterdir()) == [
        MANIFEST_NAME, "test_images.npy", "test_labels.npy", "train_images.npy", "train_labels.npy",
    ]
    forbid_decoding(monkeypatch)
    warm = load_cifar10(folder, cache_dir=cache_dir)
    assert_same_splits(cold, expected)
    assert_same_splits(warm, expected)
    assert warm.layout == "image-folder" and warm.root == folder
    # The served arrays are private: writing to them changes neither the cache nor a later hit.
    warm.train.images[0] = 0
    assert_same_splits(load_cifar10(folder, cache_dir=cache_dir), expected)


def test_fingerprint_is_stable_and_independent_of_where_the_folder_is(folder: Path, tmp_path: Path) -> None:
    key = image_folder_fingerprint(folder)
    assert image_folder_fingerprint(folder) == key and len(key) == 32
    moved = folder.rename(tmp_path / "moved")
    assert image_folder_fingerprint(moved) == key


@pytest.mark.parametrize("change", ["rewrite", "mtime", "add", "remove", "rename"])
def test_a_changed_folder_gets_a_new_key_and_fresh_arrays(folder: Path, cache_dir: Path, change: str) -> None:
    load_cifar10(folder, cache_dir=cache_dir)
    old_key = image_folder_fingerprint(folder)
    target = folder / "train" / "dog" / "0001.png"
    stat = target.stat()
    if change == "rewrite":  # new pixels, same mtime: the size differs
        Image.fromarray(np.full((32, 32, 3), 7, np.uint8), "RGB").save(target)
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    elif change == "mtime":  # same bytes, touched
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    elif change == "add":
        Image.fromarray(np.full((32, 32, 3), 9, np.uint8), "RGB").save(folder / "test" / "cat" / "0009.png")
    elif change == "remove":
        target.unlink()
    elif change == "rename":
        target.rename(target.with_name("0007.png"))
    new_key = image_folder_fingerprint(folder)
    assert new_key != old_key
    splits = load_cifar10(folder, cache_dir=cache_dir)
    assert_same_splits(splits, load_image_folder(folder))
    assert sorted(entries(cache_dir)) == sorted([old_key, new_key])


def damage(entry_dir: Path, how: str, tmp_path: Path) -> None:
    images = entry_dir / "train_images.npy"
    if how == "truncated npy":
        images.write_bytes(images.read_bytes()[:-100])
    elif how == "flipped pixel":
        payload = bytearray(images.read_bytes())
        payload[-5] ^= 0xFF
        images.write_bytes(bytes(payload))
    elif how == "garbage manifest":
        (entry_dir / MANIFEST_NAME).write_text("{not json")
    elif how == "missing manifest":
        (entry_dir / MANIFEST_NAME).unlink()
    elif how == "missing labels":
        (entry_dir / "test_labels.npy").unlink()
    elif how == "wrong count":
        manifest = json.loads((entry_dir / MANIFEST_NAME).read_text())
        manifest["splits"]["test"]["count"] += 1
        (entry_dir / MANIFEST_NAME).write_text(json.dumps(manifest))
    elif how == "out-of-range labels":
        # A consistent-looking entry (checksums recomputed) whose labels no class matches.
        labels = np.load(entry_dir / "test_labels.npy") + 5
        np.save(entry_dir / "test_labels.npy", labels)
        manifest = json.loads((entry_dir / MANIFEST_NAME).read_text())
        manifest["splits"]["test"]["labels_crc32"] = cache._crc32(labels)
        (entry_dir / MANIFEST_NAME).write_text(json.dumps(manifest))
    elif how == "pickled npy":
        # A planted object array whose unpickling would create a marker file.
        class Payload:
            def __reduce__(self):
                return open, (str(tmp_path / "pwned"), "w")

        np.save(entry_dir / "test_labels.npy", np.array([Payload()], dtype=object), allow_pickle=True)
    else:
        raise AssertionError(how)


DAMAGES = [
    "truncated npy", "flipped pixel", "garbage manifest", "missing manifest",
    "missing labels", "wrong count", "out-of-range labels", "pickled npy",
]


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_entry_is_rebuilt_never_trusted(folder: Path, cache_dir: Path, tmp_path: Path, how: str) -> None:
    expected = load_image_folder(folder)
    load_cifar10(folder, cache_dir=cache_dir)
    key = image_folder_fingerprint(folder)
    damage(cache_dir / key, how, tmp_path)
    assert read_cache_entry(cache_dir / key, key) is None
    rebuilt = load_cifar10(folder, cache_dir=cache_dir)
    assert_same_splits(rebuilt, expected)
    assert not (tmp_path / "pwned").exists()
    # The entry was replaced by an intact one, and nothing else was left behind.
    assert entries(cache_dir) == [key]
    intact = read_cache_entry(cache_dir / key, key)
    assert intact is not None
    np.testing.assert_array_equal(intact[0].images, expected.train.images)


def test_the_planted_pickle_really_is_live(tmp_path: Path) -> None:
    """The 'pickled npy' damage above would create its marker if the cache allowed pickles."""
    entry = tmp_path / "entry"
    entry.mkdir()
    damage(entry, "pickled npy", tmp_path)
    np.load(entry / "test_labels.npy", allow_pickle=True)
    assert (tmp_path / "pwned").exists()


def test_a_crash_while_writing_leaves_no_entry(folder: Path, cache_dir: Path, monkeypatch) -> None:
    real_save = np.save
    calls = []

    def crash_on_third_file(path, array, allow_pickle=False):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated crash")
        real_save(path, array, allow_pickle=allow_pickle)

    monkeypatch.setattr(cache.np, "save", crash_on_third_file)
    with pytest.raises(KeyboardInterrupt):
        load_cifar10(folder, cache_dir=cache_dir)
    assert entries(cache_dir) == []  # neither an entry nor a temp folder
    monkeypatch.setattr(cache.np, "save", real_save)
    assert_same_splits(load_cifar10(folder, cache_dir=cache_dir), load_image_folder(folder))
    assert entries(cache_dir) == [image_folder_fingerprint(folder)]


def test_a_half_written_temp_folder_is_never_read(folder: Path, cache_dir: Path) -> None:
    """What a killed writer leaves (a temp folder) is not an entry; old leftovers are swept."""
    key = image_folder_fingerprint(folder)
    leftover = cache_dir / ".tmp-crashed"
    leftover.mkdir(parents=True)
    (leftover / "train_images.npy").write_bytes(b"half")
    old = 10 * 3600
    os.utime(leftover, (leftover.stat().st_atime - old, leftover.stat().st_mtime - old))
    assert_same_splits(load_cifar10(folder, cache_dir=cache_dir), load_image_folder(folder))
    assert entries(cache_dir) == [key]


def test_a_folder_that_changes_while_decoding_is_not_cached(folder: Path, cache_dir: Path, monkeypatch) -> None:
    def decode_then_touch(root: Path) -> CifarSplits:
        splits = load_image_folder(root)
        target = root / "test" / "cat" / "0000.png"
        os.utime(target, ns=(0, target.stat().st_mtime_ns + 1_000_000))
        return splits

    monkeypatch.setattr(cache, "load_image_folder", decode_then_touch)
    load_cifar10(folder, cache_dir=cache_dir)
    assert entries(cache_dir) == []


def test_a_bad_image_writes_nothing_to_the_cache(folder: Path, cache_dir: Path) -> None:
    (folder / "train" / "cat" / "0001.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"0001.png: cannot decode image"):
        load_cifar10(folder, cache_dir=cache_dir)
    assert entries(cache_dir) == []


def test_an_unusable_cache_folder_is_a_usage_error(folder: Path, tmp_path: Path) -> None:
    not_a_folder = tmp_path / "cache-file"
    not_a_folder.write_text("x")
    with pytest.raises(UsageError, match=r"cache-file: cannot use as the decoded cache folder"):
        load_image_folder_cached(folder, not_a_folder)


def test_two_writers_of_one_key_leave_one_intact_entry(folder: Path, cache_dir: Path) -> None:
    splits = load_image_folder(folder)
    key = image_folder_fingerprint(folder)
    write_cache_entry(cache_dir, key, splits)
    write_cache_entry(cache_dir, key, splits)  # the second finds the name taken and keeps the first
    assert entries(cache_dir) == [key]
    assert read_cache_entry(cache_dir / key, key) is not None


def test_real_folder_served_from_the_cache(full_data_root: Path, full_splits, tmp_path: Path, monkeypatch) -> None:
    """The real 60,000 images: an entry holding them is served back exactly, without decoding.

    The entry is written from the session's full_splits (what a cold load would store) so the
    ~20 s decode is not paid a second time.
    """
    key = image_folder_fingerprint(full_data_root)
    write_cache_entry(tmp_path, key, full_splits)
    forbid_decoding(monkeypatch)
    served = load_cifar10(full_data_root, cache_dir=tmp_path)
    assert len(served.train) == 50_000 and len(served.test) == 10_000
    assert set(served.train.per_class_counts().values()) == {5_000}
    assert set(served.test.per_class_counts().values()) == {1_000}
    assert_same_splits(served, full_splits)
