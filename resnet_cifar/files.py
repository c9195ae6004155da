"""Small file helpers the whole package shares: atomic writes, hashing, verified downloads, the
default cache folder, and short error texts.

This is the lowest module with ``errors``: it imports nothing else of the package, and no torch,
so any module (and the CLI) can use it.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import http.client
import json
import math
import os
import pickle
import re
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Union

from resnet_cifar.errors import DataError, UsageError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DownloadError",
    "DownloadLimits",
    "UnwritableFolder",
    "WriteError",
    "atomic_path",
    "atomic_write",
    "check_writable",
    "download_verified",
    "file_digest",
    "first_line",
    "json_ready",
    "json_text",
    "one_line",
    "refuse_overwriting",
    "cut",
    "printable",
    "shorten",
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
        mode = os.fstat(descriptor).st_mode & 0o777  # what the umask gave it
        os.close(descriptor)
        yield temp
        os.chmod(temp, mode)  # a writer that wrote a new file (safetensors does) may have made it private
        _fsync_file(temp)


def check_writable(path: Path) -> None:
    """Fail now as ``atomic_write(path, ...)`` would fail later when ``path``'s folder cannot be
    written into (UnwritableFolder, exit 2), or the disk is full (WriteError): for a writer whose
    file comes only after slow work (an export). Creates and removes an empty temp file there;
    the folder must exist.
    """
    descriptor, temp = _new_temp_file(Path(path), ".tmp")
    os.close(descriptor)
    temp.unlink()


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


# --------------------------------------------------------------------------- inputs and outputs

# The lock file of a folder a process holds (a run folder: engine.checkpointer.LOCK is this name).
FOLDER_LOCK = ".lock"


def refuse_overwriting(outputs: Iterable[Path], inputs: Iterable[Path | None]) -> None:
    """The one check of every command that writes, made before it writes anything: UsageError
    (exit 2, one line) when a file it would write is one of its ``inputs`` (the same path once
    links are resolved, or the same file under another name: a hard link), or lies in a folder
    that another process holds (its FOLDER_LOCK locked: a run in progress). ``None`` inputs
    (an option not given) are skipped; missing paths cannot collide and are fine."""
    sources = [Path(source) for source in inputs if source is not None]
    for output in (Path(path) for path in outputs):
        for source in sources:
            if _same_file(output, source):
                raise UsageError(f"{output}: would overwrite the input {source}; write to another path")
        holder = _holder(output.parent)
        if holder is not None:
            raise UsageError(
                f"{output}: its folder is in use by another run (pid {holder}); wait for it to finish or write elsewhere"
            )


def _same_file(first: Path, second: Path) -> bool:
    if os.path.realpath(first) == os.path.realpath(second):
        return True
    try:
        return os.path.samefile(first, second)
    except OSError:  # one of them does not exist (yet)
        return False


def _holder(folder: Path) -> str | None:
    """The pid written in ``folder``'s FOLDER_LOCK when another process holds that lock, else None."""
    if fcntl is None:
        return None
    try:
        descriptor = os.open(folder / FOLDER_LOCK, os.O_RDONLY)
    except OSError:  # no lock file, or not readable: nobody we can see holds it
        return None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.read(descriptor, 32).decode(errors="replace").strip() or "unknown"
        except OSError:
            return None
        return None
    finally:
        os.close(descriptor)  # drops the shared lock, if it was taken


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
        where = "download failed" if received is None else f"download failed after {received:,} bytes"
        super().__init__(f"{url}: {where}: {reason}")
        self.url = url
        self.reason = reason
        self.received = received


# The limits of one download (``download --timeout/--deadline/--min-rate`` change them): a stall
# (no byte for TIMEOUT_S), a whole download over DEADLINE_S, and a trickle slower on average than
# MIN_RATE bytes/s once TIMEOUT_S have passed (a server dripping a byte every few seconds never
# stalls). The official archive (163 MiB) needs about 12 KiB/s to fit the deadline.
DOWNLOAD_TIMEOUT_S = 60.0
DOWNLOAD_DEADLINE_S = 4 * 3600.0
DOWNLOAD_MIN_RATE = 1024.0
MAX_REDIRECTS = 10


@dataclass(frozen=True)
class DownloadLimits:
    """When a download gives up: ``timeout`` s without a byte, ``deadline`` s in all, or an
    average under ``min_rate`` bytes/s after the first ``timeout`` s (0 switches that check off).
    The deadline and rate are checked after each read, so a download ends at most ``timeout`` s
    after passing them."""

    timeout: float = DOWNLOAD_TIMEOUT_S
    deadline: float = DOWNLOAD_DEADLINE_S
    min_rate: float = DOWNLOAD_MIN_RATE

    def __post_init__(self) -> None:
        for name in ("timeout", "deadline"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise UsageError(f"download {name} must be a positive number of seconds, got {shorten(value)}")
        if not (isinstance(self.min_rate, (int, float)) and math.isfinite(self.min_rate) and self.min_rate >= 0):
            raise UsageError(f"download minimum rate must be 0 or more bytes per second, got {shorten(self.min_rate)}")


def download_verified(
    url: str,
    dest: Path,
    *,
    algorithm: str,
    verify: Callable[[str], None],
    on_progress: ProgressCallback | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
    limits: DownloadLimits | None = None,
    chunk_size: int = DOWNLOAD_CHUNK,
) -> None:
    """Stream ``url`` into a hidden temp file beside ``dest``, hash it, and rename it onto ``dest``.

    ``verify(hexdigest)`` decides whether the body is the expected one: it raises (the caller's
    error, naming what it expected) to refuse it. The temp file (``.NAME.XXXXXXXX.part``) is
    removed on any failure, KeyboardInterrupt and SystemExit included, and is locked while it is
    written, so one left by a killed process (SIGKILL, a power cut) is removed by the next
    download of ``dest`` while another process's live one is left alone.
    ``on_progress(bytes_done, total_or_None)`` is called once before the first chunk and after
    each, bytes_done never decreasing. ``limits`` (default: ``timeout`` and the module's deadline
    and minimum rate) say when to give up. Redirects are followed only to http(s) URLs, at most
    MAX_REDIRECTS. Network failures raise DownloadError, one line with the bytes received; a
    folder where the temp file cannot be created (read-only, no permission), UnwritableFolder; a
    write that fails (a full disk), DataError naming ``dest`` and the reason. The caller checks
    the URL's own scheme.
    """
    limits = limits or DownloadLimits(timeout=timeout)
    _remove_stale_parts(dest)
    descriptor, temp_path = _new_temp_file(dest, ".part")
    try:
        _lock(descriptor)
        try:
            with os.fdopen(descriptor, "wb") as out:
                actual = _stream(url, out, algorithm, on_progress, limits, chunk_size)
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


def _lock(descriptor: int) -> None:
    """Hold an exclusive lock on a .part file while it is written (released when the process
    ends, however it ends): what tells a live download's file from a stale one."""
    if fcntl is not None:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _remove_stale_parts(dest: Path) -> None:
    """Remove the ``.NAME.*.part`` files of earlier downloads of ``dest`` that no process holds
    (their writer was killed); a locked one belongs to a download in progress and is kept."""
    if fcntl is None:  # no flock (Windows): a live download cannot be told apart, keep them all
        return
    try:
        candidates = list(dest.parent.glob(f".{glob.escape(dest.name)}.*.part"))
    except OSError:
        return
    for candidate in candidates:
        try:
            descriptor = os.open(candidate, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            candidate.unlink(missing_ok=True)
        except OSError:
            pass  # locked: another process is writing it
        finally:
            os.close(descriptor)


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to an http(s) URL (urllib alone also follows ftp://), at most
    MAX_REDIRECTS times; anything else ends the download with one line."""

    max_redirections = MAX_REDIRECTS

    def http_error_302(self, req, fp, code, msg, headers):  # type: ignore[no-untyped-def]  # noqa: ANN001
        location = headers.get("location") or headers.get("uri") or ""
        target = urllib.parse.urljoin(req.full_url, location)
        scheme = urllib.parse.urlsplit(target).scheme
        if scheme not in ("http", "https"):
            fp.close()
            raise DownloadError(
                req.full_url, f"redirected to {shorten(target)}: only http and https redirects are followed"
            )
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _open(url: str, timeout: float) -> http.client.HTTPResponse:
    opener = urllib.request.build_opener(_HttpOnlyRedirects)
    try:
        return opener.open(url, timeout=timeout)
    except urllib.error.HTTPError as error:
        error.close()
        if 300 <= error.code < 400:  # urllib's loop and limit messages span three lines
            raise DownloadError(url, f"more than {MAX_REDIRECTS} redirects or a redirect loop (HTTP {error.code})") from None
        reason = cut(" ".join(str(error.reason).split()))
        raise DownloadError(url, f"HTTP {error.code} {reason}") from None
    except urllib.error.URLError as error:
        raise DownloadError(url, _describe(error.reason, timeout)) from None
    except (OSError, http.client.HTTPException) as error:
        raise DownloadError(url, _describe(error, timeout)) from None


def _stream(
    url: str,
    out: IO[bytes],
    algorithm: str,
    on_progress: ProgressCallback | None,
    limits: DownloadLimits,
    chunk_size: int,
) -> str:
    """Copy the response body into ``out`` as it arrives; return the body's hex digest."""
    started = time.monotonic()
    response = _open(url, limits.timeout)
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with response:
        total = _content_length(response)
        done = 0
        if on_progress is not None:
            on_progress(done, total)
        while True:
            try:
                # read1: whatever has arrived, so a stall reports every byte received before it.
                chunk = response.read1(chunk_size)
            except (OSError, http.client.HTTPException) as error:
                raise DownloadError(url, _describe(error, limits.timeout), received=done) from None
            if not chunk:
                break
            out.write(chunk)  # an OSError here is the disk's: download_verified reports it
            digest.update(chunk)
            done += len(chunk)
            if on_progress is not None:
                on_progress(done, total)
            _check_pace(url, done, time.monotonic() - started, limits)
    # http.client does not raise when the server closes early, so check the length ourselves:
    # "connection dropped" is a clearer message than the hash mismatch it would otherwise cause.
    if total is not None and done != total:
        raise DownloadError(url, f"received {done} of {total} bytes")
    return digest.hexdigest()


def _check_pace(url: str, done: int, elapsed: float, limits: DownloadLimits) -> None:
    """DownloadError when the download is past its deadline or, after its first ``timeout``
    seconds, slower on average than its minimum rate."""
    if elapsed > limits.deadline:
        raise DownloadError(
            url, f"not done after the {limits.deadline:g} s deadline (--deadline changes it)", received=done
        )
    if limits.min_rate and elapsed > limits.timeout and done / elapsed < limits.min_rate:
        raise DownloadError(
            url,
            f"{done / elapsed:,.0f} bytes/s on average, under the minimum of {limits.min_rate:g} (--min-rate changes it)",
            received=done,
        )


def _content_length(response: http.client.HTTPResponse) -> int | None:
    value = response.headers.get("Content-Length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def _describe(reason: object, timeout: float) -> str:
    if isinstance(reason, TimeoutError):
        return f"timed out after {timeout:g} s without a byte"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return cut(" ".join(str(reason).split()), 200) or type(reason).__name__


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


def printable(text: str) -> str:
    """``text`` with every character that is not printable (ESC, newline, tab, bidi overrides,
    other control and format characters) written as its escape (``\\x1b``, ``\\n``, ``\\u202e``),
    so a name from the data (a class folder, ONNX metadata) shows as what it is and never drives
    the terminal; every printable character, non-ASCII included, is kept as is."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in text)


SHORTENED_LENGTH = 40


def cut(text: str, limit: int = SHORTENED_LENGTH) -> str:
    """``text`` for a message: printable, and cut to ``limit`` characters and `...` when longer."""
    return printable(text) if len(text) <= limit else printable(text[:limit]) + "..."


def shorten(value: object, limit: int = SHORTENED_LENGTH) -> str:
    """``repr(value)`` for an error message, cut to about ``limit`` characters (`...` and the
    full length where cut): a value from a file may be megabytes (a YAML alias bomb expanded, a
    hostile run file) and a message is one short line. Containers are walked only as far as the
    cut needs, so even a hostile value costs ``limit`` characters to describe."""
    return cut(_bounded_repr(value, limit + 1), limit)


def _bounded_repr(value: object, budget: int) -> str:
    """repr(value), stopping once ``budget`` characters are produced (deep or huge containers)."""
    if isinstance(value, (list, tuple, dict)):
        opening, closing = {list: "[]", tuple: "()", dict: "{}"}.get(type(value), "[]")
        parts: list[str] = []
        used = 1
        items = value.items() if isinstance(value, dict) else value
        for item in items:
            if used >= budget:
                break
            if isinstance(value, dict):
                key, entry = item
                part = _bounded_repr(key, budget - used) + ": " + _bounded_repr(entry, budget - used)
            else:
                part = _bounded_repr(item, budget - used)
            parts.append(part)
            used += len(part) + 2
        return (opening[0] + ", ".join(parts) + closing[-1])[: budget + 1]
    if isinstance(value, int) and value.bit_length() > 128:  # str() refuses over 4,300 digits
        return f"<an integer of about {len(hex(value)) * 6 // 5} digits>"[: budget + 1]
    text = repr(value) if not isinstance(value, str) or len(value) <= budget else repr(value[:budget])
    return text[: budget + 1]


def weights_only_refusal(error: BaseException) -> str | None:
    """None unless ``error`` is torch.load(weights_only=True) refusing a pickle; else the global it
    refused (``"posix.system"``), or "" when torch's message names none."""
    if not isinstance(error, pickle.UnpicklingError):
        return None
    refused = _REFUSED_GLOBAL.search(str(error))
    if refused:
        return refused.group(1)
    return "" if "Weights only load failed" in str(error) else None
