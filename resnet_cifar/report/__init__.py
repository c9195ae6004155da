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

from resnet_cifar.data.types import CifarSplit
from resnet_cifar.files import atomic_write, refuse_overwriting
from resnet_cifar.inference import EVAL_FILES, EvalOutcome, default_eval_dir, evaluate_checkpoint
from resnet_cifar.report.explain import EXPLAIN_HINT, explain_available, gradcam, heat_overlay
from resnet_cifar.report.gallery import select_mistakes, thumbnail_uri
from resnet_cifar.report.page import ReportInputs, render_page

__all__ = ["REPORT_FILE", "ReportInputs", "evaluate_and_report", "read_history", "render_page", "write_report"]

REPORT_FILE = "report.html"
HISTORY_FILE = "metrics.jsonl"


# Bounds on what a run file may hold before the report stops trusting it (it is read from a folder
# anyone may have written into): far above any real run, far below what breaks the charts.
MAX_HISTORY_BYTES = 64 << 20
MAX_EPOCH = 1_000_000
MAX_MAGNITUDE = 1e100


def read_history(run_dir: Path, run_id: str | None = None) -> tuple[list[dict[str, Any]] | None, str]:
    """The per-epoch records of ``run_dir/metrics.jsonl``, or None and the reason there are none.

    Every field is untrusted: a missing, unreadable, oversized or hostile file (deep nesting, an
    epoch out of 1..MAX_EPOCH, a number beyond MAX_MAGNITUDE or infinite) costs the report its
    curves, with a note saying why, never the report itself. NaN is kept (an epoch not validated).
    So do records of another run than the checkpoint's (``run_id``: its id, None for an older
    one; records without an id, written before run ids, are not checked).
    """
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return None, f"No training curves: there is no {HISTORY_FILE} beside the checkpoint."
    records: list[dict[str, Any]] = []
    try:
        if path.stat().st_size > MAX_HISTORY_BYTES:
            return None, f"No training curves: {path} is over {MAX_HISTORY_BYTES >> 20} MiB."
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        return None, f"No training curves: {path} could not be read ({type(error).__name__})."
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as error:  # not JSON, nested past the parser, a 5,000-digit number
            return None, f"No training curves: {path} line {number} could not be read ({type(error).__name__})."
        problem = _record_problem(record)
        if problem:
            return None, f"No training curves: {path} line {number} {problem}."
        records.append(dict(record))
    if not records:
        return None, f"No training curves: {path} is empty."
    # A record without an id (written before run ids) is taken as it is; one with another id is not.
    foreign = [record["run_id"] for record in records if record.get("run_id") not in (None, run_id)]
    if run_id is not None and foreign:
        other = str(foreign[0])[:16]
        return None, f"No training curves: {path} holds epochs of run {other}, not of the checkpoint's run {run_id}."
    return records, ""


def _record_problem(record: Any) -> str:
    """Why ``record`` (one parsed line of metrics.jsonl) is not an epoch record to draw, or ""."""
    if not isinstance(record, Mapping):
        return "is not an epoch record"
    epoch = record.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or not 0 <= epoch <= MAX_EPOCH:
        return f"has no epoch in 0..{MAX_EPOCH:,}"
    for key, value in record.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if abs(value) > MAX_MAGNITUDE:  # inf included; NaN compares False and is kept
                return f"holds {str(key)[:40]!r} out of range"
    return ""


def _clean(value: Any) -> Any:
    """Numbers as plain floats; NaN stays NaN (the charts leave such points out)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


EXPLAIN_BATCH = 64  # mistakes explained per backward pass


def explain_mistakes(outcome: EvalOutcome) -> tuple[dict[int, tuple[str, str]] | None, str]:
    """Grad-CAM overlays (data: URIs) for the gallery's mistakes, by split position: (for the
    predicted class, for the true class); None and how to get them when captum is missing."""
    if not explain_available():
        return None, f"Grad-CAM overlays of where the network looks: {EXPLAIN_HINT}."
    assert outcome.trained is not None and outcome.data is not None and outcome.result.predictions is not None
    trained, data = outcome.trained, outcome.data
    confidences = outcome.result.confidences
    mistakes = select_mistakes(
        data.labels,
        outcome.result.predictions.numpy(),
        confidences.numpy() if confidences is not None else np.zeros(len(data.labels)),
        len(outcome.classes),
    )
    overlays: dict[int, tuple[str, str]] = {}
    for start in range(0, len(mistakes), EXPLAIN_BATCH):
        chosen = mistakes[start : start + EXPLAIN_BATCH]
        indices = np.array([mistake.index for mistake in chosen])
        subset = CifarSplit(data.images[indices], np.asarray(data.labels)[indices], data.classes)
        batch, _ = next(iter(trained.loader(subset, batch_size=len(chosen))))
        batch = trained.resize(batch).float()
        predicted = gradcam(trained.model, batch, [mistake.predicted for mistake in chosen]).cpu().numpy()
        true = gradcam(trained.model, batch, [mistake.true for mistake in chosen]).cpu().numpy()
        for row, mistake in enumerate(chosen):
            image = data.images[mistake.index]
            overlays[mistake.index] = (
                thumbnail_uri(heat_overlay(image, _at_image_size(predicted[row], image))),
                thumbnail_uri(heat_overlay(image, _at_image_size(true[row], image))),
            )
    return overlays, (
        "Under each image, Grad-CAM (captum's LayerGradCam on the last stage): where the network looked for the "
        "predicted class (left) and for the true class (right); red is most."
    )


def _at_image_size(heat: np.ndarray, image: np.ndarray) -> np.ndarray:
    """A map computed at the model's --image-size, brought back to the thumbnail's pixels."""
    if heat.shape == image.shape[:2]:
        return heat
    import torch.nn.functional as F
    from torch import from_numpy

    resized = F.interpolate(from_numpy(heat)[None, None], size=image.shape[:2], mode="bilinear", align_corners=False)
    return resized[0, 0].numpy()


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
    explanations, explain_note = explain_mistakes(outcome)
    robustness = outcome.robustness
    return ReportInputs(
        explanations=explanations,
        explain_note=explain_note,
        robustness_examples=robustness.examples if robustness is not None else None,
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

    Refused first (UsageError, exit 2) when a file it would write is the checkpoint itself or lies
    in a folder another process holds (``files.refuse_overwriting``).

    The returned outcome lists report.html among its files.
    """
    target = kwargs.get("out_dir") or default_eval_dir(Path(checkpoint), kwargs.get("split", "test"))
    refuse_overwriting([Path(target) / name for name in (*EVAL_FILES, REPORT_FILE)], [checkpoint])
    outcome = evaluate_checkpoint(checkpoint, **kwargs)
    page = write_report(outcome)
    return replace(outcome, files=(*outcome.files, page))
