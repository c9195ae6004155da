"""What every command shares: one-line errors with the contract's exit codes, signals, the
environment's folders, the download bar, and torch's known-harmless noise kept out of the output.

The CLI is where the environment is read (``os.environ`` for the data and cache folders, torchrun's
variables); the library below receives plain values.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from resnet_cifar.errors import ResnetCifarError
from resnet_cifar.files import cut, first_line

from .render import Output

SIGNAL_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


@contextmanager
def reported_errors(out: Output) -> Iterator[None]:
    """Turn the library's errors into one line on stderr and the contract's exit code."""
    try:
        yield
    except ResnetCifarError as exc:
        out.error(str(exc))
        raise typer.Exit(exc.exit_code) from None
    except (MemoryError, RuntimeError) as exc:
        # An allocation that cannot be served (host or device memory) is a failed run, not a bug:
        # one line with what to change. Any other RuntimeError is a bug and keeps its traceback.
        if not is_out_of_memory(exc):
            raise
        out.error(f"out of memory ({cut(first_line(exc), 120)}); lower --batch-size or --image-size")
        raise typer.Exit(1) from None


def is_out_of_memory(error: BaseException) -> bool:
    """MemoryError, torch's OutOfMemoryError (CUDA), or torch's CPU allocator failing."""
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


def cache_dir_from_env(environ: Mapping[str, str]) -> Path:
    """Decoded image-folder cache: $RESNET_CIFAR_CACHE, else the XDG cache folder."""
    from resnet_cifar.data.cache import default_cache_dir

    return default_cache_dir(environ)


@contextmanager
def stop_on_signals(stop: Any) -> Iterator[None]:
    """SIGINT/SIGTERM ask the trainer to stop after the current step (it then writes a
    resumable last.pt). A second signal of the same kind falls back to the default action."""
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        stop.request(name)
        signal.signal(signum, previous[signum])  # a second Ctrl-C really interrupts

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


class Terminated(BaseException):
    """SIGTERM as an exception, so that ``finally`` blocks and temp-file clean-ups run (a Python
    process killed by SIGTERM's default action runs none). A BaseException: no ``except
    Exception`` swallows it."""


@contextmanager
def interrupted_by_sigterm() -> Iterator[None]:
    """While the block runs, SIGTERM unwinds it like Ctrl-C does (removing a partial download),
    then the command exits 143 with one line."""

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except Terminated:
        Output(json_mode=False).error("interrupted by SIGTERM; nothing half-written was left")
        raise typer.Exit(SIGNAL_EXIT_CODES["SIGTERM"]) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def download_progress(out: Output) -> Iterator[Callable[[int, int | None], None]]:
    """A Rich progress bar on stderr, started by the first (done, total) callback of a download,
    so commands that find their data already there show nothing."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    from resnet_cifar.data.download import ARCHIVE_NAME

    progress: Progress | None = None

    def update(done: int, total: int | None) -> None:
        nonlocal progress
        if progress is None:
            progress = Progress(
                ARCHIVE_NAME,
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=out.errors,
                # A bar only helps a person watching; logs and pipes get the result line alone.
                disable=not out.errors.is_terminal,
            )
            progress.add_task("download", total=total)
            progress.start()
        progress.update(progress.task_ids[0], completed=done, total=total)

    try:
        yield update
    finally:
        if progress is not None:
            progress.stop()


# Messages torch logs on a machine without CUDA that say nothing about the user's run: the
# C++-extension helper (imported by torch.compile's CPU backend) looks for a CUDA toolkit and
# reports the one it guessed. Matched by logger and message start, so any other record (and every
# Python warning) still reaches the user.
KNOWN_HARMLESS_TORCH_LOGS: tuple[tuple[str, str], ...] = (
    ("torch.utils.cpp_extension", "No CUDA runtime is found"),
)


class _DropKnownHarmless(logging.Filter):
    drops_known_harmless = True

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_known_harmless_logs() -> None:
    """Attach the filters of KNOWN_HARMLESS_TORCH_LOGS (once per logger; idempotent)."""
    by_logger: dict[str, list[str]] = {}
    for name, prefix in KNOWN_HARMLESS_TORCH_LOGS:
        by_logger.setdefault(name, []).append(prefix)
    for name, prefixes in by_logger.items():
        logger = logging.getLogger(name)
        # By marker, not isinstance: the filter must stay single even if this module is imported
        # twice under two names (cli.common from a source tree, resnet_cifar.cli.common installed).
        if not any(getattr(existing, "drops_known_harmless", False) for existing in logger.filters):
            logger.addFilter(_DropKnownHarmless(tuple(prefixes)))
