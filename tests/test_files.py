"""resnet_cifar.files' one file writer: atomic_write (bytes, text, a callback) and atomic_path (for
writers that need a path): the new file or the old one, never half; one error class and one
wording; the umask's permissions. The faults of a real full or read-only disk are in
test_faults_cli.py."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from resnet_cifar.errors import DataError, UsageError
from resnet_cifar.files import UnwritableFolder, WriteError, atomic_path, atomic_write, check_writable


def names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def write_through_a_path(target: Path, text: str) -> None:
    """atomic_write's job done through atomic_path, as an exporter does."""
    with atomic_path(target) as temp:
        temp.write_text(text)


def test_atomic_path_renames_the_written_file_onto_the_target(tmp_path: Path) -> None:
    target = tmp_path / "out" / "model.onnx"  # the folder is made
    with atomic_path(target) as temp:
        assert temp.parent == target.parent and temp.name.startswith(".model.onnx.") and temp.suffix == ".tmp"
        assert temp.is_file() and temp.stat().st_size == 0  # created (empty): the name is taken
        temp.write_bytes(b"the model")
        assert not target.exists()  # nothing is at the target before the block ends
    assert target.read_bytes() == b"the model" and names(target.parent) == ["model.onnx"]


def test_atomic_path_takes_a_writer_that_replaces_the_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    with atomic_path(target) as temp:
        temp.unlink()  # as an exporter that writes a new file at the path it is given
        temp.write_bytes(b"new file")
    assert target.read_bytes() == b"new file" and names(tmp_path) == ["model.pt"]


@pytest.mark.parametrize("failure", [RuntimeError("the exporter failed"), KeyboardInterrupt()], ids=["error", "interrupt"])
def test_a_failing_block_keeps_the_previous_file_and_removes_the_temp(tmp_path: Path, failure: BaseException) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(type(failure)) as caught:
        with atomic_path(target) as temp:
            temp.write_bytes(b"half")
            raise failure
    assert caught.value is failure  # not wrapped: only the disk's errors become a WriteError
    assert target.read_bytes() == b"previous" and names(tmp_path) == ["model.onnx"]


def test_a_disk_error_in_the_block_is_a_write_error_naming_the_target(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(WriteError) as caught:
        with atomic_path(target) as temp:
            temp.write_bytes(b"half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(caught.value) == f"{target}: cannot write (No space left on device)"
    assert isinstance(caught.value, DataError) and caught.value.exit_code == 1
    assert not isinstance(caught.value, UsageError)
    assert target.read_bytes() == b"previous" and names(tmp_path) == ["model.onnx"]


@pytest.mark.parametrize("write", [atomic_write, write_through_a_path], ids=["atomic_write", "atomic_path"])
def test_a_full_disk_at_the_rename_reads_the_same_for_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("previous")

    def full(source: object, destination: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(WriteError) as caught:
        write(target, "{}")
    assert str(caught.value) == f"{target}: cannot write (No space left on device)"
    assert target.read_text() == "previous" and names(tmp_path) == ["metrics.json"]


@pytest.mark.parametrize("write", [atomic_write, write_through_a_path], ids=["atomic_write", "atomic_path"])
def test_a_folder_that_cannot_be_written_into_is_one_usage_error(tmp_path: Path, write) -> None:
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("not a folder")
    for target in (in_the_way / "x.json", in_the_way / "deeper" / "x.json"):
        with pytest.raises(UnwritableFolder) as caught:
            write(target, "{}")
        error = caught.value
        assert isinstance(error, UsageError) and isinstance(error, WriteError) and error.exit_code == 2
        assert str(error) == f"cannot write into {target.parent} (Not a directory)" and error.errno == errno.ENOTDIR
    assert names(tmp_path) == ["a-file"]


@pytest.mark.parametrize(
    ("code", "expected"),
    [(errno.EACCES, "cannot write into {folder} (Permission denied)"), (errno.ENOSPC, "{target}: cannot write (No space left on device)")],
    ids=["denied", "full"],
)
def test_check_writable_fails_as_the_write_would_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, expected: str
) -> None:
    target = tmp_path / "model.onnx"
    check_writable(target)
    assert names(tmp_path) == []

    def refused(*args: object, **kwargs: object) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "open", refused)
    with pytest.raises(WriteError) as caught:
        check_writable(target)
    assert str(caught.value) == expected.format(folder=tmp_path, target=target)
    assert caught.value.exit_code == (2 if code == errno.EACCES else 1) and names(tmp_path) == []


def test_written_files_get_the_umask_permissions(tmp_path: Path) -> None:
    previous = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a.json", "{}")
        write_through_a_path(tmp_path / "b.onnx", "x")
    finally:
        os.umask(previous)
    assert {path.name: path.stat().st_mode & 0o777 for path in tmp_path.iterdir()} == {"a.json": 0o640, "b.onnx": 0o640}
