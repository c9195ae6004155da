"""`resnet-cifar report RUN_DIR`: the self-contained HTML report of a finished run folder.

It scores the run's best.pt on the test split and writes what `eval` writes (metrics.json, the
confusion files and report.html), through the same library call, resnet_cifar.report.evaluate_and_report.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from .render import Output

BEST_CHECKPOINT = "best.pt"


def report(
    run_dir: Annotated[
        Path, typer.Argument(help="A run folder written by `resnet-cifar train` (it holds best.pt).", show_default=False)
    ],
    out_dir: Annotated[
        Optional[Path],
        typer.Option("--out", help="Report folder. Default: eval-test in the run folder.", show_default=False),
    ] = None,
    data_dir: Annotated[
        Optional[Path],
        typer.Option("--data-dir", help="CIFAR-10 folder. Default: the folder the run was trained on.", show_default=False),
    ] = None,
    limit: Annotated[
        Optional[int],
        typer.Option("--limit", help="Score a stratified, seeded subset of N test images.", show_default=False),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto (CUDA when available), cpu or cuda.")] = "auto",
    batch_size: Annotated[
        Optional[int],
        typer.Option("--batch-size", help="Images per batch. Default: the run's eval batch size.", show_default=False),
    ] = None,
    tta: Annotated[bool, typer.Option("--tta", help="Average the logits with those of the mirrored image.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
) -> None:
    """Write report.html (accuracy, curves, confusion, mistakes, calibration) for a run's best.pt on the test split."""
    from resnet_cifar.errors import UsageError
    from resnet_cifar.report import REPORT_FILE, evaluate_and_report

    from .inference import render_eval
    from .common import cache_dir_from_env, reported_errors

    out = Output(json_mode=json_output)
    with reported_errors(out):
        if not run_dir.is_dir():
            raise UsageError(f"{run_dir}: no such run folder")
        checkpoint = run_dir / BEST_CHECKPOINT
        if not checkpoint.is_file():
            raise UsageError(f"{run_dir}: no {BEST_CHECKPOINT} (is it a finished `resnet-cifar train` run folder?)")
        outcome = evaluate_and_report(
            checkpoint,
            split="test",
            data_dir=data_dir,
            limit=limit,
            device=device,
            batch_size=batch_size,
            tta=tta,
            out_dir=out_dir,
            cache_dir=cache_dir_from_env(os.environ),
        )
    page = outcome.out_dir / REPORT_FILE
    if json_output:
        out.json({**outcome.report, "out_dir": str(outcome.out_dir), "report": str(page)})
        return
    render_eval(out, outcome.report, outcome.out_dir)
    out.line(f"report: {page}")
