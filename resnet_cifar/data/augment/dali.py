"""The per-sample policies as DALI graph nodes (nvidia.dali.auto_aug), with torchvision's ranges.

DALI's own suites follow the original papers' TensorFlow ranges in places (its reduced-CIFAR-10
AutoAugment policy has 11 magnitude bins and brightness 0.1..1.9, its RandAugment translates by
up to 100 pixels, its solarize threshold starts at 256), so the suites are rebuilt here from
its augmentations with the magnitude ranges of torchvision.transforms.v2, which the tensor
loader follows: the same op set, bins, probabilities and ranges in both loaders. Geometric ops
use nearest-neighbour sampling and zero fill, as torchvision's defaults do.

Two differences remain, both inside DALI's ops: its equalize follows OpenCV's lookup table
rather than PIL's, and its translations are not truncated to whole pixels.

The randomness (which sub-policy or op, the probabilities, the signs, TrivialAugment's bins) is
DALI's: its auto_aug draws them with its own random operators, seeded by `seed`, which the
loader derives from (seed, epoch, shard), so a DALI epoch is reproducible and a resumed run
replays it, but it does not draw the tensor loader's plan.

Imported only by the DALI loader, after DALI itself.
"""

from __future__ import annotations

import warnings
from typing import Any

from resnet_cifar.data.augment.policies import CIFAR10_POLICY, IMAGE_SIDE, RANDAUGMENT_BINS, TRIVIALAUGMENT_BINS


def _suite(wide: bool) -> dict[str, Any]:
    """DALI augmentations by torchvision op name: the AutoAugment/RandAugment ranges, or TrivialAugment Wide's."""
    from nvidia.dali.auto_aug import augmentations as a

    shear, translate, rotate, enhance = (0.99, 32.0, 135.0, 0.99) if wide else (0.3, 150.0 / 331.0 * IMAGE_SIDE, 30.0, 0.9)
    # torchvision keeps 8 - round(bin / ((bins - 1) / 6)) bits (Wide), else / 4.
    kept_bits = (8, 2) if wide else (8, 4)
    return {
        "Identity": a.identity,
        "ShearX": a.shear_x.augmentation((0, shear), True),
        "ShearY": a.shear_y.augmentation((0, shear), True),
        "TranslateX": a.translate_x_no_shape.augmentation((0, translate), True),
        "TranslateY": a.translate_y_no_shape.augmentation((0, translate), True),
        "Rotate": a.rotate.augmentation((0, rotate), True),
        "Brightness": a.brightness.augmentation((0, enhance), True, a.shift_enhance_range),
        "Color": a.color.augmentation((0, enhance), True, a.shift_enhance_range),
        "Contrast": a.contrast.augmentation((0, enhance), True, a.shift_enhance_range),
        "Sharpness": a.sharpness.augmentation((0, enhance), True, a.sharpness_kernel),
        # poster_mask_uint8 takes the number of bits kept.
        "Posterize": a.posterize.augmentation(kept_bits, False, a.poster_mask_uint8),
        # torchvision inverts values >= 255 * linspace(1, 0); DALI keeps values < threshold.
        "Solarize": a.solarize.augmentation((255, 0), False),
        "AutoContrast": a.auto_contrast,
        "Equalize": a.equalize,
        "Invert": a.invert,
    }


def apply_dali_policy(
    images: Any, policy: str, *, seed: int, randaugment_ops: int = 2, randaugment_magnitude: int = 9
) -> Any:
    """`images` (uint8 HWC DataNode) through the policy; the pipeline needs enable_conditionals."""
    from nvidia.dali import types
    from nvidia.dali.auto_aug import auto_augment, rand_augment, trivial_augment
    from nvidia.dali.auto_aug.core import Policy

    options = {"fill_value": 0, "interp_type": types.INTERP_NN, "seed": seed}
    if policy == "autoaugment":
        suite = _suite(False)
        sub_policies = [[(suite[name], p, magnitude) for name, p, magnitude in steps] for steps in CIFAR10_POLICY]
        with warnings.catch_warnings():
            # The policy's ("Invert", 0.0) step is the paper's (and torchvision's): no news to a user.
            warnings.filterwarnings("ignore", message=".*used with probability 0.*")
            policy_spec = Policy("torchvision-cifar10", 10, sub_policies)
        return auto_augment.apply_auto_augment(policy_spec, images, **options)
    if policy == "randaugment":
        suite = _suite(False)
        ops = [suite[name] for name in suite if name != "Invert"]
        return rand_augment.apply_rand_augment(
            ops, images, n=randaugment_ops, m=randaugment_magnitude, num_magnitude_bins=RANDAUGMENT_BINS, **options
        )
    if policy == "trivialaugment":
        suite = _suite(True)
        ops = [suite[name] for name in suite if name != "Invert"]
        return trivial_augment.apply_trivial_augment(ops, images, num_magnitude_bins=TRIVIALAUGMENT_BINS, **options)
    raise ValueError(f"unknown augmentation policy {policy!r}")
