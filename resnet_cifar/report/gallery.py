"""The gallery of mistakes: which misclassified images to show, and their thumbnails as data: URIs."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np

__all__ = ["Mistake", "PER_CLASS", "THUMBNAIL_SCALE", "TOTAL", "select_mistakes", "thumbnail_uri"]

PER_CLASS = 3  # at least this many per true class, where the class has that many mistakes
TOTAL = 60  # then the most confident of the rest, up to this many (or PER_CLASS x classes, if more)
# 32 px images shown at 96 px: upscaled by pixel repetition in the PNG itself, so they stay crisp
# even where a viewer ignores CSS image-rendering.
THUMBNAIL_SCALE = 3


@dataclass(frozen=True)
class Mistake:
    index: int  # position in the evaluated split
    true: int
    predicted: int
    confidence: float


def select_mistakes(
    labels: np.ndarray,
    predictions: np.ndarray,
    confidences: np.ndarray,
    num_classes: int,
    *,
    per_class: int = PER_CLASS,
    total: int = TOTAL,
) -> list[Mistake]:
    """The misclassified images to show, most confident first.

    Every true class gets its ``per_class`` most confident mistakes (all of them if it has fewer),
    so a class the model gets badly wrong does not crowd the others out; the remaining places, up
    to ``max(total, per_class * num_classes)``, go to the most confident mistakes left. Ties in
    confidence keep the split's order, so the selection is deterministic.
    """
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    confidences = np.asarray(confidences, dtype=np.float64)
    wrong = np.flatnonzero(labels != predictions)
    # Stable sort on -confidence: most confident first, split order among equals.
    ranked = wrong[np.argsort(-confidences[wrong], kind="stable")]
    chosen: set[int] = set()
    for cls in range(num_classes):
        chosen.update(int(index) for index in ranked[labels[ranked] == cls][:per_class])
    limit = max(total, per_class * num_classes)
    for index in ranked:
        if len(chosen) >= limit:
            break
        chosen.add(int(index))
    return [
        Mistake(index=int(i), true=int(labels[i]), predicted=int(predictions[i]), confidence=float(confidences[i]))
        for i in ranked
        if int(i) in chosen
    ]


def thumbnail_uri(image: np.ndarray, scale: int = THUMBNAIL_SCALE) -> str:
    """A uint8 ``[H, W, 3]`` image as a PNG data: URI, upscaled ``scale`` times by pixel repetition."""
    from PIL import Image

    pixels = np.ascontiguousarray(image, dtype=np.uint8)
    big = pixels.repeat(scale, axis=0).repeat(scale, axis=1)  # nearest-neighbour, exactly
    buffer = io.BytesIO()
    Image.fromarray(big).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
