"""sweep.html: a study a person can read, as one self-contained HTML file (inline SVG and CSS, no
script, no font or image from anywhere), like the run report.

What it shows: the optimisation history with the running best, the parameter importances (Optuna's
PED-ANOVA evaluator: deterministic, no scikit-learn), one slice plot per parameter, a
parallel-coordinates view of the complete trials, the best trial's config ready for
``train --config``, and the table of every trial with its state (running, pruned and failed ones
included: a page written while workers run is a snapshot and says so).

Every number is the study's: the table cells carry the exact stored value in ``data-value``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from resnet_cifar.report.page import CSS
from resnet_cifar.report.svg import nice_ticks

# Plot area margins inside each SVG's viewBox.
LEFT, RIGHT, TOP, BOTTOM = 52, 14, 26, 38
ACCENT, MUTED = "#2563eb", "#9ca3af"
STATE_COLOURS = {"COMPLETE": "#16a34a", "PRUNED": "#d97706", "FAIL": "#dc2626", "RUNNING": "#2563eb", "WAITING": "#6b7280"}


@dataclass(frozen=True)
class Axis:
    """How one parameter is laid out: by its choices (categorical), on a log scale, or linearly."""

    key: str
    choices: tuple[Any, ...] | None = None
    log: bool = False

    def position(self, value: Any) -> float:
        if self.choices is not None:
            return float(self.choices.index(value)) if value in self.choices else math.nan
        number = float(value)
        return math.log10(number) if self.log and number > 0 else number

    def ticks(self, low: float, high: float) -> list[tuple[float, str]]:
        if self.choices is not None:
            return [(float(index), _short(choice)) for index, choice in enumerate(self.choices)]
        if self.log:
            return [(tick, f"{10**tick:.3g}") for tick in nice_ticks(low, high, 4)]
        return [(tick, f"{tick:.4g}") for tick in nice_ticks(low, high, 4)]


@dataclass(frozen=True)
class SweepPage:
    study_name: str
    storage: str  # password masked
    trials: Sequence[Any]  # TrialSummary, by number
    best: Any  # the best complete TrialSummary, or None
    axes: Sequence[Axis]  # the searched parameters
    importances: dict[str, float] | None
    importance_note: str  # why there are none, or how they were computed
    best_config_text: str | None
    best_config_file: str | None
    written_at: str
    version: str


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 14 else text[:13] + "…"


def _fmt(value: float | None, digits: int = 4) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


# ----------------------------------------------------------------------------- charts


def _scale(low: float, high: float, start: float, length: float):  # noqa: ANN202 (a small closure)
    if high == low:
        low, high = low - 1, high + 1
    return lambda value: start + (value - low) / (high - low) * length


def _frame(width: int, height: int, title: str) -> list[str]:
    return [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{escape(title)}"><text class="chart-title" x="{LEFT}" y="16">{escape(title)}</text>'
    ]


def _plot_axes(
    parts: list[str], width: int, height: int, x_ticks: list[tuple[float, str]], y_ticks: list[float], sx, sy, x_label: str
) -> None:  # fmt: skip
    bottom = height - BOTTOM
    for tick in y_ticks:
        y = sy(tick)
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{width - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:g}</text>')
    for tick, label in x_ticks:
        x = sx(tick)
        parts.append(f'<text class="tick" x="{x:.1f}" y="{bottom + 15}" text-anchor="middle">{escape(label)}</text>')
    parts.append(f'<line class="axis" x1="{LEFT}" x2="{width - RIGHT}" y1="{bottom}" y2="{bottom}"/>')
    parts.append(f'<line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{bottom}"/>')
    parts.append(f'<text class="tick" x="{(LEFT + width - RIGHT) / 2:.1f}" y="{height - 4}" text-anchor="middle">{escape(x_label)}</text>')


def _value_range(values: list[float]) -> tuple[float, float, list[float]]:
    low, high = min(values), max(values)
    if high == low:
        low, high = low - 0.05, high + 0.05
    ticks = nice_ticks(low, high, 5)
    return min(low, ticks[0]), max(high, ticks[-1]), ticks


def scatter_chart(
    points: list[tuple[float, float, str]], *, title: str, x_label: str, axis: Axis | None = None,
    best_line: list[tuple[float, float]] | None = None, width: int = 360, height: int = 230,
) -> str:  # fmt: skip
    """Dots (x, y, colour) over x positions (``axis`` lays a parameter out; None: plain numbers), with
    an optional step line (the running best)."""
    parts = _frame(width, height, title)
    shown = [(x, y, colour) for x, y, colour in points if math.isfinite(x) and math.isfinite(y)]
    if not shown:
        parts.append(f'<text class="tick" x="{width / 2}" y="{height / 2}" text-anchor="middle">no complete trial yet</text></svg>')
        return "".join(parts)
    xs = [x for x, _, _ in shown]
    x_low, x_high = (-0.5, len(axis.choices) - 0.5) if axis is not None and axis.choices is not None else (min(xs), max(xs))
    y_low, y_high, y_ticks = _value_range([y for _, y, _ in shown])
    sx = _scale(x_low, x_high, LEFT + 8, width - LEFT - RIGHT - 16)
    sy = _scale(y_low, y_high, height - BOTTOM, -(height - BOTTOM - TOP))
    x_ticks = axis.ticks(x_low, x_high) if axis is not None else [(t, f"{t:g}") for t in nice_ticks(x_low, x_high, 6) if float(t).is_integer()]
    _plot_axes(parts, width, height, [(t, label) for t, label in x_ticks if x_low <= t <= x_high], y_ticks, sx, sy, x_label)
    if best_line:
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in best_line)
        parts.append(f'<polyline class="best" fill="none" stroke="{ACCENT}" stroke-width="2" points="{path}"/>')
    parts.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="{colour}" fill-opacity=".8"/>' for x, y, colour in shown)
    parts.append("</svg>")
    return "".join(parts)


def importance_bars(importances: dict[str, float], *, width: int = 520) -> str:
    """One horizontal bar per parameter, most important first, its share written beside it."""
    rows = sorted(importances.items(), key=lambda item: -item[1])
    height = TOP + 24 * len(rows) + 8
    parts = _frame(width, height, "parameter importance (PED-ANOVA)")
    name_w, bar_w = 170, width - 170 - 70
    for index, (key, share) in enumerate(rows):
        y = TOP + 24 * index
        parts.append(f'<text class="tick" x="{name_w - 8}" y="{y + 14}" text-anchor="end">{escape(key)}</text>')
        parts.append(f'<rect class="bar" x="{name_w}" y="{y + 3}" width="{max(share, 0) * bar_w:.1f}" height="14"/>')
        parts.append(f'<text class="tick" x="{name_w + max(share, 0) * bar_w + 6:.1f}" y="{y + 14}">{share:.3f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def parallel_coordinates(trials: Sequence[Any], axes: Sequence[Axis], *, width: int = 760, height: int = 260) -> str:
    """Each complete trial as a line across one vertical axis per parameter and one for its value,
    darker for better values."""
    complete = [trial for trial in trials if trial.state == "COMPLETE" and trial.value is not None]
    parts = _frame(width, height, "parallel coordinates (complete trials)")
    if not complete:
        parts.append(f'<text class="tick" x="{width / 2}" y="{height / 2}" text-anchor="middle">no complete trial yet</text></svg>')
        return "".join(parts)
    columns = [*axes, Axis(key="val_acc")]
    step = (width - 2 * LEFT) / max(len(columns) - 1, 1)
    scales = []
    for index, axis in enumerate(columns):
        x = LEFT + index * step
        values = [_column_value(trial, axis) for trial in complete]
        finite = [v for v in values if math.isfinite(v)] or [0.0]
        low, high = (-0.5, len(axis.choices) - 0.5) if axis.choices is not None else (min(finite), max(finite))
        sy = _scale(low, high, height - BOTTOM, -(height - BOTTOM - TOP))
        scales.append(sy)
        parts.append(f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{height - BOTTOM}"/>')
        parts.append(f'<text class="tick" x="{x:.1f}" y="{height - BOTTOM + 15}" text-anchor="middle">{escape(_short(axis.key.split(".")[-1]))}</text>')
        for tick, label in (axis.ticks(low, high) if axis.key != "val_acc" else [(t, f"{t:g}") for t in nice_ticks(low, high, 4)]):
            if low <= tick <= high:
                parts.append(f'<text class="tick" x="{x + 4:.1f}" y="{sy(tick) + 4:.1f}">{escape(label)}</text>')
    v_low, v_high = min(t.value for t in complete), max(t.value for t in complete)
    for trial in sorted(complete, key=lambda t: t.value):
        share = 0.5 if v_high == v_low else (trial.value - v_low) / (v_high - v_low)
        points = " ".join(
            f"{LEFT + index * step:.1f},{scales[index](_column_value(trial, axis)):.1f}"
            for index, axis in enumerate(columns) if math.isfinite(_column_value(trial, axis))
        )  # fmt: skip
        parts.append(f'<polyline fill="none" stroke="{ACCENT}" stroke-opacity="{0.2 + 0.8 * share:.2f}" stroke-width="1.6" points="{points}"/>')
    parts.append("</svg>")
    return "".join(parts)


def _column_value(trial: Any, axis: Axis) -> float:
    if axis.key == "val_acc":
        return float(trial.value)
    return axis.position(trial.params[axis.key]) if axis.key in trial.params else math.nan


# ----------------------------------------------------------------------------- sections


def _header(page: SweepPage) -> str:
    counts: dict[str, int] = {}
    for trial in page.trials:
        counts[trial.state] = counts.get(trial.state, 0) + 1
    states = ", ".join(f"{count} {state.lower()}" for state, count in sorted(counts.items())) or "no trials yet"
    running = counts.get("RUNNING", 0) + counts.get("WAITING", 0)
    snapshot = (
        f'<p class="sub" id="snapshot">A snapshot: {running} trial(s) were still running or queued when this page was '
        "written; run <code>resnet-cifar sweep --report</code> again for a newer one.</p>"
        if running
        else ""
    )
    return (
        f'<header><h1>Sweep <span class="light">{escape(page.study_name)}</span></h1>'
        f'<p class="sub">{len(page.trials)} trials: {escape(states)} · storage {escape(page.storage)} · '
        f"written {escape(page.written_at)}</p>{snapshot}</header>"
    )


def _best_section(page: SweepPage) -> str:
    best = page.best
    if best is None:
        return '<section id="best"><h2>Best trial</h2><p class="muted">No trial has completed yet.</p></section>'
    params = "".join(f"<dt>{escape(key)}</dt><dd>{escape(str(value))}</dd>" for key, value in best.params.items())
    command = (
        f"<p>Train it with <code>resnet-cifar train --config {escape(page.best_config_file)}</code>.</p>"
        if page.best_config_file
        else ""
    )
    config = f"<details><summary>the whole config</summary><pre>{escape(page.best_config_text)}</pre></details>" if page.best_config_text else ""
    return (
        f'<section id="best"><h2>Best trial: {best.number}, val_acc '
        f'<span data-value="{best.value!r}">{_fmt(best.value)}</span></h2>'
        f'<dl class="facts">{params}</dl>{command}{config}</section>'
    )


def _charts(page: SweepPage) -> str:
    complete = sorted((t for t in page.trials if t.state == "COMPLETE" and t.value is not None), key=lambda t: t.number)
    dots = [(float(t.number), float(t.value), STATE_COLOURS["COMPLETE"]) for t in complete]
    running_best, best = [], -math.inf
    for trial in complete:
        best = max(best, trial.value)
        running_best.append((float(trial.number), best))
    history = scatter_chart(dots, title="history: val_acc and the running best", x_label="trial", best_line=running_best, width=520)
    if page.importances:
        importance = importance_bars(page.importances)
    else:
        importance = f'<p class="muted">No importances: {escape(page.importance_note)}</p>'
    slices = "".join(
        f"<figure>{scatter_chart([(axis.position(t.params[axis.key]), float(t.value), ACCENT) for t in complete if axis.key in t.params], title=f'slice: {axis.key}', x_label=axis.key + (' (log)' if axis.log else ''), axis=axis)}</figure>"
        for axis in page.axes
    )  # fmt: skip
    return (
        f'<section id="history"><h2>Optimisation history</h2><div class="charts"><figure>{history}</figure></div></section>'
        f'<section id="importance"><h2>Parameter importance</h2>{importance}'
        f'<p class="muted">{escape(page.importance_note) if page.importances else ""}</p></section>'
        f'<section id="slices"><h2>Slices</h2><div class="charts">{slices}</div></section>'
        f'<section id="parallel"><h2>Parallel coordinates</h2>{parallel_coordinates(page.trials, page.axes)}</section>'
    )


def _table(page: SweepPage) -> str:
    keys = [axis.key for axis in page.axes]
    head = "".join(f"<th>{escape(key)}</th>" for key in ["trial", "state", "val_acc", "test_acc", "time (s)", *keys, "note"])
    rows = []
    for trial in page.trials:
        colour = STATE_COLOURS.get(trial.state, MUTED)
        params = "".join(
            f'<td data-value="{escape(repr(trial.params[key]))}">{escape(_short(trial.params[key]) if not isinstance(trial.params[key], float) else f"{trial.params[key]:.4g}")}</td>'
            if key in trial.params else "<td></td>"
            for key in keys
        )  # fmt: skip
        rows.append(
            f'<tr data-trial="{trial.number}"><td>{trial.number}</td>'
            f'<td data-state="{trial.state}" style="color:{colour}">{trial.state.lower()}</td>'
            f'<td data-value="{trial.value!r}">{_fmt(trial.value)}</td>'
            f'<td data-value="{trial.test_acc!r}">{_fmt(trial.test_acc)}</td>'
            f'<td data-value="{trial.duration_seconds!r}">{_fmt(trial.duration_seconds, 1)}</td>'
            f'{params}<td class="note">{escape(trial.error or "")}</td></tr>'
        )
    return (
        f'<section id="trials"><h2>Trials</h2><table class="numbers" id="trial-table"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></section>"
    )


SWEEP_CSS = """
pre { background: var(--bg); border: 1px solid var(--line); border-radius: 6px; padding: 10px; font-size: 12px; overflow-x: auto; }
td.note { text-align: left !important; color: var(--muted); font-size: 12px; max-width: 360px; }
#parallel svg.chart { width: 100%; }
"""


def render_sweep_page(page: SweepPage) -> str:
    """The whole sweep page as one HTML string."""
    footer = (
        f"<footer>Written by resnet-cifar {escape(page.version)} from the study in its storage. "
        "This file is self-contained: it loads nothing from anywhere.</footer>"
    )
    body = _header(page) + _charts(page) + _best_section(page) + _table(page)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Sweep {escape(page.study_name)}</title><style>{CSS}{SWEEP_CSS}</style></head>"
        f"<body><main>{body}{footer}</main></body></html>\n"
    )


__all__ = ["Axis", "SweepPage", "importance_bars", "parallel_coordinates", "render_sweep_page", "scatter_chart"]
