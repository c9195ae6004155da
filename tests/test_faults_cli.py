"""Faults of the files and the disk, through the `resnet-cifar` entry point: broken entries in a
real image folder (a FIFO, links that dangle or loop, an unreadable class folder), a disk that
fills up under `download` and `eval`, a read-only download folder, and a decompression bomb given
to `predict`. Each must end in one line on stderr with the README's exit code, never a traceback
or a hang, and leave no temp file and the previous good file as it was.

How the faults are made real although the tests run as root (as CI does):
- a full disk is a small tmpfs, mounted by the test and unmounted in the fixture's teardown;
  where mounting is not allowed, the same tests run with the process's writes into that folder
  patched to fail with ENOSPC (``fail_writes_under``);
- a read-only folder is that tmpfs remounted read-only (root cannot write there either);
- an unreadable folder is chmod 000 with the child process started without
  CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH (dropped from its bounding set before exec), so even
  root's child is denied; as a normal user, chmod alone denies it.

Those cases, the full disks and a FIFO (which would block whoever opened it) run in a real child
process; the others run the CLI in this process (helpers.run_cli_in_process: the same exit code
and stderr, warnings included, without ~2.5 s of interpreter start-up each).
"""

from __future__ import annotations

import errno
import inspect
import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest

from resnet_cifar.data.types import CIFAR10_CLASSES
from resnet_cifar import files
from resnet_cifar.errors import DataError, UsageError
from resnet_cifar.evaluation import plots

from helpers import (
    assert_one_line_error,
    drop_file_permission_override,
    http_server,
    random_resnet18,
    run_cli_in_process,
    smoke_config,
    write_checkpoint,
)

TIMEOUT_S = 120
IMAGES_PER_CLASS = 2
DISK_SIZE = "512k"


# --------------------------------------------------------------------------- helpers


def fail_writes_under(folder: str) -> Callable[[], None]:
    """Make every file the project opens with os.fdopen under ``folder`` fail its writes with
    ENOSPC, as a full disk does; returns the undo. The stand-in for a tmpfs where mounting is not
    allowed; its source also runs at the start of the CLI subprocesses (see ``run_cli_with_prelude``)."""
    import errno as errno_module
    import os as os_module

    real_fdopen = os_module.fdopen

    class FullFile:
        def __init__(self, stream):
            self._stream = stream

        def write(self, data):
            raise OSError(errno_module.ENOSPC, os_module.strerror(errno_module.ENOSPC))

        def __getattr__(self, name):
            return getattr(self._stream, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            self._stream.close()

    def fdopen(fd, *args, **kwargs):
        stream = real_fdopen(fd, *args, **kwargs)
        where = os_module.readlink(f"/proc/self/fd/{fd}")
        return FullFile(stream) if where.startswith(folder.rstrip("/") + "/") else stream

    os_module.fdopen = fdopen

    def undo() -> None:
        os_module.fdopen = real_fdopen

    return undo


@dataclass
class SmallDisk:
    """A folder on a small file system: a real tmpfs, or (where mounting is refused) a plain
    folder whose writes ``fail_writes_under`` makes fail once ``fill`` is called."""

    folder: Path
    mounted: bool
    full: bool = False

    def fill(self) -> None:
        """Leave no free byte (tmpfs), or switch the ENOSPC patch on (fallback)."""
        self.full = True
        if not self.mounted:
            return
        block = b"\0" * 4096
        with open(self.folder / "filler", "wb", buffering=0) as filler:
            try:
                while True:
                    filler.write(block)
            except OSError as error:
                assert error.errno == errno.ENOSPC, error
        with open(self.folder / "filler", "ab", buffering=0) as filler:
            try:  # the last partial page, if the file system's accounting left one
                while filler.write(b"\0"):
                    pass
            except OSError as error:
                assert error.errno == errno.ENOSPC, error

    def prelude(self) -> str:
        """Python source to run in a CLI subprocess before the command (empty on a real tmpfs)."""
        if self.mounted or not self.full:
            return ""
        source = inspect.getsource(fail_writes_under)  # its annotation names Callable
        return f"from typing import Callable\n{source}\nfail_writes_under({str(self.folder)!r})\n"


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = shutil.which("mount") is not None
    mounted = mounted and _mount("-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(folder)).returncode == 0
    try:
        yield SmallDisk(folder, mounted)
    finally:
        if mounted:
            result = subprocess.run(["umount", str(folder)], capture_output=True, text=True, timeout=30)
            if result.returncode != 0:  # still busy a moment after a child exited: detach it
                subprocess.run(["umount", "-l", str(folder)], check=True, timeout=30)


@pytest.fixture()
def full_disk_in_process(small_disk: SmallDisk) -> Iterator[SmallDisk]:
    """small_disk, filled; in this process too when it is the patched fallback."""
    small_disk.fill()
    undo = None if small_disk.mounted else fail_writes_under(str(small_disk.folder))
    try:
        yield small_disk
    finally:
        if undo is not None:
            undo()


def run_cli_with_prelude(*args: str, env: dict[str, str], prelude: str = "", **kwargs) -> subprocess.CompletedProcess[str]:
    """`resnet-cifar ARGS` in a fresh interpreter (``prelude`` first), with a timeout: a hang fails."""
    code = f"import sys\n{prelude}\nfrom resnet_cifar.cli.main import run\nrun(sys.argv[1:])\n"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=TIMEOUT_S,
        **kwargs,
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (but the filler) with its bytes."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != "filler"
    }


def temp_files(folder: Path) -> list[str]:
    return [path.name for path in folder.rglob(".*")]


# --------------------------------------------------------------------------- image folders


def small_image_folder(root: Path, real_data_root: Path) -> Path:
    """train/ and test/ with the 10 classes, IMAGES_PER_CLASS real JPEGs each (copies: a child
    without CAP_DAC_READ_SEARCH must still read them, whatever the shared folder's modes)."""
    for split in ("train", "test"):
        for name in CIFAR10_CLASSES:
            (root / split / name).mkdir(parents=True)
            for source in sorted((real_data_root / split / name).iterdir())[:IMAGES_PER_CLASS]:
                shutil.copyfile(source, root / split / name / source.name)
    return root




@pytest.fixture()
def image_root(tmp_path: Path, real_data_root: Path) -> Path:
    return small_image_folder(tmp_path / "images", real_data_root)


def _make_fault(root: Path, case: str) -> tuple[Path, str]:
    """Put one broken entry into the image folder; returns (the path named, the reason)."""
    if case == "fifo":
        culprit = root / "train" / "cat" / "x.jpg"
        os.mkfifo(culprit)  # nobody ever writes to it: opening it for reading blocks forever
        return culprit, "not a regular file (a FIFO)"
    if case == "dangling link":
        culprit = root / "train" / "dog" / "zz.jpg"
        culprit.symlink_to(root / "train" / "dog" / "gone.jpg")
        return culprit, "dangling symbolic link"
    if case == "link loop":
        culprit = root / "test" / "frog" / "loop.jpg"
        culprit.symlink_to("loop2.jpg")
        (root / "test" / "frog" / "loop2.jpg").symlink_to("loop.jpg")
        return culprit, "symbolic link loop"
    if case == "socket":
        import socket

        culprit = root / "train" / "ship" / "s.png"
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(culprit))
        listener.close()  # the socket file stays
        return culprit, "not a regular file (a socket)"
    if case == "unreadable class folder":
        culprit = root / "test" / "horse"
        culprit.chmod(0)
        return culprit, "Permission denied"
    raise AssertionError(case)


# Faults a real child process must meet: root's child without its permission override (this process
# keeps it), and a FIFO, whose opening would block forever (a child's hang ends at its timeout).
IN_A_CHILD = ("fifo", "unreadable class folder")


@pytest.mark.parametrize("no_cache", [False, True], ids=["cache", "no-cache"])
@pytest.mark.parametrize("case", ["fifo", "dangling link", "link loop", "socket", "unreadable class folder"])
def test_a_broken_entry_in_an_image_folder_is_one_line_naming_it(
    image_root: Path, tmp_path: Path, case: str, no_cache: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    culprit, reason = _make_fault(image_root, case)
    args = ("data", str(image_root), *(["--no-cache"] if no_cache else []))
    env = {"RESNET_CIFAR_CACHE": str(cache)}
    try:
        if case in IN_A_CHILD:
            result = run_cli_with_prelude(
                *args,
                env=env,
                # Root ignores chmod 000; without these capabilities its child does not.
                preexec_fn=drop_file_permission_override if os.geteuid() == 0 else None,
            )
        else:
            result = run_cli_in_process(capsys, *args, env=env)
    finally:
        if case == "unreadable class folder":
            culprit.chmod(0o755)  # so tmp_path can be cleaned up
    line = assert_one_line_error(result, 1, f"error: {culprit}: ", reason)
    if no_cache:
        assert not cache.exists()
    else:  # nothing cached for a folder that failed
        assert not cache.exists() or not any(cache.iterdir()), line


def test_the_intact_folder_loads_and_a_link_to_a_real_image_is_read(
    image_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The other side of the refusals: links to regular files stay welcome (the GPU run links its
    images), so the checks above refuse the entry, not symlinks as such."""
    source = sorted((image_root / "train" / "cat").iterdir())[0]
    (image_root / "train" / "cat" / "linked.jpg").symlink_to(source)
    for extra in ([], ["--no-cache"]):
        result = run_cli_in_process(capsys, "data", str(image_root), "--json", *extra, env={"RESNET_CIFAR_CACHE": str(tmp_path / "c")})
        assert result.returncode == 0, result.stderr
        assert '"cat": 3' in result.stdout and f'"count": {10 * IMAGES_PER_CLASS + 1}' in result.stdout


# --------------------------------------------------------------------------- download


class _Body:
    def __init__(self, body: bytes) -> None:
        self.body = body


@pytest.fixture()
def archive_server() -> Iterator[tuple[str, _Body]]:
    """A local HTTP server on 127.0.0.1 serving one body at /cifar-10-python.tar.gz."""
    served = _Body(b"")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            try:
                self.send_response(200)
                self.send_header("Content-Length", str(len(served.body)))
                self.end_headers()
                self.wfile.write(served.body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading (its disk was full)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    with http_server(Handler) as base_url:
        yield f"{base_url}/cifar-10-python.tar.gz", served


NO_PROXY = {"no_proxy": "*", "http_proxy": "", "HTTP_PROXY": "", "all_proxy": "", "ALL_PROXY": ""}


def test_a_disk_that_fills_up_during_download_is_one_line_and_keeps_the_previous_archive(
    small_disk: SmallDisk, archive_server: tuple[str, _Body]
) -> None:
    url, served = archive_server
    # Twice the disk (512 KiB): the tmpfs fills up in the middle of the body, as a real disk would.
    served.body = np.random.default_rng(0).bytes(1 << 20)
    data_dir = small_disk.folder / "data"
    data_dir.mkdir()
    previous = data_dir / "cifar-10-python.tar.gz"
    previous.write_bytes(b"an earlier, incomplete archive" * 100)  # not the official md5: fetched again
    before = snapshot(small_disk.folder)
    if not small_disk.mounted:
        small_disk.fill()
    result = run_cli_with_prelude("download", "--data-dir", str(data_dir), "--url", url, env=NO_PROXY, prelude=small_disk.prelude())
    assert_one_line_error(result, 1, f"error: {previous}: cannot write the download", "No space left on device")
    assert snapshot(small_disk.folder) == before  # the previous archive as it was
    assert temp_files(small_disk.folder) == []  # no .cifar-10-python.tar.gz.*.part left


def test_a_read_only_download_folder_is_a_usage_error_naming_it(
    small_disk: SmallDisk, archive_server: tuple[str, _Body]
) -> None:
    url, served = archive_server
    served.body = b"never fetched into the folder"
    data_dir = small_disk.folder / "data"
    data_dir.mkdir()
    if small_disk.mounted:  # a real read-only file system: root cannot write there either
        assert _mount("-o", "remount,ro", str(small_disk.folder)).returncode == 0
        preexec = None
        reason = "Read-only file system"
    else:
        data_dir.chmod(0o555)
        preexec = drop_file_permission_override if os.geteuid() == 0 else None
        reason = "Permission denied"
    try:
        result = run_cli_with_prelude("download", "--data-dir", str(data_dir), "--url", url, env=NO_PROXY, preexec_fn=preexec)
    finally:
        if small_disk.mounted:
            _mount("-o", "remount,rw", str(small_disk.folder))
        data_dir.chmod(0o755)
    assert_one_line_error(result, 2, f"error: {data_dir}: cannot write into the data folder", reason)
    assert list(data_dir.iterdir()) == []


def test_download_verified_into_a_missing_folder_is_unwritable_folder(tmp_path: Path) -> None:
    """The library side: download_verified tells a folder it cannot write into (UnwritableFolder,
    an OSError) from a disk that failed (DataError), before any network access."""
    from resnet_cifar.files import UnwritableFolder, download_verified

    with pytest.raises(UnwritableFolder) as error:
        download_verified(
            "http://127.0.0.1:9/x", tmp_path / "missing" / "x.tar.gz", algorithm="md5", verify=lambda digest: None
        )
    assert error.value.errno == errno.ENOENT and str(tmp_path / "missing") in str(error.value)


# --------------------------------------------------------------------------- eval's report files


def _checkpoint(folder: Path, data_dir: Path) -> Path:
    """A ResNet-18 (ImageNet stem: cheap at 32 px) checkpoint in the trainer's format, random weights."""
    return write_checkpoint(folder / "best.pt", smoke_config(data_dir), random_resnet18(), epoch=1)


def test_a_full_disk_under_eval_is_one_line_and_keeps_the_previous_report(
    small_disk: SmallDisk, image_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = _checkpoint(tmp_path, image_root)
    out = small_disk.folder / "eval"
    env = {"RESNET_CIFAR_CACHE": str(tmp_path / "cache")}
    # The previous report, written while the disk has room: in this process (nothing about the
    # process or the full disk yet); the eval that meets the full disk runs in a child below.
    first = run_cli_in_process(capsys, "eval", str(checkpoint), "--data-dir", str(image_root), "--out", str(out), env=env)
    assert first.returncode == 0, first.stderr
    written = snapshot(out)
    assert set(written) == {"metrics.json", "confusion_matrix.csv", "confusion_matrix.png", "report.html"}
    small_disk.fill()
    again = run_cli_with_prelude(
        "eval", str(checkpoint), "--data-dir", str(image_root), "--out", str(out), env=env, prelude=small_disk.prelude()
    )
    assert_one_line_error(again, 1, f"error: {out / 'metrics.json'}: cannot write", "No space left on device")
    assert snapshot(out) == written  # every previous file as it was
    assert temp_files(out) == []


@pytest.mark.parametrize("writer", ["metrics.json", "confusion_matrix.csv", "confusion_matrix.png", "report.html"])
def test_each_report_file_on_a_full_disk_is_a_data_error_naming_it(
    full_disk_in_process: SmallDisk, writer: str
) -> None:
    """Every writer of eval's files, in this process on the filled disk: DataError (exit 1)
    naming the file, the previous file kept, no temp file. report.html goes through the same
    files.atomic_write as resnet_cifar.report.write_report does, with a callback here."""
    folder = full_disk_in_process.folder
    target = folder / writer
    matrix = np.eye(2, dtype=np.int64)
    write = {
        "metrics.json": lambda: plots.write_metrics_json({"accuracy": 0.5}, target),
        "confusion_matrix.csv": lambda: plots.write_confusion_csv(matrix, ["a", "b"], target),
        "confusion_matrix.png": lambda: plots.plot_confusion_matrix(matrix, ["a", "b"], target),
        "report.html": lambda: files.atomic_write(target, lambda handle: handle.write(b"<html>" * 5000)),
    }[writer]
    with pytest.raises(DataError) as error:
        write()
    message = str(error.value)
    assert message.startswith(f"{target}: cannot write") and "No space left on device" in message, message
    assert not target.exists() and temp_files(folder) == []


def test_a_previous_report_file_survives_a_full_disk(small_disk: SmallDisk) -> None:
    target = small_disk.folder / "metrics.json"
    plots.write_metrics_json({"accuracy": 0.25}, target)
    previous = target.read_bytes()
    small_disk.fill()
    undo = None if small_disk.mounted else fail_writes_under(str(small_disk.folder))
    try:
        with pytest.raises(DataError, match="No space left on device"):
            plots.write_metrics_json({"accuracy": 0.75, "padding": "x" * 10_000}, target)
    finally:
        if undo is not None:
            undo()
    assert target.read_bytes() == previous and temp_files(small_disk.folder) == []


def test_an_unwritable_report_folder_stays_a_usage_error(tmp_path: Path) -> None:
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("not a folder")
    with pytest.raises(UsageError, match=f"cannot write into {in_the_way}"):
        plots.write_metrics_json({"accuracy": 1.0}, in_the_way / "metrics.json")


# --------------------------------------------------------------------------- predict


def blank_png(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit black PNG of width x height: a few KB on disk, any number of pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte "none", then the packed bits
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize(
    "size",
    [(10_000, 10_000), (20_000, 20_000)],
    ids=["over the limit (Pillow warns)", "over twice the limit (Pillow raises)"],
)
def test_predict_refuses_a_decompression_bomb_in_one_line(
    tmp_path: Path, image_root: Path, size: tuple[int, int], capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    width, height = size
    assert width * height > Image.MAX_IMAGE_PIXELS  # the premise: both are over Pillow's limit
    bomb = blank_png(tmp_path / "bomb.png", width, height)
    assert bomb.stat().st_size < 100_000
    checkpoint = _checkpoint(tmp_path, image_root)
    result = run_cli_in_process(capsys, "predict", str(checkpoint), str(bomb))  # a warning would reach stderr
    line = assert_one_line_error(
        result, 1, f"error: {bomb}: refusing to decode", f"{width * height:,} pixels", f"{Image.MAX_IMAGE_PIXELS:,}"
    )
    assert "DecompressionBombWarning" not in result.stderr, line


def test_predict_still_reads_an_image_just_under_the_limit(
    tmp_path: Path, image_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The refusal is at Pillow's limit, not below it: a big (but allowed) image is predicted."""
    bomb = blank_png(tmp_path / "big.png", 4_000, 4_000)
    checkpoint = _checkpoint(tmp_path, image_root)
    result = run_cli_in_process(capsys, "predict", str(checkpoint), str(bomb), "--json")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert str(bomb) in result.stdout


def test_predict_refuses_a_fifo_without_opening_it(tmp_path: Path, image_root: Path) -> None:
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    checkpoint = _checkpoint(tmp_path, image_root)
    result = run_cli_with_prelude("predict", str(checkpoint), str(fifo), env={})
    assert_one_line_error(result, 2, f"error: {fifo}: not a file")


def test_blank_png_is_a_real_image(tmp_path: Path) -> None:
    """The helper's file decodes (under the limit) to the size it declares: the bomb tests test
    Pillow's limit, not a broken file."""
    from PIL import Image

    with Image.open(blank_png(tmp_path / "small.png", 300, 200)) as image:
        image.load()
        assert image.size == (300, 200) and image.mode == "1"
        assert not np.asarray(image).any()  # every pixel decoded, all black
