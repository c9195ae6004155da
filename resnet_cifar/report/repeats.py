"""The page of repeated runs: ``report.html`` for a ``train --seeds`` folder, from its repeats.json.

One self-contained page (the report's CSS, no script, nothing fetched) for all seeds: the spread
of the test and validation accuracy, the per-seed table, each class's accuracy spread and the
mean test confusion matrix. As on the evaluation page, every number read from repeats.json
carries ``data-key`` (its path there) and ``data-value`` (the exact value); the page computes
nothing but the row shares of the mean confusion matrix, which name the cell they divide.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

from resnet_cifar.errors import DataError, UsageError
from resnet_cifar.evaluation.spread import REPEATS_FILE
from resnet_cifar.files import atomic_write, printable
from resnet_cifar.report.page import CSS, confusion_table, data_key

__all__ = ["read_repeats", "render_repeats_page", "write_repeats_report"]


def read_repeats(folder: Path) -> dict[str, Any]:
    """repeats.json of a ``train --seeds`` folder."""
    path = Path(folder) / REPEATS_FILE
    if not path.is_file():
        raise UsageError(f"{folder}: no {REPEATS_FILE} (is it a finished `resnet-cifar train --seeds` folder?)")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DataError(f"{path}: not a readable summary ({type(error).__name__})") from None
    if not isinstance(summary, Mapping) or not all(key in summary for key in ("runs", "test_acc", "val_acc", "per_class")):
        raise DataError(f"{path}: not a summary of repeated runs")
    return dict(summary)


def _tag(summary: Mapping[str, Any], key: str | tuple[str, ...], digits: int = 4) -> str:
    """A repeats.json value as a tagged <span> (``n/a`` for None). ``key`` is a dotted path, or a
    tuple of parts where a part is data (a class name may hold dots)."""
    parts = key.split(".") if isinstance(key, str) else key
    value: Any = summary
    for part in parts:
        value = value[int(part)] if isinstance(value, list) else value[part]
    shown = "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)
    return f'<span data-key="{escape(data_key(parts))}" data-value="{value!r}">{escape(shown)}</span>'


_SPREAD_HEAD = "<th>mean</th><th>std</th><th>95% CI low</th><th>95% CI high</th><th>min</th><th>max</th>"


def _spread_cells(summary: Mapping[str, Any], key: tuple[str, ...]) -> str:
    entry = _lookup(summary, key)
    ci = ((*key, "ci95", "0"), (*key, "ci95", "1")) if entry["ci95"] is not None else ((*key, "ci95"),) * 2
    keys = ((*key, "mean"), (*key, "std"), *ci, (*key, "min"), (*key, "max"))
    return "".join(f"<td>{_tag(summary, item)}</td>" for item in keys)


def _lookup(summary: Mapping[str, Any], key: tuple[str, ...]) -> Any:
    value: Any = summary
    for part in key:
        value = value[part]
    return value


def _overview(summary: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><th scope=\"row\">{label}</th>{_spread_cells(summary, (key,))}</tr>"
        for label, key in (("test accuracy", "test_acc"), ("best validation accuracy", "val_acc"))
    )
    n = summary["test_acc"]["n"]
    note = (
        f"Over {n} seeds: the sample standard deviation (n - 1) and the mean's 95% confidence interval from "
        "Student's t with n - 1 degrees of freedom (it can reach past 0 or 1 with few seeds)."
        if n > 1
        else "One seed: no spread."
    )
    return (
        f'<section id="spread"><h2>Spread</h2><table class="numbers"><tr><th></th>{_SPREAD_HEAD}</tr>{rows}</table>'
        f'<p class="muted">{note}</p></section>'
    )


def _runs(summary: Mapping[str, Any]) -> str:
    rows = []
    for index, run in enumerate(summary["runs"]):
        key = f"runs.{index}"
        rows.append(
            f"<tr><td>{_tag(summary, f'{key}.seed')}</td><td>{_tag(summary, f'{key}.val_acc')}</td>"
            f"<td>{_tag(summary, f'{key}.test_acc')}</td><td>{_tag(summary, f'{key}.best_epoch')}</td>"
            f"<td>{_tag(summary, f'{key}.epochs_run')}</td><td>{escape(str(run['out_dir']))}</td></tr>"
        )
    head = "<tr><th>seed</th><th>best val acc</th><th>test acc</th><th>best epoch</th><th>epochs</th><th>run folder</th></tr>"
    return f'<section id="runs"><h2>Runs</h2><table class="numbers">{head}{"".join(rows)}</table></section>'


def _per_class(summary: Mapping[str, Any]) -> str:
    rows = []
    for name, entry in summary["per_class"].items():
        low, high = entry["min"] * 100, entry["max"] * 100
        bar = (
            f'<span class="range" style="margin-left: {low:.1f}%; width: {max(high - low, 0.5):.1f}%"></span>'
            f'<span class="mean" style="left: {entry["mean"] * 100:.1f}%"></span>'
        )
        rows.append(
            f'<tr><th scope="row">{escape(printable(name))}</th>{_spread_cells(summary, ("per_class", name))}'
            f'<td class="spreadbar">{bar}</td></tr>'
        )
    return (
        '<section id="classes"><h2>Accuracy per class</h2><p class="muted">Each class&#39;s test accuracy (the share '
        "of its images classified right) over the seeds; the bar spans min to max on a 0 to 100% scale, the tick "
        f'is the mean.</p><table class="numbers"><tr><th>class</th>{_SPREAD_HEAD}<th>min to max</th></tr>'
        f'{"".join(rows)}</table></section>'
    )


def _confusion(summary: Mapping[str, Any]) -> str:
    table = confusion_table(
        summary["mean_confusion_matrix"],
        summary["classes"],
        lambda i, j, share: _tag(summary, f"mean_confusion_matrix.{i}.{j}", 1),
    )
    return (
        '<section id="confusion"><h2>Mean confusion matrix</h2><p class="muted">The test confusion matrices of the '
        "seeds, averaged cell by cell (image counts). Rows are the true classes, columns the predictions; the colour "
        f"is the cell's share of its row.</p>{table}</section>"
    )


REPEATS_CSS = """
td.spreadbar { width: 200px; position: relative; }
td.spreadbar .range { display: block; height: 10px; border-radius: 3px; background: rgba(37, 99, 235, .45); }
td.spreadbar .mean { position: absolute; top: 4px; width: 2px; height: 18px; background: var(--ink); }
"""


def render_repeats_page(summary: Mapping[str, Any], *, folder: Path, generated: datetime, version: str) -> str:
    """The whole page as one HTML string."""
    seeds = ", ".join(str(seed) for seed in summary["seeds"])
    cards = "".join(
        f'<div class="card"><div class="label">{label}</div><div class="value">{_tag(summary, f"{key}.mean")}</div>'
        f'<div class="note">std {_tag(summary, f"{key}.std")} over {summary[key]["n"]} seeds</div></div>'
        for label, key in (("mean test accuracy", "test_acc"), ("mean best val accuracy", "val_acc"))
    )
    header = (
        f"<header><h1>CIFAR-10 repeats <span class=\"light\">&middot; {len(summary['runs'])} seeds</span></h1>"
        f'<p class="sub">{escape(str(folder))} &middot; seeds {escape(seeds)} &middot; written {generated:%Y-%m-%d %H:%M}</p>'
        '<nav><a href="#spread">Spread</a><a href="#runs">Runs</a><a href="#classes">Per class</a>'
        '<a href="#confusion">Confusion</a></nav></header>'
    )
    body = header + f'<section id="headline" class="cards">{cards}</section>'
    body += _overview(summary) + _runs(summary) + _per_class(summary) + _confusion(summary)
    footer = (
        f"<footer>Written by resnet-cifar {escape(version)} from {REPEATS_FILE}; every number on this page is the "
        "one in that file. This file is self-contained: it loads nothing from anywhere.</footer>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>CIFAR-10 repeats: {escape(seeds)}</title><style>{CSS}{REPEATS_CSS}</style></head>"
        f"<body><main>{body}{footer}</main></body></html>\n"
    )


def write_repeats_report(folder: Path, target: Path) -> tuple[Path, dict[str, Any]]:
    """report.html of the repeats in ``folder``, written atomically to ``target``; and the summary."""
    from resnet_cifar import __version__

    summary = read_repeats(folder)
    atomic_write(target, render_repeats_page(summary, folder=folder, generated=datetime.now(), version=__version__))
    return target, summary
