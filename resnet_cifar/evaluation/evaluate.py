"""Evaluate a classifier over a loader: confusion matrix, metrics and mean loss, in one pass.

The loader contract: an iterable of ``(images, labels)`` batches, images float ``[N, 3, H, W]``
(any memory format) and labels int64 ``[N]``, already on the model's device, every sample
exactly once. Batches may differ in size (the last one usually does); nothing here depends on it.

Nothing here calls torch.compile. A trainer that compiled its model for training passes an
uncompiled view for evaluation, so that evaluation never recompiles or invalidates the
training graph.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from resnet_cifar.errors import DataError, UsageError
from resnet_cifar.evaluation.metrics import Calibration, ClassificationReport, ConfusionMeter

__all__ = ["EvalResult", "evaluate", "predict_logits"]


@dataclass(frozen=True)
class EvalResult:
    """The outcome of :func:`evaluate`. ``confusion`` is an int64 CPU tensor, rows true, columns predicted.

    ``calibration`` describes the confidences (top softmax probabilities). ``predictions`` (int64)
    and ``confidences`` (float32) hold one entry per sample in loader order, on the CPU, when
    ``evaluate`` was asked to keep them; under ``reduce`` they cover this process's shard only.
    """

    report: ClassificationReport
    loss: float | None
    count: int
    confusion: Tensor
    calibration: Calibration | None = None
    predictions: Tensor | None = None
    confidences: Tensor | None = None
    logits: Tensor | None = None  # float32 [N, C] on the CPU, before any temperature, when kept

    @property
    def accuracy(self) -> float:
        return self.report.accuracy

    def to_dict(self, class_names: list[str] | tuple[str, ...] | None = None) -> dict[str, Any]:
        """The report's JSON-ready dict plus ``loss`` (None when no loss function was given)."""
        payload = self.report.to_dict(class_names)
        payload["loss"] = self.loss
        if self.calibration is not None:
            payload["ece"] = self.calibration.ece
            payload["mean_confidence"] = self.calibration.mean_confidence
            payload["calibration"] = self.calibration.to_dict()
        return payload


def predict_logits(
    model: nn.Module,
    images: Tensor,
    *,
    autocast: Callable[[], AbstractContextManager[Any]] | None = None,
    tta: bool = False,
) -> Tensor:
    """float32 logits of a batch, optionally averaged with those of its horizontal mirror.

    TTA averages *logits*, as torchvision's and timm's reference evaluations do: the mean of
    two logit vectors is still a logit vector, so a loss and an argmax apply to it unchanged.
    The mirror flips the last (width) dimension, which is right for NCHW whatever the memory
    format: channels_last changes strides, not the meaning of the dimensions.
    """
    context = autocast if autocast is not None else contextlib.nullcontext
    with context():
        logits = model(images)
        if tta:
            mirrored = model(images.flip(-1))
    # Average in float32: under bf16 autocast the logits come out in bf16.
    logits = logits.float()
    if tta:
        logits = (logits + mirrored.float()) / 2
    return logits


def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    num_classes: int,
    autocast: Callable[[], AbstractContextManager[Any]] | None = None,
    tta: bool = False,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    resize: Callable[[Tensor], Tensor] | None = None,
    reduce: bool = False,
    keep_predictions: bool = False,
    temperature: float = 1.0,
) -> EvalResult:
    """Run ``model`` over every batch of ``loader`` in eval mode and inference mode.

    ``resize`` is applied to each image batch first (the --image-size resize, if any);
    ``autocast`` is a factory of the precision context (e.g. ``lambda: torch.autocast("cuda",
    torch.bfloat16)``); ``tta`` averages with the horizontally flipped batch; ``loss_fn``
    (mean-reduced, e.g. cross entropy) is applied to the final float32 logits and averaged
    per sample over the whole loader. The train/eval flag of every submodule is restored
    afterwards, so a frozen backbone's batch norms stay as the trainer set them.

    ``reduce`` is for multi-process evaluation, where each process passes its own shard of the
    data: the confusion matrix and the loss sums are summed over the default process group before
    anything is computed from them, so every process returns the metrics of the whole data set
    (exact counts, never an average of per-process accuracies). Every process of the group must
    call it; without an initialized group it changes nothing.

    ``keep_predictions`` also returns each sample's predicted class and confidence (for the
    report's gallery of mistakes) and its logits (before any temperature); calibration is
    measured either way.

    ``temperature`` divides the logits before the loss and the confidences (temperature scaling,
    evaluation/temperature.py); the predictions, so the accuracy and the confusion matrix, are
    the same for every temperature.

    Raises DataError for a malformed batch, a label outside ``[0, num_classes)`` or an empty
    loader, and UsageError when the model's output does not have ``num_classes`` columns.
    """
    previous_modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.inference_mode():
            forward = _Forward(model, autocast, tta, resize, temperature)
            meter, kept = _run(forward, loader, num_classes, loss_fn, keep_predictions)
            if reduce:
                # In inference mode still: the meter's tensors were made there, and stay there.
                meter.all_reduce_()
    finally:
        for module, was_training in previous_modes:
            module.training = was_training

    count = meter.count
    if count == 0:
        raise DataError("the evaluation loader yielded no samples")
    predictions = confidences = logits = None
    if kept is not None:
        predictions = torch.cat(kept[0]).cpu() if kept[0] else torch.zeros(0, dtype=torch.int64)
        confidences = torch.cat(kept[1]).cpu() if kept[1] else torch.zeros(0)
        logits = torch.cat(kept[2]).cpu() if kept[2] else torch.zeros(0, num_classes)
    return EvalResult(
        report=meter.report(),
        loss=meter.mean_loss,
        count=count,
        confusion=meter.matrix.cpu(),
        calibration=meter.calibration(),
        predictions=predictions,
        confidences=confidences,
        logits=logits,
    )


@dataclass(frozen=True)
class _Forward:
    """What turns a batch into (raw float32 logits, logits divided by the temperature)."""

    model: nn.Module
    autocast: Callable[[], AbstractContextManager[Any]] | None
    tta: bool
    resize: Callable[[Tensor], Tensor] | None
    temperature: float

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if self.resize is not None:
            images = self.resize(images)
        logits = predict_logits(self.model, images, autocast=self.autocast, tta=self.tta)
        return logits, logits if self.temperature == 1.0 else logits / self.temperature


def _run(
    forward: _Forward,
    loader: Iterable[tuple[Tensor, Tensor]],
    num_classes: int,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None,
    keep_predictions: bool,
) -> tuple[ConfusionMeter, tuple[list[Tensor], list[Tensor], list[Tensor]] | None]:
    meter: ConfusionMeter | None = None
    kept: tuple[list[Tensor], list[Tensor], list[Tensor]] | None = ([], [], []) if keep_predictions else None
    for batch_index, batch in enumerate(loader):
        images, labels = _unpack(batch, batch_index)
        if meter is None:
            # The meter lives where the labels are, so counting never copies across devices.
            meter = ConfusionMeter(num_classes, device=labels.device)
        raw, logits = forward(images)
        if logits.ndim != 2 or logits.shape != (labels.numel(), num_classes):
            raise UsageError(
                f"the model returned logits of shape {tuple(logits.shape)} for batch {batch_index}, "
                f"expected ({labels.numel()}, {num_classes}): does the checkpoint match the dataset's classes?"
            )
        mean_loss = loss_fn(logits, labels) if loss_fn is not None else None
        preds = raw.argmax(dim=1)  # of the raw logits: no rounding of a division can break a tie differently
        # The confidence of a prediction is its softmax probability (under TTA, of the averaged logits).
        confidences = torch.softmax(logits, dim=1).gather(1, preds.unsqueeze(1)).squeeze(1)
        meter.update(preds, labels, mean_loss, confidences)
        if kept is not None:
            kept[0].append(preds)
            kept[1].append(confidences)
            kept[2].append(raw)
    if meter is None:
        # An empty shard still takes part in a reduction, on the model's device (NCCL needs CUDA).
        parameter = next(forward.model.parameters(), None)
        meter = ConfusionMeter(num_classes, device=parameter.device if parameter is not None else None)
    return meter, kept


def _unpack(batch: object, batch_index: int) -> tuple[Tensor, Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise DataError(f"evaluation batch {batch_index} is not an (images, labels) pair")
    images, labels = batch
    if not isinstance(images, Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise DataError(f"evaluation batch {batch_index}: images must be a [N, C, H, W] tensor, got {shape}")
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.numel() != images.shape[0]:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise DataError(
            f"evaluation batch {batch_index}: labels must be a 1-D tensor of {images.shape[0]} ids, got {shape}"
        )
    return images, labels
