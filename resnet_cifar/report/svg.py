"""Small inline SVG charts for the report: line charts (training curves) and the reliability diagram.

Hand-written rather than matplotlib PNGs: inline SVG is a few kilobytes, stays sharp at any zoom
and in print, inherits the page's fonts, and needs nothing outside the HTML file. The charts are
deliberately plain: axes, a few ticks, a legend, the data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["Series", "line_chart", "nice_ticks", "reliability_diagram"]

# Plot area margins inside the SVG viewBox: room for tick labels on the left and bottom.
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 28, 36
# A value's place along an axis, in viewBox units.
Scale = Callable[[float], float]


@dataclass(frozen=True)
class Series:
    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: str
    dashed: bool = False


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (1, 2 or 5 times a power of ten apart) covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(factor * magnitude for factor in (1, 2, 5, 10) if factor * magnitude >= raw)
    first = math.floor(low / step + 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        if value >= low - step * 1e-9:
            ticks.append(round(value, 12))
        value += step
    return ticks


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) < 1e-3 or abs(value) >= 1e5:
        return f"{value:.0e}"
    return f"{value:g}"


def _frame(width: int, height: int, title: str, aria: str) -> list[str]:
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{escape(aria)}">'
    ]
    if title:
        parts.append(f'<text class="chart-title" x="{LEFT}" y="16">{escape(title)}</text>')
    return parts


def _axes(
    parts: list[str],
    width: int,
    bottom: float,
    x_ticks: Sequence[float],
    y_ticks: Sequence[float],
    sx: Scale,
    sy: Scale,
) -> None:
    """The plot area's grid and axes: a grid line and a label at each of ``y_ticks``, the x axis at
    ``bottom`` (with ``x_ticks``) and the y axis from ``TOP`` down to it."""
    for tick in y_ticks:
        y = sy(tick)
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{width - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_label(tick)}</text>')
    _x_axis(parts, width, bottom, x_ticks, sx)
    parts.append(f'<line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{bottom}"/>')


def _x_axis(parts: list[str], width: int, y: float, ticks: Sequence[float], sx: Scale) -> None:
    """A horizontal axis at height ``y``, with a tick mark and a label under each of ``ticks``."""
    for tick in ticks:
        x = sx(tick)
        parts.append(f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{y}" y2="{y + 4}"/>')
        parts.append(f'<text class="tick" x="{x:.1f}" y="{y + 16}" text-anchor="middle">{_label(tick)}</text>')
    parts.append(f'<line class="axis" x1="{LEFT}" x2="{width - RIGHT}" y1="{y}" y2="{y}"/>')


def _finite_points(series: Sequence[Series]) -> list[list[tuple[float, float]]]:
    """Each series' points, non-finite ones left out."""
    return [
        [(float(x), float(y)) for x, y in zip(item.xs, item.ys) if math.isfinite(x) and math.isfinite(y)]
        for item in series
    ]


def _value_ranges(
    xs: Sequence[float], ys: Sequence[float], y_range: tuple[float, float] | None
) -> tuple[tuple[float, float], tuple[float, float], list[float]]:
    """The x range, the y range and the y ticks of a line chart: never empty; without a fixed
    ``y_range``, out to the round values around the data."""
    x_low, x_high = min(xs), max(xs)
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    y_low, y_high = y_range if y_range is not None else (min(ys), max(ys))
    if y_high == y_low:
        y_low, y_high = y_low - abs(y_low) * 0.1 - 1e-3, y_high + abs(y_high) * 0.1 + 1e-3
    y_ticks = nice_ticks(y_low, y_high)
    if y_range is None and len(y_ticks) > 1:
        # Out to the round values around the data, so no line leaves the frame or hugs its edge.
        step = y_ticks[1] - y_ticks[0]
        y_low = math.floor(y_low / step + 1e-9) * step
        y_high = math.ceil(y_high / step - 1e-9) * step
        y_ticks = [round(y_low + k * step, 12) for k in range(int(round((y_high - y_low) / step)) + 1)]
    return (x_low, x_high), (y_low, y_high), y_ticks


def _linear(low: float, high: float, start: float, length: float) -> Scale:
    """Maps ``low`` to ``start`` and ``high`` to ``start + length`` (a negative length runs upwards)."""
    return lambda value: start + (value - low) / (high - low) * length


def _marker(parts: list[str], x: float, height: int, label: str, *, right: bool) -> None:
    """A vertical dashed line at ``x``; its label on the side with room for it."""
    parts.append(f'<line class="marker" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{height - BOTTOM}"/>')
    if label:
        anchor, offset = ("end", -3) if right else ("start", 3)
        parts.append(f'<text class="tick" x="{x + offset:.1f}" y="{TOP + 10}" text-anchor="{anchor}">{escape(label)}</text>')


def _lines(
    parts: list[str], series: Sequence[Series], points: list[list[tuple[float, float]]], sx: Scale, sy: Scale
) -> None:
    for item, line in zip(series, points):
        if not line:
            continue
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in line)
        dash = ' stroke-dasharray="5 3"' if item.dashed else ""
        parts.append(f'<polyline fill="none" stroke="{item.color}" stroke-width="2"{dash} points="{path}"/>')
        if len(line) <= 40:  # dots help read short runs; on long ones they only clutter
            parts.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.2" fill="{item.color}"/>' for x, y in line)


def _line_legend(parts: list[str], width: int, shown: Sequence[Series]) -> None:
    """The names of the series drawn, right-aligned along the top."""
    for index, item in enumerate(reversed(shown)):
        y = 16
        x = width - RIGHT - index * 70 - 62
        parts.append(f'<line x1="{x}" x2="{x + 14}" y1="{y - 4}" y2="{y - 4}" stroke="{item.color}" stroke-width="2"/>')
        parts.append(f'<text class="tick" x="{x + 18}" y="{y}">{escape(item.name)}</text>')


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    width: int = 340,
    height: int = 220,
    y_range: tuple[float, float] | None = None,
    marker_x: float | None = None,
    marker_label: str = "",
) -> str:
    """One SVG line chart; non-finite points are left out. ``marker_x`` draws a vertical dashed line."""
    points = _finite_points(series)
    xs = [x for line in points for x, _ in line]
    ys = [y for line in points for _, y in line]
    parts = _frame(width, height, title, f"{title} by {x_label}")
    if not xs:
        parts.append(f'<text class="tick" x="{width / 2}" y="{height / 2}" text-anchor="middle">no data</text></svg>')
        return "".join(parts)
    (x_low, x_high), (y_low, y_high), y_ticks = _value_ranges(xs, ys, y_range)
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM
    sx = _linear(x_low, x_high, LEFT, plot_w)
    sy = _linear(y_low, y_high, TOP + plot_h, -plot_h)
    whole_epochs = all(float(x).is_integer() for x in xs)
    x_ticks = [tick for tick in nice_ticks(x_low, x_high, 6) if not whole_epochs or float(tick).is_integer()]
    _axes(parts, width, height - BOTTOM, x_ticks, y_ticks, sx, sy)
    parts.append(
        f'<text class="tick" x="{LEFT + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle">{escape(x_label)}</text>'
    )
    if marker_x is not None and x_low <= marker_x <= x_high:
        _marker(parts, sx(marker_x), height, marker_label, right=sx(marker_x) > LEFT + plot_w * 0.7)
    _lines(parts, series, points, sx, sy)
    _line_legend(parts, width, [item for item, line in zip(series, points) if line])
    parts.append("</svg>")
    return "".join(parts)


def _calibration_bars(
    parts: list[str], accuracy: Sequence[float], confidence: Sequence[float], counts: Sequence[int], bar_w: float,
    sx: Scale, sy: Scale,
) -> None:
    """Each non-empty bin's accuracy as a bar, and the gap to its mean confidence shaded."""
    bins = len(counts)
    for index in range(bins):
        if counts[index] == 0:
            continue
        x = sx(index / bins)
        acc, conf = accuracy[index], confidence[index]
        parts.append(
            f'<rect class="bar" x="{x + 1:.1f}" y="{sy(acc):.1f}" width="{bar_w - 2:.1f}" '
            f'height="{sy(0) - sy(acc):.1f}"><title>confidence {index / bins:.3f}-{(index + 1) / bins:.3f}: '
            f"{counts[index]} images, accuracy {acc:.3f}, mean confidence {conf:.3f}</title></rect>"
        )
        low, high = sorted((acc, conf))
        parts.append(
            f'<rect class="gap" x="{x + 1:.1f}" y="{sy(high):.1f}" width="{bar_w - 2:.1f}" height="{sy(low) - sy(high):.1f}"/>'
        )


def _sample_strip(parts: list[str], counts: Sequence[int], top: float, strip_h: int, bar_w: float, sx: Scale) -> None:
    """The share of images per bin, a bar each (the largest bin fills ``strip_h``): where the
    model's confidence actually lies."""
    bins = len(counts)
    total = sum(counts) or 1
    largest = max(counts) or 1
    for index in range(bins):
        if counts[index] == 0:
            continue
        bar = counts[index] / largest * strip_h
        parts.append(
            f'<rect class="hist" x="{sx(index / bins) + 1:.1f}" y="{top + strip_h - bar:.1f}" '
            f'width="{bar_w - 2:.1f}" height="{bar:.1f}"><title>{counts[index]} images '
            f"({counts[index] / total:.1%})</title></rect>"
        )
    parts.append(f'<text class="tick" x="{LEFT - 6}" y="{top + strip_h / 2 + 4:.1f}" text-anchor="end">images</text>')


def _reliability_legend(parts: list[str]) -> None:
    for index, (css, name) in enumerate([("bar", "accuracy"), ("gap", "gap to confidence")]):
        x = LEFT + index * 90
        parts.append(f'<rect class="{css}" x="{x}" y="7" width="12" height="10"/>')
        parts.append(f'<text class="tick" x="{x + 16}" y="16">{name}</text>')
    x = LEFT + 225
    parts.append(f'<line class="diagonal" x1="{x}" x2="{x + 14}" y1="12" y2="12"/>')
    parts.append(f'<text class="tick" x="{x + 18}" y="16">perfect calibration</text>')


def reliability_diagram(
    accuracy: Sequence[float],
    confidence: Sequence[float],
    counts: Sequence[int],
    *,
    width: int = 460,
    height: int = 400,
) -> str:
    """Accuracy per equal-width confidence bin (bars) against the diagonal of perfect calibration,
    with the gap to each bin's mean confidence shaded, and the share of samples per bin below."""
    strip_h = 60  # the sample-share strip under the diagram
    # No title inside: the legend takes the top row, the page's heading names the chart.
    parts = _frame(width, height, "", "reliability diagram: accuracy per confidence bin against perfect calibration")
    bottom = height - BOTTOM - strip_h - 14
    plot_w, plot_h = width - LEFT - RIGHT, bottom - TOP
    sx = _linear(0.0, 1.0, LEFT, plot_w)
    sy = _linear(0.0, 1.0, TOP + plot_h, -plot_h)
    ticks = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    _axes(parts, width, bottom, [], ticks, sx, sy)  # the confidence ticks go under the strip
    bar_w = plot_w / len(counts)
    _calibration_bars(parts, accuracy, confidence, counts, bar_w, sx, sy)
    parts.append(f'<line class="diagonal" x1="{sx(0):.1f}" y1="{sy(0):.1f}" x2="{sx(1):.1f}" y2="{sy(1):.1f}"/>')
    parts.append(f'<text class="tick" transform="translate(12 {TOP + plot_h / 2:.1f}) rotate(-90)" text-anchor="middle">accuracy</text>')
    strip_top = bottom + 14
    _sample_strip(parts, counts, strip_top, strip_h, bar_w, sx)
    _x_axis(parts, width, strip_top + strip_h, ticks, sx)
    parts.append(
        f'<text class="tick" x="{LEFT + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle">confidence (top softmax probability)</text>'
    )
    _reliability_legend(parts)
    parts.append("</svg>")
    return "".join(parts)
