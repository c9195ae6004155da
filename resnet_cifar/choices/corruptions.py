"""The CIFAR-10-C corruptions, as data: family, the five severities' parameters, or why one is left out.

The parameters are those of the CIFAR-10 generation script of Hendrycks & Dietterich (2019),
*Benchmarking Neural Network Robustness to Common Corruptions and Perturbations*
(``make_cifar_c.py`` in github.com/hendrycks/robustness), one tuple entry per severity 1-5.
evaluation/corruptions.py holds one batched tensor implementation per available name (bound to
this registry at import); ``eval --corruptions`` takes names or families from here. Adding a
corruption is an entry here and its function there (plus a statistics test and docs/robustness.md).

A corruption whose definition needs something this project cannot ship or compute faithfully is
registered with ``unavailable`` (the reason) and no parameters: the output and the docs name it
as left out, and nothing else is ever computed under its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SEVERITIES = (1, 2, 3, 4, 5)
FAMILIES = ("noise", "blur", "weather", "digital")


@dataclass(frozen=True)
class CorruptionSpec:
    """One corruption.

    family: noise, blur, weather or digital (``--corruptions blur`` takes every blur).
    help: what the parameter is, in a few words.
    levels: the parameter of severities 1..5, as in make_cifar_c.py (empty when unavailable).
    unavailable: why it is left out (empty: it is computed).
    """

    family: str
    help: str
    levels: tuple[Any, ...] = ()
    unavailable: str = ""


CORRUPTIONS: dict[str, CorruptionSpec] = {
    "gaussian_noise": CorruptionSpec("noise", "noise std on [0, 1]", (0.04, 0.06, 0.08, 0.09, 0.10)),
    "shot_noise": CorruptionSpec("noise", "Poisson photons per unit intensity", (500, 250, 100, 75, 50)),
    "impulse_noise": CorruptionSpec("noise", "salt-and-pepper share of values", (0.01, 0.02, 0.03, 0.05, 0.07)),
    "defocus_blur": CorruptionSpec(
        "blur", "disk radius, anti-alias sigma", ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))
    ),
    "glass_blur": CorruptionSpec(
        "blur",
        "sigma, max shift, iterations",
        ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    ),
    "motion_blur": CorruptionSpec(
        "blur",
        "ImageMagick radius, sigma (angle uniform in -45..45 degrees)",
        ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    ),
    "zoom_blur": CorruptionSpec(
        "blur", "zoom factors from 1 in steps of 0.01, below this", (1.06, 1.11, 1.16, 1.21, 1.26)
    ),
    "snow": CorruptionSpec(
        "weather",
        "flake mean, std, zoom, threshold; blur radius, sigma; share of the image kept",
        (
            (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
            (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
            (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
            (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
        ),
    ),
    "frost": CorruptionSpec(
        "weather", "", unavailable="it needs the paper's frost photographs (frost1.png ... frost6.jpg), not shipped"
    ),
    "fog": CorruptionSpec(
        "weather", "fog strength, fractal decay", ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))
    ),
    "brightness": CorruptionSpec("weather", "added HSV value", (0.05, 0.1, 0.15, 0.2, 0.3)),
    "contrast": CorruptionSpec("digital", "contrast factor about the mean", (0.75, 0.5, 0.4, 0.3, 0.15)),
    "elastic_transform": CorruptionSpec(
        "digital",
        "displacement scale, its smoothing sigma, affine spread (x 32 px)",
        ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)),
    ),
    "pixelate": CorruptionSpec("digital", "box-downscale factor", (0.95, 0.9, 0.85, 0.75, 0.65)),
    "jpeg_compression": CorruptionSpec("digital", "JPEG quality (Pillow)", (80, 65, 58, 50, 40)),
}


def available_corruptions() -> tuple[str, ...]:
    return tuple(name for name, spec in CORRUPTIONS.items() if not spec.unavailable)


AVAILABLE = available_corruptions()
LEFT_OUT = tuple(name for name in CORRUPTIONS if name not in AVAILABLE)


def left_out() -> dict[str, str]:
    """The registered corruptions that are not computed, with the reason."""
    return {name: spec.unavailable for name, spec in CORRUPTIONS.items() if spec.unavailable}


def select_corruptions(request: str) -> tuple[tuple[str, ...], dict[str, str]]:
    """``--corruptions``' value (``all``, or names and families separated by commas) -> the names to
    compute, in registry order, and the requested ones left out (name -> why).

    Raises ValueError naming an unknown word.
    """
    words = [word.strip() for word in request.split(",") if word.strip()]
    if not words:
        raise ValueError("--corruptions is empty: give all, a family or corruption names")
    wanted: set[str] = set()
    for word in words:
        if word == "all":
            wanted.update(CORRUPTIONS)
        elif word in FAMILIES:
            wanted.update(name for name, spec in CORRUPTIONS.items() if spec.family == word)
        elif word in CORRUPTIONS:
            wanted.add(word)
        else:
            raise ValueError(
                f"--corruptions: unknown {word!r} (all, a family of {', '.join(FAMILIES)}, or one of "
                f"{', '.join(CORRUPTIONS)})"
            )
    names = tuple(name for name in CORRUPTIONS if name in wanted and not CORRUPTIONS[name].unavailable)
    skipped = {name: CORRUPTIONS[name].unavailable for name in CORRUPTIONS if name in wanted and name not in names}
    return names, skipped


def parse_severities(request: str) -> tuple[int, ...]:
    """``--severities`` (``1,3,5`` or ``1-5``) -> sorted severities. Raises ValueError."""
    chosen: set[int] = set()
    try:
        for word in (part.strip() for part in request.split(",") if part.strip()):
            low, _, high = word.partition("-")
            chosen.update(range(int(low), int(high or low) + 1))
    except ValueError:
        raise ValueError(f"--severities: {request!r} is not a list such as 1,3,5 or 1-5") from None
    if not chosen or not chosen <= set(SEVERITIES):
        raise ValueError(f"--severities must be within 1-5, got {request!r}")
    return tuple(sorted(chosen))
