"""Report files: heatmap and curve PNGs, confusion CSV and metrics JSON, all written atomically."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from resnet_cifar.data.types import CIFAR10_CLASSES
from resnet_cifar.evaluation import (
    ClassificationReport,
    EvalResult,
    plot_confusion_matrix,
    plot_training_curves,
    write_confusion_csv,
    write_metrics_json,
)
from resnet_cifar.errors import DataError
from resnet_cifar.files import atomic_write


def cifar_like_matrix() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    matrix = torch.randint(0, 20, (10, 10), generator=generator)
    return matrix + torch.diag(torch.randint(500, 900, (10,), generator=generator))


def assert_only(folder: Path, *names: str) -> None:
    """No temp file left beside the outputs."""
    assert sorted(path.name for path in folder.iterdir()) == sorted(names)


def test_confusion_heatmap_png_has_two_panels_side_by_side(tmp_path: Path) -> None:
    path = tmp_path / "confusion_matrix.png"
    plot_confusion_matrix(cifar_like_matrix(), list(CIFAR10_CLASSES), path)
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        # Two square-ish heatmaps side by side, large enough to read 10 class names.
        assert width > 1.5 * height
        assert height >= 400
        # Not a blank canvas: the heatmaps use many colours.
        assert len(image.convert("RGB").getcolors(maxcolors=1_000_000)) > 50
    assert_only(tmp_path, "confusion_matrix.png")


def test_confusion_heatmap_tolerates_empty_rows_and_replaces_an_old_file(tmp_path: Path) -> None:
    path = tmp_path / "cm.png"
    path.write_bytes(b"old")
    matrix = torch.tensor([[3, 1, 0], [0, 0, 0], [1, 0, 2]])  # class "b" has no samples
    plot_confusion_matrix(matrix, ["a", "b", "c"], path)
    with Image.open(path) as image:
        assert image.format == "PNG"
    assert_only(tmp_path, "cm.png")


def test_confusion_heatmap_rejects_mismatched_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3 class names"):
        plot_confusion_matrix(torch.eye(2, dtype=torch.int64), ["a", "b", "c"], tmp_path / "cm.png")
    assert_only(tmp_path)


def test_training_curves_png_with_missing_keys_and_nan(tmp_path: Path) -> None:
    history = [
        {"epoch": 1, "train_loss": 2.1, "train_acc": 0.30, "val_loss": 1.9, "val_acc": 0.35},
        {"epoch": 2, "train_loss": 1.7, "train_acc": 0.42},  # no validation this epoch
        {"epoch": 3, "train_loss": math.nan, "train_acc": 0.50, "val_loss": 1.4, "val_acc": 0.55},
        {"lr": 0.1},  # nothing to plot
    ]
    path = tmp_path / "nested" / "training_curves.png"
    plot_training_curves(history, path)
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] > image.size[1]
    assert_only(path.parent, "training_curves.png")


def test_training_curves_of_an_empty_history_still_write_a_png(tmp_path: Path) -> None:
    path = tmp_path / "curves.png"
    plot_training_curves([], path)
    with Image.open(path) as image:
        assert image.format == "PNG"


def test_confusion_csv_round_trips(tmp_path: Path) -> None:
    matrix = cifar_like_matrix()
    names = list(CIFAR10_CLASSES[:9]) + ["ship, large"]  # a comma must be quoted, not split
    path = tmp_path / "confusion_matrix.csv"
    write_confusion_csv(matrix, names, path)
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["true\\predicted", *names]
    assert [row[0] for row in rows[1:]] == names
    assert torch.equal(torch.tensor([[int(cell) for cell in row[1:]] for row in rows[1:]]), matrix)
    assert path.read_text().splitlines()[0].startswith("true\\predicted,airplane,automobile")
    assert_only(tmp_path, "confusion_matrix.csv")


def test_metrics_json_has_accuracy_equal_to_trace_over_n(tmp_path: Path) -> None:
    matrix = cifar_like_matrix()
    report = ClassificationReport.from_confusion(matrix)
    result = EvalResult(report=report, loss=0.42, count=report.count, confusion=matrix)
    path = tmp_path / "metrics.json"
    write_metrics_json({**result.to_dict(list(CIFAR10_CLASSES)), "checkpoint": tmp_path / "best.pt"}, path)
    payload = json.loads(path.read_text())
    confusion = payload["confusion_matrix"]
    count = sum(map(sum, confusion))
    assert count == payload["count"] == int(matrix.sum())
    assert payload["accuracy"] == pytest.approx(sum(confusion[i][i] for i in range(10)) / count)
    assert set(payload["per_class"]) == set(CIFAR10_CLASSES)
    assert payload["loss"] == pytest.approx(0.42)
    assert payload["checkpoint"] == str(tmp_path / "best.pt")
    assert_only(tmp_path, "metrics.json")


def test_metrics_json_is_strict_json(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    write_metrics_json({"loss": math.nan, "best": math.inf, "counts": torch.tensor([1, 2]), "ok": 1.5}, path)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"loss": None, "best": None, "counts": [1, 2], "ok": 1.5}


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text('{"accuracy": 0.9}\n')

    def write_half_then_crash(out) -> None:
        out.write(b'{"accur')
        raise OSError("disk full")

    # A failed write is the one-line error of a failed run (exit 1), naming the file.
    with pytest.raises(DataError, match=r"metrics.json: cannot write \(disk full\)"):
        atomic_write(path, write_half_then_crash)
    assert path.read_text() == '{"accuracy": 0.9}\n'
    assert_only(tmp_path, "metrics.json")

    with pytest.raises(TypeError):
        write_metrics_json({"not json": object()}, path)
    assert path.read_text() == '{"accuracy": 0.9}\n'
    assert_only(tmp_path, "metrics.json")
