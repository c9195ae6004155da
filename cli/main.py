"""The resnet-cifar command line: parse, validate, call the library, render.

This module is the only place that reads the environment or the raw arguments; everything below
it receives plain values.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
import typer.exceptions

from .render import Output
from .inference import register as register_inference
from .report import report as report_command
from .sweep import register as register_sweep
from .train import register as register_train
from resnet_cifar import __version__
from resnet_cifar.errors import ResnetCifarError

app = typer.Typer(
    name="resnet-cifar",
    help="Train and evaluate a hand-written ResNet-50 on CIFAR-10.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DataDirOption = Annotated[
    Optional[Path],
    typer.Option(
        "--data-dir",
        help="CIFAR-10 folder (python or binary release, or train/ and test/ image folders). "
        "Default: $RESNET_CIFAR_DATA, else ~/.cache/resnet-cifar/data, downloaded when empty.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


@contextmanager
def reported_errors(out: Output) -> Iterator[None]:
    """Turn the library's errors into one line on stderr and the contract's exit code."""
    try:
        yield
    except ResnetCifarError as exc:
        out.error(str(exc))
        raise typer.Exit(exc.exit_code) from None


def cache_dir_from_env(environ: dict[str, str] | os._Environ[str]) -> Path:
    """Decoded image-folder cache: $RESNET_CIFAR_CACHE, else the XDG cache folder."""
    if environ.get("RESNET_CIFAR_CACHE"):
        return Path(environ["RESNET_CIFAR_CACHE"])
    base = Path(environ["XDG_CACHE_HOME"]) if environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "resnet-cifar" / "decoded"


@contextmanager
def download_progress(out: Output) -> Iterator[Callable[[int, int | None], None]]:
    """A Rich progress bar on stderr, started by the first (done, total) callback of a download,
    so commands that find their data already there show nothing."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    progress: Progress | None = None

    def update(done: int, total: int | None) -> None:
        nonlocal progress
        if progress is None:
            progress = Progress(
                "cifar-10-python.tar.gz",
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


@app.command()
def data(
    directory: Annotated[
        Optional[Path],
        typer.Argument(help="The CIFAR-10 folder to check (default: the default data folder).", show_default=False),
    ] = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the md5 check of the official release files.")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Decode image folders without the decoded cache.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Detect the layout, validate every file, and print per-split and per-class counts."""
    from resnet_cifar.data.download import resolve_data_dir
    from resnet_cifar.data.sources import describe, load_cifar10

    out = Output(json_mode=json_output)
    with reported_errors(out):
        with download_progress(out) as on_progress:
            root = resolve_data_dir(directory, os.environ, on_progress=on_progress)
        splits = load_cifar10(root, verify=not no_verify, cache_dir=None if no_cache else cache_dir_from_env(os.environ))
        summary = describe(splits)
    if json_output:
        out.json(summary)
        return
    out.line(f"layout: {summary['layout']}  root: {summary['root']}")
    rows = [
        (name, summary["train"]["per_class"][name], summary["test"]["per_class"][name]) for name in summary["classes"]
    ]
    rows.append(("total", summary["train"]["count"], summary["test"]["count"]))
    out.table("CIFAR-10 images per class", ("class", "train", "test"), rows)


@app.command()
def download(
    data_dir: DataDirOption = None,
    url: Annotated[
        Optional[str], typer.Option("--url", help="A mirror of cifar-10-python.tar.gz (its md5 is still checked).")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Fetch the official CIFAR-10 python release, check its md5 and extract it safely."""
    from resnet_cifar.data.download import CIFAR10_URL, default_data_dir, download_cifar10
    from resnet_cifar.errors import UsageError

    out = Output(json_mode=json_output)
    with reported_errors(out):
        if data_dir is not None and not data_dir.is_dir():
            raise UsageError(f"{data_dir}: no such folder")
        target = data_dir if data_dir is not None else default_data_dir(os.environ)
        target.mkdir(parents=True, exist_ok=True)
        with download_progress(out) as on_progress:
            extracted = download_cifar10(target, url=url or CIFAR10_URL, on_progress=on_progress)
    if json_output:
        out.json({"data_dir": str(target), "extracted": str(extracted)})
    else:
        out.line(f"CIFAR-10 ready in {extracted}")


@app.command()
def info(json_output: JsonOption = False) -> None:
    """Print versions, devices and whether DALI is usable."""
    import numpy
    import torch


    cuda = torch.cuda.is_available()
    report = {
        "resnet_cifar": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cuda_available": cuda,
        "devices": ["cpu"] + [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())],
        "dali": _dali_status(),
    }
    out = Output(json_mode=json_output)
    if json_output:
        out.json(report)
        return
    for key, value in report.items():
        shown = ", ".join(value) if isinstance(value, list) else ("not installed" if value is None else value)
        out.line(f"{key}: {shown}")


def _dali_status() -> str | None:
    """DALI's version when it imports, None when absent; an import failure is reported, not raised."""
    try:
        import nvidia.dali as dali
    except ImportError:
        return None
    except Exception as exc:  # a broken install must not take `info` down with it
        return f"unusable ({type(exc).__name__}: {exc})"
    return str(dali.__version__)


register_train(app)
register_inference(app)
app.command("report")(report_command)
register_sweep(app)


def run(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns (and exits with) the contract's exit code."""
    try:
        code = app(args=argv, standalone_mode=False)
    except typer.exceptions.TyperException as exc:  # bad flag or argument: one line, exit 2
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        Output(json_mode=False).error(message)
        code = getattr(exc, "exit_code", 2)
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    code = code if isinstance(code, int) else 0
    sys.exit(code)
