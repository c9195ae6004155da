"""One loader's settings as one frozen value, read by both loaders (tensor and DALI).

`build_loaders` makes the training spec once, from the validated DataConfig and the run's
device and precision facts, and the evaluation loaders' from it (`for_evaluation`); a library
caller writes one directly, e.g. ``TensorLoader(split, LoaderSpec(batch_size=256, train=False))``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from resnet_cifar.data.augment import NO_AUGMENTATION, Augmentation

# What a loader yields: (images, labels), as resnet_cifar.data.BatchLoader describes them.
Batch = tuple[torch.Tensor, torch.Tensor]
# The batch dtypes: float32, or the AMP dtype the model's first convolution would cast to anyway.
SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class LoaderSpec:
    """How one loader reads its split and what its batches look like.

    batch_size; train: reshuffled every epoch, augmented, the last partial batch dropped (else
    evaluation: in order, every sample of the shard once, never augmented); seed: the order and
    the augmentation; shard_id of num_shards: the part of the split this process reads (train:
    equal disjoint shares of each epoch's permutation; eval: contiguous slices); device, dtype
    (one of SUPPORTED_DTYPES), channels_last: where the batches arrive and in which format;
    augmentation: what a training loader does to each sample and batch (eval ignores it).

    The values come from a validated config (or a library caller); the checks here are asserts.
    """

    batch_size: int
    train: bool
    seed: int = 0
    shard_id: int = 0
    num_shards: int = 1
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    channels_last: bool = False
    augmentation: Augmentation = Augmentation()

    def __post_init__(self) -> None:
        assert self.batch_size >= 1, f"batch size {self.batch_size}"
        assert self.seed >= 0, f"seed {self.seed}"
        assert 0 <= self.shard_id < self.num_shards, f"shard {self.shard_id} of {self.num_shards}"
        assert isinstance(self.device, torch.device), f"device {self.device!r} is not a torch.device"
        assert self.dtype in SUPPORTED_DTYPES, f"batch dtype {self.dtype}"

    def for_evaluation(self, batch_size: int) -> LoaderSpec:
        """This spec for an evaluation loader: same shard, device and format, no augmentation."""
        return replace(self, batch_size=batch_size, train=False, augmentation=NO_AUGMENTATION)
