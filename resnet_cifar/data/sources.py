"""Read CIFAR-10 from disk, in every layout users bring, into one in-memory form (CifarSplits).

Layouts: the official python release (cifar-10-batches-py/), the official binary release
(cifar-10-batches-bin/) and image folders (ROOT/train/<class>/*, ROOT/test/<class>/*).
Every reader checks what it reads and reports a problem as one DataError line naming the file;
`resnet_cifar.data.load.load_cifar10` detects which layout a folder holds and calls its reader.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from resnet_cifar.data.types import IMAGE_SHAPE, CifarSplit, CifarSplits
from resnet_cifar.errors import DataError, UsageError
from resnet_cifar.files import file_digest

PIXELS_PER_IMAGE = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]  # 3072

# The official python release, as unpacked from cifar-10-python.tar.gz.
PYTHON_DIR_NAME = "cifar-10-batches-py"
PYTHON_TRAIN_FILES: tuple[str, ...] = tuple(f"data_batch_{index}" for index in range(1, 6))
PYTHON_TEST_FILE = "test_batch"
PYTHON_META_FILE = "batches.meta"
# md5 of each file of the official release (the values torchvision's CIFAR10 checks too).
OFFICIAL_PYTHON_MD5: dict[str, str] = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}

# The official binary release: records of 1 label byte + 3072 planar RGB bytes.
BINARY_DIR_NAME = "cifar-10-batches-bin"
BINARY_TRAIN_FILES: tuple[str, ...] = tuple(f"data_batch_{index}.bin" for index in range(1, 6))
BINARY_TEST_FILE = "test_batch.bin"
BINARY_META_FILE = "batches.meta.txt"
BINARY_RECORD_BYTES = 1 + PIXELS_PER_IMAGE  # 3073

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
_IMAGE_SUFFIX_TUPLE = tuple(IMAGE_SUFFIXES)



# --------------------------------------------------------------------------- shared helpers


def planar_rows_to_hwc(rows: np.ndarray) -> np.ndarray:
    """[N, 3072] rows of planar bytes (all R, then all G, then all B) -> contiguous [N, 32, 32, 3]."""
    height, width, channels = IMAGE_SHAPE
    return np.ascontiguousarray(rows.reshape(-1, channels, height, width).transpose(0, 2, 3, 1))


def _checked_labels(raw: Any, count: int, num_classes: int, path: Path) -> np.ndarray:
    """Labels as int64 [count], each in 0..num_classes-1, or a DataError naming `path`."""
    try:
        labels = np.asarray(raw)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: labels are not a list of integers ({exc})") from None
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels must be a flat list of integers, got {labels.dtype} {labels.shape}")
    if len(labels) != count:
        raise DataError(f"{path}: {count} images but {len(labels)} labels")
    out_of_range = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(out_of_range):
        first = int(out_of_range[0])
        raise DataError(
            f"{path}: label {int(labels[first])} of record {first} is out of range 0..{num_classes - 1}"
        )
    return labels.astype(np.int64)


def _checked_class_names(names: Any, path: Path) -> tuple[str, ...]:
    if not isinstance(names, (list, tuple)) or not names:
        raise DataError(f"{path}: expected a non-empty list of class names")
    decoded: list[str] = []
    for name in names:
        if isinstance(name, bytes):
            name = name.decode("utf-8", errors="replace")
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{path}: class names must be non-empty strings, got {name!r}")
        decoded.append(name.strip())
    if len(set(decoded)) != len(decoded):
        raise DataError(f"{path}: class names repeat: {', '.join(decoded)}")
    return tuple(decoded)


def _require_files(folder: Path, names: tuple[str, ...], release: str) -> None:
    for name in names:
        if not (folder / name).is_file():
            raise DataError(f"{folder / name}: missing; the {release} release needs {', '.join(names)}")


# --------------------------------------------------------------------------- python release


def file_md5(path: Path) -> str:
    return file_digest(path, "md5")


def verify_official_md5(path: Path) -> None:
    """DataError unless `path` has the md5 of the official python release's file of that name."""
    expected = OFFICIAL_PYTHON_MD5[path.name]
    actual = file_md5(path)
    if actual != expected:
        raise DataError(
            f"{path}: md5 mismatch (expected {expected}, got {actual}); "
            "not the official CIFAR-10 file (verify=False / --no-verify accepts it)"
        )


def _numpy_module(name: str) -> Any:
    """numpy's `_core.<name>` (numpy 2), else `core.<name>` (numpy 1), without deprecation warnings."""
    import importlib

    try:
        return importlib.import_module(f"numpy._core.{name}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{name}")


class _Latin1Encode:
    """Stands in for `_codecs.encode`, which Python 3 pickles (protocol <= 2) use for bytes.

    Only the latin-1 form those pickles use is admitted; a general codec call is not. An
    instance without __dict__ or slots: a pickle's BUILD opcode cannot alter it.
    """

    __slots__ = ()

    def __call__(self, text: str, encoding: str = "utf-8") -> bytes:
        if not isinstance(text, str) or encoding.replace("-", "").replace("_", "").lower() != "latin1":
            raise pickle.UnpicklingError(f"_codecs.encode is admitted for latin-1 text only, got {encoding!r}")
        return text.encode("latin-1")


def _admitted_globals() -> dict[tuple[str, str], Any]:
    """Every global a real CIFAR-10 batch pickle needs, and nothing else.

    A batch is a dict of builtin lists, strings, numbers (which need no global) and one uint8
    array. numpy 1 pickles arrays as numpy.core.multiarray._reconstruct + ndarray + dtype, numpy
    2 names numpy._core.multiarray instead; pickle protocol 5 uses numeric._frombuffer; numpy
    scalars (e.g. a label stored as np.int64) use multiarray.scalar. These only build arrays
    and scalars from bytes, so admitting them runs no code of the file's choosing.
    """
    multiarray = _numpy_module("multiarray")
    numeric = _numpy_module("numeric")
    admitted: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _Latin1Encode(),
    }
    for prefix in ("numpy.core", "numpy._core"):
        admitted[(f"{prefix}.multiarray", "_reconstruct")] = multiarray._reconstruct
        admitted[(f"{prefix}.multiarray", "scalar")] = multiarray.scalar
        admitted[(f"{prefix}.numeric", "_frombuffer")] = numeric._frombuffer
    return admitted


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals a CIFAR-10 batch contains.

    pickle runs whatever callable a file names (os.system, builtins.eval, ...), so a plain
    pickle.load of a downloaded file is code execution. Refusing in find_class stops a hostile
    global before anything is called.
    """

    def __init__(self, stream: io.BufferedIOBase, path: Path) -> None:
        # Python 2 wrote the official batches; latin-1 maps their byte strings 1:1, as numpy expects.
        super().__init__(stream, encoding="latin1")
        self._path = path
        self._admitted = _admitted_globals()

    def find_class(self, module: str, name: str) -> Any:
        admitted = self._admitted.get((module, name))
        if admitted is None:
            raise DataError(f"{self._path}: refused to unpickle global {module}.{name} (not part of a CIFAR-10 batch)")
        return admitted


def unpickle_restricted(path: Path) -> Any:
    """Load one pickle file with RestrictedUnpickler; any failure is a DataError naming the file."""
    try:
        with open(path, "rb") as stream:
            return RestrictedUnpickler(stream, path).load()
    except DataError:
        raise
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except Exception as exc:  # noqa: BLE001 - a malformed pickle can fail in any of pickle's many ways
        reason = "truncated" if isinstance(exc, EOFError) or "truncated" in str(exc) else str(exc)
        raise DataError(f"{path}: not a valid CIFAR-10 pickle ({type(exc).__name__}: {reason})") from None


def _lookup(batch: dict[Any, Any], key: str, path: Path) -> Any:
    """batch[key] whether the file stored the key as str (latin-1 decoded) or as bytes."""
    for candidate in (key, key.encode("ascii")):
        if candidate in batch:
            return batch[candidate]
    raise DataError(f"{path}: no {key!r} entry")


def _unpickle_dict(path: Path) -> dict[Any, Any]:
    batch = unpickle_restricted(path)
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a dict, got {type(batch).__name__}")
    return batch


def read_python_meta(path: Path) -> tuple[str, ...]:
    return _checked_class_names(_lookup(_unpickle_dict(path), "label_names", path), path)


def read_python_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (images uint8 [N, 32, 32, 3], labels int64 [N])."""
    batch = _unpickle_dict(path)
    data = _lookup(batch, "data", path)
    well_formed = isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
    if not well_formed or data.shape[1] != PIXELS_PER_IMAGE:
        described = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: data must be uint8 [N, {PIXELS_PER_IMAGE}], got {described}")
    labels = _checked_labels(_lookup(batch, "labels", path), len(data), num_classes, path)
    return planar_rows_to_hwc(data), labels


def load_python_release(folder: Path, *, verify: bool = True) -> CifarSplits:
    """Read cifar-10-batches-py/; with verify, each file must match the official md5 first."""
    names = (*PYTHON_TRAIN_FILES, PYTHON_TEST_FILE, PYTHON_META_FILE)
    _require_files(folder, names, "python")
    if verify:
        # Before unpickling anything: a file that is not the official one is never even parsed.
        for name in names:
            verify_official_md5(folder / name)
    classes = read_python_meta(folder / PYTHON_META_FILE)
    return CifarSplits(
        train=_concatenated([read_python_batch(folder / name, len(classes)) for name in PYTHON_TRAIN_FILES], classes),
        test=_concatenated([read_python_batch(folder / PYTHON_TEST_FILE, len(classes))], classes),
        layout="python",
        root=folder,
    )


def _concatenated(parts: list[tuple[np.ndarray, np.ndarray]], classes: tuple[str, ...]) -> CifarSplit:
    images = np.concatenate([images for images, _ in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([labels for _, labels in parts]) if len(parts) > 1 else parts[0][1]
    return CifarSplit(images, labels, classes)


# --------------------------------------------------------------------------- binary release


def read_binary_meta(path: Path) -> tuple[str, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read class names ({exc})") from None
    # The official file ends with blank lines; every non-blank line is one class name.
    return _checked_class_names([line for line in text.splitlines() if line.strip()], path)


def read_binary_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One .bin file of 3073-byte records -> (images uint8 [N, 32, 32, 3], labels int64 [N])."""
    size = path.stat().st_size
    if size == 0 or size % BINARY_RECORD_BYTES:
        raise DataError(
            f"{path}: {size} bytes is not a whole number of {BINARY_RECORD_BYTES}-byte records "
            "(1 label byte + 3072 pixel bytes)"
        )
    try:
        records = np.fromfile(path, dtype=np.uint8).reshape(-1, BINARY_RECORD_BYTES)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    labels = _checked_labels(records[:, 0], len(records), num_classes, path)
    return planar_rows_to_hwc(records[:, 1:]), labels


def load_binary_release(folder: Path) -> CifarSplits:
    """Read cifar-10-batches-bin/. There is no widely used md5 list for it: the structure is checked."""
    _require_files(folder, (*BINARY_TRAIN_FILES, BINARY_TEST_FILE, BINARY_META_FILE), "binary")
    classes = read_binary_meta(folder / BINARY_META_FILE)
    return CifarSplits(
        train=_concatenated([read_binary_batch(folder / name, len(classes)) for name in BINARY_TRAIN_FILES], classes),
        test=_concatenated([read_binary_batch(folder / BINARY_TEST_FILE, len(classes))], classes),
        layout="binary",
        root=folder,
    )


# --------------------------------------------------------------------------- image folders


def _decode_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            # Mode and size come from the header: check them before paying for a decode.
            if image.mode != "RGB":
                raise DataError(f"{path}: expected an RGB image, got mode {image.mode}")
            if image.size != (IMAGE_SHAPE[1], IMAGE_SHAPE[0]):
                width, height = image.size
                raise DataError(f"{path}: expected a 32 x 32 RGB image, got {width} x {height}")
            pixels = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None
    if pixels.shape != IMAGE_SHAPE:
        raise DataError(f"{path}: expected a 32 x 32 RGB image, got array shape {pixels.shape}")
    return pixels


def is_image_file_name(name: str) -> bool:
    """A PNG or JPEG by its suffix; hidden files (e.g. macOS "._x.jpg" forks) are not images."""
    # str.endswith, not os.path.splitext: this runs for every file on every cache lookup.
    return name.lower().endswith(_IMAGE_SUFFIX_TUPLE) and not name.startswith(".")


def _special_kind(mode: int) -> str:
    """What a non-regular file is, in words, for the refusal message."""
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((name for test, name in kinds if test(mode)), "of an unknown kind")


def _unreadable(entry: os.DirEntry[str], error: OSError) -> DataError:
    """The one-line error for an entry whose target cannot be stat-ed."""
    if error.errno == errno.ELOOP:
        return DataError(f"{entry.path}: symbolic link loop")
    if error.errno == errno.ENOENT and entry.is_symlink():
        try:
            target = os.readlink(entry.path)
        except OSError:
            target = "?"
        return DataError(f"{entry.path}: dangling symbolic link (to {target!r})")
    return DataError(f"{entry.path}: cannot read ({error.strerror or error})")


def _checked_image_entry(entry: os.DirEntry[str]) -> os.DirEntry[str]:
    """``entry`` when it is (a link to) a regular file; else a DataError naming it.

    Only regular files are read as images: opening a FIFO named x.jpg would block forever, and a
    device could be read without end. The stat (following links) is DirEntry's, cached, so the
    decoded cache's fingerprint reuses it and sees the same refusals as a load without the cache.
    """
    try:
        mode = entry.stat().st_mode
    except OSError as error:
        raise _unreadable(entry, error) from None
    if not stat.S_ISREG(mode):
        raise DataError(f"{entry.path}: not a regular file ({_special_kind(mode)}); refusing to read it as an image")
    return entry


def _is_class_folder(entry: os.DirEntry[str]) -> bool:
    """A visible folder (or a link to one). A broken link is an error, not a silently missing class."""
    if entry.name.startswith("."):
        return False  # hidden folders (.ipynb_checkpoints, .DS_Store-like debris) are not classes
    try:
        return entry.is_dir()
    except OSError as error:  # ELOOP, EACCES: is_dir() swallows only ENOENT
        raise _unreadable(entry, error) from None


def _listed(folder: str) -> list[os.DirEntry[str]]:
    """The entries of ``folder``; a folder that cannot be listed is a DataError naming it."""
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError as error:
        raise DataError(f"{folder}: cannot read the folder ({error.strerror or error})") from None


def scan_image_folder_split(split_dir: Path) -> tuple[tuple[str, ...], list[list[os.DirEntry[str]]]]:
    """Class names (sorted folder names) and, per class, its image files sorted by name.

    Hidden entries (names starting with ".") are skipped, both as classes and as images. Every
    image entry must be a regular file (or a link to one): a dangling link, a link loop, a FIFO,
    socket or device, or a folder that cannot be listed is a DataError naming it.
    os.scandir rather than pathlib: the decoded cache fingerprints 60,000 files with this on
    every load, and DirEntry objects are several times cheaper than Path objects.
    """
    if not split_dir.is_dir():
        raise UsageError(f"{split_dir}: no such folder")
    class_dirs = sorted(
        (entry for entry in _listed(str(split_dir)) if _is_class_folder(entry)), key=lambda entry: entry.name
    )
    if not class_dirs:
        raise DataError(f"{split_dir}: no class folders")
    per_class: list[list[os.DirEntry[str]]] = []
    for class_dir in class_dirs:
        images = (entry for entry in _listed(class_dir.path) if is_image_file_name(entry.name))
        files = sorted(images, key=lambda entry: entry.name)
        if not files:
            raise DataError(f"{class_dir.path}: class folder holds no PNG or JPEG images")
        # In name order, so the first bad file reported is the same on every run.
        per_class.append([_checked_image_entry(entry) for entry in files])
    return tuple(entry.name for entry in class_dirs), per_class


def list_image_folder_split(split_dir: Path) -> tuple[tuple[str, ...], list[Path], np.ndarray]:
    """Class names (sorted folder names), image files in a stable order, and their labels."""
    classes, per_class = scan_image_folder_split(split_dir)
    files = [Path(entry.path) for entries in per_class for entry in entries]
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), [len(entries) for entries in per_class])
    return classes, files, labels


def _decode_all(files: list[Path], images: np.ndarray) -> None:
    """Decode files[i] into images[i], in parallel; the first bad file stops the rest."""
    workers = min(32, (os.cpu_count() or 1) + 4)
    # Chunks rather than one task per file: fewer futures, and a failure cancels what is queued.
    chunk = max(1, min(512, -(-len(files) // (workers * 4))))

    def decode_range(start: int) -> None:
        for index in range(start, min(start + chunk, len(files))):
            images[index] = _decode_image(files[index])

    # PIL releases the GIL while decoding, so threads use every core.
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for future in [pool.submit(decode_range, start) for start in range(0, len(files), chunk)]:
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def read_image_folder_split(split_dir: Path) -> CifarSplit:
    """Decode every image of ROOT/<split>/<class>/* into one CifarSplit."""
    classes, files, labels = list_image_folder_split(split_dir)
    images = np.empty((len(files), *IMAGE_SHAPE), dtype=np.uint8)
    _decode_all(files, images)
    return CifarSplit(images, labels, classes)


def check_same_classes(root: Path, train_classes: tuple[str, ...], test_classes: tuple[str, ...]) -> None:
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes)) or ["-"]
        only_test = sorted(set(test_classes) - set(train_classes)) or ["-"]
        raise DataError(
            f"{root}: train and test have different class folders "
            f"(only in train: {', '.join(only_train)}; only in test: {', '.join(only_test)})"
        )


def load_image_folder(root: Path) -> CifarSplits:
    # List both splits first, so a class mismatch is reported before minutes of decoding.
    check_same_classes(root, scan_image_folder_split(root / "train")[0], scan_image_folder_split(root / "test")[0])
    train = read_image_folder_split(root / "train")
    test = read_image_folder_split(root / "test")
    return CifarSplits(train=train, test=test, layout="image-folder", root=root)


# --------------------------------------------------------------------------- summary


def describe(splits: CifarSplits) -> dict[str, Any]:
    """A JSON-ready summary: layout, root, class names, and per split the count and per-class counts."""

    def split_summary(split: CifarSplit) -> dict[str, Any]:
        return {"count": len(split), "per_class": split.per_class_counts()}

    return {
        "layout": splits.layout,
        "root": str(splits.root),
        "classes": list(splits.train.classes),
        "train": split_summary(splits.train),
        "test": split_summary(splits.test),
    }


