"""Per-sample augmentation policies (batched tensor ops) and batch-level mixup/cutmix.

`Augmentation` holds the options both loaders take; the epoch plan (tensor_loader.plan_epoch)
draws their randomness, `apply_policy` and `apply_mix` execute it.
"""

from __future__ import annotations

from dataclasses import dataclass

from resnet_cifar.data.augment.mix import MixPlan, apply_mix, draw_mix
from resnet_cifar.data.augment.ops import OP_ID, OP_NAMES, apply_ops
from resnet_cifar.data.augment.policies import (
    MAX_RANDAUGMENT_OPS,
    POLICIES,
    RANDAUGMENT_BINS,
    PolicyPlan,
    apply_policy,
    draw_policy,
)
from resnet_cifar.errors import UsageError


@dataclass(frozen=True)
class Augmentation:
    """The options beyond crop/flip/cutout: a per-sample policy and batch mixing.

    policy: none, autoaugment (CIFAR-10 policy), randaugment (`randaugment_ops` ops at magnitude
    bin `randaugment_magnitude` of 31) or trivialaugment (Wide). mixup/cutmix: Beta alphas (0 =
    off); mix_prob: the chance a batch is mixed. Each bad value is one UsageError naming its flag.
    """

    policy: str = "none"
    randaugment_ops: int = 2
    randaugment_magnitude: int = 9
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0

    def __post_init__(self) -> None:
        check_augmentation(self)

    @property
    def mixing(self) -> bool:
        """Whether training batches carry soft targets [N, C]."""
        return self.mixup > 0 or self.cutmix > 0


def check_augmentation(options: Augmentation) -> None:
    if options.policy not in POLICIES:
        raise UsageError(f"--augment must be one of {', '.join(POLICIES)}, got {options.policy!r}")
    if not 1 <= options.randaugment_ops <= MAX_RANDAUGMENT_OPS:
        raise UsageError(f"--randaugment-ops must be in [1, {MAX_RANDAUGMENT_OPS}], got {options.randaugment_ops}")
    if not 0 <= options.randaugment_magnitude < RANDAUGMENT_BINS:
        raise UsageError(
            f"--randaugment-magnitude must be in [0, {RANDAUGMENT_BINS - 1}], got {options.randaugment_magnitude}"
        )
    for flag, alpha in (("--mixup", options.mixup), ("--cutmix", options.cutmix)):
        if not (alpha >= 0 and alpha < float("inf")):  # also rejects NaN
            raise UsageError(f"{flag} must be a Beta alpha >= 0 (0 = off), got {alpha}")
    if not 0.0 <= options.mix_prob <= 1.0:
        raise UsageError(f"--mix-prob must be in [0, 1], got {options.mix_prob}")


NO_AUGMENTATION = Augmentation()

__all__ = [
    "NO_AUGMENTATION",
    "OP_ID",
    "OP_NAMES",
    "POLICIES",
    "Augmentation",
    "MixPlan",
    "PolicyPlan",
    "apply_mix",
    "apply_ops",
    "apply_policy",
    "draw_mix",
    "draw_policy",
]
