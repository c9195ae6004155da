"""Corruption robustness: a split's accuracy under each CIFAR-10-C corruption and severity.

The images are corrupted on the fly, batch by batch, on the evaluation device
(evaluation/corruptions.py), scored by the caller's ``score`` function (the same evaluation as
the clean split), and never written anywhere. Each batch's randomness comes from a generator
seeded with (seed, corruption, severity, batch number), so a run corrupts the same images the
same way every time on a given device, whatever else was asked for.

Summary numbers, as in Hendrycks & Dietterich (2019) without their AlexNet normalization (there
is no AlexNet here to normalize by): the mean corruption accuracy is the mean over the computed
corruptions and severities; the relative drop is ``(clean - mean) / clean``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from resnet_cifar.data.types import CifarSplit
from resnet_cifar.evaluation.corruptions import corrupt

__all__ = ["EXAMPLES", "RobustnessResult", "corruption_seed", "corrupt_split", "evaluate_robustness"]

EXAMPLES = 4  # images per corruption and severity kept for the report's grid (the split's first ones)


def corruption_seed(seed: int, name: str, severity: int, batch: int) -> int:
    return zlib.crc32(f"{seed}/{name}/{severity}/{batch}".encode())


def corrupt_split(
    images: np.ndarray, name: str, severity: int, *, device: torch.device, seed: int, batch_size: int
) -> np.ndarray:
    """uint8 ``[N, 32, 32, 3]`` images under one corruption and severity, corrupted on ``device``
    ``batch_size`` at a time; the result is back on the CPU, in the same order."""
    out = np.empty_like(images)
    for number, start in enumerate(range(0, len(images), batch_size)):
        batch = torch.from_numpy(images[start : start + batch_size]).to(device)
        generator = torch.Generator(device=device).manual_seed(corruption_seed(seed, name, severity, number))
        out[start : start + batch_size] = corrupt(batch, name, severity, generator).cpu().numpy()
    return out


@dataclass(frozen=True)
class RobustnessResult:
    """Accuracy per corruption and severity, and the report's example images
    (``examples[name]``: uint8 ``[severities, EXAMPLES, 32, 32, 3]``)."""

    clean_accuracy: float
    severities: tuple[int, ...]
    accuracy: dict[str, dict[int, float]]
    left_out: dict[str, str]
    seed: int
    examples: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def mean_corruption_accuracy(self) -> float | None:
        values = [value for row in self.accuracy.values() for value in row.values()]
        return float(np.mean(values)) if values else None

    def to_dict(self) -> dict[str, Any]:
        mean = self.mean_corruption_accuracy
        drop = None if mean is None or self.clean_accuracy == 0 else (self.clean_accuracy - mean) / self.clean_accuracy
        return {
            "severities": list(self.severities),
            "accuracy": {name: {str(s): value for s, value in row.items()} for name, row in self.accuracy.items()},
            "mean_accuracy": {name: float(np.mean(list(row.values()))) for name, row in self.accuracy.items()},
            "clean_accuracy": self.clean_accuracy,
            "mean_corruption_accuracy": mean,
            "relative_drop": drop,
            "left_out": dict(self.left_out),
            "seed": self.seed,
        }


def evaluate_robustness(
    data: CifarSplit,
    score: Callable[[CifarSplit], float],
    *,
    names: Sequence[str],
    severities: Sequence[int],
    clean_accuracy: float,
    device: torch.device,
    seed: int,
    batch_size: int,
    left_out: dict[str, str] | None = None,
) -> RobustnessResult:
    """``score`` (an accuracy) of ``data`` under each corruption in ``names`` at each severity."""
    accuracy: dict[str, dict[int, float]] = {}
    examples: dict[str, np.ndarray] = {}
    for name in names:
        row: dict[int, float] = {}
        shown = []
        for severity in severities:
            images = corrupt_split(data.images, name, severity, device=device, seed=seed, batch_size=batch_size)
            row[severity] = score(CifarSplit(images, data.labels, data.classes))
            shown.append(images[:EXAMPLES])
        accuracy[name] = row
        examples[name] = np.stack(shown)
    return RobustnessResult(
        clean_accuracy=clean_accuracy,
        severities=tuple(severities),
        accuracy=accuracy,
        left_out=dict(left_out or {}),
        seed=seed,
        examples=examples,
    )
