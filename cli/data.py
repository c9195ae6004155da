"""`resnet-cifar data` and `resnet-cifar download`: check a CIFAR-10 folder, fetch the official release."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from resnet_cifar.files import DOWNLOAD_DEADLINE_S, DOWNLOAD_MIN_RATE, DOWNLOAD_TIMEOUT_S

from .common import cache_dir_from_env, download_progress, interrupted_by_sigterm, reported_errors
from .options import JsonOption, NoCacheOption, setting_option
from .render import Output

# The --data-dir of train: the same folder, help and default.
DataDirOption = setting_option("data.data_dir")


def data(
    directory: Annotated[
        Optional[Path],
        typer.Argument(help="The CIFAR-10 folder to check (default: the default data folder).", show_default=False),
    ] = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the md5 check of the official release files.")] = False,
    no_cache: NoCacheOption = False,
    json_output: JsonOption = False,
) -> None:
    """Detect the layout, validate every file, and print per-split and per-class counts."""
    from resnet_cifar.data.download import resolve_data_dir
    from resnet_cifar.data.load import load_cifar10
    from resnet_cifar.data.sources import describe

    out = Output(json_mode=json_output)
    with reported_errors(out):
        with interrupted_by_sigterm(), download_progress(out) as on_progress:
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


def download(
    data_dir: DataDirOption = None,
    url: Annotated[
        Optional[str],
        typer.Option("--url", help="A mirror of {download.ARCHIVE_NAME} (its md5 is still checked)."),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option("--timeout", help="Give up after this many seconds without a byte (a stall)."),
    ] = DOWNLOAD_TIMEOUT_S,
    deadline: Annotated[
        float,
        typer.Option("--deadline", help="Give up when the whole download takes longer than this many seconds."),
    ] = DOWNLOAD_DEADLINE_S,
    min_rate: Annotated[
        float,
        typer.Option(
            "--min-rate",
            help="Give up when, after the first --timeout seconds, the average is under this many bytes/s (0: off).",
        ),
    ] = DOWNLOAD_MIN_RATE,
    json_output: JsonOption = False,
) -> None:
    """Fetch the official CIFAR-10 python release, check its md5 and extract it safely."""
    from resnet_cifar.data.download import CIFAR10_URL, default_data_dir, download_cifar10
    from resnet_cifar.errors import UsageError
    from resnet_cifar.files import DownloadLimits

    out = Output(json_mode=json_output)
    with reported_errors(out), interrupted_by_sigterm():
        limits = DownloadLimits(timeout=timeout, deadline=deadline, min_rate=min_rate)
        if data_dir is not None and not data_dir.is_dir():
            raise UsageError(f"{data_dir}: no such folder")
        # download_cifar10 creates the folder, and reports one that cannot be created as one line.
        target = data_dir if data_dir is not None else default_data_dir(os.environ)
        with download_progress(out) as on_progress:
            extracted = download_cifar10(target, url=url or CIFAR10_URL, on_progress=on_progress, limits=limits)
    if json_output:
        out.json({"data_dir": str(target), "extracted": str(extracted)})
    else:
        out.line(f"CIFAR-10 ready in {extracted}")
