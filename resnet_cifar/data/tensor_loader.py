"""A data loader that keeps the whole split on the device and augments with batched tensor ops.

CIFAR-10 is small (150 MB of uint8 for the train split), so the fastest loader is no loader:
the images live on the device once, and every batch is one index_select that crops and flips
all samples at once, followed by one fused conversion to normalized floats. There are no
worker processes and no per-image Python code.

This module also owns the *epoch plan* (sample order, shards, crop offsets, flips and cutout
squares), which the DALI loader executes too, so both loaders yield the same samples with the
same augmentation for the same seed, epoch, shard and augmentation options. The plan also holds
the draws of a per-sample policy (AutoAugment, RandAugment, TrivialAugment: applied here to the
uint8 pixels after crop and flip, before normalization and cutout) and of mixup/cutmix (applied
to the normalized batch, which then carries soft targets [N, C]); see resnet_cifar.data.augment.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from resnet_cifar.config import check_cutout
from resnet_cifar.data.augment import (
    NO_AUGMENTATION,
    Augmentation,
    MixPlan,
    PolicyPlan,
    apply_mix,
    apply_policy,
    draw_mix,
    draw_policy,
)
from resnet_cifar.data.types import CIFAR10_MEAN, CIFAR10_STD, IMAGE_SHAPE, CifarSplit
from resnet_cifar.errors import UsageError

# torchvision's RandomCrop(32, padding=4): the crop window moves -4..4 pixels in each axis.
PAD = 4
MAX_SHIFT = PAD
SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)

Batch = tuple[torch.Tensor, torch.Tensor]

# Independent random streams drawn from one user seed.
_SHUFFLE_STREAM = 0
_AUGMENT_STREAM = 1
# 2 is the DALI pipeline's seed; the policy and mixing draws get streams of their own, so
# turning them on never changes the order, crops, flips or cutout squares of a seed.
_POLICY_STREAM = 3
_MIX_STREAM = 4


def derive_seed(*parts: int) -> int:
    """Mix integers into one 63-bit seed; nearby tuples (epoch 1 vs 2) give unrelated streams."""
    state = np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))


def check_loader_args(
    *, batch_size: int, dtype: torch.dtype, seed: int, shard_id: int, num_shards: int, cutout: int = 0
) -> None:
    """The argument checks both loaders share; each failure is one UsageError line."""
    check_cutout(cutout)
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    if dtype not in SUPPORTED_DTYPES:
        raise UsageError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    if seed < 0:
        raise UsageError(f"seed must be >= 0, got {seed}")
    if num_shards < 1:
        raise UsageError(f"num_shards must be at least 1, got {num_shards}")
    if not 0 <= shard_id < num_shards:
        raise UsageError(f"shard_id must be in 0..{num_shards - 1}, got {shard_id}")


def resolve_device(device: str | torch.device) -> torch.device:
    """Parse the device and fail early (one line) when it is CUDA on a machine without one."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"invalid device {device!r} ({exc})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} requested but CUDA is not available")
    return resolved


@dataclass(frozen=True)
class ShardLayout:
    """Which part of the split one shard reads per epoch, and in how many batches."""

    num_total: int  # samples in the split
    train: bool
    batch_size: int
    shard_id: int
    num_shards: int

    @property
    def shard_size(self) -> int:
        """Samples this shard holds before batching (train: equal shares; eval: every sample once)."""
        if self.train:
            return self.num_total // self.num_shards
        return self.eval_stop - self.eval_start

    @property
    def num_batches(self) -> int:
        if self.train:  # the last partial batch is dropped
            return self.shard_size // self.batch_size
        return -(-self.shard_size // self.batch_size)

    @property
    def num_samples(self) -> int:
        """Samples this shard yields per epoch."""
        if self.train:
            return self.num_batches * self.batch_size
        return self.shard_size

    @property
    def eval_start(self) -> int:
        return self.num_total * self.shard_id // self.num_shards

    @property
    def eval_stop(self) -> int:
        return self.num_total * (self.shard_id + 1) // self.num_shards

    def batch_bounds(self) -> list[tuple[int, int]]:
        """(start, stop) of each batch within the epoch plan."""
        n, size = self.num_samples, self.batch_size
        return [(start, min(start + size, n)) for start in range(0, n, size)]

    def check_trainable(self) -> None:
        if self.train and self.num_batches == 0:
            raise UsageError(
                f"batch size {self.batch_size} is larger than the {self.shard_size} training samples "
                f"of shard {self.shard_id} of {self.num_shards}: no full batch to train on"
            )


@dataclass(frozen=True)
class CutoutBoxes:
    """Per-sample squares to zero, in output pixels after crop and flip, clipped to the image.

    Rows top..bottom-1 and columns left..right-1; an empty range (top == bottom) erases nothing.
    """

    top: torch.Tensor  # int64 [num_samples]
    bottom: torch.Tensor
    left: torch.Tensor
    right: torch.Tensor

    def to(self, device: torch.device) -> CutoutBoxes:
        return CutoutBoxes(*(bound.to(device) for bound in (self.top, self.bottom, self.left, self.right)))

    def outside(self, start: int, stop: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, H], [B, W]) in `dtype` for plan samples start..stop-1: 1 for the rows (columns)
        outside the square's range, 0 inside. A pixel is kept when its row or its column is."""
        height, width = IMAGE_SHAPE[:2]
        rows = torch.arange(height, device=self.top.device)
        columns = torch.arange(width, device=self.top.device)
        rows_out = (rows < self.top[start:stop, None]) | (rows >= self.bottom[start:stop, None])
        columns_out = (columns < self.left[start:stop, None]) | (columns >= self.right[start:stop, None])
        return rows_out.to(dtype), columns_out.to(dtype)


def apply_cutout(images: torch.Tensor, boxes: CutoutBoxes, start: int, stop: int) -> None:
    """Zero (in place) the squares of plan samples start..stop-1 in normalized images [B, C, H, W].

    Zero after normalization is the channel mean, as in DeVries & Taylor's reference code.
    One multiply by a 0/1 keep mask, the broadcast maximum of the row and column masks: no
    per-image code, and on CPU about twice as fast as masked_fill with a bool mask. Erased
    negative values become -0.0, which equals 0.
    """
    count, channels, height, width = images.shape
    rows_out, columns_out = boxes.outside(start, stop, images.dtype)
    if images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous():
        # NHWC memory: give the mask the pixels' innermost extent (W * C) so the multiply is
        # dense; broadcasting a mask over an innermost size-3 dimension is 4x slower on CPU.
        columns_out = columns_out.repeat_interleave(channels, dim=1)
        keep = torch.maximum(rows_out[:, :, None], columns_out[:, None, :])
        images.permute(0, 2, 3, 1).view(count, height, width * channels).mul_(keep)
    else:
        images.mul_(torch.maximum(rows_out[:, :, None], columns_out[:, None, :]).unsqueeze(1))


@dataclass(frozen=True)
class EpochPlan:
    """Everything random about one shard's epoch: sample order, crop offsets, flips, cutout.

    Train: the epoch's permutation depends only on (seed, epoch), so every shard slices the
    same permutation and the shards are disjoint; the augmentation depends on (seed, epoch,
    shard). Eval: the shard's contiguous slice in order, no augmentation.
    """

    indices: torch.Tensor  # int64 [num_samples]: positions in the split, in yield order
    shift_y: torch.Tensor  # int64 [num_samples]: output row r shows source row r + shift_y
    shift_x: torch.Tensor  # int64 [num_samples]: likewise for columns (before the flip)
    flip: torch.Tensor  # bool [num_samples]: mirrored left-right after cropping
    cutout: int = 0  # side of the erased square in pixels; 0: no cutout
    # int64 [num_samples]: each square's centre (row, column) in output pixels; empty when cutout == 0
    cutout_y: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    cutout_x: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    policy: PolicyPlan | None = None  # per-sample policy ops and magnitudes; None: no policy
    mix: MixPlan | None = None  # per-batch mixup/cutmix; None: hard labels

    def cutout_boxes(self) -> CutoutBoxes | None:
        """The squares clipped to the image, or None without cutout.

        The square spans centre - side // 2 .. centre - side // 2 + side - 1: for even sides this
        is exactly the reference code's centre +- side / 2; for odd sides it stays `side` wide.
        """
        if self.cutout == 0:
            return None
        height, width = IMAGE_SHAPE[:2]
        top = self.cutout_y - self.cutout // 2
        left = self.cutout_x - self.cutout // 2
        return CutoutBoxes(
            top=top.clamp(0, height),
            bottom=(top + self.cutout).clamp(0, height),
            left=left.clamp(0, width),
            right=(left + self.cutout).clamp(0, width),
        )


def plan_epoch(
    layout: ShardLayout,
    *,
    seed: int,
    epoch: int,
    crop: bool = True,
    flip: bool = True,
    cutout: int = 0,
    augmentation: Augmentation = NO_AUGMENTATION,
) -> EpochPlan:
    """The plan for one epoch of one shard, as CPU tensors (the same on every device).

    The options only matter in train mode (eval is never augmented). The crop and flip draws
    are made whether or not they are used, and the cutout centres are drawn after them from
    the same generator, so one option never changes another's randomness: crop=False keeps the
    flips of crop=True, and cutout=0 gives exactly the plan of the loaders before cutout existed.
    """
    n = layout.num_samples
    if not layout.train:
        start = layout.eval_start
        zeros = torch.zeros(n, dtype=torch.int64)
        return EpochPlan(torch.arange(start, start + n), zeros, zeros, torch.zeros(n, dtype=torch.bool))
    shuffle = torch.Generator().manual_seed(derive_seed(seed, epoch, _SHUFFLE_STREAM))
    permutation = torch.randperm(layout.num_total, generator=shuffle)
    start = layout.shard_id * layout.shard_size
    augment = torch.Generator().manual_seed(
        derive_seed(seed, epoch, layout.shard_id, layout.num_shards, _AUGMENT_STREAM)
    )
    shift_y = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (n,), generator=augment)
    shift_x = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (n,), generator=augment)
    flips = torch.randint(0, 2, (n,), generator=augment).bool()
    if not crop:
        shift_y.zero_()
        shift_x.zero_()
    if not flip:
        flips.zero_()
    plan = EpochPlan(permutation[start : start + n], shift_y, shift_x, flips)
    if cutout != 0:
        height, width = IMAGE_SHAPE[:2]
        # The centre is uniform over the whole image, so near a border part of the square falls outside.
        cutout_y = torch.randint(0, height, (n,), generator=augment)
        cutout_x = torch.randint(0, width, (n,), generator=augment)
        plan = replace(plan, cutout=cutout, cutout_y=cutout_y, cutout_x=cutout_x)
    streams = (seed, epoch, layout.shard_id, layout.num_shards)
    policy = draw_policy(
        augmentation.policy,
        n,
        torch.Generator().manual_seed(derive_seed(*streams, _POLICY_STREAM)),
        randaugment_ops=augmentation.randaugment_ops,
        randaugment_magnitude=augmentation.randaugment_magnitude,
    )
    mix = draw_mix(
        layout.num_batches,
        mixup=augmentation.mixup,
        cutmix=augmentation.cutmix,
        prob=augmentation.mix_prob,
        seed=derive_seed(*streams, _MIX_STREAM),
    )
    return replace(plan, policy=policy, mix=mix)


def normalization_affine(device: torch.device, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, bias) with pixel * scale + bias == (pixel / 255 - mean) / std, one image in size.

    Full-size (not [3, 1, 1]) so the multiply-add runs over contiguous memory: 4x faster on CPU.
    """
    mean = torch.tensor(CIFAR10_MEAN, dtype=torch.float64)
    std = torch.tensor(CIFAR10_STD, dtype=torch.float64)
    scale = (1.0 / (255.0 * std)).float()
    bias = (-mean / std).float()
    height, width, _ = IMAGE_SHAPE
    if channels_last:  # [1, H, W, C]
        shape = (1, height, width, 3)
        scale, bias = scale.view(1, 1, 1, 3), bias.view(1, 1, 1, 3)
    else:  # [1, C, H, W]
        shape = (1, 3, height, width)
        scale, bias = scale.view(1, 3, 1, 1), bias.view(1, 3, 1, 1)
    return scale.expand(shape).contiguous().to(device), bias.expand(shape).contiguous().to(device)


class PlannedLoader:
    """What both loaders share: argument checks, the shard layout, the epoch counter and drawing
    each epoch's plan. Subclasses call `_init_plan` first and build their batches from the plan."""

    def _init_plan(
        self,
        *,
        num_total: int,
        batch_size: int,
        train: bool,
        dtype: torch.dtype,
        channels_last: bool,
        seed: int,
        shard_id: int,
        num_shards: int,
        crop: bool,
        flip: bool,
        cutout: int,
        augmentation: Augmentation = NO_AUGMENTATION,
        num_classes: int = 10,
    ) -> None:
        check_loader_args(
            batch_size=batch_size, dtype=dtype, seed=seed, shard_id=shard_id, num_shards=num_shards, cutout=cutout
        )
        self.layout = ShardLayout(num_total, train, batch_size, shard_id, num_shards)
        self.layout.check_trainable()
        self.batch_size = batch_size
        self.train = train
        self.dtype = dtype
        self.channels_last = channels_last
        self.seed = seed
        self.shard_id = shard_id
        self.num_shards = num_shards
        self.crop = crop
        self.flip = flip
        self.cutout = cutout
        self.augmentation = augmentation
        self.num_classes = num_classes
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
        plan = plan_epoch(
            self.layout,
            seed=self.seed,
            epoch=epoch,
            crop=self.crop,
            flip=self.flip,
            cutout=self.cutout,
            augmentation=self.augmentation,
        )
        self._epoch += 1
        return epoch, plan


class TensorLoader(PlannedLoader):
    """Iterate (images, labels) batches of a CifarSplit, computed on `device` from a resident copy.

    images: normalized [N, 3, 32, 32] in `dtype` (channels_last memory format when asked);
    labels: int64 [N]. Train: reshuffled each epoch, last partial batch dropped, and augmented
    as asked: `crop` (random 32 x 32 crop of the image zero-padded by 4 pixels), `flip`
    (horizontal, p = 0.5), `cutout` (side of one square per image, centre uniform over the
    image, set to zero after normalization; 0 = off) and `augmentation` (a per-sample policy on
    the uint8 pixels after crop and flip; mixup/cutmix, under which labels are soft targets
    float32 [N, C]). Eval: in order, every sample of the shard once, never augmented. Like
    DistributedSampler, `set_epoch` picks the epoch; each `iter()` then advances it by one.
    """

    def __init__(
        self,
        split: CifarSplit,
        *,
        batch_size: int,
        train: bool,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        seed: int = 0,
        shard_id: int = 0,
        num_shards: int = 1,
        crop: bool = True,
        flip: bool = True,
        cutout: int = 0,
        augmentation: Augmentation = NO_AUGMENTATION,
    ) -> None:
        self._init_plan(
            num_total=len(split),
            batch_size=batch_size,
            train=train,
            dtype=dtype,
            channels_last=channels_last,
            seed=seed,
            shard_id=shard_id,
            num_shards=num_shards,
            crop=crop,
            flip=flip,
            cutout=cutout,
            augmentation=augmentation,
            num_classes=len(split.classes),
        )
        self.device = resolve_device(device)
        self.classes = split.classes

        # Each pixel padded to 4 bytes (RGB + 0) so one pixel is one int32: cropping and
        # flipping a whole batch is then one index_select over contiguous 4-byte elements.
        # The zero border makes out-of-image crop positions read black, like RandomCrop's padding.
        border = PAD if train else 0
        pixels = torch.from_numpy(split.images).to(self.device)
        self._padded = torch.nn.functional.pad(pixels, (0, 1, border, border, border, border))
        del pixels
        self._pixel_words = self._padded.view(torch.int32).view(-1)
        height, width = IMAGE_SHAPE[:2]
        self._padded_width = width + 2 * border
        self._labels = torch.from_numpy(split.labels).to(self.device)
        self._scale, self._bias = normalization_affine(self.device, channels_last)
        # int32 gather indices halve the index traffic of int64; 50k padded images span only
        # 80M pixels, so int64 is needed only for splits of over 1.3M images.
        self._index_dtype = torch.int32 if self._pixel_words.numel() < 2**31 else torch.int64
        rows = torch.arange(height, dtype=self._index_dtype, device=self.device)
        self._row_offsets = (rows * self._padded_width).view(1, height, 1)
        self._columns = torch.arange(width, dtype=self._index_dtype, device=self.device)

    def __iter__(self) -> Iterator[Batch]:
        _, plan = self._next_plan()
        if self.train:
            return self._train_batches(plan)
        return self._eval_batches()

    def _train_batches(self, plan: EpochPlan) -> Iterator[Batch]:
        width = self._padded_width
        last_column = IMAGE_SHAPE[1] - 1
        # The top-left pixel of each sample's crop window, as a flat index into the pixel words.
        corners = (
            plan.indices * (width * width) + (plan.shift_y + PAD) * width + (plan.shift_x + PAD)
        ).to(device=self.device, dtype=self._index_dtype)
        flips = plan.flip.to(self.device).view(-1, 1)
        indices = plan.indices.to(self.device)
        boxes = plan.cutout_boxes()
        boxes = boxes.to(self.device) if boxes is not None else None
        policy = plan.policy.to(self.device) if plan.policy is not None else None
        for batch, (start, stop) in enumerate(self.layout.batch_bounds()):
            columns = torch.where(flips[start:stop], last_column - self._columns, self._columns)
            gather = corners[start:stop].view(-1, 1, 1) + self._row_offsets + columns.unsqueeze(1)
            words = torch.index_select(self._pixel_words, 0, gather.view(-1))
            pixels = words.view(torch.uint8).view(stop - start, *IMAGE_SHAPE[:2], 4)
            labels = self._labels[indices[start:stop]]
            if policy is not None:
                # The policy ops work on uint8 NCHW (torchvision's layout); _normalize reads the
                # result back through an NHWC view.
                planar = apply_policy(pixels[..., :3].permute(0, 3, 1, 2).contiguous(), policy, start, stop)
                pixels = planar.permute(0, 2, 3, 1)
            if plan.mix is None:
                yield self._normalize(pixels, boxes, start, stop), labels
                continue
            # Mixed in fp32, then rounded once to the batch dtype.
            images, targets = apply_mix(
                self._normalize(pixels, boxes, start, stop, cast=False), labels, self.num_classes, plan.mix, batch
            )
            yield (images if self.dtype == torch.float32 else images.to(self.dtype)), targets

    def _eval_batches(self) -> Iterator[Batch]:
        first = self.layout.eval_start
        for start, stop in self.layout.batch_bounds():
            pixels = self._padded[first + start : first + stop]
            yield self._normalize(pixels), self._labels[first + start : first + stop]

    def _normalize(
        self,
        pixels: torch.Tensor,
        boxes: CutoutBoxes | None = None,
        start: int = 0,
        stop: int = 0,
        cast: bool = True,
    ) -> torch.Tensor:
        """uint8 [B, H, W, 4] (RGB + pad byte; or [B, H, W, 3]) -> normalized [B, 3, H, W] in the
        requested format, with the cutout squares of plan samples start..stop-1 zeroed when
        `boxes` is given; in fp32 when not `cast`."""
        count, height, width, _ = pixels.shape
        rgb = pixels[..., :3]
        if self.channels_last:
            # NHWC memory viewed as NCHW is exactly torch's channels_last layout.
            out = torch.empty((count, height, width, 3), dtype=torch.float32, device=self.device)
            out.copy_(rgb)
            out.mul_(self._scale).add_(self._bias)
            out = out.permute(0, 3, 1, 2)
        else:
            out = torch.empty((count, 3, height, width), dtype=torch.float32, device=self.device)
            out.copy_(rgb.permute(0, 3, 1, 2))
            out.mul_(self._scale).add_(self._bias)
        if boxes is not None:
            apply_cutout(out, boxes, start, stop)
        # Normalize in fp32 and round once: fp16/bf16 arithmetic on 0..255 would lose precision.
        return out if self.dtype == torch.float32 or not cast else out.to(self.dtype)
