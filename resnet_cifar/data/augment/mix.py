"""Batch-level mixup (Zhang et al. 2018) and cutmix (Yun et al. 2019) with soft targets.

Semantics of torchvision.transforms.v2.MixUp / CutMix: each image is mixed with the previous
one of its batch (`roll(1, 0)`), lambda ~ Beta(alpha, alpha), and a cutmix box of area
(1 - lambda) centred uniformly (clipped at the border, lambda then recomputed from the box).
With both alphas set, each mixed batch is mixup or cutmix with equal odds (timm's switch);
`prob` is the chance that a batch is mixed at all. The draws are made for a whole epoch up
front (`draw_mix`), from the epoch plan's seed, so mixing is as reproducible as the rest.
Soft targets are float32 [B, C] summing to 1; label smoothing is applied by the loss on top.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

NONE, MIXUP, CUTMIX = 0, 1, 2


@dataclass(frozen=True)
class MixPlan:
    """Per batch: the kind (NONE/MIXUP/CUTMIX), lambda (the weight of each image's own label)
    and the cutmix box rows top..bottom-1, columns left..right-1."""

    kind: tuple[int, ...]
    lam: tuple[float, ...]
    box: tuple[tuple[int, int, int, int], ...]


def draw_mix(
    num_batches: int, *, mixup: float, cutmix: float, prob: float, seed: int, height: int = 32, width: int = 32
) -> MixPlan | None:
    """The epoch's mixing decisions, or None when both alphas are 0 (mixing off)."""
    if mixup <= 0 and cutmix <= 0:
        return None
    rng = np.random.default_rng(seed)
    mixed = rng.random(num_batches) < prob
    use_cutmix = rng.random(num_batches) < 0.5 if mixup > 0 and cutmix > 0 else np.full(num_batches, cutmix > 0)
    alpha = np.where(use_cutmix, cutmix if cutmix > 0 else 1.0, mixup if mixup > 0 else 1.0)
    lam = rng.beta(alpha, alpha)
    centre_x = rng.integers(0, width, num_batches)
    centre_y = rng.integers(0, height, num_batches)
    kinds, lams, boxes = [], [], []
    for index in range(num_batches):  # per batch (~100 per epoch), not per image
        kind = NONE if not mixed[index] else CUTMIX if use_cutmix[index] else MIXUP
        value = float(lam[index])
        box = (0, 0, 0, 0)
        if kind == CUTMIX:
            radius = 0.5 * math.sqrt(1.0 - value)
            half_w, half_h = int(radius * width), int(radius * height)
            x, y = int(centre_x[index]), int(centre_y[index])
            box = (max(y - half_h, 0), min(y + half_h, height), max(x - half_w, 0), min(x + half_w, width))
            value = 1.0 - (box[1] - box[0]) * (box[3] - box[2]) / (height * width)
        elif kind == NONE:
            value = 1.0
        kinds.append(kind)
        lams.append(value)
        boxes.append(box)
    return MixPlan(tuple(kinds), tuple(lams), tuple(boxes))


def apply_mix(images: Tensor, labels: Tensor, num_classes: int, plan: MixPlan, batch: int) -> tuple[Tensor, Tensor]:
    """Mix batch number `batch` (images [B, C, H, W] float, labels int64 [B]); soft targets [B, num_classes]."""
    targets = torch.nn.functional.one_hot(labels, num_classes).to(torch.float32)
    kind, lam = plan.kind[batch], plan.lam[batch]
    if kind == NONE:
        return images, targets
    if kind == MIXUP:
        # torchvision's order of operations: roll(1, 0) * (1 - lam) + x * lam.
        mixed = images.roll(1, 0).mul_(1.0 - lam).add_(images.mul(lam))
        if images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous():
            mixed = mixed.contiguous(memory_format=torch.channels_last)
        images = mixed
    else:
        top, bottom, left, right = plan.box[batch]
        images = images.clone()
        images[..., top:bottom, left:right] = images.roll(1, 0)[..., top:bottom, left:right]
    return images, targets.roll(1, 0).mul_(1.0 - lam).add_(targets.mul(lam))
