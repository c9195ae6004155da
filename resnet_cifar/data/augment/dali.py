"""The per-image policies of resnet_cifar.choices.policies as DALI graph nodes (nvidia.dali.auto_aug).

DALI's own suites follow the original papers' TensorFlow ranges in places (its reduced-CIFAR-10
AutoAugment policy has 11 magnitude bins and brightness 0.1..1.9, its RandAugment translates by
up to 100 pixels, its solarize threshold starts at 256), so each policy is rebuilt here from
DALI's augmentations with the registry's op space, ranges, bins and probabilities, which the
tensor loader executes too. Geometric ops use nearest-neighbour sampling and zero fill, as
torchvision's defaults do.

Two differences remain, both inside DALI's ops: its equalize follows OpenCV's lookup table
rather than PIL's, and its translations are not truncated to whole pixels.

The randomness (which sub-policy or op, the probabilities, the signs, TrivialAugment's bins) is
DALI's: its auto_aug draws them with its own random operators, seeded by `seed`, which the
loader derives from (seed, epoch, shard), so a DALI epoch is reproducible and a resumed run
replays it, but it does not draw the tensor loader's plan.

One graph per sampler of the registry, bound to it at import. Imported only by the DALI loader,
after DALI itself.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from resnet_cifar.choices import bound
from resnet_cifar.choices.policies import POLICIES, SAMPLERS, OpRange, PolicySpec

# DALI's augmentation (in nvidia.dali.auto_aug.augmentations) of each op of data/augment/ops.py,
# and the magnitude mapping that makes it take the registry's range.
_DALI_OPS: dict[str, tuple[str, str | None]] = {
    "Identity": ("identity", None),
    "ShearX": ("shear_x", None),
    "ShearY": ("shear_y", None),
    "TranslateX": ("translate_x_no_shape", None),
    "TranslateY": ("translate_y_no_shape", None),
    "Rotate": ("rotate", None),
    "Brightness": ("brightness", "shift_enhance_range"),
    "Color": ("color", "shift_enhance_range"),
    "Contrast": ("contrast", "shift_enhance_range"),
    "Sharpness": ("sharpness", "sharpness_kernel"),
    # poster_mask_uint8 takes the number of bits kept.
    "Posterize": ("posterize", "poster_mask_uint8"),
    "Solarize": ("solarize", None),
    "AutoContrast": ("auto_contrast", None),
    "Equalize": ("equalize", None),
    "Invert": ("invert", None),
}


def _augmentation(op: OpRange) -> Any:
    """DALI's augmentation for one op of a space, with the op's range."""
    from nvidia.dali.auto_aug import augmentations as a

    name, mapping = _DALI_OPS[op.op]
    augmentation = getattr(a, name)
    if op.low is None or op.high is None:
        return augmentation
    low, high = op.low, op.high
    if op.op == "Solarize":
        # torchvision inverts values >= 255 * the registry's share; DALI keeps values < the threshold.
        low, high = 255 * low, 255 * high
    if mapping is None:
        return augmentation.augmentation((low, high), op.signed)
    return augmentation.augmentation((low, high), op.signed, getattr(a, mapping))


def _suite(spec: PolicySpec) -> list[Any]:
    return [_augmentation(op) for op in spec.space]


def _sub_policy(name: str, spec: PolicySpec, images: Any, options: dict[str, Any], ops: int, magnitude: int) -> Any:
    from nvidia.dali.auto_aug import auto_augment
    from nvidia.dali.auto_aug.core import Policy

    suite = {op.op: augmentation for op, augmentation in zip(spec.space, _suite(spec))}
    sub_policies = [[(suite[op], p, bin_) for op, p, bin_ in steps] for steps in spec.sub_policies]
    with warnings.catch_warnings():
        # A step of probability 0 (the CIFAR-10 policy's Invert) is the paper's and torchvision's.
        warnings.filterwarnings("ignore", message=".*used with probability 0.*")
        policy = Policy(f"torchvision-{name}", spec.bins, sub_policies)
    return auto_augment.apply_auto_augment(policy, images, **options)


def _n_ops(name: str, spec: PolicySpec, images: Any, options: dict[str, Any], ops: int, magnitude: int) -> Any:
    from nvidia.dali.auto_aug import rand_augment

    return rand_augment.apply_rand_augment(
        _suite(spec), images, n=ops, m=magnitude, num_magnitude_bins=spec.bins, **options
    )


def _one_op(name: str, spec: PolicySpec, images: Any, options: dict[str, Any], ops: int, magnitude: int) -> Any:
    from nvidia.dali.auto_aug import trivial_augment

    return trivial_augment.apply_trivial_augment(_suite(spec), images, num_magnitude_bins=spec.bins, **options)


_Graph = Callable[[str, PolicySpec, Any, dict[str, Any], int, int], Any]
_GRAPHS: dict[str, _Graph] = dict(
    bound({"sub_policy": _sub_policy, "n_ops": _n_ops, "one_op": _one_op}, SAMPLERS, "DALI policy samplers")
)


def apply_dali_policy(
    images: Any, policy: str, *, seed: int, randaugment_ops: int = 2, randaugment_magnitude: int = 9
) -> Any:
    """`images` (uint8 HWC DataNode) through the policy; the pipeline needs enable_conditionals."""
    from nvidia.dali import types

    spec = POLICIES[policy]
    assert spec.sampler is not None, "the loader applies no graph for a policy without a sampler"
    options = {"fill_value": 0, "interp_type": types.INTERP_NN, "seed": seed}
    return _GRAPHS[spec.sampler](policy, spec, images, options, randaugment_ops, randaugment_magnitude)
