"""TensorLoader on real CIFAR-10 images: augmentation, normalization, coverage, shards, seeds, formats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resnet_cifar.config import DataConfig
from resnet_cifar.data.augment import Augmentation
from resnet_cifar.data.loader_spec import LoaderSpec
from resnet_cifar.data.tensor_loader import TensorLoader
from resnet_cifar.data.types import CIFAR10_MEAN, CIFAR10_STD, CifarSplit
from resnet_cifar.errors import UsageError

MEAN = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
SHIFTS = range(-4, 5)


def identity_split(split: CifarSplit, count: int, seed: int = 0) -> CifarSplit:
    """`count` real images whose label is their own index, so every output names its source."""
    chosen = np.random.default_rng(seed).choice(len(split), size=count, replace=False)
    names = tuple(f"sample{index}" for index in range(count))
    return CifarSplit(split.images[chosen], np.arange(count, dtype=np.int64), names)


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Normalized NCHW floats back to 0..255 pixel values, NHWC, still as floats."""
    pixels = (images.float().cpu() * STD + MEAN) * 255.0
    return pixels.permute(0, 2, 3, 1)


def recover_augmentation(
    source: np.ndarray, images: torch.Tensor, labels: torch.Tensor
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each output: the (shift_y, shift_x, flip) whose crop of its source fits best, and the error.

    The candidates are built independently of the loader: the source zero-padded by 4 pixels
    (torchvision RandomCrop(32, padding=4)), cut at each of the 9 x 9 offsets, optionally
    mirrored. The best candidate minimizes the squared difference of the R+G+B sums, found
    for all 162 candidates at once as ||window||^2 - 2 <window, output> + ||output||^2 with
    grouped convolutions; its error is then measured exactly, as the mean absolute RGB
    difference in pixel units (0 for a perfect crop).
    """
    conv2d = torch.nn.functional.conv2d
    count = len(labels)
    outputs = denormalize(images)  # [n, 32, 32, 3], 0..255
    padded = torch.from_numpy(np.pad(source[labels.cpu().numpy()], ((0, 0), (4, 4), (4, 4), (0, 0)))).float()
    padded_gray = padded.sum(dim=3).unsqueeze(0) / 765.0  # [1, n, 40, 40]
    output_gray = outputs.sum(dim=3) / 765.0
    ones = torch.ones(count, 1, 32, 32)
    window_energy = conv2d(padded_gray.square(), ones, groups=count)[0]  # [n, 9, 9]
    distances = []
    # A mirrored crop equals the output exactly when the crop equals the mirrored output.
    for target in (output_gray, output_gray.flip(-1)):
        correlation = conv2d(padded_gray, target.unsqueeze(1), groups=count)[0]
        distances.append(window_energy - 2 * correlation + target.square().sum(dim=(1, 2)).view(-1, 1, 1))
    best = torch.stack(distances, dim=-1).flatten(1).argmin(dim=1)  # index of (row, column, flip)
    row, column, flip = best // 18, best % 18 // 2, best % 2 == 1
    windows = padded.unfold(1, 32, 1).unfold(2, 32, 1)  # [n, 9, 9, 3, 32, 32], a view
    chosen = windows[torch.arange(count), row, column].permute(0, 2, 3, 1)  # [n, 32, 32, 3]
    chosen = torch.where(flip.view(-1, 1, 1, 1), chosen.flip(2), chosen)
    error = (chosen - outputs).abs().mean(dim=(1, 2, 3))
    return (row - 4).numpy(), (column - 4).numpy(), flip.numpy(), error.numpy()


def collect(loader) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(loader)
    return torch.cat([images for images, _ in batches]), torch.cat([labels for _, labels in batches])


@pytest.fixture(scope="module")
def small_split(real_splits) -> CifarSplit:
    return identity_split(real_splits.train, 2000)


def test_train_crops_cover_every_offset_and_flip_half_the_images(small_split: CifarSplit) -> None:
    loader = TensorLoader(small_split, LoaderSpec(batch_size=256, train=True, seed=1))
    images, labels = collect(loader)
    shift_y, shift_x, flip, error = recover_augmentation(small_split.images, images, labels)
    # Exact: every output is a zero-padded crop (and maybe mirror) of its own source image.
    assert error.max() < 1e-3
    assert set(shift_y.tolist()) == set(SHIFTS)
    assert set(shift_x.tolist()) == set(SHIFTS)
    assert len(set(zip(shift_y.tolist(), shift_x.tolist()))) == 81
    assert abs(flip.mean() - 0.5) < 0.05


def test_eval_yields_the_unaugmented_images_in_order(small_split: CifarSplit) -> None:
    loader = TensorLoader(small_split, LoaderSpec(batch_size=300, train=False))
    images, labels = collect(loader)
    assert torch.equal(labels, torch.arange(len(small_split)))
    restored = denormalize(images).round().to(torch.uint8)
    assert torch.equal(restored, torch.from_numpy(small_split.images))


def test_normalized_channels_have_zero_mean_and_unit_std(real_splits) -> None:
    loader = TensorLoader(real_splits.train, LoaderSpec(batch_size=1000, train=False))
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    count = 0
    for images, _ in loader:
        total += images.double().sum(dim=(0, 2, 3))
        squares += images.double().square().sum(dim=(0, 2, 3))
        count += images.shape[0] * 32 * 32
    mean = total / count
    std = (squares / count - mean.square()).sqrt()
    assert torch.allclose(mean, torch.zeros(3, dtype=torch.float64), atol=0.05)
    assert torch.allclose(std, torch.ones(3, dtype=torch.float64), atol=0.05)


@pytest.mark.parametrize("num_shards", [1, 3])
def test_eval_shards_cover_every_sample_exactly_once(small_split: CifarSplit, num_shards: int) -> None:
    split = small_split.subset(np.arange(1003))  # 1003 is prime: no batch size or shard count divides it
    seen: list[torch.Tensor] = []
    for shard_id in range(num_shards):
        loader = TensorLoader(split, LoaderSpec(batch_size=64, train=False, shard_id=shard_id, num_shards=num_shards))
        batches = list(loader)
        assert len(batches) == len(loader)
        assert sum(len(labels) for _, labels in batches) == loader.num_samples
        assert len(batches[-1][1]) < 64  # the last partial batch is kept
        seen.extend(labels for _, labels in batches)
    assert torch.equal(torch.cat(seen).sort().values, torch.arange(1003))


def test_train_drops_the_last_partial_batch(small_split: CifarSplit) -> None:
    split = small_split.subset(np.arange(1003))
    loader = TensorLoader(split, LoaderSpec(batch_size=64, train=True))
    batches = list(loader)
    assert len(loader) == len(batches) == 1003 // 64
    assert loader.num_samples == 15 * 64
    for images, labels in batches:
        assert images.shape == (64, 3, 32, 32)
        assert labels.shape == (64,)
    labels = torch.cat([labels for _, labels in batches])
    assert len(labels.unique()) == len(labels)  # no sample twice in an epoch


def test_train_shards_are_disjoint_and_equal_sized(small_split: CifarSplit) -> None:
    shards = [
        TensorLoader(small_split, LoaderSpec(batch_size=100, train=True, seed=5, shard_id=shard_id, num_shards=3))
        for shard_id in range(3)
    ]
    for epoch in (0, 1):
        per_shard = []
        for loader in shards:
            loader.set_epoch(epoch)
            per_shard.append(collect(loader)[1])
        assert {len(labels) for labels in per_shard} == {600}  # 666 each, 6 full batches
        together = torch.cat(per_shard)
        assert len(together.unique()) == len(together)


def test_each_epoch_is_reshuffled_and_reproducible_from_the_seed(small_split: CifarSplit) -> None:
    first = TensorLoader(small_split, LoaderSpec(batch_size=500, train=True, seed=7))
    twin = TensorLoader(small_split, LoaderSpec(batch_size=500, train=True, seed=7))
    other_seed = TensorLoader(small_split, LoaderSpec(batch_size=500, train=True, seed=8))
    epoch0_images, epoch0_labels = collect(first)
    epoch1_images, epoch1_labels = collect(first)  # plain re-iteration advances the epoch
    assert first.epoch == 2
    assert not torch.equal(epoch0_labels, epoch1_labels)
    twin_images, twin_labels = collect(twin)
    assert torch.equal(twin_labels, epoch0_labels) and torch.equal(twin_images, epoch0_images)
    assert not torch.equal(collect(other_seed)[1], epoch0_labels)
    # An epoch depends on (seed, epoch) only, not on the epochs iterated before it.
    jumped = TensorLoader(small_split, LoaderSpec(batch_size=500, train=True, seed=7))
    jumped.set_epoch(1)
    jumped_images, jumped_labels = collect(jumped)
    assert torch.equal(jumped_labels, epoch1_labels) and torch.equal(jumped_images, epoch1_images)


def test_same_samples_different_augmentation_across_epochs(small_split: CifarSplit) -> None:
    loader = TensorLoader(small_split.subset(np.arange(500)), LoaderSpec(batch_size=500, train=True, seed=3))
    (images0, labels0), (images1, labels1) = next(iter(loader)), next(iter(loader))
    order0, order1 = labels0.argsort(), labels1.argsort()
    assert torch.equal(labels0[order0], labels1[order1])
    shifts0 = recover_augmentation(small_split.images, images0[order0], labels0[order0])
    shifts1 = recover_augmentation(small_split.images, images1[order1], labels1[order1])
    assert (shifts0[0] != shifts1[0]).mean() > 0.5  # fresh crops and flips each epoch
    assert (shifts0[2] != shifts1[2]).mean() > 0.3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("train", [False, True])
def test_dtype_and_memory_format(
    small_split: CifarSplit, dtype: torch.dtype, channels_last: bool, train: bool
) -> None:
    settings = dict(batch_size=128, train=train, seed=2)
    reference = TensorLoader(small_split, LoaderSpec(**settings))
    loader = TensorLoader(small_split, LoaderSpec(**settings, dtype=dtype, channels_last=channels_last))
    (expected, expected_labels), (images, labels) = next(iter(reference)), next(iter(loader))
    assert images.shape == (128, 3, 32, 32)
    assert images.dtype == dtype
    assert images.device.type == "cpu"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    assert images.is_contiguous(memory_format=memory_format)
    assert labels.dtype == torch.int64 and labels.shape == (128,)
    assert torch.equal(labels, expected_labels)
    tolerance = {torch.float32: 1e-6, torch.float16: 4e-3, torch.bfloat16: 2e-2}[dtype]
    assert torch.allclose(images.float(), expected, atol=tolerance, rtol=0)


def test_a_shard_without_a_full_batch_is_a_usage_error(small_split: CifarSplit) -> None:
    # Only the data can tell (500 samples per shard): the one check the loaders make themselves.
    with pytest.raises(UsageError, match="no full batch"):
        TensorLoader(small_split.subset(np.arange(1000)), LoaderSpec(batch_size=600, train=True, num_shards=2))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"batch_size": 0}, "batch size 0"),
        ({"shard_id": 2, "num_shards": 2}, "shard 2 of 2"),
        ({"num_shards": 0}, "shard 0 of 0"),
        ({"dtype": torch.int32}, "batch dtype torch.int32"),
        ({"seed": -1}, "seed -1"),
        ({"device": "cpu"}, "not a torch.device"),
    ],
)
def test_spec_values_are_the_configs_to_check_and_only_asserted(settings: dict, message: str) -> None:
    # DataConfig, the distributed environment and the precision check these once, naming the flag
    # or variable; a LoaderSpec built without them asserts.
    with pytest.raises(AssertionError, match=message):
        LoaderSpec(**{"batch_size": 32, "train": True, **settings})


@pytest.mark.parametrize("cutout", [33, -1])
def test_bad_cutout_is_one_usage_error_naming_the_flag(tmp_path, cutout: int) -> None:
    with pytest.raises(UsageError, match=f"^--cutout must be a square side in \\[0, 32\\] pixels, got {cutout}$"):
        DataConfig(data_dir=tmp_path, cutout=cutout)
    with pytest.raises(AssertionError, match=f"cutout side {cutout}"):
        Augmentation(cutout=cutout)


# --- augmentation options: crop, flip, cutout ----------------------------------------------


def zeroed_pixels(images: torch.Tensor) -> torch.Tensor:
    """bool [n, 32, 32]: pixels whose every channel is exactly zero (the mean, once normalized).

    Never true of an unerased pixel: 0 would need pixel / 255 == mean in all three channels,
    and the crop's black padding normalizes to -mean / std, not 0.
    """
    return (images.float() == 0).all(dim=1)


def zeroed_boxes(zeroed: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(top, bottom, left, right) of each sample's zeroed pixels, after checking that they form
    one solid rectangle (rows top..bottom-1 x columns left..right-1)."""
    rows, columns = zeroed.any(dim=2), zeroed.any(dim=1)  # [n, 32] each
    assert rows.any(dim=1).all(), "an image without a cutout square"
    positions = torch.arange(32)

    def span(hit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first = torch.where(hit, positions, 32).min(dim=1).values
        last = torch.where(hit, positions, -1).max(dim=1).values
        assert torch.equal(hit.sum(dim=1), last - first + 1), "zeroed rows or columns with a gap"
        return first, last + 1

    (top, bottom), (left, right) = span(rows), span(columns)
    assert torch.equal(zeroed, rows[:, :, None] & columns[:, None, :]), "zeroed pixels not a rectangle"
    return top, bottom, left, right


def expected_clipped_side(side: int) -> float:
    """Mean length of the square's extent along one axis, its centre uniform over 0..31 and the
    square spanning centre - side // 2 .. centre - side // 2 + side - 1, clipped to the image."""
    lengths = [min(32, c - side // 2 + side) - max(0, c - side // 2) for c in range(32)]
    return sum(lengths) / 32


def test_crop_off_keeps_the_source_position_and_the_same_flips(small_split: CifarSplit) -> None:
    spec = LoaderSpec(batch_size=250, train=True, seed=4, augmentation=Augmentation(crop=False))
    images, labels = collect(TensorLoader(small_split, spec))
    shift_y, shift_x, flip, error = recover_augmentation(small_split.images, images, labels)
    assert error.max() < 1e-3
    assert not shift_y.any() and not shift_x.any()
    assert abs(flip.mean() - 0.5) < 0.05
    # The crop option does not move the other draws: the flips are those of crop=True.
    default_images, default_labels = collect(TensorLoader(small_split, LoaderSpec(batch_size=250, train=True, seed=4)))
    assert torch.equal(default_labels, labels)
    assert np.array_equal(recover_augmentation(small_split.images, default_images, labels)[2], flip)


def test_flip_off_never_mirrors_and_keeps_the_same_crops(small_split: CifarSplit) -> None:
    spec = LoaderSpec(batch_size=250, train=True, seed=4, augmentation=Augmentation(flip=False))
    images, labels = collect(TensorLoader(small_split, spec))
    shift_y, shift_x, flip, error = recover_augmentation(small_split.images, images, labels)
    assert error.max() < 1e-3
    assert not flip.any()
    assert len(set(zip(shift_y.tolist(), shift_x.tolist()))) == 81
    default_images, _ = collect(TensorLoader(small_split, LoaderSpec(batch_size=250, train=True, seed=4)))
    default_shifts = recover_augmentation(small_split.images, default_images, labels)
    assert np.array_equal(default_shifts[0], shift_y) and np.array_equal(default_shifts[1], shift_x)


def test_crop_and_flip_off_yield_the_source_images_shuffled(small_split: CifarSplit) -> None:
    spec = LoaderSpec(batch_size=250, train=True, augmentation=Augmentation(crop=False, flip=False))
    images, labels = collect(TensorLoader(small_split, spec))
    assert not torch.equal(labels, labels.sort().values)  # still shuffled
    restored = denormalize(images).round().to(torch.uint8)
    assert torch.equal(restored, torch.from_numpy(small_split.images[labels.numpy()]))


@pytest.mark.parametrize("side", [1, 5, 16, 32])
def test_cutout_zeroes_one_clipped_square_per_image_at_varying_places(
    small_split: CifarSplit, side: int
) -> None:
    settings = dict(batch_size=250, train=True, seed=6)
    images, labels = collect(TensorLoader(small_split, LoaderSpec(**settings, augmentation=Augmentation(cutout=side))))
    reference, reference_labels = collect(TensorLoader(small_split, LoaderSpec(**settings)))
    assert torch.equal(labels, reference_labels)
    zeroed = zeroed_pixels(images)
    top, bottom, left, right = zeroed_boxes(zeroed)
    for low, high in ((top, bottom), (left, right)):
        length = high - low
        assert length.max() == side and length.min() >= (side + 1) // 2
        # Shorter than the side only where the square runs past the image border.
        assert ((length == side) | (low == 0) | (high == 32)).all()
    assert len(set(zip(top.tolist(), bottom.tolist(), left.tolist(), right.tolist()))) > 100
    # Everything outside the square is the plain crop+flip: cutout did not move those draws.
    kept = ~zeroed.unsqueeze(1).expand_as(images)
    assert torch.equal(images[kept], reference[kept])
    # Centres uniform over the image: the erased fraction matches the clipped square's mean area.
    expected = expected_clipped_side(side) ** 2 / 1024
    assert abs(zeroed.float().mean().item() - expected) < 0.01


def test_cutout_squares_change_across_epochs_and_follow_the_seed(small_split: CifarSplit) -> None:
    spec = LoaderSpec(batch_size=500, train=True, seed=2, augmentation=Augmentation(cutout=8))
    loader = TensorLoader(small_split, spec)
    first, second = collect(loader), collect(loader)
    twin = TensorLoader(small_split, spec)
    assert torch.equal(collect(twin)[0], first[0])

    def boxes_by_sample(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.stack(zeroed_boxes(zeroed_pixels(images)), dim=1)[labels.argsort()]

    assert (boxes_by_sample(*first) != boxes_by_sample(*second)).any(dim=1).float().mean() > 0.8


@pytest.mark.parametrize(
    ("dtype", "channels_last", "tolerance"),
    [(torch.float32, True, 1e-6), (torch.float16, False, 4e-3), (torch.bfloat16, True, 2e-2)],
)
def test_cutout_in_every_format_erases_the_same_squares(
    small_split: CifarSplit, dtype: torch.dtype, channels_last: bool, tolerance: float
) -> None:
    settings = dict(batch_size=200, train=True, seed=3, augmentation=Augmentation(cutout=12))
    expected, _ = next(iter(TensorLoader(small_split, LoaderSpec(**settings))))
    images, _ = next(iter(TensorLoader(small_split, LoaderSpec(**settings, dtype=dtype, channels_last=channels_last))))
    assert images.dtype == dtype
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    assert images.is_contiguous(memory_format=memory_format)
    assert torch.equal(zeroed_pixels(images), zeroed_pixels(expected))
    assert torch.allclose(images.float(), expected, atol=tolerance, rtol=0)


@pytest.mark.parametrize(
    "options", [dict(cutout=16), dict(crop=False, flip=False, cutout=32), dict(crop=True, flip=True, cutout=1)]
)
def test_eval_ignores_the_augmentation_options(small_split: CifarSplit, options: dict) -> None:
    spec = LoaderSpec(batch_size=300, train=False, augmentation=Augmentation(**options))
    images, labels = collect(TensorLoader(small_split, spec))
    assert torch.equal(labels, torch.arange(len(small_split)))
    restored = denormalize(images).round().to(torch.uint8)
    assert torch.equal(restored, torch.from_numpy(small_split.images))
