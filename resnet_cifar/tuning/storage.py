"""Where a study lives: SQLite in the sweep folder (the default), any Optuna RDB URL (PostgreSQL for
several machines), or ``journal:PATH`` (Optuna's JournalStorage on a shared file).

RDB storages run Optuna's heartbeat: a worker records a heartbeat for its running trial every
``heartbeat`` seconds, and a trial whose heartbeat is older than twice that (its worker was killed,
or its machine lost) is failed by the next worker that looks, and queued again once
(RetryFailedTrialCallback, ``max_retry=1``). The journal storage has no heartbeat: a killed
worker's trial stays RUNNING there.

Storage URLs may hold a password: every message shows the URL with it masked (``mask_url``), and
any driver message that repeats it is masked too.
"""

from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from resnet_cifar.errors import UsageError
from resnet_cifar.files import first_line

JOURNAL_PREFIX = "journal:"
# Seconds between a running trial's heartbeats; a trial silent for GRACE_FACTOR times as long is
# failed and retried. Short enough that a lost machine's trial is retried within minutes, long
# enough that a loaded database is not written to more than a few times a minute per worker.
DEFAULT_HEARTBEAT = 30
GRACE_FACTOR = 2
# How long connecting to a database server may take before the sweep gives up (seconds).
CONNECT_TIMEOUT = 10
# A password in a URL: scheme://user:PASSWORD@host (or user:PASSWORD@host, the scheme forgotten)
_PASSWORD = re.compile(r"(?P<head>(?:^|://)[^/@:]*:)(?P<password>[^@/]*)@")


def mask_url(url: str) -> str:
    """``url`` with its password (if any) shown as ``***``."""
    return _PASSWORD.sub(lambda match: f"{match['head']}***@", url)


def mask_text(text: str, url: str) -> str:
    """``text`` with ``url``'s password (as written or percent-decoded) replaced by ``***``."""
    match = _PASSWORD.search(url)
    if match is None or not match["password"]:
        return text
    for secret in {match["password"], unquote(match["password"])}:
        text = text.replace(secret, "***")
    return text


@dataclass(frozen=True)
class OpenedStorage:
    storage: Any  # an Optuna storage
    url: str  # as given (may hold a password: never print it; use ``shown``)
    heartbeat: bool  # whether dead workers' trials are found (RDB storages) or not (journal)

    @property
    def shown(self) -> str:
        return mask_url(self.url)

    def error(self, what: str, error: BaseException) -> UsageError:
        """One line naming the storage and the reason, password masked."""
        return UsageError(mask_text(f"{self.shown}: {what} ({first_line(error)})", self.url))


def default_storage(out_dir: Path) -> str:
    return f"sqlite:///{Path(out_dir).resolve() / 'study.db'}"


def check_storage_url(url: str) -> None:
    """Refuse a URL no storage reads (before any connection is tried)."""
    if url.startswith(JOURNAL_PREFIX):
        if not url[len(JOURNAL_PREFIX) :].strip():
            raise UsageError("--storage journal:PATH needs a file path, got 'journal:'")
        return
    scheme = urlsplit(url).scheme
    if not scheme or "://" not in url:
        raise UsageError(
            f"--storage must be an RDB URL (sqlite:///FILE, postgresql+psycopg://USER:PASSWORD@HOST/DB) "
            f"or journal:PATH, got {mask_url(url)!r}"
        )


def open_storage(url: str, *, heartbeat: int = DEFAULT_HEARTBEAT) -> OpenedStorage:
    """The storage ``url`` names, connected (tables created on first use).

    Raises:
        UsageError: a URL no storage reads, a missing driver, a server that cannot be reached, bad
            credentials, a missing database or journal folder: one line, password masked.
    """
    check_storage_url(url)
    if url.startswith(JOURNAL_PREFIX):
        return _open_journal(url)
    return _open_rdb(url, heartbeat)


def _open_journal(url: str) -> OpenedStorage:
    import optuna
    import optuna.storages.journal as journal

    path = Path(url[len(JOURNAL_PREFIX) :]).expanduser()
    opened = OpenedStorage(storage=None, url=url, heartbeat=False)
    if not path.parent.is_dir():
        raise UsageError(f"{url}: the journal's folder {path.parent} does not exist")
    if path.is_dir():
        raise UsageError(f"{url}: {path} is a folder; the journal is a file")
    # A symlink lock (the default) works on NFS as well as on local disks.
    backend_class = getattr(journal, "JournalFileBackend", None) or journal.JournalFileStorage  # Optuna < 4
    try:
        storage = optuna.storages.JournalStorage(backend_class(str(path)))
    except (OSError, ValueError) as error:
        raise opened.error("cannot open the journal", error) from None
    return OpenedStorage(storage=storage, url=url, heartbeat=False)


def _retry_callback_kwargs() -> dict[str, Any]:
    """RetryFailedTrialCallback(max_retry=1) under the keyword this Optuna version takes."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry_class = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
        if retry_class is not None:  # Optuna >= 4.9 renamed it
            return {"heartbeat_stale_trial_callback": retry_class(max_retry=1)}
        return {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=1)}


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}  # wait out other writers instead of "database is locked"
    if url.startswith("postgresql"):
        return {"connect_args": {"connect_timeout": CONNECT_TIMEOUT}, "pool_pre_ping": True}
    return {}


def _is_creation_race(error: BaseException) -> bool:
    """Workers started together race to create a new storage's tables; the loser finds them there
    on its next try (SQLite says "locked", PostgreSQL "already exists" or a duplicate key)."""
    import sqlalchemy.exc

    text = str(error)
    if isinstance(error, sqlalchemy.exc.IntegrityError):
        return True
    return isinstance(error, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError)) and (
        "locked" in text or "already exists" in text
    )


def _open_rdb(url: str, heartbeat: int) -> OpenedStorage:
    import optuna
    import sqlalchemy.exc

    opened = OpenedStorage(storage=None, url=url, heartbeat=True)
    attempts = 5
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=_engine_kwargs(url),
                    heartbeat_interval=heartbeat,
                    grace_period=GRACE_FACTOR * heartbeat,
                    **_retry_callback_kwargs(),
                )
            return OpenedStorage(storage=storage, url=url, heartbeat=True)
        except ModuleNotFoundError as error:
            hint = " (pip install -e '.[postgres]')" if url.startswith("postgresql") else ""
            raise UsageError(f"{opened.shown}: the database driver is not installed{hint}: {error.name}") from None
        except sqlalchemy.exc.SQLAlchemyError as error:
            if attempt == attempts - 1 or not _is_creation_race(error):
                raise opened.error("cannot open the study storage", _without_class(error)) from None
            time.sleep(0.5 * (attempt + 1))
        except (ImportError, ValueError) as error:
            raise opened.error("cannot open the study storage", error) from None
    raise AssertionError("unreachable")


def _without_class(error: BaseException) -> BaseException:
    """SQLAlchemy prefixes the driver's message with its class, ``(psycopg.OperationalError)``;
    the reason alone reads better in one line."""
    orig = getattr(error, "orig", None)
    return orig if isinstance(orig, BaseException) and str(orig).strip() else error


__all__ = [
    "DEFAULT_HEARTBEAT",
    "GRACE_FACTOR",
    "JOURNAL_PREFIX",
    "OpenedStorage",
    "check_storage_url",
    "default_storage",
    "mask_text",
    "mask_url",
    "open_storage",
]
