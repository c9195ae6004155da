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
from .render import Output

CheckpointArgument = Annotated[
    Path, typer.Argument(help="A checkpoint written by `resnet-cifar train` (best.pt or last.pt).", show_default=False)
]
PredictModelArgument = Annotated[
    Path,
    typer.Argument(
        help="A checkpoint written by `resnet-cifar train`, or an .onnx file written by `resnet-cifar export`.",
        show_default=False,
    ),
]
DeviceOption = Annotated[str, typer.Option("--device", help="auto (CUDA when available), cpu or cuda.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
TtaOption = Annotated[bool, typer.Option("--tta", help="Average the logits with those of the mirrored image.")]


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
    out.line(f"accuracy {_number(report['accuracy'])}  loss {loss}{calibration}  report in {out_dir}")


def eval_command(
    checkpoint: CheckpointArgument,
    data_dir: Annotated[
        Optional[Path],
        typer.Option(
            "--data-dir", help="CIFAR-10 folder. Default: the folder the checkpoint was trained on.", show_default=False
        ),
    ] = None,
    split: Annotated[
        str, typer.Option("--split", help="test, or val (the trainer's own validation split).")
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
    batch_size: Annotated[
        Optional[int],
        typer.Option(
            "--batch-size", help="Images per batch. Default: the checkpoint's eval batch size.", show_default=False
        ),
    ] = None,
    tta: TtaOption = False,
    out_dir: Annotated[
        Optional[Path],
        typer.Option(
            "--out", help="Report folder. Default: eval-<split> beside the checkpoint.", show_default=False
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Score a checkpoint on the test or val split; write metrics.json, confusion_matrix.csv and .png, report.html."""
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
        )
    if json_output:
        out.json({**outcome.report, "out_dir": str(outcome.out_dir)})
        return
    render_eval(out, outcome.report, outcome.out_dir)


def predict_command(
    checkpoint: PredictModelArgument,
    images: Annotated[
        list[Path],
        typer.Argument(help="Image files of any size and mode (resized to 32 x 32 RGB).", show_default=False),
    ],
    top_k: Annotated[int, typer.Option("--top-k", help="How many classes to show per image.")] = 3,
    device: DeviceOption = "auto",
    tta: TtaOption = False,
    json_output: JsonOption = False,
) -> None:
    """Print the most probable classes of each image."""
    from resnet_cifar.inference import load_trained_model, predict_files
    from resnet_cifar.errors import UsageError

    out = Output(json_mode=json_output)
    with reported_errors(out):
        # The cheap checks first: a missing image is reported before the model is loaded.
        for image in images:
            if not image.exists():
                raise UsageError(f"{image}: no such image file")
        if top_k < 1:
            raise UsageError(f"--top-k must be at least 1, got {top_k}")
        if checkpoint.suffix.lower() == ".onnx":  # an exported model (resnet-cifar export), run by onnxruntime
            from resnet_cifar.export import load_onnx_classifier, predict_onnx_files

            if device not in ("auto", "cpu"):
                raise UsageError(f"an .onnx file runs on the CPU (onnxruntime); --device {device} does not apply")
            predictions = predict_onnx_files(load_onnx_classifier(checkpoint), images, top_k=top_k, tta=tta)
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
