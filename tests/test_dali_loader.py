"""DaliLoader (in-memory and image-folder sources) on real CIFAR-10 images, on the CPU pipeline.

DALI executes the same epoch plan as TensorLoader, so most properties are checked twice: once
directly on DALI's output, once as equality with TensorLoader batch for batch.
"""

from __future__ import annotations

import re
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_cifar.data.augment import Augmentation
from resnet_cifar.data.dali_loader import DALI_MISSING, DaliLoader, dali_available
from resnet_cifar.data.loader_spec import LoaderSpec
from resnet_cifar.data.sources import read_image_folder_split
from resnet_cifar.data.tensor_loader import TensorLoader
from resnet_cifar.data.types import CifarSplit
from resnet_cifar.errors import DataError, UsageError

from helpers import SHIFTS, channel_mean_and_std, collect, identity_split, recover_augmentation, zeroed_pixels

FILES_PER_CLASS = 20


@pytest.fixture(scope="module")
def small_split(real_splits) -> CifarSplit:
    return identity_split(real_splits.train, 2000, seed=1)


@pytest.fixture(scope="module")
def odd_split(small_split: CifarSplit) -> CifarSplit:
    return small_split.subset(np.arange(1003))  # prime: no batch size or shard count divides it


@pytest.fixture(scope="module")
def image_folder(real_data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small train/ folder of real JPEGs: 20 per class, spread over each class."""
    root = tmp_path_factory.mktemp("folder") / "train"
    for class_dir in sorted((real_data_root / "train").iterdir()):
        (root / class_dir.name).mkdir(parents=True)
        files = sorted(class_dir.iterdir())
        for source in files[:: len(files) // FILES_PER_CLASS][:FILES_PER_CLASS]:
            shutil.copy(source, root / class_dir.name / source.name)
    return root


def assert_same_batches(dali_loader, tensor_loader, *, atol: float = 1e-5) -> None:
    dali_batches, tensor_batches = list(dali_loader), list(tensor_loader)
    assert len(dali_batches) == len(tensor_batches) == len(dali_loader) == len(tensor_loader)
    for (dali_images, dali_labels), (tensor_images, tensor_labels) in zip(dali_batches, tensor_batches):
        assert torch.equal(dali_labels, tensor_labels)
        assert dali_images.shape == tensor_images.shape
        assert torch.allclose(dali_images.float(), tensor_images.float(), atol=atol, rtol=0)


def test_dali_is_available_here() -> None:
    assert dali_available()


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("num_shards", [1, 2])
def test_same_batches_as_tensor_loader(odd_split: CifarSplit, train: bool, num_shards: int) -> None:
    for shard_id in range(num_shards):
        spec = LoaderSpec(batch_size=64, train=train, seed=11, shard_id=shard_id, num_shards=num_shards)
        dali_loader, tensor_loader = DaliLoader(odd_split, spec), TensorLoader(odd_split, spec)
        assert dali_loader.num_samples == tensor_loader.num_samples
        for _ in range(2):  # two epochs: the reshuffle matches too
            assert_same_batches(dali_loader, tensor_loader)


def test_train_crops_cover_every_offset_and_flip_half_the_images(small_split: CifarSplit) -> None:
    loader = DaliLoader(small_split, LoaderSpec(batch_size=256, train=True, seed=1))
    images, labels = collect(loader)
    shift_y, shift_x, flip, error = recover_augmentation(small_split.images, images, labels)
    assert error.max() < 1e-3  # every output is a zero-padded crop (maybe mirrored) of its source
    assert set(shift_y.tolist()) == set(SHIFTS) and set(shift_x.tolist()) == set(SHIFTS)
    assert len(set(zip(shift_y.tolist(), shift_x.tolist()))) == 81
    assert abs(flip.mean() - 0.5) < 0.05


def test_eval_shards_cover_every_sample_once_unaugmented(odd_split: CifarSplit) -> None:
    images, labels = [], []
    for shard_id in range(3):
        loader = DaliLoader(odd_split, LoaderSpec(batch_size=64, train=False, shard_id=shard_id, num_shards=3))
        shard_images, shard_labels = collect(loader)
        assert len(shard_labels) == loader.num_samples
        images.append(shard_images)
        labels.append(shard_labels)
    assert torch.equal(torch.cat(labels), torch.arange(1003))  # in order, each once
    _, _, _, error = recover_augmentation(odd_split.images, torch.cat(images), torch.cat(labels))
    assert error.max() < 1e-3
    shift_y, shift_x, flip, _ = recover_augmentation(odd_split.images, torch.cat(images), torch.cat(labels))
    assert not shift_y.any() and not shift_x.any() and not flip.any()


def test_eval_shard_without_samples_yields_nothing(odd_split: CifarSplit) -> None:
    tiny = odd_split.subset(np.arange(2))
    loaders = [DaliLoader(tiny, LoaderSpec(batch_size=8, train=False, shard_id=shard, num_shards=3)) for shard in range(3)]
    assert [len(loader) for loader in loaders] == [0, 1, 1]
    assert list(loaders[0]) == []
    assert torch.cat([collect(loader)[1] for loader in loaders[1:]]).tolist() == [0, 1]


def test_train_drops_the_last_partial_batch_and_shards_are_disjoint(odd_split: CifarSplit) -> None:
    labels_per_shard = []
    for shard_id in range(2):
        loader = DaliLoader(odd_split, LoaderSpec(batch_size=64, train=True, shard_id=shard_id, num_shards=2))
        batches = list(loader)
        assert len(batches) == len(loader) == 501 // 64
        assert all(images.shape == (64, 3, 32, 32) and labels.shape == (64,) for images, labels in batches)
        labels_per_shard.append(torch.cat([labels for _, labels in batches]))
    together = torch.cat(labels_per_shard)
    assert len(together) == 2 * 7 * 64 and len(together.unique()) == len(together)


def test_each_epoch_is_reshuffled_and_reproducible_from_the_seed(odd_split: CifarSplit) -> None:
    loader = DaliLoader(odd_split, LoaderSpec(batch_size=100, train=True, seed=3))
    _, epoch0_labels = collect(loader)
    epoch1_images, epoch1_labels = collect(loader)
    assert not torch.equal(epoch0_labels, epoch1_labels)
    twin = DaliLoader(odd_split, LoaderSpec(batch_size=100, train=True, seed=3))
    twin.set_epoch(1)
    twin_images, twin_labels = collect(twin)
    assert torch.equal(twin_labels, epoch1_labels) and torch.equal(twin_images, epoch1_images)
    _, other_labels = collect(DaliLoader(odd_split, LoaderSpec(batch_size=100, train=True, seed=4)))
    assert not torch.equal(other_labels, epoch0_labels)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_dtype_and_memory_format(odd_split: CifarSplit, dtype: torch.dtype, channels_last: bool) -> None:
    spec = LoaderSpec(batch_size=128, train=True, seed=2)
    reference = TensorLoader(odd_split, spec)
    loader = DaliLoader(odd_split, replace(spec, dtype=dtype, channels_last=channels_last))
    (expected, expected_labels), (images, labels) = next(iter(reference)), next(iter(loader))
    assert images.shape == (128, 3, 32, 32) and images.dtype == dtype and images.device.type == "cpu"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    assert images.is_contiguous(memory_format=memory_format)
    assert labels.dtype == torch.int64 and labels.shape == (128,) and torch.equal(labels, expected_labels)
    tolerance = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}[dtype]
    assert torch.allclose(images.float(), expected, atol=tolerance, rtol=0)


def test_normalized_channels_have_zero_mean_and_unit_std(real_splits) -> None:
    mean, std = channel_mean_and_std(DaliLoader(real_splits.train, LoaderSpec(batch_size=1000, train=False)))
    assert torch.allclose(mean, torch.zeros(3, dtype=torch.float64), atol=0.05)
    assert torch.allclose(std, torch.ones(3, dtype=torch.float64), atol=0.05)


# A decoder other than PIL's may differ by a level or two; 0.05 is about 3 levels of 255.
FOLDER_TOLERANCE = 0.05


def test_folder_eval_shards_yield_every_file_once_in_order(image_folder: Path) -> None:
    decoded = read_image_folder_split(image_folder)
    batches = []
    for shard_id in range(3):
        spec = LoaderSpec(batch_size=48, train=False, shard_id=shard_id, num_shards=3)
        loader = DaliLoader.from_image_folder(image_folder, spec)
        shard = list(loader)
        assert len(shard) == len(loader)
        assert sum(len(labels) for _, labels in shard) == loader.num_samples
        batches.extend(shard)
    images = torch.cat([images for images, _ in batches])
    labels = torch.cat([labels for _, labels in batches])
    assert loader.classes == decoded.classes
    assert torch.equal(labels, torch.from_numpy(decoded.labels))
    expected, _ = collect(TensorLoader(decoded, LoaderSpec(batch_size=1000, train=False)))
    assert torch.allclose(images, expected, atol=FOLDER_TOLERANCE, rtol=0)


@pytest.mark.parametrize("channels_last", [False, True])
def test_folder_train_matches_the_in_memory_loader(image_folder: Path, channels_last: bool) -> None:
    decoded = read_image_folder_split(image_folder)
    for shard_id in range(2):
        spec = LoaderSpec(
            batch_size=32, train=True, seed=9, shard_id=shard_id, num_shards=2, channels_last=channels_last
        )
        folder_loader = DaliLoader.from_image_folder(image_folder, spec)
        memory_loader = DaliLoader(decoded, spec)
        assert len(folder_loader) == 100 // 32
        for _ in range(2):
            assert_same_batches(folder_loader, memory_loader, atol=FOLDER_TOLERANCE)


def test_folder_corrupt_image_is_a_data_error_naming_it(image_folder: Path, tmp_path: Path) -> None:
    root = tmp_path / "train"
    shutil.copytree(image_folder, root)
    victim = sorted((root / "cat").iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:200])
    loader = DaliLoader.from_image_folder(root, LoaderSpec(batch_size=50, train=False))
    with pytest.raises(DataError, match=re.escape(str(victim))):
        list(loader)


def test_folder_wrong_image_size_is_a_data_error_naming_it(image_folder: Path, tmp_path: Path) -> None:
    root = tmp_path / "train"
    shutil.copytree(image_folder, root)
    victim = root / "dog" / "9999.png"
    Image.new("RGB", (40, 36)).save(victim)
    loader = DaliLoader.from_image_folder(root, LoaderSpec(batch_size=50, train=True))
    with pytest.raises(DataError, match=re.escape(f"{victim}: expected a 32 x 32 image, got 40 x 36")):
        list(loader)


def test_folder_missing_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such folder"):
        DaliLoader.from_image_folder(tmp_path / "nope", LoaderSpec(batch_size=8, train=False))


def test_bad_arguments_are_usage_errors(odd_split: CifarSplit) -> None:
    # The spec's own values are asserted where it is made (tests/test_tensor_loader.py); what only
    # the data or DALI can tell is a usage error.
    with pytest.raises(UsageError, match="no full batch"):
        DaliLoader(odd_split, LoaderSpec(batch_size=2000, train=True))
    with pytest.raises(UsageError, match="cpu or cuda"):
        DaliLoader(odd_split, LoaderSpec(batch_size=8, train=True, device=torch.device("meta")))
    with pytest.raises(UsageError, match="num_threads must be at least 1"):
        DaliLoader(odd_split, LoaderSpec(batch_size=8, train=True), num_threads=0)


def test_missing_dali_is_a_usage_error(odd_split: CifarSplit, monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import nvidia.dali` raise ImportError, as on a machine without it.
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    assert not dali_available()
    with pytest.raises(UsageError) as caught:
        DaliLoader(odd_split, LoaderSpec(batch_size=8, train=True))
    assert str(caught.value) == DALI_MISSING == "DALI is not installed: pip install nvidia-dali-cuda120"


def test_dali_without_its_pytorch_plugin_is_not_available(
    odd_split: CifarSplit, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A half-installed DALI: nvidia.dali imports, its PyTorch plugin (what the loader uses) does not.
    monkeypatch.setitem(sys.modules, "nvidia.dali.plugin.pytorch", None)
    import nvidia.dali  # noqa: F401  (still importable: only the plugin is missing)

    assert not dali_available()
    with pytest.raises(UsageError) as caught:
        DaliLoader(odd_split, LoaderSpec(batch_size=8, train=True))
    assert str(caught.value) == DALI_MISSING


def test_loader_auto_on_cuda_picks_the_tensor_loader_without_the_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    from resnet_cifar.data import resolve_loader_kind

    cuda = torch.device("cuda")
    assert resolve_loader_kind("auto", cuda, dali_available) == "dali"
    monkeypatch.setitem(sys.modules, "nvidia.dali.plugin.pytorch", None)
    assert resolve_loader_kind("auto", cuda, dali_available) == "tensor"


# --- augmentation options: crop, flip, cutout ----------------------------------------------


@pytest.mark.parametrize(
    ("options", "channels_last", "epochs"),
    [
        (dict(cutout=16), False, 2),  # two epochs: fresh squares each epoch, the same in both loaders
        (dict(cutout=7, crop=False), True, 1),
        (dict(cutout=32, flip=False), False, 1),
        (dict(crop=False, flip=False), True, 1),
    ],
)
def test_same_batches_as_tensor_loader_with_augmentation_options(
    odd_split: CifarSplit, options: dict, channels_last: bool, epochs: int
) -> None:
    for shard_id in range(2):
        spec = LoaderSpec(
            batch_size=64,
            train=True,
            seed=12,
            shard_id=shard_id,
            num_shards=2,
            channels_last=channels_last,
            augmentation=Augmentation(**options),
        )
        dali_loader, tensor_loader = DaliLoader(odd_split, spec), TensorLoader(odd_split, spec)
        for _ in range(epochs):
            assert_same_batches(dali_loader, tensor_loader)


def test_cutout_zeroes_the_same_pixels_as_the_tensor_loader(odd_split: CifarSplit) -> None:
    spec = LoaderSpec(batch_size=100, train=True, seed=5, augmentation=Augmentation(cutout=10))
    images, labels = collect(DaliLoader(odd_split, replace(spec, dtype=torch.float16)))
    expected, expected_labels = collect(TensorLoader(odd_split, spec))
    assert torch.equal(labels, expected_labels)
    zeroed = zeroed_pixels(images)
    assert torch.equal(zeroed, zeroed_pixels(expected))
    assert zeroed.flatten(1).any(dim=1).all()  # one square in every image


@pytest.mark.parametrize("options", [dict(cutout=16), dict(crop=False, flip=False, cutout=32)])
def test_eval_ignores_the_augmentation_options(odd_split: CifarSplit, options: dict) -> None:
    dali_loader = DaliLoader(odd_split, LoaderSpec(batch_size=128, train=False, augmentation=Augmentation(**options)))
    assert_same_batches(dali_loader, TensorLoader(odd_split, LoaderSpec(batch_size=128, train=False)))


def test_folder_cutout_matches_the_in_memory_loader(image_folder: Path) -> None:
    decoded = read_image_folder_split(image_folder)
    spec = LoaderSpec(batch_size=32, train=True, seed=9, augmentation=Augmentation(cutout=12, flip=False))
    folder_loader = DaliLoader.from_image_folder(image_folder, spec)
    memory_loader = DaliLoader(decoded, spec)
    assert_same_batches(folder_loader, memory_loader, atol=FOLDER_TOLERANCE)


@pytest.mark.parametrize("policy", ["autoaugment", "trivialaugment"])
def test_policy_batches_are_the_same_in_either_memory_format(odd_split: CifarSplit, policy: str) -> None:
    # The policy runs before the output layout is chosen, from the same seeds: NHWC changes nothing
    # but the memory format, whatever the policy drew.
    split = odd_split.subset(np.arange(300))
    spec = LoaderSpec(batch_size=64, train=True, seed=3, augmentation=Augmentation(policy=policy, cutout=8))
    nchw = list(DaliLoader(split, spec, num_threads=2))
    nhwc = list(DaliLoader(split, replace(spec, channels_last=True), num_threads=2))
    plain = list(DaliLoader(split, replace(spec, augmentation=Augmentation(cutout=8)), num_threads=2))
    assert len(nchw) == len(nhwc) == len(plain) == 300 // 64
    for (images, labels), (last, last_labels), (unchanged, _) in zip(nchw, nhwc, plain):
        assert last.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(images, last) and torch.equal(labels, last_labels)
        assert (images != unchanged).flatten(1).any(dim=1).float().mean() > 0.3  # the policy ran
