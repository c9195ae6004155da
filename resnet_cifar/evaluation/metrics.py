"""Classification metrics built on one confusion matrix.

Everything here derives from the confusion matrix (rows are true classes, columns are predicted
classes). Counting is exact and additive: matrices from several batches, or from several
processes, are *summed* and the metrics computed once at the end, so no averaging of
per-batch (or per-rank) accuracies ever skews the result.

Conventions:
- A ratio whose denominator is zero is 0.0 (precision of a class that is never predicted,
  recall of a class absent from the data, accuracy of zero samples). This matches
  scikit-learn's ``zero_division=0``.
- Macro averages are unweighted means over the classes that occur in the data or in the
  predictions (scikit-learn's default label set). A class that is neither present nor
  predicted says nothing about the model, so it does not drag the averages to zero when a
  small evaluation subset happens to miss it. Its per-class entries are still reported (0.0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from resnet_cifar.errors import DataError

__all__ = ["CALIBRATION_BINS", "Calibration", "ClassificationReport", "ConfusionMeter", "calibration_totals", "confusion_matrix"]

# Guo et al. 2017 ("On Calibration of Modern Neural Networks") and most papers after it report
# ECE over 15 equal-width confidence bins; using the same number keeps ours comparable.
CALIBRATION_BINS = 15


def _check_num_classes(num_classes: object) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return num_classes


def confusion_matrix(targets: Tensor, preds: Tensor, num_classes: int) -> Tensor:
    """Count (true, predicted) pairs: int64 ``[num_classes, num_classes]``, rows true, columns predicted.

    ``targets`` and ``preds`` are 1-D integer tensors of equal length on one device; the
    matrix is returned on that device. A label or prediction outside ``[0, num_classes)``
    raises DataError; a bad ``num_classes`` or mismatched devices raise ValueError.
    """
    num_classes = _check_num_classes(num_classes)
    for name, tensor in (("targets", targets), ("preds", preds)):
        if not isinstance(tensor, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.is_complex():
            raise DataError(f"{name} must hold integer class ids, got dtype {tensor.dtype}")
        if tensor.ndim != 1:
            raise DataError(f"{name} must be 1-D, got shape {tuple(tensor.shape)}")
    if targets.shape != preds.shape:
        raise DataError(f"targets and preds differ in length: {targets.numel()} vs {preds.numel()}")
    if targets.device != preds.device:
        raise ValueError(f"targets are on {targets.device} but preds are on {preds.device}")
    if targets.numel() == 0:
        return torch.zeros(num_classes, num_classes, dtype=torch.int64, device=targets.device)

    # One host sync for all four bounds. The check is needed even though bincount would
    # reject negatives: a pair like (0, num_classes) flattens to a valid cell of the wrong row.
    low_target, high_target, low_pred, high_pred = torch.stack(
        [targets.min(), targets.max(), preds.min(), preds.max()]
    ).tolist()
    for name, low, high in (("target label", low_target, high_target), ("prediction", low_pred, high_pred)):
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise DataError(f"{name} {bad} is outside the class range [0, {num_classes})")

    flat = targets.to(torch.int64) * num_classes + preds.to(torch.int64)
    counts = torch.bincount(flat, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """Elementwise numerator / denominator in float64, with 0/0 (and x/0) defined as 0.0."""
    numerator = numerator.to(torch.float64)
    denominator = denominator.to(torch.float64)
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, numerator / safe, torch.zeros_like(numerator))


@dataclass(frozen=True)
class ClassificationReport:
    """Accuracy, per-class precision / recall / F1 / support and macro averages of one matrix.

    Build it with :meth:`from_confusion`. All fields are plain Python values, so a report
    is cheap to keep, compare and serialise; ``confusion`` is the matrix as nested tuples.
    """

    confusion: tuple[tuple[int, ...], ...]
    count: int
    accuracy: float
    precision: tuple[float, ...]
    recall: tuple[float, ...]
    f1: tuple[float, ...]
    support: tuple[int, ...]
    macro_precision: float
    macro_recall: float
    macro_f1: float

    @classmethod
    def from_confusion(cls, matrix: Tensor) -> ClassificationReport:
        """Compute the report from a square confusion matrix (rows true, columns predicted)."""
        if not isinstance(matrix, Tensor):
            matrix = torch.as_tensor(matrix)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
            raise ValueError(f"a confusion matrix must be square and non-empty, got shape {tuple(matrix.shape)}")
        if matrix.is_floating_point() or matrix.is_complex() or matrix.dtype == torch.bool:
            raise ValueError(f"a confusion matrix holds integer counts, got dtype {matrix.dtype}")
        matrix = matrix.detach().to("cpu", torch.int64)
        if bool((matrix < 0).any()):
            raise ValueError("a confusion matrix cannot hold negative counts")

        true_positives = matrix.diagonal()
        support = matrix.sum(dim=1)  # samples whose true class is the row's class
        predicted = matrix.sum(dim=0)  # samples predicted as the column's class
        count = int(support.sum())

        precision = _ratio(true_positives, predicted)
        recall = _ratio(true_positives, support)
        # 2PR / (P + R) written in counts: exact, and 0 when the class is neither present nor predicted.
        f1 = _ratio(2 * true_positives, support + predicted)

        seen = (support > 0) | (predicted > 0)
        num_seen = int(seen.sum())

        def macro(values: Tensor) -> float:
            return float(values[seen].sum() / num_seen) if num_seen else 0.0

        return cls(
            confusion=tuple(tuple(row) for row in matrix.tolist()),
            count=count,
            accuracy=int(true_positives.sum()) / count if count else 0.0,
            precision=tuple(precision.tolist()),
            recall=tuple(recall.tolist()),
            f1=tuple(f1.tolist()),
            support=tuple(support.tolist()),
            macro_precision=macro(precision),
            macro_recall=macro(recall),
            macro_f1=macro(f1),
        )

    @property
    def num_classes(self) -> int:
        return len(self.support)

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """A JSON-ready dict: accuracy, count, per_class (keyed by class name), macro, confusion_matrix.

        Without ``class_names`` the classes are keyed "0", "1", ...
        """
        names = [str(index) for index in range(self.num_classes)] if class_names is None else list(class_names)
        if len(names) != self.num_classes:
            raise ValueError(f"got {len(names)} class names for a {self.num_classes}-class report")
        if len(set(names)) != len(names):
            raise ValueError(f"class names must be unique, got {names}")
        per_class = {
            name: {
                "precision": self.precision[index],
                "recall": self.recall[index],
                "f1": self.f1[index],
                "support": self.support[index],
            }
            for index, name in enumerate(names)
        }
        return {
            "accuracy": self.accuracy,
            "count": self.count,
            "per_class": per_class,
            "macro": {"precision": self.macro_precision, "recall": self.macro_recall, "f1": self.macro_f1},
            "confusion_matrix": [list(row) for row in self.confusion],
        }


def calibration_totals(confidences: Tensor, correct: Tensor, num_bins: int = CALIBRATION_BINS) -> Tensor:
    """Per-bin sums for calibration: float64 ``[3, num_bins]`` = (samples, summed confidence, hits).

    Bin ``m`` (0-based) holds the confidences in ``(m / M, (m + 1) / M]``, the convention of Guo
    et al.; a confidence of exactly 0 goes to the first bin. Sums, not means, so that totals from
    several batches or processes add up exactly. A NaN or infinite confidence (a model whose
    outputs diverged) is in no bin: it has no place on the [0, 1] scale, and the evaluation's
    loss already says NaN.
    """
    if num_bins < 1:
        raise ValueError(f"num_bins must be positive, got {num_bins}")
    confidences = confidences.detach().to(torch.float64).reshape(-1)
    correct = correct.detach().reshape(-1)
    if confidences.shape != correct.shape:
        raise DataError(f"confidences and correct differ in length: {confidences.numel()} vs {correct.numel()}")
    # Weighted out rather than filtered out: no host sync per batch.
    counted = torch.isfinite(confidences).to(torch.float64)
    confidences = torch.where(counted > 0, confidences, torch.zeros_like(confidences))
    bins = (torch.ceil(confidences * num_bins) - 1).clamp_(0, num_bins - 1).to(torch.int64)
    totals = torch.zeros(3, num_bins, dtype=torch.float64, device=confidences.device)
    totals[0].index_add_(0, bins, counted)
    totals[1].index_add_(0, bins, confidences)
    totals[2].index_add_(0, bins, correct.to(torch.float64) * counted)
    return totals


@dataclass(frozen=True)
class Calibration:
    """How far confidence (the top softmax probability) is from accuracy, from per-bin totals.

    ``ece`` is the expected calibration error: the sample-weighted mean over the bins of
    |accuracy - mean confidence| (0 for a calibrated model, up to 1). Empty bins have accuracy
    and confidence 0.0 and weigh nothing.
    """

    counts: tuple[int, ...]
    accuracy: tuple[float, ...]  # per bin: hits / samples
    confidence: tuple[float, ...]  # per bin: mean confidence
    ece: float
    mean_confidence: float

    @classmethod
    def from_totals(cls, totals: Tensor) -> Calibration:
        totals = totals.detach().to("cpu", torch.float64)
        if totals.ndim != 2 or totals.shape[0] != 3 or totals.shape[1] == 0:
            raise ValueError(f"calibration totals must have shape [3, bins], got {tuple(totals.shape)}")
        counts, confidence_sums, hits = totals
        total = float(counts.sum())
        # sum_b n_b/N * |hits_b/n_b - conf_b/n_b| = sum_b |hits_b - conf_b| / N: no division per bin.
        ece = float((hits - confidence_sums).abs().sum()) / total if total else 0.0
        return cls(
            counts=tuple(int(round(value)) for value in counts.tolist()),
            accuracy=tuple(_ratio(hits, counts).tolist()),
            confidence=tuple(_ratio(confidence_sums, counts).tolist()),
            ece=ece,
            mean_confidence=float(confidence_sums.sum()) / total if total else 0.0,
        )

    @property
    def num_bins(self) -> int:
        return len(self.counts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bins": self.num_bins,
            "count": list(self.counts),
            "accuracy": list(self.accuracy),
            "confidence": list(self.confidence),
        }


class ConfusionMeter:
    """Streams batches into one confusion matrix and a running loss sum, on the batches' device.

    The state lives in two tensors so that a distributed caller can reduce it exactly with
    ``torch.distributed.all_reduce`` (sum): ``matrix`` (int64 ``[C, C]``) and ``loss_totals``
    (float64 ``[2]``: the summed per-sample loss and the number of samples it covers).
    :meth:`all_reduce_` does that for the default process group.
    """

    def __init__(self, num_classes: int, device: torch.device | str | None = None) -> None:
        self.num_classes = _check_num_classes(num_classes)
        self.device = torch.device(device if device is not None else "cpu")
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=self.device)
        # float64 so summing millions of per-batch losses loses nothing worth mentioning.
        self.loss_totals = torch.zeros(2, dtype=torch.float64, device=self.device)
        # Per confidence bin: samples, summed confidence, hits (see calibration_totals).
        self.calibration_totals = torch.zeros(3, CALIBRATION_BINS, dtype=torch.float64, device=self.device)

    def update(
        self,
        preds: Tensor,
        targets: Tensor,
        mean_loss: Tensor | float | None = None,
        confidences: Tensor | None = None,
    ) -> None:
        """Add a batch: predicted and true class ids, optionally the batch's *mean* loss and each
        prediction's confidence (its softmax probability, for calibration).

        The mean is weighted by the batch size, so :attr:`mean_loss` is the per-sample mean
        over everything seen even when the last batch is smaller.
        """
        self.matrix += confusion_matrix(targets.to(self.device), preds.to(self.device), self.num_classes)
        if confidences is not None:
            hits = preds.to(self.device) == targets.to(self.device)
            self.calibration_totals += calibration_totals(confidences.to(self.device), hits)
        if mean_loss is not None:
            batch_size = targets.numel()
            loss = torch.as_tensor(mean_loss).detach().to(self.device, torch.float64)
            # Stays on the device: no host sync per batch.
            self.loss_totals += torch.stack([loss * batch_size, loss.new_tensor(float(batch_size))])

    @property
    def count(self) -> int:
        """Samples counted so far."""
        return int(self.matrix.sum())

    @property
    def mean_loss(self) -> float | None:
        """Per-sample mean of the losses given to :meth:`update`, or None if none were given."""
        total, count = self.loss_totals.tolist()
        return total / count if count > 0 else None

    def report(self) -> ClassificationReport:
        return ClassificationReport.from_confusion(self.matrix)

    def calibration(self) -> Calibration | None:
        """The calibration of the confidences given to :meth:`update`; None if none were given."""
        if float(self.calibration_totals[0].sum()) == 0:
            return None
        return Calibration.from_totals(self.calibration_totals)

    def all_reduce_(self) -> None:
        """Sum the state over all processes of the default group (exact: counts, not averages)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)
            dist.all_reduce(self.loss_totals, op=dist.ReduceOp.SUM)
            dist.all_reduce(self.calibration_totals, op=dist.ReduceOp.SUM)
