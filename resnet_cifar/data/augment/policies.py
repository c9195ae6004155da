"""AutoAugment (CIFAR-10 policy), RandAugment and TrivialAugment Wide: the draws and their application.

The op sets, magnitude bins and probabilities are torchvision.transforms.v2's (AutoAugment with
AutoAugmentPolicy.CIFAR10 and 10 magnitude bins; RandAugment and TrivialAugmentWide with 31).
A policy's randomness is drawn up front for a whole epoch (`draw_policy`, from the epoch
plan's generator) as one op id and one signed magnitude per image and op slot; applying it is
then deterministic (`apply_policy`), so a seed fixes every augmented image and a resumed run
sees the same ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from resnet_cifar.data.augment.ops import IDENTITY, OP_ID, apply_ops, group_sizes, op_groups

POLICIES: tuple[str, ...] = ("none", "autoaugment", "randaugment", "trivialaugment")
IMAGE_SIDE = 32
RANDAUGMENT_BINS = 31
TRIVIALAUGMENT_BINS = 31
AUTOAUGMENT_BINS = 10
MAX_RANDAUGMENT_OPS = 10

MagnitudeFn = Callable[[int], "Tensor | None"]


def _linspace(low: float, high: float) -> MagnitudeFn:
    return lambda bins: torch.linspace(low, high, bins)


def _posterize(levels: int) -> MagnitudeFn:
    return lambda bins: (8 - (torch.arange(bins) / ((bins - 1) / levels))).round().int()


def _none(bins: int) -> None:
    return None


# name -> (magnitudes per bin, signed), as torchvision's _AUGMENTATION_SPACE for a 32 x 32 image.
_COMMON: dict[str, tuple[MagnitudeFn, bool]] = {
    "ShearX": (_linspace(0.0, 0.3), True),
    "ShearY": (_linspace(0.0, 0.3), True),
    "TranslateX": (_linspace(0.0, 150.0 / 331.0 * IMAGE_SIDE), True),
    "TranslateY": (_linspace(0.0, 150.0 / 331.0 * IMAGE_SIDE), True),
    "Rotate": (_linspace(0.0, 30.0), True),
    "Brightness": (_linspace(0.0, 0.9), True),
    "Color": (_linspace(0.0, 0.9), True),
    "Contrast": (_linspace(0.0, 0.9), True),
    "Sharpness": (_linspace(0.0, 0.9), True),
    "Posterize": (_posterize(4), False),
    "Solarize": (_linspace(1.0, 0.0), False),
    "AutoContrast": (_none, False),
    "Equalize": (_none, False),
}
AUTOAUGMENT_SPACE = {**_COMMON, "Invert": (_none, False)}
RANDAUGMENT_SPACE = {"Identity": (_none, False), **_COMMON}
TRIVIALAUGMENT_SPACE: dict[str, tuple[MagnitudeFn, bool]] = {
    "Identity": (_none, False),
    "ShearX": (_linspace(0.0, 0.99), True),
    "ShearY": (_linspace(0.0, 0.99), True),
    "TranslateX": (_linspace(0.0, 32.0), True),
    "TranslateY": (_linspace(0.0, 32.0), True),
    "Rotate": (_linspace(0.0, 135.0), True),
    "Brightness": (_linspace(0.0, 0.99), True),
    "Color": (_linspace(0.0, 0.99), True),
    "Contrast": (_linspace(0.0, 0.99), True),
    "Sharpness": (_linspace(0.0, 0.99), True),
    "Posterize": (_posterize(6), False),
    "Solarize": (_linspace(1.0, 0.0), False),
    "AutoContrast": (_none, False),
    "Equalize": (_none, False),
}

# AutoAugment's CIFAR-10 policy (Cubuk et al. 2019, as in torchvision): 25 sub-policies of
# two (op, probability, magnitude bin) steps.
CIFAR10_POLICY: tuple[tuple[tuple[str, float, int | None], tuple[str, float, int | None]], ...] = (
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
    (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
    (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
)


@dataclass(frozen=True)
class SpaceTables:
    """A space as tensors: global op ids [K], magnitudes [K, bins] (0 where unused), signed [K]."""

    op_ids: Tensor
    magnitudes: Tensor
    signed: Tensor


def space_tables(space: dict[str, tuple[MagnitudeFn, bool]], bins: int) -> SpaceTables:
    magnitudes = torch.zeros(len(space), bins, dtype=torch.float32)
    for row, (magnitude_fn, _) in enumerate(space.values()):
        values = magnitude_fn(bins)
        if values is not None:
            magnitudes[row] = values.to(torch.float32)
    return SpaceTables(
        op_ids=torch.tensor([OP_ID[name] for name in space]),
        magnitudes=magnitudes,
        signed=torch.tensor([signed for _, signed in space.values()]),
    )


@dataclass(frozen=True)
class PolicyPlan:
    """Per image and op slot (applied in slot order): the op id and its signed magnitude.

    ``host_groups`` is the ops' group ids as a host array, made where the plan is drawn (on the
    CPU) and kept by ``to``: each batch's group sizes are counted from it, so applying a plan on
    CUDA never reads a tensor back from the device.
    """

    ops: Tensor  # int64 [n, slots]
    magnitudes: Tensor  # float32 [n, slots]
    host_groups: np.ndarray = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.host_groups is None:
            if self.ops.device.type != "cpu":
                raise ValueError("a PolicyPlan is drawn on the CPU; move it with .to(device)")
            object.__setattr__(self, "host_groups", op_groups(self.ops.numpy()))

    def to(self, device: torch.device) -> PolicyPlan:
        return PolicyPlan(self.ops.to(device), self.magnitudes.to(device), self.host_groups)


def _signed(magnitude: Tensor, signed: Tensor, generator: torch.Generator) -> Tensor:
    # torchvision negates a signed op's magnitude when torch.rand(()) <= 0.5.
    negate = signed & (torch.rand(magnitude.shape, generator=generator) <= 0.5)
    return torch.where(negate, -magnitude, magnitude)


def draw_policy(
    policy: str, count: int, generator: torch.Generator, *, randaugment_ops: int = 2, randaugment_magnitude: int = 9
) -> PolicyPlan | None:
    """The policy's random choices for `count` images, or None for "none"."""
    if policy == "none":
        return None
    if policy == "autoaugment":
        return _draw_autoaugment(count, generator)
    if policy == "randaugment":
        tables = space_tables(RANDAUGMENT_SPACE, RANDAUGMENT_BINS)
        rows = torch.randint(len(tables.op_ids), (count, randaugment_ops), generator=generator)
        magnitude = _signed(tables.magnitudes[rows, randaugment_magnitude], tables.signed[rows], generator)
        return PolicyPlan(tables.op_ids[rows], magnitude)
    if policy == "trivialaugment":
        tables = space_tables(TRIVIALAUGMENT_SPACE, TRIVIALAUGMENT_BINS)
        rows = torch.randint(len(tables.op_ids), (count, 1), generator=generator)
        bins = torch.randint(TRIVIALAUGMENT_BINS, (count, 1), generator=generator)
        magnitude = _signed(tables.magnitudes[rows, bins], tables.signed[rows], generator)
        return PolicyPlan(tables.op_ids[rows], magnitude)
    raise ValueError(f"unknown augmentation policy {policy!r}")


def _draw_autoaugment(count: int, generator: torch.Generator) -> PolicyPlan:
    tables = space_tables(AUTOAUGMENT_SPACE, AUTOAUGMENT_BINS)
    row_of = {name: row for row, name in enumerate(AUTOAUGMENT_SPACE)}
    steps = [step for sub_policy in CIFAR10_POLICY for step in sub_policy]
    rows = torch.tensor([row_of[name] for name, _, _ in steps]).view(-1, 2)
    probability = torch.tensor([p for _, p, _ in steps]).view(-1, 2)
    bins = torch.tensor([b if b is not None else 0 for _, _, b in steps]).view(-1, 2)
    chosen = torch.randint(len(CIFAR10_POLICY), (count,), generator=generator)
    row = rows[chosen]  # [count, 2]
    applied = torch.rand((count, 2), generator=generator) <= probability[chosen]
    magnitude = _signed(tables.magnitudes[row, bins[chosen]], tables.signed[row], generator)
    ops = torch.where(applied, tables.op_ids[row], torch.full_like(row, IDENTITY))
    return PolicyPlan(ops, torch.where(applied, magnitude, torch.zeros_like(magnitude)))


def apply_policy(images: Tensor, plan: PolicyPlan, start: int, stop: int) -> Tensor:
    """Images start..stop-1 of the plan (uint8 [B, 3, H, W], on the plan's device), augmented."""
    ops, magnitudes = plan.ops[start:stop], plan.magnitudes[start:stop]
    for slot in range(ops.shape[1]):
        sizes = group_sizes(plan.host_groups[start:stop, slot])
        images = apply_ops(images, ops[:, slot], magnitudes[:, slot], sizes)
    return images
