"""resnet_cifar.data.augment on real CIFAR-10 images: each op against torchvision.transforms.v2,
the policies' op frequencies, mixup/cutmix targets, and both loaders with augmentation on."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import AutoAugmentPolicy

from resnet_cifar import config
from resnet_cifar.data.augment import POLICIES, Augmentation, apply_mix, apply_ops, draw_mix, draw_policy
from resnet_cifar.data.augment.mix import CUTMIX, MIXUP, NONE
from resnet_cifar.data.augment.ops import OP_ID, OP_NAMES
from resnet_cifar.data.augment.policies import PolicyPlan
from resnet_cifar.data.dali_loader import DaliLoader
from resnet_cifar.data.loader_spec import LoaderSpec
from resnet_cifar.data.tensor_loader import TensorLoader
from resnet_cifar.data.types import CifarSplit
from resnet_cifar.errors import UsageError

from helpers import MEAN, STD, random_subset

REFERENCE = v2.AutoAugment()  # its _apply_image_or_video_transform maps (op, magnitude) to v2's functional


def reference(images: torch.Tensor, ops: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
    """torchvision v2, one image at a time: the independent reference."""
    return torch.stack(
        [
            REFERENCE._apply_image_or_video_transform(
                image, OP_NAMES[int(op)], float(magnitude), interpolation="nearest", fill=REFERENCE._fill
            )
            for image, op, magnitude in zip(images, ops, magnitudes)
        ]
    )


@pytest.fixture(scope="module")
def fixed_images(real_splits) -> torch.Tensor:
    """96 real test images, uint8 [N, 3, 32, 32]."""
    return torch.from_numpy(random_subset(real_splits.test, 96).images).permute(0, 3, 1, 2).contiguous()


# Magnitudes spanning every policy's bins (signed where the op is), in v2's units.
MAGNITUDES = {
    "ShearX": [0.0, 0.3, -0.3, 0.99, -0.5],
    "ShearY": [0.3, -0.99, 0.1],
    "TranslateX": [14.5, -14.5, 32.0, -3.3, 0.9],
    "TranslateY": [-14.5, 7.0, -32.0],
    "Rotate": [30.0, -30.0, 90.0, -135.0, 4.5, 180.0],
    "Brightness": [0.9, -0.9, 0.99, -0.99, 0.33],
    "Color": [0.9, -0.9, -0.99, 0.1],
    "Contrast": [0.9, -0.9, 0.99, -0.5],
    "Sharpness": [0.9, -0.9, 0.99, -0.99, 0.03],
    "Posterize": [8.0, 6.0, 4.0, 2.0],
    "Solarize": [1.0, 0.7, 0.3, 0.0],
    "AutoContrast": [0.0],
    "Equalize": [0.0],
    "Invert": [0.0],
}


@pytest.mark.parametrize("name", list(MAGNITUDES))
def test_each_op_matches_torchvision_v2_exactly(fixed_images: torch.Tensor, name: str) -> None:
    # Exact for every op: the blends reproduce v2's fused multiply-add, the affine grids its
    # float32 matrices, so not even a rounding step differs.
    changed = 0
    for value in MAGNITUDES[name]:
        count = len(fixed_images)
        ops = torch.full((count,), OP_ID[name])
        magnitudes = torch.full((count,), value, dtype=torch.float32)
        ours = apply_ops(fixed_images, ops, magnitudes)
        expected = reference(fixed_images, ops, magnitudes)
        assert torch.equal(ours, expected), (name, value, int((ours != expected).sum()))
        changed += int((ours != fixed_images).sum())
    assert changed > 0, name  # the comparison looked at images the op really changed


def test_histogram_ops_match_torchvision_on_flat_and_two_level_channels(fixed_images: torch.Tensor) -> None:
    # The corner cases of equalize (step 0: left as is) and autocontrast (max == min).
    flat = torch.full((2, 3, 32, 32), 77, dtype=torch.uint8)
    two_level = fixed_images[:2].clone()
    two_level[:, 1] = torch.where(two_level[:, 1] > 128, 200, 3).to(torch.uint8)
    two_level[0, 2, :31] = 9  # one channel with a single pixel of another value
    images = torch.cat([flat, two_level])
    for name in ("Equalize", "AutoContrast"):
        ops = torch.full((4,), OP_ID[name])
        zeros = torch.zeros(4)
        assert torch.equal(apply_ops(images, ops, zeros), reference(images, ops, zeros)), name


def test_mixed_ops_in_one_batch_match_per_image_reference_and_leave_input(fixed_images: torch.Tensor) -> None:
    generator = torch.Generator().manual_seed(5)
    plan = draw_policy("trivialaugment", len(fixed_images), generator)
    assert plan is not None
    before = fixed_images.clone()
    ours = apply_ops(fixed_images, plan.ops[:, 0], plan.magnitudes[:, 0])
    assert torch.equal(fixed_images, before)  # the input is never written to
    assert torch.equal(ours, reference(fixed_images, plan.ops[:, 0], plan.magnitudes[:, 0]))
    assert len(set(plan.ops[:, 0].tolist())) >= 10  # the batch really mixed many ops


def _binomial_ok(count: int, total: int, p: float) -> bool:
    sigma = math.sqrt(total * p * (1 - p)) or 1.0
    return abs(count - total * p) <= 5 * sigma


def _torchvision_space(cls: type) -> dict[str, tuple[object, bool]]:
    return cls._AUGMENTATION_SPACE


def test_trivialaugment_draws_each_op_uniformly_with_v2_magnitudes() -> None:
    total = 140_000
    plan = draw_policy("trivialaugment", total, torch.Generator().manual_seed(1))
    assert plan is not None and plan.ops.shape == (total, 1)
    space = _torchvision_space(v2.TrivialAugmentWide)
    for name, (magnitudes_fn, signed) in space.items():
        chosen = plan.ops[:, 0] == OP_ID[name]
        assert _binomial_ok(int(chosen.sum()), total, 1 / len(space)), name
        values = magnitudes_fn(31, 32, 32)
        drawn = plan.magnitudes[chosen, 0]
        if values is None:
            assert torch.all(drawn == 0)
            continue
        allowed = set(values.float().tolist()) | ({-v for v in values.float().tolist()} if signed else set())
        assert set(drawn.tolist()) <= allowed, name
        # Every bin is drawn, and signed ops are negated half the time.
        assert len(set(drawn.abs().tolist())) == len(set(values.float().abs().tolist())), name
        if signed:
            assert _binomial_ok(int((drawn < 0).sum()), int((drawn != 0).sum()), 0.5), name


def test_randaugment_draws_n_uniform_ops_at_the_fixed_bin() -> None:
    total = 70_000
    plan = draw_policy("randaugment", total, torch.Generator().manual_seed(2), randaugment_ops=3, randaugment_magnitude=20)
    assert plan is not None and plan.ops.shape == (total, 3)
    space = _torchvision_space(v2.RandAugment)
    for name, (magnitudes_fn, signed) in space.items():
        for slot in range(3):
            chosen = plan.ops[:, slot] == OP_ID[name]
            assert _binomial_ok(int(chosen.sum()), total, 1 / len(space)), (name, slot)
        values = magnitudes_fn(31, 32, 32)
        drawn = plan.magnitudes[:, 0][plan.ops[:, 0] == OP_ID[name]]
        expected = 0.0 if values is None else float(values[20])
        assert set(drawn.abs().tolist()) == {abs(expected)}, name


def test_autoaugment_op_frequencies_follow_the_cifar10_policy() -> None:
    total = 100_000
    plan = draw_policy("autoaugment", total, torch.Generator().manual_seed(3))
    assert plan is not None and plan.ops.shape == (total, 2)
    policies = v2.AutoAugment(AutoAugmentPolicy.CIFAR10)._policies
    magnitudes = {name: fn(10, 32, 32) for name, (fn, _) in v2.AutoAugment._AUGMENTATION_SPACE.items()}
    for slot in range(2):
        expected: dict[str, float] = {}
        for sub_policy in policies:
            name, probability, _ = sub_policy[slot]
            expected[name] = expected.get(name, 0.0) + probability / len(policies)
        for name, p in expected.items():
            assert _binomial_ok(int((plan.ops[:, slot] == OP_ID[name]).sum()), total, p), (slot, name)
        applied = 1.0 - sum(expected.values())
        assert _binomial_ok(int((plan.ops[:, slot] == OP_ID["Identity"]).sum()), total, applied), slot
    # Each drawn magnitude is one the policy names for that op (in either sign when signed).
    named = {(name, float(magnitudes[name][index])) for sub in policies for name, _, index in sub if index is not None}
    for op, magnitude in zip(plan.ops.flatten().tolist(), plan.magnitudes.flatten().abs().tolist()):
        name = OP_NAMES[op]
        if magnitudes.get(name) is not None:
            assert any(name == n and math.isclose(magnitude, v, abs_tol=1e-6) for n, v in named), (name, magnitude)


def test_mix_targets_sum_to_one_and_follow_mixup_and_cutmix() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(16, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (16,), generator=generator)
    plan = draw_mix(400, mixup=0.4, cutmix=1.0, prob=0.6, seed=7)
    assert plan is not None
    kinds = np.array(plan.kind)
    assert _binomial_ok(int((kinds != NONE).sum()), 400, 0.6)
    assert _binomial_ok(int((kinds == CUTMIX).sum()), int((kinds != NONE).sum()), 0.5)
    for batch in range(40):
        mixed, targets = apply_mix(images, labels, 10, plan, batch)
        assert targets.shape == (16, 10) and torch.allclose(targets.sum(dim=1), torch.ones(16))
        lam = plan.lam[batch]
        own = targets[torch.arange(16), labels]
        assert torch.all(own >= min(lam, 1 - lam) - 1e-6)
        if plan.kind[batch] == MIXUP:
            assert torch.allclose(mixed, lam * images + (1 - lam) * images.roll(1, 0), atol=1e-6)
        elif plan.kind[batch] == CUTMIX:
            top, bottom, left, right = plan.box[batch]
            inside = torch.zeros(32, 32, dtype=torch.bool)
            inside[top:bottom, left:right] = True
            assert torch.equal(mixed[..., inside], images.roll(1, 0)[..., inside])
            assert torch.equal(mixed[..., ~inside], images[..., ~inside])
            assert math.isclose(lam, 1 - inside.float().mean().item(), abs_tol=1e-9)
        else:
            assert torch.equal(mixed, images) and lam == 1.0
    assert draw_mix(10, mixup=0.0, cutmix=0.0, prob=1.0, seed=0) is None


def test_mixup_matches_torchvision_v2_for_its_lambda() -> None:
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(8, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (8,), generator=generator)
    plan = draw_mix(1, mixup=1.0, cutmix=0.0, prob=1.0, seed=3)
    assert plan is not None and plan.kind == (MIXUP,)
    mixup = v2.MixUp(alpha=1.0, num_classes=10)
    params = {"lam": plan.lam[0]}
    expected_images = mixup.transform(images, params | {"labels": labels, "batch_size": 8})
    expected_labels = mixup._mixup_label(labels, lam=plan.lam[0])
    mixed, targets = apply_mix(images, labels, 10, plan, 0)
    assert torch.equal(mixed, expected_images) and torch.allclose(targets, expected_labels)


# ----------------------------------------------------------------------------- the loaders


@pytest.fixture(scope="module")
def small_split(real_splits) -> CifarSplit:
    return random_subset(real_splits.train, 384)


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """Normalized NCHW floats back to uint8 pixels (exact: the normalization is an affine map)."""
    return ((images.float() * STD + MEAN) * 255.0).round().clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("policy", ["autoaugment", "randaugment", "trivialaugment"])
def test_tensor_loader_applies_the_planned_policy_after_crop_and_flip(small_split: CifarSplit, policy: str) -> None:
    spec = LoaderSpec(batch_size=128, train=True, seed=4)
    plain = TensorLoader(small_split, spec)
    augmented = TensorLoader(small_split, replace(spec, augmentation=Augmentation(policy=policy)))
    plan = augmented._next_plan()[1]
    augmented.set_epoch(0)
    assert plan.policy is not None
    for start, ((crops, labels), (images, same_labels)) in zip(range(0, 384, 128), zip(plain, augmented)):
        assert torch.equal(labels, same_labels)  # the order does not depend on the policy
        pixels = to_pixels(crops)
        expected = pixels
        for slot in range(plan.policy.ops.shape[1]):
            expected = reference(
                expected, plan.policy.ops[start : start + 128, slot], plan.policy.magnitudes[start : start + 128, slot]
            )
        assert torch.equal(to_pixels(images), expected), policy


def test_policy_comes_before_cutout_and_eval_never_augments(small_split: CifarSplit) -> None:
    options = Augmentation(policy="trivialaugment", cutout=16, mixup=0.2)
    loader = TensorLoader(small_split, LoaderSpec(batch_size=128, train=True, seed=1, augmentation=options))
    _, targets = next(iter(loader))
    assert targets.dtype == torch.float32 and targets.shape == (128, 10)
    evaluation = TensorLoader(small_split, LoaderSpec(batch_size=100, train=False, augmentation=options))
    for (a, la), (b, lb) in zip(evaluation, TensorLoader(small_split, LoaderSpec(batch_size=100, train=False))):
        assert torch.equal(a, b) and torch.equal(la, lb) and la.dtype == torch.int64
    # Cutout zeroes normalized pixels after the policy ran: every image keeps its whole square
    # at exactly 0 (the mean colour), whatever the policy did to the pixels around it.
    no_mix = TensorLoader(
        small_split, LoaderSpec(batch_size=128, train=True, seed=1, augmentation=replace(options, mixup=0.0))
    )
    images, _ = next(iter(no_mix))
    no_mix.set_epoch(0)
    boxes = no_mix._next_plan()[1].cutout
    assert boxes is not None
    for index in range(128):
        square = images[index, :, boxes.top[index] : boxes.bottom[index], boxes.left[index] : boxes.right[index]]
        assert square.numel() > 0 and torch.all(square == 0), index


def test_same_seed_same_batches_and_epochs_differ(small_split: CifarSplit) -> None:
    options = Augmentation(policy="randaugment", randaugment_ops=2, randaugment_magnitude=12, mixup=0.4, cutmix=1.0)
    spec = LoaderSpec(batch_size=128, train=True, seed=9, augmentation=options)
    first = list(TensorLoader(small_split, spec))
    again = TensorLoader(small_split, spec)
    second = list(again)
    for (a, ta), (b, tb) in zip(first, second):
        assert torch.equal(a, b) and torch.equal(ta, tb)
    assert torch.allclose(torch.cat([t for _, t in first]).sum(dim=1), torch.ones(384))
    next_epoch = list(again)  # epoch 1
    assert not torch.equal(next_epoch[0][0], first[0][0])
    again.set_epoch(0)  # any epoch replays exactly, whatever ran before (what resume relies on)
    for (a, ta), (b, tb) in zip(first, again):
        assert torch.equal(a, b) and torch.equal(ta, tb)


DALI_SPEC = LoaderSpec(batch_size=128, train=True, seed=2)


@pytest.fixture(scope="module")
def plain_dali_batches(small_split: CifarSplit) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """DALI's epoch 0 of ``small_split`` without a policy or mixing (the same for every policy)."""
    return list(DaliLoader(small_split, DALI_SPEC, num_threads=2))


@pytest.mark.parametrize("policy", ["autoaugment", "randaugment", "trivialaugment"])
def test_dali_loader_on_cpu_runs_the_policy_seeded_and_mixes_like_the_tensor_loader(
    small_split: CifarSplit, plain_dali_batches: list[tuple[torch.Tensor, torch.Tensor]], policy: str
) -> None:
    options = Augmentation(policy=policy, cutmix=1.0, mixup=0.2, mix_prob=0.8)
    spec = replace(DALI_SPEC, augmentation=options)
    dali = DaliLoader(small_split, spec, num_threads=2)
    first = list(dali)
    dali.set_epoch(0)
    replay = list(dali)
    plain = plain_dali_batches
    tensor = list(TensorLoader(small_split, spec))
    changed = 0
    for (images, targets), (again, again_targets), (crops, labels), (_, tensor_targets) in zip(first, replay, plain, tensor):
        assert images.shape == (128, 3, 32, 32) and torch.isfinite(images).all()
        assert torch.equal(images, again) and torch.equal(targets, again_targets)  # seeded
        # Order, labels and the mixing plan are the shared epoch plan's: the same soft targets.
        assert torch.equal(targets, tensor_targets)
        assert torch.allclose(targets.sum(dim=1), torch.ones(128))
        changed += int((images != crops).flatten(1).any(dim=1).sum())
    assert changed > 128  # the policy (and mixing) changed most images


def test_unknown_or_bad_options_are_one_usage_error(tmp_path) -> None:
    # Checked once, by DataConfig (the loaders' Augmentation trusts it), naming the flag.
    def options(**values: object) -> config.DataConfig:
        return config.DataConfig(data_dir=tmp_path, **values)

    with pytest.raises(UsageError, match="--augment must be one of"):
        options(augment="autoaugment-imagenet")
    with pytest.raises(UsageError, match="--randaugment-magnitude"):
        options(augment="randaugment", randaugment_magnitude=31)
    with pytest.raises(UsageError, match="--randaugment-ops"):
        options(randaugment_ops=0)
    with pytest.raises(UsageError, match="--cutmix"):
        options(cutmix=float("nan"))
    with pytest.raises(UsageError, match="--mix-prob"):
        options(mix_prob=1.5)
    assert config.AUGMENT_POLICIES == POLICIES  # one registry: the config and the loaders read the same


def test_augmentation_from_config_carries_every_setting(tmp_path) -> None:
    # Every option away from its default, so a setting that does not arrive shows.
    options = dict(crop=False, flip=False, randaugment_ops=3, randaugment_magnitude=12, cutout=8, mixup=0.4, cutmix=1.0)
    cfg = config.DataConfig(data_dir=tmp_path, augment="randaugment", mix_prob=0.5, **options)
    assert Augmentation.from_config(cfg) == Augmentation(policy="randaugment", mix_prob=0.5, **options)
    assert Augmentation.from_config(config.DataConfig(data_dir=tmp_path)) == Augmentation()  # the same defaults


def test_plan_is_a_policy_plan_per_sample(small_split: CifarSplit) -> None:
    loader = TensorLoader(
        small_split, LoaderSpec(batch_size=128, train=True, augmentation=Augmentation(policy="autoaugment"))
    )
    plan = loader._next_plan()[1]
    assert isinstance(plan.policy, PolicyPlan) and plan.policy.ops.shape == (384, 2) and plan.mix is None


def test_channels_last_and_bf16_batches_carry_the_same_augmented_values(small_split: CifarSplit) -> None:
    options = Augmentation(policy="autoaugment", cutout=8, mixup=1.0, cutmix=1.0)
    spec = LoaderSpec(batch_size=128, train=True, seed=6, augmentation=options)
    base = list(TensorLoader(small_split, spec))
    nhwc = list(TensorLoader(small_split, replace(spec, channels_last=True)))
    half = list(TensorLoader(small_split, replace(spec, dtype=torch.bfloat16)))
    for (images, targets), (last, last_targets), (low, low_targets) in zip(base, nhwc, half):
        assert last.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(images, last) and torch.equal(targets, last_targets)
        # bf16: mixed in fp32, rounded once.
        assert low.dtype == torch.bfloat16 and torch.equal(low, images.to(torch.bfloat16))
        assert torch.equal(low_targets, targets)
