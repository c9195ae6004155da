"""Per-sample augmentation policies (batched tensor ops) and batch-level mixup/cutmix.

`Augmentation` holds the options both loaders take; the epoch plan (tensor_loader.plan_epoch)
draws their randomness, `apply_policy` and `apply_mix` execute it.
"""

from __future__ import annotations

from dataclasses import dataclass

from resnet_cifar.choices.policies import POLICIES
from resnet_cifar.data.augment.mix import MixPlan, apply_mix, draw_mix
from resnet_cifar.data.augment.ops import OP_ID, OP_NAMES, apply_ops
from resnet_cifar.data.augment.policies import PolicyPlan, apply_policy, draw_policy


@dataclass(frozen=True)
class Augmentation:
    """The options beyond crop/flip/cutout: a per-sample policy and batch mixing.

    policy: a name of resnet_cifar.choices.policies.POLICIES (randaugment draws `randaugment_ops`
    ops at magnitude bin `randaugment_magnitude`). mixup/cutmix: Beta alphas (0 = off); mix_prob:
    the chance a batch is mixed. DataConfig checks each value once, naming its flag; the loaders
    trust them.
    """

    policy: str = "none"
    randaugment_ops: int = 2
    randaugment_magnitude: int = 9
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0

    def __post_init__(self) -> None:
        assert self.policy in POLICIES, f"unknown policy {self.policy!r}"

    @property
    def mixing(self) -> bool:
        """Whether training batches carry soft targets [N, C]."""
        return self.mixup > 0 or self.cutmix > 0


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
