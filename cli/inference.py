"""`resnet-cifar eval` and `resnet-cifar predict`: a trained checkpoint applied to a split or to image files.

Both commands only parse flags, call resnet_cifar.inference and render the result;
the library decides which weights, which images and which precision (see its module notes).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .common import cache_dir_from_env, reported_errors
from .options import (
    CheckpointArgument,
    CheckpointDataDirOption,
    DeviceOption,
    EvalBatchSizeOption,
    JsonOption,
    TtaOption,
)
from .render import Output

PredictModelArgument = Annotated[
    Path,
    typer.Argument(
        help="A checkpoint written by `resnet-cifar train`, or a {export.PREDICT_SUFFIXES:or} file written by "
        "`resnet-cifar export`.",
        show_default=False,
    ),
]


CorruptionsOption = Annotated[
    Optional[str],
    typer.Option(
        "--corruptions",
        help="Also score the split under CIFAR-10-C corruptions computed on the fly: all, families "
        "({corruptions.FAMILIES:or}) or names ({corruptions.AVAILABLE:or}), comma-separated. "
        "Left out, with the reason in docs/robustness.md: {corruptions.LEFT_OUT:list}.",
        show_default=False,
    ),
]
SeveritiesOption = Annotated[
    Optional[str],
    typer.Option(
        "--severities", help="With --corruptions: severities such as 1,3,5 or 1-3. Default: 1-5.", show_default=False
    ),
]


def _number(value: float) -> str:
    return f"{value:.4f}"


def render_eval(out: Output, report: dict[str, Any], out_dir: Path) -> None:
    """The per-class table (precision, recall, F1, support), then accuracy and macro averages."""
    rows: list[tuple[Any, ...]] = [
        (name, _number(entry["precision"]), _number(entry["recall"]), _number(entry["f1"]), entry["support"])
        for name, entry in report["per_class"].items()
    ]
    macro = report["macro"]
    rows.append(("accuracy", "", "", _number(report["accuracy"]), report["count"]))
    macro_cells = (_number(macro["precision"]), _number(macro["recall"]), _number(macro["f1"]))
    rows.append(("macro avg", *macro_cells, report["count"]))
    tta = ", TTA" if report["tta"] else ""
    title = f"{report['split']} split, {report['count']} images ({report['weights']} weights{tta})"
    out.table(title, ("class", "precision", "recall", "f1", "support"), rows)
    loss = "n/a" if report["loss"] is None else _number(report["loss"])
    calibration = (
        f"  ece {_number(report['ece'])}  mean confidence {_number(report['mean_confidence'])}" if "ece" in report else ""
    )
    scaling = report.get("temperature_scaling")
    if scaling:  # the figures above are after it; what it changed on these images
        before, after = scaling["before"], scaling["after"]
        out.line(
            f"temperature {_number(scaling['temperature'])}: NLL {_number(before['nll'])} -> {_number(after['nll'])}, "
            f"ECE {_number(before['ece'])} -> {_number(after['ece'])}"
        )
    out.line(f"accuracy {_number(report['accuracy'])}  loss {loss}{calibration}  report in {out_dir}")
    if "robustness" in report:
        render_robustness(out, report["robustness"])


def render_robustness(out: Output, robustness: dict[str, Any]) -> None:
    """Accuracy per corruption (rows) and severity (columns), the mean, and what was left out."""
    severities = [str(severity) for severity in robustness["severities"]]
    rows = [
        (name, *(_number(row[severity]) for severity in severities), _number(robustness["mean_accuracy"][name]))
        for name, row in robustness["accuracy"].items()
    ]
    out.table("accuracy under corruption", ("corruption", *severities, "mean"), rows)
    drop = robustness["relative_drop"]
    out.line(
        f"mean corruption accuracy {_number(robustness['mean_corruption_accuracy'])}  clean "
        f"{_number(robustness['clean_accuracy'])}  relative drop {'n/a' if drop is None else _number(drop)}"
    )
    for name, why in robustness["left_out"].items():
        out.line(f"left out: {name} ({why})")


def print_data_note(out: Output, report: dict[str, Any]) -> None:
    """The evaluation's note that its data is not the training data, if any (on stderr under --json)."""
    if "data_note" in report:
        out.line(f"note: {report['data_note']}")


def eval_command(
    checkpoint: CheckpointArgument,
    data_dir: CheckpointDataDirOption = None,
    split: Annotated[
        str, typer.Option("--split", help="{inference.EVAL_SPLITS:or} (val: the trainer's own validation split).")
    ] = "test",
    limit: Annotated[
        Optional[int],
        typer.Option(
            "--limit",
            help="Score a stratified, seeded subset of N images "
            "(for val it replaces the training run's --limit-val).",
            show_default=False,
        ),
    ] = None,
    device: DeviceOption = "auto",
    batch_size: EvalBatchSizeOption = None,
    tta: TtaOption = False,
    out_dir: Annotated[
        Optional[Path],
        typer.Option(
            "--out", help="Report folder. Default: eval-<split> beside the checkpoint.", show_default=False
        ),
    ] = None,
    corruptions: CorruptionsOption = None,
    severities: SeveritiesOption = None,
    json_output: JsonOption = False,
) -> None:
    """Score a checkpoint on a split and write its metrics, confusion matrix and HTML report.

    It writes {inference.METRICS_FILE}, {inference.CONFUSION_CSV_FILE}, {inference.CONFUSION_PNG_FILE} and {report.REPORT_FILE}.
    """
    from resnet_cifar.report import evaluate_and_report

    out = Output(json_mode=json_output)
    with reported_errors(out):
        outcome = evaluate_and_report(
            checkpoint,
            split=split,
            data_dir=data_dir,
            limit=limit,
            device=device,
            batch_size=batch_size,
            tta=tta,
            out_dir=out_dir,
            cache_dir=cache_dir_from_env(os.environ),
            corruptions=corruptions,
            severities=severities,
        )
    print_data_note(out, outcome.report)
    if json_output:
        out.json({**outcome.report, "out_dir": str(outcome.out_dir)})
        return
    render_eval(out, outcome.report, outcome.out_dir)


def predict_command(
    checkpoint: PredictModelArgument,
    images: Annotated[
        list[Path],
        typer.Argument(
            help="Image files of any size and mode (resized to {config.IMAGE_SIDE} x {config.IMAGE_SIDE} RGB).",
            show_default=False,
        ),
    ],
    top_k: Annotated[int, typer.Option("--top-k", help="How many classes to show per image.")] = 3,
    device: DeviceOption = "auto",
    tta: TtaOption = False,
    json_output: JsonOption = False,
) -> None:
    """Print the most probable classes of each image."""
    from resnet_cifar.errors import UsageError
    from resnet_cifar.export import load_exported_classifier, predict_exported_files, predictable_format
    from resnet_cifar.inference import load_trained_model, predict_files

    out = Output(json_mode=json_output)
    with reported_errors(out):
        # The cheap checks first: a missing image is reported before the model is loaded.
        for image in images:
            if not image.exists():
                raise UsageError(f"{image}: no such image file")
        if top_k < 1:
            raise UsageError(f"--top-k must be at least 1, got {top_k}")
        if predictable_format(checkpoint) is not None:  # a file written by `resnet-cifar export`
            classifier = load_exported_classifier(checkpoint, device=device)
            predictions = predict_exported_files(classifier, images, top_k=top_k, tta=tta)
        else:
            trained = load_trained_model(checkpoint, device=device)
            predictions = predict_files(trained, images, top_k=top_k, tta=tta)
    if json_output:
        entries = [prediction.to_dict() for prediction in predictions]
        out.json({"checkpoint": str(checkpoint), "predictions": entries})
        return
    for prediction in predictions:
        ranked = ", ".join(f"{name} {probability:.1%}" for name, probability in prediction.top)
        out.line(f"{prediction.image}: {ranked}")
