"""The CIFAR-10-C corruptions: each one's statistics match its definition at every severity, on
real test images; severity 0 is the identity; the same seed corrupts the same way."""

from __future__ import annotations

import io
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_cifar.choices.corruptions import (
    AVAILABLE,
    CORRUPTIONS,
    LEFT_OUT,
    SEVERITIES,
    parse_severities,
    select_corruptions,
)
from resnet_cifar.evaluation.corruptions import (
    corrupt,
    defocus_kernel,
    elastic_transform,
    imagemagick_motion_blur,
    motion_taps,
    pixelate_matrix,
)
from resnet_cifar.evaluation.robustness import corrupt_split

COUNT = 300  # real test images


@pytest.fixture(scope="module")
def clean(real_splits) -> torch.Tensor:
    return torch.from_numpy(real_splits.test.images[:COUNT].copy())


def corrupted(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    return corrupt(images, name, severity, torch.Generator().manual_seed(seed))


def level(name: str, severity: int):
    return CORRUPTIONS[name].levels[severity - 1]


def test_registry_names_families_and_severities() -> None:
    assert set(AVAILABLE) | set(LEFT_OUT) == set(CORRUPTIONS) and len(CORRUPTIONS) == 15
    assert all(len(CORRUPTIONS[name].levels) == 5 for name in AVAILABLE)
    assert set(LEFT_OUT) == {"frost"}
    names, skipped = select_corruptions("noise,contrast")
    assert names == ("gaussian_noise", "shot_noise", "impulse_noise", "contrast") and skipped == {}
    names, skipped = select_corruptions("weather")
    assert names == ("snow", "fog", "brightness") and set(skipped) == {"frost"}
    with pytest.raises(ValueError, match="unknown 'rain'"):
        select_corruptions("noise,rain")
    assert parse_severities("1-3,5") == (1, 2, 3, 5)
    for bad in ("0", "6", "1-7", "a", ""):
        with pytest.raises(ValueError, match="--severities"):
            parse_severities(bad)


@pytest.mark.parametrize("name", AVAILABLE)
def test_severity_zero_is_the_identity_and_the_seed_decides(clean: torch.Tensor, name: str) -> None:
    images = clean[:32]
    assert torch.equal(corrupted(images, name, 0), images)
    once, again = corrupted(images, name, 3, seed=7), corrupted(images, name, 3, seed=7)
    assert once.dtype == torch.uint8 and once.shape == images.shape and torch.equal(once, again)
    assert not torch.equal(once, images)


def test_split_corruption_is_batch_by_batch_seeded(clean: torch.Tensor) -> None:
    images = clean[:64].numpy()
    first = corrupt_split(images, "gaussian_noise", 2, device=torch.device("cpu"), seed=1, batch_size=16)
    assert np.array_equal(first, corrupt_split(images, "gaussian_noise", 2, device=torch.device("cpu"), seed=1, batch_size=16))
    assert not np.array_equal(first, corrupt_split(images, "gaussian_noise", 2, device=torch.device("cpu"), seed=2, batch_size=16))


def mid_range(images: torch.Tensor) -> torch.Tensor:
    """Values far enough from 0 and 255 that no severity's noise is clipped often."""
    x = images.double()
    return (x > 90) & (x < 165)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_gaussian_noise_has_its_standard_deviation(clean: torch.Tensor, severity: int) -> None:
    difference = (corrupted(clean, "gaussian_noise", severity).double() - clean.double()) / 255
    # np.uint8's truncation shifts by half a level on average: centre before measuring the spread.
    spread = difference[mid_range(clean)].std().item()
    assert spread == pytest.approx(level("gaussian_noise", severity), rel=0.03)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_shot_noise_has_poisson_variance(clean: torch.Tensor, severity: int) -> None:
    photons = level("shot_noise", severity)
    x = clean.double() / 255
    difference = corrupted(clean, "shot_noise", severity).double() / 255 - x
    keep = mid_range(clean)
    # Poisson(x * c) / c has variance x / c; quantization adds 1/12 of a level squared.
    expected = (x[keep] / photons).mean().item() + 1 / (12 * 255**2)
    assert difference[keep].var().item() == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_impulse_noise_flips_its_share_of_values(clean: torch.Tensor, severity: int) -> None:
    out = corrupted(clean, "impulse_noise", severity)
    # A flipped value becomes 0 or 255: counted where the clean value was neither.
    inside = (clean != 0) & (clean != 255)
    assert (out != clean)[inside].double().mean().item() == pytest.approx(level("impulse_noise", severity), rel=0.06)
    assert set(out[out != clean].unique().tolist()) <= {0, 255}


@pytest.mark.parametrize("severity", SEVERITIES)
def test_contrast_scales_each_channel_about_its_mean(clean: torch.Tensor, severity: int) -> None:
    factor = level("contrast", severity)
    x, out = clean.double(), corrupted(clean, "contrast", severity).double()
    ratio = out.std(dim=(1, 2)) / x.std(dim=(1, 2))
    assert ratio.median().item() == pytest.approx(factor, abs=0.01)
    # Truncation lowers each value by half a level on average.
    assert (out.mean(dim=(1, 2)) - x.mean(dim=(1, 2))).mean().item() == pytest.approx(-0.5, abs=0.1)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_brightness_raises_the_hsv_value_and_keeps_the_hue(clean: torch.Tensor, severity: int) -> None:
    shift = level("brightness", severity) * 255
    x, out = clean.double(), corrupted(clean, "brightness", severity).double()
    value, raised = x.amax(dim=3), out.amax(dim=3)
    room = (value + shift < 254) & (value > 20)
    # The brightest channel becomes value + shift exactly, truncated to a level as np.uint8 does.
    assert torch.equal((raised - value)[room], torch.full_like(value[room], float(math.floor(shift + 1e-9))))
    # Every channel scaled by the same factor: the channels' proportions (hue, saturation) stay.
    factor = (raised / value)[room][:, None]
    assert torch.allclose(out[room], x[room] * factor, atol=1.0)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_pixelate_is_pillows_box_round_trip_at_its_factor(clean: torch.Tensor, severity: int) -> None:
    factor = level("pixelate", severity)
    side = int(32 * factor)
    assert pixelate_matrix(32, side).shape == (side, 32)
    out = corrupted(clean, "pixelate", severity).numpy().astype(int)
    expected = np.stack(
        [
            np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BOX).resize((32, 32), Image.Resampling.BOX))
            for image in clean.numpy()
        ]
    ).astype(int)
    difference = np.abs(out - expected)
    assert difference.max() <= 1 and (difference == 0).mean() > 0.99


@pytest.mark.parametrize("severity", SEVERITIES)
def test_jpeg_is_pillows_encoder_at_its_quality(clean: torch.Tensor, severity: int) -> None:
    quality = level("jpeg_compression", severity)
    out = corrupted(clean[:20], "jpeg_compression", severity).numpy()

    def round_trip(image: np.ndarray, at: int) -> np.ndarray:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=at)
        return np.asarray(Image.open(buffer).convert("RGB"))

    images = clean[:20].numpy()
    assert np.array_equal(out, np.stack([round_trip(image, quality) for image in images]))
    assert not np.array_equal(out, np.stack([round_trip(image, quality + 10) for image in images]))


@pytest.mark.parametrize("severity", SEVERITIES)
def test_defocus_kernel_is_the_anti_aliased_disk(severity: int) -> None:
    radius, alias = level("defocus_blur", severity)
    kernel = defocus_kernel(radius, alias)
    assert kernel.shape == (17, 17) and kernel.sum().item() == pytest.approx(1.0)
    assert torch.allclose(kernel, kernel.T) and torch.allclose(kernel, kernel.flip(0))
    offsets = torch.arange(-8, 9, dtype=torch.float64)
    distance = (offsets[:, None] ** 2 + offsets[None, :] ** 2).sqrt()
    # A 3 x 3 smoothing spreads the disk by at most one pixel in each direction.
    assert kernel[distance > radius + 1.5].abs().max().item() == 0
    assert kernel[8, 8].item() == kernel.max().item()


@pytest.mark.parametrize("name", ["defocus_blur", "motion_blur", "zoom_blur", "glass_blur", "elastic_transform"])
def test_blurs_and_warps_keep_a_flat_image_flat(name: str) -> None:
    flat = torch.full((4, 32, 32, 3), 128, dtype=torch.uint8)
    for severity in SEVERITIES:
        assert (corrupted(flat, name, severity).int() - 128).abs().max().item() <= 1


def test_glass_blur_moves_each_pixel_from_an_up_left_neighbour(clean: torch.Tensor) -> None:
    # Severity 1: sigma 0.05 smooths nothing (radius 0), one pass of copies from offsets in {-1, 0}^2.
    out, x = corrupted(clean[:50], "glass_blur", 1), clean[:50]
    sources = [x]
    sources += [torch.roll(x, shifts=s, dims=d) for s, d in (((1,), (1,)), ((1,), (2,)))]
    sources.append(torch.roll(x, shifts=(1, 1), dims=(1, 2)))
    inner = (slice(None), slice(2, 32), slice(2, 32))
    matches = torch.stack([(out == source).all(dim=3) for source in sources]).any(dim=0)
    assert matches[inner].all()
    assert not torch.equal(out, x)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_fog_adds_a_fractal_scaled_by_its_strength(clean: torch.Tensor, severity: int) -> None:
    strength, _ = level("fog", severity)
    x = clean.double() / 255
    out = corrupted(clean, "fog", severity).double() / 255
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    added = out * (peak + strength) / peak - x  # strength * plasma, plasma on [0, 1]
    unclipped = out < 254 / 255
    assert added[unclipped].min().item() >= -0.02 * (1 + strength)
    assert added[unclipped].max().item() <= strength + 0.02 * (1 + strength)
    per_image = torch.where(unclipped, added, torch.nan).flatten(1)
    assert np.nanmedian(per_image.numpy().max(axis=1)) == pytest.approx(strength, rel=0.1)


def test_zoom_blur_grows_with_severity(clean: torch.Tensor) -> None:
    distances = [(corrupted(clean, "zoom_blur", s).double() - clean.double()).abs().mean().item() for s in SEVERITIES]
    assert distances == sorted(distances) and distances[0] > 0


def test_elastic_transform_without_displacement_is_the_identity(clean: torch.Tensor) -> None:
    x = clean[:8].permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(elastic_transform(x, (0, 0, 0), torch.Generator()) / 255, x, atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_elastic_severity_one_moves_its_three_points_within_the_spread(seed: int) -> None:
    # Severity 1: no displacement field, only the affine warp that moves the points (26, 26),
    # (26, 6), (6, 6) by up to 0.08 x 32 px in each coordinate. Channels 0 and 1 are ramps of the
    # column and the row, so the output shows where each pixel was taken from: fit that affine
    # map, and find where it sends the three points.
    _, _, spread = (32 * value for value in level("elastic_transform", 1))
    rows, cols = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    ramps = torch.stack([cols, rows, rows]).unsqueeze(0) / 31
    out = elastic_transform(ramps, level("elastic_transform", 1), torch.Generator().manual_seed(seed)) / 255 * 31
    taken = torch.stack([out[0, 0], out[0, 1]], dim=-1)  # (column, row) each pixel was taken from
    # The centre: its pixels come from within the image, away from the mirrored edges.
    inside = (rows >= 8) & (rows <= 23) & (cols >= 8) & (cols <= 23)
    design = torch.stack([cols[inside], rows[inside], torch.ones_like(cols[inside])], dim=1).double()
    mapping = torch.linalg.lstsq(design, taken[inside].double()).solution  # [3, 2]: dst -> src
    assert (design @ mapping - taken[inside].double()).abs().max().item() < 1e-3  # an affine map
    points = torch.tensor([[26.0, 26.0], [26.0, 6.0], [6.0, 6.0]], dtype=torch.float64)
    linear, offset = mapping[:2].T, mapping[2]
    moved = torch.linalg.solve(linear, (points - offset).T).T  # where each point went
    assert (moved - points).abs().max().item() <= spread + 1e-3
    assert (moved - points).abs().max().item() > 0.05


@pytest.mark.parametrize("severity", [3, 4, 5])
def test_elastic_displacement_has_the_spread_of_its_smoothed_noise(severity: int) -> None:
    # Without the affine part, a pixel moves by alpha x (uniform(-1, 1) noise smoothed by a Gaussian
    # of sigma): standard deviation alpha / (sqrt(12 pi) sigma) (variance 1/3 times the 2-D kernel's
    # sum of squares, 1 / (4 pi sigma^2)). Ramps of the column show the horizontal move.
    alpha, sigma, _ = level("elastic_transform", severity)
    rows, cols = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    ramps = torch.stack([cols, rows, rows]).unsqueeze(0).expand(64, 3, 32, 32) / 31
    out = elastic_transform(ramps, (alpha, sigma, 0), torch.Generator().manual_seed(severity)) / 255 * 31
    moved = (out[:, 0] - cols)[:, 4:28, 4:28]  # away from the mirrored edges
    expected = 32 * alpha / (math.sqrt(12 * math.pi) * 32 * sigma)
    assert moved.std().item() == pytest.approx(expected, rel=0.15)


def imagemagick(images: np.ndarray, radius: float, sigma: float, angle: float, folder: Path) -> np.ndarray:
    """``images`` (uint8, ``[N, H, W]`` grey or ``[N, H, W, 3]``) through ImageMagick's own
    ``-motion-blur RADIUSxSIGMA+ANGLE`` (MotionBlurImage, what Wand's MagickMotionBlurImage calls),
    PNG in and out as in make_cifar_c.py, all images in one call."""
    convert = shutil.which("convert")
    version = subprocess.run([convert or "convert", "-version"], capture_output=True, text=True, check=False)
    # "Version: ImageMagick ...": a stand-in `convert` that only mentions ImageMagick does not count.
    assert version.stdout.startswith("Version: ImageMagick"), "needs ImageMagick: apt-get install imagemagick (.ci/run does)"
    sources = []
    for index, image in enumerate(images):
        sources.append(folder / f"in-{index}.png")
        Image.fromarray(image).save(sources[-1])
    subprocess.run(
        [convert, *map(str, sources), "-motion-blur", f"{radius}x{sigma}+{angle}", str(folder / "out-%d.png")],
        check=True,
    )
    # ImageMagick picks the PNG's colour type (grey, palette) from the content; decode to the input's.
    mode = "L" if images.ndim == 3 else "RGB"
    return np.stack([np.asarray(Image.open(folder / f"out-{index}.png").convert(mode)) for index in range(len(images))])


@pytest.mark.parametrize("severity", SEVERITIES)
def test_motion_blur_is_imagemagicks(clean: torch.Tensor, severity: int, tmp_path: Path) -> None:
    radius, sigma = level("motion_blur", severity)
    images = clean[:12]
    for angle in (-45.0, -17.5, 0.0, 31.0, 45.0):
        expected = imagemagick(images.numpy(), radius, sigma, angle, tmp_path)
        angles = torch.full((len(images),), angle)
        ours = imagemagick_motion_blur(images.permute(0, 3, 1, 2).float(), radius, sigma, angles)
        difference = np.abs(ours.permute(0, 2, 3, 1).numpy().astype(int) - expected.astype(int))
        # float32 sums against ImageMagick's doubles: a quantum on a rounding edge may differ by one.
        assert difference.max() <= 1 and (difference == 0).mean() > 0.999, angle


def test_motion_taps_are_imagemagicks_one_sided_gaussian() -> None:
    taps = motion_taps(6, 1.5)
    assert len(taps) == 13 and taps.sum().item() == pytest.approx(1.0)
    assert taps[1].item() / taps[0].item() == pytest.approx(math.exp(-1 / (2 * 1.5**2)))
    assert torch.all(taps[1:] < taps[:-1])


def test_motion_blur_draws_its_angle_per_image_within_45_degrees(clean: torch.Tensor) -> None:
    # A single bright pixel on black: its streak shows each image's direction, which stays within
    # 45 degrees of the x axis (|dy| <= |dx|) and differs between images.
    dot = torch.zeros((64, 32, 32, 3), dtype=torch.uint8)
    dot[:, 16, 16] = 255
    out = corrupted(dot, "motion_blur", 5, seed=3)[..., 0].double()
    rows, cols = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    # The output at (x, y) reads the dot from x + dx, y + dy: the streak runs from the dot backwards.
    weight = out / out.sum(dim=(1, 2), keepdim=True)
    dx = 16 - (weight * cols).sum(dim=(1, 2))
    dy = 16 - (weight * rows).sum(dim=(1, 2))
    assert torch.all(dx.abs() >= dy.abs() - 0.5) and torch.all(dx > 0.5)
    assert dy.std().item() > 0.3  # the angles differ from image to image


@pytest.mark.parametrize("severity", SEVERITIES)
def test_snow_lifts_the_image_and_adds_symmetric_streaked_flakes(clean: torch.Tensor, severity: int) -> None:
    *_, kept = level("snow", severity)
    x = clean.double() / 255
    out = corrupted(clean, "snow", severity).double()
    grey = (0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2])[..., None]
    lifted = kept * x + (1 - kept) * torch.maximum(x, grey * 1.5 + 0.5)
    # The flakes are a grey 8-bit layer (ImageMagick's PNG) added to the lifted image: what the
    # output holds above the lifted image is a whole number of levels, the same in every channel.
    flakes = out - torch.floor(lifted * 255 + 1e-3)
    unclipped = ((out < 255) & (lifted < 1)).all(dim=3)
    level_of = flakes[..., 0]
    agree = (flakes == level_of[..., None]).all(dim=3)[unclipped]
    assert agree.double().mean().item() > 0.995
    assert flakes[unclipped].min().item() >= -1 and (flakes[unclipped] >= 0).double().mean().item() > 0.995
    assert (level_of[unclipped] == 0).double().mean().item() > 0.02  # bare ground between flakes
    assert level_of[unclipped].mean().item() > 1  # and snow
    # The layer is added once as drawn and once turned by 180 degrees: it equals its half-turn.
    both = unclipped & unclipped.flip(1, 2)
    same = (level_of - level_of.flip(1, 2)).abs()[both]
    assert same.max().item() <= 1 and (same == 0).double().mean().item() > 0.99
    # Streaks fall within 45 degrees of the vertical (angles -135..-45): the flakes change less
    # down a column than along a row.
    layer = torch.where(unclipped, level_of, torch.zeros_like(level_of))
    column_change = (layer[:, 1:, :] - layer[:, :-1, :]).abs().mean().item()
    row_change = (layer[:, :, 1:] - layer[:, :, :-1]).abs().mean().item()
    assert column_change < row_change
