"""The self-contained HTML report of an evaluation: ``report.html`` beside metrics.json.

``resnet-cifar eval`` and ``resnet-cifar report`` both go through :func:`evaluate_and_report`:
evaluate a checkpoint (resnet_cifar.inference writes metrics.json and the confusion
files), then build the page from that very metrics dict, the evaluated images and the run
folder's metrics.jsonl, and write it atomically. Nothing here prints.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from resnet_cifar.files import atomic_write
from resnet_cifar.inference import EvalOutcome, evaluate_checkpoint
from resnet_cifar.report.page import ReportInputs, render_page

__all__ = ["REPORT_FILE", "ReportInputs", "evaluate_and_report", "read_history", "render_page", "write_report"]

REPORT_FILE = "report.html"
HISTORY_FILE = "metrics.jsonl"


def read_history(run_dir: Path, run_id: str | None = None) -> tuple[list[dict[str, Any]] | None, str]:
    """The per-epoch records of ``run_dir/metrics.jsonl``, or None and the reason there are none.

    A missing or unreadable file costs the report its curves, never the report itself; so do
    records of another run than the checkpoint's (``run_id``: its id, None for an older one;
    records without an id, written before run ids, are not checked).
    """
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return None, f"No training curves: there is no {HISTORY_FILE} beside the checkpoint."
    records: list[dict[str, Any]] = []
    try:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            if not isinstance(record, Mapping) or not isinstance(record.get("epoch"), (int, float)):
                return None, f"No training curves: {path} line {number} is not an epoch record."
            records.append(dict(record))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return None, f"No training curves: {path} could not be read ({type(error).__name__})."
    if not records:
        return None, f"No training curves: {path} is empty."
    # A record without an id (written before run ids) is taken as it is; one with another id is not.
    foreign = [record["run_id"] for record in records if record.get("run_id") not in (None, run_id)]
    if run_id is not None and foreign:
        other = str(foreign[0])[:16]
        return None, f"No training curves: {path} holds epochs of run {other}, not of the checkpoint's run {run_id}."
    return records, ""


def _clean(value: Any) -> Any:
    """Numbers as plain floats; NaN stays NaN (the charts leave such points out)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def report_inputs(outcome: EvalOutcome, *, generated: datetime | None = None) -> ReportInputs:
    """What the page needs, from an evaluate_checkpoint outcome."""
    from resnet_cifar import __version__

    if outcome.trained is None or outcome.data is None or outcome.result.predictions is None:
        raise ValueError("the outcome lacks the model, images or per-image predictions a report needs")
    trained, data, result = outcome.trained, outcome.data, outcome.result
    history, note = read_history(trained.path.parent, trained.run_id)
    try:
        saved: datetime | None = datetime.fromtimestamp(trained.path.stat().st_mtime)
    except OSError:
        saved = None
    return ReportInputs(
        metrics=outcome.report,
        classes=outcome.classes,
        config=trained.config,
        checkpoint=trained.path,
        images=data.images,
        labels=np.asarray(data.labels),
        predictions=result.predictions.numpy(),
        confidences=result.confidences.numpy() if result.confidences is not None else np.zeros(len(data.labels)),
        history=[{key: _clean(value) for key, value in record.items()} for record in history] if history else None,
        history_note=note,
        generated=generated or datetime.now(),
        version=__version__,
        checkpoint_saved=saved,
    )


def write_report(outcome: EvalOutcome, path: Path | None = None) -> Path:
    """Build the page for ``outcome`` and write it atomically (default: report.html in its out_dir)."""
    target = Path(path) if path is not None else outcome.out_dir / REPORT_FILE
    atomic_write(target, render_page(report_inputs(outcome)))
    return target


def evaluate_and_report(checkpoint: Path, **kwargs: Any) -> EvalOutcome:
    """``evaluate_checkpoint(checkpoint, **kwargs)``, then report.html beside its metrics.json.

    The returned outcome lists report.html among its files.
    """
    outcome = evaluate_checkpoint(checkpoint, **kwargs)
    page = write_report(outcome)
    return replace(outcome, files=(*outcome.files, page))
