"""`resnet-cifar report RUN_DIR`: the self-contained HTML report of a finished run folder.

It scores the run's best.pt on the test split and writes what `eval` writes (metrics.json, the
confusion files and report.html), through the same library call, resnet_cifar.report.evaluate_and_report.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import cache_dir_from_env, reported_errors
from .inference import print_data_note, render_eval
from .options import CheckpointDataDirOption, DeviceOption, EvalBatchSizeOption, JsonOption, TtaOption
from .render import Output


def report(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="A run folder written by `resnet-cifar train` (it holds {checkpointer.BEST}).", show_default=False
        ),
    ],
    out_dir: Annotated[
        Optional[Path],
        typer.Option("--out", help="Report folder. Default: eval-test in the run folder.", show_default=False),
    ] = None,
    data_dir: CheckpointDataDirOption = None,
    limit: Annotated[
        Optional[int],
        typer.Option("--limit", help="Score a stratified, seeded subset of N test images.", show_default=False),
    ] = None,
    device: DeviceOption = "auto",
    batch_size: EvalBatchSizeOption = None,
    tta: TtaOption = False,
    json_output: JsonOption = False,
) -> None:
    """Write the HTML report (accuracy, curves, confusion, mistakes, calibration) of a run's best
    checkpoint on the test split, or the page of a `train --seeds` folder's repeats.

    It scores {checkpointer.BEST} as `eval` does and writes the same files, {report.REPORT_FILE} among them.
    A folder of repeats (it holds {spread.REPEATS_FILE}) gets one page for all seeds instead, from that
    file: the spread, the per-seed table, each class's accuracy spread and the mean confusion matrix.
    """
    from resnet_cifar.engine.checkpointer import BEST
    from resnet_cifar.errors import UsageError
    from resnet_cifar.evaluation.spread import REPEATS_FILE
    from resnet_cifar.report import REPORT_FILE, evaluate_and_report

    out = Output(json_mode=json_output)
    with reported_errors(out):
        if not run_dir.is_dir():
            raise UsageError(f"{run_dir}: no such run folder")
        if (run_dir / REPEATS_FILE).is_file():
            return _repeats_report(out, run_dir, out_dir, json_output)
        checkpoint = run_dir / BEST
        if not checkpoint.is_file():
            raise UsageError(f"{run_dir}: no {BEST} (is it a finished `resnet-cifar train` run folder?)")
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
    print_data_note(out, outcome.report)
    if json_output:
        out.json({**outcome.report, "out_dir": str(outcome.out_dir), "report": str(page)})
        return
    render_eval(out, outcome.report, outcome.out_dir)
    out.line(f"report: {page}")


def _repeats_report(out: Output, folder: Path, out_dir: Path | None, json_output: bool) -> None:
    """The page of a `train --seeds` folder, from its summary (nothing is evaluated again)."""
    from resnet_cifar.report import REPORT_FILE
    from resnet_cifar.report.repeats import write_repeats_report

    page, summary = write_repeats_report(folder, (out_dir or folder) / REPORT_FILE)
    if json_output:
        out.json({**summary, "report": str(page)})
        return
    test = summary["test_acc"]
    std = "n/a" if test["std"] is None else f"{test['std']:.4f}"
    out.line(f"{len(summary['runs'])} seeds: test_acc mean {test['mean']:.4f}, std {std}")
    out.line(f"report: {page}")
