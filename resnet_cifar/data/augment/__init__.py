"""The training augmentation: one `Augmentation` describes all of it, in the order it is applied.

Per sample: a random crop and horizontal flip, a policy (batched tensor ops, policies.py and
ops.py; DALI graphs, dali.py), a cutout square (cutout.py); per batch: mixup or cutmix with soft
targets (mix.py). The epoch plan (data/epoch_plan.py) draws their randomness; `apply_policy`,
`apply_cutout` and `apply_mix` execute it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from resnet_cifar.choices import IMAGE_SIDE
from resnet_cifar.choices.policies import POLICIES
from resnet_cifar.config import DataConfig
from resnet_cifar.data.augment.cutout import CutoutBoxes, apply_cutout, draw_cutout
from resnet_cifar.data.augment.mix import MixPlan, apply_mix, draw_mix
from resnet_cifar.data.augment.ops import OP_ID, OP_NAMES, apply_ops
from resnet_cifar.data.augment.policies import PolicyPlan, apply_policy, draw_policy


# The options whose DataConfig setting has another name.
CONFIG_NAMES = {"policy": "augment"}


@dataclass(frozen=True)
class Augmentation:
    """A training loader's whole augmentation; the defaults are the default recipe's (crop and flip).

    crop: a random 32 x 32 crop of the image zero-padded by 4 pixels (torchvision's RandomCrop(32,
    padding=4)); flip: a horizontal flip with p = 0.5; policy: a name of
    resnet_cifar.choices.policies.POLICIES, run on the uint8 pixels after crop and flip
    (randaugment draws `randaugment_ops` ops at magnitude bin `randaugment_magnitude`); cutout:
    the side in pixels of one square per image, centred anywhere in the image and set to zero
    after normalization (0 = off). Then per batch, mixing with soft targets [N, C]: mixup/cutmix
    are Beta alphas (0 = off), mix_prob the chance a batch is mixed. Mixing belongs here too: the
    same epoch plan draws it from the same seed, and it is as much the recipe's as the rest.

    DataConfig checks each value once, naming its flag (`from_config`); this only asserts.
    """

    crop: bool = True
    flip: bool = True
    policy: str = "none"
    randaugment_ops: int = 2
    randaugment_magnitude: int = 9
    cutout: int = 0
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0

    def __post_init__(self) -> None:
        assert self.policy in POLICIES, f"unknown policy {self.policy!r}"
        assert 0 <= self.cutout <= IMAGE_SIDE, f"cutout side {self.cutout}"

    @classmethod
    def from_config(cls, cfg: DataConfig) -> Augmentation:
        """The training augmentation of a (validated) DataConfig: each option is the setting of
        the same name, but the policy, which is ``augment`` (--augment)."""
        return cls(**{option.name: getattr(cfg, CONFIG_NAMES.get(option.name, option.name)) for option in fields(cls)})


# What evaluation batches get: nothing random at all.
NO_AUGMENTATION = Augmentation(crop=False, flip=False)

__all__ = [
    "NO_AUGMENTATION",
    "OP_ID",
    "OP_NAMES",
    "POLICIES",
    "Augmentation",
    "CutoutBoxes",
    "MixPlan",
    "PolicyPlan",
    "apply_cutout",
    "apply_mix",
    "apply_ops",
    "apply_policy",
    "draw_cutout",
    "draw_mix",
    "draw_policy",
]
