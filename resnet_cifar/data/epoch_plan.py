"""The epoch plan: which samples one loader yields, in what order, per shard and epoch, and every
random draw of their augmentation, from the seed alone.

Both loaders execute the same plan (`PlannedLoader` is what they share: the spec, the shard
layout, the epoch counter), so for the same seed, epoch, shard and augmentation they yield the
same samples in the same order with the same crops, flips, cutout squares and mixing; a resumed
run replays any epoch exactly, whatever ran before. The one draw the plan does not make is a DALI
pipeline's policy (DALI's own random operators, seeded from the streams below).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from resnet_cifar.data.augment import CutoutBoxes, MixPlan, PolicyPlan, draw_cutout, draw_mix, draw_policy
from resnet_cifar.data.loader_spec import LoaderSpec
from resnet_cifar.errors import UsageError

# torchvision's RandomCrop(32, padding=4): the crop window moves -4..4 pixels in each axis.
PAD = 4
MAX_SHIFT = PAD

# Independent random streams drawn from one user seed, one number each. The policy and mixing
# draws have streams of their own, so turning them on never changes the order, crops, flips or
# cutout squares of a seed.
SHUFFLE_STREAM = 0
AUGMENT_STREAM = 1  # crop offsets, flips, then cutout centres
DALI_PIPELINE_STREAM = 2
POLICY_STREAM = 3
MIX_STREAM = 4
DALI_POLICY_STREAM = 5


def derive_seed(*parts: int) -> int:
    """Mix integers into one 63-bit seed; nearby tuples (epoch 1 vs 2) give unrelated streams."""
    state = np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))


@dataclass(frozen=True)
class ShardLayout:
    """Which part of a split of `num_total` samples one loader reads per epoch, in how many batches."""

    spec: LoaderSpec
    num_total: int

    @property
    def shard_size(self) -> int:
        """Samples this shard holds before batching (train: equal shares; eval: every sample once)."""
        if self.spec.train:
            return self.num_total // self.spec.num_shards
        return self.eval_stop - self.eval_start

    @property
    def num_batches(self) -> int:
        if self.spec.train:  # the last partial batch is dropped
            return self.shard_size // self.spec.batch_size
        return -(-self.shard_size // self.spec.batch_size)

    @property
    def num_samples(self) -> int:
        """Samples this shard yields per epoch."""
        if self.spec.train:
            return self.num_batches * self.spec.batch_size
        return self.shard_size

    @property
    def eval_start(self) -> int:
        return self.num_total * self.spec.shard_id // self.spec.num_shards

    @property
    def eval_stop(self) -> int:
        return self.num_total * (self.spec.shard_id + 1) // self.spec.num_shards

    def batch_bounds(self) -> list[tuple[int, int]]:
        """(start, stop) of each batch within the epoch plan."""
        n, size = self.num_samples, self.spec.batch_size
        return [(start, min(start + size, n)) for start in range(0, n, size)]

    def check_trainable(self) -> None:
        """A training shard must hold one full batch (a fact of the data, not of the settings)."""
        if self.spec.train and self.num_batches == 0:
            raise UsageError(
                f"batch size {self.spec.batch_size} is larger than the {self.shard_size} training samples "
                f"of shard {self.spec.shard_id} of {self.spec.num_shards}: no full batch to train on"
            )


@dataclass(frozen=True)
class EpochPlan:
    """Everything random about one shard's epoch, as CPU tensors (the same on every device).

    Train: the epoch's permutation depends only on (seed, epoch), so every shard slices the
    same permutation and the shards are disjoint; the augmentation depends on (seed, epoch,
    shard). Eval: the shard's contiguous slice in order, no augmentation.
    """

    indices: torch.Tensor  # int64 [num_samples]: positions in the split, in yield order
    shift_y: torch.Tensor  # int64 [num_samples]: output row r shows source row r + shift_y
    shift_x: torch.Tensor  # int64 [num_samples]: likewise for columns (before the flip)
    flip: torch.Tensor  # bool [num_samples]: mirrored left-right after cropping
    cutout: CutoutBoxes | None = None  # per-sample squares zeroed after normalization; None: off
    policy: PolicyPlan | None = None  # per-sample policy ops and magnitudes; None: no policy
    mix: MixPlan | None = None  # per-batch mixup/cutmix; None: hard labels


def plan_epoch(layout: ShardLayout, epoch: int) -> EpochPlan:
    """The plan of one epoch of the shard `layout` describes, with its spec's seed and augmentation.

    The crop and flip draws are made whether or not they are used, and the cutout centres are
    drawn after them from the same generator, so one option never changes another's randomness:
    crop=False keeps the flips of crop=True, and cutout=0 gives exactly the plan without cutout.
    """
    spec, n = layout.spec, layout.num_samples
    if not spec.train:
        start = layout.eval_start
        zeros = torch.zeros(n, dtype=torch.int64)
        return EpochPlan(torch.arange(start, start + n), zeros, zeros, torch.zeros(n, dtype=torch.bool))
    augmentation = spec.augmentation
    shuffle = torch.Generator().manual_seed(derive_seed(spec.seed, epoch, SHUFFLE_STREAM))
    permutation = torch.randperm(layout.num_total, generator=shuffle)
    start = spec.shard_id * layout.shard_size
    streams = (spec.seed, epoch, spec.shard_id, spec.num_shards)
    augment = torch.Generator().manual_seed(derive_seed(*streams, AUGMENT_STREAM))
    shift_y = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (n,), generator=augment)
    shift_x = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (n,), generator=augment)
    flips = torch.randint(0, 2, (n,), generator=augment).bool()
    if not augmentation.crop:
        shift_y.zero_()
        shift_x.zero_()
    if not augmentation.flip:
        flips.zero_()
    return EpochPlan(
        indices=permutation[start : start + n],
        shift_y=shift_y,
        shift_x=shift_x,
        flip=flips,
        cutout=draw_cutout(n, augmentation.cutout, augment),
        policy=draw_policy(
            augmentation.policy,
            n,
            torch.Generator().manual_seed(derive_seed(*streams, POLICY_STREAM)),
            randaugment_ops=augmentation.randaugment_ops,
            randaugment_magnitude=augmentation.randaugment_magnitude,
        ),
        mix=draw_mix(
            layout.num_batches,
            mixup=augmentation.mixup,
            cutmix=augmentation.cutmix,
            prob=augmentation.mix_prob,
            seed=derive_seed(*streams, MIX_STREAM),
        ),
    )


class PlannedLoader:
    """What both loaders share: the spec, the shard layout, the epoch counter and drawing each
    epoch's plan. Subclasses call `_init_plan` first and build their batches from the plan.

    Like DistributedSampler, `set_epoch` picks the epoch; each `iter()` then advances it by one.
    """

    spec: LoaderSpec
    layout: ShardLayout
    classes: tuple[str, ...]

    def _init_plan(self, spec: LoaderSpec, num_total: int, classes: tuple[str, ...]) -> None:
        self.spec = spec
        self.layout = ShardLayout(spec, num_total)
        self.layout.check_trainable()
        self.classes = classes
        self._epoch = 0

    @property
    def epoch(self) -> int:
        """The epoch the next iteration will use."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise UsageError(f"epoch must be >= 0, got {epoch}")
        self._epoch = epoch

    def __len__(self) -> int:
        return self.layout.num_batches

    @property
    def num_samples(self) -> int:
        return self.layout.num_samples

    def _next_plan(self) -> tuple[int, EpochPlan]:
        """This epoch's plan; advances the epoch. Called in __iter__ itself, not lazily in a
        generator, so `iter()` alone advances the epoch."""
        epoch = self._epoch
        plan = plan_epoch(self.layout, epoch)
        self._epoch += 1
        return epoch, plan
