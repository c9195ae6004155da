"""Fetch the official CIFAR-10 python archive, verify it, and unpack it safely.

Nothing here prints: progress goes to an optional callback (the CLI draws a Rich bar with it),
and every failure is a one-line DataError or UsageError.

Which error for what (the CLI turns them into exit codes):
- UsageError (exit 2): the request itself cannot be served and retrying will not help: a
  data folder the user named does not exist or cannot be written into (read-only, no
  permission), a URL that is not http(s), no data and the download switched off.
- DataError (exit 1): the request was fine but the data could not be obtained or is not
  trustworthy: a network failure (unreachable host, timeout, HTTP 404), a short or corrupt
  download, an md5 mismatch, a hostile archive, a disk that fills up while writing. The
  network cases are not the user's usage mistake (the URL is normally the built-in one), so
  they are "the run failed", which is what exit 1 means.

Nothing half-written is ever left behind: the archive is streamed into a hidden temp file and
renamed into place only after its md5 checks out, and extraction happens in a hidden temp
folder whose contents are renamed into place only once every member was written.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import urllib.parse
import zlib
from collections.abc import Mapping
from pathlib import Path

from resnet_cifar.errors import DataError, UsageError
from resnet_cifar.files import (
    DownloadLimits,
    ProgressCallback,
    UnwritableFolder,
    download_verified,
    file_digest,
    user_cache_dir,
)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCHES_DIR_NAME = "cifar-10-batches-py"

DATA_DIR_ENV = "RESNET_CIFAR_DATA"
CHUNK_SIZE = 256 * 1024

# Hidden names for work in progress, so a folder listing never mistakes them for data.
_EXTRACT_PREFIX = ".extract-"
_REPLACED_PREFIX = ".replaced-"

# tarfile's extraction filters arrived in 3.10.12 / 3.11.4 / 3.12; older versions lack them.
_HAS_DATA_FILTER = hasattr(tarfile, "data_filter")


def default_data_dir(environ: Mapping[str, str]) -> Path:
    """$RESNET_CIFAR_DATA, else $XDG_CACHE_HOME/resnet-cifar/data, else ~/.cache/resnet-cifar/data.

    `environ` is passed in (the CLI gives os.environ) so the library reads no global state.
    Empty values count as unset; a relative XDG_CACHE_HOME is ignored, as the XDG spec says.
    """
    explicit = environ.get(DATA_DIR_ENV, "")
    return Path(explicit) if explicit else user_cache_dir(environ) / "data"


def resolve_data_dir(
    data_dir: Path | None,
    environ: Mapping[str, str],
    *,
    download: bool = True,
    on_progress: ProgressCallback | None = None,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
    timeout: float = 60.0,
) -> Path:
    """The folder to read CIFAR-10 from.

    A folder the user named is returned as is and never downloaded into: it must exist
    (UsageError otherwise). With no folder named, the default one is used; when it is missing
    or holds no data yet, it is created and the official archive downloaded into it
    (UsageError instead when `download` is False).
    """
    if data_dir is not None:
        if not data_dir.is_dir():
            raise UsageError(f"{data_dir}: no such folder")
        return data_dir
    folder = default_data_dir(environ)
    if folder.is_dir() and not _holds_no_data(folder):
        return folder
    if not download:
        raise UsageError(f"{folder}: no CIFAR-10 data in the default data folder and downloading is off")
    download_cifar10(folder, url=url, md5=md5, on_progress=on_progress, timeout=timeout)
    return folder


def _holds_no_data(folder: Path) -> bool:
    """True when the folder is empty but for hidden entries and a not-yet-extracted archive.

    The archive alone means an earlier download was interrupted before extraction finished;
    counting that as "no data" lets the next run pick up from the verified archive.
    """
    return all(entry.name.startswith(".") or entry.name == ARCHIVE_NAME for entry in folder.iterdir())


def download_cifar10(
    dest_dir: Path,
    *,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
    on_progress: ProgressCallback | None = None,
    timeout: float = 60.0,
    limits: DownloadLimits | None = None,
) -> Path:
    """Download (unless already there and intact), verify and safely extract the python archive.

    Returns dest_dir/cifar-10-batches-py. dest_dir is created when missing. `on_progress` is
    called as on_progress(bytes_done, total_bytes_or_None), with bytes_done never decreasing
    and, once the download completes, equal to the total. `limits` (default: `timeout` and
    files.DownloadLimits' deadline and minimum rate) say when a slow download gives up.
    """
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise UsageError(f"{url}: only http and https URLs can be downloaded")
    expected_md5 = md5.lower()
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{dest_dir}: cannot create the data folder ({exc.strerror})") from None
    archive = dest_dir / ARCHIVE_NAME
    # A stale or corrupt archive is simply fetched again; os.replace overwrites it only
    # once the new one is verified.
    if not (archive.is_file() and file_digest(archive, "md5", chunk_size=CHUNK_SIZE) == expected_md5):

        def verify(actual_md5: str) -> None:
            if actual_md5 != expected_md5:
                raise DataError(f"{url}: md5 mismatch for {archive.name}: expected {expected_md5}, got {actual_md5}")

        try:
            download_verified(
                url,
                archive,
                algorithm="md5",
                verify=verify,
                on_progress=on_progress,
                limits=limits or DownloadLimits(timeout=timeout),
                chunk_size=CHUNK_SIZE,
            )
        except UnwritableFolder as exc:
            # A folder nothing can be written into (read-only, no permission) is the user's to fix.
            raise UsageError(f"{dest_dir}: cannot write into the data folder ({exc.strerror})") from None
    safe_extract(archive, dest_dir)
    batches_dir = dest_dir / BATCHES_DIR_NAME
    if not batches_dir.is_dir():
        raise DataError(f"{archive}: the archive holds no {BATCHES_DIR_NAME}/ folder")
    return batches_dir


def _refusal(member: tarfile.TarInfo, root: str) -> str | None:
    """Why `member` may not be extracted under `root`, or None when it is a safe file or folder."""
    if member.issym():
        return f"symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"hard link to {member.linkname!r}"
    if member.ischr():
        return "character device"
    if member.isblk():
        return "block device"
    if member.isfifo():
        return "fifo"
    if not (member.isreg() or member.isdir()):
        return "unsupported member type"
    if os.path.isabs(member.name):
        return "absolute path"
    target = os.path.normpath(os.path.join(root, member.name))
    if os.path.commonpath([root, target]) != root:
        return "path outside the destination folder"
    if target == root and not member.isdir():
        return "file with no name"
    return None


def safe_extract(archive: Path, dest_dir: Path) -> None:
    """Extract a tar archive into dest_dir, refusing anything but plain files and folders inside it.

    Every member is checked before anything is written, so a refused archive leaves nothing.
    Members are extracted into a hidden temp folder inside dest_dir and its top-level entries
    renamed into place only after all were written, so an interrupted extraction leaves no half
    folder. tarfile's "data" filter, where this Python has it, is a second line of defence.
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            root = os.path.realpath(dest_dir)
            for member in members:
                reason = _refusal(member, root)
                if reason is not None:
                    raise DataError(f"{archive}: refusing member {member.name!r}: {reason}")
            staging = Path(tempfile.mkdtemp(prefix=_EXTRACT_PREFIX, dir=dest_dir))
            try:
                if _HAS_DATA_FILTER:
                    tar.extractall(staging, members=members, filter="data")
                else:
                    tar.extractall(staging, members=members)
                _move_into_place(staging, dest_dir)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        filter_error = getattr(tarfile, "FilterError", None)
        if filter_error is not None and isinstance(exc, filter_error):
            # Our checks should have caught it first; the "data" filter is the backstop.
            raise DataError(f"{archive}: refusing member {exc.tarinfo.name!r}: {exc}") from None
        raise DataError(f"{archive}: corrupt or unreadable archive ({exc})") from None
    except OSError as exc:
        detail = exc.strerror or str(exc)
        raise DataError(f"{archive}: cannot extract ({detail}: {exc.filename})") from None


def _move_into_place(staging: Path, dest_dir: Path) -> None:
    """Rename each extracted top-level entry into dest_dir, replacing any earlier copy."""
    for entry in sorted(staging.iterdir()):
        target = dest_dir / entry.name
        if os.path.lexists(target):
            # os.replace cannot overwrite a non-empty folder: move the old copy aside first,
            # so the target name is never missing for longer than two renames.
            aside = Path(tempfile.mkdtemp(prefix=_REPLACED_PREFIX, dir=dest_dir))
            try:
                os.replace(target, aside / entry.name)
                try:
                    os.replace(entry, target)
                except BaseException:
                    os.replace(aside / entry.name, target)  # put the old copy back
                    raise
            finally:
                shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(entry, target)
