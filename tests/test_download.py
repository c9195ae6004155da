"""Download, verification and safe extraction, against a local HTTP server on 127.0.0.1 (no internet)."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from resnet_cifar.data import download as download_module
from resnet_cifar.data.download import (
    ARCHIVE_NAME,
    BATCHES_DIR_NAME,
    CIFAR10_MD5,
    CIFAR10_URL,
    default_data_dir,
    download_cifar10,
    resolve_data_dir,
    safe_extract,
)
from resnet_cifar.errors import DataError, UsageError

from helpers import http_server

# Incompressible, so the gzipped archive spans several download chunks and progress is called often.
BATCH_PAYLOAD = os.urandom(3 * download_module.CHUNK_SIZE // 2)


# --------------------------------------------------------------------------------------------
# Archive builders
# --------------------------------------------------------------------------------------------


def _add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tar.addfile(info)


def build_fake_cifar_archive() -> bytes:
    """A tar.gz laid out like the official one: cifar-10-batches-py/ with a few small files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        _add_dir(tar, f"{BATCHES_DIR_NAME}/")
        _add_file(tar, f"{BATCHES_DIR_NAME}/batches.meta", b"meta")
        _add_file(tar, f"{BATCHES_DIR_NAME}/data_batch_1", BATCH_PAYLOAD)
        _add_file(tar, f"{BATCHES_DIR_NAME}/readme.html", b"<html></html>")
    return buffer.getvalue()


def build_archive_with(hostile: tarfile.TarInfo) -> bytes:
    """A valid-looking archive with one extra, hostile member after some good ones."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        _add_dir(tar, f"{BATCHES_DIR_NAME}/")
        _add_file(tar, f"{BATCHES_DIR_NAME}/batches.meta", b"meta")
        if hostile.isreg():
            tar.addfile(hostile, io.BytesIO(b"x" * hostile.size))
        else:
            tar.addfile(hostile)
        _add_file(tar, f"{BATCHES_DIR_NAME}/data_batch_1", b"data")
    return buffer.getvalue()


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


FAKE_ARCHIVE = build_fake_cifar_archive()
FAKE_MD5 = md5_of(FAKE_ARCHIVE)


# --------------------------------------------------------------------------------------------
# Local HTTP server
# --------------------------------------------------------------------------------------------


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    send_length: bool = True
    claimed_length: int | None = None  # a Content-Length larger than the body: a dropped connection
    # Set: the answer waits until it is (the timeout test sets it once the client has given up).
    held: threading.Event | None = None


@dataclass
class LocalServer:
    base_url: str
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"


def _handler_for(server_state: LocalServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            server_state.requests.append(self.path)
            route = server_state.routes.get(self.path, Route(status=404))
            try:
                if route.held is not None:
                    route.held.wait()
                self.send_response(route.status)
                if route.status != 200:
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if route.send_length:
                    length = route.claimed_length if route.claimed_length is not None else len(route.body)
                    self.send_header("Content-Length", str(length))
                else:
                    # No length: the body ends when the connection closes.
                    self.close_connection = True
                self.send_header("Content-Type", "application/gzip")
                self.end_headers()
                self.wfile.write(route.body)
                if route.claimed_length is not None:
                    self.close_connection = True
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (the timeout test): nothing to report

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # keep the test output clean

    return Handler


@pytest.fixture()
def server() -> Iterator[LocalServer]:
    state = LocalServer(base_url="")
    with http_server(_handler_for(state)) as base_url:
        state.base_url = base_url
        yield state


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy set in the environment must not intercept requests to 127.0.0.1."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")


@pytest.fixture()
def cifar_server(server: LocalServer) -> LocalServer:
    server.routes["/" + ARCHIVE_NAME] = Route(body=FAKE_ARCHIVE)
    return server


def cifar_url(server: LocalServer) -> str:
    return server.url("/" + ARCHIVE_NAME)


def all_paths(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------


def test_official_source_constants() -> None:
    assert CIFAR10_URL == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert CIFAR10_MD5 == "c58f30108f718f92721af3b95e74349a"


# --------------------------------------------------------------------------------------------
# download_cifar10
# --------------------------------------------------------------------------------------------


def test_download_verifies_extracts_and_reports_progress(cifar_server: LocalServer, tmp_path: Path) -> None:
    dest = tmp_path / "not" / "yet" / "there"
    calls: list[tuple[int, int | None]] = []

    batches = download_cifar10(
        dest, url=cifar_url(cifar_server), md5=FAKE_MD5, on_progress=lambda done, total: calls.append((done, total))
    )

    assert batches == dest / BATCHES_DIR_NAME
    assert (batches / "batches.meta").read_bytes() == b"meta"
    assert (batches / "data_batch_1").read_bytes() == BATCH_PAYLOAD
    assert (dest / ARCHIVE_NAME).read_bytes() == FAKE_ARCHIVE
    # Only the archive and the extracted folder remain: no temp file, no staging folder.
    assert sorted(os.listdir(dest)) == sorted([ARCHIVE_NAME, BATCHES_DIR_NAME])

    done_values = [done for done, _ in calls]
    assert len(calls) >= 3, "the archive spans several chunks, so progress is reported several times"
    assert done_values == sorted(done_values)
    assert all(total == len(FAKE_ARCHIVE) for _, total in calls)
    assert done_values[-1] == len(FAKE_ARCHIVE)
    assert cifar_server.requests == ["/" + ARCHIVE_NAME]


def test_download_without_content_length_reports_unknown_total(server: LocalServer, tmp_path: Path) -> None:
    server.routes["/" + ARCHIVE_NAME] = Route(body=FAKE_ARCHIVE, send_length=False)
    calls: list[tuple[int, int | None]] = []

    download_cifar10(tmp_path, url=cifar_url(server), md5=FAKE_MD5, on_progress=lambda d, t: calls.append((d, t)))

    assert all(total is None for _, total in calls)
    assert calls[-1][0] == len(FAKE_ARCHIVE)
    assert (tmp_path / BATCHES_DIR_NAME / "data_batch_1").read_bytes() == BATCH_PAYLOAD


def test_present_archive_is_not_fetched_again(cifar_server: LocalServer, tmp_path: Path) -> None:
    download_cifar10(tmp_path, url=cifar_url(cifar_server), md5=FAKE_MD5)
    # Remove the extracted folder: the second call re-extracts from the archive it already has.
    (tmp_path / BATCHES_DIR_NAME / "batches.meta").unlink()
    calls: list[tuple[int, int | None]] = []

    batches = download_cifar10(
        tmp_path, url=cifar_url(cifar_server), md5=FAKE_MD5, on_progress=lambda d, t: calls.append((d, t))
    )

    assert cifar_server.requests == ["/" + ARCHIVE_NAME], "the server saw no second request"
    assert calls == []
    assert (batches / "batches.meta").read_bytes() == b"meta"
    assert sorted(os.listdir(tmp_path)) == sorted([ARCHIVE_NAME, BATCHES_DIR_NAME])


def test_corrupt_present_archive_is_fetched_again(cifar_server: LocalServer, tmp_path: Path) -> None:
    (tmp_path / ARCHIVE_NAME).write_bytes(FAKE_ARCHIVE[:100])

    download_cifar10(tmp_path, url=cifar_url(cifar_server), md5=FAKE_MD5)

    assert cifar_server.requests == ["/" + ARCHIVE_NAME]
    assert (tmp_path / ARCHIVE_NAME).read_bytes() == FAKE_ARCHIVE


def test_md5_mismatch_leaves_nothing(cifar_server: LocalServer, tmp_path: Path) -> None:
    wrong_md5 = "0" * 32
    url = cifar_url(cifar_server)

    with pytest.raises(DataError) as caught:
        download_cifar10(tmp_path, url=url, md5=wrong_md5)

    message = str(caught.value)
    assert url in message and ARCHIVE_NAME in message
    assert wrong_md5 in message and FAKE_MD5 in message
    assert "\n" not in message
    assert os.listdir(tmp_path) == [], "no archive, no temp file, no extracted folder"


def test_http_404_is_a_data_error_naming_the_url(server: LocalServer, tmp_path: Path) -> None:
    url = server.url("/missing.tar.gz")

    with pytest.raises(DataError, match="404") as caught:
        download_cifar10(tmp_path, url=url, md5=FAKE_MD5)

    assert url in str(caught.value)
    assert os.listdir(tmp_path) == []


def test_unreachable_host_is_a_data_error_naming_the_url(server: LocalServer, tmp_path: Path) -> None:
    # Bind a port, then close it: nothing listens there, so the connection is refused.
    probe = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = probe.server_address[1]
    probe.server_close()
    url = f"http://127.0.0.1:{port}/{ARCHIVE_NAME}"

    with pytest.raises(DataError) as caught:
        download_cifar10(tmp_path, url=url, md5=FAKE_MD5, timeout=5)

    assert url in str(caught.value)
    assert os.listdir(tmp_path) == []


def test_timeout_is_a_data_error(server: LocalServer, tmp_path: Path) -> None:
    held = threading.Event()  # no answer at all until the client has given up
    server.routes["/slow"] = Route(body=FAKE_ARCHIVE, held=held)
    url = server.url("/slow")

    try:
        with pytest.raises(DataError, match="timed out") as caught:
            download_cifar10(tmp_path, url=url, md5=FAKE_MD5, timeout=0.2)
    finally:
        held.set()

    assert url in str(caught.value)
    assert os.listdir(tmp_path) == []


def test_dropped_connection_is_a_data_error(server: LocalServer, tmp_path: Path) -> None:
    server.routes["/short"] = Route(body=FAKE_ARCHIVE[:1000], claimed_length=len(FAKE_ARCHIVE))

    with pytest.raises(DataError, match=f"received 1000 of {len(FAKE_ARCHIVE)} bytes"):
        download_cifar10(tmp_path, url=server.url("/short"), md5=FAKE_MD5)

    assert os.listdir(tmp_path) == []


def test_non_http_url_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        download_cifar10(tmp_path, url=f"file://{tmp_path}/x.tar.gz", md5=FAKE_MD5)
    assert caught.value.exit_code == 2


def test_hostile_downloaded_archive_is_refused(server: LocalServer, tmp_path: Path) -> None:
    hostile = tarfile.TarInfo("../evil")
    hostile.size = 4
    body = build_archive_with(hostile)
    server.routes["/hostile.tar.gz"] = Route(body=body)
    dest = tmp_path / "data"

    with pytest.raises(DataError, match="evil"):
        download_cifar10(dest, url=server.url("/hostile.tar.gz"), md5=md5_of(body))

    assert not (tmp_path / "evil").exists()
    # The verified archive stays (it is exactly what the md5 promised); nothing was extracted.
    assert os.listdir(dest) == [ARCHIVE_NAME]


# --------------------------------------------------------------------------------------------
# safe_extract
# --------------------------------------------------------------------------------------------


def _member(name: str, kind: bytes, linkname: str = "", size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = size
    info.mode = 0o644
    return info


HOSTILE_MEMBERS = {
    "dotdot": lambda outside: _member("../evil", tarfile.REGTYPE, size=4),
    "nested-dotdot": lambda outside: _member(f"{BATCHES_DIR_NAME}/../../evil", tarfile.REGTYPE, size=4),
    "absolute": lambda outside: _member(str(outside / "evil"), tarfile.REGTYPE, size=4),
    "symlink": lambda outside: _member(f"{BATCHES_DIR_NAME}/link", tarfile.SYMTYPE, linkname=str(outside)),
    "relative-symlink": lambda outside: _member(f"{BATCHES_DIR_NAME}/link", tarfile.SYMTYPE, linkname="data_batch_1"),
    "hardlink": lambda outside: _member(f"{BATCHES_DIR_NAME}/hard", tarfile.LNKTYPE, linkname="/etc/passwd"),
    "char-device": lambda outside: _member(f"{BATCHES_DIR_NAME}/null", tarfile.CHRTYPE),
    "block-device": lambda outside: _member(f"{BATCHES_DIR_NAME}/disk", tarfile.BLKTYPE),
    "fifo": lambda outside: _member(f"{BATCHES_DIR_NAME}/pipe", tarfile.FIFOTYPE),
}


@pytest.mark.parametrize("data_filter", [True, False], ids=["with-data-filter", "own-checks-only"])
@pytest.mark.parametrize("kind", sorted(HOSTILE_MEMBERS))
def test_safe_extract_refuses_hostile_members(
    kind: str, data_filter: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without tarfile's "data" filter (Pythons before 3.10.12 / 3.11.4) our own checks stand alone.
    monkeypatch.setattr(download_module, "_HAS_DATA_FILTER", data_filter and download_module._HAS_DATA_FILTER)
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    hostile = HOSTILE_MEMBERS[kind](outside)
    archive = tmp_path / "archive.tar.gz"
    archive.write_bytes(build_archive_with(hostile))

    with pytest.raises(DataError) as caught:
        safe_extract(archive, dest)

    message = str(caught.value)
    assert str(archive) in message and f"refusing member {hostile.name!r}" in message
    assert "\n" not in message
    assert os.listdir(dest) == [], "all members are checked before anything is extracted"
    assert os.listdir(outside) == []
    assert sorted(os.listdir(tmp_path)) == ["archive.tar.gz", "dest", "outside"]


def test_safe_extract_replaces_an_earlier_copy(tmp_path: Path) -> None:
    archive = tmp_path / ARCHIVE_NAME
    archive.write_bytes(FAKE_ARCHIVE)
    dest = tmp_path / "dest"
    (dest / BATCHES_DIR_NAME).mkdir(parents=True)
    (dest / BATCHES_DIR_NAME / "stale").write_bytes(b"old")
    (dest / BATCHES_DIR_NAME / "batches.meta").write_bytes(b"old meta")

    safe_extract(archive, dest)

    assert sorted(os.listdir(dest / BATCHES_DIR_NAME)) == ["batches.meta", "data_batch_1", "readme.html"]
    assert (dest / BATCHES_DIR_NAME / "batches.meta").read_bytes() == b"meta"
    assert os.listdir(dest) == [BATCHES_DIR_NAME], "no staging or set-aside folder remains"


def test_failed_extraction_leaves_no_half_folder(tmp_path: Path) -> None:
    # Both members pass the checks, but the second needs the first (a file) to be a folder,
    # so extraction fails midway, after the first file was written into the staging folder.
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        _add_file(tar, f"{BATCHES_DIR_NAME}/data_batch_1", b"data")
        _add_file(tar, f"{BATCHES_DIR_NAME}/data_batch_1/inner", b"data")
    archive = tmp_path / "archive.tar.gz"
    archive.write_bytes(buffer.getvalue())
    dest = tmp_path / "dest"
    dest.mkdir()

    with pytest.raises(DataError, match="cannot extract"):
        safe_extract(archive, dest)

    assert os.listdir(dest) == []


def test_corrupt_archive_is_a_data_error(tmp_path: Path) -> None:
    archive = tmp_path / ARCHIVE_NAME
    archive.write_bytes(FAKE_ARCHIVE[: len(FAKE_ARCHIVE) // 2])
    dest = tmp_path / "dest"
    dest.mkdir()

    with pytest.raises(DataError, match="corrupt") as caught:
        safe_extract(archive, dest)

    assert str(archive) in str(caught.value)
    assert os.listdir(dest) == []


def test_safe_extract_works_without_tarfile_data_filter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pythons older than 3.10.12 / 3.11.4 lack filter="data": our own checks still hold."""
    monkeypatch.setattr(download_module, "_HAS_DATA_FILTER", False)
    archive = tmp_path / ARCHIVE_NAME
    archive.write_bytes(FAKE_ARCHIVE)
    dest = tmp_path / "dest"
    dest.mkdir()
    safe_extract(archive, dest)
    assert (dest / BATCHES_DIR_NAME / "data_batch_1").read_bytes() == BATCH_PAYLOAD

    hostile = tmp_path / "hostile.tar.gz"
    hostile.write_bytes(build_archive_with(_member("../evil", tarfile.REGTYPE, size=4)))
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(DataError, match="evil"):
        safe_extract(hostile, other)
    assert os.listdir(other) == []
    assert not (tmp_path / "evil").exists()


# --------------------------------------------------------------------------------------------
# default_data_dir / resolve_data_dir
# --------------------------------------------------------------------------------------------


def test_default_data_dir_prefers_explicit_then_xdg_then_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert default_data_dir({"RESNET_CIFAR_DATA": "/data/cifar", "XDG_CACHE_HOME": "/xdg", "HOME": str(home)}) == Path(
        "/data/cifar"
    )
    assert default_data_dir({"XDG_CACHE_HOME": "/xdg", "HOME": str(home)}) == Path("/xdg/resnet-cifar/data")
    assert default_data_dir({"HOME": str(home)}) == home / ".cache" / "resnet-cifar" / "data"
    # Empty values count as unset, and the XDG spec says a relative XDG_CACHE_HOME is ignored.
    assert default_data_dir({"RESNET_CIFAR_DATA": "", "XDG_CACHE_HOME": "rel", "HOME": str(home)}) == (
        home / ".cache" / "resnet-cifar" / "data"
    )


def test_named_missing_dir_is_a_usage_error_and_never_downloads(cifar_server: LocalServer, tmp_path: Path) -> None:
    missing = tmp_path / "missing"

    with pytest.raises(UsageError) as caught:
        resolve_data_dir(missing, {"RESNET_CIFAR_DATA": str(tmp_path / "default")}, url=cifar_url(cifar_server), md5=FAKE_MD5)

    assert caught.value.exit_code == 2
    assert str(caught.value) == f"{missing}: no such folder"
    assert cifar_server.requests == []
    assert not missing.exists()


def test_named_existing_dir_is_returned_as_is(cifar_server: LocalServer, tmp_path: Path) -> None:
    named = tmp_path / "empty-but-named"
    named.mkdir()

    assert resolve_data_dir(named, {}, url=cifar_url(cifar_server), md5=FAKE_MD5) == named

    assert cifar_server.requests == [], "a folder the user named is never downloaded into"
    assert os.listdir(named) == []


@pytest.mark.parametrize("exists", [False, True], ids=["missing", "empty"])
def test_default_dir_without_data_is_downloaded_into(
    exists: bool, cifar_server: LocalServer, tmp_path: Path
) -> None:
    default = tmp_path / "cache" / "data"
    if exists:
        default.mkdir(parents=True)
    calls: list[tuple[int, int | None]] = []

    folder = resolve_data_dir(
        None,
        {"RESNET_CIFAR_DATA": str(default)},
        url=cifar_url(cifar_server),
        md5=FAKE_MD5,
        on_progress=lambda d, t: calls.append((d, t)),
    )

    assert folder == default
    assert (default / BATCHES_DIR_NAME / "data_batch_1").read_bytes() == BATCH_PAYLOAD
    assert cifar_server.requests == ["/" + ARCHIVE_NAME]
    assert calls[-1] == (len(FAKE_ARCHIVE), len(FAKE_ARCHIVE))

    # Second resolve: the data is there, so no new request.
    assert resolve_data_dir(None, {"RESNET_CIFAR_DATA": str(default)}, url=cifar_url(cifar_server), md5=FAKE_MD5) == default
    assert cifar_server.requests == ["/" + ARCHIVE_NAME]


def test_default_dir_with_only_the_archive_resumes_extraction(cifar_server: LocalServer, tmp_path: Path) -> None:
    default = tmp_path / "data"
    default.mkdir()
    (default / ARCHIVE_NAME).write_bytes(FAKE_ARCHIVE)

    resolve_data_dir(None, {"RESNET_CIFAR_DATA": str(default)}, url=cifar_url(cifar_server), md5=FAKE_MD5)

    assert cifar_server.requests == [], "the verified archive is reused"
    assert (default / BATCHES_DIR_NAME / "batches.meta").read_bytes() == b"meta"


def test_default_dir_with_data_is_used_without_download(cifar_server: LocalServer, tmp_path: Path) -> None:
    default = tmp_path / "data"
    (default / "train").mkdir(parents=True)

    assert resolve_data_dir(None, {"RESNET_CIFAR_DATA": str(default)}, url=cifar_url(cifar_server), md5=FAKE_MD5) == default
    assert cifar_server.requests == []


def test_default_dir_without_data_and_download_off_is_a_usage_error(cifar_server: LocalServer, tmp_path: Path) -> None:
    default = tmp_path / "data"

    with pytest.raises(UsageError) as caught:
        resolve_data_dir(
            None, {"RESNET_CIFAR_DATA": str(default)}, download=False, url=cifar_url(cifar_server), md5=FAKE_MD5
        )

    assert str(default) in str(caught.value)
    assert cifar_server.requests == []
    assert not default.exists()
