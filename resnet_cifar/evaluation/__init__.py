"""Evaluation: exact confusion-matrix metrics, the evaluate() loop, and report files (PNG, CSV, JSON)."""

from __future__ import annotations

from resnet_cifar.evaluation.evaluate import EvalResult, evaluate, predict_logits
from resnet_cifar.evaluation.metrics import ClassificationReport, ConfusionMeter, confusion_matrix
from resnet_cifar.evaluation.plots import (
    plot_confusion_matrix,
    plot_training_curves,
    write_confusion_csv,
    write_metrics_json,
)

__all__ = [
    "ClassificationReport",
    "ConfusionMeter",
    "EvalResult",
    "confusion_matrix",
    "evaluate",
    "plot_confusion_matrix",
    "plot_training_curves",
    "predict_logits",
    "write_confusion_csv",
    "write_metrics_json",
]
