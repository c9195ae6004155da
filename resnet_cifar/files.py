"""Small file helpers the whole package shares: atomic writes, hashing, verified downloads, the
default cache folder, and short error texts.

This is the lowest module with ``errors``: it imports nothing else of the package, and no torch,
so any module (and the CLI) can use it.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import pickle
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Union

from resnet_cifar.errors import DataError

__all__ = [
    "DownloadError",
    "UnwritableFolder",
    "atomic_write",
    "download_verified",
    "file_digest",
    "first_line",
    "one_line",
    "user_cache_dir",
    "weights_only_refusal",
]

# What atomic_write writes: bytes, text (UTF-8), or a callback that writes into the binary file.
Content = Union[bytes, memoryview, str, Callable[[IO[bytes]], None]]
ProgressCallback = Callable[[int, Union[int, None]], None]

# Files the project writes are for reading by anyone (mkstemp alone would leave them 0600).
FILE_MODE = 0o644
HASH_CHUNK = 1 << 20
DOWNLOAD_CHUNK = 256 * 1024

_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


# --------------------------------------------------------------------------- atomic write


class UnwritableFolder(OSError):
    """The destination folder of a write cannot be created or written into (nothing was written).

    An OSError, so callers that report any OSError keep doing so; a caller may tell it apart
    from a failure of the write itself (a full disk, say)."""


def atomic_write(path: Path, content: Content, *, fsync_folder: bool = False, mode: int = FILE_MODE) -> None:
    """Write ``content`` to ``path`` so that a reader sees the old file or the new one, never half.

    The content goes to a hidden temp file in the same folder (same file system, so the rename is
    atomic), is flushed and fsynced, given ``mode``, and renamed over ``path`` with os.replace. The
    folder is created if needed. On any failure, KeyboardInterrupt included, the temp file is
    removed and ``path`` keeps its previous content. ``fsync_folder`` also fsyncs the folder after
    the rename, so the rename itself survives a power cut (worth it for checkpoints).

    Raises UnwritableFolder when the folder or the temp file cannot be created, else the OSError
    (or whatever ``content`` raised) of the failing step.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise _as_folder_error(error) from error
    temp_path = Path(temp_name)
    try:
        with os.fdopen(handle, "wb") as out:
            if callable(content):
                content(out)
            else:
                out.write(content.encode("utf-8") if isinstance(content, str) else content)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp_path, mode)
        os.replace(temp_path, path)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    if fsync_folder:
        _fsync_folder(path.parent)


# Errors of the disk rather than of the folder: the same folder works again once there is room.
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})


def _as_folder_error(error: OSError) -> OSError:
    """``error`` (creating a folder or a temp file in it) as UnwritableFolder, unless the disk
    itself failed (full, over quota, I/O error): that stays a plain OSError, as a failed write."""
    if error.errno in _DISK_ERRNOS:
        return error
    return UnwritableFolder(error.errno, error.strerror or str(error), error.filename)


def _fsync_folder(folder: Path) -> None:
    if os.name == "nt":  # Windows cannot open a folder for fsync; its renames are durable enough
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    try:
        descriptor, temp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as error:
        folder_error = _as_folder_error(error)
        if not isinstance(folder_error, UnwritableFolder):
            raise DataError(f"{dest}: cannot write the download ({error.strerror or error})") from None
        raise folder_error from error
    temp_path = Path(temp_name)
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
