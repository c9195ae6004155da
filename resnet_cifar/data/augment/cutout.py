"""Cutout (DeVries & Taylor 2017): one square per image set to zero after normalization.

The centres are drawn for a whole epoch up front (`draw_cutout`, from the epoch plan's generator)
and applied to each normalized batch by one torch op (`apply_cutout`), which both loaders run on
their output batches, so they erase the same pixels by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from resnet_cifar.data.types import IMAGE_SHAPE


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


def draw_cutout(count: int, side: int, generator: torch.Generator) -> CutoutBoxes | None:
    """The squares of `count` images (None when `side` is 0: cutout off, nothing drawn).

    The centre is uniform over the whole image (row first, then column), so near a border part of
    the square falls outside. The square spans centre - side // 2 .. centre - side // 2 + side - 1:
    for even sides this is exactly the reference code's centre +- side / 2; for odd sides it stays
    `side` wide.
    """
    if side == 0:
        return None
    height, width = IMAGE_SHAPE[:2]
    top = torch.randint(0, height, (count,), generator=generator) - side // 2
    left = torch.randint(0, width, (count,), generator=generator) - side // 2
    return CutoutBoxes(
        top=top.clamp(0, height),
        bottom=(top + side).clamp(0, height),
        left=left.clamp(0, width),
        right=(left + side).clamp(0, width),
    )


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
