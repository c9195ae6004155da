"""The per-image augmentation policies of ``--augment``, as data both loaders execute.

The op sets, magnitude ranges, bins and probabilities are torchvision.transforms.v2's for a
32 x 32 image (AutoAugment with AutoAugmentPolicy.CIFAR10 and 10 magnitude bins; RandAugment and
TrivialAugmentWide with 31). A policy is a sampler (how its ops and magnitudes are drawn) over a
space of ops (each with its magnitude range over the bins). The tensor loader draws and applies
a spec with batched tensor ops (data/augment/policies.py), the DALI loader rebuilds it from
nvidia.dali.auto_aug's augmentations (data/augment/dali.py); each keeps one implementation per
sampler, bound to ``SAMPLERS`` at import.

Adding a policy that draws like an existing one (another AutoAugment policy, a RandAugment on
another space) is one entry in ``POLICIES`` (plus its test and docs/recipes.md); a new way of
drawing is a new sampler, implemented in both loaders.
"""

from __future__ import annotations

from dataclasses import dataclass

from resnet_cifar.choices import IMAGE_SIDE

# The samplers, by what they draw per image:
# - "sub_policy": one of the listed sub-policies, each step applied with its probability at its bin;
# - "n_ops": --randaugment-ops ops from the space, uniformly, at magnitude bin --randaugment-magnitude;
# - "one_op": one op from the space and one bin, both uniformly.
SAMPLERS = ("sub_policy", "n_ops", "one_op")

RANDAUGMENT_BINS = 31
RANDAUGMENT_MAX_OPS = 10


@dataclass(frozen=True)
class OpRange:
    """One op of a space (an op name of data/augment/ops.py) and its magnitudes: ``low`` to
    ``high`` over the policy's bins (None: the op takes no magnitude), drawn with a random sign
    when ``signed``. Posterize's magnitudes are whole bits kept, rounded as torchvision does."""

    op: str
    low: float | None = None
    high: float | None = None
    signed: bool = False


# (op, probability, magnitude bin or None): one step of an AutoAugment sub-policy.
Step = tuple[str, float, int | None]


@dataclass(frozen=True)
class PolicySpec:
    """One policy: ``help`` (--help shows it after the name; empty: the name says it), ``sampler``
    (None: no policy) over ``space`` (ops in draw order) with ``bins`` magnitude bins;
    ``sub_policies`` for the "sub_policy" sampler."""

    help: str
    sampler: str | None = None
    space: tuple[OpRange, ...] = ()
    bins: int = 0
    sub_policies: tuple[tuple[Step, ...], ...] = ()

    def __post_init__(self) -> None:
        assert self.sampler is None or self.sampler in SAMPLERS, f"unknown sampler {self.sampler!r}"


_ENHANCE = ("Brightness", "Color", "Contrast", "Sharpness")


def _space(shear: float, translate: float, rotate: float, enhance: float, posterize_bits: int) -> tuple[OpRange, ...]:
    """torchvision's op space for one set of ranges, in its order (Identity and Invert aside)."""
    return (
        OpRange("ShearX", 0.0, shear, signed=True),
        OpRange("ShearY", 0.0, shear, signed=True),
        OpRange("TranslateX", 0.0, translate, signed=True),
        OpRange("TranslateY", 0.0, translate, signed=True),
        OpRange("Rotate", 0.0, rotate, signed=True),
        *(OpRange(name, 0.0, enhance, signed=True) for name in _ENHANCE),
        OpRange("Posterize", 8, 8 - posterize_bits),
        OpRange("Solarize", 1.0, 0.0),  # the threshold, as a share of 255
        OpRange("AutoContrast"),
        OpRange("Equalize"),
    )


# AutoAugment's and RandAugment's ranges, and TrivialAugment Wide's.
_STANDARD = _space(shear=0.3, translate=150.0 / 331.0 * IMAGE_SIDE, rotate=30.0, enhance=0.9, posterize_bits=4)
_WIDE = _space(shear=0.99, translate=32.0, rotate=135.0, enhance=0.99, posterize_bits=6)

# AutoAugment's CIFAR-10 policy (Cubuk et al. 2019, as in torchvision): 25 sub-policies of
# two (op, probability, magnitude bin) steps.
CIFAR10_POLICY: tuple[tuple[Step, Step], ...] = (
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

POLICIES: dict[str, PolicySpec] = {
    "none": PolicySpec(""),
    "autoaugment": PolicySpec("CIFAR-10 policy", "sub_policy", (*_STANDARD, OpRange("Invert")), 10, CIFAR10_POLICY),
    "randaugment": PolicySpec(
        "randaugment_ops ops at bin randaugment_magnitude", "n_ops", (OpRange("Identity"), *_STANDARD), RANDAUGMENT_BINS
    ),
    "trivialaugment": PolicySpec("Wide", "one_op", (OpRange("Identity"), *_WIDE), 31),
}
