"""CIFAR-10 on disk: the python release, the binary release and image folders.

Each layout is written here from small random arrays and must load back pixel-exactly; bad
input must fail with one DataError/UsageError line that names the offending file.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet_cifar.data import sources
from resnet_cifar.data.load import detect_layout, load_cifar10
from resnet_cifar.data.sources import describe, planar_rows_to_hwc, unpickle_restricted
from resnet_cifar.data.types import CIFAR10_CLASSES
from resnet_cifar.errors import DataError, UsageError

TRAIN_PER_BATCH = 12
TEST_COUNT = 15
PYTHON_TRAIN = [f"data_batch_{index}" for index in range(1, 6)]
BINARY_TRAIN = [f"data_batch_{index}.bin" for index in range(1, 6)]


# --------------------------------------------------------------------------- writers


def random_images(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)


def random_labels(rng: np.random.Generator, count: int, num_classes: int = 10) -> np.ndarray:
    return rng.integers(0, num_classes, size=count).astype(np.int64)


def planar_rows(images: np.ndarray) -> np.ndarray:
    """HWC images -> the release's [N, 3072] rows (the R plane, then G, then B)."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))


class Python2StylePickler(pickle._Pickler):
    """Writes byte strings the way Python 2's cPickle wrote the official batches (BINSTRING).

    Python 3's own protocol-2 pickler would instead route bytes through _codecs.encode.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def save_python2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_python2_str


def python2_pickle_bytes(obj: object) -> bytes:
    """A protocol-2 pickle as Python 2 + numpy 1 wrote it: byte strings, numpy.core names."""
    import io

    stream = io.BytesIO()
    Python2StylePickler(stream, protocol=2).dump(obj)
    payload = stream.getvalue()
    # numpy 1 pickled arrays as numpy.core.multiarray._reconstruct (numpy 2 says numpy._core).
    return payload.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def write_pickle(path: Path, obj: object, style: str) -> None:
    if style == "python2":
        path.write_bytes(python2_pickle_bytes(obj))
    elif style == "protocol2":
        path.write_bytes(pickle.dumps(obj, protocol=2))
    elif style == "protocol5":
        path.write_bytes(pickle.dumps(obj, protocol=5))
    else:
        raise AssertionError(style)


def batch_dict(images: np.ndarray, labels: np.ndarray, name: str, bytes_keys: bool) -> dict:
    def key(text: str) -> str | bytes:
        return text.encode() if bytes_keys else text

    return {
        key("batch_label"): key(f"{name} of 5"),
        key("labels"): [int(label) for label in labels],
        key("data"): planar_rows(images),
        key("filenames"): [key(f"img_{index}.png") for index in range(len(images))],
    }


def write_python_release(
    folder: Path,
    rng: np.random.Generator,
    style: str = "python2",
    classes: tuple[str, ...] = CIFAR10_CLASSES,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A cifar-10-batches-py folder of random batches; returns {file name: (images, labels)}."""
    folder.mkdir(parents=True, exist_ok=True)
    bytes_keys = style != "protocol5"
    written = {}
    for name in [*PYTHON_TRAIN, "test_batch"]:
        count = TEST_COUNT if name == "test_batch" else TRAIN_PER_BATCH
        images, labels = random_images(rng, count), random_labels(rng, count, len(classes))
        write_pickle(folder / name, batch_dict(images, labels, name, bytes_keys), style)
        written[name] = (images, labels)
    meta = {"label_names": list(classes), "num_cases_per_batch": TRAIN_PER_BATCH, "num_vis": 3072}
    if bytes_keys:  # Python 2 wrote byte strings for both keys and names
        meta = {key.encode(): value for key, value in meta.items()}
        meta[b"label_names"] = [name.encode() for name in classes]
    write_pickle(folder / "batches.meta", meta, style)
    return written


def write_binary_release(folder: Path, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in [*BINARY_TRAIN, "test_batch.bin"]:
        count = TEST_COUNT if name == "test_batch.bin" else TRAIN_PER_BATCH
        images, labels = random_images(rng, count), random_labels(rng, count)
        records = np.concatenate([labels.astype(np.uint8)[:, None], planar_rows(images)], axis=1)
        (folder / name).write_bytes(records.tobytes())
        written[name] = (images, labels)
    # The official file ends with a blank line.
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_CLASSES) + "\n\n")
    return written


def write_image_folder(root: Path, rng: np.random.Generator, classes: tuple[str, ...] = ("cat", "dog", "frog")) -> dict:
    """ROOT/train/<class>/NNNN.png and ROOT/test/<class>/NNNN.png; returns the expected arrays."""
    expected = {}
    for split, per_class in (("train", 4), ("test", 2)):
        all_images, all_labels = [], []
        for label, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            images = random_images(rng, per_class)
            for index, pixels in enumerate(images):
                Image.fromarray(pixels, "RGB").save(root / split / name / f"{index:04d}.png")
            all_images.append(images)
            all_labels += [label] * per_class
        expected[split] = (np.concatenate(all_images), np.asarray(all_labels, dtype=np.int64))
    return expected


def concatenated(written: dict, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([written[name][0] for name in names]), np.concatenate([written[name][1] for name in names])


def tree_snapshot(root: Path) -> list[tuple[str, int]]:
    return sorted((str(path.relative_to(root)), path.stat().st_size) for path in root.rglob("*") if path.is_file())


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# --------------------------------------------------------------------------- planar conversion


def test_planar_rows_become_hwc_pixels() -> None:
    # Independent of the writers above: the R plane comes first, row-major within each plane.
    row = np.concatenate([np.full(1024, 10), np.full(1024, 20), np.full(1024, 30)]).astype(np.uint8)
    row[1 * 32 + 2] = 200  # R of pixel (row 1, column 2)
    row[1024 + 31 * 32 + 0] = 201  # G of pixel (row 31, column 0)
    images = planar_rows_to_hwc(row[None, :])
    assert images.shape == (1, 32, 32, 3) and images.flags.c_contiguous
    assert tuple(images[0, 0, 0]) == (10, 20, 30)
    assert images[0, 1, 2, 0] == 200 and images[0, 31, 0, 1] == 201


# --------------------------------------------------------------------------- python release


@pytest.mark.parametrize("style", ["python2", "protocol2", "protocol5"])
def test_python_release_round_trips_pixel_exactly(tmp_path: Path, rng: np.random.Generator, style: str) -> None:
    written = write_python_release(tmp_path / "cifar-10-batches-py", rng, style)
    splits = load_cifar10(tmp_path, verify=False)
    assert splits.layout == "python" and splits.root == tmp_path / "cifar-10-batches-py"
    assert splits.train.classes == CIFAR10_CLASSES == splits.test.classes
    train_images, train_labels = concatenated(written, PYTHON_TRAIN)
    np.testing.assert_array_equal(splits.train.images, train_images)
    np.testing.assert_array_equal(splits.train.labels, train_labels)
    np.testing.assert_array_equal(splits.test.images, written["test_batch"][0])
    np.testing.assert_array_equal(splits.test.labels, written["test_batch"][1])
    assert splits.train.labels.dtype == np.int64 and len(splits.train) == 5 * TRAIN_PER_BATCH


def test_python2_style_pickles_look_like_the_official_files(tmp_path: Path, rng: np.random.Generator) -> None:
    """The emulation uses Python 2 string opcodes and numpy 1 names, as the real batches do."""
    payload = python2_pickle_bytes(batch_dict(random_images(rng, 2), random_labels(rng, 2), "b", True))
    assert payload.startswith(b"\x80\x02") and b"_codecs" not in payload
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in payload
    assert b"U\x04data" in payload  # SHORT_BINSTRING 'data', a Python 2 str key


def test_verify_rejects_files_that_are_not_the_official_release(tmp_path: Path, rng: np.random.Generator) -> None:
    write_python_release(tmp_path / "cifar-10-batches-py", rng)
    with pytest.raises(DataError) as error:
        load_cifar10(tmp_path)  # verify=True is the default
    message = str(error.value)
    assert "md5 mismatch" in message and "data_batch_1" in message and "\n" not in message
    assert "c99cafc152244af753f735de768cd75f" in message


def test_verify_accepts_files_whose_md5_matches(tmp_path: Path, rng: np.random.Generator, monkeypatch) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_python_release(folder, rng)
    actual = {name: sources.file_md5(folder / name) for name in sources.OFFICIAL_PYTHON_MD5}
    monkeypatch.setattr(sources, "OFFICIAL_PYTHON_MD5", actual)
    assert len(load_cifar10(tmp_path, verify=True).train) == 5 * TRAIN_PER_BATCH


def test_official_md5_list_matches_the_release() -> None:
    assert sources.OFFICIAL_PYTHON_MD5 == {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    }


def test_truncated_pickle_is_a_data_error_naming_the_file(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_python_release(folder, rng)
    payload = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(payload[: len(payload) // 2])
    with pytest.raises(DataError, match=r"data_batch_3: .*truncated"):
        load_cifar10(tmp_path, verify=False)


def test_missing_batch_is_a_data_error_naming_it(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_python_release(folder, rng)
    (folder / "test_batch").unlink()
    with pytest.raises(DataError, match=r"test_batch: missing"):
        load_cifar10(tmp_path, verify=False)


def _replace_batch(folder: Path, name: str, batch: dict) -> None:
    write_pickle(folder / name, batch, "python2")


def test_python_rows_of_3071_bytes_are_a_data_error(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_python_release(folder, rng)
    batch = batch_dict(random_images(rng, 4), random_labels(rng, 4), "x", True)
    batch[b"data"] = batch[b"data"][:, :3071]
    _replace_batch(folder, "data_batch_2", batch)
    with pytest.raises(DataError, match=r"data_batch_2: data must be uint8 \[N, 3072\], got uint8 \(4, 3071\)"):
        load_cifar10(tmp_path, verify=False)


def test_python_data_of_the_wrong_dtype_is_a_data_error(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_python_release(folder, rng)
    batch = batch_dict(random_images(rng, 4), random_labels(rng, 4), "x", True)
    batch[b"data"] = batch[b"data"].astype(np.float32)
    _replace_batch(folder, "test_batch", batch)
    with pytest.raises(DataError, match=r"test_batch: data must be uint8"):
        load_cifar10(tmp_path, verify=False)


@pytest.mark.parametrize("bad_label", [10, -1])
def test_python_labels_out_of_range_are_a_data_error(tmp_path: Path, rng: np.random.Generator, bad_label: int) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_python_release(folder, rng)
    labels = random_labels(rng, 4)
    labels[2] = bad_label
    _replace_batch(folder, "data_batch_5", batch_dict(random_images(rng, 4), labels, "x", True))
    with pytest.raises(DataError, match=rf"data_batch_5: label {bad_label} of record 2 is out of range 0..9"):
        load_cifar10(tmp_path, verify=False)


def test_python_label_count_must_match_images(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_python_release(folder, rng)
    batch = batch_dict(random_images(rng, 4), random_labels(rng, 4), "x", True)
    batch[b"labels"] = batch[b"labels"][:3]
    _replace_batch(folder, "data_batch_1", batch)
    with pytest.raises(DataError, match=r"data_batch_1: 4 images but 3 labels"):
        load_cifar10(tmp_path, verify=False)


def test_python_batch_that_is_not_a_dict_is_a_data_error(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_python_release(folder, rng)
    write_pickle(folder / "batches.meta", [1, 2, 3], "python2")
    with pytest.raises(DataError, match=r"batches.meta: expected a dict, got list"):
        load_cifar10(tmp_path, verify=False)


# --------------------------------------------------------------------------- hostile pickles


class Payload:
    """Pickles as a call of `function(*args)`: what a hostile file does to plain pickle.load."""

    def __init__(self, function, *args) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def hostile_payloads(marker: Path) -> dict[str, tuple[Payload, str]]:
    """name -> (payload that creates `marker` when unpickled by pickle.load, global it names)."""
    return {
        "os.system": (Payload(os.system, f"touch '{marker}'"), "posix.system"),
        "open": (Payload(open, str(marker), "w"), "io.open"),  # Python 3 pickles open as io.open
        "builtins.eval": (Payload(eval, f"open({str(marker)!r}, 'w')"), "builtins.eval"),
        "subprocess": (Payload(subprocess.call, ["touch", str(marker)]), "subprocess.call"),
        # Not every numpy global is admitted: np.save would write a file.
        "numpy.save": (Payload(np.save, str(marker), np.zeros(1)), "numpy.save"),
    }


@pytest.mark.parametrize("name", ["os.system", "open", "builtins.eval", "subprocess", "numpy.save"])
def test_hostile_pickle_is_refused_before_it_runs(tmp_path: Path, rng: np.random.Generator, name: str) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_python_release(folder, rng)
    marker = tmp_path / "pwned"
    payload, global_name = hostile_payloads(marker)[name]
    batch = batch_dict(random_images(rng, 3), random_labels(rng, 3), "x", True)
    batch[b"labels"] = [payload, 1, 2]  # hidden inside an otherwise valid batch
    # Protocol 5: protocol 2 would rename the globals to their Python 2 modules (__builtin__, ...).
    write_pickle(folder / "data_batch_4", batch, "protocol5")

    # The payload is live: plain pickle.load would run it (and create a marker beside ours).
    live_marker = tmp_path / "live"
    write_pickle(tmp_path / "live.pkl", {b"x": hostile_payloads(live_marker)[name][0]}, "protocol5")
    with open(tmp_path / "live.pkl", "rb") as stream:
        pickle.load(stream)
    assert live_marker.exists() or live_marker.with_suffix(".npy").exists()

    with pytest.raises(DataError) as error:
        load_cifar10(tmp_path, verify=False)
    message = str(error.value)
    assert str(folder / "data_batch_4") in message and "refused" in message and global_name in message
    assert "\n" not in message
    assert not marker.exists() and not marker.with_suffix(".npy").exists()


def test_hand_written_builtins_open_pickle_is_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_python_release(folder, rng)

    def opener(target: Path) -> bytes:  # protocol 0: builtins.open(target, "w")
        return b"cbuiltins\nopen\n(V" + str(target).encode() + b"\nVw\ntR."

    with pickle.loads(opener(tmp_path / "live")):  # live: plain pickle creates the file
        pass
    assert (tmp_path / "live").exists()
    marker = tmp_path / "pwned"
    (folder / "batches.meta").write_bytes(opener(marker))
    with pytest.raises(DataError, match=r"batches.meta: refused to unpickle global builtins.open"):
        load_cifar10(tmp_path, verify=False)
    assert not marker.exists()


def test_hostile_pickle_never_reaches_the_unpickler_when_verifying(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_python_release(folder, rng)
    marker = tmp_path / "pwned"
    write_pickle(folder / "data_batch_1", {b"data": Payload(os.system, f"touch '{marker}'")}, "protocol2")
    with pytest.raises(DataError, match="md5 mismatch"):
        load_cifar10(tmp_path, verify=True)
    assert not marker.exists()


def test_codecs_encode_is_admitted_for_latin1_only(tmp_path: Path) -> None:
    import codecs

    path = tmp_path / "codec.pkl"
    write_pickle(path, {b"data": Payload(codecs.encode, "payload", "rot13")}, "protocol2")
    with pytest.raises(DataError, match=r"codec.pkl: not a valid CIFAR-10 pickle .*latin-1 text only"):
        unpickle_restricted(path)
    write_pickle(path, {b"data": b"\xff\x00 bytes"}, "protocol2")
    assert unpickle_restricted(path) == {b"data": b"\xff\x00 bytes"}


def test_admitted_codecs_stand_in_cannot_be_altered_by_a_pickle(tmp_path: Path) -> None:
    """BUILD on an admitted global must not let one file change how the next is read."""
    path = tmp_path / "alter.pkl"
    # protocol 0: setattr(_codecs.encode, "__defaults__", ("rot13",)) through BUILD's slot state
    path.write_bytes(b"c_codecs\nencode\n(N(dV__defaults__\n(Vrot13\ntstb.")
    with pytest.raises(DataError, match=r"alter.pkl: not a valid CIFAR-10 pickle"):
        unpickle_restricted(path)
    write_pickle(path, {b"data": b"still latin-1"}, "protocol2")
    assert unpickle_restricted(path) == {b"data": b"still latin-1"}


# --------------------------------------------------------------------------- binary release


def test_binary_release_round_trips_pixel_exactly(tmp_path: Path, rng: np.random.Generator) -> None:
    written = write_binary_release(tmp_path / "cifar-10-batches-bin", rng)
    splits = load_cifar10(tmp_path)
    assert splits.layout == "binary" and splits.train.classes == CIFAR10_CLASSES
    train_images, train_labels = concatenated(written, BINARY_TRAIN)
    np.testing.assert_array_equal(splits.train.images, train_images)
    np.testing.assert_array_equal(splits.train.labels, train_labels)
    np.testing.assert_array_equal(splits.test.images, written["test_batch.bin"][0])
    np.testing.assert_array_equal(splits.test.labels, written["test_batch.bin"][1])


def test_binary_file_of_3071_byte_records_is_a_data_error(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    write_binary_release(folder, rng)
    short_records = rng.integers(0, 10, size=(5, 3072), dtype=np.uint8)  # 1 label + 3071 pixels
    (folder / "data_batch_3.bin").write_bytes(short_records.tobytes())
    with pytest.raises(DataError, match=r"data_batch_3.bin: 15360 bytes is not a whole number of 3073-byte records"):
        load_cifar10(tmp_path)


def test_empty_binary_file_is_a_data_error(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    write_binary_release(folder, rng)
    (folder / "test_batch.bin").write_bytes(b"")
    with pytest.raises(DataError, match=r"test_batch.bin: 0 bytes"):
        load_cifar10(tmp_path)


def test_binary_labels_out_of_range_are_a_data_error(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    write_binary_release(folder, rng)
    records = bytearray((folder / "data_batch_1.bin").read_bytes())
    records[3 * 3073] = 10  # label byte of record 3
    (folder / "data_batch_1.bin").write_bytes(bytes(records))
    with pytest.raises(DataError, match=r"data_batch_1.bin: label 10 of record 3 is out of range 0..9"):
        load_cifar10(tmp_path)


def test_binary_release_without_class_names_is_a_data_error(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    write_binary_release(folder, rng)
    (folder / "batches.meta.txt").unlink()
    with pytest.raises(DataError, match=r"batches.meta.txt: missing"):
        load_cifar10(tmp_path)


# --------------------------------------------------------------------------- image folders


def test_image_folder_round_trips_pixel_exactly(tmp_path: Path, rng: np.random.Generator) -> None:
    expected = write_image_folder(tmp_path, rng)
    # Not images, or hidden (macOS "._" forks): ignored.
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "cat" / "._0000.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()  # not a class
    splits = load_cifar10(tmp_path)
    assert splits.layout == "image-folder" and splits.train.classes == ("cat", "dog", "frog")
    for split in ("train", "test"):
        np.testing.assert_array_equal(getattr(splits, split).images, expected[split][0])
        np.testing.assert_array_equal(getattr(splits, split).labels, expected[split][1])


def test_describe_summarises_both_splits(tmp_path: Path, rng: np.random.Generator) -> None:
    write_image_folder(tmp_path, rng)
    summary = describe(load_cifar10(tmp_path))
    assert summary == {
        "layout": "image-folder",
        "root": str(tmp_path),
        "classes": ["cat", "dog", "frog"],
        "train": {"count": 12, "per_class": {"cat": 4, "dog": 4, "frog": 4}},
        "test": {"count": 6, "per_class": {"cat": 2, "dog": 2, "frog": 2}},
    }


def _bad_image_case(tmp_path: Path, rng: np.random.Generator, case: str) -> tuple[Path, str]:
    """Damage one file of a written image folder; returns (the file or folder, expected message)."""
    write_image_folder(tmp_path, rng)
    target = tmp_path / "train" / "dog" / "0002.png"
    if case == "garbage":
        target.write_bytes(b"this is not a png at all")
        return target, "cannot decode image"
    if case == "truncated":
        target.write_bytes(target.read_bytes()[:200])
        return target, "cannot decode image"
    if case == "31x32":
        Image.fromarray(random_images(rng, 1)[0][:, :31], "RGB").save(target)
        return target, "expected a 32 x 32 RGB image, got 31 x 32"
    if case == "grayscale":
        Image.fromarray(random_images(rng, 1)[0][:, :, 0], "L").save(target)
        return target, "expected an RGB image, got mode L"
    if case == "rgba":
        Image.fromarray(np.dstack([random_images(rng, 1)[0], np.full((32, 32), 255, np.uint8)]), "RGBA").save(target)
        return target, "expected an RGB image, got mode RGBA"
    if case == "empty class":
        for path in (tmp_path / "test" / "frog").iterdir():
            path.unlink()
        return tmp_path / "test" / "frog", "class folder holds no PNG or JPEG images"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["garbage", "truncated", "31x32", "grayscale", "rgba", "empty class"])
def test_bad_image_folder_is_a_data_error_naming_the_file(tmp_path: Path, rng: np.random.Generator, case: str) -> None:
    culprit, reason = _bad_image_case(tmp_path, rng, case)
    before = tree_snapshot(tmp_path)
    with pytest.raises(DataError) as error:
        load_cifar10(tmp_path)
    message = str(error.value)
    assert message.startswith(f"{culprit}: ") and reason in message and "\n" not in message
    assert tree_snapshot(tmp_path) == before  # nothing written


def test_train_and_test_must_have_the_same_classes(tmp_path: Path, rng: np.random.Generator) -> None:
    write_image_folder(tmp_path, rng)
    (tmp_path / "test" / "frog").rename(tmp_path / "test" / "toad")
    with pytest.raises(DataError, match=r"different class folders \(only in train: frog; only in test: toad\)"):
        load_cifar10(tmp_path)


# --------------------------------------------------------------------------- layout detection


def test_detect_layout_finds_each_layout_from_either_folder(tmp_path: Path, rng: np.random.Generator) -> None:
    write_python_release(tmp_path / "py" / "cifar-10-batches-py", rng)
    write_binary_release(tmp_path / "bin" / "cifar-10-batches-bin", rng)
    write_image_folder(tmp_path / "images", rng)
    renamed = tmp_path / "renamed-python"
    write_python_release(renamed, rng)
    assert detect_layout(tmp_path / "py") == ("python", tmp_path / "py" / "cifar-10-batches-py")
    assert detect_layout(tmp_path / "py" / "cifar-10-batches-py") == ("python", tmp_path / "py" / "cifar-10-batches-py")
    assert detect_layout(renamed) == ("python", renamed)
    assert detect_layout(tmp_path / "bin") == ("binary", tmp_path / "bin" / "cifar-10-batches-bin")
    binary = tmp_path / "bin" / "cifar-10-batches-bin"
    assert detect_layout(binary) == ("binary", binary)
    assert detect_layout(tmp_path / "images") == ("image-folder", tmp_path / "images")


def test_missing_root_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=rf"^{tmp_path / 'nowhere'}: no such folder$"):
        load_cifar10(tmp_path / "nowhere")


def test_unknown_layout_is_a_usage_error_listing_what_was_expected(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()  # train/ without test/
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(UsageError) as error:
        load_cifar10(tmp_path)
    message = str(error.value)
    assert message.startswith(f"{tmp_path}: not a CIFAR-10 folder")
    assert "cifar-10-batches-py/" in message and "cifar-10-batches-bin/" in message and "train/ and test/" in message


def test_a_file_as_root_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match=r"file: not a folder"):
        detect_layout(tmp_path / "file")


# --------------------------------------------------------------------------- the real data


def test_real_folder_holds_the_full_data_set(full_data_root: Path, full_splits) -> None:
    assert detect_layout(full_data_root) == ("image-folder", full_data_root)
    summary = describe(full_splits)
    assert summary["layout"] == "image-folder" and summary["classes"] == list(CIFAR10_CLASSES)
    assert summary["train"] == {"count": 50_000, "per_class": {name: 5_000 for name in CIFAR10_CLASSES}}
    assert summary["test"] == {"count": 10_000, "per_class": {name: 1_000 for name in CIFAR10_CLASSES}}
    # Real photos, not a constant fill: every channel spans most of 0..255.
    assert full_splits.train.images.dtype == np.uint8
    assert int(full_splits.test.images.max()) > 250 and int(full_splits.test.images.min()) < 5
