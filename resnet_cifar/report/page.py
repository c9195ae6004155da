"""The report page: one self-contained HTML document built from an evaluation's numbers and images.

Self-contained means the file is the whole page: CSS in a <style> element, charts as inline SVG,
thumbnails as PNG data: URIs, the system's own fonts (no web font), and nothing fetched from
anywhere, so it opens offline and can be mailed as one attachment. The only script is the
gallery's class filter; without it every mistake is simply shown.

Every number the page shows from the evaluation is read from the metrics.json dict (``metrics``),
never recomputed, and carries ``data-key`` (its path in metrics.json, dots between the parts) and
``data-value`` (the exact value) so a test, or a reader, can check the page against the file.
Numbers from elsewhere (the run's config, metrics.jsonl, per-image confidences) carry no key.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from resnet_cifar.choices.optimizers import OPTIMIZERS
from resnet_cifar.config import TrainConfig
from resnet_cifar.files import printable
from resnet_cifar.report.gallery import Mistake, select_mistakes, thumbnail_uri
from resnet_cifar.report.svg import Series, line_chart, reliability_diagram

__all__ = ["ReportInputs", "confusion_table", "heat_style", "render_page"]

TOP_PAIRS = 10  # rows in the "most confused pairs" table


@dataclass(frozen=True)
class ReportInputs:
    """Everything the page shows. ``images`` (uint8 ``[N, 32, 32, 3]``), ``labels``, ``predictions``
    and ``confidences`` are per image of the evaluated split, in the same order."""

    metrics: Mapping[str, Any]
    classes: tuple[str, ...]
    config: TrainConfig
    checkpoint: Path
    images: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray
    confidences: np.ndarray
    history: Sequence[Mapping[str, Any]] | None  # metrics.jsonl records, when the run folder has them
    history_note: str  # why there are no curves, when history is None
    generated: datetime
    version: str
    checkpoint_saved: datetime | None = None
    # Grad-CAM overlays (predicted class, true class) of gallery images by split position, or None
    # (captum missing), and the gallery's line about them.
    explanations: Mapping[int, tuple[str, str]] | None = None
    explain_note: str = ""
    # Per corruption, uint8 [severities, examples, 32, 32, 3]: the first images of the split as scored.
    robustness_examples: Mapping[str, np.ndarray] | None = None


# ----------------------------------------------------------------------------- number formatting


def _pct(value: float, digits: int = 2) -> str:
    return f"{value * 100:.{digits}f}%"


def _dec(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}f}"


def _num(metrics: Mapping[str, Any], key: str | tuple[str, ...], text_of=_pct, **attributes: str) -> str:
    """A metrics.json value as a tagged <span>: shown through ``text_of``, exact in data-value.

    ``key`` is a dotted path ("macro.f1"), or a tuple of parts where a part is data (a class name
    may hold dots: ``("per_class", name, "f1")``). In data-key, a part is shown as ``printable``
    shows it and a dot or backslash in it is escaped with a backslash, so the key still splits
    back into its parts.
    """
    parts = key.split(".") if isinstance(key, str) else key
    value: Any = metrics
    for part in parts:
        value = value[int(part)] if isinstance(value, list) else value[part]
    key = data_key(parts)
    shown = text_of(value)
    extra = "".join(f' {name.replace("_", "-")}="{escape(str(content))}"' for name, content in attributes.items())
    return f'<span data-key="{escape(key)}" data-value="{value!r}"{extra}>{escape(shown)}</span>'


def data_key(parts: Sequence[str]) -> str:
    """A value's path for a page's data-key attribute: its parts as ``printable`` shows them, a dot
    or backslash inside a part escaped with a backslash (a class name may hold dots)."""
    return ".".join(printable(part).replace("\\", "\\\\").replace(".", "\\.") for part in parts)


def _int(value: int) -> str:
    return f"{value:,}"


def _name(name: str) -> str:
    """A class name for the page: data, so HTML-escaped and with control characters as escapes."""
    return escape(printable(name))


# ----------------------------------------------------------------------------- sections


def _header(inputs: ReportInputs) -> str:
    cfg, m = inputs.config, inputs.metrics
    weights = f"{m['weights']} weights" + (f", epoch {m['epoch']}" if m.get("epoch") is not None else "")
    subtitle = (
        f"{escape(str(inputs.checkpoint))} &middot; {weights} &middot; {m['split']} split, "
        f"{_int(m['count'])} images &middot; written {inputs.generated:%Y-%m-%d %H:%M}"
    )
    return (
        "<header>"
        f"<h1>ResNet-{cfg.model.depth} on CIFAR-10 <span class=\"light\">&middot; {escape(m['split'])} report</span></h1>"
        f'<p class="sub">{subtitle}</p>'
        '<nav><a href="#run">Run</a><a href="#curves">Curves</a><a href="#classes">Per class</a>'
        '<a href="#confusion">Confusion</a><a href="#pairs">Confused pairs</a><a href="#gallery">Mistakes</a>'
        '<a href="#calibration">Calibration</a></nav>'
        "</header>"
    )


def _headline(inputs: ReportInputs) -> str:
    m = inputs.metrics
    cards = []
    if m.get("tta"):
        cards.append(("accuracy with TTA", _num(m, "accuracy"), "logits averaged with the mirrored image"))
        if m.get("accuracy_without_tta") is not None:
            cards.append(("accuracy without TTA", _num(m, "accuracy_without_tta"), "one plain pass"))
    else:
        cards.append(("accuracy", _num(m, "accuracy"), f"{_int(_correct(m))} of {_int(m['count'])} right"))
    cards.append(("macro F1", _num(m, "macro.f1"), "unweighted mean over the classes"))
    if "ece" in m:
        cards.append(("calibration error (ECE)", _num(m, "ece"), "15 equal-width confidence bins"))
        cards.append(("mean confidence", _num(m, "mean_confidence"), "top softmax probability, averaged"))
    if m.get("loss") is not None:
        cards.append(("loss", _num(m, "loss", _dec), "cross-entropy as in training"))
    body = "".join(
        f'<div class="card"><div class="label">{escape(label)}</div><div class="value">{value}</div>'
        f'<div class="note">{escape(note)}</div></div>'
        for label, value, note in cards
    )
    return f'<section id="headline" class="cards">{body}</section>'


def _correct(metrics: Mapping[str, Any]) -> int:
    matrix = metrics["confusion_matrix"]
    return sum(matrix[i][i] for i in range(len(matrix)))


def _run(inputs: ReportInputs) -> str:
    cfg, m = inputs.config, inputs.metrics
    model, optim, data, precision = cfg.model, cfg.optim, cfg.data, cfg.precision
    stem = {"cifar": "CIFAR stem (3x3, no max-pool)", "imagenet": "ImageNet stem (7x7/2 + max-pool)"}.get(
        model.stem, model.stem
    )
    extras = []
    if model.pretrained:
        extras.append(f"from {model.pretrained}")
    if model.dropout:
        extras.append(f"dropout {model.dropout:g}")
    if model.image_size:
        extras.append(f"upsampled to {model.image_size} px")
    if model.freeze_backbone:
        extras.append("frozen backbone")
    schedule = optim.schedule + (f", warm-up {optim.warmup_epochs:g} epochs" if optim.warmup_epochs else "")
    optimizer = f"{optim.optimizer}, lr {optim.lr:g}"
    if "momentum" in OPTIMIZERS[optim.optimizer].options:  # the optimizers that take it (SGD)
        optimizer += f", momentum {optim.momentum:g}" + (" (Nesterov)" if optim.nesterov else "")
    optimizer += f", weight decay {optim.weight_decay:g}"
    augment = [name for name, on in (("random crop", data.crop), ("flip", data.flip)) if on]
    if data.cutout:
        augment.append(f"cutout {data.cutout} px")
    trained = "n/a" if m.get("epoch") is None else f"{m['epoch']} of {optim.epochs}"
    if inputs.history:
        seconds = sum(float(record.get("epoch_seconds", 0.0)) for record in inputs.history)
        trained += f"; metrics.jsonl holds {len(inputs.history)}, trained in {_duration(seconds)}"
    amp = {True: precision.amp_dtype, False: "off"}.get(precision.amp, f"{precision.amp_dtype} on CUDA, off on a CPU")
    rows = [
        ("model", f"ResNet-{model.depth}, {stem}" + (f"; {', '.join(extras)}" if extras else "")),
        ("preset", cfg.run.preset),
        ("epochs", trained),
        ("optimizer", optimizer),
        ("schedule", schedule),
        ("batch", f"{data.batch_size} (eval {data.eval_batch_size})"),
        ("label smoothing", f"{optim.label_smoothing:g}"),
        ("EMA of weights", f"decay {optim.ema_decay:g}" if optim.ema else "off"),
        ("augmentation", ", ".join(augment) or "none"),
        ("precision", f"training AMP {amp}; evaluated on {m.get('device', 'n/a')}"
         + (f" in {m['amp_dtype']}" if m.get("amp_dtype") else " in float32")),
        ("data folder", str(data.data_dir)),
        ("evaluated", f"{m['split']} split, {_int(m['count'])} images"
         + (f" (a stratified subset of {m['limit']})" if m.get("limit") else "")
         + (", with TTA" if m.get("tta") else "")),
        ("checkpoint", str(inputs.checkpoint)
         + (f", saved {inputs.checkpoint_saved:%Y-%m-%d %H:%M}" if inputs.checkpoint_saved else "")),
        ("report", f"resnet-cifar {inputs.version}, {inputs.generated:%Y-%m-%d %H:%M}"),
    ]  # fmt: skip
    cells = "".join(f"<dt>{escape(key)}</dt><dd>{escape(value)}</dd>" for key, value in rows)
    return f'<section id="run"><h2>The run</h2><dl class="facts">{cells}</dl></section>'


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _curves(inputs: ReportInputs) -> str:
    history = inputs.history
    if not history:
        return f'<section id="curves"><h2>Training curves</h2><p class="muted">{escape(inputs.history_note)}</p></section>'

    def column(name: str) -> list[float]:
        return [float(record.get(name, math.nan)) for record in history]

    epochs = column("epoch")
    best = inputs.metrics.get("epoch")
    marker = {"marker_x": float(best), "marker_label": "checkpoint"} if best is not None else {}
    charts = [
        line_chart(
            [Series("train", epochs, column("train_loss"), "#2563eb"), Series("val", epochs, column("val_loss"), "#ea580c")],
            title="Loss",
            x_label="epoch",
            **marker,
        ),
        line_chart(
            [Series("train", epochs, column("train_acc"), "#2563eb"), Series("val", epochs, column("val_acc"), "#ea580c")],
            title="Accuracy",
            x_label="epoch",
            **marker,
        ),
        line_chart([Series("lr", epochs, column("lr"), "#059669")], title="Learning rate (end of epoch)", x_label="epoch"),
    ]
    note = (
        "From metrics.jsonl in the checkpoint's run folder. Train figures are averages over each epoch "
        "(with augmentation and dropout); val figures are measured after it."
    )
    figures = "".join(f"<figure>{chart}</figure>" for chart in charts)
    return f'<section id="curves"><h2>Training curves</h2><div class="charts">{figures}</div><p class="muted">{note}</p></section>'


def heat_style(share: float, diagonal: bool) -> str:
    """Inline cell colour: blue for the right answers, red for the mistakes (scaled up: they are small)."""
    if diagonal:
        alpha, rgb = share, "37, 99, 235"
    else:
        alpha, rgb = min(1.0, share * 2.5), "220, 38, 38"
    ink = "#fff" if alpha > 0.55 else "#111827"
    return f' style="background: rgba({rgb}, {alpha:.3f}); color: {ink}"'


def _per_class(inputs: ReportInputs) -> str:
    m = inputs.metrics
    rows = []
    for name in inputs.classes:
        cells = "".join(
            f'<td{heat_style(float(m["per_class"][name][metric]), True)}>{_num(m, ("per_class", name, metric), _dec)}</td>'
            for metric in ("precision", "recall", "f1")
        )
        support = _num(m, ("per_class", name, "support"), _int)
        rows.append(f'<tr><th scope="row">{_name(name)}</th>{cells}<td>{support}</td></tr>')
    macro = "".join(f"<td>{_num(m, f'macro.{metric}', _dec)}</td>" for metric in ("precision", "recall", "f1"))
    rows.append(f'<tr class="total"><th scope="row">macro avg</th>{macro}<td>{_num(m, "count", _int)}</td></tr>')
    head = "<tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>"
    return (
        '<section id="classes"><h2>Per class</h2>'
        '<p class="muted">Precision: of the images predicted as the class, the share that are. Recall: of the '
        "class's images, the share found. Support: the class's images in the split.</p>"
        f'<table class="numbers">{head}{"".join(rows)}</table></section>'
    )


def confusion_table(matrix: Sequence[Sequence[float]], classes: Sequence[str], cell: Callable[[int, int, float], str]) -> str:
    """A confusion <table>: rows the true classes, columns the predictions, each cell coloured by
    its share of its row and filled with ``cell(i, j, share)``."""
    head = "".join(f'<th class="rot"><span>{_name(name)}</span></th>' for name in classes)
    rows = []
    for i, name in enumerate(classes):
        total = sum(matrix[i])
        shares = [matrix[i][j] / total if total else 0.0 for j in range(len(classes))]
        cells = "".join(f"<td{heat_style(share, i == j)}>{cell(i, j, share)}</td>" for j, share in enumerate(shares))
        rows.append(f'<tr><th scope="row">{_name(name)}</th>{cells}</tr>')
    return f'<table class="confusion"><tr><th class="corner">true \\ predicted</th>{head}</tr>{"".join(rows)}</table>'


def _matrix_table(inputs: ReportInputs, normalized: bool) -> str:
    m = inputs.metrics

    def cell(i: int, j: int, share: float) -> str:
        if normalized:
            # Derived from metrics.json, so it names the count it divides rather than a key of its own.
            return f'<span data-share-of="confusion_matrix.{i}.{j}" data-share="{share!r}">{share * 100:.1f}</span>'
        return _num(m, f"confusion_matrix.{i}.{j}", _int)

    caption = "row-normalized, % of the true class" if normalized else "counts"
    table = confusion_table(m["confusion_matrix"], inputs.classes, cell)
    return f'<figure class="matrix"><figcaption>{caption}</figcaption>{table}</figure>'


def _confusion(inputs: ReportInputs) -> str:
    return (
        '<section id="confusion"><h2>Confusion matrix</h2>'
        '<p class="muted">Rows are the true classes, columns the predictions. Blue: right answers; red: '
        "mistakes (their colour scale is 2.5 times stronger, so small confusions show).</p>"
        f'<div class="matrices">{_matrix_table(inputs, False)}{_matrix_table(inputs, True)}</div></section>'
    )


def _pairs(inputs: ReportInputs) -> str:
    m = inputs.metrics
    matrix = m["confusion_matrix"]
    classes = inputs.classes
    pairs = sorted(
        ((matrix[i][j], i, j) for i in range(len(classes)) for j in range(len(classes)) if i != j and matrix[i][j] > 0),
        key=lambda item: (-item[0], item[1], item[2]),
    )[:TOP_PAIRS]
    if not pairs:
        return '<section id="pairs"><h2>Most confused pairs</h2><p class="muted">No mistakes.</p></section>'
    largest = pairs[0][0]
    rows = []
    for count, i, j in pairs:
        total = sum(matrix[i])
        share = count / total if total else 0.0
        bar = f'<span class="bar" style="width: {count / largest * 100:.1f}%"></span>'
        rows.append(
            f"<tr><td>{_name(classes[i])}</td><td>&rarr; {_name(classes[j])}</td>"
            f'<td>{_num(m, f"confusion_matrix.{i}.{j}", _int)}</td>'
            f'<td><span data-share="{share!r}">{share * 100:.1f}%</span></td><td class="barcell">{bar}</td></tr>'
        )
    head = "<tr><th>true</th><th>predicted as</th><th>images</th><th>of the true class</th><th></th></tr>"
    return (
        '<section id="pairs"><h2>Most confused pairs</h2>'
        f'<table class="numbers pairs">{head}{"".join(rows)}</table></section>'
    )


def _gallery(inputs: ReportInputs) -> str:
    classes = inputs.classes
    mistakes: list[Mistake] = select_mistakes(
        inputs.labels, inputs.predictions, inputs.confidences, len(classes)
    )
    wrong = int(np.count_nonzero(np.asarray(inputs.labels) != np.asarray(inputs.predictions)))
    if not mistakes:
        return '<section id="gallery"><h2>Mistakes</h2><p class="muted">No misclassified images.</p></section>'
    figures = []
    for mistake in mistakes:
        true, predicted = classes[mistake.true], classes[mistake.predicted]
        figures.append(
            f'<figure class="shot" data-true="{_name(true)}">'
            f'<img src="{thumbnail_uri(inputs.images[mistake.index])}" width="96" height="96" '
            f'alt="{_name(true)} predicted as {_name(predicted)}">{_overlays(inputs, mistake.index, true, predicted)}'
            f'<figcaption><b>{_name(true)}</b> &rarr; {_name(predicted)}<br>'
            f'<span class="conf">{mistake.confidence * 100:.1f}%</span> <span class="idx">#{mistake.index}</span>'
            "</figcaption></figure>"
        )
    shown: dict[str, int] = {}
    for mistake in mistakes:
        shown[classes[mistake.true]] = shown.get(classes[mistake.true], 0) + 1
    buttons = '<button type="button" class="on" data-class="">all</button>' + "".join(
        f'<button type="button" data-class="{_name(name)}">{_name(name)} ({shown[name]})</button>'
        for name in classes
        if name in shown
    )
    intro = (
        f"{len(mistakes)} of the {_int(wrong)} misclassified images: the most confident mistakes first, and at least "
        "the three most confident of each true class. Caption: true class &rarr; prediction, the model's "
        "confidence in it, and the image's position in the split."
    )
    return (
        f'<section id="gallery"><h2>Mistakes</h2><p class="muted">{intro}</p>'
        f'<p class="muted explain">{escape(inputs.explain_note)}</p>'
        f'<div class="filter" hidden>{buttons}</div><div class="shots">{"".join(figures)}</div></section>'
    )


def _overlays(inputs: ReportInputs, index: int, true: str, predicted: str) -> str:
    """The Grad-CAM overlays of one gallery image, for its predicted and its true class."""
    if inputs.explanations is None or index not in inputs.explanations:
        return ""
    for_predicted, for_true = inputs.explanations[index]
    return (
        f'<span class="cams"><img class="cam" src="{for_predicted}" width="48" height="48" '
        f'alt="Grad-CAM for {_name(predicted)}" title="Grad-CAM: {_name(predicted)} (predicted)">'
        f'<img class="cam" src="{for_true}" width="48" height="48" alt="Grad-CAM for {_name(true)}" '
        f'title="Grad-CAM: {_name(true)} (true)"></span>'
    )


def _robustness_heat(row: Mapping[str, float], metrics: Mapping[str, Any], name: str) -> str:
    cells = []
    for severity, value in row.items():
        clean = float(metrics["robustness"]["clean_accuracy"]) or 1.0
        share = max(0.0, min(1.0, float(value) / clean))  # blue as strong as the clean accuracy kept
        cells.append(f"<td{heat_style(share, True)}>{_num(metrics, f'robustness.accuracy.{name}.{severity}')}</td>")
    return "".join(cells)


def _robustness_grid(inputs: ReportInputs, name: str) -> str:
    """One image per corruption: the first examples (rows), clean then each severity (columns)."""
    examples = (inputs.robustness_examples or {}).get(name)
    if examples is None:
        return ""
    count = examples.shape[1]
    columns = [inputs.images[:count], *examples]
    grid = np.concatenate([np.concatenate(list(column), axis=0) for column in columns], axis=1)
    return (
        f'<figure class="examples"><img class="grid" src="{thumbnail_uri(grid, 2)}" '
        f'alt="{escape(name)}: clean, then severities"><figcaption>{escape(name)}</figcaption></figure>'
    )


def _robustness(inputs: ReportInputs) -> str:
    m = inputs.metrics
    if "robustness" not in m:
        return ""
    robustness = m["robustness"]
    severities = [str(severity) for severity in robustness["severities"]]
    head = "".join(f"<th>{severity}</th>" for severity in severities)
    rows = [
        f'<tr><th scope="row">{escape(name)}</th>{_robustness_heat(row, m, name)}'
        f'<td>{_num(m, f"robustness.mean_accuracy.{name}")}</td></tr>'
        for name, row in robustness["accuracy"].items()
    ]
    grids = "".join(_robustness_grid(inputs, name) for name in robustness["accuracy"])
    left_out = "".join(f"<li>{escape(name)}: {escape(why)}</li>" for name, why in robustness["left_out"].items())
    drop = "n/a" if robustness["relative_drop"] is None else _num(m, "robustness.relative_drop")
    return (
        '<section id="robustness"><h2>Robustness to corruptions</h2>'
        f'<p>Mean corruption accuracy {_num(m, "robustness.mean_corruption_accuracy")} against '
        f'{_num(m, "robustness.clean_accuracy")} clean: a relative drop of {drop}.</p>'
        '<p class="muted">CIFAR-10-C corruptions (Hendrycks &amp; Dietterich, 2019) computed on the fly with their '
        "CIFAR parameters; accuracy per severity (the deeper the blue, the more of the clean accuracy kept). "
        "Examples: the split's first images as scored, clean then at each severity (left to right).</p>"
        f'<table class="numbers robust"><tr><th>corruption</th>{head}<th>mean</th></tr>'
        f'{"".join(rows)}</table><div class="grids">{grids}</div>'
        + (f'<p class="muted">Left out:</p><ul class="muted">{left_out}</ul>' if left_out else "")
        + "</section>"
    )


def _calibration(inputs: ReportInputs) -> str:
    m = inputs.metrics
    if "ece" not in m:
        return '<section id="calibration"><h2>Calibration</h2><p class="muted">Not measured.</p></section>'
    calibration = m["calibration"]
    gap = m["mean_confidence"] - m["accuracy"]
    verdict = "overconfident" if gap > 0 else "underconfident"
    summary = (
        f"<p>Expected calibration error {_num(m, 'ece', _dec)} over {calibration['bins']} equal-width bins: "
        "the sample-weighted mean gap between accuracy and mean confidence per bin. "
        f"Mean confidence is {_num(m, 'mean_confidence')} against an accuracy of {_num(m, 'accuracy')}, so on the "
        f"whole the model is <b>{verdict}</b> by {abs(gap) * 100:.2f} points.</p>"
    )
    diagram = reliability_diagram(calibration["accuracy"], calibration["confidence"], calibration["count"])
    rows = []
    bins = calibration["bins"]
    for k in range(bins):
        if calibration["count"][k] == 0:
            continue
        rows.append(
            f"<tr><td>{k / bins:.3f} &ndash; {(k + 1) / bins:.3f}</td>"
            f"<td>{_num(m, f'calibration.count.{k}', _int)}</td>"
            f"<td>{_num(m, f'calibration.accuracy.{k}', _dec)}</td>"
            f"<td>{_num(m, f'calibration.confidence.{k}', _dec)}</td></tr>"
        )
    head = "<tr><th>confidence</th><th>images</th><th>accuracy</th><th>mean confidence</th></tr>"
    table = (
        f'<details><summary>The bins</summary><table class="numbers">{head}{"".join(rows)}</table></details>'
    )
    return (
        f'<section id="calibration"><h2>Calibration</h2>{summary}'
        f'<div class="calib"><figure>{diagram}</figure><div>{table}'
        '<p class="muted">Bars below the diagonal: the model is more confident than it is right in that bin. '
        f"The strip under the diagram shows how many images fall in each bin.</p></div></div>{_temperature(m)}</section>"
    )


def _temperature(m: Mapping[str, Any]) -> str:
    """Temperature scaling's effect on the evaluated images: NLL, ECE and mean confidence before
    (T = 1) and after, and both reliability diagrams."""
    scaling = m.get("temperature_scaling")
    if not scaling:
        return (
            '<h3 id="temperature">Temperature scaling</h3><p class="muted">The checkpoint has no fitted temperature: '
            "the probabilities are the raw softmax (run <code>resnet-cifar calibrate</code> on it).</p>"
        )
    key = "temperature_scaling"
    figures_of = (("negative log-likelihood", "nll"), ("calibration error (ECE)", "ece"), ("mean confidence", "mean_confidence"))
    rows = "".join(
        f"<tr><td>{label}</td><td>{_num(m, f'{key}.before.{name}', _dec)}</td>"
        f"<td>{_num(m, f'{key}.after.{name}', _dec)}</td></tr>"
        for label, name in figures_of
    )
    figures = []
    for when, caption in (("before", "before: raw softmax (T = 1)"), ("after", "after: softmax(logits / T)")):
        bins = scaling[when]["calibration"]
        diagram = reliability_diagram(bins["accuracy"], bins["confidence"], bins["count"])
        figures.append(f'<figure data-when="{when}"><figcaption>{caption}</figcaption>{diagram}</figure>')
    joined = "".join(figures)
    return (
        '<h3 id="temperature">Temperature scaling</h3>'
        f"<p>The logits are divided by the temperature T = {_num(m, f'{key}.temperature', _dec)}, fitted on the "
        "validation split by minimising its negative log-likelihood (never on the test split). Predictions, accuracy "
        "and the confusion matrix are the same with and without it; only the probabilities change. The figures "
        f"above are after it; on these images:</p><table class=\"numbers\"><tr><th></th><th>before (T = 1)</th>"
        f"<th>after</th></tr>{rows}</table><div class=\"calib\">{joined}</div>"
    )


CSS = """
:root { --ink: #111827; --muted: #6b7280; --line: #e5e7eb; --accent: #2563eb; --bg: #f9fafb; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 28px 48px; }
header h1 { margin: 0 0 4px; font-size: 26px; }
.light { color: var(--muted); font-weight: 400; }
.sub { margin: 0 0 12px; color: var(--muted); font-size: 13px; word-break: break-all; }
nav { display: flex; flex-wrap: wrap; gap: 6px 16px; font-size: 14px; border-bottom: 1px solid var(--line); padding-bottom: 12px; }
nav a { color: var(--accent); text-decoration: none; }
section { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 18px 22px; margin-top: 18px; }
h2 { margin: 0 0 10px; font-size: 19px; }
.muted { color: var(--muted); font-size: 13px; }
.cards { display: flex; flex-wrap: wrap; gap: 14px; background: none; border: 0; padding: 0; }
.card { flex: 1 1 140px; background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 14px 16px; }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 28px; font-weight: 650; font-variant-numeric: tabular-nums; }
.card .note { color: var(--muted); font-size: 12px; }
.card:first-child .value { color: var(--accent); }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 18px; margin: 0; font-size: 14px; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; word-break: break-word; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
.charts figure { flex: 1 1 300px; max-width: 420px; }
.charts svg.chart { width: 100%; }
figure { margin: 0; }
svg.chart { font-size: 11px; max-width: 100%; height: auto; }
svg .chart-title { font-size: 13px; font-weight: 600; fill: var(--ink); }
svg .tick { fill: var(--muted); }
svg .grid { stroke: var(--line); }
svg .axis { stroke: #9ca3af; }
svg .marker { stroke: #9ca3af; stroke-dasharray: 3 3; }
svg .bar { fill: rgba(37, 99, 235, .75); }
svg .gap { fill: rgba(220, 38, 38, .28); stroke: rgba(220, 38, 38, .7); stroke-width: .8; }
svg .hist { fill: #9ca3af; }
svg .diagonal { stroke: var(--ink); stroke-dasharray: 4 3; stroke-width: 1.2; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
table.numbers th, table.numbers td { padding: 4px 12px; border-bottom: 1px solid var(--line); text-align: right; }
table.numbers th:first-child, table.numbers td:first-child { text-align: left; }
table.numbers tr.total th, table.numbers tr.total td { font-weight: 600; border-top: 2px solid var(--ink); }
table.pairs td:nth-child(2) { text-align: left; }
td.barcell { width: 180px; }
span.bar { display: block; height: 10px; border-radius: 3px; background: rgba(220, 38, 38, .6); }
.matrices { display: flex; flex-wrap: wrap; gap: 24px; }
figure.matrix figcaption { font-size: 13px; color: var(--muted); margin-bottom: 4px; }
table.confusion td { width: 38px; height: 30px; text-align: center; font-size: 12px; border: 1px solid #fff; }
table.confusion th { font-size: 12px; font-weight: 500; text-align: right; padding-right: 6px; }
table.confusion th.rot { height: 84px; vertical-align: bottom; padding: 0 0 4px; width: 38px; }
table.confusion th.rot span { display: inline-block; writing-mode: vertical-rl; transform: rotate(180deg); }
table.confusion th.corner { font-size: 11px; color: var(--muted); vertical-align: bottom; }
.filter { display: flex; flex-wrap: wrap; gap: 6px; margin-bottom: 12px; }
.filter button { font: inherit; font-size: 13px; border: 1px solid var(--line); background: #fff; border-radius: 999px;
  padding: 2px 10px; cursor: pointer; }
.filter button.on { background: var(--ink); color: #fff; border-color: var(--ink); }
.shots { display: grid; grid-template-columns: repeat(auto-fill, minmax(112px, 1fr)); gap: 12px; }
figure.shot { text-align: center; font-size: 12px; line-height: 1.35; }
figure.shot img { width: 96px; height: 96px; image-rendering: pixelated; border-radius: 4px; display: block; margin: 0 auto 4px;
  box-shadow: 0 0 0 1px var(--line); }
figure.shot .conf { color: #dc2626; font-weight: 600; }
figure.shot .idx { color: var(--muted); }
figure.shot img.cam { width: 48px; height: 48px; display: inline-block; margin: 0 1px 4px; }
.grids { display: flex; flex-wrap: wrap; gap: 14px; margin-top: 12px; }
figure.examples img.grid { image-rendering: pixelated; display: block; }
figure.examples figcaption { font-size: 12px; color: var(--muted); text-align: center; }
.calib { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
details summary { cursor: pointer; color: var(--accent); margin-bottom: 6px; }
footer { color: var(--muted); font-size: 12px; margin-top: 18px; text-align: center; }
@media print { body { background: #fff; } section { break-inside: avoid; } .filter { display: none !important; } }
"""

# The gallery's class filter: the one place where script earns its keep (60 images in one grid
# are hard to scan for one class). Without script, the buttons stay hidden and all images show.
SCRIPT = """
(function () {
  var bar = document.querySelector("#gallery .filter");
  if (!bar) return;
  bar.hidden = false;
  bar.addEventListener("click", function (event) {
    var button = event.target.closest("button");
    if (!button) return;
    var wanted = button.getAttribute("data-class");
    bar.querySelectorAll("button").forEach(function (b) { b.classList.toggle("on", b === button); });
    document.querySelectorAll("#gallery figure.shot").forEach(function (figure) {
      figure.hidden = wanted !== "" && figure.getAttribute("data-true") !== wanted;
    });
  });
})();
"""


def render_page(inputs: ReportInputs) -> str:
    """The whole report as one HTML string."""
    title = f"ResNet-{inputs.config.model.depth} CIFAR-10 {inputs.metrics['split']} report"
    sections = [
        _header(inputs),
        _headline(inputs),
        _run(inputs),
        _curves(inputs),
        _per_class(inputs),
        _confusion(inputs),
        _pairs(inputs),
        _gallery(inputs),
        _calibration(inputs),
        _robustness(inputs),
    ]
    footer = (
        f"<footer>Written by resnet-cifar {escape(inputs.version)}. Every evaluation number on this page is the one "
        "in metrics.json beside it. This file is self-contained: it loads nothing from anywhere.</footer>"
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>"
        f"<body><main>{''.join(sections)}{footer}</main><script>{SCRIPT}</script></body></html>\n"
    )
