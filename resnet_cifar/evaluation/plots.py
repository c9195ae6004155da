"""Evaluation artefacts on disk: confusion-matrix heatmaps, training curves, CSV and JSON.

Every file goes through ``resnet_cifar.files.atomic_write``: a crash leaves the old file or the
new one, never half of one; a failed write is one WriteError naming the file (exit 1), a folder
that cannot be written into an UnwritableFolder (exit 2).

matplotlib is imported inside the plotting functions, so importing the package does not pay
for it. The figures are built on ``matplotlib.figure.Figure`` directly, which renders with the
Agg (PNG, headless) canvas, instead of through pyplot: pyplot keeps global state and a
process-wide backend, which a library has no business switching under its caller.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
from torch import Tensor

from resnet_cifar.files import atomic_write, json_text, printable

__all__ = [
    "plot_confusion_matrix",
    "plot_training_curves",
    "write_confusion_csv",
    "write_metrics_json",
]

# Union, not |: the alias is evaluated at runtime, and the package supports Python 3.10.
MatrixLike = Union[Tensor, np.ndarray, Sequence[Sequence[int]]]


def _as_matrix(matrix: MatrixLike, class_names: Sequence[str]) -> np.ndarray:
    if isinstance(matrix, Tensor):
        matrix = matrix.detach().cpu().numpy()
    array = np.asarray(matrix)
    if array.ndim != 2 or array.shape[0] != array.shape[1] or array.shape[0] == 0:
        raise ValueError(f"a confusion matrix must be square and non-empty, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"a confusion matrix holds integer counts, got dtype {array.dtype}")
    if len(class_names) != array.shape[0]:
        raise ValueError(f"got {len(class_names)} class names for a {array.shape[0]}-class matrix")
    return array.astype(np.int64)


def _row_normalized(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (the recall on the diagonal); an empty row stays 0."""
    sums = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, sums, out=np.zeros(counts.shape, dtype=np.float64), where=sums > 0)


def plot_confusion_matrix(matrix: MatrixLike, class_names: Sequence[str], path: Path) -> None:
    """Write one PNG with two labelled heatmaps side by side: counts and row-normalized rates."""
    from matplotlib.figure import Figure

    counts = _as_matrix(matrix, class_names)
    rates = _row_normalized(counts)
    size = len(class_names)
    # Scale with the class count so the per-cell annotations stay legible.
    panel = max(4.0, 0.55 * size + 2.0)
    figure = Figure(figsize=(2 * panel + 1.5, panel), layout="constrained")
    axes_counts, axes_rates = figure.subplots(1, 2)
    fontsize = 8 if size <= 12 else 6

    panels = (
        (axes_counts, counts, f"counts (N = {int(counts.sum())})", "d", "Blues"),
        (axes_rates, rates, "row-normalized (recall on the diagonal)", ".2f", "Greens"),
    )
    for axes, values, title, number_format, colormap in panels:
        top = float(values.max())
        image = axes.imshow(values, cmap=colormap, vmin=0, vmax=top if top > 0 else 1, interpolation="nearest")
        figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
        axes.set_title(title)
        axes.set_xlabel("predicted")
        axes.set_ylabel("true")
        # Names are data: shown as written (control characters escaped), never parsed as mathtext
        # (a name such as "$\\evil$" would otherwise be typeset, or fail to parse).
        labels = [printable(name) for name in class_names]
        axes.set_xticks(range(size), labels=labels, rotation=45, ha="right", rotation_mode="anchor", parse_math=False)
        axes.set_yticks(range(size), labels=labels, parse_math=False)
        for row in range(size):
            for column in range(size):
                value = values[row, column]
                # White text on the dark half of the colour map, black on the light half.
                color = "white" if top > 0 and value > top / 2 else "black"
                axes.text(
                    column, row, format(value, number_format), ha="center", va="center", color=color, fontsize=fontsize
                )
    atomic_write(Path(path), lambda out: figure.savefig(out, format="png", dpi=100))


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) for the entries that have a finite number under ``key``."""
    epochs: list[float] = []
    values: list[float] = []
    for position, entry in enumerate(history, start=1):
        value = entry.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        epoch = entry.get("epoch", position)
        epochs.append(float(epoch) if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) else position)
        values.append(float(value))
    return epochs, values


def plot_training_curves(history: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Write a PNG with two panels per epoch: loss (train_loss, val_loss) and accuracy (train_acc, val_acc).

    Entries may lack any of the keys (or hold NaN): a curve shows the epochs that have a value,
    and a panel with no data says so. The x axis is each entry's "epoch" if present, else its
    1-based position.
    """
    figure = training_curves_figure(history)
    atomic_write(Path(path), lambda out: figure.savefig(out, format="png", dpi=100))


def training_curves_figure(history: Sequence[Mapping[str, Any]]) -> Any:
    """The matplotlib Figure of ``plot_training_curves``. Epochs are whole numbers, so the x axis
    has integer ticks only (matplotlib would put 0.5, 1.5, ... under a short run)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(11, 4.5), layout="constrained")
    axes_loss, axes_acc = figure.subplots(1, 2)
    panels = (
        (axes_loss, "loss", (("train_loss", "train"), ("val_loss", "validation"))),
        (axes_acc, "accuracy", (("train_acc", "train"), ("val_acc", "validation"))),
    )
    for axes, title, curves in panels:
        plotted = False
        for key, label in curves:
            epochs, values = _series(history, key)
            if epochs:
                axes.plot(epochs, values, marker="o", markersize=3, label=label)
                plotted = True
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel(title)
        axes.grid(True, alpha=0.3)
        if plotted:
            axes.legend()
        else:
            axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes, color="gray")
    return figure


def write_confusion_csv(matrix: MatrixLike, class_names: Sequence[str], path: Path) -> None:
    """Write the matrix as CSV: header ``true\\predicted,<classes>``, then one row per true class."""
    counts = _as_matrix(matrix, class_names)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["true\\predicted", *class_names])
    for name, row in zip(class_names, counts.tolist()):
        writer.writerow([name, *row])
    atomic_write(Path(path), text.getvalue())


def write_metrics_json(payload: Mapping[str, Any], path: Path) -> None:
    """Write ``payload`` as strict, indented JSON (non-finite floats as null)."""
    atomic_write(Path(path), json_text(payload, indent=2) + "\n")
