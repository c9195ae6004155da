"""The CIFAR-10-C corruptions as batched, seeded tensor operations on the evaluation device.

Each function is written from the definition in Hendrycks & Dietterich's ``make_cifar_c.py``
(parameters in resnet_cifar/choices/corruptions.py): it takes a float batch ``[N, 3, H, W]`` on
``[0, 1]`` and one severity's parameter, draws its randomness from the ``torch.Generator`` it is
given (so a batch is corrupted the same way on every run on a given device), and returns the
corrupted batch on the 0-255 scale. ``corrupt`` turns that into uint8 the way the script's
``np.uint8`` does (truncation). Nothing is written to disk.

Where the script calls a library, the library's definition is reproduced:
- skimage's ``gaussian`` (glass blur): scipy's Gaussian filter, truncated at 4 sigma, edges
  repeated; ``random_noise(mode='s&p')``: each value flipped with probability ``amount``, to 1
  or 0 with equal odds.
- cv2's ``GaussianBlur``/``filter2D`` (defocus): a 3-tap Gaussian over the disk kernel, then a
  correlation with edges mirrored without repeating the border (BORDER_REFLECT_101 = torch "reflect").
- scipy's ``zoom(order=1)`` (zoom blur): bilinear with corners aligned and ``round(side * factor)`` outputs.
- Pillow's BOX resize (pixelate): the exact linear maps, read from Pillow itself in float mode,
  applied as two matrix products per pass with Pillow's rounding to uint8 after each pass.
- cv2's ``getAffineTransform``/``warpAffine(BORDER_REFLECT_101)`` and scipy's
  ``map_coordinates(order=1, mode='reflect')`` (elastic): ``grid_sample``, bilinear, with the
  matching mirror (whole-sample, then half-sample); cv2 rounds sampling positions to 1/32 pixel,
  this does not.
- ImageMagick's ``MotionBlurImage`` through Wand (motion blur, snow's flakes): its one-sided
  Gaussian taps along the angle, edge pixels outside the image, 16-bit quanta and its rounding
  back to 8 bits (``imagemagick_motion_blur``); checked against ImageMagick itself in the tests.
- Pillow's JPEG encoder (JPEG): the only one that runs per image on the CPU, since the
  definition is Pillow's encoder at a quality.
Glass blur's "swap" is, in the script, ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on numpy
views, which copies the neighbour into ``x[h, w]`` and leaves the neighbour as it was; the
CIFAR-10-C files were made that way, so that is what is done here.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from resnet_cifar.choices import bound
from resnet_cifar.choices.corruptions import CORRUPTIONS, available_corruptions

__all__ = ["CORRUPTION_FUNCTIONS", "corrupt", "defocus_kernel", "imagemagick_motion_blur", "motion_taps", "pixelate_matrix"]

Corruption = Callable[[Tensor, Any, torch.Generator], Tensor]


def _uniform(shape: tuple[int, ...], low: float, high: float, like: Tensor, generator: torch.Generator) -> Tensor:
    return torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype) * (high - low) + low


def gaussian_noise(x: Tensor, std: float, generator: torch.Generator) -> Tensor:
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * std
    return (x + noise).clamp(0, 1) * 255


def shot_noise(x: Tensor, photons: float, generator: torch.Generator) -> Tensor:
    return (torch.poisson(x * photons, generator=generator) / photons).clamp(0, 1) * 255


def impulse_noise(x: Tensor, amount: float, generator: torch.Generator) -> Tensor:
    flipped = _uniform(tuple(x.shape), 0, 1, x, generator) < amount
    salt = _uniform(tuple(x.shape), 0, 1, x, generator) < 0.5
    return torch.where(flipped, salt.to(x.dtype), x) * 255


def _gaussian_taps(sigma: float, truncate: float = 4.0) -> Tensor:
    """scipy.ndimage's 1-D Gaussian: radius int(truncate * sigma + 0.5), normalized."""
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2) if radius else torch.ones(1, dtype=torch.float64)
    return taps / taps.sum()


def _separable(x: Tensor, taps: Tensor, mode: str) -> Tensor:
    """Correlate every channel with ``taps`` along height then width, padding by ``mode``."""
    radius = (len(taps) - 1) // 2
    if radius == 0:
        return x
    channels = x.shape[1]
    weight = taps.to(x.device, x.dtype)
    vertical = weight.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    horizontal = weight.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode=mode), vertical, groups=channels)
    return F.conv2d(F.pad(x, (radius, radius, 0, 0), mode=mode), horizontal, groups=channels)


def _skimage_gaussian(x: Tensor, sigma: float) -> Tensor:
    return _separable(x, _gaussian_taps(sigma), mode="replicate")


def glass_blur(x: Tensor, level: tuple[float, int, int], generator: torch.Generator) -> Tensor:
    sigma, delta, iterations = level
    side = x.shape[-1]
    pixels = torch.floor(_skimage_gaussian(x, sigma) * 255 + 1e-4) / 255  # the script's np.uint8(... * 255)
    rows = torch.arange(x.shape[0], device=x.device)
    for _ in range(iterations):
        for h in range(side - delta, delta, -1):
            for w in range(side - delta, delta, -1):
                shift = torch.randint(-delta, delta, (2, x.shape[0]), generator=generator, device=x.device)
                pixels[rows, :, h, w] = pixels[rows, :, h + shift[1], w + shift[0]]
    return _skimage_gaussian(pixels, sigma).clamp(0, 1) * 255


def defocus_kernel(radius: float, alias_blur: float) -> Tensor:
    """The script's ``disk``: a 17 x 17 aliased disk, normalized, smoothed by cv2's 3 x 3 Gaussian."""
    span = torch.arange(-8, 9, dtype=torch.float64)
    rows, cols = torch.meshgrid(span, span, indexing="ij")
    disk = ((rows**2 + cols**2) <= radius**2).to(torch.float64)
    disk = (disk / disk.sum()).view(1, 1, 17, 17)
    taps = torch.exp(-torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64) / (2 * alias_blur**2))
    return _separable(disk, taps / taps.sum(), mode="reflect")[0, 0]


def defocus_blur(x: Tensor, level: tuple[float, float], generator: torch.Generator) -> Tensor:
    kernel = defocus_kernel(*level).to(x.device, x.dtype)
    channels = x.shape[1]
    weight = kernel.view(1, 1, 17, 17).expand(channels, 1, 17, 17)
    return F.conv2d(F.pad(x, (8, 8, 8, 8), mode="reflect"), weight, groups=channels).clamp(0, 1) * 255


def _clipped_zoom(x: Tensor, factor: float) -> Tensor:
    side = x.shape[-1]
    crop = int(math.ceil(side / factor))
    top = (side - crop) // 2
    size = int(round(crop * factor))
    zoomed = F.interpolate(x[..., top : top + crop, top : top + crop], size=(size, size), mode="bilinear", align_corners=True)
    trim = (size - side) // 2
    return zoomed[..., trim : trim + side, trim : trim + side]


def zoom_blur(x: Tensor, stop: float, generator: torch.Generator) -> Tensor:
    factors = np.arange(1, stop, 0.01)
    total = x.clone()
    for factor in factors:
        total += _clipped_zoom(x, float(factor))
    return (total / (len(factors) + 1)).clamp(0, 1) * 255


def motion_taps(radius: float, sigma: float) -> Tensor:
    """ImageMagick's MotionBlurImage kernel: ``2 ceil(radius) + 1`` taps (its
    GetOptimalKernelWidth1D), weight ``exp(-i^2 / (2 sigma^2))`` for tap ``i``, normalized. The
    kernel is one-sided: tap 0 is the pixel itself, tap ``i`` lies ``i`` pixels along the angle."""
    width = int(2 * math.ceil(radius) + 1)
    steps = torch.arange(width, dtype=torch.float64)
    taps = torch.exp(-(steps**2) / (2 * max(sigma, 1e-12) ** 2))
    return taps / taps.sum()


def _motion_offsets(width: int, angles: Tensor) -> tuple[Tensor, Tensor]:
    """ImageMagick's integer offsets of each tap, ``[N, width]`` (x to the right, y down), computed
    as its C code does in double precision: ``ceil(i * cos(angle) - 0.5)``, ``ceil(i * sin(angle) - 0.5)``."""
    radians = angles.double().cpu() * math.pi / 180
    point_x, point_y = width * torch.sin(radians), width * torch.cos(radians)
    length = torch.hypot(point_x, point_y)[:, None]
    steps = torch.arange(width, dtype=torch.float64)[None, :]
    return torch.ceil(steps * point_y[:, None] / length - 0.5), torch.ceil(steps * point_x[:, None] / length - 0.5)


def imagemagick_motion_blur(pixels: Tensor, radius: float, sigma: float, angles: Tensor) -> Tensor:
    """8-bit images ``[N, C, H, W]`` (float, integer-valued) blurred as Wand's
    ``MagickMotionBlurImage(radius, sigma, angle)`` does with one angle per image, returned as the
    8-bit values ImageMagick (Q16) writes back to PNG.

    Outside the image ImageMagick reads its edge pixels (the default virtual-pixel method); it
    works on 16-bit quanta (8-bit value times 257), rounds the weighted sum to a quantum, and its
    PNG writer truncates the quantum back to 8 bits (quantum // 257): measured against
    ImageMagick 6.9.11 Q16, this matches every value, where rounding to 8 bits matches half.
    """
    taps = motion_taps(radius, sigma)
    offsets_x, offsets_y = (offset.to(torch.long).to(pixels.device) for offset in _motion_offsets(len(taps), angles))
    count, _, height, width = pixels.shape
    images = torch.arange(count, device=pixels.device)[:, None, None]
    rows, cols = torch.arange(height, device=pixels.device), torch.arange(width, device=pixels.device)
    total = torch.zeros_like(pixels).permute(0, 2, 3, 1)
    for tap, weight in enumerate(taps.tolist()):
        tap_rows = (rows[None, :] + offsets_y[:, tap, None]).clamp(0, height - 1)
        tap_cols = (cols[None, :] + offsets_x[:, tap, None]).clamp(0, width - 1)
        total += weight * pixels[images, :, tap_rows[:, :, None], tap_cols[:, None, :]]  # [N, H, W, C]
    quanta = torch.floor(total.permute(0, 3, 1, 2) * 257 + 0.5).clamp(0, 65535).to(torch.int64)
    return (quanta // 257).to(pixels.dtype)


def motion_blur(x: Tensor, level: tuple[float, float], generator: torch.Generator) -> Tensor:
    radius, sigma = level
    angles = _uniform((x.shape[0],), -45, 45, x, generator)
    return imagemagick_motion_blur(torch.round(x * 255), radius, sigma, angles)


def snow(x: Tensor, level: tuple[float, ...], generator: torch.Generator) -> Tensor:
    mean, std, zoom, threshold, radius, sigma, kept = level
    count, _, height, width = x.shape
    layer = torch.randn((count, 1, height, width), generator=generator, device=x.device, dtype=x.dtype) * std + mean
    layer = _clipped_zoom(layer, zoom)
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer)
    layer_8bit = torch.floor(layer.clamp(0, 1) * 255)  # the script's PNG of astype(np.uint8)
    angles = _uniform((count,), -135, -45, x, generator)
    flakes = imagemagick_motion_blur(layer_8bit, radius, sigma, angles) / 255
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]  # cv2's RGB2GRAY
    x = kept * x + (1 - kept) * torch.maximum(x, grey * 1.5 + 0.5)
    return (x + flakes + flakes.flip(-2, -1)).clamp(0, 1) * 255


def plasma_fractal(count: int, decay: float, like: Tensor, generator: torch.Generator, size: int = 32) -> Tensor:
    """The script's diamond-square height maps, ``count`` of them, each scaled to [0, 1]."""
    heights = torch.zeros((count, size, size), device=like.device, dtype=like.dtype)
    step, wibble = size, 100.0

    def wibbled_mean(total: Tensor) -> Tensor:
        return total / 4 + wibble * _uniform(tuple(total.shape), -wibble, wibble, like, generator)

    while step >= 2:
        half = step // 2
        corners = heights[:, 0::step, 0::step]
        squares = corners + corners.roll(-1, dims=1)
        squares = squares + squares.roll(-1, dims=2)
        heights[:, half::step, half::step] = wibbled_mean(squares)
        centres, corners = heights[:, half::step, half::step], heights[:, 0::step, 0::step]
        left = centres + centres.roll(1, dims=1) + corners + corners.roll(-1, dims=2)
        heights[:, 0::step, half::step] = wibbled_mean(left)
        top = centres + centres.roll(1, dims=2) + corners + corners.roll(-1, dims=1)
        heights[:, half::step, 0::step] = wibbled_mean(top)
        step //= 2
        wibble /= decay
    heights = heights - heights.amin(dim=(1, 2), keepdim=True)
    return heights / heights.amax(dim=(1, 2), keepdim=True)


def fog(x: Tensor, level: tuple[float, float], generator: torch.Generator) -> Tensor:
    strength, decay = level
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    side = x.shape[-1]
    plasma = plasma_fractal(x.shape[0], decay, x, generator, size=side)[:, None]
    return ((x + strength * plasma) * peak / (peak + strength)).clamp(0, 1) * 255


def _symmetric_gaussian(field: Tensor, sigma: float) -> Tensor:
    """skimage's ``gaussian(mode='reflect', truncate=3)`` of ``[N, H, W]`` fields: scipy's
    half-sample mirror at the edges (d c b a | a b c d)."""
    taps = _gaussian_taps(sigma, truncate=3.0).to(field.device, field.dtype)
    radius = (len(taps) - 1) // 2
    for dim in (1, 2):
        size = field.shape[dim]
        index = torch.arange(-radius, size + radius, device=field.device)
        index = torch.where(index < 0, -index - 1, torch.where(index >= size, 2 * size - 1 - index, index))
        padded = field.index_select(dim, index).unfold(dim, len(taps), 1)
        field = (padded * taps).sum(-1)
    return field


def _pixel_grid(like: Tensor) -> tuple[Tensor, Tensor]:
    side_h, side_w = like.shape[-2:]
    rows, cols = torch.meshgrid(
        torch.arange(side_h, device=like.device, dtype=like.dtype),
        torch.arange(side_w, device=like.device, dtype=like.dtype),
        indexing="ij",
    )
    return cols, rows


def _random_affine(x: Tensor, spread: float, generator: torch.Generator) -> Tensor:
    """cv2's getAffineTransform + warpAffine(BORDER_REFLECT_101), bilinear: the three points
    around the centre moved by up to ``spread`` pixels each, the image moved with them."""
    count, side = x.shape[0], x.shape[-1]
    centre, half = side // 2, side // 3
    source = torch.tensor(
        [[centre + half, centre + half], [centre + half, centre - half], [centre - half, centre - half]],
        device=x.device,
        dtype=torch.float64,
    ).expand(count, 3, 2)
    target = source + _uniform((count, 3, 2), -spread, spread, x, generator).double()
    ones = torch.ones((count, 3, 1), device=x.device, dtype=torch.float64)
    # Rows [x, y, 1] of the targets times the inverse map give the sources: dst -> src directly.
    inverse = torch.linalg.solve(torch.cat([target, ones], dim=2), source)  # [count, 3, 2]
    cols, rows = _pixel_grid(x)
    pixels = torch.stack([cols, rows, torch.ones_like(cols)], dim=-1).double().view(1, -1, 3)
    sampled = (pixels @ inverse).view(count, side, side, 2).to(x.dtype)
    grid = sampled * 2 / (side - 1) - 1  # align_corners=True: -1 and 1 are the edge pixels' centres
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)


def elastic_transform(x: Tensor, level: tuple[float, float, float], generator: torch.Generator) -> Tensor:
    alpha, sigma, spread = (32 * value for value in level)
    warped = _random_affine(x, spread, generator)
    count, side = x.shape[0], x.shape[-1]
    dx = _symmetric_gaussian(_uniform((count, side, side), -1, 1, x, generator), sigma) * alpha
    dy = _symmetric_gaussian(_uniform((count, side, side), -1, 1, x, generator), sigma) * alpha
    cols, rows = _pixel_grid(x)
    # scipy's map_coordinates(order=1, mode='reflect'): half-sample mirror = align_corners=False reflection.
    grid = torch.stack([(2 * (cols + dx) + 1) / side - 1, (2 * (rows + dy) + 1) / side - 1], dim=-1)
    return F.grid_sample(warped, grid, mode="bilinear", padding_mode="reflection", align_corners=False).clamp(0, 1) * 255


def brightness(x: Tensor, shift: float, generator: torch.Generator) -> Tensor:
    # In HSV, V = max(r, g, b) and every channel is V times a factor of H and S: adding to V and
    # converting back scales the pixel by V'/V (a black pixel, S = 0, becomes grey V').
    value = x.amax(dim=1, keepdim=True)
    raised = (value + shift).clamp(max=1)
    scaled = x * raised / value.clamp(min=1e-12)
    return torch.where(value > 0, scaled, raised.expand_as(x)).clamp(0, 1) * 255


def contrast(x: Tensor, factor: float, generator: torch.Generator) -> Tensor:
    means = x.mean(dim=(2, 3), keepdim=True)
    return ((x - means) * factor + means).clamp(0, 1) * 255


@lru_cache(maxsize=32)
def pixelate_matrix(source: int, target: int) -> Tensor:
    """Pillow's BOX resize of a ``source``-long line to ``target``, as a ``[target, source]`` matrix
    (read from Pillow itself, in float mode, one unit vector at a time)."""
    from PIL import Image

    columns = []
    for index in range(source):
        unit = np.zeros((1, source), dtype=np.float32)
        unit[0, index] = 1
        line = Image.fromarray(unit, mode="F").resize((target, 1), Image.Resampling.BOX)
        columns.append(np.asarray(line, dtype=np.float64)[0])
    return torch.from_numpy(np.stack(columns, axis=1))


def _box_resize(pixels: Tensor, size: int) -> Tensor:
    """Pillow's 8-bit BOX resize of square images: horizontal pass, round, vertical pass, round."""
    matrix = pixelate_matrix(pixels.shape[-1], size).to(pixels.device, pixels.dtype)
    wide = torch.floor(pixels @ matrix.T + 0.5).clamp(0, 255)
    return torch.floor(matrix @ wide + 0.5).clamp(0, 255)


def pixelate(x: Tensor, factor: float, generator: torch.Generator) -> Tensor:
    side = x.shape[-1]
    pixels = torch.round(x * 255)
    return _box_resize(_box_resize(pixels, int(side * factor)), side)


def jpeg_compression(x: Tensor, quality: int, generator: torch.Generator) -> Tensor:
    from PIL import Image

    pixels = torch.round(x * 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    decoded = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
        decoded.append(np.asarray(Image.open(buffer).convert("RGB")))
    return torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).to(x.device, x.dtype)


CORRUPTION_FUNCTIONS: dict[str, Corruption] = dict(
    bound(
        {
            "gaussian_noise": gaussian_noise,
            "shot_noise": shot_noise,
            "impulse_noise": impulse_noise,
            "defocus_blur": defocus_blur,
            "glass_blur": glass_blur,
            "motion_blur": motion_blur,
            "zoom_blur": zoom_blur,
            "snow": snow,
            "fog": fog,
            "brightness": brightness,
            "contrast": contrast,
            "elastic_transform": elastic_transform,
            "pixelate": pixelate,
            "jpeg_compression": jpeg_compression,
        },
        available_corruptions(),
        "corruptions",
    )
)


def corrupt(images: Tensor, name: str, severity: int, generator: torch.Generator) -> Tensor:
    """uint8 ``[N, H, W, 3]`` images (any device) under corruption ``name`` at ``severity`` (1-5;
    0 returns ``images`` unchanged), as uint8 ``[N, H, W, 3]`` on the same device."""
    if severity == 0:
        return images
    spec = CORRUPTIONS[name]
    x = images.permute(0, 3, 1, 2).to(torch.float32) / 255
    out = CORRUPTION_FUNCTIONS[name](x, spec.levels[severity - 1], generator)
    # np.uint8 truncates; the small lift keeps float32's error under an integer from dropping it by one.
    return torch.floor(out + 1e-3).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
