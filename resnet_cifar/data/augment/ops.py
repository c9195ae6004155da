"""The image ops of AutoAugment, RandAugment and TrivialAugment as batched tensor ops.

Each op takes uint8 images [B, 3, H, W] and one magnitude per image, and follows the integer
and float arithmetic of torchvision.transforms.v2.functional for uint8 tensors (the reference
the tests compare against), so a policy means the same thing here as in torchvision. The
geometric ops (shears, translations, rotation) share one implementation: one inverse affine
matrix per image, one sampling grid and one nearest-neighbour grid_sample for the whole group.
Blends are computed as torchvision's kernels are (a fused multiply-add, emulated in float64),
so they match it bit for bit rather than up to a rounding step.

No torchvision import: the library never depends on it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

OP_NAMES: tuple[str, ...] = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
    "Invert",
)
OP_ID: dict[str, int] = {name: index for index, name in enumerate(OP_NAMES)}
IDENTITY = OP_ID["Identity"]
GEOMETRIC_OPS: frozenset[int] = frozenset(OP_ID[name] for name in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"))


def _per_image(values: Tensor) -> Tensor:
    return values.view(-1, 1, 1, 1)


def affine(images: Tensor, ops: Tensor, magnitudes: Tensor) -> Tensor:
    """ShearX/ShearY/TranslateX/TranslateY/Rotate per image, nearest neighbour, zero fill.

    The inverse matrix is torchvision's _get_inverse_affine_matrix, vectorized in float64 (Python
    floats are doubles) and rounded to float32 as torchvision does; shears are about the top-left
    corner (AutoAugment's center=[0, 0]), rotation about the image centre, translations are
    truncated to whole pixels (int(magnitude)).
    """
    count, _, height, width = images.shape
    mag = magnitudes.to(torch.float64)
    zero = torch.zeros_like(mag)
    is_op = {name: ops == OP_ID[name] for name in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")}
    # torchvision's rotate passes -(angle % 360) to the matrix; the shears are atan(m) in degrees.
    angle = torch.where(is_op["Rotate"], -torch.remainder(mag, 360.0), zero)
    shear_x = torch.where(is_op["ShearX"], torch.rad2deg(torch.atan(mag)), zero)
    shear_y = torch.where(is_op["ShearY"], torch.rad2deg(torch.atan(mag)), zero)
    tx = torch.where(is_op["TranslateX"], torch.trunc(mag), zero)
    ty = torch.where(is_op["TranslateY"], torch.trunc(mag), zero)
    sheared = is_op["ShearX"] | is_op["ShearY"]
    cx = torch.where(sheared, torch.full_like(mag, -0.5 * width), zero)
    cy = torch.where(sheared, torch.full_like(mag, -0.5 * height), zero)

    rot, sx, sy = torch.deg2rad(angle), torch.deg2rad(shear_x), torch.deg2rad(shear_y)
    cos_sy, tan_sx = torch.cos(sy), torch.tan(sx)
    a = torch.cos(rot - sy) / cos_sy
    b = -(a * tan_sx + torch.sin(rot))
    c = torch.sin(rot - sy) / cos_sy
    d = torch.cos(rot) - c * tan_sx
    m0, m1, m3, m4 = d, -b, -c, a
    m2 = cx - m0 * (cx + tx) - m1 * (cy + ty)
    m5 = cy - m3 * (cx + tx) - m4 * (cy + ty)
    theta = torch.stack([m0, m1, m2, m3, m4, m5], dim=1).to(torch.float32).view(count, 2, 3)

    # torchvision's _affine_grid: pixel centres relative to the image centre, theta applied,
    # then normalized to [-1, 1] (grid_sample with align_corners=False).
    base = torch.empty(1, height, width, 3, dtype=torch.float32, device=images.device)
    base[..., 0].copy_(torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, width, device=images.device))
    base[..., 1].copy_(torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, height, device=images.device).unsqueeze(-1))
    base[..., 2].fill_(1)
    scale = torch.tensor([0.5 * width, 0.5 * height], dtype=torch.float32, device=images.device)
    grid = base.view(1, height * width, 3).expand(count, -1, -1).bmm(theta.transpose(1, 2).div(scale))
    sampled = torch.nn.functional.grid_sample(
        images.to(torch.float32),
        grid.view(count, height, width, 2),
        mode="nearest",
        padding_mode="zeros",
        align_corners=False,
    )
    return sampled.round_().to(torch.uint8)


def _fma_blend(first: Tensor, ratio: Tensor, second: Tensor) -> Tensor:
    """torchvision's _blend, clamp(first * ratio + second * (1 - ratio)), for uint8 `first`.

    `ratio` is float64 per image. torchvision multiplies in float32, then adds with
    `add_(second, alpha=1 - ratio)`, which the CPU kernel computes as one fused multiply-add;
    the float64 sum of the float32 terms, rounded once to float32, is that same value.
    """
    ratio32 = _per_image(ratio.to(torch.float32))
    alpha32 = _per_image((1.0 - ratio).to(torch.float32))
    scaled = first.to(torch.float32) * ratio32
    blended = (scaled.double() + second.double() * alpha32.double()).to(torch.float32)
    return blended.clamp_(0, 255).to(torch.uint8)


def _grayscale_floor(images: Tensor) -> Tensor:
    """float32 [B, 1, H, W]: ITU-R 601 luma with torchvision's coefficients, floored (uint8 input)."""
    r, g, b = images.unbind(dim=-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(-3).floor_()


def brightness(images: Tensor, factor: Tensor) -> Tensor:
    return (images * _per_image(factor.to(torch.float32))).clamp_(0, 255).to(torch.uint8)


def saturation(images: Tensor, factor: Tensor) -> Tensor:
    """torchvision's "Color": a blend with the image's own grayscale."""
    return _fma_blend(images, factor, _grayscale_floor(images))


def contrast(images: Tensor, factor: Tensor) -> Tensor:
    """A blend with the mean of the image's grayscale."""
    mean = torch.mean(_grayscale_floor(images), dim=(-3, -2, -1), keepdim=True)
    return _fma_blend(images, factor, mean)


def sharpness(images: Tensor, factor: Tensor) -> Tensor:
    """A blend with a 3x3 smoothing (1s around a 5, / 13) of the interior; the border is kept.

    torchvision convolves in float32 and rounds. Here the 3x3 sum is exact in int16 and rounded
    as an integer: S / 13 is never within 1/26 of a half, far beyond float32's error, so both
    roundings agree, and eight shifted adds are several times faster than a grouped conv2d on CPU.
    """
    wide = images.to(torch.int16)
    height, width = images.shape[-2:]
    total = 4 * wide[..., 1:-1, 1:-1]  # 5 x the centre, with the centre itself among the nine
    for dy in range(3):
        for dx in range(3):
            total += wide[..., dy : height - 2 + dy, dx : width - 2 + dx]
    blurred = torch.div(2 * total + 13, 26, rounding_mode="floor").to(torch.float32)
    output = images.to(torch.float32)
    interior = output[..., 1:-1, 1:-1]
    # torchvision: interior.add_(blurred - interior, alpha=1 - factor), a fused multiply-add.
    alpha32 = _per_image((1.0 - factor.double()).to(torch.float32))
    mixed = (interior.double() + (blurred - interior).double() * alpha32.double()).to(torch.float32)
    interior.copy_(mixed)
    return output.clamp_(0, 255).to(torch.uint8)


def posterize(images: Tensor, bits: Tensor) -> Tensor:
    """Keep the `bits` high bits of every channel value."""
    mask = (255 << (8 - bits.to(torch.int64))) & 255
    return images & _per_image(mask.to(torch.uint8))


def solarize(images: Tensor, threshold: Tensor) -> Tensor:
    """Invert the values >= threshold. torchvision compares with the float32 threshold; for
    integer values that is a comparison with its ceiling, done here without a float copy."""
    # The threshold is 255 * a fraction in [0, 1], so its ceiling fits uint8: no promoted copy.
    limit = _per_image(torch.ceil(threshold.to(torch.float32)).clamp_(0, 255).to(torch.uint8))
    # x ^ 255 is 255 - x; an xor with a 0/255 mask is ~20x faster than torch.where on uint8 (CPU).
    return images ^ (images >= limit).to(torch.uint8).mul_(255)


def autocontrast(images: Tensor) -> Tensor:
    """Stretch each channel to 0..255 (channels of one value are left as they are)."""
    values = images.to(torch.float32)
    minimum = values.amin(dim=(-2, -1), keepdim=True)
    maximum = values.amax(dim=(-2, -1), keepdim=True)
    flat = maximum == minimum
    inv_scale = maximum.sub_(minimum).mul_(1.0 / 255.0)
    minimum[flat] = 0.0
    inv_scale[flat] = 1.0
    return values.sub_(minimum).div_(inv_scale).clamp_(0, 255).to(torch.uint8)


def equalize(images: Tensor) -> Tensor:
    """Histogram equalization per channel with PIL's lookup table (torchvision's batched kernel)."""
    batch_shape = images.shape[:-2]
    flat = images.flatten(start_dim=-2).to(torch.long)
    hist = flat.new_zeros(batch_shape + (256,), dtype=torch.int32)
    hist.scatter_add_(dim=-1, index=flat, src=hist.new_ones(1).expand_as(flat))
    cum_hist = hist.cumsum(dim=-1)
    # PIL: step = (pixels not of the image's largest value) // 255; lut[k] = (cum[k-1] + step // 2) // step.
    last = cum_hist.argmax(dim=-1, keepdim=True)
    step = (flat.shape[-1] - hist.gather(dim=-1, index=last)).div_(255, rounding_mode="floor")
    lut = cum_hist[..., :-1].add_(step // 2).div_(step.clamp(min=1), rounding_mode="floor").clamp_(0, 255)
    lut = torch.cat([lut.new_zeros(batch_shape + (1,)), lut], dim=-1)
    # A channel with step 0 (nearly one value) is left as it is: the identity table, rather than
    # torchvision's torch.where over the pixels, which is slow on uint8.
    identity = torch.arange(256, dtype=lut.dtype, device=lut.device).expand_as(lut)
    lut = torch.where(step.ne(0), lut, identity).to(torch.uint8)
    return lut.gather(dim=-1, index=flat).view_as(images)


def invert(images: Tensor) -> Tensor:
    return images.bitwise_not()


def apply_op(op: int, images: Tensor, magnitudes: Tensor) -> Tensor:
    """One non-geometric op on a group of images (one magnitude each)."""
    name = OP_NAMES[op]
    if name == "Brightness":
        return brightness(images, 1.0 + magnitudes.double())
    if name == "Color":
        return saturation(images, 1.0 + magnitudes.double())
    if name == "Contrast":
        return contrast(images, 1.0 + magnitudes.double())
    if name == "Sharpness":
        return sharpness(images, 1.0 + magnitudes.double())
    if name == "Posterize":
        return posterize(images, magnitudes)
    if name == "Solarize":
        return solarize(images, 255.0 * magnitudes.double())
    if name == "AutoContrast":
        return autocontrast(images)
    if name == "Equalize":
        return equalize(images)
    if name == "Invert":
        return invert(images)
    raise ValueError(f"no batched implementation for op {name}")


# Group ids: every geometric op shares one (one affine grid for all of them).
_GEOMETRIC_GROUP = OP_ID["ShearX"]
_GROUP_OF = np.array([_GEOMETRIC_GROUP if op in GEOMETRIC_OPS else op for op in range(len(OP_NAMES))], dtype=np.int64)


def op_groups(ops: np.ndarray) -> np.ndarray:
    """The group id of each op id (host arrays): what apply_ops batches together."""
    return _GROUP_OF[ops]


def group_sizes(groups: np.ndarray) -> list[int]:
    """Images per group id, counted on the host (``apply_ops``'s ``sizes``)."""
    return np.bincount(groups, minlength=len(OP_NAMES)).tolist()


@functools.lru_cache(maxsize=None)
def _group_table(device: torch.device) -> Tensor:
    return torch.from_numpy(_GROUP_OF).to(device)  # once per device, not per batch


def apply_ops(images: Tensor, ops: Tensor, magnitudes: Tensor, sizes: Sequence[int] | None = None) -> Tensor:
    """Apply ops[i] with magnitudes[i] to images[i] (uint8 [B, 3, H, W]) for every i, grouped by op.

    A handful of kernels per op present, no per-image code. ``sizes`` are the images per group
    (``group_sizes(op_groups(ops))``, counted on the host where the ops were drawn); without
    them they are read back from ``ops``, one host sync (a device sync on CUDA).
    """
    groups = _group_table(ops.device)[ops]
    order = torch.argsort(groups, stable=True)
    if sizes is None:
        sizes = torch.bincount(groups, minlength=len(OP_NAMES)).tolist()
    output = images
    start = 0
    for group, size in enumerate(sizes):
        if size == 0:
            continue
        members = order[start : start + size]
        start += size
        if group == IDENTITY:
            continue
        if output is images:
            output = images.clone()  # the caller's tensor is never written to
        if group == _GEOMETRIC_GROUP:
            result = affine(images[members], ops[members], magnitudes[members])
        else:
            result = apply_op(group, images[members], magnitudes[members])
        output.index_copy_(0, members, result)
    return output
