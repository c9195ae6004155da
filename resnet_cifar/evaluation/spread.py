"""The spread of a figure over repeated runs: mean, sample standard deviation, a Student's t
confidence interval for the mean, min and max.

Why Student's t and the sample (n - 1) standard deviation: a handful of seeds is a small sample
of the runs a recipe could give, so the mean's interval must widen with the few degrees of
freedom (t with n - 1 of them, as scipy.stats.t.interval gives), not use the normal's 1.96.
One run has no spread: its standard deviation and interval are None, never 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from resnet_cifar.errors import DataError

CONFIDENCE = 0.95

__all__ = ["CONFIDENCE", "REPEATS_FILE", "Spread", "spread", "summarize_repeats"]


@dataclass(frozen=True)
class Spread:
    """One figure over ``n`` runs (``values`` in run order)."""

    values: tuple[float, ...]
    mean: float
    std: float | None  # sample standard deviation (ddof 1); None for one run
    ci_low: float | None  # the mean's two-sided CONFIDENCE interval, Student's t with n - 1 degrees of freedom
    ci_high: float | None
    min: float
    max: float

    @property
    def n(self) -> int:
        return len(self.values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "values": list(self.values),
            "n": self.n,
            "mean": self.mean,
            "std": self.std,
            "ci95": None if self.ci_low is None else [self.ci_low, self.ci_high],
            "min": self.min,
            "max": self.max,
        }


def spread(values: Sequence[float], *, confidence: float = CONFIDENCE) -> Spread:
    """The spread of ``values`` (at least one, all finite)."""
    from scipy import stats

    numbers = tuple(float(value) for value in values)
    if not numbers:
        raise ValueError("spread() needs at least one value")
    if not all(math.isfinite(value) for value in numbers):
        raise ValueError(f"spread() needs finite values, got {numbers}")
    n = len(numbers)
    mean = math.fsum(numbers) / n
    std = ci_low = ci_high = None
    if n > 1:
        std = math.sqrt(math.fsum((value - mean) ** 2 for value in numbers) / (n - 1))
        half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * std / math.sqrt(n)
        ci_low, ci_high = mean - half, mean + half
    return Spread(numbers, mean, std, ci_low, ci_high, min(numbers), max(numbers))


# ----------------------------------------------------------------------------- repeated runs

REPEATS_FILE = "repeats.json"


def summarize_repeats(runs: Sequence[Mapping[str, Any]], *, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """The summary of repeated runs (``repeats.json``): each run's figures, then the spread of the
    test accuracy, of the best validation accuracy and of each class's test accuracy (its recall:
    the share of its images classified right), and the mean test confusion matrix.

    ``runs``: one ``{"seed", "out_dir", "result"}`` per run, ``result`` its result.json (a
    finished run: it holds the ``test`` report). Nothing timed goes in, so a run and its resumed
    twin summarize alike.
    """
    if not runs:
        raise ValueError("summarize_repeats() needs at least one run")
    rows = [_run_row(run) for run in runs]
    classes = list(rows[0]["per_class"])
    if any(list(row["per_class"]) != classes for row in rows):
        raise DataError("the repeated runs were tested on different classes; they cannot be summarized together")
    matrices = [row["confusion_matrix"] for row in rows]
    mean_matrix = [
        [math.fsum(matrix[i][j] for matrix in matrices) / len(matrices) for j in range(len(classes))]
        for i in range(len(classes))
    ]
    return {
        "seeds": [row["seed"] for row in rows],
        "confidence": confidence,
        "classes": classes,
        "runs": rows,
        "test_acc": spread([row["test_acc"] for row in rows], confidence=confidence).to_dict(),
        "val_acc": spread([row["val_acc"] for row in rows], confidence=confidence).to_dict(),
        "per_class": {
            name: spread([row["per_class"][name] for row in rows], confidence=confidence).to_dict() for name in classes
        },
        "mean_confusion_matrix": mean_matrix,
    }


def _run_row(run: Mapping[str, Any]) -> dict[str, Any]:
    result = run["result"]
    test = result.get("test")
    if not isinstance(test, Mapping) or result.get("best_val_acc") is None:
        raise DataError(f"{run['out_dir']}: the run did not finish (no test report or validation in its result.json)")
    return {
        "seed": int(run["seed"]),
        "out_dir": str(run["out_dir"]),
        "test_acc": float(test["accuracy"]),
        "val_acc": float(result["best_val_acc"]),
        "best_epoch": result.get("best_epoch"),
        "epochs_run": result.get("epochs_run"),
        "test_count": test.get("count"),
        "per_class": {name: float(entry["recall"]) for name, entry in test["per_class"].items()},
        "confusion_matrix": [list(row) for row in test["confusion_matrix"]],
    }
