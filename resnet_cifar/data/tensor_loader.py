"""A data loader that keeps the whole split on the device and augments with batched tensor ops.

CIFAR-10 is small (150 MB of uint8 for the train split), so the fastest loader is no loader:
the images live on the device once, and every batch is one index_select that crops and flips
all samples at once, followed by one fused conversion to normalized floats. There are no
worker processes and no per-image Python code.

It executes the epoch plan (resnet_cifar.data.epoch_plan), as the DALI loader does: a per-sample
policy runs on the uint8 pixels after crop and flip, before normalization and cutout; mixup/cutmix
on the normalized batch, which then carries soft targets [N, C] (resnet_cifar.data.augment).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from resnet_cifar.data.augment import CutoutBoxes, apply_cutout, apply_mix, apply_policy
from resnet_cifar.data.epoch_plan import PAD, EpochPlan, PlannedLoader
from resnet_cifar.data.loader_spec import Batch, LoaderSpec
from resnet_cifar.data.types import CIFAR10_MEAN, CIFAR10_STD, IMAGE_SHAPE, CifarSplit


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


class TensorLoader(PlannedLoader):
    """Iterate (images, labels) batches of a CifarSplit, computed on the spec's device from a
    resident copy.

    images: normalized [N, 3, 32, 32] in the spec's dtype (channels_last memory format when
    asked); labels: int64 [N], or soft targets float32 [N, C] under mixup/cutmix. Train:
    reshuffled each epoch, last partial batch dropped, augmented as the spec's Augmentation says.
    Eval: in order, every sample of the shard once, never augmented.
    """

    def __init__(self, split: CifarSplit, spec: LoaderSpec) -> None:
        self._init_plan(spec, len(split), split.classes)
        device = spec.device

        # Each pixel padded to 4 bytes (RGB + 0) so one pixel is one int32: cropping and
        # flipping a whole batch is then one index_select over contiguous 4-byte elements.
        # The zero border makes out-of-image crop positions read black, like RandomCrop's padding.
        border = PAD if spec.train else 0
        pixels = torch.from_numpy(split.images).to(device)
        self._padded = torch.nn.functional.pad(pixels, (0, 1, border, border, border, border))
        del pixels
        self._pixel_words = self._padded.view(torch.int32).view(-1)
        height, width = IMAGE_SHAPE[:2]
        self._padded_width = width + 2 * border
        self._labels = torch.from_numpy(split.labels).to(device)
        self._scale, self._bias = normalization_affine(device, spec.channels_last)
        # int32 gather indices halve the index traffic of int64; 50k padded images span only
        # 80M pixels, so int64 is needed only for splits of over 1.3M images.
        self._index_dtype = torch.int32 if self._pixel_words.numel() < 2**31 else torch.int64
        rows = torch.arange(height, dtype=self._index_dtype, device=device)
        self._row_offsets = (rows * self._padded_width).view(1, height, 1)
        self._columns = torch.arange(width, dtype=self._index_dtype, device=device)

    def __iter__(self) -> Iterator[Batch]:
        _, plan = self._next_plan()
        if self.spec.train:
            return self._train_batches(plan)
        return self._eval_batches()

    def _train_batches(self, plan: EpochPlan) -> Iterator[Batch]:
        device, dtype = self.spec.device, self.spec.dtype
        width = self._padded_width
        last_column = IMAGE_SHAPE[1] - 1
        # The top-left pixel of each sample's crop window, as a flat index into the pixel words.
        corners = (
            plan.indices * (width * width) + (plan.shift_y + PAD) * width + (plan.shift_x + PAD)
        ).to(device=device, dtype=self._index_dtype)
        flips = plan.flip.to(device).view(-1, 1)
        indices = plan.indices.to(device)
        boxes = plan.cutout.to(device) if plan.cutout is not None else None
        policy = plan.policy.to(device) if plan.policy is not None else None
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
                self._normalize(pixels, boxes, start, stop, cast=False), labels, len(self.classes), plan.mix, batch
            )
            yield (images if dtype == torch.float32 else images.to(dtype)), targets

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
        if self.spec.channels_last:
            # NHWC memory viewed as NCHW is exactly torch's channels_last layout.
            out = torch.empty((count, height, width, 3), dtype=torch.float32, device=self.spec.device)
            out.copy_(rgb)
            out.mul_(self._scale).add_(self._bias)
            out = out.permute(0, 3, 1, 2)
        else:
            out = torch.empty((count, 3, height, width), dtype=torch.float32, device=self.spec.device)
            out.copy_(rgb.permute(0, 3, 1, 2))
            out.mul_(self._scale).add_(self._bias)
        if boxes is not None:
            apply_cutout(out, boxes, start, stop)
        # Normalize in fp32 and round once: fp16/bf16 arithmetic on 0..255 would lose precision.
        dtype = self.spec.dtype
        return out if dtype == torch.float32 or not cast else out.to(dtype)
