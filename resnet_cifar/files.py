"""Small file helpers the whole package shares: atomic writes, hashing, verified downloads, the
default cache folder, and short error texts.

This is the lowest module with ``errors``: it imports nothing else of the package, and no torch,
so any module (and the CLI) can use it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import json
import math
import os
import pickle
import re
import secrets
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Union

from resnet_cifar.errors import DataError, UsageError

__all__ = [
    "DownloadError",
    "UnwritableFolder",
    "WriteError",
    "atomic_path",
    "atomic_write",
    "download_verified",
    "file_digest",
    "first_line",
    "json_ready",
    "json_text",
    "one_line",
    "user_cache_dir",
    "weights_only_refusal",
]

# What atomic_write writes: bytes, text (UTF-8), or a callback that writes into the binary file.
Content = Union[bytes, memoryview, str, Callable[[IO[bytes]], None]]
ProgressCallback = Callable[[int, Union[int, None]], None]

HASH_CHUNK = 1 << 20
DOWNLOAD_CHUNK = 256 * 1024

_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


# --------------------------------------------------------------------------- atomic write


class WriteError(DataError):
    """A file could not be written: the one error of every writer of a run, report or export file.

    One line, ``"{path}: cannot write ({reason})"``. Exit 1: the run failed (a disk that filled up,
    a quota, an I/O error). The previous file at ``path`` is as it was and no temp file is left.
    """

    def __init__(self, path: Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(self._text())

    def _text(self) -> str:
        return f"{self.path}: cannot write ({self.reason})"


class UnwritableFolder(WriteError, UsageError):
    """The folder of a write cannot be created or written into (read-only, no permission, a file in
    the way, missing where it is not created): nothing was written. A WriteError, and a UsageError
    (exit 2): the folder is the user's to fix, not a failed run. One line, ``"cannot write into
    {folder} ({reason})"``; ``path`` is the folder, ``errno`` and ``strerror`` the failing call's,
    for callers that word it their own way (the data folder of a download).
    """

    exit_code = 2

    def __init__(self, folder: Path, error: OSError) -> None:
        self.errno = error.errno
        self.strerror = error.strerror or str(error)
        super().__init__(folder, self.strerror)

    def _text(self) -> str:
        return f"cannot write into {self.path} ({self.reason})"


def atomic_write(path: Path, content: Content) -> None:
    """Write ``content`` to ``path`` so that a reader sees the old file or the new one, never half.

    ``content`` is bytes, text (UTF-8), or a callback that writes into the open binary file (a
    figure's savefig, a page). The steps and the rules are ``atomic_path``'s; the bytes go
    through ``os.fdopen``, flushed and fsynced before the rename.

    Raises WriteError naming ``path`` (exit 1) when the write fails, UnwritableFolder (exit 2) when
    the folder cannot be created or written into; whatever else ``content`` raises propagates.
    """
    with _replacing(Path(path)) as (descriptor, _):
        with os.fdopen(descriptor, "wb") as out:
            if callable(content):
                content(out)
            else:
                out.write(content.encode("utf-8") if isinstance(content, str) else content)
            out.flush()
            os.fsync(out.fileno())


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temp path for a writer that needs a path rather than bytes (an ONNX or TorchScript
    exporter, safetensors); when the block ends, its file becomes ``path``.

    The temp file is a hidden, empty ``.NAME.XXXXXXXX.tmp`` in ``path``'s folder (created if
    needed; same file system, so the rename is atomic). When the block ends without an error, the
    file is fsynced and renamed over ``path`` with os.replace, then the folder is fsynced so the
    rename survives a power cut. When the block raises, KeyboardInterrupt included, the temp file
    is removed and ``path`` keeps its previous content; an OSError (the writer's disk filled up)
    is raised as WriteError naming ``path``, anything else as it was. The writer may replace the
    temp file (write a new one at that path) but must leave a file there.

    Permissions: a written file gets what any new file gets under the user's umask (0o666 less
    the umask: 0o644 under the usual 022), as ``open()`` would give it; not mkstemp's private
    0o600, since run folders, reports and exports are meant to be read by others, nor a fixed mode
    that would ignore a stricter umask. The kernel applies the umask when the temp file is
    created, so no thread ever changes the process's umask to read it.
    """
    with _replacing(Path(path)) as (descriptor, temp):
        os.close(descriptor)
        yield temp
        _fsync_file(temp)


# Errors of the disk rather than of the folder: the same folder works again once there is room.
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})
_TEMP_ATTEMPTS = 100


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[tuple[int, Path]]:
    """A new temp file beside ``path`` (its open descriptor, which the block owns, and its path),
    renamed over ``path`` when the block ends; see ``atomic_path`` for the rules."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as error:  # a file where the folder should be
        raise UnwritableFolder(path.parent, NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))) from error
    except OSError as error:
        raise _creation_error(path, error) from error
    descriptor, temp = _new_temp_file(path, ".tmp")
    try:
        try:
            yield descriptor, temp
            os.replace(temp, path)
        except OSError as error:
            raise WriteError(path, error.strerror or str(error)) from error
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    try:
        _fsync_folder(path.parent)
    except OSError as error:  # the new file is in place, but its rename may not survive a power cut
        raise WriteError(path, error.strerror or str(error)) from error


def _new_temp_file(path: Path, suffix: str) -> tuple[int, Path]:
    """Create ``.NAME.XXXXXXXX<suffix>`` in ``path``'s folder, open for writing, with the umask's
    permissions (see ``atomic_path``); returns its descriptor and path.

    Raises UnwritableFolder when the folder is missing or cannot be written into, WriteError
    naming ``path`` when the disk is full (ENOSPC, EDQUOT) or failed (EIO).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        for _ in range(_TEMP_ATTEMPTS):
            temp = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"
            try:
                return os.open(temp, flags, 0o666), temp
            except FileExistsError:
                continue
        raise FileExistsError(errno.EEXIST, "no free temp file name", str(path.parent))
    except OSError as error:
        raise _creation_error(path, error) from error


def _creation_error(path: Path, error: OSError) -> WriteError:
    """``error`` (making ``path``'s folder or a file in it) as UnwritableFolder, unless the disk
    itself failed (full, over quota, an I/O error): that is a failed write of ``path``."""
    if error.errno in _DISK_ERRNOS:
        return WriteError(path, error.strerror or str(error))
    return UnwritableFolder(path.parent, error)


def _fsync_file(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_folder(folder: Path) -> None:
    if os.name == "nt":  # Windows cannot open a folder for fsync; its renames are durable enough
        return
    _fsync_file(folder)


# --------------------------------------------------------------------------- hashing


def file_digest(path: Path, algorithm: str, *, chunk_size: int = HASH_CHUNK) -> str:
    """The hex digest (``"md5"``, ``"sha256"``, ...) of the file at ``path``, read in chunks.

    usedforsecurity=False: the hashes check downloads against published values, and FIPS builds
    of Python refuse md5 otherwise.
    """
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- download


class DownloadError(DataError):
    """The network failed while downloading ``url``. ``reason`` is one line ("HTTP 404 Not Found",
    "timed out after 60 s"); the message says where it happened, for callers that show it as is."""

    def __init__(self, url: str, reason: str, *, received: int | None = None) -> None:
        where = "download failed" if received is None else f"download failed after {received} bytes"
        super().__init__(f"{url}: {where}: {reason}")
        self.url = url
        self.reason = reason
        self.received = received


def download_verified(
    url: str,
    dest: Path,
    *,
    algorithm: str,
    verify: Callable[[str], None],
    on_progress: ProgressCallback | None = None,
    timeout: float = 60.0,
    chunk_size: int = DOWNLOAD_CHUNK,
) -> None:
    """Stream ``url`` into a hidden temp file beside ``dest``, hash it, and rename it onto ``dest``.

    ``verify(hexdigest)`` decides whether the body is the expected one: it raises (the caller's
    error, naming what it expected) to refuse it. The temp file is removed on any failure,
    KeyboardInterrupt included, so a failed or interrupted download leaves nothing behind.
    ``on_progress(bytes_done, total_or_None)`` is called once before the first chunk and after
    each, bytes_done never decreasing. Network failures raise DownloadError; a folder where the
    temp file cannot be created (read-only, no permission), UnwritableFolder; a write that fails
    (a full disk), DataError naming ``dest`` and the reason. The caller checks the URL's scheme.
    """
    descriptor, temp_path = _new_temp_file(dest, ".part")
    try:
        try:
            with os.fdopen(descriptor, "wb") as out:
                actual = _stream(url, out, algorithm, on_progress, timeout, chunk_size)
        except OSError as error:
            # The write, or the flush when the file is closed: ENOSPC, EDQUOT, EIO. DownloadError
            # (the network) is no OSError, so only the local disk is reported here.
            raise DataError(f"{dest}: cannot write the download ({error.strerror or error})") from None
        verify(actual)
        try:
            os.replace(temp_path, dest)
        except OSError as error:
            raise DataError(f"{dest}: cannot put the download in place ({error.strerror or error})") from None
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise


def _stream(
    url: str,
    out: IO[bytes],
    algorithm: str,
    on_progress: ProgressCallback | None,
    timeout: float,
    chunk_size: int,
) -> str:
    """Copy the response body into ``out`` chunk by chunk; return the body's hex digest."""
    try:
        response = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (the caller checks the scheme)
    except urllib.error.HTTPError as error:
        raise DownloadError(url, f"HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise DownloadError(url, _describe(error.reason, timeout)) from None
    except (OSError, http.client.HTTPException) as error:
        raise DownloadError(url, _describe(error, timeout)) from None
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with response:
        total = _content_length(response)
        done = 0
        if on_progress is not None:
            on_progress(done, total)
        while True:
            try:
                chunk = response.read(chunk_size)
            except (OSError, http.client.HTTPException) as error:
                raise DownloadError(url, _describe(error, timeout), received=done) from None
            if not chunk:
                break
            out.write(chunk)  # an OSError here is the disk's: download_verified reports it
            digest.update(chunk)
            done += len(chunk)
            if on_progress is not None:
                on_progress(done, total)
    # http.client does not raise when the server closes early, so check the length ourselves:
    # "connection dropped" is a clearer message than the hash mismatch it would otherwise cause.
    if total is not None and done != total:
        raise DownloadError(url, f"received {done} of {total} bytes")
    return digest.hexdigest()


def _content_length(response: http.client.HTTPResponse) -> int | None:
    value = response.headers.get("Content-Length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def _describe(reason: object, timeout: float) -> str:
    if isinstance(reason, TimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


# --------------------------------------------------------------------------- strict JSON


def json_ready(value: object) -> object:
    """``value`` as plain, strict-JSON types: a NaN or infinite float becomes None (JSON null:
    "no value", which is what an epoch that was not validated, or a diverged loss, has), a Path
    its text, a tensor or numpy value (anything with ``tolist``) its list or number, a tuple a list."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()  # type: ignore[union-attr]
    if isinstance(value, Mapping):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def json_text(value: object, *, indent: int | None = None) -> str:
    """``value`` as strict JSON text (``json_ready``: no bare NaN or Infinity, which JavaScript's
    JSON.parse and other strict parsers reject). The one writer of every JSON the project emits."""
    return json.dumps(json_ready(value), indent=indent, allow_nan=False)


# --------------------------------------------------------------------------- folders


def user_cache_dir(environ: Mapping[str, str]) -> Path:
    """The project's cache folder: $XDG_CACHE_HOME/resnet-cifar, else ~/.cache/resnet-cifar.

    ``environ`` is passed in (the CLI gives os.environ) so the library reads no global state.
    Empty values count as unset; a relative XDG_CACHE_HOME is ignored, as the XDG spec says.
    """
    xdg_cache = environ.get("XDG_CACHE_HOME", "")
    if xdg_cache and os.path.isabs(xdg_cache):
        return Path(xdg_cache) / "resnet-cifar"
    home = environ.get("HOME", "")
    return (Path(home) if home else Path.home()) / ".cache" / "resnet-cifar"


# --------------------------------------------------------------------------- error texts


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message, or its type name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def one_line(error: BaseException) -> str:
    """All of ``error``'s message on one line (whitespace runs collapsed); for messages whose later
    lines matter, such as a YAML error's position."""
    return " ".join(str(error).split())


def weights_only_refusal(error: BaseException) -> str | None:
    """None unless ``error`` is torch.load(weights_only=True) refusing a pickle; else the global it
    refused (``"posix.system"``), or "" when torch's message names none."""
    if not isinstance(error, pickle.UnpicklingError):
        return None
    refused = _REFUSED_GLOBAL.search(str(error))
    if refused:
        return refused.group(1)
    return "" if "Weights only load failed" in str(error) else None
